"""STCN and STCN-dense: stochastic temporal convolutional networks (Aksan & Hilliges, ICLR 2019, §3).

A deterministic TCN of L layers,
each a stack of K WaveNet blocks with dilations growing exponentially within
the layer (eq. 4), and one latent layer per TCN layer, per time step::

    d^l_t = Conv^(l)(d^{l-1})_t,   d^0 = x                                    (4)
    prior:      [mu^l_p, sigma^l_p] = f^(l)_p(z^{l+1}_t, d^l_{t-1})            (8)
    likelihood: [mu^l_q^, sigma^l_q^] = f^(l)_q(z^{l+1}_t, d^l_t)              (10)
    posterior:  sigma^2_q = 1 / (sigma_q^-2 + sigma_p^-2),
                mu_q = sigma^2_q (mu_q^ sigma_q^-2 + mu_p sigma_p^-2)          (11, 12)
    observation: STCN p(x_t | z^1_t);  STCN-dense p(x_t | z^1_t ... z^L_t)     (9)
    KL: sum_l KL(q(z^l_t | z^{l+1}_t, d^l_t) || p(z^l_t | z^{l+1}_t, d^l_{t-1}))  (15, analytic)

The top layer (l = L) conditions on d^L alone.  Training and scoring draw every
z^{l+1} from the posterior and feed the same sample to the prior and the
approximate likelihood of layer l (eq. 15's expectation); generation draws
them from the priors.  The prior of step t sees ``d_{t-1}`` (x_{<t}) only, so
the model is autoregressive; latents are independent across time given x.

Choices where the paper is silent or ambiguous (each a hyperparameter):

* ``f^(l)``: "2 1x1 convolutions with ReLU" of 256 units (appendix 6.1) and a
  linear 1x1 to ``[mu, sigma_pre]``; sigma = clip(softplus, 1e-3, 5)
  (``scale_fn='clamp'``: the authors' code clamps too, ``latent_sigma_threshold``).
  The final projection starts at zero (every KL starts near 0).
* ``shared_latent_nets=True`` follows §3.2's "both the inference and
  generative network share the same parameters including ... f^(l)": one
  network per layer computes the prior from ``d_{t-1}`` and the approximate
  likelihood from ``d_t``.  The authors' code (``LadderLatentLayer``) gives
  the prior and the posterior separate networks: ``shared_latent_nets=False``.
* ``precision_weighting='variance'`` reads eq. (11)'s left side as the
  posterior *variance*, as in the Ladder VAE it follows; the authors' code
  (``combine_normal_dist``) uses ``1 / (sum of precisions)`` as the standard
  deviation itself: ``'authors'``.
* ``latent_dims`` default [32, 16, 8, 4, 2] and the IAM-OnDB TCN (5 layers of
  6 blocks, dilations 1..32, 256 filters) are the authors'
  ``experiments_ink/config_iamondb/stcn*.json``; ``channels`` has one entry
  per layer, ``dilations`` is one layer's cycle.
* The observation network is ``output_hidden`` ReLU 1x1 layers (two of 256,
  appendix 6.1) on z^1 (STCN) or the concatenation [z^1, ..., z^L]
  (STCN-dense), then the head.  It sees z only, as eq. (9) says.

Cached generation (the step-wise interface): the state is every TCN
convolution's queue and ``d^l_{t-1}`` of every layer; a step draws the latents
top-down from the priors, emits the head's parameters, and the observed or
sampled ``x_t`` advances the TCN by one step.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfhier.blocks import Delay, PointwiseMLP, WaveNet
from tfhier.models.base import ModelOutput, SequenceModel, head_hparams, latent_normal, make_model_head
from tfhier.models.hparams import HParam, HParamError
from tfhier.noise import latent_noise, masked_inputs, primed_latent_mask
from tfhier.heads import DISTRIBUTION_DTYPE
from tfhier.models.wavenet import CONV_HPARAMS

tfd = tfp.distributions

PRECISION_WEIGHTINGS = ("variance", "authors")


def precision_weighted(likelihood: tfd.Normal, prior: tfd.Normal, mode="variance") -> tfd.Normal:
    """Eqs. (11)-(12): the Gaussian combining ``likelihood`` and ``prior`` by their precisions.

    ``mode='variance'``: variance ``1 / (p_q + p_p)`` (the product of the two
    densities, normalised); ``'authors'``: that value used as the standard
    deviation (the authors' ``combine_normal_dist``).
    """
    if mode not in PRECISION_WEIGHTINGS:
        raise ValueError(f"precision weighting must be one of {PRECISION_WEIGHTINGS}, got {mode!r}")
    prec_q = tf.math.reciprocal(tf.square(likelihood.scale))
    prec_p = tf.math.reciprocal(tf.square(prior.scale))
    total = prec_q + prec_p
    loc = (likelihood.loc * prec_q + prior.loc * prec_p) / total
    scale = tf.math.rsqrt(total) if mode == "variance" else tf.math.reciprocal(total)
    return tfd.Normal(loc, scale)


@keras.saving.register_keras_serializable(package="tfhier")
class STCN(SequenceModel):
    """STCN (see the module docstring): the observation sees z^1 only."""

    NAME = "stcn"
    DESCRIPTION = "STCN (Aksan & Hilliges 2019): a TCN with a ladder of per-step latent layers"
    HPARAMS = head_hparams("gaussian", 10) + tuple(
        HParam(h.name, h.kind, [1, 2, 4, 8, 16, 32], h.help) if h.name == "dilations" else h for h in CONV_HPARAMS
    ) + (
        HParam("latent_dims", "ints", [32, 16, 8, 4, 2], "Latent units per step of each layer."),
        HParam("latent_hidden", "ints", [256, 256], "units of the ReLU 1x1 layers of each latent network "
               "f^(l) (appendix 6.1: two of 256)."),
        HParam("shared_latent_nets", "bool", True, "one f^(l) for the prior and the approximate likelihood "
               "(the paper, §3.2); false: separate networks (the authors' code)."),
        HParam("precision_weighting", "str", "variance", "eq. 11 gives the posterior variance (variance, "
               "as the Ladder VAE) or its standard deviation (authors, as the authors' code).",
               choices=PRECISION_WEIGHTINGS),
    )
    dense = False
    stepwise_generation = True

    def __init__(self, input_dim, noise_seed=0, **kwargs):
        super().__init__(input_dim, noise_seed=noise_seed, **kwargs)
        hp = self.hparams
        self.head_name = hp["head"]
        self.channels, self.dilations = hp["channels"], hp["dilations"]
        self.latent_dims_ = hp["latent_dims"]
        self.precision_weighting = hp["precision_weighting"]
        self._validate(hp)
        n = len(self.channels)
        self.tcn = [WaveNet(self.channels[l], dilations=self.dilations, kernel_size=hp["kernel_size"],
                            name=f"tcn_{l + 1}") for l in range(n)]
        self.delay = Delay(name="delay")

        def latent_net(l, kind):
            return PointwiseMLP(hp["latent_hidden"], 2 * self.latent_dims_[l], out_initializer="zeros",
                                out_dtype=DISTRIBUTION_DTYPE, name=f"{kind}_{l + 1}")

        self.prior_nets = [latent_net(l, "latent" if hp["shared_latent_nets"] else "prior") for l in range(n)]
        # With shared nets the prior's network also gives the approximate likelihood (tracked once).
        self.likelihood_nets = (None if hp["shared_latent_nets"] else
                                [latent_net(l, "approx_likelihood") for l in range(n)])
        self.output_net = PointwiseMLP(hp["output_hidden"], name="output_net")
        self.head = make_model_head(self)

    def _validate(self, hp):
        n = len(self.channels)
        if n < 1 or min(self.channels) < 1:
            raise HParamError(f"{self.NAME}: --channels needs >= 1 positive entry (one per layer), got {self.channels}")
        if len(self.latent_dims_) != n or min(self.latent_dims_) < 1:
            raise HParamError(f"{self.NAME}: --latent_dims needs one positive entry per layer ({n}, as many as "
                              f"--channels), got {self.latent_dims_}")
        if not self.dilations or min(self.dilations) < 1:
            raise HParamError(f"{self.NAME}: --dilations needs >= 1 positive entry, got {self.dilations}")
        if hp["kernel_size"] < 1 or min(hp["latent_hidden"] + hp["output_hidden"], default=1) < 1:
            raise HParamError(f"{self.NAME}: --kernel_size, --latent_hidden and --output_hidden entries must be >= 1")

    @property
    def latent_layer_names(self):
        return [f"layer_{l + 1}" for l in range(len(self.channels))]

    @property
    def latent_dims(self):
        return list(self.latent_dims_)

    # -- the network -----------------------------------------------------------------------
    def tcn_features(self, y):
        """Eq. (4) on ``y`` [B, T, D] (padding zeroed): ``[d^1, ..., d^L]``, each [B, T, C_l]."""
        d, a = [], y
        for net in self.tcn:
            a = net(a)
            d.append(a)
        return d

    def observation_input(self, zs):
        """Eq. (9): z^1 (STCN) or [z^1, ..., z^L] (STCN-dense); ``zs`` layer 1 first."""
        return tf.concat(zs, axis=-1) if self.dense else zs[0]

    def forward(self, x, mask, *, seed, latents="posterior", temperature=1.0, training=False,
                observed_lengths=None) -> ModelOutput:
        """One pass; see :class:`tfhier.models.base.SequenceModel` (priming: z ~ q for the steps inside
        the observed prefix, :func:`~tfhier.noise.primed_latent_mask` with factor 1)."""
        if latents not in ("posterior", "prior"):
            raise ValueError(f"latents must be 'posterior' or 'prior', got {latents!r}")
        if observed_lengths is not None and latents != "prior":
            raise ValueError("observed_lengths (priming) goes with latents='prior'")
        x = tf.convert_to_tensor(x, tf.float32)
        mask = tf.cast(mask, tf.float32)
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        d = self.tcn_features(masked_inputs(x, mask))
        n = len(d)
        posteriors, priors, zs = [None] * n, [None] * n, [None] * n
        z_above = None
        for l in reversed(range(n)):
            d_prev = self.delay(d[l])
            prior = latent_normal(self.prior_nets[l](d_prev if z_above is None else tf.concat([d_prev, z_above], -1)),
                                  self.scale_fn)
            likelihood_net = self.prior_nets[l] if self.likelihood_nets is None else self.likelihood_nets[l]
            approx = latent_normal(likelihood_net(d[l] if z_above is None else tf.concat([d[l], z_above], -1)),
                                   self.scale_fn)
            posterior = precision_weighted(approx, prior, self.precision_weighting)
            eps = tf.transpose(latent_noise(seed, l, t, b, self.latent_dims_[l]), [1, 0, 2])
            if latents == "posterior":
                z = posterior.loc + posterior.scale * eps
            else:
                z = prior.loc + prior.scale * (temperature * eps)
                if observed_lengths is not None:
                    primed = primed_latent_mask(observed_lengths, 1, t)
                    z = tf.where(primed[..., None], posterior.loc + posterior.scale * eps, z)
            posteriors[l], priors[l], zs[l] = posterior, prior, z
            z_above = tf.cast(z, d[l].dtype)  # the compute dtype of the nets below (bfloat16 under mixed precision)
        eta = self.head(self.output_net(self.observation_input(zs)))
        return ModelOutput(likelihood=self.head.distribution(eta), likelihood_params=eta, posteriors=posteriors,
                           priors=priors, latents=zs, latent_masks=[mask] * n)

    # -- cached generation ---------------------------------------------------------------
    def generation_state(self, batch):
        return {"queues": tuple(net.initial_state(batch) for net in self.tcn),
                "d_prev": tuple(tf.zeros(tf.stack([batch, c])) for c in self.channels)}

    def generation_emit(self, state, eps, temperature, observed=None, prepared_t=None):
        # Latents of a prefix step only shape that step's output, which the prefix replaces: the prior will do.
        n = len(self.channels)
        zs, z_above = [None] * n, None
        for l in reversed(range(n)):
            d_prev = state["d_prev"][l]
            prior = latent_normal(self.prior_nets[l].step1(d_prev if z_above is None else
                                                           tf.concat([d_prev, z_above], -1)), self.scale_fn)
            zs[l] = z_above = prior.loc + prior.scale * (temperature * eps[l])
        return self.head.proj.step1(self.output_net.step1(self.observation_input(zs))), ()

    def generation_observe(self, state, carry, y):
        queues, d_prev, a = [], [], y
        for net, q in zip(self.tcn, state["queues"]):
            a, q = net.step(q, [a])
            queues.append(q)
            d_prev.append(a)
        return {"queues": tuple(queues), "d_prev": tuple(d_prev)}


@keras.saving.register_keras_serializable(package="tfhier")
class STCNDense(STCN):
    """STCN-dense (see the module docstring): the observation sees every layer's z."""

    NAME = "stcn_dense"
    DESCRIPTION = "STCN-dense (Aksan & Hilliges 2019): STCN whose observation sees every latent layer"
    dense = True


__all__ = ["PRECISION_WEIGHTINGS", "STCN", "STCNDense", "precision_weighted"]
