"""Building blocks of the convolutional models, as Keras layers.

Every convolution here is causal along time: output step t sees input steps
<= t only.  Convolutions are written as matrix products over shifted views of
the input (im2col), which is what a k=2 dilated convolution costs anyway and
keeps the kernels in a layout that cached (incremental) generation can reuse.

Shapes: sequences are ``[batch, time, channels]``.

References are to MS-STCN (Andersson et al. 2021) equation numbers.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

_PACKAGE = "tfhier"


def _matmul_last(x, w, bias=None):
    """``x[..., i] @ w[i, j] (+ bias[j])`` for a rank-3 ``x``.

    One 2-D MatMul + BiasAdd rather than an einsum and a broadcast add: on CPU
    the pair fuses (oneDNN), and their gradients are plain MatMuls and
    BiasAddGrad, where a broadcast add's gradient is a generic reduction that
    cost ~15% of a training step (bench/train_step.py).
    """
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, (-1, x.shape[-1])), w)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return tf.reshape(y, tf.concat([shape[:-1], [w.shape[-1]]], axis=0))


def time_slice(x, start, length):
    """``x[:, start:start + length]`` of a ``[B, T, C]`` tensor, as a Slice (whose gradient, a Pad, is far
    cheaper than a strided slice's), keeping every dimension that is known statically."""
    y = tf.slice(x, [0, start, 0], tf.stack([-1, length, -1]))
    static_length = tf.get_static_value(length)
    y.set_shape([x.shape[0], None if static_length is None else int(static_length), x.shape[2]])
    return y


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CausalConv1D(keras.layers.Layer):
    """Causal dilated convolution, eq. (2): ``out_t = b + sum_j W_j x_{t-(k-1-j)d}`` (tap 0 is the oldest).

    The input is left-padded with ``(k-1)*d`` zeros so the output has the
    input's length and step t depends on steps t-(k-1)d .. t only.
    """

    def __init__(self, filters, kernel_size=1, dilation_rate=1, use_bias=True, kernel_initializer="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        if kernel_size < 1 or dilation_rate < 1:
            raise ValueError(f"{self.name}: kernel_size and dilation_rate must be >= 1, "
                             f"got {kernel_size} and {dilation_rate}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, in_channels, self.filters),
            initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None

    @property
    def receptive_field(self):
        return (self.kernel_size - 1) * self.dilation_rate + 1

    def call(self, x):
        k, d = self.kernel_size, self.dilation_rate
        if k == 1:
            return _matmul_last(x, self.kernel[0], self.bias)
        if d == 1:
            # oneDNN's convolution: ~30% faster than the im2col product here (bench/train_step.py),
            # but TF's CPU kernels have no gradient for dilation > 1.
            y = tf.nn.conv1d(tf.pad(x, [[0, 0], [k - 1, 0], [0, 0]]), self.kernel, stride=1, padding="VALID")
        else:
            t = tf.shape(x)[1]
            xp = tf.pad(x, [[0, 0], [(k - 1) * d, 0], [0, 0]])
            # Tap j (0 = oldest) sees x_{t-(k-1-j)d}; one matmul over all taps.
            taps = tf.concat([time_slice(xp, j * d, t) for j in range(k)], axis=-1)
            return _matmul_last(taps, tf.reshape(self.kernel, (-1, self.filters)), self.bias)
        return tf.nn.bias_add(y, self.bias) if self.use_bias else y

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "dilation_rate": self.dilation_rate, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StridedConv1D(keras.layers.Layer):
    """Convolution with kernel S and stride S: coarse step tau sees fine steps S*tau .. S*tau+S-1.

    This is the causal downsampling of §3: a coarse step summarises exactly the
    fine steps it covers and nothing later.  The input length must be a
    multiple of S (the models pad sequences to the total downsampling factor).
    """

    def __init__(self, filters, factor, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.factor = int(factor)

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(self.factor, in_channels, self.filters),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, x):
        b, t, c = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
        frames = tf.reshape(x, (b, t // self.factor, self.factor * c))
        return _matmul_last(frames, tf.reshape(self.kernel, (-1, self.filters)), self.bias)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "factor": self.factor}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StridedConv1DTranspose(keras.layers.Layer):
    """Transposed convolution with kernel S and stride S (eq. 12b's residual upsampling).

    Coarse step tau produces fine steps S*tau .. S*tau+S-1 and nothing else,
    so upsampling never moves information backwards in time.
    """

    def __init__(self, filters, factor, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.factor = int(factor)

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(in_channels, self.factor, self.filters),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, x):
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        y = _matmul_last(x, tf.reshape(self.kernel, (x.shape[-1], -1)))
        return tf.nn.bias_add(tf.reshape(y, (b, t * self.factor, self.filters)), self.bias)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "factor": self.factor}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Delay(keras.layers.Layer):
    """Eq. (10): shift one step at the sequence's own rate, zeros first: ``[0, d_1, ..., d_{T-1}]``."""

    def call(self, x):
        return time_slice(tf.pad(x, [[0, 0], [1, 0], [0, 0]]), 0, tf.shape(x)[1])


def gate(a):
    """Gated activation of eq. (3): ``tanh(a_1) * sigmoid(a_2)`` for ``a = [a_1, a_2]``."""
    a_tanh, a_sigmoid = tf.split(a, 2, axis=-1)
    return tf.tanh(a_tanh) * tf.sigmoid(a_sigmoid)


def _sum_pool(x, factor):
    """Sum over each group of ``factor`` consecutive steps, divided by sqrt(factor)."""
    b, t, c = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
    return tf.reduce_sum(tf.reshape(x, (b, t // factor, factor, c)), axis=2) / math.sqrt(factor)


def _mean_pool(x, factor):
    b, t, c = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
    return tf.reduce_mean(tf.reshape(x, (b, t // factor, factor, c)), axis=2)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WaveNetBlock(keras.layers.Layer):
    """WaveNet block, eq. (3), or conditional WaveNet block, eq. (4).

    ``x + Conv1x1(tanh(Conv([x, c])) * sigmoid(Conv([x, c])))``: the
    conditioning sequence ``c`` (if given to ``call``) enters the residual
    path only; the identity path passes ``x`` alone.  Both gate convolutions
    are one convolution with twice the channels.  When ``channels`` differs
    from the input's channels the identity path gets a 1x1 projection (the
    paper is silent; a projection is the usual ResNet choice).
    """

    def __init__(self, channels, kernel_size=1, dilation_rate=1, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.gate_conv = CausalConv1D(2 * self.channels, self.kernel_size, self.dilation_rate, name="gate_conv")
        self.out_conv = CausalConv1D(self.channels, 1, name="out_conv")
        self.skip_proj = None

    def build(self, x_shape, cond_shape=None):
        if int(x_shape[-1]) != self.channels:
            self.skip_proj = CausalConv1D(self.channels, 1, use_bias=False, name="skip_proj")

    def call(self, x, cond=None):
        a = self.gate_conv(x if cond is None else tf.concat([x, cond], axis=-1))
        identity = x if self.skip_proj is None else self.skip_proj(x)
        return identity + self.out_conv(gate(a))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "kernel_size": self.kernel_size,
                "dilation_rate": self.dilation_rate}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DownsamplingWaveNetBlock(keras.layers.Layer):
    """First bottom-up block of a layer with downsampling factor S > 1 (§3, eq. 8b).

    ``mode='strided'`` (the paper): the residual path's convolution has kernel
    S and stride S, the identity path is the average of each S steps.
    ``mode='sum_pool'`` (the authors' public code): an unstrided causal conv
    (``kernel_size``, ``dilation_rate``), and both paths reduced by summing each
    S steps divided by sqrt(S).  Either way coarse step tau depends on fine
    steps <= S*tau+S-1 only.  A channel change gets a 1x1 identity projection.
    """

    MODES = ("strided", "sum_pool")

    def __init__(self, channels, factor, mode="strided", kernel_size=2, dilation_rate=1, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"{self.name}: downsampling mode must be one of {self.MODES}, got {mode!r}")
        self.channels = int(channels)
        self.factor = int(factor)
        self.mode = mode
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        if mode == "strided":
            self.gate_conv = StridedConv1D(2 * self.channels, self.factor, name="gate_conv")
        else:
            self.gate_conv = CausalConv1D(2 * self.channels, self.kernel_size, self.dilation_rate, name="gate_conv")
        self.out_conv = CausalConv1D(self.channels, 1, name="out_conv")
        self.skip_proj = None

    def build(self, input_shape):
        if int(input_shape[-1]) != self.channels:
            self.skip_proj = CausalConv1D(self.channels, 1, use_bias=False, name="skip_proj")

    def call(self, x):
        if self.mode == "strided":
            residual = self.out_conv(gate(self.gate_conv(x)))
            identity = _mean_pool(x, self.factor)
        else:
            residual = _sum_pool(self.out_conv(gate(self.gate_conv(x))), self.factor)
            identity = _sum_pool(x, self.factor)
        if self.skip_proj is not None:
            identity = self.skip_proj(identity)
        return identity + residual

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "factor": self.factor, "mode": self.mode,
                "kernel_size": self.kernel_size, "dilation_rate": self.dilation_rate}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class UpsamplingWaveNetBlock(keras.layers.Layer):
    """Last top-down block of a layer with factor S > 1: CondWaveNet^U of eq. (12b).

    The gated activation runs at the coarse rate on ``[x, c]``; the residual
    path's output convolution is a strided transposed convolution (kernel S,
    stride S) to the fine rate, and the identity path repeats each coarse
    step S times (nearest neighbour), with a 1x1 projection on a channel change.
    """

    def __init__(self, channels, factor, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.factor = int(factor)
        self.gate_conv = CausalConv1D(2 * self.channels, 1, name="gate_conv")
        self.out_conv = StridedConv1DTranspose(self.channels, self.factor, name="out_conv")
        self.skip_proj = None

    def build(self, x_shape, cond_shape=None):
        if int(x_shape[-1]) != self.channels:
            self.skip_proj = CausalConv1D(self.channels, 1, use_bias=False, name="skip_proj")

    def call(self, x, cond=None):
        a = self.gate_conv(x if cond is None else tf.concat([x, cond], axis=-1))
        identity = x if self.skip_proj is None else self.skip_proj(x)
        return tf.repeat(identity, self.factor, axis=1) + self.out_conv(gate(a))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "factor": self.factor}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WaveNet(keras.layers.Layer):
    """A stack of WaveNet blocks, optionally conditional, optionally resampling.

    Used for every network of MS-STCN:

    * bottom-up ``Wavenet`` / ``Wavenet^D`` (eq. 8): ``kernel_size=2``,
      ``dilations`` per block, ``downsample`` > 1 puts a
      :class:`DownsamplingWaveNetBlock` first;
    * ``Wavenet_1x1`` (eq. 9): ``kernel_size=1``, ``input_projection=True``
      maps the concatenated input to ``channels`` first;
    * ``CondWavenet_1x1`` / ``CondWavenet^U_1x1`` (eq. 12): ``conditional=True``,
      ``upsample`` > 1 makes the last block an :class:`UpsamplingWaveNetBlock`;
      ``out_channels`` sets the channels of the last block.
    """

    def __init__(self, channels, dilations=(1,), kernel_size=1, conditional=False, input_projection=False,
                 downsample=1, downsample_mode="strided", upsample=1, out_channels=None, **kwargs):
        super().__init__(**kwargs)
        if downsample > 1 and upsample > 1:
            raise ValueError(f"{self.name}: a stack either downsamples or upsamples, not both")
        self.channels = int(channels)
        self.dilations = [int(d) for d in dilations]
        self.kernel_size = int(kernel_size)
        self.conditional = bool(conditional)
        self.input_projection = bool(input_projection)
        self.downsample = int(downsample)
        self.downsample_mode = downsample_mode
        self.upsample = int(upsample)
        self.out_channels = int(out_channels) if out_channels is not None else self.channels

        n = len(self.dilations)
        self.in_proj = CausalConv1D(self.channels, 1, name="in_proj") if self.input_projection else None
        self.blocks = []
        for i, d in enumerate(self.dilations):
            ch = self.out_channels if i == n - 1 else self.channels
            if i == 0 and self.downsample > 1:
                block = DownsamplingWaveNetBlock(ch, self.downsample, downsample_mode, self.kernel_size, d,
                                                 name=f"block_{i}")
            elif i == n - 1 and self.upsample > 1:
                block = UpsamplingWaveNetBlock(ch, self.upsample, name=f"block_{i}")
            else:
                block = WaveNetBlock(ch, self.kernel_size, d, name=f"block_{i}")
            self.blocks.append(block)

    def call(self, x, cond=None):
        if self.in_proj is not None:
            x = self.in_proj(x)
        for block in self.blocks:
            if isinstance(block, DownsamplingWaveNetBlock):
                x = block(x)
            else:
                x = block(x, cond) if self.conditional else block(x)
        return x

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "dilations": self.dilations,
                "kernel_size": self.kernel_size, "conditional": self.conditional,
                "input_projection": self.input_projection, "downsample": self.downsample,
                "downsample_mode": self.downsample_mode, "upsample": self.upsample,
                "out_channels": self.out_channels}
