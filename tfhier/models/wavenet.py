"""WaveNet and WaveNet-dense: the deterministic baselines of STCN (Aksan & Hilliges 2019, §4) and MS-STCN.

WaveNet (van den Oord et al. 2016) as the STCN paper uses it: a causal stack
of gated WaveNet blocks (MS-STCN eq. 3: ``x + Conv1x1(tanh(W_f * x) .
sigmoid(W_g * x))``) with dilations growing exponentially within each cycle,
and an output network on top::

    a^0   = CausalConv_k(Delay(x))                 the model sees x_{<t} at step t
    a^i   = Block_i(a^{i-1}),  s^i = Conv1x1(gate(...)) of block i (its residual branch)
    WaveNet:        f_t = ReLU(sum_i s^i_t)                     (skip connections, summed)
    WaveNet-dense:  f_t = ReLU([a^{i_1}_t, ..., a^{i_n}_t])     (every listed block's output, concatenated)
    p(x_t | x_{<t}) = head(MLP_1x1(f_t))                        (2 ReLU 1x1 layers, STCN appendix 6.1)

There are no latent variables: the score is the exact log-likelihood
(``kl`` is an empty list of layers), so ELBO = IWAE = log p(x).

Choices where the paper is silent (each a hyperparameter):

* ``channels`` has one entry per *layer* = one cycle of ``dilations``, so the
  stack has ``len(channels) * len(dilations)`` blocks (the authors' IAM-OnDB
  WaveNet: 5 x [1, 2, 4, 8, 16] = 25 blocks of 256 filters,
  ``experiments_ink/config_iamondb/wavenet_gmm.json``).  Summing skips needs
  one width, so plain WaveNet requires equal entries.
* The input enters through a kernel-``kernel_size`` causal convolution without
  activation (the authors' ``causal_conv_layer_0``); a block's skip output is
  its residual branch (the authors' ``temporal_block`` returns the same 1x1
  output for both), not a separate skip convolution.
* WaveNet-dense concatenates the outputs of the blocks in ``dense_blocks``
  (0-based; empty = every block, the DenseNet reading of "skip connections
  analogously to STCN-dense").  The authors' IAM-OnDB WaveNet-dense
  concatenates blocks 4, 14 and 24: ``dense_blocks=4,14,24``.

Cached generation (the step-wise interface of :class:`SequenceModel`): the
state is every convolution's queue plus the output features of the next
step, which depend on ``x_{<t}`` only; observing ``y_t`` advances the stack
by one step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfhier.blocks import CausalConv1D, Delay, PointwiseMLP, WaveNetBlock
from tfhier.models.base import ModelOutput, SequenceModel, head_hparams, make_model_head
from tfhier.models.hparams import HParam, HParamError
from tfhier.noise import masked_inputs

CONV_HPARAMS = (
    HParam("channels", "ints", [256] * 5, "Filters of each layer (one entry per layer; sets the number of layers)."),
    HParam("dilations", "ints", [1, 2, 4, 8, 16], "the dilation cycle of one layer's blocks "
           "(a layer is len(dilations) blocks)."),
    HParam("kernel_size", "int", 2, "Kernel size of the dilated causal convolutions."),
    HParam("output_hidden", "ints", [256, 256], "units of the ReLU 1x1 layers before the head "
           "(STCN appendix 6.1: two of 256)."),
)


@keras.saving.register_keras_serializable(package="tfhier")
class WaveNetModel(SequenceModel):
    """WaveNet (see the module docstring): summed skip connections into the output network."""

    NAME = "wavenet"
    DESCRIPTION = "WaveNet (van den Oord et al. 2016): deterministic gated causal convolutions, exact likelihood"
    HPARAMS = head_hparams("gaussian", 10) + CONV_HPARAMS
    dense = False
    stepwise_generation = True

    def __init__(self, input_dim, noise_seed=0, **kwargs):
        super().__init__(input_dim, noise_seed=noise_seed, **kwargs)
        hp = self.hparams
        self.head_name = hp["head"]
        self.channels, self.dilations = hp["channels"], hp["dilations"]
        self._validate(hp)
        self.block_channels = [c for c in self.channels for _ in self.dilations]
        self.delay = Delay(name="delay")
        self.input_conv = CausalConv1D(self.channels[0], hp["kernel_size"], name="input_conv")
        self.blocks_ = [WaveNetBlock(c, hp["kernel_size"], self.dilations[i % len(self.dilations)], return_skip=True,
                                     name=f"block_{i}") for i, c in enumerate(self.block_channels)]
        self.dense_blocks = self._dense_blocks(hp)
        self.output_net = PointwiseMLP(hp["output_hidden"], name="output_net")
        self.head = make_model_head(self)

    def _validate(self, hp):
        if not self.channels or min(self.channels) < 1:
            raise HParamError(f"{self.NAME}: --channels needs >= 1 positive entry, got {self.channels}")
        if not self.dilations or min(self.dilations) < 1:
            raise HParamError(f"{self.NAME}: --dilations needs >= 1 positive entry, got {self.dilations}")
        if hp["kernel_size"] < 1 or min(hp["output_hidden"], default=1) < 1:
            raise HParamError(f"{self.NAME}: --kernel_size and --output_hidden entries must be >= 1")
        if not self.dense and len(set(self.channels)) != 1:
            raise HParamError(f"wavenet sums the skip outputs of every block, so every --channels entry must be the "
                              f"same, got {self.channels} (or use --model=wavenet_dense)")

    def _dense_blocks(self, hp):
        return []

    @property
    def latent_layer_names(self):
        return []

    # -- the network -----------------------------------------------------------------------
    def features(self, outputs, skips):
        """``f`` from the blocks' outputs and skip branches (lists over blocks, ``[..., C]`` each)."""
        return tf.nn.relu(tf.add_n(skips))

    def forward(self, x, mask, *, seed, latents="posterior", temperature=1.0, training=False,
                observed_lengths=None) -> ModelOutput:
        """One pass (no latent variables: ``seed``, ``latents``, ``temperature`` and ``observed_lengths`` change
        nothing); see :class:`tfhier.models.base.SequenceModel`."""
        if latents not in ("posterior", "prior"):
            raise ValueError(f"latents must be 'posterior' or 'prior', got {latents!r}")
        y = masked_inputs(x, mask)  # padding (NaN included) cannot reach any real step
        a = self.input_conv(self.delay(y))
        outputs, skips = [], []
        for block in self.blocks_:
            a, skip = block(a)
            outputs.append(a)
            skips.append(skip)
        eta = self.head(self.output_net(self.features(outputs, skips)))
        return ModelOutput(likelihood=self.head.distribution(eta), likelihood_params=eta, posteriors=[], priors=[],
                           latents=[], latent_masks=[])

    # -- cached generation ---------------------------------------------------------------
    def _advance(self, queues, y):
        """One step of the stack on input ``y`` [B, D]: ``(features [B, F], queues)``."""
        (a,), q0 = self.input_conv.step(queues[0], [y])
        new, outputs, skips = [q0], [], []
        for block, q in zip(self.blocks_, queues[1:]):
            a, skip, q = block.step(q, a)
            new.append(q)
            outputs.append(a)
            skips.append(skip)
        return self.features(outputs, skips), tuple(new)

    def generation_state(self, batch):
        queues = (self.input_conv.initial_state(batch),) + tuple(b.initial_state(batch) for b in self.blocks_)
        # Step 0 sees the Delay's zero input.
        features, queues = self._advance(queues, tf.zeros(tf.stack([batch, self.input_dim])))
        return {"queues": queues, "features": features}

    def generation_emit(self, state, eps, temperature, observed=None, prepared_t=None):
        return self.head.proj.step1(self.output_net.step1(state["features"])), ()

    def generation_observe(self, state, carry, y):
        features, queues = self._advance(state["queues"], y)
        return {"queues": queues, "features": features}


@keras.saving.register_keras_serializable(package="tfhier")
class WaveNetDense(WaveNetModel):
    """WaveNet-dense (see the module docstring): concatenated block outputs into the output network."""

    NAME = "wavenet_dense"
    DESCRIPTION = "WaveNet-dense (STCN §4): WaveNet whose output network sees every block's output"
    HPARAMS = WaveNetModel.HPARAMS + (
        HParam("dense_blocks", "ints", [], "blocks (0-based) whose outputs are concatenated into the "
               "output network; empty: every block."),
    )
    dense = True

    def _dense_blocks(self, hp):
        n = len(self.block_channels)
        chosen = hp["dense_blocks"] or list(range(n))
        bad = [i for i in chosen if not 0 <= i < n]
        if bad:
            raise HParamError(f"--dense_blocks {bad} out of range: the stack has {n} blocks "
                              f"(0..{n - 1})")
        return chosen

    def features(self, outputs, skips):
        return tf.nn.relu(tf.concat([outputs[i] for i in self.dense_blocks], axis=-1))


__all__ = ["CONV_HPARAMS", "WaveNetDense", "WaveNetModel"]
