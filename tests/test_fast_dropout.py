"""Fast dropout (tfhier.models.fast_dropout) against Monte Carlo dropout, and VOSP's fast-dropout path against the
plain network it must equal when nothing is dropped."""

import re

import numpy as np
import pytest
import tensorflow as tf

from tfhier.models import build_model
from tfhier.models import fast_dropout as fd
from tfhier.models.hparams import HParamError

N_MC = 400_000


def test_linear_moments_match_monte_carlo_dropout():
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=(1, 6)), rng.uniform(0.0, 0.5, size=(1, 6))
    kernel, bias, keep = rng.normal(size=(6, 3)), rng.normal(size=3), 0.7
    got_mean, got_var = fd.linear_moments(*(tf.constant(v, tf.float32) for v in (mean, var, kernel, bias)), keep)
    u = mean + np.sqrt(var) * rng.normal(size=(N_MC, 6))
    a = (u * (rng.random((N_MC, 6)) < keep)) @ kernel + bias
    np.testing.assert_allclose(got_mean.numpy()[0], a.mean(0), atol=0.02)
    np.testing.assert_allclose(got_var.numpy()[0], a.var(0), rtol=0.02)


def test_tanh_moments_match_monte_carlo():
    rng = np.random.default_rng(1)
    mean, var = np.meshgrid(np.linspace(-3, 3, 7), [0.0, 0.01, 0.1, 0.5, 1.0])
    got_mean, got_var = fd.tanh_moments(tf.constant(mean, tf.float32), tf.constant(var, tf.float32))
    samples = np.tanh(mean[..., None] + np.sqrt(var)[..., None] * rng.standard_normal(size=mean.shape + (N_MC,), dtype=np.float32))
    np.testing.assert_allclose(got_mean, samples.mean(-1), atol=3e-3)
    np.testing.assert_allclose(got_var, samples.var(-1), atol=3e-3)
    np.testing.assert_allclose(got_var[0], 0.0, atol=1e-6)  # an exact input stays exact


def test_bernoulli_logits_give_the_expected_sigmoid():
    rng = np.random.default_rng(2)
    mean, var = np.meshgrid(np.linspace(-4, 4, 9), [0.0, 0.3, 1.0, 3.0])
    p = tf.sigmoid(fd.bernoulli_logits(tf.constant(mean, tf.float32), tf.constant(var, tf.float32)))
    expected = 1.0 / (1.0 + np.exp(-(mean[..., None] + np.sqrt(var)[..., None] * rng.normal(size=mean.shape + (50_000,)))))
    np.testing.assert_allclose(p, expected.mean(-1), atol=0.02)  # MacKay's probit approximation


def test_fd_rnn_first_step_matches_monte_carlo_and_the_sequence_equals_its_steps():
    rng = np.random.default_rng(3)
    rnn = fd.FastDropoutRNN(4, keep=0.8, name="rnn")
    x = rng.normal(size=(2, 5, 200)).astype(np.float32)  # many inputs: the central-limit regime fast dropout assumes
    mean, var = rnn(x)
    w_in, w_rec, b = (v.numpy() for v in (rnn.kernel, rnn.recurrent_kernel, rnn.bias))
    # Step 1 (h_0 = 0): the input alone is dropped; Monte Carlo over its masks.
    a = (x[0, 0] * (rng.random((N_MC // 10, 200)) < 0.8)) @ w_in + b
    np.testing.assert_allclose(mean[0, 0], np.tanh(a).mean(0), atol=0.01)
    np.testing.assert_allclose(var[0, 0], np.tanh(a).var(0), atol=0.01)
    # The time-parallel call against the step-by-step path.
    state = rnn.initial_state(2)
    for t in range(5):
        state = rnn.step(x[:, t], state)
        np.testing.assert_allclose(state["h"], mean[:, t], atol=1e-6)
        np.testing.assert_allclose(state["h_var"], var[:, t], atol=1e-6)
    # Nothing dropped: the plain tanh RNN of the same weights, in numpy.
    exact = fd.FastDropoutRNN(4, keep=1.0, name="exact")
    exact.build(x.shape)
    exact.set_weights([w_in, w_rec, b])
    mean, var = exact(x)
    h = np.zeros((2, 4), np.float32)
    for t in range(5):
        h = np.tanh(x[:, t] @ w_in + h @ w_rec + b)
        np.testing.assert_allclose(mean[:, t], h, atol=1e-5)
    np.testing.assert_allclose(var, 0.0, atol=1e-6)


def test_learned_keep_rates_get_gradients_and_fixed_ones_are_constants():
    learned = fd.FastDropoutDense(3, keep=0.9, learn_keep=True, name="learned")
    fixed = fd.FastDropoutDense(3, keep=0.9, name="fixed")
    x = tf.ones((2, 4))
    for layer in (learned, fixed):
        layer(x)
    assert [v.path for v in learned.trainable_weights] == ["learned/kernel", "learned/bias", "learned/keep/logit"]
    assert [v.path for v in fixed.trainable_weights] == ["fixed/kernel", "fixed/bias"]
    np.testing.assert_allclose(learned.rate.value(), 0.9, rtol=1e-6)
    with tf.GradientTape() as tape:
        mean, var = learned(x)
        loss = tf.reduce_sum(var)
    assert abs(float(tape.gradient(loss, learned.rate.logit))) > 0


STORN_TINY = dict(head="bernoulli", latent_dims=[2], rnn_units=5, mlp_hidden=[6], activation="tanh", output_bias=-0.8)


@pytest.mark.parametrize("name", ["vosp", "vrae"])
def test_fast_dropout_at_a_vanishing_rate_is_the_plain_model(name):
    """Keep rates of 1 - 1e-7: the moment network must give the plain network's bound (an independent path:
    Keras' SimpleRNNCell and RNN layers, the 1x1 convolutions of PointwiseMLP), padded sequences included."""
    rng = np.random.default_rng(4)
    plain = build_model(name, 7, STORN_TINY).build_for_data()
    moments = build_model(name, 7, dict(STORN_TINY, fast_dropout=1e-7, learn_recognition_dropout=False))
    moments.build_for_data()
    for v in plain.weights:
        v.assign(rng.normal(scale=0.5, size=v.shape).astype(np.float32))
    # The same paths but for the RNN layers' inner cell (VRAE) and the 1x1 convolutions' kernels [1, C, U].
    values = {re.sub(r"/\w+_cell/", "/", v.path): v.numpy() for v in plain.weights}
    for v in moments.weights:
        if not v.path.endswith("/logit"):
            v.assign(values[v.path].reshape(v.shape))
    x = (rng.random((3, 9, 7)) < 0.3).astype(np.float32)
    mask = np.ones((3, 9), np.float32)
    mask[1, 6:] = mask[2, 4:] = 0
    seed = tf.constant([5, 6])
    np.testing.assert_allclose(moments.score(x, mask, seed)["elbo"], plain.score(x, mask, seed)["elbo"], rtol=1e-5)


@pytest.mark.parametrize("overrides, match", [
    (dict(head="gaussian"), "--head=bernoulli"),
    (dict(activation="relu"), "--activation=tanh"),
    (dict(storn_cell="lstm"), "--storn_cell=simple"),
    (dict(fast_dropout=1.0), r"\[0, 1\)"),
])
def test_fast_dropout_refuses_what_it_cannot_propagate(overrides, match):
    with pytest.raises(HParamError, match=match):
        build_model("vosp", 7, {**STORN_TINY, "fast_dropout": 0.1, **overrides})


def test_vrae_continuation_with_fast_dropout_follows_its_prefix():
    """The probabilities of a continuation change with its own prefix and no other row's."""
    rng = np.random.default_rng(5)
    model = build_model("vrae", 7, dict(STORN_TINY, fast_dropout=0.2)).build_for_data()
    for v in model.weights:  # the posterior's zero-initialised output layer would ignore x
        if not v.numpy().any():
            v.assign(rng.normal(scale=0.5, size=v.shape).astype(np.float32))
    x = (rng.random((3, 12, 7)) < 0.3).astype(np.float32)
    lengths = tf.constant([6, 4, 5])
    changed = x.copy()
    changed[1, :4] = 1.0 - changed[1, :4]
    params = [model.forward(tf.constant(v), tf.ones((3, 12)), seed=tf.constant([1, 2]), latents="prior",
                            observed_lengths=lengths).likelihood_params.numpy() for v in (x, changed)]
    assert np.abs(params[1][1, 4:] - params[0][1, 4:]).max() > 1e-3
    np.testing.assert_array_equal(params[1][[0, 2]], params[0][[0, 2]])


@pytest.mark.parametrize("name", ["vosp", "vrae"])
def test_weight_decay_leaves_learned_keep_rates_alone(name):
    """AdamW decays every weight but a learned keep rate's logit (decay would pull it to a rate of 1/2)."""
    from tfhier.training import TrainSettings, make_optimizer

    model = build_model(name, 7, dict(STORN_TINY, fast_dropout=0.1)).build_for_data()
    exempt = model.weight_decay_exempt
    assert sorted(v.path for v in exempt) == sorted(v.path for v in model.trainable_variables
                                                    if v.path.endswith("keep/logit"))
    assert len(exempt) == {"vosp": 4, "vrae": 6}[name]  # the recognition model's: RNN(s) 2 each, posterior MLP 2
    optimizer = make_optimizer(TrainSettings(weight_decay=2.0, learning_rate=1e-3), model)
    optimizer.build(model.trainable_variables)
    before = {v.path: v.numpy() for v in model.trainable_variables}
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])  # decay alone moves them
    for v in model.trainable_variables:
        moved = not np.allclose(v.numpy(), before[v.path]) or not before[v.path].any()
        assert moved != (v.path.endswith("keep/logit")), v.path

