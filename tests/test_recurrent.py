"""The recurrent family (VRNN, SRNN) and the bounds that use their step interface (IWAE, FIVO)."""

import numpy as np
import pytest
import tensorflow as tf

from tfhier import objectives
from tfhier.models import build_model

SEED = tf.constant([4, 2])


def tiny(name, **overrides):
    config = dict(head="gaussian", latent_dims=[3], rnn_units=5, mlp_hidden=[6], feature_units=4)
    config.update(overrides)
    tf.keras.utils.set_random_seed(0)
    model = build_model(name, 2, config).build_for_data()
    rng = np.random.default_rng(0)
    for v in model.weights:
        if not v.numpy().any():
            v.assign(rng.normal(scale=0.3, size=v.shape).astype(np.float32))
    return model


def data(b=3, t=10, seed=0):
    return np.random.default_rng(seed).normal(size=(b, t, 2)).astype(np.float32)


def posterior_jacobian_nonzero(model, x, t):
    """Which input steps the posterior mean at step t depends on (its gradient is non-zero)."""
    xv = tf.Variable(x)
    with tf.GradientTape() as tape:
        out = model.forward(xv, np.ones(x.shape[:2], np.float32), seed=SEED)
        target = tf.reduce_sum(out.posteriors[0].loc[:, t])
    grad = tape.gradient(target, xv).numpy()
    return np.abs(grad).sum(axis=(0, 2)) > 0


@pytest.mark.parametrize("res_q", [True, False])
def test_srnn_smoothing_posterior_sees_the_future_and_filtering_does_not(res_q):
    x = data(1, 9)
    t = 4
    smooth = posterior_jacobian_nonzero(tiny("srnn", posterior="smoothing", res_q=res_q), x, t)
    assert smooth[t + 1:].any(), "a smoothing posterior at t depends on some x_t' with t' > t"
    filt = posterior_jacobian_nonzero(tiny("srnn", posterior="filtering", res_q=res_q), x, t)
    assert not filt[t + 1:].any(), "a filtering posterior at t depends on no later x"
    assert filt[: t + 1].any()


def test_vrnn_posterior_is_filtering_and_its_smoothing_option_sees_the_future():
    x = data(1, 9)
    assert not posterior_jacobian_nonzero(tiny("vrnn"), x, 3)[4:].any()
    assert posterior_jacobian_nonzero(tiny("vrnn", posterior="smoothing"), x, 3)[4:].any()


@pytest.mark.parametrize("name", ["srnn", "vrnn"])
def test_res_q_posterior_mean_is_the_prior_mean_plus_the_residual_network(name):
    """Eq. 12: mu_q - mu_p equals the posterior network's own output, computed here from the step's inputs."""
    model = tiny(name, res_q=True)
    x = data(2, 6)
    state = model.initial_state(2)
    prepared = model.prepare(x, np.ones((2, 6), np.float32))
    eps = tf.random.stateless_normal([6, 2, 3], seed=[1, 1])
    for t in range(6):
        prepared_t = {k: v[:, t] for k, v in prepared.items()}
        out = model.step(state, x[:, t], prepared_t, eps[t])
        if name == "srnn":
            a = prepared_t["a"]
            net_in = tf.concat([state["z"], a], -1)
        else:
            net_in = tf.concat([model.phi_x(x[:, t]), state["h"]], -1)
        residual = model.posterior_net(net_in)[:, :3]
        np.testing.assert_allclose(out.posterior.loc - out.prior.loc, residual, rtol=1e-5, atol=1e-6)
        state = out.state


def test_priming_a_smoothing_posterior_uses_the_observed_prefix_only():
    model = tiny("srnn")
    x = data(2, 12)
    lengths = np.array([7, 4], np.int32)
    primed = model.forward(x, np.ones((2, 12), np.float32), seed=SEED, latents="prior", observed_lengths=lengths)
    # The prefixes alone (everything after them masked and replaced by other values), with the same noise.
    seen = tf.sequence_mask(lengths, 12, dtype=tf.float32).numpy()
    other = np.where(seen[..., None] > 0, x, 5.0).astype(np.float32)
    alone = model.forward(other, seen, seed=SEED)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(primed.posteriors[0].loc[b, :n], alone.posteriors[0].loc[b, :n], rtol=1e-5,
                                   atol=1e-6)
    full = model.forward(x, np.ones((2, 12), np.float32), seed=SEED)  # sees all 12 steps: another posterior
    assert not np.allclose(full.posteriors[0].loc[0, :7], primed.posteriors[0].loc[0, :7])


@pytest.mark.parametrize("name", ["vrnn", "srnn"])
def test_fivo_with_one_particle_is_the_elbo_of_the_same_noise(name):
    model = tiny(name)
    x = data()
    mask = tf.sequence_mask([10, 7, 3], 10, dtype=tf.float32)
    fivo, resampled, _ = objectives.fivo_bound(model, x, mask, SEED, num_particles=1, resampling_threshold=0.5)
    elbo = objectives.log_importance_weight(model.forward(x, mask, seed=SEED), x, mask)
    np.testing.assert_allclose(fivo, elbo, rtol=1e-5, atol=1e-4)
    assert not resampled.numpy().any()
    iwae1 = objectives.IWAE(1).compute(model, x, mask, SEED)
    np.testing.assert_allclose(-iwae1.values["neg_iwae"], elbo, rtol=1e-5, atol=1e-4)


def test_resampling_happens_exactly_when_the_ess_criterion_says():
    """A hand-built weight sequence through the particle filter: increments depend on (t, particle) only, so the
    decisions and the bound follow in numpy."""
    k, t_len = 4, 6
    increments = np.array([[0.0, 0.0, 0.0, 0.0],       # equal weights: ESS = K
                           [0.0, -0.1, -0.2, -0.3],     # nearly equal: no resampling at 0.5
                           [0.0, -5.0, -5.0, -5.0],     # one particle dominates: resample
                           [0.0, 0.0, 0.0, 0.0],
                           [-3.0, 0.0, -3.0, -3.0],     # dominated again: resample
                           [0.0, -9.0, 0.0, 0.0]], np.float32)
    mask = np.ones((1, t_len), np.float32)

    def propose_and_weight(state, t):
        return state + 1.0, tf.gather(increments, t), tf.zeros([k])

    log_p_hat, resampled, _ = objectives.particle_filter(propose_and_weight, tf.zeros([k]), mask, k, 0.5, SEED)
    log_w, expected_p_hat, decisions = np.zeros(k), 0.0, []
    for t in range(t_len):
        log_w = log_w + increments[t]
        w = np.exp(log_w - log_w.max())
        ess = w.sum() ** 2 / (w ** 2).sum()
        do = ess < 0.5 * k and t < t_len - 1
        decisions.append(do)
        if do:
            expected_p_hat += np.log(np.mean(np.exp(log_w)))
            log_w = np.zeros(k)
    expected_p_hat += np.log(np.mean(np.exp(log_w)))
    assert decisions == [False, False, True, False, True, False]
    assert resampled.numpy()[0] == sum(decisions)
    np.testing.assert_allclose(log_p_hat.numpy()[0], expected_p_hat, rtol=1e-5)
    ess = objectives.effective_sample_size(tf.constant([[0.0], [np.log(3.0)]]))
    np.testing.assert_allclose(ess, [16 / 10])  # weights 1, 3: (1 + 3)^2 / (1 + 9)


def test_resampled_particles_carry_their_ancestors_state():
    """Step 0 makes one particle per sequence dominant (resample: every particle becomes a copy of it); step 1's
    increment is the particle's state, so the bound says which state the filter carried on."""
    k = 3
    mask = np.ones((2, 2), np.float32)
    dominant = np.array([-20.0, -20.0, 0.0, -20.0, -20.0, 0.0], np.float32)  # rows k*B + b: seq 0 -> k=1, 1 -> k=2
    initial = tf.constant([0.0, 1.0, 10.0, 11.0, 20.0, 21.0])  # particle k of sequence b holds 10 k + b

    def propose_and_weight(state, t):
        return state, tf.where(t == 0, tf.constant(dominant), state), tf.zeros([k * 2])

    log_p_hat, resampled, _ = objectives.particle_filter(propose_and_weight, initial, mask, k, 0.5, SEED)
    first = np.log((1 + 2 * np.exp(-20.0)) / 3)
    np.testing.assert_allclose(log_p_hat, [first + 10.0, first + 21.0], rtol=1e-5)
    np.testing.assert_array_equal(resampled, [1.0, 1.0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vrnn", "srnn"])
def test_fivo_and_iwae_are_at_least_the_elbo_on_average_on_a_trained_model(name, tmp_path):
    from tfhier import training
    from tfhier.data import load_dataset

    data = load_dataset("vhrnn_synthetic", seed=0)
    data.train, data.valid = data.train[:64], data.valid[:8]
    settings = training.TrainSettings(train_steps=40, batch_size=16, seq_len=50, eval_every=40, eval_batches=1,
                                      log_every=40, checkpoint_every=40, num_samples=0, kl_regularizer="none",
                                      learning_rate=3e-3, verbose=0)
    model, _ = training.train(str(tmp_path / "run"), name, dict(latent_dims=[4], rnn_units=8, mlp_hidden=[16],
                                                                feature_units=8), data, settings)
    x = np.stack(data.test[:16]).astype(np.float32)
    mask = np.ones(x.shape[:2], np.float32)
    elbo, fivo, iwae = [], [], []
    for s in range(4):
        seed = tf.constant([s, 99])
        elbo.append(objectives.log_importance_weight(model.forward(x, mask, seed=seed), x, mask).numpy())
        fivo.append(objectives.fivo_bound(model, x, mask, seed, 8)[0].numpy())
        iwae.append(-objectives.IWAE(8).compute(model, x, mask, seed).values["neg_iwae"].numpy())
    elbo, fivo, iwae = (np.concatenate(v) for v in (elbo, fivo, iwae))
    for bound in (fivo, iwae):
        diff = bound - elbo
        # Mean gap minus three standard errors of it must be > 0... or at least not significantly negative.
        assert diff.mean() > -3 * diff.std(ddof=1) / np.sqrt(len(diff))
        assert diff.mean() > 0


@pytest.mark.parametrize("head, dim", [("gaussian", 2), ("gmm", 2), ("bernoulli", 4), ("bernoulli_mixture", 4),
                                       ("handwriting", 3)])
def test_vrnn_takes_every_head(head, dim):
    tf.keras.utils.set_random_seed(0)
    model = build_model("vrnn", dim, dict(head=head, head_components=2, latent_dims=[2], rnn_units=3,
                                          mlp_hidden=[4], feature_units=3)).build_for_data()
    x = (np.random.default_rng(0).random((2, 5, dim)) > 0.5).astype(np.float32)
    assert np.isfinite(model.score(x, np.ones((2, 5), np.float32), SEED)["elbo"].numpy()).all()
    assert model.generate(2, 4, SEED).shape == (2, 4, dim)


def test_vhrnn_papers_vrnn_parameter_counts_come_from_the_config():
    """VHRNN Table 1: VRNN z = 8: 2,612 parameters, z = 6: 1,516 (configs/vrnn_synthetic.cfg and its comment)."""
    from pathlib import Path

    from tfhier.runs import parse_flags_text

    flags = parse_flags_text((Path(__file__).resolve().parents[1] / "configs" / "vrnn_synthetic.cfg").read_text())
    config = {k: flags[k] for k in ("head", "latent_dims", "rnn_units", "mlp_hidden", "feature_units", "posterior")}
    model = build_model("vrnn", 2, config)
    model.build_for_data()
    assert model.count_params() == 2612
    six = build_model("vrnn", 2, {**config, "latent_dims": "6", "rnn_units": "6", "mlp_hidden": "6,6",
                                  "feature_units": "6"}).build_for_data()
    assert six.count_params() == 1516


def test_evaluation_reports_fivo_for_recurrent_models_only():
    from tfhier.evaluation import evaluate_sequences

    seqs = list(data(4, 9))
    report = evaluate_sequences(tiny("vrnn"), seqs, iw_samples=3, batch_size=2).summary()
    assert report["fivo_particles"] == 3 and np.isfinite(report["fivo"]["per_step"])
    wavenet = build_model("wavenet", 2, dict(channels=[4], dilations=[1], output_hidden=[4])).build_for_data()
    assert "fivo" not in evaluate_sequences(wavenet, seqs, iw_samples=2).summary()
    with pytest.raises(ValueError, match="no recurrent step interface"):
        evaluate_sequences(wavenet, seqs, iw_samples=2, fivo_particles=4)


def test_fivo_needs_the_step_interface():
    model = build_model("wavenet", 2, dict(channels=[4], dilations=[1], output_hidden=[4])).build_for_data()
    with pytest.raises(ValueError, match="--objective=fivo needs a model with the recurrent step interface"):
        objectives.FIVO(4).check(model)
