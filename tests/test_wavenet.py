"""WaveNet and WaveNet-dense: the network in numpy, exact likelihood, the dense connections."""

import numpy as np
import pytest
import tensorflow as tf

from tfhier.models import WaveNetModel, build_model
from test_blocks import np_conv_layer

SEED = tf.constant([1, 4])


def tiny(name="wavenet", **overrides):
    config = dict(head="gaussian", channels=[5, 5], dilations=[1, 2], output_hidden=[6, 4])
    config.update(overrides)
    tf.keras.utils.set_random_seed(0)
    model = build_model(name, 2, config).build_for_data()
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(scale=0.4, size=v.shape).astype(np.float32))
    return model


def np_block(block, x):
    a = np_conv_layer(block.gate_conv, x)
    g = np.tanh(a[..., : block.channels]) / (1 + np.exp(-a[..., block.channels:]))
    residual = np_conv_layer(block.out_conv, g)
    identity = x if block.skip_proj is None else np_conv_layer(block.skip_proj, x)
    return identity + residual, residual


def np_wavenet_eta(model, x):
    """The module docstring's equations in numpy."""
    shifted = np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
    a = np_conv_layer(model.input_conv, shifted.astype(np.float64))
    outputs, skips = [], []
    for block in model.blocks_:
        a, skip = np_block(block, a)
        outputs.append(a)
        skips.append(skip)
    if model.dense:
        f = np.maximum(np.concatenate([outputs[i] for i in model.dense_blocks], -1), 0)
    else:
        f = np.maximum(sum(skips), 0)
    for layer in model.output_net.layers_:
        f = np.maximum(f @ layer.kernel.numpy()[0] + layer.bias.numpy(), 0)
    return f @ model.head.proj.kernel.numpy()[0] + model.head.proj.bias.numpy()


@pytest.mark.parametrize("name, extra", [("wavenet", {}), ("wavenet_dense", {}),
                                         ("wavenet_dense", {"dense_blocks": [1, 3], "channels": [5, 3]})])
def test_output_parameters_match_numpy(name, extra):
    model = tiny(name, **extra)
    x = np.random.default_rng(1).normal(size=(2, 11, 2)).astype(np.float32)
    out = model.forward(x, np.ones((2, 11), np.float32), seed=SEED)
    np.testing.assert_allclose(out.likelihood_params, np_wavenet_eta(model, x), rtol=1e-4, atol=1e-5)


def test_score_is_the_exact_log_likelihood():
    """No latent variables: ELBO = log p(x) = sum_t log N(x_t; mu_t, sigma_t), whatever the seed; KL is empty."""
    model = tiny()
    x = np.random.default_rng(2).normal(size=(2, 9, 2)).astype(np.float32)
    mask = np.array([[1] * 9, [1] * 6 + [0] * 3], np.float32)
    eta = np_wavenet_eta(model, x * mask[..., None])
    mu, s = eta[..., :2], np.clip(np.log1p(np.exp(eta[..., 2:])), 1e-3, 5.0)
    logp = (-0.5 * ((x - mu) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)).sum(-1)
    expected = (logp * mask).sum(1)
    for seed in ([1, 4], [7, 7]):
        score = model.score(x, mask, tf.constant(seed))
        np.testing.assert_allclose(score["elbo"], expected, rtol=1e-4)
        assert score["kl"].shape == (2, 0)
    assert model.latent_layer_names == [] and model.latent_dims == []


def test_dense_output_depends_on_every_listed_block_and_plain_on_the_skips():
    model = tiny("wavenet_dense", dense_blocks=[0, 2])
    x = tf.constant(np.random.default_rng(3).normal(size=(1, 6, 2)).astype(np.float32))
    a = model.input_conv(model.delay(x))
    outputs = []
    for block in model.blocks_:
        a, _ = block(a)
        outputs.append(a)
    outs = [tf.Variable(o) for o in outputs]
    with tf.GradientTape() as tape:
        f = model.features([tf.convert_to_tensor(o) for o in outs], None)
        loss = tf.reduce_sum(model.head(model.output_net(f)))
    grads = tape.gradient(loss, outs)
    assert [g is not None and bool(np.any(g.numpy())) for g in grads] == [True, False, True, False]


def test_iam_configuration_sizes():
    """The authors' IAM-OnDB WaveNet: 25 blocks (dilations 1..16, five times) of 256 filters."""
    model = WaveNetModel(3, head="handwriting", head_components=20)
    assert len(model.blocks_) == 25
    assert [b.dilation_rate for b in model.blocks_[:6]] == [1, 2, 4, 8, 16, 1]


def test_invalid_configuration_is_named():
    with pytest.raises(ValueError, match="channels"):
        tiny(channels=[5, 4])  # skips of different widths cannot be summed
    with pytest.raises(ValueError, match="dense_blocks"):
        tiny("wavenet_dense", dense_blocks=[4])
    with pytest.raises(ValueError, match="no hyperparameter dense_blocks"):
        tiny(dense_blocks=[0])
