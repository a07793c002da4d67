"""MS-STCN: multiscale stochastic temporal convolutional network.

Andersson, Wahlström and Schön, "Learning deep autoregressive models for
hierarchical data", SYSID 2021 (``../shared/papers/ms-stcn_andersson2021.txt``).

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
  average on the identity path) or ``'sum_pool'`` (authors' code: unstrided
  k=2 conv, then sum-pooling / sqrt(S) on both paths).
* ``channels``: the paper's IAM-OnDB setting is 64 filters in every layer;
  the authors' code uses 8 x latent size, i.e. [64, 64, 64, 32, 16].
* IAM-OnDB head: the paper's mixture of 10 Gaussians + a pen Bernoulli
  (``head_components=10``); the authors' code uses one Gaussian (``1``).
* ``gen_post='conditional'`` is eq. (12) (z enters every block's residual
  path); ``'plain'`` concatenates [h, z] and runs a plain Wavenet_1x1.
* The data enters through a 1x1 convolution to ``channels[0]``; an identity
  path whose channel count changes gets a 1x1 projection.
* Upsampling happens in the last block of the CondWavenet^U stack, mirroring
  the downsampling in the first bottom-up block.
* Padding: inputs are zeroed where ``mask`` is 0 and padded to a multiple of
  the total downsampling factor, so a sequence scores the same whatever
  padding surrounds it in a batch.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfhier.blocks import CausalConv1D, Delay, WaveNet, time_slice
from tfhier.heads import make_head
from tfhier.models.base import (ModelOutput, SequenceModel, graph_call, latent_noise, latent_normal,
                                primed_latent_mask)


@keras.saving.register_keras_serializable(package="tfhier")
class MSSTCN(SequenceModel):
    """MS-STCN (see the module docstring). All list arguments have one entry per latent layer,
    layer 1 (closest to the data) first."""

    def __init__(self, input_dim, head="handwriting", head_components=10, channels=(64,) * 5,
                 latent_dims=(8, 8, 8, 4, 2), strides=(1, 2, 2, 2, 1),
                 bu_dilations=((1, 1, 1, 1),) * 4 + ((1, 2, 4, 8),), td_blocks=2, kernel_size=2,
                 gen_post="conditional", downsampling="strided", noise_seed=0, **kwargs):
        super().__init__(input_dim, noise_seed=noise_seed, **kwargs)
        self.head_name = head
        self.head_components = int(head_components)
        self.channels = [int(c) for c in channels]
        self.latent_dims = [int(z) for z in latent_dims]
        self.strides = [int(s) for s in strides]
        self.bu_dilations = [[int(d) for d in ds] for ds in bu_dilations]
        self.td_blocks = int(td_blocks)
        self.kernel_size = int(kernel_size)
        self.gen_post = gen_post
        self.downsampling = downsampling
        self._validate()

        n = len(self.channels)
        # Total downsampling factor of each layer, S^(l).
        self.factors = [int(np.prod(self.strides[: l + 1])) for l in range(n)]
        self.time_multiple = self.factors[-1]

        self.input_proj = CausalConv1D(self.channels[0], 1, name="input_proj")
        self.bottom_up = [
            WaveNet(self.channels[l], dilations=self.bu_dilations[l], kernel_size=self.kernel_size,
                    downsample=self.strides[l], downsample_mode=self.downsampling, name=f"bottom_up_{l + 1}")
            for l in range(n)]
        self.delay = Delay(name="delay")
        self.top_down_h = [
            WaveNet(self.channels[l], dilations=[1] * self.td_blocks, kernel_size=1, input_projection=True,
                    name=f"top_down_h_{l + 1}")
            for l in range(n)]
        # Zero-initialised: every q and p starts as N(0, softplus(0)^2), so the KL starts at 0 instead of
        # the thousands of nats per step that random scale projections give (the paper is silent).
        self.prior_proj = [CausalConv1D(2 * self.latent_dims[l], 1, kernel_initializer="zeros", name=f"prior_{l + 1}")
                           for l in range(n)]
        self.posterior_proj = [CausalConv1D(2 * self.latent_dims[l], 1, kernel_initializer="zeros",
                                            name=f"posterior_{l + 1}")
                               for l in range(n)]
        self.top_down_g = [
            WaveNet(self.channels[l], dilations=[1] * self.td_blocks, kernel_size=1,
                    conditional=self.gen_post == "conditional", input_projection=self.gen_post == "plain",
                    upsample=self.strides[l], out_channels=self.channels[max(l - 1, 0)],
                    name=f"top_down_g_{l + 1}")
            for l in range(n)]
        self.head = make_head(self.head_name, self.input_dim, self.head_components, name="head")

    def _validate(self):
        n = len(self.channels)
        lists = {"channels": self.channels, "latent_dims": self.latent_dims, "strides": self.strides,
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
        if self.downsampling not in ("strided", "sum_pool"):
            raise ValueError(f"MS-STCN: --downsampling must be 'strided' or 'sum_pool', got {self.downsampling!r}")

    @property
    def latent_layer_names(self):
        return [f"layer_{l + 1}" for l in range(len(self.channels))]

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim, "head": self.head_name,
                "head_components": self.head_components, "channels": self.channels,
                "latent_dims": self.latent_dims, "strides": self.strides, "bu_dilations": self.bu_dilations,
                "td_blocks": self.td_blocks, "kernel_size": self.kernel_size, "gen_post": self.gen_post,
                "downsampling": self.downsampling, "noise_seed": self.noise_seed}

    def bottom_up_features(self, y):
        """Eq. (8) on ``y`` [B, T, D] (T a multiple of ``time_multiple``, padding zeroed): ``[d^(1), ..., d^(L)]``,
        ``d^(l)`` of shape [B, T / S^(l), C_l]."""
        d = []
        a = self.input_proj(y)
        for block in self.bottom_up:
            a = block(a)
            d.append(a)
        return d

    def forward(self, x, mask, *, seed, latents="posterior", temperature=1.0, training=False,
                observed_lengths=None) -> ModelOutput:
        """One pass; see :class:`tfhier.models.base.SequenceModel`.

        ``latents='posterior'``: z ~ q everywhere (scoring, training).  ``'prior'``:
        z ~ p with the noise scaled by ``temperature``; with ``observed_lengths``
        [B] (priming a continuation), z ~ q for the latent steps whose whole
        span of fine steps lies inside row b's observed prefix
        (``S^(l)*(tau+1) <= observed_lengths[b]``) and z ~ p elsewhere: see
        :func:`tfhier.models.base.primed_latent_mask` for the rule and why.
        Noise: :func:`tfhier.models.base.latent_noise` (independent of T).
        """
        if latents not in ("posterior", "prior"):
            raise ValueError(f"latents must be 'posterior' or 'prior', got {latents!r}")
        if observed_lengths is not None and latents != "prior":
            raise ValueError("observed_lengths (priming) goes with latents='prior'")
        x = tf.convert_to_tensor(x, tf.float32)
        mask = tf.cast(mask, tf.float32)
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        t_pad = (t + self.time_multiple - 1) // self.time_multiple * self.time_multiple
        # Zero padded steps so garbage in padding cannot reach any real step.
        y = tf.pad(x * mask[..., None], [[0, 0], [0, t_pad - t], [0, 0]])
        lengths = tf.reduce_sum(mask, axis=-1)

        # Bottom-up, eq. (8).
        d = self.bottom_up_features(y)

        # Top-down, eqs. (9)-(13).
        n = len(d)
        posteriors, priors, zs, latent_masks = [None] * n, [None] * n, [None] * n, [None] * n
        g = None
        for l in reversed(range(n)):
            delayed = self.delay(d[l])
            h = self.top_down_h[l](delayed if g is None else tf.concat([g, delayed], axis=-1))
            prior = latent_normal(self.prior_proj[l](h))
            posterior = latent_normal(self.posterior_proj[l](tf.concat([h, d[l]], axis=-1)))
            steps_l = t_pad // self.factors[l]
            eps = tf.transpose(latent_noise(seed, l, steps_l, b, self.latent_dims[l]), [1, 0, 2])
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
                g = self.top_down_g[l](tf.concat([h, z], axis=-1))
            latent_masks[l] = tf.sequence_mask(
                tf.cast(tf.math.ceil(lengths / self.factors[l]), tf.int32), steps_l, dtype=tf.float32)
            posteriors[l], priors[l], zs[l] = posterior, prior, z

        eta = time_slice(self.head(g), 0, t)  # drop the padding to a multiple of S^(L)
        return ModelOutput(likelihood=self.head.distribution(eta), likelihood_params=eta,
                           posteriors=posteriors, priors=priors, latents=zs, latent_masks=latent_masks)

    # -- cached generation (tfhier.generation) ------------------------------------------
    def generate(self, num_samples, num_steps, seed, temperature=1.0):
        """Samples float32 ``[num_samples, num_steps, D]`` with the cached generator
        (:class:`tfhier.generation.MSSTCNGenerator`): the distribution of :meth:`generate_naive`, and for the
        same seed the same sequences, at a constant cost per step."""
        return graph_call(self, "generate", lambda n, t, s, temp: self.generator().sample(n, t, s, temp),
                          num_samples, num_steps, seed, temperature)

    def continue_sequences(self, prefix, prefix_lengths, num_steps, seed, temperature=1.0):
        """Continuations ``[B, num_steps, D]`` with the cached generator (see
        :meth:`tfhier.models.base.SequenceModel.continue_sequences` for the arguments and priming rule)."""
        return graph_call(self, "continue", lambda p, pl, t, s, temp: self.generator().continue_sequences(
            p, pl, t, s, temp), prefix, prefix_lengths, num_steps, seed, temperature)

    def generator(self, **options):
        """A :class:`tfhier.generation.MSSTCNGenerator` for this (built) model."""
        from tfhier.generation import MSSTCNGenerator

        return MSSTCNGenerator(self, **options)
