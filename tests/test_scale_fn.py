"""Each model's Gaussian scale parameterisation (``scale_fn``), checked against numpy.

Values and gradients at the extremes of the pre-activation for every
parameterisation, each model's documented default, the scales a built model
actually produces (its latents and its output head, past MS-STCN's cap of 5),
old runs (stored without ``scale_fn``) rebuilding with the clamp they were
trained with, and STORN's Table 2 options (tanh MLPs, output bias).
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfhier import heads, runs
from tfhier.models import MODELS, build_model, stored_model_config

ETA = np.array([-200.0, -60.0, -30.0, -10.0, -7.0, -1.0, 0.0, 1.0, 1.6, 3.0, 10.0, 30.0, 60.0, 200.0], np.float32)


def softplus(x):
    return np.logaddexp(0.0, x.astype(np.float64))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


#: the numpy value and derivative of each parameterisation (heads' module docstring)
REFERENCE = {
    "clamp": (lambda e: np.clip(softplus(e), 1e-3, 5.0),
              lambda e: np.where((softplus(e) > 1e-3) & (softplus(e) < 5.0), sigmoid(e), 0.0)),
    "softplus": (lambda e: softplus(e) + 1e-4, sigmoid),
    "exp": (lambda e: np.exp(np.clip(e.astype(np.float64), -40, 40) / 2),
            lambda e: np.where(np.abs(e) < 40, 0.5 * np.exp(np.clip(e.astype(np.float64), -40, 40) / 2), 0.0)),
}

#: each model's default and where it comes from (the models' docstrings)
DEFAULTS = {"msstcn": "clamp", "wavenet": "clamp", "wavenet_dense": "clamp", "stcn": "clamp", "stcn_dense": "clamp",
            "vrnn": "softplus", "vhrnn": "softplus", "srnn": "exp", "vosp": "exp", "vrae": "exp"}


@pytest.mark.parametrize("fn", sorted(heads.SCALE_FNS))
def test_values_and_gradients_at_the_extremes(fn):
    assert set(REFERENCE) == set(heads.SCALE_FNS)
    value, derivative = REFERENCE[fn]
    eta = tf.constant(ETA)
    with tf.GradientTape() as tape:
        tape.watch(eta)
        sigma = heads.gaussian_scale(eta, fn)
        total = tf.reduce_sum(sigma)
    grad = tape.gradient(total, eta).numpy()
    np.testing.assert_allclose(sigma.numpy(), value(ETA), rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(grad, derivative(ETA), rtol=2e-6, atol=1e-30)
    assert np.all(np.isfinite(sigma.numpy())) and np.all(sigma.numpy() > 0)


def test_only_the_clamp_has_a_ceiling_and_a_dead_gradient_above_it():
    eta = tf.constant([10.0, 30.0])
    for fn in heads.SCALE_FNS:
        with tf.GradientTape() as tape:
            tape.watch(eta)
            sigma = heads.gaussian_scale(eta, fn)
            total = tf.reduce_sum(sigma)
        grad = tape.gradient(total, eta).numpy()
        if fn == "clamp":
            assert np.all(sigma.numpy() == 5.0) and np.all(grad == 0.0)
        else:
            assert np.all(sigma.numpy() > 9.0) and np.all(grad > 0.4)


def test_unknown_scale_fn_is_named():
    with pytest.raises(ValueError, match="scale_fn must be one of"):
        heads.gaussian_scale(tf.zeros([2]), "relu")
    with pytest.raises(ValueError, match="scale_fn"):
        build_model("vrnn", 2, {"scale_fn": "relu"})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_defaults_to_its_papers_parameterisation(name):
    assert set(DEFAULTS) == set(MODELS)
    model = build_model(name, 3, {"head": "gaussian"})
    assert model.hparams["scale_fn"] == DEFAULTS[name]
    assert model.head.scale_fn == DEFAULTS[name]


def _tiny(name, **config):
    sizes = dict(latent_dims=[3], rnn_units=5, mlp_hidden=[6])
    if name in ("vrnn", "srnn"):
        sizes["feature_units"] = 4
    return build_model(name, 2, {"head": "gaussian", **sizes, **config}).build_for_data()


@pytest.mark.parametrize("name,fn", [("vrnn", None), ("srnn", None), ("vosp", None), ("vrnn", "clamp"),
                                     ("srnn", "softplus")])
def test_a_built_models_latent_and_output_scales_follow_its_scale_fn(name, fn):
    """Every output pre-activation of the posterior, the prior (where it is a network) and the head is set to a
    constant through the biases: the scales the model returns are the parameterisation's value of it."""
    model = _tiny(name, **({} if fn is None else {"scale_fn": fn}))
    fn = fn or DEFAULTS[name]
    value, _ = REFERENCE[fn]
    pre = np.float32(9.0)  # above the clamp's ceiling of 5 for softplus, exp(4.5) = 90 for exp
    nets = [model.posterior_net] + ([model.prior_net] if hasattr(model, "prior_net") else [])
    for net in nets:
        out = net.out
        out.kernel.assign(tf.zeros_like(out.kernel))
        z = out.bias.shape[0] // 2
        out.bias.assign(np.r_[np.zeros(z), np.full(z, pre)].astype(np.float32))
    proj = model.head.proj
    proj.kernel.assign(tf.zeros_like(proj.kernel))
    proj.bias.assign(np.r_[np.zeros(2), np.full(2, pre)].astype(np.float32))
    x = np.random.default_rng(0).normal(size=(2, 7, 2)).astype(np.float32)
    out = model.forward(x, np.ones((2, 7), np.float32), seed=tf.constant([1, 2]))
    expected = value(np.array([pre]))[0]
    np.testing.assert_allclose(out.posteriors[0].scale.numpy(), expected, rtol=1e-5)
    if hasattr(model, "prior_net") and not getattr(model, "res_q", False):
        np.testing.assert_allclose(out.priors[0].scale.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(out.likelihood.stddev().numpy(), expected, rtol=1e-5)
    if fn != "clamp":
        assert expected > 5.0


def test_runs_stored_before_scale_fn_rebuild_with_the_clamp(tmp_path):
    """A config.json written before ``scale_fn`` existed lacks it: such runs were trained with the clamp."""
    model = _tiny("vrnn")
    stored = model.get_config()
    stored.pop("scale_fn")
    assert stored_model_config("vrnn", stored)["scale_fn"] == "clamp"
    config = {"model": "vrnn", "model_config": stored, "dataset": "synthetic", "feature_dim": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert runs.read_config(str(tmp_path))["model_config"]["scale_fn"] == "clamp"
    rebuilt = build_model("vrnn", 2, runs.read_config(str(tmp_path))["model_config"])
    assert rebuilt.scale_fn == "clamp" and rebuilt.head.scale_fn == "clamp"
    # a stored config that has it keeps it; a new model takes its paper's default
    assert stored_model_config("vrnn", model.get_config())["scale_fn"] == "softplus"
    # a head saved by Keras before scale_fn existed is the clamp's too
    head_config = model.head.get_config()
    head_config.pop("scale_fn")
    assert heads.GaussianHead.from_config(head_config).scale_fn == "clamp"


@pytest.mark.parametrize("name", ["vosp", "vrae"])
def test_storn_table_2_options(name):
    """tanh hidden layers and the output bias b_y = -0.8 (STORN appendix, Table 2)."""
    model = build_model(name, 4, {"head": "bernoulli", "latent_dims": [3], "rnn_units": 5, "mlp_hidden": [6],
                                  "activation": "tanh", "output_bias": -0.8}).build_for_data()
    np.testing.assert_array_equal(model.head.proj.bias.numpy(), np.full(4, -0.8, np.float32))
    net = model.emission_net
    x = np.random.default_rng(0).normal(size=(2, 3, int(net.layers_[0].kernel.shape[1]))).astype(np.float32)
    expected = np.tanh(np.einsum("btc,cu->btu", x, net.layers_[0].kernel.numpy()[0]) + net.layers_[0].bias.numpy())
    np.testing.assert_allclose(net(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-6)
    clone = build_model(name, 4, json.loads(json.dumps(model.get_config()))).build_for_data()
    assert clone.hparams["activation"] == "tanh" and clone.hparams["output_bias"] == -0.8
