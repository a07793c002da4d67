"""Building blocks of the convolutional models, as Keras layers.

Every convolution here is causal along time: output step t sees input steps
<= t only.  Convolutions are written as matrix products over shifted views of
the input (im2col), which is what a k=2 dilated convolution costs anyway and
keeps the kernels in a layout that cached (incremental) generation can reuse.

Shapes: sequences are ``[batch, time, channels]``.

Streaming (cached generation, Fast WaveNet style: Paine et al. 2016, arXiv
1611.09482): every layer that can run one step at a time says so itself.
``initial_state(batch)`` is the state before the first step (a tuple of
``[B, C]`` tensors; ``()`` for layers without memory) and ``step(state, ...)``
takes one step's inputs (``[B, C]`` tensors) and returns its outputs and the
new state, equal to what ``call`` gives over the whole sequence.  A causal
convolution's state is the queue of its last ``(k-1)*d`` inputs; a stack's
state is its blocks' states.  Models compose these into cached generators.
Inside a generation loop, :func:`step_weights` makes every weight be read
once per loop body rather than once per use.

References are to MS-STCN (Andersson et al. 2021) equation numbers.
"""

from __future__ import annotations

import contextlib
import math

import keras
import tensorflow as tf

_PACKAGE = "tfhier"


def matmul_last(x, w, bias=None):
    """``x[..., i] @ w[i, j] (+ bias[j])`` for an ``x`` of any rank >= 2.

    One 2-D MatMul + BiasAdd rather than an einsum and a broadcast add: on CPU
    the pair fuses (oneDNN), and their gradients are plain MatMuls and
    BiasAddGrad, where a broadcast add's gradient is a generic reduction that
    cost ~15% of a training step (bench/train_step.py).  A rank-2 ``x`` (one
    step inside a loop) needs no reshape.
    """
    if x.shape.rank == 2:
        y = tf.matmul(x, w)
        return y if bias is None else tf.nn.bias_add(y, bias)
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, (-1, x.shape[-1])), w)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return tf.reshape(y, tf.concat([shape[:-1], [w.shape[-1]]], axis=0))


def loop_steps(x, time_axis=1):
    """``x`` as a TensorArray of its steps along ``time_axis``, to ``read(t)`` inside a ``tf.while_loop``.

    ``tf.gather(x, t, axis=1)`` in a loop makes the loop's gradient add a dense
    tensor of the whole sequence's size to an accumulator at every step (work
    quadratic in the length); a TensorArray's gradient writes one step per step.
    """
    rank = x.shape.rank
    if time_axis != 0:
        x = tf.transpose(x, [time_axis] + [i for i in range(rank) if i != time_axis])
    return tf.TensorArray(x.dtype, size=tf.shape(x)[0], element_shape=x.shape[1:]).unstack(x)


def time_slice(x, start, length):
    """``x[:, start:start + length]`` of a ``[B, T, C]`` tensor, as a Slice (whose gradient, a Pad, is far
    cheaper than a strided slice's), keeping every dimension that is known statically."""
    y = tf.slice(x, [0, start, 0], tf.stack([-1, length, -1]))
    static_length = tf.get_static_value(length)
    y.set_shape([x.shape[0], None if static_length is None else int(static_length), x.shape[2]])
    return y


class WeightReader:
    """How the ``step`` methods read weights (see :func:`step_weights`).

    ``read(variable)`` is the weight's value; ``affine(x, kernel, bias)`` is
    ``x @ W + b`` for one step ``x`` [B, C_in], computed as one MatMul of
    ``[x, 1]`` with ``W`` stacked on ``b``: Grappler fuses a MatMul followed by a
    BiasAdd into oneDNN's ``_FusedMatMul``, which at one-step sizes costs ~3x a
    plain MatMul, and these products are most of a generation step
    (bench/generation.py).  With ``memoize``, each weight (and each stacked
    ``[W; b]``) is computed once per graph it is first used in (a loop body),
    not once per use.
    """

    def __init__(self, memoize=False):
        self._memo = {} if memoize else None

    def _cached(self, key, make):
        if self._memo is None:
            return make()
        key = key + (id(tf.compat.v1.get_default_graph()),)  # a nested loop body is another graph
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def __call__(self, variable):
        return self._cached(("value", id(variable)), lambda: tf.convert_to_tensor(variable))

    def affine(self, x, kernel, bias, kernel_fn=None, bias_fn=None):
        """``x @ kernel_fn(kernel) + bias_fn(bias)`` for ``x`` [B, C_in] (``bias`` may be None); ``kernel_fn``
        maps the kernel variable's value to [C_in, C_out] (default: as it is), ``bias_fn`` the bias to [C_out]."""
        kernel_fn = kernel_fn or (lambda k: k)
        if bias is None:
            return tf.matmul(x, self._cached(("kernel", id(kernel)), lambda: kernel_fn(self(kernel))))
        bias_fn = bias_fn or (lambda b: b)
        w = self._cached(("affine", id(kernel), id(bias)),
                         lambda: tf.concat([kernel_fn(self(kernel)), bias_fn(self(bias))[None]], axis=0))
        return tf.matmul(tf.pad(x, [[0, 0], [0, 1]], constant_values=1.0), w)


_READERS = [WeightReader()]


@contextlib.contextmanager
def step_weights(memoize=True):
    """Within this context the ``step`` methods share one :class:`WeightReader` (memoized by default).

    A generation loop opens it inside its body, so each weight is read once
    per iteration however many steps the body unrolls.
    """
    _READERS.append(WeightReader(memoize))
    try:
        yield _READERS[-1]
    finally:
        _READERS.pop()


def step_affine(x, kernel, bias, kernel_fn=None, bias_fn=None):
    """:meth:`WeightReader.affine` with the current reader."""
    return _READERS[-1].affine(x, kernel, bias, kernel_fn, bias_fn)


def _zeros_state(batch, channels, length):
    if not length:
        return ()
    zeros = tf.zeros(tf.stack([batch, channels]))
    return tuple(zeros for _ in range(length))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CausalConv1D(keras.layers.Layer):
    """Causal dilated convolution, eq. (2): ``out_t = b + sum_j W_j x_{t-(k-1-j)d}`` (tap 0 is the oldest).

    The input is left-padded with ``(k-1)*d`` zeros so the output has the
    input's length and step t depends on steps t-(k-1)d .. t only.
    """

    def __init__(self, filters, kernel_size=1, dilation_rate=1, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if kernel_size < 1 or dilation_rate < 1:
            raise ValueError(f"{self.name}: kernel_size and dilation_rate must be >= 1, "
                             f"got {kernel_size} and {dilation_rate}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, in_channels, self.filters),
            initializer=self.kernel_initializer)
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
                     if self.use_bias else None)

    @property
    def receptive_field(self):
        return (self.kernel_size - 1) * self.dilation_rate + 1

    @property
    def memory(self):
        """Past inputs a step needs: ``(k-1)*d``."""
        return (self.kernel_size - 1) * self.dilation_rate

    def initial_state(self, batch):
        """The queue before the first step: ``memory`` zero inputs (the layer's left zero padding)."""
        return _zeros_state(batch, int(self.kernel.shape[1]), self.memory)

    def step(self, state, xs):
        """Outputs for new consecutive inputs ``xs`` (a list of ``[B, C_in]``): ``(list of [B, C_out], state)``.

        The state is a tuple of the last ``memory`` inputs, oldest first (a
        tuple, so moving the queue on costs no op); tap j (0 = oldest)
        multiplies ``x_{t-(k-1-j)d}``, the kernel layout of ``call``.
        """
        k, memory = self.kernel_size, self.memory
        in_channels = int(self.kernel.shape[1])
        flat = (lambda w: w[0]) if k == 1 else (lambda w: tf.reshape(w, (k * in_channels, -1)))
        buf = list(state) + list(xs)  # buf[memory + i] is xs[i]
        ys = []
        for i in range(len(xs)):
            taps = buf[i: i + memory + 1: self.dilation_rate]  # k entries, oldest first
            taps = taps[0] if k == 1 else tf.concat(taps, axis=-1)
            ys.append(step_affine(taps, self.kernel, self.bias, kernel_fn=flat))
        return ys, (tuple(buf[len(buf) - memory:]) if memory else ())

    def step1(self, x):
        """A kernel-1 (stateless) convolution on one step ``x`` [B, C_in] -> [B, C_out]."""
        if self.kernel_size != 1:
            raise ValueError(f"{self.name}: step1 is for kernel size 1; use step(state, xs)")
        return step_affine(x, self.kernel, self.bias, kernel_fn=lambda w: w[0])

    def call(self, x):
        k, d = self.kernel_size, self.dilation_rate
        if k == 1:
            return matmul_last(x, self.kernel[0], self.bias)
        if d == 1:
            # oneDNN's convolution: ~30% faster than the im2col product here (bench/train_step.py),
            # but TF's CPU kernels have no gradient for dilation > 1.
            y = tf.nn.conv1d(tf.pad(x, [[0, 0], [k - 1, 0], [0, 0]]), self.kernel, stride=1, padding="VALID")
        else:
            t = tf.shape(x)[1]
            xp = tf.pad(x, [[0, 0], [(k - 1) * d, 0], [0, 0]])
            # Tap j (0 = oldest) sees x_{t-(k-1-j)d}; one matmul over all taps.
            taps = tf.concat([time_slice(xp, j * d, t) for j in range(k)], axis=-1)
            return matmul_last(taps, tf.reshape(self.kernel, (-1, self.filters)), self.bias)
        return tf.nn.bias_add(y, self.bias) if self.use_bias else y

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "dilation_rate": self.dilation_rate, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


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
        return matmul_last(frames, tf.reshape(self.kernel, (-1, self.filters)), self.bias)

    def step(self, xs):
        """One coarse step from the list of its S fine inputs ``[B, C_in]`` (oldest first): ``[B, C_out]``."""
        frame = tf.concat(xs, axis=-1)
        return step_affine(frame, self.kernel, self.bias, kernel_fn=lambda w: tf.reshape(w, (-1, self.filters)))

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
        y = matmul_last(x, tf.reshape(self.kernel, (x.shape[-1], -1)))
        return tf.nn.bias_add(tf.reshape(y, (b, t * self.factor, self.filters)), self.bias)

    def step(self, x):
        """One coarse step ``x`` [B, C_in] -> its S fine outputs ``[B, S, C_out]`` (fine step j gets kernel[:, j])."""
        c_in = int(self.kernel.shape[0])
        y = step_affine(x, self.kernel, self.bias, kernel_fn=lambda w: tf.reshape(w, (c_in, -1)),
                        bias_fn=lambda b: tf.tile(b, [self.factor]))
        return tf.reshape(y, (-1, self.factor, self.filters))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "factor": self.factor}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Delay(keras.layers.Layer):
    """Eq. (10): shift one step at the sequence's own rate, zeros first: ``[0, d_1, ..., d_{T-1}]``."""

    def call(self, x):
        return time_slice(tf.pad(x, [[0, 0], [1, 0], [0, 0]]), 0, tf.shape(x)[1])


def clipped_leaky_relu(x):
    """SRNN appendix A's nonlinearity: a leaky rectifier with leakiness 1/3, clipped at +-3."""
    return tf.clip_by_value(tf.nn.leaky_relu(x, alpha=1.0 / 3.0), -3.0, 3.0)


_ACTIVATIONS = {"clipped_leaky_relu": clipped_leaky_relu}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PointwiseMLP(keras.layers.Layer):
    """A stack of 1x1 convolutions: ``hidden`` layers with ``activation``, then an optional linear output layer.

    STCN's latent and output networks ("2 1x1 convolutions with ReLU", STCN
    appendix 6.1) and WaveNet's output layers.  ``out_initializer='zeros'`` makes
    a latent projection start at zero (every KL starts at 0).
    """

    def __init__(self, hidden=(), out_units=None, activation="relu", out_initializer="glorot_uniform",
                 out_dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden = [int(u) for u in hidden]
        self.out_units = None if out_units is None else int(out_units)
        self.activation = activation
        self.out_initializer = out_initializer
        self.out_dtype = out_dtype  # e.g. float32 for a layer that parameterises a distribution (mixed precision)
        self._act = _ACTIVATIONS.get(activation) or keras.activations.get(activation)
        self.layers_ = [CausalConv1D(u, 1, name=f"hidden_{i}") for i, u in enumerate(self.hidden)]
        self.out = (None if self.out_units is None else
                    CausalConv1D(self.out_units, 1, kernel_initializer=out_initializer, name="out", dtype=out_dtype))

    def call(self, x):
        for layer in self.layers_:
            x = self._act(layer(x))
        return x if self.out is None else self.out(x)

    def step1(self, x):
        """The same on one step ``x`` [B, C] (stateless)."""
        for layer in self.layers_:
            x = self._act(layer.step1(x))
        return x if self.out is None else self.out.step1(x)

    def first_product(self, x, start, stop, bias=False):
        """``x @ W_1[start:stop] (+ b_1)``: the first layer's product with the part ``x`` of its input (rows
        ``start:stop`` of its kernel), any leading shape. The first layer of ``[u, v]`` is
        ``first_product(u, 0, n) + first_product(v, n, n + m, bias=True)``, so a part that does not change inside
        a loop is multiplied once for all steps (:meth:`from_first`)."""
        first = self.layers_[0] if self.layers_ else self.out
        return matmul_last(x, first.kernel[0][start:stop], first.bias if bias else None)

    def from_first(self, pre):
        """The MLP's output from its first layer's pre-activation ``pre`` (see :meth:`first_product`)."""
        if not self.layers_:
            return pre
        x = self._act(pre)
        for layer in self.layers_[1:]:
            x = self._act(layer(x))
        return x if self.out is None else self.out(x)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "out_units": self.out_units,
                "activation": self.activation, "out_initializer": self.out_initializer, "out_dtype": self.out_dtype}


def gate(a):
    """Gated activation of eq. (3): ``tanh(a_1) * sigmoid(a_2)`` for ``a = [a_1, a_2]``."""
    a_tanh, a_sigmoid = tf.split(a, 2, axis=-1)
    return tf.tanh(a_tanh) * tf.sigmoid(a_sigmoid)


def _sum_pool(x, factor):
    """Sum over each group of ``factor`` consecutive steps, divided by sqrt(factor)."""
    b, t, c = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
    return tf.reduce_sum(tf.reshape(x, (b, t // factor, factor, c)), axis=2) / math.sqrt(factor)


def _pad_to_multiple(x, factor):
    """``x`` [B, T, C] with zero steps appended up to a multiple of ``factor``."""
    t = tf.shape(x)[1]
    return tf.pad(x, [[0, 0], [0, (factor - t % factor) % factor], [0, 0]])


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

    def __init__(self, channels, kernel_size=1, dilation_rate=1, return_skip=False, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.return_skip = bool(return_skip)
        self.gate_conv = CausalConv1D(2 * self.channels, self.kernel_size, self.dilation_rate, name="gate_conv")
        self.out_conv = CausalConv1D(self.channels, 1, name="out_conv")
        self.skip_proj = None

    def build(self, x_shape, cond_shape=None):
        if int(x_shape[-1]) != self.channels:
            self.skip_proj = CausalConv1D(self.channels, 1, use_bias=False, name="skip_proj")

    def call(self, x, cond=None):
        """The block's output, or with ``return_skip`` ``(output, residual branch)``: the branch
        ``Conv1x1(gate)`` is WaveNet's skip output."""
        a = self.gate_conv(x if cond is None else tf.concat([x, cond], axis=-1))
        identity = x if self.skip_proj is None else self.skip_proj(x)
        residual = self.out_conv(gate(a))
        return (identity + residual, residual) if self.return_skip else identity + residual

    def initial_state(self, batch):
        return self.gate_conv.initial_state(batch)

    def step(self, state, x, cond=None):
        """One step ``x`` [B, C] (``cond`` [B, C_c]): ``(output, skip, state)``."""
        inp = x if cond is None else tf.concat([x, cond], axis=-1)
        (a,), state = self.gate_conv.step(state, [inp])
        identity = x if self.skip_proj is None else self.skip_proj.step1(x)
        residual = self.out_conv.step1(gate(a))
        return identity + residual, residual, state

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "kernel_size": self.kernel_size,
                "dilation_rate": self.dilation_rate, "return_skip": self.return_skip}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DownsamplingWaveNetBlock(keras.layers.Layer):
    """First bottom-up block of a layer with downsampling factor S > 1 (§3, eq. 8b).

    ``mode='strided'`` (the paper): the residual path's convolution has kernel
    S and stride S, the identity path is the average of each S steps, with a
    bias-free 1x1 projection after it on a channel change.

    ``mode='sum_pool'`` (the authors' public code, ``torch_ext_causal_conv.py``:
    ``WavenetBlock`` with ``downscale``, ``CausalConv1d`` -> ``DownscaleConv1D``):
    residual path: a causal conv (``kernel_size``, ``dilation_rate``) on the
    fine grid, then a fixed sum-pool / sqrt(S) (kernel S, stride S, no
    weights), then the gated activation, then a bias-free 1x1; identity path:
    a 1x1 (with bias) when the channels change, then the same pooling.

    Either way coarse step tau depends on fine steps <= S*tau+S-1 only.

    ``pad_input`` (the authors' ``DownscaleConv1D``): an input whose length is
    not a multiple of S is padded with zero steps here, on each path where
    the pooling reads it (``sum_pool``: the gate's pre-activation and the
    identity path's input, whose 1x1 projection then adds its bias), rather
    than by the model padding the data.
    """

    MODES = ("strided", "sum_pool")

    def __init__(self, channels, factor, mode="strided", kernel_size=2, dilation_rate=1, pad_input=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"{self.name}: downsampling mode must be one of {self.MODES}, got {mode!r}")
        self.channels = int(channels)
        self.factor = int(factor)
        self.mode = mode
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.pad_input = bool(pad_input)
        if mode == "strided":
            self.gate_conv = StridedConv1D(2 * self.channels, self.factor, name="gate_conv")
        else:
            self.gate_conv = CausalConv1D(2 * self.channels, self.kernel_size, self.dilation_rate, name="gate_conv")
        self.out_conv = CausalConv1D(self.channels, 1, use_bias=mode == "strided", name="out_conv")
        self.skip_proj = None

    def build(self, input_shape):
        if int(input_shape[-1]) != self.channels:
            self.skip_proj = CausalConv1D(self.channels, 1, use_bias=self.mode == "sum_pool", name="skip_proj")

    def call(self, x):
        pad = (lambda v: _pad_to_multiple(v, self.factor)) if self.pad_input else (lambda v: v)
        if self.mode == "strided":
            x = pad(x)
            residual = self.out_conv(gate(self.gate_conv(x)))
            identity = _mean_pool(x, self.factor)
            return (identity if self.skip_proj is None else self.skip_proj(identity)) + residual
        residual = self.out_conv(gate(_sum_pool(pad(self.gate_conv(x)), self.factor)))
        x = pad(x)
        identity = _sum_pool(x if self.skip_proj is None else self.skip_proj(x), self.factor)
        return identity + residual

    def initial_state(self, batch):
        return () if self.mode == "strided" else self.gate_conv.initial_state(batch)

    def step(self, state, xs):
        """One coarse step from the list of its S inputs ``[B, C_in]`` (oldest first): ``(output, state)``."""
        s = self.factor
        if self.mode == "strided":
            residual = self.out_conv.step1(gate(self.gate_conv.step(xs)))
            identity = tf.reduce_mean(tf.stack(xs, axis=1), axis=1)
            return (identity if self.skip_proj is None else self.skip_proj.step1(identity)) + residual, state
        # The unstrided causal conv runs at the input rate over the S inputs, then sum / sqrt(S), then the gate.
        a, state = self.gate_conv.step(state, xs)
        residual = self.out_conv.step1(gate(tf.add_n(a) / math.sqrt(s)))
        projected = list(xs) if self.skip_proj is None else [self.skip_proj.step1(x) for x in xs]
        return tf.add_n(projected) / math.sqrt(s) + residual, state

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "factor": self.factor, "mode": self.mode,
                "kernel_size": self.kernel_size, "dilation_rate": self.dilation_rate, "pad_input": self.pad_input}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class UpsamplingWaveNetBlock(keras.layers.Layer):
    """Last top-down block of a layer with factor S > 1: CondWaveNet^U of eq. (12b).

    The gated activation runs at the coarse rate on ``[x, c]``.
    ``mode='transposed'`` (the paper): the residual path's output convolution
    is a strided transposed convolution (kernel S, stride S) to the fine rate,
    so the S fine steps of a coarse step get different values; the identity
    path repeats each coarse step S times (nearest neighbour), with a
    bias-free 1x1 projection on a channel change.
    ``mode='repeat'`` (the authors' public code, ``UpscaleConv1D``: a fixed
    transposed convolution with weights 1 on both paths): the block runs at
    the coarse rate (bias-free 1x1 output convolution; a 1x1 with bias on the
    identity path on a channel change) and every fine step of a coarse step
    gets the same output.
    """

    MODES = ("transposed", "repeat")

    def __init__(self, channels, factor, mode="transposed", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"{self.name}: upsampling mode must be one of {self.MODES}, got {mode!r}")
        self.channels = int(channels)
        self.factor = int(factor)
        self.mode = mode
        self.gate_conv = CausalConv1D(2 * self.channels, 1, name="gate_conv")
        if mode == "transposed":
            self.out_conv = StridedConv1DTranspose(self.channels, self.factor, name="out_conv")
        else:
            self.out_conv = CausalConv1D(self.channels, 1, use_bias=False, name="out_conv")
        self.skip_proj = None

    def build(self, x_shape, cond_shape=None):
        if int(x_shape[-1]) != self.channels:
            self.skip_proj = CausalConv1D(self.channels, 1, use_bias=self.mode == "repeat", name="skip_proj")

    def call(self, x, cond=None):
        a = self.gate_conv(x if cond is None else tf.concat([x, cond], axis=-1))
        identity = x if self.skip_proj is None else self.skip_proj(x)
        if self.mode == "transposed":
            return tf.repeat(identity, self.factor, axis=1) + self.out_conv(gate(a))
        return tf.repeat(identity + self.out_conv(gate(a)), self.factor, axis=1)

    def initial_state(self, batch):
        return ()

    def step(self, state, x, cond=None):
        """One coarse step ``x`` [B, C]: ``(list of its S fine outputs [B, C_out], state)`` (stateless)."""
        inp = x if cond is None else tf.concat([x, cond], axis=-1)
        a = gate(self.gate_conv.step1(inp))
        identity = x if self.skip_proj is None else self.skip_proj.step1(x)
        if self.mode == "repeat":
            return [identity + self.out_conv.step1(a)] * self.factor, state
        return tf.unstack(identity[:, None] + self.out_conv.step(a), num=self.factor, axis=1), state

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "factor": self.factor, "mode": self.mode}


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
                 downsample=1, downsample_mode="strided", upsample=1, out_channels=None, upsample_mode="transposed",
                 downsample_padding=False, **kwargs):
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
        self.upsample_mode = upsample_mode
        self.downsample_padding = bool(downsample_padding)
        self.out_channels = int(out_channels) if out_channels is not None else self.channels

        n = len(self.dilations)
        self.in_proj = CausalConv1D(self.channels, 1, name="in_proj") if self.input_projection else None
        self.blocks = []
        for i, d in enumerate(self.dilations):
            ch = self.out_channels if i == n - 1 else self.channels
            if i == 0 and self.downsample > 1:
                block = DownsamplingWaveNetBlock(ch, self.downsample, downsample_mode, self.kernel_size, d,
                                                 pad_input=self.downsample_padding, name=f"block_{i}")
            elif i == n - 1 and self.upsample > 1:
                block = UpsamplingWaveNetBlock(ch, self.upsample, self.upsample_mode, name=f"block_{i}")
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

    # -- streaming -----------------------------------------------------------------------
    def initial_state(self, batch):
        """One state per block (``()`` for blocks without memory: kernel-1 stacks are stateless)."""
        return tuple(block.initial_state(batch) for block in self.blocks)

    @property
    def stateless(self):
        """True when no block keeps past inputs: ``step`` then takes ``state=None``."""
        return all(isinstance(b, UpsamplingWaveNetBlock) or (isinstance(b, DownsamplingWaveNetBlock) and
                                                             b.mode == "strided") or b.gate_conv.memory == 0
                   for b in self.blocks)

    def step(self, state, xs, cond=None):
        """One output step: ``xs`` is the list of its S inputs ``[B, C_in]`` (S = ``downsample``, 1 without
        downsampling), ``cond`` [B, C_c] its conditioning (conditional stacks).  Returns ``(output, state)``;
        an upsampling stack's output is the list of its U fine outputs."""
        if len(xs) != self.downsample:
            raise ValueError(f"{self.name}: a step takes {self.downsample} inputs, got {len(xs)}")
        if state is None:
            if not self.stateless:
                raise ValueError(f"{self.name}: has memory, so a step needs its state")
            state = ((),) * len(self.blocks)
        if self.in_proj is not None:
            xs = [self.in_proj.step1(x) for x in xs]
        c = cond if self.conditional else None
        new_state, x = list(state), None
        for i, block in enumerate(self.blocks):
            if isinstance(block, DownsamplingWaveNetBlock):
                x, new_state[i] = block.step(state[i], xs)
            elif isinstance(block, UpsamplingWaveNetBlock):
                x, new_state[i] = block.step(state[i], xs[0] if x is None else x, c)
            else:
                x, _, new_state[i] = block.step(state[i], xs[0] if x is None else x, c)
        return x, tuple(new_state)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "dilations": self.dilations,
                "kernel_size": self.kernel_size, "conditional": self.conditional,
                "input_projection": self.input_projection, "downsample": self.downsample,
                "downsample_mode": self.downsample_mode, "upsample": self.upsample,
                "out_channels": self.out_channels, "upsample_mode": self.upsample_mode,
                "downsample_padding": self.downsample_padding}
