"""Tests for tfhier.blocks: every layer against a naive numpy loop using the
layer's own weights, plus the causality structure of the resampling blocks."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfhier.blocks import (CausalConv1D, Delay, DownsamplingWaveNetBlock, StridedConv1D, StridedConv1DTranspose,
                           UpsamplingWaveNetBlock, WaveNet, WaveNetBlock)

B = 2
ATOL = 1e-5


def _x(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def _randomize(layer, rng):
    """Non-zero biases (they start at zero) so a missing bias shows up."""
    for w in layer.weights:
        if w.name.endswith("bias") or "bias" in w.path:
            w.assign(rng.normal(size=w.shape).astype(np.float32))


def _close(actual, expected, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-4, atol=atol)


# ---------------------------------------------------------------- numpy references

def np_causal_conv(x, kernel, bias, d):
    """``y_t = b + sum_j W_j x_{t-(k-1-j)d}`` with zeros before t=0 (tap 0 = oldest)."""
    k = kernel.shape[0]
    b_, t_len, _ = x.shape
    y = np.zeros((b_, t_len, kernel.shape[2]))
    for t in range(t_len):
        for j in range(k):
            src = t - (k - 1 - j) * d
            if src >= 0:
                y[:, t] += x[:, src] @ kernel[j]
    return y + (0.0 if bias is None else bias)


def np_conv_layer(layer, x):
    bias = None if layer.bias is None else layer.bias.numpy().astype(np.float64)
    return np_causal_conv(x, layer.kernel.numpy().astype(np.float64), bias, layer.dilation_rate)


def np_strided(x, kernel, bias):
    s = kernel.shape[0]
    b_, t_len, _ = x.shape
    y = np.zeros((b_, t_len // s, kernel.shape[2]))
    for tau in range(t_len // s):
        for i in range(s):
            y[:, tau] += x[:, s * tau + i] @ kernel[i]
    return y + bias


def np_strided_transpose(x, kernel, bias):
    s = kernel.shape[1]
    b_, t_len, _ = x.shape
    y = np.zeros((b_, t_len * s, kernel.shape[2]))
    for tau in range(t_len):
        for i in range(s):
            y[:, s * tau + i] = x[:, tau] @ kernel[:, i, :]
    return y + bias


def np_gate(a):
    c = a.shape[-1] // 2
    return np.tanh(a[..., :c]) / (1.0 + np.exp(-a[..., c:]))


def np_skip(block, x):
    if block.skip_proj is None:
        return x
    out = x @ block.skip_proj.kernel.numpy()[0].astype(np.float64)
    if getattr(block, "mode", None) in ("sum_pool", "repeat"):  # the authors' identity projection has a bias
        return out + block.skip_proj.bias.numpy()
    assert block.skip_proj.bias is None  # the paper's identity projection has no bias
    return out


def np_wavenet_block(block, x, c=None):
    inp = x if c is None else np.concatenate([x, c], -1)
    a = np_conv_layer(block.gate_conv, inp)
    return np_skip(block, x) + np_conv_layer(block.out_conv, np_gate(a))


def np_downsampling_block(block, x):
    s = block.factor
    b_, t_len, ch = x.shape
    if block.mode == "strided":
        g = block.gate_conv
        a = np_strided(x, g.kernel.numpy().astype(np.float64), g.bias.numpy().astype(np.float64))
        residual = np_conv_layer(block.out_conv, np_gate(a))
        identity = x.reshape(b_, t_len // s, s, ch).mean(2)
    else:  # the authors' order: conv, pool, gate, bias-free 1x1; identity: projection, then pool
        a = np_conv_layer(block.gate_conv, x)
        pooled = a.reshape(b_, t_len // s, s, -1).sum(2) / math.sqrt(s)
        residual = np_conv_layer(block.out_conv, np_gate(pooled))
        projected = np_skip(block, x)
        return projected.reshape(b_, t_len // s, s, -1).sum(2) / math.sqrt(s) + residual
    return np_skip(block, identity) + residual


def np_upsampling_block(block, x, c=None):
    inp = x if c is None else np.concatenate([x, c], -1)
    h = np_gate(np_conv_layer(block.gate_conv, inp))
    o = block.out_conv
    residual = np_strided_transpose(h, o.kernel.numpy().astype(np.float64), o.bias.numpy().astype(np.float64))
    return np.repeat(np_skip(block, x), block.factor, axis=1) + residual


def _dependence(fn, x, axis_len, out_len):
    """dep[t_in, t_out]: whether perturbing input step t_in changes output step t_out."""
    base = np.asarray(fn(x))
    dep = np.zeros((axis_len, out_len), bool)
    for t in range(axis_len):
        xp = x.copy()
        xp[:, t] += 1.0 + np.abs(xp[:, t])
        diff = np.abs(np.asarray(fn(xp)) - base).max(axis=(0, 2))
        dep[t] = diff > 1e-6
    return dep


# ---------------------------------------------------------------- CausalConv1D

CONV_CASES = [(1, 1), (2, 1), (2, 4), (3, 2), (3, 1)]


@pytest.mark.parametrize("k,d", CONV_CASES)
def test_causal_conv_matches_naive_loop(k, d):
    rng = np.random.default_rng(k * 10 + d)
    x = _x(rng, B, 11, 3)
    layer = CausalConv1D(4, k, d)
    y = layer(x)
    assert y.shape == (B, 11, 4)
    assert layer.kernel.shape == (k, 3, 4)
    _randomize(layer, rng)
    _close(layer(x), np_conv_layer(layer, x.astype(np.float64)))
    assert layer.receptive_field == (k - 1) * d + 1


@pytest.mark.parametrize("k,d", CONV_CASES)
def test_causal_conv_gradient_matches_naive_adjoint(k, d):
    """d/dx sum(y * r) = sum_j r_{t+(k-1-j)d} W_j^T (every path, dilated ones included, must have a gradient)."""
    rng = np.random.default_rng(100 + k * 10 + d)
    x = tf.constant(_x(rng, B, 9, 3))
    r = _x(rng, B, 9, 4)
    layer = CausalConv1D(4, k, d)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * r)
    grad = tape.gradient(loss, x).numpy()
    w = layer.kernel.numpy().astype(np.float64)
    expected = np.zeros(x.shape)
    for t in range(9):
        for j in range(k):
            dst = t + (k - 1 - j) * d
            if dst < 9:
                expected[:, t] += r[:, dst] @ w[j].T
    _close(grad, expected)


@pytest.mark.parametrize("k,d", CONV_CASES)
def test_causal_conv_is_causal_with_its_receptive_field(k, d):
    rng = np.random.default_rng(200 + k * 10 + d)
    t_len = 12
    x = _x(rng, B, t_len, 2)
    layer = CausalConv1D(3, k, d)
    dep = _dependence(lambda v: layer(v).numpy(), x, t_len, t_len)
    for t_in in range(t_len):
        for t_out in range(t_len):
            # exactly the taps: t_out - t_in in {0, d, ..., (k-1)d}
            lag = t_out - t_in
            expected = lag >= 0 and lag % d == 0 and lag // d <= k - 1
            assert dep[t_in, t_out] == expected, (t_in, t_out)


def test_causal_conv_without_bias_and_invalid_arguments():
    rng = np.random.default_rng(3)
    x = _x(rng, B, 6, 2)
    layer = CausalConv1D(3, 2, 2, use_bias=False)
    y = layer(x)
    assert layer.bias is None and len(layer.weights) == 1
    _close(y, np_conv_layer(layer, x.astype(np.float64)))
    for bad in (dict(kernel_size=0), dict(dilation_rate=0)):
        with pytest.raises(ValueError):
            CausalConv1D(3, **bad)


# ---------------------------------------------------------------- strided / transposed / delay

@pytest.mark.parametrize("s", [1, 2, 4])
def test_strided_conv_matches_numpy(s):
    rng = np.random.default_rng(s)
    x = _x(rng, B, 8, 3)
    layer = StridedConv1D(5, s)
    assert layer(x).shape == (B, 8 // s, 5)
    assert layer.kernel.shape == (s, 3, 5)
    _randomize(layer, rng)
    _close(layer(x), np_strided(x.astype(np.float64), layer.kernel.numpy(), layer.bias.numpy()))
    # coarse step tau sees exactly fine steps s*tau .. s*tau+s-1
    dep = _dependence(lambda v: layer(v).numpy(), x, 8, 8 // s)
    assert np.array_equal(dep, np.arange(8)[:, None] // s == np.arange(8 // s)[None, :])


@pytest.mark.parametrize("s", [1, 2, 3])
def test_strided_conv_transpose_matches_numpy(s):
    rng = np.random.default_rng(10 + s)
    x = _x(rng, B, 4, 3)
    layer = StridedConv1DTranspose(5, s)
    assert layer(x).shape == (B, 4 * s, 5)
    assert layer.kernel.shape == (3, s, 5)
    _randomize(layer, rng)
    _close(layer(x), np_strided_transpose(x.astype(np.float64), layer.kernel.numpy(), layer.bias.numpy()))
    dep = _dependence(lambda v: layer(v).numpy(), x, 4, 4 * s)
    assert np.array_equal(dep, np.arange(4)[:, None] == np.arange(4 * s)[None, :] // s)


def test_delay_matches_numpy():
    rng = np.random.default_rng(20)
    x = _x(rng, B, 5, 3)
    y = Delay()(x).numpy()
    expected = np.concatenate([np.zeros((B, 1, 3)), x[:, :-1]], axis=1)
    np.testing.assert_array_equal(y, expected)


# ---------------------------------------------------------------- WaveNet blocks

@pytest.mark.parametrize("k,d", [(1, 1), (2, 1), (2, 2)])
def test_wavenet_block_eq3(k, d):
    rng = np.random.default_rng(30 + k + d)
    x = _x(rng, B, 7, 4)
    block = WaveNetBlock(4, k, d)
    assert block(x).shape == (B, 7, 4)
    assert block.skip_proj is None
    _randomize(block, rng)
    _close(block(x), np_wavenet_block(block, x.astype(np.float64)))


@pytest.mark.parametrize("in_ch,ch", [(4, 4), (3, 5)])
def test_conditional_wavenet_block_eq4(in_ch, ch):
    rng = np.random.default_rng(40 + in_ch)
    x, c = _x(rng, B, 6, in_ch), _x(rng, B, 6, 2)
    block = WaveNetBlock(ch, 2, 1)
    y = block(x, c)
    assert y.shape == (B, 6, ch)
    assert block.gate_conv.kernel.shape == (2, in_ch + 2, 2 * ch)
    assert (block.skip_proj is not None) == (in_ch != ch)
    _randomize(block, rng)
    expected = np_wavenet_block(block, x.astype(np.float64), c.astype(np.float64))
    _close(block(x, c), expected)
    # the conditioning enters the residual path only: with a zero output conv the block is the identity path
    block.out_conv.kernel.assign(np.zeros(block.out_conv.kernel.shape, np.float32))
    block.out_conv.bias.assign(np.zeros(block.out_conv.bias.shape, np.float32))
    _close(block(x, c + 100.0), np_skip(block, x.astype(np.float64)))


def test_wavenet_block_channel_change_uses_projection():
    rng = np.random.default_rng(50)
    x = _x(rng, B, 5, 3)
    block = WaveNetBlock(6, 1)
    block(x)
    assert block.skip_proj is not None and block.skip_proj.kernel.shape == (1, 3, 6)
    _randomize(block, rng)
    _close(block(x), np_wavenet_block(block, x.astype(np.float64)))


@pytest.mark.parametrize("mode,k,d,s,in_ch,ch", [
    ("strided", 2, 1, 2, 3, 3), ("strided", 2, 1, 4, 3, 5),
    ("sum_pool", 2, 1, 2, 3, 5), ("sum_pool", 2, 2, 2, 3, 3), ("sum_pool", 3, 1, 4, 3, 3),
])
def test_downsampling_block_values_and_causality(mode, k, d, s, in_ch, ch):
    rng = np.random.default_rng(60 + s + in_ch + ch)
    t_len = 8
    x = _x(rng, B, t_len, in_ch)
    block = DownsamplingWaveNetBlock(ch, s, mode=mode, kernel_size=k, dilation_rate=d)
    assert block(x).shape == (B, t_len // s, ch)
    _randomize(block, rng)
    _close(block(x), np_downsampling_block(block, x.astype(np.float64)))
    dep = _dependence(lambda v: block(v).numpy(), x, t_len, t_len // s)
    fine, coarse = np.arange(t_len)[:, None], np.arange(t_len // s)[None, :]
    assert not np.any(dep & (fine >= s * (coarse + 1))), "coarse step depends on a later fine step"
    assert np.all(dep[fine // s == coarse]), "coarse step ignores a fine step it covers"


def test_downsampling_block_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        DownsamplingWaveNetBlock(4, 2, mode="avg")


@pytest.mark.parametrize("s", [2, 3])
@pytest.mark.parametrize("in_ch,ch", [(4, 4), (4, 3)])
def test_upsampling_block_values_and_causality(s, in_ch, ch):
    rng = np.random.default_rng(70 + s + ch)
    t_len = 4
    x, c = _x(rng, B, t_len, in_ch), _x(rng, B, t_len, 2)
    block = UpsamplingWaveNetBlock(ch, s)
    assert block(x, c).shape == (B, t_len * s, ch)
    _randomize(block, rng)
    _close(block(x, c), np_upsampling_block(block, x.astype(np.float64), c.astype(np.float64)))
    coarse, fine = np.arange(t_len)[:, None], np.arange(t_len * s)[None, :]
    for which in ("x", "c"):
        fn = (lambda v: block(v, c).numpy()) if which == "x" else (lambda v: block(x, v).numpy())
        dep = _dependence(fn, x if which == "x" else c, t_len, t_len * s)
        assert not np.any(dep & (coarse > fine // s)), f"fine step depends on a later coarse {which}"
        assert np.all(dep[coarse == fine // s]), which


def test_upsampling_block_without_conditioning():
    rng = np.random.default_rng(80)
    x = _x(rng, B, 3, 4)
    block = UpsamplingWaveNetBlock(4, 2)
    block(x)
    _randomize(block, rng)
    _close(block(x), np_upsampling_block(block, x.astype(np.float64)))


# ---------------------------------------------------------------- WaveNet stack

STACKS = [
    dict(channels=6, dilations=(1, 2, 4), kernel_size=2),
    dict(channels=6, dilations=(1, 2), kernel_size=2, downsample=2, out_channels=5),
    dict(channels=6, dilations=(1, 1, 1), kernel_size=2, downsample=4, downsample_mode="sum_pool"),
    dict(channels=6, dilations=(1, 1), conditional=True, input_projection=True, upsample=2, out_channels=4),
    dict(channels=6, dilations=(1,), conditional=True, upsample=3),
    dict(channels=6, dilations=(1, 1), conditional=True, input_projection=True),
]


def _stack_inputs(rng, cfg):
    x = _x(rng, B, 8, 3)
    c = _x(rng, B, 8, 2) if cfg.get("conditional") else None
    return x, c


def _call(net, x, c):
    return net(x, c) if c is not None else net(x)


@pytest.mark.parametrize("cfg", STACKS)
def test_wavenet_stack_shapes_and_config_round_trip(cfg):
    rng = np.random.default_rng(90)
    net = WaveNet(name="net", **cfg)
    x, c = _stack_inputs(rng, cfg)
    y = _call(net, x, c)
    t_out = 8 // cfg.get("downsample", 1) * cfg.get("upsample", 1)
    assert y.shape == (B, t_out, cfg.get("out_channels", cfg["channels"]))

    config = net.get_config()
    clone = WaveNet.from_config(config)
    assert clone.get_config() == config
    _call(clone, x, c)
    clone.set_weights(net.get_weights())
    _close(_call(clone, x, c), y.numpy())


def test_wavenet_stack_matches_numpy_composition():
    """input projection -> conditional block -> conditional upsampling block, all in numpy."""
    rng = np.random.default_rng(91)
    net = WaveNet(6, dilations=(1, 1), conditional=True, input_projection=True, upsample=2, out_channels=4)
    x, c = _x(rng, B, 5, 3), _x(rng, B, 5, 2)
    net(x, c)
    _randomize(net, rng)
    h = np_conv_layer(net.in_proj, x.astype(np.float64))
    h = np_wavenet_block(net.blocks[0], h, c.astype(np.float64))
    h = np_upsampling_block(net.blocks[1], h, c.astype(np.float64))
    assert isinstance(net.blocks[1], UpsamplingWaveNetBlock)
    _close(net(x, c), h, atol=1e-4)


def test_downsampling_stack_is_causal():
    rng = np.random.default_rng(92)
    s, t_len = 2, 8
    net = WaveNet(4, dilations=(1, 2, 1), kernel_size=2, downsample=s)
    x = _x(rng, B, t_len, 3)
    net(x)
    _randomize(net, rng)
    dep = _dependence(lambda v: net(v).numpy(), x, t_len, t_len // s)
    fine, coarse = np.arange(t_len)[:, None], np.arange(t_len // s)[None, :]
    assert not np.any(dep & (fine >= s * (coarse + 1)))
    assert np.all(dep[fine // s == coarse])


def test_wavenet_rejects_down_and_up_sampling():
    with pytest.raises(ValueError, match="downsamples or upsamples"):
        WaveNet(4, dilations=(1, 1), downsample=2, upsample=2)


@pytest.mark.parametrize("layer", [
    CausalConv1D(3, 2, 4, use_bias=False), StridedConv1D(3, 2), StridedConv1DTranspose(3, 2), Delay(),
    WaveNetBlock(4, 2, 2), DownsamplingWaveNetBlock(4, 2, mode="sum_pool", kernel_size=3, dilation_rate=2),
    UpsamplingWaveNetBlock(4, 3),
], ids=lambda l: type(l).__name__)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


@pytest.mark.parametrize("kernel_size, dilation", [(1, 1), (2, 1), (2, 4), (3, 2)])
def test_causal_conv_keeps_static_channels_under_unknown_batch_and_time(kernel_size, dilation):
    """Traced with unknown [B, T] (SavedModel signatures, generation loops) the channel count stays static,
    which the next layer's weights need; the values match the eager call."""
    conv = CausalConv1D(5, kernel_size, dilation)
    x = tf.random.normal([2, 9, 3])
    eager = conv(x)
    fn = tf.function(conv, input_signature=[tf.TensorSpec([None, None, 3])])
    assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, None, 5]
    np.testing.assert_allclose(fn(x).numpy(), eager.numpy(), atol=1e-6)
