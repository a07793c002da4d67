"""MS-STCN: multiscale stochastic temporal convolutional network.

Andersson, Wahlström and Schön, "Learning deep autoregressive models for
hierarchical data", SYSID 2021.

Bottom-up (eq. 8), with layer l downsampled by ``strides[l]`` relative to
layer l-1 (total factor ``S^(l)``)::

    d^(1) = Wavenet(y),   d^(l) = Wavenet^D(d^(l-1))

Top-down (eqs. 9-13), from l = L down to 1::

    h^(L) = Wavenet_1x1(Delay(d^(L)))
    h^(l) = Wavenet_1x1([g^(l), Delay(d^(l))])
    p(z^(l) | h^(l))  = N(Conv1x1(h^(l)))                       (11)
    q(z^(l) | y)      = N(Conv1x1([h^(l), d^(l)]))              (13)
    g^(l-1) = CondWavenet^U_1x1(h^(l), z^(l))                   (12)
    p(y | z) = head(Conv1x1(g^(0)))                             (A.2)

``Delay`` shifts one step at the layer's own rate, so the prior of coarse
step tau sees data before fine step S^(l)*tau only, and the likelihood of y_t
sees y_{<t}: the model is autoregressive and every latent step is drawn
before the fine steps it serves.

Choices where the paper is silent or differs from the authors' public code
(``github.com/carl-andersson/MS-STCN``), each an option:

* ``downsampling='strided'`` (paper §3: strided conv on the residual path,
  average on the identity path) or ``'sum_pool'`` (authors' code,
  ``torch_ext_causal_conv.py`` ``WavenetBlock``/``DownscaleConv1D``: an
  unstrided k=2 conv on the fine grid, a fixed sum-pool / sqrt(S), the gate,
  a bias-free 1x1; identity: 1x1 on a channel change, then the pooling).
* ``upsampling='transposed'`` (eq. 12b: a strided transposed convolution, so
  the fine steps of a coarse step differ) or ``'repeat'`` (the authors'
  ``UpscaleConv1D`` on both paths: every fine step of a coarse step gets the
  same g).
* ``mixture='joint'`` (A.2: one component for the whole step) or
  ``'per_dim'`` (the density the authors' ``NormalMixture.py`` scores, with a
  sampler that draws from that same distribution; see :mod:`tfhier.heads`).
* ``latents='none'``: the deterministic control of Table 1 (the same
  network, the latent path removed: ``g^(l-1) = Wavenet^U(h^(l))``; exact
  likelihood, no KL).
* ``channels``: the paper's IAM-OnDB setting is 64 filters in every layer;
  the authors' code uses 8 x latent size, i.e. [64, 64, 64, 32, 16], with
  ``stack_input='first_block'`` (below) for their stacks' widths.
* docs/authors_equivalence.md: which options compute exactly what the
  authors' code computes (checked on their model and weights), and the
  importer of their checkpoints (``python -m tfhier.tools.import_authors_msstcn``).
* IAM-OnDB head: the paper's mixture of 10 Gaussians + a pen Bernoulli
  (``head_components=10``); the authors' code uses one Gaussian (``1``).
* ``gen_post='conditional'`` is eq. (12) (z enters every block's residual
  path); ``'plain'`` concatenates [h, z] and runs a plain Wavenet_1x1.
* ``stack_input='projection'``: the data enter through a 1x1 convolution
  to ``channels[0]``, each top-down stack whose input has other channels
  than its blocks (``[g, Delay(d)]``, plain ``[h, z]``) starts with a 1x1
  projection, and the output stack CondWavenet^U of layer l runs at
  ``channels[l]`` with its last block changing to ``channels[l-1]``.
  ``'first_block'`` (the authors' ``Wavenet`` class): no input projections,
  the first block of each stack reads its input as it is (its identity path
  a 1x1 convolution, with bias), and every block of the output stack of
  layer l has ``channels[l-1]`` channels.  With equal channels in all layers
  only the projections differ.  An identity path whose channel count changes
  gets a 1x1 projection either way.
* ``data_shift`` / ``data_scale`` (one per data dimension; empty: none): the
  authors' data normaliser (``data_normalize=True``), see
  :mod:`tfhier.heads`: the network sees normalised data and the head gives
  the distribution in the data's units.
* Upsampling happens in the last block of the CondWavenet^U stack, mirroring
  the downsampling in the first bottom-up block.
* Padding: inputs are zeroed where ``mask`` is 0 (before the data
  normaliser).  ``resample_padding='data'``: the data are padded to a
  multiple of the total downsampling factor, so a sequence scores the same
  whatever padding surrounds it in a batch.  ``'block'`` (the authors'
  ``DownscaleConv1D``): each downsampling block zero-pads its own input to a
  multiple of its factor and each layer's upsampled output is cut to the
  length of the layer below; the last, partial coarse step of a layer then
  sees zeros where the data ends (and, in a batch, the padding of the
  longest sequence), as in their code.  Only scoring differs: generation and
  priming use complete coarse steps either way.
"""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import tensorflow as tf

from tfhier.blocks import CausalConv1D, Delay, WaveNet, step_weights, time_slice
from tfhier.heads import DISTRIBUTION_DTYPE, make_head
from tfhier.models.base import (ModelOutput, SequenceModel, gather_continuations, generation_step, graph_call,
                                head_hparams, latent_normal, make_model_head)
from tfhier.models.hparams import HParam
from tfhier.noise import (generation_latent_seed, latent_noise, masked_inputs, output_step_seed, primed_latent_mask,
                          replica_rows, stateless_seed)


@keras.saving.register_keras_serializable(package="tfhier")
class MSSTCN(SequenceModel):
    """MS-STCN (see the module docstring). All list arguments have one entry per latent layer,
    layer 1 (closest to the data) first."""

    NAME = "msstcn"
    DESCRIPTION = "MS-STCN (Andersson et al. 2021): multiscale hierarchical VAE on a WaveNet"
    HPARAMS = head_hparams("handwriting", 10) + (
        HParam("channels", "ints", [64] * 5, "Filters of each layer (one entry per layer; sets the number of "
               "layers)."),
        HParam("latent_dims", "ints", [8, 8, 8, 4, 2], "Latent units per step of each layer."),
        HParam("strides", "ints", [1, 2, 2, 2, 1], "downsampling factor of each layer relative to the one "
               "below."),
        HParam("bu_dilations", "int_lists", [[1, 1, 1, 1]] * 4 + [[1, 2, 4, 8]],
               "bottom-up dilations, one comma list per layer, layers separated by ';'."),
        HParam("td_blocks", "int", 2, "WaveNet blocks in each top-down stack."),
        HParam("kernel_size", "int", 2, "Kernel size of the dilated causal convolutions."),
        HParam("gen_post", "str", "conditional", "how z enters the top-down output stack: eq. 12 "
               "conditioning (conditional) or concatenation (plain).", choices=("conditional", "plain")),
        HParam("downsampling", "str", "strided", "strided (the paper: strided conv + average) or "
               "sum_pool (the authors' code: unstrided k=2 conv, sum-pool / sqrt(S), gate, bias-free 1x1).",
               choices=("strided", "sum_pool")),
        HParam("upsampling", "str", "transposed", "transposed (the paper, eq. 12b: a strided transposed conv) or "
               "repeat (the authors' UpscaleConv1D: every fine step of a coarse step gets the same g).",
               choices=("transposed", "repeat")),
        HParam("latents", "str", "normal", "normal (the model) or none: the deterministic control of Table 1, the "
               "same network with the latent path removed (exact likelihood, no KL).", choices=("normal", "none")),
        HParam("stack_input", "str", "projection", "projection (1x1 input projections before the stacks, the "
               "output stack at the layer's width) or first_block (the authors' code: the first block of a stack "
               "reads its input, the output stack at the width of the layer below).",
               choices=("projection", "first_block")),
        HParam("resample_padding", "str", "data", "data (pad the data to a multiple of the total downsampling "
               "factor) or block (the authors' code: each downsampling block pads its own input; see the module "
               "docstring).", choices=("data", "block")),
        HParam("data_shift", "floats", [], "msstcn: the data normaliser's shift per data dimension (empty: none; "
               "the authors' data_normalize, see tfhier.heads)."),
        HParam("data_scale", "floats", [], "msstcn: the data normaliser's scale per data dimension (empty: none)."),
        HParam("input_dropout", "float", 0.0, "msstcn: dropout rate of the data entering the bottom-up network in "
               "training (the likelihood's targets stay whole): a regulariser for small data sets (ours)."),
    )

    def __init__(self, input_dim, noise_seed=0, **kwargs):
        super().__init__(input_dim, noise_seed=noise_seed, **kwargs)
        hp = self.hparams
        self.head_name = hp["head"]
        self.head_components = hp["head_components"]
        self.channels = hp["channels"]
        self.latent_dims_ = hp["latent_dims"]
        self.strides = hp["strides"]
        self.bu_dilations = hp["bu_dilations"]
        self.td_blocks = hp["td_blocks"]
        self.kernel_size = hp["kernel_size"]
        self.gen_post = hp["gen_post"]
        self.downsampling = hp["downsampling"]
        self.upsampling = hp["upsampling"]
        self.use_latents = hp["latents"] == "normal"
        self.input_dropout = hp["input_dropout"]
        self.stack_input = hp["stack_input"]
        self.resample_padding = hp["resample_padding"]
        self._validate()
        first_block = self.stack_input == "first_block"

        n = len(self.channels)
        # Total downsampling factor of each layer, S^(l).
        self.factors = [int(np.prod(self.strides[: l + 1])) for l in range(n)]
        self.time_multiple = self.factors[-1]

        self.input_proj = None if first_block else CausalConv1D(self.channels[0], 1, name="input_proj")
        self.bottom_up = [
            WaveNet(self.channels[l], dilations=self.bu_dilations[l], kernel_size=self.kernel_size,
                    downsample=self.strides[l], downsample_mode=self.downsampling,
                    downsample_padding=self.resample_padding == "block", name=f"bottom_up_{l + 1}")
            for l in range(n)]
        self.delay = Delay(name="delay")
        self.top_down_h = [
            WaveNet(self.channels[l], dilations=[1] * self.td_blocks, kernel_size=1, input_projection=not first_block,
                    name=f"top_down_h_{l + 1}")
            for l in range(n)]
        # Zero-initialised: every q and p starts as N(0, softplus(0)^2), so the KL starts at 0 instead of
        # the thousands of nats per step that random scale projections give (the paper is silent).
        # Without latents (the deterministic control) there are no projections and g^(l-1) = Wavenet^U(h^(l)).
        k = n if self.use_latents else 0
        self.prior_proj = [CausalConv1D(2 * self.latent_dims_[l], 1, kernel_initializer="zeros", name=f"prior_{l + 1}",
                                        dtype=DISTRIBUTION_DTYPE)
                           for l in range(k)]
        self.posterior_proj = [CausalConv1D(2 * self.latent_dims_[l], 1, kernel_initializer="zeros",
                                            name=f"posterior_{l + 1}", dtype=DISTRIBUTION_DTYPE)
                               for l in range(k)]
        self.top_down_g = [
            WaveNet(self.channels[max(l - 1, 0)] if first_block else self.channels[l], dilations=[1] * self.td_blocks,
                    kernel_size=1, conditional=self.use_latents and self.gen_post == "conditional",
                    input_projection=self.use_latents and self.gen_post == "plain" and not first_block,
                    upsample=self.strides[l], upsample_mode=self.upsampling, out_channels=self.channels[max(l - 1, 0)],
                    name=f"top_down_g_{l + 1}")
            for l in range(n)]
        self.head = make_head(hp["head"], input_dim, hp["head_components"], mixture=hp["mixture"],
                              shift=hp["data_shift"], scale=hp["data_scale"], scale_fn=hp["scale_fn"], name="head")

    def _validate(self):
        n = len(self.channels)
        lists = {"channels": self.channels, "latent_dims": self.latent_dims_, "strides": self.strides,
                 "bu_dilations": self.bu_dilations}
        for name, values in lists.items():
            if len(values) != n:
                raise ValueError(f"MS-STCN: --{name} has {len(values)} entries, expected one per layer ({n}, "
                                 f"as many as --channels)")
        for name in ("channels", "latent_dims", "strides"):
            if any(v < 1 for v in lists[name]):
                raise ValueError(f"MS-STCN: every --{name} entry must be >= 1, got {lists[name]}")
        if any(len(ds) == 0 or min(ds) < 1 for ds in self.bu_dilations):
            raise ValueError(f"MS-STCN: --bu_dilations needs >= 1 positive dilation per layer, got {self.bu_dilations}")
        if self.td_blocks < 1 or self.kernel_size < 1:
            raise ValueError("MS-STCN: --td_blocks and --kernel_size must be >= 1")
        if self.gen_post not in ("conditional", "plain"):
            raise ValueError(f"MS-STCN: --gen_post must be 'conditional' or 'plain', got {self.gen_post!r}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"MS-STCN: --input_dropout must be in [0, 1), got {self.input_dropout}")
        if self.resample_padding not in ("data", "block"):
            raise ValueError(f"MS-STCN: --resample_padding must be 'data' or 'block', got {self.resample_padding!r}")
        if self.stack_input not in ("projection", "first_block"):
            raise ValueError(f"MS-STCN: --stack_input must be 'projection' or 'first_block', got {self.stack_input!r}")
        if self.downsampling not in ("strided", "sum_pool"):
            raise ValueError(f"MS-STCN: --downsampling must be 'strided' or 'sum_pool', got {self.downsampling!r}")

    @property
    def latent_layer_names(self):
        return [f"layer_{l + 1}" for l in range(len(self.channels))] if self.use_latents else []

    @property
    def latent_dims(self):
        return list(self.latent_dims_) if self.use_latents else []

    @property
    def latent_factors(self):
        return list(self.factors) if self.use_latents else []

    def network_input(self, x, mask, length=None):
        """Data ``x`` [B, T, D] as the bottom-up network reads it: every padded step (``mask`` 0) zero, zero steps
        appended up to ``length`` (default T), then normalised (``data_shift`` / ``data_scale``)."""
        y = masked_inputs(x, mask)
        if length is not None:
            y = tf.pad(y, [[0, 0], [0, length - tf.shape(y)[1]], [0, 0]])
        return self.head.normalize(y)

    def bottom_up_features(self, y, lengths=None):
        """Eq. (8) on ``y`` [B, T, D] (:meth:`network_input`; T a multiple of ``time_multiple`` unless
        ``resample_padding='block'``): ``[d^(1), ..., d^(L)]``, ``d^(l)`` of shape [B, T / S^(l), C_l].

        With ``resample_padding='block'`` and ``lengths`` [B], the input of layer l+1 is ``d^(l)`` zeroed after
        each row's ``ceil(length / S^(l))`` steps (the authors' ``AutoregressiveLadderLayer.forward``)."""
        d = []
        a = y if self.input_proj is None else self.input_proj(y)
        for l, block in enumerate(self.bottom_up):
            a = block(a)
            d.append(a)
            if self.resample_padding == "block" and lengths is not None:
                valid = tf.cast(tf.math.ceil(tf.cast(lengths, tf.float32) / self.factors[l]), tf.int32)
                a = a * tf.sequence_mask(valid, tf.shape(a)[1], dtype=a.dtype)[..., None]
        return d

    def forward(self, x, mask, *, seed, latents="posterior", temperature=1.0, training=False,
                observed_lengths=None) -> ModelOutput:
        """One pass; see :class:`tfhier.models.base.SequenceModel`.

        ``latents='posterior'``: z ~ q everywhere (scoring, training).  ``'prior'``:
        z ~ p with the noise scaled by ``temperature``; with ``observed_lengths``
        [B] (priming a continuation), z ~ q for the latent steps whose whole
        span of fine steps lies inside row b's observed prefix
        (``S^(l)*(tau+1) <= observed_lengths[b]``) and z ~ p elsewhere: see
        :func:`tfhier.noise.primed_latent_mask` for the rule and why.
        Noise: :func:`tfhier.noise.latent_noise` (independent of T).
        """
        if latents not in ("posterior", "prior"):
            raise ValueError(f"latents must be 'posterior' or 'prior', got {latents!r}")
        if observed_lengths is not None and latents != "prior":
            raise ValueError("observed_lengths (priming) goes with latents='prior'")
        x = tf.convert_to_tensor(x, tf.float32)
        mask = tf.cast(mask, tf.float32)
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        if self.resample_padding == "data":
            t_pad = (t + self.time_multiple - 1) // self.time_multiple * self.time_multiple
        else:
            t_pad = t
        # Zero padded steps (NaN included) so garbage in padding cannot reach any real step.
        y = self.network_input(x, mask, t_pad)
        lengths = tf.reduce_sum(mask, axis=-1)

        # Bottom-up, eq. (8); input dropout (training only) is stateless, from the step's seed.
        y_in = y
        if training and self.input_dropout > 0:
            drop_seed, rest = stateless_seed(seed, 7), tf.shape(y)[1:]
            # The dropout mask of the global batch's rows (replica_rows): N replicas drop what one device drops.
            keep = replica_rows(lambda rows: tf.nn.experimental.stateless_dropout(
                tf.ones(tf.concat([[rows], rest], 0)), self.input_dropout, seed=drop_seed), tf.shape(y)[0])
            y_in = y * keep
        d = self.bottom_up_features(y_in, lengths)

        # Top-down, eqs. (9)-(13).
        n = len(d)
        posteriors, priors, zs, latent_masks = [None] * n, [None] * n, [None] * n, [None] * n
        g = None
        for l in reversed(range(n)):
            delayed = self.delay(d[l])
            steps_l = tf.shape(d[l])[1]
            if g is not None:  # the upsampled output of the layer above, cut to this layer's length
                g = time_slice(g, 0, steps_l)
            h = self.top_down_h[l](delayed if g is None else tf.concat([g, delayed], axis=-1))
            if not self.use_latents:
                g = self.top_down_g[l](h)
                continue
            prior = latent_normal(self.prior_proj[l](h), self.scale_fn)
            posterior = latent_normal(self.posterior_proj[l](tf.concat([h, d[l]], axis=-1)), self.scale_fn)
            eps = tf.transpose(latent_noise(seed, l, steps_l, b, self.latent_dims_[l]), [1, 0, 2])
            if latents == "posterior":
                z = posterior.loc + posterior.scale * eps
            else:
                z = prior.loc + prior.scale * (temperature * eps)
                if observed_lengths is not None:
                    primed = primed_latent_mask(observed_lengths, self.factors[l], steps_l)
                    z = tf.where(primed[..., None], posterior.loc + posterior.scale * eps, z)
            if self.gen_post == "conditional":
                g = self.top_down_g[l](h, z)
            else:
                g = self.top_down_g[l](tf.concat([h, tf.cast(z, h.dtype)], axis=-1))
            latent_masks[l] = tf.sequence_mask(
                tf.cast(tf.math.ceil(lengths / self.factors[l]), tf.int32), steps_l, dtype=tf.float32)
            posteriors[l], priors[l], zs[l] = posterior, prior, z

        eta = time_slice(self.head(g), 0, t)  # drop the padding to a multiple of S^(L)
        if not self.use_latents:
            posteriors = priors = zs = latent_masks = []
        return ModelOutput(likelihood=self.head.distribution(eta), likelihood_params=eta,
                           posteriors=posteriors, priors=priors, latents=zs, latent_masks=latent_masks)

    # -- cached generation ------------------------------------------------------------------
    def generate(self, num_samples, num_steps, seed, temperature=1.0):
        """Samples float32 ``[num_samples, num_steps, D]`` with the cached generator (:class:`MSSTCNGenerator`):
        the distribution of :meth:`generate_naive`, and for the same seed the same sequences, at a constant
        cost per step."""
        return graph_call(self, "generate", lambda n, t, s, temp: self.generator().sample(n, t, s, temp),
                          num_samples, num_steps, seed, temperature)

    def continue_sequences(self, prefix, prefix_lengths, num_steps, seed, temperature=1.0):
        """Continuations ``[B, num_steps, D]`` with the cached generator (see
        :meth:`tfhier.models.base.SequenceModel.continue_sequences` for the arguments and priming rule)."""
        return graph_call(self, "continue", lambda p, pl, t, s, temp: self.generator().continue_sequences(
            p, pl, t, s, temp), prefix, prefix_lengths, num_steps, seed, temperature)

    def generator(self, **options):
        """A :class:`MSSTCNGenerator` for this (built) model."""
        return MSSTCNGenerator(self, **options)


def _ceil_div(a, b):
    if isinstance(a, int):
        return -(-a // b)
    return (a + b - 1) // b


def _replace(items, i, value):
    items = list(items)
    items[i] = value
    return tuple(items)


class MSSTCNGenerator:
    """Cached (incremental) sampler of an :class:`MSSTCN`: exact samples at a constant cost per step.

    The naive sampler re-runs the whole network over the growing buffer for
    every new step (cost quadratic in the length).  Here every layer keeps the
    state its blocks' ``step`` methods need (:mod:`tfhier.blocks`: the Fast
    WaveNet queues of the causal convolutions) and each activation is computed
    once.  The schedule: layer l (total factor ``S^(l)``) takes one coarse step
    every ``S^(l)`` fine steps.  At the start of coarse step tau it computes
    ``h^(l)`` from ``[g^(l), Delay(d^(l))]`` (``d^(l)`` of step tau-1, complete
    because every fine step before ``S^(l)*tau`` is generated), draws
    ``z^(l)`` from its prior (or posterior, when priming), and runs the
    top-down stack, whose upsampling block gives the ``S_l`` outputs of the
    layer below at once.  Once the children (the ``S_l`` steps of layer l-1,
    recursively down to the fine steps, which sample ``y_t`` from the head)
    are done, the bottom-up stack of layer l takes one step with the ``S_l``
    buffered inputs.  The top-down stacks are 1x1 convolutions only (no state).

    The whole schedule is a ``tf.while_loop`` over the top layer's coarse steps
    with fixed-shape state.  Inside one top step the children of a layer are
    unrolled in the graph while the unrolled size stays small (``max_unroll``
    fine steps; the IAM-OnDB model's 8 fine steps per top step are fully
    unrolled: static structure, XLA-friendly) and run by an inner
    ``tf.while_loop`` otherwise (e.g. strides 5, 5, 4 of the speech configs).

    Noise follows the contract of :mod:`tfhier.noise`, so for the same
    seed the cached and naive generators give the same sequences up to float
    rounding.  Priming (continuations): the prefix is fed through the same
    machinery (teacher forcing).  A latent step whose whole span of fine steps
    lies in the prefix is drawn from the posterior q, which needs ``d^(l)`` of
    that step *before* its fine steps are (re)played; these come from one
    parallel bottom-up pass over the prefix (:meth:`MSSTCN.bottom_up_features`),
    exact because ``d^(l)`` of such a step depends on the prefix only.

    ``sample`` / ``continue_sequences`` build graph ops (call them inside a
    tf.function; the model's ``generate`` / ``continue_sequences`` do that).
    Python ints stay static, so with ints for the sizes the loop has static
    shapes (XLA).

    Args:
      model: a built MSSTCN.
      max_unroll: the most fine steps one top-layer step may unroll in the
        graph; a layer whose children would exceed it loops over them with an
        inner ``tf.while_loop`` instead.
      top_steps_per_call: top-layer steps per XLA computation when
        ``model.xla_generation`` (one per call otherwise).
    """

    def __init__(self, model, max_unroll=16, top_steps_per_call=16):
        self.model = model
        self.top_steps_per_call = int(top_steps_per_call)
        self.strides = list(model.strides)
        self.factors = list(model.factors)
        self.n = len(self.strides)
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
        ctx = SimpleNamespace(seed=seed, temperature=tf.cast(temperature, tf.float32), primed=prefix is not None)
        if ctx.primed:
            batch = tf.shape(prefix)[0] if prefix.shape[0] is None else int(prefix.shape[0])
            t0 = tf.shape(prefix)[1] if prefix.shape[1] is None else int(prefix.shape[1])
            prefix = masked_inputs(prefix, tf.sequence_mask(lengths, t0))
            n_alloc = _ceil_div(t0 + num_steps, m)
            n_run = _ceil_div(tf.reduce_max(lengths) + num_steps, m)
            # d^(l) of every latent step inside the prefix, for the posteriors of the primed steps.
            t0_pad = _ceil_div(t0, m) * m
            network_prefix = model.network_input(prefix, tf.sequence_mask(lengths, t0), t0_pad)
            # float32 as the step methods' values are (bfloat16 from a model built under mixed precision)
            ctx.d_obs = [tf.cast(d, tf.float32) for d in
                         model.bottom_up_features(network_prefix, lengths)]
            ctx.lengths = lengths
        else:
            if not isinstance(batch, int):
                batch = tf.cast(batch, tf.int32)
            n_alloc = n_run = _ceil_div(num_steps, m)
        # One XLA computation (generation_step) runs `calls` top-layer steps, because launching one costs
        # milliseconds on CPU (1 x 700 steps: 0.39 s with one top step per launch, 88 launches; 0.073 s with
        # 16 per launch, bench/generation.py); the last launch may run
        # up to calls - 1 top steps past the end, whose outputs are dropped.
        calls = self.top_steps_per_call if model.xla_generation else 1
        n_launch = _ceil_div(n_run, calls)
        n_alloc = _ceil_div(n_alloc, calls) * calls
        latent_seed = generation_latent_seed(seed)
        # Per top-layer step: k[l] latent steps of layer l, m fine steps.
        k = [m // f for f in self.factors]
        eps = [latent_noise(latent_seed, l, n_alloc * k[l], batch, model.latent_dims_[l])
               for l in range(self.n)] if model.use_latents else []
        prefix_blocks = d_obs = None
        if ctx.primed:
            # Padded to whole launches, so every launch's slice has a static shape (steps past a row's
            # prefix are never read: tf.where on the lengths).
            prefix_blocks = tf.pad(prefix, [[0, 0], [0, n_alloc * m - t0], [0, 0]])
            d_obs = [tf.pad(d, [[0, 0], [0, n_alloc * k[l] - tf.shape(d)[1]], [0, 0]]) for l, d in enumerate(ctx.d_obs)]

        def launch(i, state, eps_blk, seed, temperature, prefix_blk, lengths, d_obs_blk):
            """Top-layer steps i * calls ... (i + 1) * calls - 1: one XLA computation (generation_step)."""
            step_ctx = SimpleNamespace(seed=seed, temperature=temperature, primed=ctx.primed, eps=eps_blk,
                                       prefix=prefix_blk, lengths=lengths, d_obs=d_obs_blk,
                                       fine_base=i * calls * m, base=[i * calls * k_l for k_l in k])

            def top_step(j, state):
                with step_weights():
                    state, _ = self._layer_step(self.n - 1, i * calls + j, None, state, step_ctx)
                return j + 1, state

            state = dict(state, out=tf.TensorArray(tf.float32, size=calls * m, element_shape=tf.TensorShape(
                [None, model.input_dim])))
            if calls == 1:
                _, state = top_step(0, state)
            else:
                _, state = tf.while_loop(lambda j, _: j < calls, top_step, (tf.constant(0), state))
            ys = state.pop("out").stack()  # [calls * m, B, D]
            return state, ys

        launch = generation_step(model, launch)
        state = {
            "bottom_up": tuple(net.initial_state(batch) for net in model.bottom_up),
            "d_prev": tuple(tf.zeros(tf.stack([batch, c])) for c in model.channels),
        }
        out = tf.TensorArray(tf.float32, size=n_alloc // calls, element_shape=tf.TensorShape(
            [calls * m, batch if isinstance(batch, int) else None, model.input_dim]))
        span = [calls * k_l for k_l in k]

        def body(i, state, out):
            eps_blk = [tf.gather(e, i * span[l] + tf.range(span[l])) for l, e in enumerate(eps)]
            prefix_blk = d_obs_blk = None
            if ctx.primed:
                prefix_blk = tf.gather(prefix_blocks, i * calls * m + tf.range(calls * m), axis=1)
                d_obs_blk = [tf.gather(d, i * span[l] + tf.range(span[l]), axis=1) for l, d in enumerate(d_obs)]
            state, ys = launch(i, state, eps_blk, ctx.seed, ctx.temperature, prefix_blk,
                               lengths if ctx.primed else None, d_obs_blk)
            return i + 1, state, out.write(i, ys)

        _, state, out = tf.while_loop(lambda i, *_: i < n_launch, body, (tf.constant(0), state, out))
        d = model.input_dim
        if ctx.primed:
            steps = tf.reshape(out.gather(tf.range(n_launch)), [n_launch * calls * m, -1, d])
            return gather_continuations(tf.transpose(steps, [1, 0, 2]), lengths, num_steps)
        steps = tf.reshape(out.stack(), [n_alloc * m, -1, d])
        return tf.transpose(steps, [1, 0, 2])[:, :num_steps]

    def _layer_step(self, l, tau, g, state, ctx):
        """Coarse step ``tau`` of layer l (0-based) given ``g^(l)`` of it ([B, C], None at the top):
        top-down, the children, then one bottom-up step. Returns (state, d^(l)[tau])."""
        model = self.model
        with tf.name_scope(f"top_down_{l + 1}"):
            delayed = state["d_prev"][l]  # Delay(d^(l)) at tau: d^(l)[tau - 1]
            h, _ = model.top_down_h[l].step(None, [delayed if g is None else tf.concat([g, delayed], axis=-1)])
        if model.use_latents:
            g_below = self._latent_step(l, tau, h, ctx)
        else:
            with tf.name_scope(f"top_down_{l + 1}"):
                g_below, _ = model.top_down_g[l].step(None, [h])
        return self._children_and_bottom_up(l, tau, g_below, state, ctx)

    def _latent_step(self, l, tau, h, ctx):
        """z^(l) of coarse step tau from its prior (or posterior, priming) and the top-down stack's outputs."""
        model = self.model
        with tf.name_scope(f"top_down_{l + 1}"):
            prior = latent_normal(model.prior_proj[l].step1(h), model.scale_fn)
            eps = tf.gather(ctx.eps[l], tau - ctx.base[l])
            z = prior.loc + prior.scale * (ctx.temperature * eps)
            if ctx.primed:
                d_now = tf.gather(ctx.d_obs[l], tau - ctx.base[l], axis=1)
                posterior = latent_normal(model.posterior_proj[l].step1(tf.concat([h, d_now], axis=-1)),
                                          model.scale_fn)
                use_posterior = self.factors[l] * (tau + 1) <= ctx.lengths
                z = tf.where(use_posterior[:, None], posterior.loc + posterior.scale * eps, z)
            if model.gen_post == "conditional":
                g_below, _ = model.top_down_g[l].step(None, [h], cond=z)
            else:
                g_below, _ = model.top_down_g[l].step(None, [tf.concat([h, z], axis=-1)])
        return g_below

    def _children_and_bottom_up(self, l, tau, g_below, state, ctx):
        model = self.model
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
                with step_weights():
                    st, x_j = child(tau * s + j, tf.gather(g_stack, j), st)
                return j + 1, st, ta.write(j, x_j)

            _, state, ta = tf.while_loop(lambda j, *_: j < s, loop_body,
                                         (tf.constant(0), state, tf.TensorArray(tf.float32, size=s)))
            xs = tf.unstack(ta.stack(), num=s, axis=0)
        with tf.name_scope(f"bottom_up_{l + 1}"):
            d, bu_state = model.bottom_up[l].step(state["bottom_up"][l], xs)
        state = dict(state)
        state["bottom_up"] = _replace(state["bottom_up"], l, bu_state)
        state["d_prev"] = _replace(state["d_prev"], l, d)
        return state, d

    def _fine_step(self, t, g, state, ctx):
        """Fine step t: y_t from the head on ``g^(0)`` [B, C] (or the observed prefix); returns the bottom-up
        input (``input_proj`` of the normalised y_t)."""
        model = self.model
        with tf.name_scope("head"):
            eta = model.head.proj.step1(g)  # the head's projection on one step
        with tf.name_scope("head_sample"):
            y = model.sample_step(eta, output_step_seed(ctx.seed, t), ctx.temperature)
        if ctx.primed:
            observed = tf.gather(ctx.prefix, t - ctx.fine_base, axis=1)
            y = tf.where((t < ctx.lengths)[:, None], observed, y)
        state = dict(state)
        state["out"] = state["out"].write(t - ctx.fine_base, y)
        x = model.head.normalize(y)
        if model.input_proj is None:
            return state, x
        with tf.name_scope("input_proj"):
            return state, model.input_proj.step1(x)
