"""Cached (incremental) generation: exact samples at a constant cost per step.

The naive sampler (:meth:`tfhier.models.base.SequenceModel.generate_naive`)
re-runs the whole network over the growing buffer for every new step: its cost
grows with the square of the length.  Here every layer keeps the state it
needs, as in Fast WaveNet (Paine et al. 2016, arXiv 1611.09482), and each
activation is computed once:

* :class:`StreamingConv`: a causal convolution (kernel k, dilation d) keeps a
  queue of its last ``(k-1)*d`` inputs; a new input (or a run of n new
  consecutive inputs) gives its outputs from the queue and the new input
  alone.  Kernel layout is the one of :class:`tfhier.blocks.CausalConv1D`
  (tap j = 0 is the oldest, multiplying ``x_{t-(k-1-j)d}``).
* :class:`StreamingWaveNet`: a stack of WaveNet blocks fed one output step at a
  time; a downsampling first block consumes the S inputs of its coarse step at
  once ('strided': kernel S / stride S frame; 'sum_pool': its unstrided causal
  conv runs over the S inputs at the input rate, then sums / sqrt(S)).
  Reusable by any convolutional model built from :mod:`tfhier.blocks`.
* :class:`MSSTCNGenerator`: the MS-STCN schedule.  Layer l (total factor
  ``S^(l)``) takes one coarse step every ``S^(l)`` fine steps: at the start of
  coarse step tau it computes ``h^(l)`` from ``[g^(l), Delay(d^(l))]``
  (``d^(l)`` of step tau-1, complete because every fine step before
  ``S^(l)*tau`` is generated), draws ``z^(l)`` from its prior (or posterior,
  when priming), and runs the top-down stack, whose upsampling block gives
  the ``S_l`` outputs of the layer below at once: they are served to the
  children from that result.  Once the children (the ``S_l`` steps of layer
  l-1, recursively down to the fine steps, which sample ``y_t`` from the
  head) are done, the bottom-up path of layer l is advanced by one step with
  the ``S_l`` buffered inputs.  The top-down stacks are 1x1 convolutions only
  (no state), so they are the model's own layers applied to one step.

The whole schedule is a ``tf.while_loop`` over the top layer's coarse steps
with fixed-shape state (queues, the last ``d^(l)`` of every layer, a
TensorArray of outputs).  Inside one top step the children of a layer are
unrolled in the graph when the unrolled size stays small (``max_unroll`` fine
steps; the IAM-OnDB model's 8 fine steps per top step are fully unrolled: no
conditionals, static structure, XLA-friendly) and run by an inner
``tf.while_loop`` otherwise (e.g. strides 5, 5, 4 of the speech configs).

Noise follows the contract of :mod:`tfhier.models.base` (latent noise from
:func:`~tfhier.models.base.latent_noise`, drawn once for the final length;
output step t drawn with :func:`~tfhier.models.base.output_step_seed`), so for
the same seed the cached and naive generators give the same sequences up to
float rounding.

Priming (continuations): the prefix is fed through the same machinery
(teacher forcing: the observed ``y_t`` replaces the sample for ``t <
prefix_length``).  A latent step whose whole span of fine steps lies in the
prefix is drawn from the posterior q, which needs ``d^(l)`` of that step
*before* its fine steps are (re)played; these come from one parallel
bottom-up pass over the prefix (:meth:`MSSTCN.bottom_up_features`), exact
because ``d^(l)`` of such a step depends on the prefix only.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import tensorflow as tf

from tfhier.blocks import (CausalConv1D, DownsamplingWaveNetBlock, UpsamplingWaveNetBlock, WaveNet,
                           WaveNetBlock, gate)
from tfhier.models.base import (gather_continuations, generation_latent_seed, latent_noise, latent_normal,
                                output_step_seed)


class WeightReader:
    """Serves the weights to the streaming layers (their ``read`` argument).

    ``read(variable)`` is the weight's value; ``read.affine(x, kernel, bias)``
    is ``x @ W + b`` for one step ``x`` [B, C_in].  The affine product is one
    MatMul of ``[x, 1]`` with ``W`` stacked on ``b``: a MatMul followed by a
    BiasAdd is fused by Grappler into oneDNN's ``_FusedMatMul``, which at
    one-step sizes costs ~3x a plain MatMul, and these products are most of
    a generation step (bench/generation.py).  With ``memoize``, each weight
    (and each stacked ``[W; b]``) is computed once per graph it is first used
    in (one loop body: the IAM-OnDB model's 8 unrolled fine steps per loop
    iteration share them), not once per use.
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


#: reads every weight at each use (the default outside a generation loop)
read_variable = WeightReader()


def conv_1x1(conv: CausalConv1D, x, read=read_variable):
    """A kernel-1 :class:`CausalConv1D` on one step ``x`` [B, C_in]."""
    return read.affine(x, conv.kernel, conv.bias, kernel_fn=lambda k: k[0])


def _ceil_div(a, b):
    if isinstance(a, int):
        return -(-a // b)
    return (a + b - 1) // b


class StreamingConv:
    """Incremental state of one :class:`tfhier.blocks.CausalConv1D` (the Fast WaveNet queue).

    The state is the layer's last ``memory = (k-1)*d`` inputs, oldest first,
    as a tuple of ``[B, C_in]`` tensors (zeros at the start: the layer's left
    zero padding); a tuple, so moving the queue on costs no op and a step
    costs one matmul over the k taps.  ``conv(state, x)`` with new
    consecutive inputs ``x`` (a list of n ``[B, C_in]``) returns their n
    outputs ``[B, C_out]`` (equal to the layer's over the whole sequence) and
    the new state.  Tap j (0 = oldest) multiplies ``x_{t-(k-1-j)d}``, the
    layout of :class:`~tfhier.blocks.CausalConv1D`'s kernel ``[k, C_in, C_out]``.
    """

    def __init__(self, conv: CausalConv1D):
        self.conv = conv
        self.kernel_size = conv.kernel_size
        self.dilation = conv.dilation_rate
        self.memory = (self.kernel_size - 1) * self.dilation

    @property
    def in_channels(self):
        return int(self.conv.kernel.shape[1])

    def initial_state(self, batch):
        if not self.memory:
            return ()
        zeros = tf.zeros(tf.stack([batch, self.in_channels]))
        return tuple(zeros for _ in range(self.memory))

    def __call__(self, state, xs, read=read_variable):
        k, d = self.kernel_size, self.dilation
        flat = (lambda w: w[0]) if k == 1 else (lambda w: tf.reshape(w, (k * self.in_channels, -1)))
        buf = list(state) + list(xs)  # buf[memory + i] is xs[i]
        ys = []
        for i in range(len(xs)):
            taps = buf[i: i + self.memory + 1: d]  # k entries, oldest first
            taps = taps[0] if k == 1 else tf.concat(taps, axis=-1)
            ys.append(read.affine(taps, self.conv.kernel, self.conv.bias, kernel_fn=flat))
        return ys, tuple(buf[len(buf) - self.memory:]) if self.memory else ()


class StreamingWaveNet:
    """Incremental :class:`tfhier.blocks.WaveNet`: one output step per :meth:`step`.

    ``step(state, xs, cond=None)``: ``xs`` is the list of the S inputs
    ``[B, C_in]`` of one output step (S = the stack's ``downsample``, 1
    without downsampling), ``cond`` [B, C_c] the conditioning of that output
    step (conditional stacks).  Returns the output ``[B, C_out]`` (for an
    upsampling stack with factor U, a list of the U outputs) and the new state
    (one queue per block; ``()`` for blocks without memory, so kernel-1
    stacks, e.g. MS-STCN's top-down ones, are stateless).
    """

    def __init__(self, net: WaveNet):
        self.net = net
        self.factor = net.downsample
        self.convs = []
        for block in net.blocks:
            if isinstance(block, UpsamplingWaveNetBlock):
                self.convs.append(None)  # kernel 1 at its input rate: no state
            elif isinstance(block, DownsamplingWaveNetBlock) and block.mode == "strided":
                self.convs.append(None)  # consumes exactly the S inputs of its step
            else:
                self.convs.append(StreamingConv(block.gate_conv))

    def initial_state(self, batch):
        return tuple(() if c is None else c.initial_state(batch) for c in self.convs)

    @property
    def stateless(self):
        """True when no block keeps past inputs (kernel-1 stacks): ``step`` then takes ``state=None``."""
        return all(c is None or c.memory == 0 for c in self.convs)

    def step(self, state, xs, cond=None, read=read_variable):
        if len(xs) != self.factor:
            raise ValueError(f"{self.net.name}: a step takes {self.factor} inputs, got {len(xs)}")
        if state is None:
            if not self.stateless:
                raise ValueError(f"{self.net.name}: has memory, so a step needs its state")
            state = ((),) * len(self.convs)
        new_state = list(state)
        net = self.net
        if net.in_proj is not None:
            xs = [conv_1x1(net.in_proj, x, read) for x in xs]
        c = cond if net.conditional else None
        x = None
        for i, block in enumerate(net.blocks):
            if isinstance(block, DownsamplingWaveNetBlock):
                x, new_state[i] = self._downsampling_block(block, self.convs[i], state[i], xs, read)
                continue
            x = xs[0] if x is None else x
            if isinstance(block, UpsamplingWaveNetBlock):
                x = self._upsampling_block(block, x, c, read)
            else:
                x, new_state[i] = self._block(block, self.convs[i], state[i], x, c, read)
        return x, tuple(new_state)

    @staticmethod
    def _block(block: WaveNetBlock, conv: StreamingConv, state, x, cond, read):
        """Eq. (3)/(4) for one step ``x`` [B, C]."""
        inp = x if cond is None else tf.concat([x, cond], axis=-1)
        (a,), state = conv(state, [inp], read)
        identity = x if block.skip_proj is None else conv_1x1(block.skip_proj, x, read)
        return identity + conv_1x1(block.out_conv, gate(a), read), state

    @staticmethod
    def _downsampling_block(block: DownsamplingWaveNetBlock, conv, state, xs, read):
        """One coarse step from its S inputs ``xs`` (see the block's docstring)."""
        s = block.factor
        if block.mode == "strided":
            # Kernel [S, C, 2C'] over the frame of S consecutive steps, oldest first.
            frame = tf.concat(xs, axis=-1)
            a = read.affine(frame, block.gate_conv.kernel, block.gate_conv.bias,
                            kernel_fn=lambda w: tf.reshape(w, (s * int(xs[0].shape[-1]), -1)))
            residual = conv_1x1(block.out_conv, gate(a), read)
            identity = tf.reduce_mean(tf.stack(xs, axis=1), axis=1)
        else:
            # The unstrided causal conv runs at the input rate over the S inputs, then sum / sqrt(S).
            a, state = conv(state, xs, read)
            residual = tf.stack([conv_1x1(block.out_conv, gate(a_i), read) for a_i in a], axis=1)
            residual = tf.reduce_sum(residual, axis=1) / math.sqrt(s)
            identity = tf.reduce_sum(tf.stack(xs, axis=1), axis=1) / math.sqrt(s)
        if block.skip_proj is not None:
            identity = conv_1x1(block.skip_proj, identity, read)
        return identity + residual, state

    @staticmethod
    def _upsampling_block(block: UpsamplingWaveNetBlock, x, cond, read):
        """Eq. (12b) for one coarse step ``x`` [B, C]: the list of its S fine outputs."""
        inp = x if cond is None else tf.concat([x, cond], axis=-1)
        a = gate(conv_1x1(block.gate_conv, inp, read))
        identity = x if block.skip_proj is None else conv_1x1(block.skip_proj, x, read)
        c_in, _, c_out = block.out_conv.kernel.shape  # [C_in, S, C_out]: fine step j of the coarse step gets [:, j]
        residual = read.affine(a, block.out_conv.kernel, block.out_conv.bias,
                               kernel_fn=lambda w: tf.reshape(w, (int(c_in), -1)),
                               bias_fn=lambda b: tf.tile(b, [block.factor]))
        residual = tf.reshape(residual, (-1, block.factor, int(c_out)))
        return tf.unstack(identity[:, None] + residual, axis=1)


class MSSTCNGenerator:
    """Cached sampler of an :class:`tfhier.models.MSSTCN` (see the module docstring).

    ``sample(num_samples, num_steps, seed, temperature)`` and
    ``continue_sequences(prefix, prefix_lengths, num_steps, seed, temperature)``
    build the graph ops (call them inside a tf.function; the model's
    ``generate`` / ``continue_sequences`` do that for you).  Python ints stay
    static, so with ints for the sizes the loop has static shapes (XLA).

    Args:
      model: a built MSSTCN.
      max_unroll: the most fine steps one top-layer step may unroll in the
        graph; a layer whose children would exceed it loops over them with an
        inner ``tf.while_loop`` instead.
    """

    def __init__(self, model, max_unroll=16):
        self.model = model
        self.strides = list(model.strides)
        self.factors = list(model.factors)
        self.n = len(self.strides)
        self.bottom_up = [StreamingWaveNet(net) for net in model.bottom_up]
        self.top_down_h = [StreamingWaveNet(net) for net in model.top_down_h]
        self.top_down_g = [StreamingWaveNet(net) for net in model.top_down_g]
        self.unroll = []
        body = 1  # fine-step bodies in the graph per step of the layer below
        for s in self.strides:
            if s * body <= max_unroll:
                self.unroll.append(True)
                body *= s
            else:
                self.unroll.append(False)

    # -- public ---------------------------------------------------------------------
    def sample(self, num_samples, num_steps, seed, temperature=1.0):
        """Samples ``[num_samples, num_steps, D]`` (float32)."""
        return self._run(num_samples, None, None, num_steps, seed, temperature)

    def continue_sequences(self, prefix, prefix_lengths, num_steps, seed, temperature=1.0):
        """The ``num_steps`` steps after each prefix, ``[B, num_steps, D]``: ``prefix`` [B, T0, D] holds row b's
        observed steps in ``[:prefix_lengths[b]]`` (1 <= length <= T0)."""
        prefix = tf.cast(prefix, tf.float32)
        return self._run(None, prefix, tf.cast(prefix_lengths, tf.int32), num_steps, seed, temperature)

    # -- the schedule -------------------------------------------------------------------
    def _run(self, batch, prefix, lengths, num_steps, seed, temperature):
        model = self.model
        m = model.time_multiple
        seed = tf.cast(seed, tf.int32)
        if not isinstance(num_steps, int):
            num_steps = tf.cast(num_steps, tf.int32)
        ctx = SimpleNamespace(seed=seed, temperature=tf.cast(temperature, tf.float32), primed=prefix is not None,
                              read=read_variable)
        if ctx.primed:
            batch = tf.shape(prefix)[0] if prefix.shape[0] is None else int(prefix.shape[0])
            t0 = tf.shape(prefix)[1] if prefix.shape[1] is None else int(prefix.shape[1])
            prefix = prefix * tf.sequence_mask(lengths, t0, dtype=tf.float32)[..., None]
            n_alloc = _ceil_div(t0 + num_steps, m)
            n_run = _ceil_div(tf.reduce_max(lengths) + num_steps, m)
            # d^(l) of every latent step inside the prefix, for the posteriors of the primed steps.
            t0_pad = _ceil_div(t0, m) * m
            ctx.d_obs = model.bottom_up_features(tf.pad(prefix, [[0, 0], [0, t0_pad - t0], [0, 0]]))
            ctx.prefix, ctx.lengths, ctx.t0 = prefix, lengths, t0
        else:
            if not isinstance(batch, int):
                batch = tf.cast(batch, tf.int32)
            n_alloc = n_run = _ceil_div(num_steps, m)
        latent_seed = generation_latent_seed(seed)
        ctx.eps = [latent_noise(latent_seed, l, n_alloc * (m // self.factors[l]), batch, model.latent_dims[l])
                   for l in range(self.n)]

        state = {
            "bottom_up": tuple(net.initial_state(batch) for net in self.bottom_up),
            "d_prev": tuple(tf.zeros(tf.stack([batch, c])) for c in model.channels),
            "out": tf.TensorArray(tf.float32, size=n_alloc * m, element_shape=tf.TensorShape(
                [batch if isinstance(batch, int) else None, model.input_dim])),
        }

        def body(tau, state):
            ctx.read = WeightReader(memoize=True)
            state, _ = self._layer_step(self.n - 1, tau, None, state, ctx)
            return tau + 1, state

        _, state = tf.while_loop(lambda tau, _: tau < n_run, body, (tf.constant(0), state))
        if ctx.primed:
            steps = tf.transpose(state["out"].gather(tf.range(n_run * m)), [1, 0, 2])
            return gather_continuations(steps, lengths, num_steps)
        return tf.transpose(state["out"].stack(), [1, 0, 2])[:, :num_steps]

    def _layer_step(self, l, tau, g, state, ctx):
        """Coarse step ``tau`` of layer l (0-based) given ``g^(l)`` of it ([B, C], None at the top):
        top-down, the children, then one bottom-up step. Returns (state, d^(l)[tau])."""
        model, read = self.model, ctx.read
        with tf.name_scope(f"top_down_{l + 1}"):
            delayed = state["d_prev"][l]  # Delay(d^(l)) at tau: d^(l)[tau - 1]
            h, _ = self.top_down_h[l].step(None, [delayed if g is None else tf.concat([g, delayed], axis=-1)], read=read)
            prior = latent_normal(conv_1x1(model.prior_proj[l], h, read))
            eps = tf.gather(ctx.eps[l], tau)
            z = prior.loc + prior.scale * (ctx.temperature * eps)
            if ctx.primed:
                d_obs = ctx.d_obs[l]
                observed_steps = tf.shape(d_obs)[1] if d_obs.shape[1] is None else int(d_obs.shape[1])
                d_now = tf.gather(d_obs, tf.minimum(tau, observed_steps - 1), axis=1)
                posterior = latent_normal(conv_1x1(model.posterior_proj[l], tf.concat([h, d_now], axis=-1), read))
                use_posterior = self.factors[l] * (tau + 1) <= ctx.lengths
                z = tf.where(use_posterior[:, None], posterior.loc + posterior.scale * eps, z)
            if model.gen_post == "conditional":
                g_below, _ = self.top_down_g[l].step(None, [h], cond=z, read=read)
            else:
                g_below, _ = self.top_down_g[l].step(None, [tf.concat([h, z], axis=-1)], read=read)
        # The inputs g of the S_l steps of the layer below (or of the fine steps), each [B, C].
        g_below = g_below if isinstance(g_below, list) else [g_below]
        s = self.strides[l]

        def child(i, g_i, st):
            if l == 0:
                return self._fine_step(i, g_i, st, ctx)
            return self._layer_step(l - 1, i, g_i, st, ctx)

        if self.unroll[l]:
            xs = []
            for j in range(s):
                state, x_j = child(tau * s + j, g_below[j], state)
                xs.append(x_j)
        else:
            g_stack = tf.stack(g_below, axis=0)

            def loop_body(j, st, ta):
                st, x_j = child(tau * s + j, tf.gather(g_stack, j), st)
                return j + 1, st, ta.write(j, x_j)

            _, state, ta = tf.while_loop(lambda j, *_: j < s, loop_body,
                                         (tf.constant(0), state, tf.TensorArray(tf.float32, size=s)))
            xs = tf.unstack(ta.stack(), num=s, axis=0)
        with tf.name_scope(f"bottom_up_{l + 1}"):
            d, bu_state = self.bottom_up[l].step(state["bottom_up"][l], xs, read=read)
        state = dict(state)
        state["bottom_up"] = _replace(state["bottom_up"], l, bu_state)
        state["d_prev"] = _replace(state["d_prev"], l, d)
        return state, d

    def _fine_step(self, t, g, state, ctx):
        """Fine step t: y_t from the head on ``g^(0)`` [B, C] (or the observed prefix); returns the bottom-up
        input ``input_proj(y_t)``."""
        model = self.model
        with tf.name_scope("head"):
            eta = conv_1x1(model.head.proj, g, ctx.read)  # the head's projection on one step
        with tf.name_scope("head_sample"):
            y = model.sample_step(eta, output_step_seed(ctx.seed, t), ctx.temperature)
        if ctx.primed:
            observed = tf.gather(ctx.prefix, tf.minimum(t, ctx.t0 - 1), axis=1)
            y = tf.where((t < ctx.lengths)[:, None], observed, y)
        state = dict(state)
        state["out"] = state["out"].write(t, y)
        with tf.name_scope("input_proj"):
            return state, conv_1x1(model.input_proj, y, ctx.read)


def _replace(items, i, value):
    items = list(items)
    items[i] = value
    return tuple(items)


__all__ = ["MSSTCNGenerator", "StreamingConv", "StreamingWaveNet", "WeightReader", "conv_1x1", "read_variable"]
