"""The recurrent models' time-parallel split equals their step-by-step reference, and the sampler's launches.

Every recurrent model scores and trains through ``sequence_features`` /
``latent_step`` / ``readout`` (what depends on x alone runs once over the whole
sequence, the loop carries only what recurs) and FIVO weights its particles
the same way; ``forward_stepwise`` and ``fivo_bound(..., stepwise=True)`` run
every step through ``step``, the path cached generation and priming use.  For
each model and variant, on random weights (the zero-initialised layers too)
and sequences of different lengths: per-sequence bounds, per-step KLs and the
gradient of every weight agree to 1e-5.

The step-wise sampler runs ``steps_per_launch`` steps per XLA computation; any
number of steps per launch gives the naive reference's samples.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfhier import objectives
from tfhier.models import MODELS, build_model
from tfhier.models.recurrent import RecurrentModel

SEED = tf.constant([5, 9])
TOL = 1e-5

TINY = dict(latent_dims=[3], rnn_units=5, mlp_hidden=[6], feature_units=4)
CASES = {
    "vrnn": ("vrnn", TINY),
    "vrnn_smoothing_gru_resq": ("vrnn", dict(TINY, posterior="smoothing", res_q=True, cell="gru")),
    "vrnn_two_hidden": ("vrnn", dict(TINY, mlp_hidden=[6, 5])),
    "srnn": ("srnn", TINY),
    "srnn_filtering": ("srnn", dict(TINY, posterior="filtering", res_q=False, activation="relu")),
    "srnn_smoothing_no_resq": ("srnn", dict(TINY, res_q=False)),
    "srnn_filtering_resq": ("srnn", dict(TINY, posterior="filtering", res_q=True)),
    "vhrnn": ("vhrnn", dict(TINY, hyper_units=4, hyper_hidden=6)),
    "vhrnn_gru_smoothing": ("vhrnn", dict(TINY, hyper_units=4, hyper_hidden=6, cell="gru", posterior="smoothing",
                                          hyper_input="latent")),
    "vhrnn_hidden_resq": ("vhrnn", dict(TINY, hyper_units=4, hyper_hidden=6, hyper_input="hidden", res_q=True)),
    "vosp": ("vosp", dict(latent_dims=[3], rnn_units=5, mlp_hidden=[6])),
    "vosp_normal_lstm": ("vosp", dict(latent_dims=[3], rnn_units=5, mlp_hidden=[6], prior="normal",
                                      storn_cell="lstm")),
    "vosp_gru": ("vosp", dict(latent_dims=[3], rnn_units=5, mlp_hidden=[6], storn_cell="gru")),
}


def test_every_recurrent_model_is_covered():
    recurrent = {n for n, cls in MODELS.items() if issubclass(cls, RecurrentModel)}
    assert recurrent == {name for name, _ in CASES.values()}


def make(case, head="bernoulli"):
    name, config = CASES[case]
    model = build_model(name, 6, dict(config, head=head)).build_for_data()
    rng = np.random.default_rng(len(case))
    for v in model.weights:  # every weight random, the zero-initialised latent projections too
        v.assign(rng.normal(scale=0.4, size=v.shape).astype(np.float32))
    return model


def batch(head):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 9, 6)).astype(np.float32)
    if head == "bernoulli":
        x = (x > 0.5).astype(np.float32)
    mask = np.ones((3, 9), np.float32)
    mask[1, 6:] = 0.0
    mask[2, 3:] = 0.0
    return x, mask


def _elbo_pass(model, x, mask, stepwise):
    with tf.GradientTape() as tape:
        forward = model.forward_stepwise if stepwise else model.forward
        out = forward(x, mask, seed=SEED)
        terms = objectives.elbo_terms(out, x, mask)
        loss = -tf.reduce_sum(terms.elbo)
    kl = out.kl_elements or objectives.masked_kl_elements(out.posteriors, out.priors, out.latent_masks)
    return terms.elbo.numpy(), kl[0].numpy(), tape.gradient(loss, model.trainable_variables)


def _fivo_pass(model, x, mask, stepwise):
    with tf.GradientTape() as tape:
        bound, resampled, kl = objectives.fivo_bound(model, x, mask, SEED, 4, 0.7, stepwise=stepwise)
        loss = -tf.reduce_sum(bound)
    assert resampled.numpy().sum() > 0  # the resampling path is exercised
    return bound.numpy(), kl.numpy(), tape.gradient(loss, model.trainable_variables)


def _iwae_pass(model, x, mask, stepwise):
    forward = model.forward_stepwise if stepwise else model.forward
    k = 3
    xk, mk = np.tile(x, [k, 1, 1]), np.tile(mask, [k, 1])
    from tfhier.noise import tiled_rows
    with tf.GradientTape() as tape:
        with tiled_rows(k):
            out = forward(xk, mk, seed=SEED)
        log_w = tf.reshape(objectives.log_importance_weight(out, xk, mk), [k, -1])
        bound = objectives.iwae_bound(log_w)
        loss = -tf.reduce_sum(bound)
    return bound.numpy(), log_w.numpy(), tape.gradient(loss, model.trainable_variables)


#: IWAE is the same forward pass on tiled rows: one case per model suffices
PAIRS = ([(case, objective) for case in sorted(CASES) for objective in ("elbo", "fivo")] +
         [(case, "iwae") for case in ("srnn", "vhrnn", "vosp", "vrnn_smoothing_gru_resq")])


@pytest.mark.parametrize("case,objective", PAIRS)
def test_split_equals_the_step_by_step_reference(case, objective):
    head = "gaussian" if case.endswith("gru") else "bernoulli"
    model = make(case, head)
    x, mask = batch(head)
    run = {"elbo": _elbo_pass, "iwae": _iwae_pass, "fivo": _fivo_pass}[objective]
    fast_bound, fast_terms, fast_grads = run(model, x, mask, stepwise=False)
    ref_bound, ref_terms, ref_grads = run(model, x, mask, stepwise=True)
    assert np.isfinite(ref_bound).all() and np.abs(ref_bound).max() > 1.0
    np.testing.assert_allclose(fast_bound, ref_bound, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(fast_terms, ref_terms, rtol=TOL, atol=TOL)  # per-step KLs / particle weights
    for v, a, b in zip(model.trainable_variables, fast_grads, ref_grads):
        assert (a is None) == (b is None), v.path
        if a is not None:
            a, b = tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy()
            np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL * max(1.0, np.abs(b).max()), err_msg=v.path)
    assert sum(a is not None for a in fast_grads) == len(model.trainable_variables)


def test_the_reference_is_independent_of_the_split():
    """A split that drops one step's record (an off-by-one in the loop) is caught: the reference sees it."""
    model = make("vrnn")
    x, mask = batch("bernoulli")
    ref = model.forward_stepwise(x, mask, seed=SEED)
    features = model.sequence_features(tf.constant(x), tf.constant(mask))
    shifted = {k: tf.roll(v, 1, axis=1) for k, v in features.items()}
    from tfhier.noise import latent_noise
    records = model.scan_latents(shifted, latent_noise(SEED, 0, 9, 3, 3), 3, 9)
    _, posterior, _ = model.readout(shifted, records)
    assert not np.allclose(posterior.loc.numpy(), ref.posteriors[0].loc.numpy(), atol=1e-3)


@pytest.mark.parametrize("name", ["wavenet", "stcn", "vrnn", "srnn"])
@pytest.mark.parametrize("per_launch", [1, 4])
def test_any_number_of_steps_per_launch_gives_the_naive_samples(name, per_launch):
    config = {"wavenet": dict(channels=[8, 8], dilations=[1, 2, 4], output_hidden=[8]),
              "stcn": dict(channels=[8, 6], dilations=[1, 2], latent_dims=[2, 3], latent_hidden=[8],
                           output_hidden=[8])}.get(name, TINY)
    model = build_model(name, 3, dict(config, head="handwriting", head_components=2)).build_for_data()
    model.xla_generation = True
    model.steps_per_launch = per_launch
    naive = model.generate_naive(2, 10, SEED, 0.8).numpy()
    np.testing.assert_allclose(model.generate(2, 10, SEED, 0.8), naive, atol=TOL)
    rng = np.random.default_rng(0)
    prefix = rng.normal(size=(2, 7, 3)).astype(np.float32)
    prefix[..., 2] = prefix[..., 2] > 0
    lengths = np.array([7, 3], np.int32)
    np.testing.assert_allclose(model.continue_sequences(prefix, lengths, 6, SEED, 0.8),
                               model.continue_sequences_naive(prefix, lengths, 6, SEED, 0.8), atol=TOL)


def test_the_default_training_mode_is_what_the_model_declares(monkeypatch):
    from tfhier.training import resolve_jit_compile

    monkeypatch.delenv("TFHIER_XLA_TRAINING", raising=False)  # (tests/conftest.py sets it for the suite)
    one = tf.distribute.get_strategy()
    recurrent, conv = make("vrnn"), build_model("wavenet", 3, dict(channels=[4], dilations=[1], output_hidden=[4]))
    assert MODELS["vrnn"].jit_compile_default and MODELS["vhrnn"].jit_compile_default
    assert not any(MODELS[n].jit_compile_default for n in ("wavenet", "msstcn", "stcn", "srnn", "vosp", "vrae"))
    assert resolve_jit_compile(None, make("srnn"), one) is False
    assert resolve_jit_compile(None, recurrent, one) is True
    assert resolve_jit_compile(None, conv, one) is False
    assert resolve_jit_compile(False, recurrent, one) is False and resolve_jit_compile(True, conv, one) is True

    class TwoReplicas:
        num_replicas_in_sync = 2
        extended = one.extended

    assert resolve_jit_compile(None, recurrent, TwoReplicas()) is False  # Keras' XLA step needs one device
    monkeypatch.setenv("TFHIER_XLA_TRAINING", "0")
    assert resolve_jit_compile(None, recurrent, one) is False
