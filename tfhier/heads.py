"""Output heads: a 1x1 projection of the top-down output to the parameters
``eta`` of a TFP distribution over one time step (MS-STCN appendix A.2).

Every head maps features ``g`` ``[B, T, C]`` to ``eta`` ``[B, T, param_size]``
(``call``) and ``eta`` to a distribution with batch shape ``[B, T]`` and event
shape ``[D]`` (``distribution``).  Keeping the two apart lets a model return
the raw parameters (tests check causality on them; SavedModels can return them)
and build the distribution where it is needed.

Gaussian scales, here and for the latent variables, come from the pre-activation
``eta_sigma`` by one of :data:`SCALE_FNS` (each model's ``scale_fn``
hyperparameter, its paper's choice by default):

* ``clamp``: ``clip(softplus(eta_sigma), 1e-3, 5)``, MS-STCN appendix A.2 and
  the authors' code (eq. 14's "softmax" is a typo for softplus, which eq. 11
  uses).  Its gradient is exactly zero outside [1e-3, 5]: a unit pushed past
  the cap cannot come back through it.
* ``softplus``: ``softplus(eta_sigma) + 1e-4``, no cap: VRNN (Chung et al.'s
  code) and VHRNN, which builds on FIVO's code (``max(softplus(eta_sigma +
  0.25), sigma_min)`` there; the 0.25 is an initial offset).  The floor keeps
  log-densities finite in float32 and, being added rather than a ``max``,
  leaves the gradient ``sigmoid(eta_sigma)`` non-zero everywhere.
* ``exp``: ``eta_sigma`` is a log-variance, ``sigma = exp(eta_sigma / 2)``:
  SRNN eqs. (3) and (10) ("mean and log-variance"), and STORN, which applies
  SGVB with Kingma & Welling's Gaussian encoder (log sigma^2 outputs).
  ``eta_sigma`` is clipped to [-40, 40] first (sigma in [2e-9, 5e8]) only so
  that a diverging unit gives a large finite scale, not inf.

``temperature`` scales the sampling distribution: Gaussian scales are
multiplied by it and mixture/Bernoulli logits divided by it, so 1 is the model
itself and smaller values give tidier, less varied samples.

Gaussian mixtures (``gmm``, the offsets of ``handwriting``) are ``mixture='joint'``
by default (A.2: one component for all dimensions of a step, in ``log_prob``
and in ``sample``) or ``mixture='per_dim'``: a product of one-dimensional
mixtures that share the weights, ``prod_d sum_k pi_k N(x_d; mu_kd, sigma_kd)``,
sampled with an independent component per dimension, so ``log_prob`` and
``sample`` are the same distribution.  That is the density the authors' code
scores (``NormalMixture.py`` L89-92: a logsumexp over components per
dimension); their sampler draws one component for all dimensions, i.e. from
the joint mixture, a different distribution from the one scored, so the pair
is not offered as it is: bounds would not describe the samples.

Data normaliser (``shift``, ``scale``: one number per data dimension, or
None): the network then sees normalised data and the head returns the
distribution of the data in its own units, the authors' ``Normalizer.py``
(``data_normalize=True`` of their IAM-OnDB configuration).  A Gaussian
dimension is normalised as ``(x - shift) / scale`` and its distribution
mapped back (``mu * scale + shift``, ``sigma * scale``, the clamp of A.2 on
the normalised sigma); a Bernoulli dimension (its ``shift`` the data's mean,
clipped to [1e-3, 1 - 1e-3]; ``scale`` 1) is fed as ``x - shift`` and its
logits get ``log(shift / (1 - shift))`` added, so an untrained head predicts
the data's rate.  :meth:`Head.normalize` is the input side.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfhier.blocks import CausalConv1D

tfd = tfp.distributions

#: Layers whose outputs parameterise a distribution compute in float32 under a mixed-precision policy too
#: (its other layers in bfloat16 / float16): densities and KLs need float32's mantissa (a GMM offset with
#: scale 1e-3 cannot be located to bfloat16's 3 significant digits).
DISTRIBUTION_DTYPE = "float32"

SCALE_MIN = 1e-3
SCALE_MAX = 5.0
SCALE_FLOOR = 1e-4


def clamped_scale(eta_sigma):
    """A.2: softplus, then clamped to [1e-3, 5]."""
    return tf.clip_by_value(tf.nn.softplus(eta_sigma), SCALE_MIN, SCALE_MAX)


def softplus_scale(eta_sigma):
    """softplus plus a floor of 1e-4, no cap (VRNN, VHRNN)."""
    return tf.nn.softplus(eta_sigma) + SCALE_FLOOR


LOG_VARIANCE_LIMIT = 40.0


def exp_scale(eta_sigma):
    """``eta_sigma`` a log-variance: ``exp(eta_sigma / 2)`` (SRNN eq. 3, STORN), ``eta_sigma`` within +-40."""
    return tf.exp(0.5 * tf.clip_by_value(eta_sigma, -LOG_VARIANCE_LIMIT, LOG_VARIANCE_LIMIT))


#: a Gaussian's scale from its pre-activation, by the ``scale_fn`` hyperparameter (module docstring)
SCALE_FNS = {"clamp": clamped_scale, "softplus": softplus_scale, "exp": exp_scale}


def gaussian_scale(eta_sigma, scale_fn="clamp"):
    """The scale of a Gaussian from its pre-activation ``eta_sigma`` by ``scale_fn`` (one of :data:`SCALE_FNS`)."""
    if scale_fn not in SCALE_FNS:
        raise ValueError(f"--scale_fn must be one of {sorted(SCALE_FNS)}, got {scale_fn!r}")
    return SCALE_FNS[scale_fn](eta_sigma)


BERNOULLI_SHIFT_MIN = 1e-3


class Head(keras.layers.Layer):
    """Base class: ``call(g) -> eta``, ``distribution(eta) -> tfd.Distribution``; ``shift`` / ``scale``: the
    data normaliser (module docstring), None for none; ``scale_fn``: how Gaussian scales come from ``eta``
    (:data:`SCALE_FNS`; heads saved without it were built with ``clamp``); ``output_bias``: the initial bias of
    every output of the projection (STORN's b_y = -0.8 on a Bernoulli head's logits)."""

    #: data dimensions modelled by a Bernoulli (the others are Gaussian); None: all of them
    BERNOULLI_DIMS = ()

    def __init__(self, dim, shift=None, scale=None, scale_fn="clamp", output_bias=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.output_bias = float(output_bias)
        if scale_fn not in SCALE_FNS:
            raise ValueError(f"{self.name}: scale_fn must be one of {sorted(SCALE_FNS)}, got {scale_fn!r}")
        self.scale_fn = scale_fn
        self.shift = None if shift is None or len(shift) == 0 else [float(v) for v in shift]
        self.scale = None if scale is None or len(scale) == 0 else [float(v) for v in scale]
        if (self.shift is None) != (self.scale is None):
            raise ValueError(f"{self.name}: the data normaliser needs both shift and scale (one per dimension)")
        if self.shift is not None:
            if len(self.shift) != self.dim or len(self.scale) != self.dim:
                raise ValueError(f"{self.name}: the data normaliser needs one shift and one scale per data dimension "
                                 f"({self.dim}), got {len(self.shift)} and {len(self.scale)}")
            if not all(v > 0 for v in self.scale):
                raise ValueError(f"{self.name}: every data normaliser scale must be > 0, got {self.scale}")
            bad = [d for d in self._bernoulli_dims() if self.scale[d] != 1.0]
            if bad:
                raise ValueError(f"{self.name}: dimensions {bad} are Bernoulli; their normaliser scale must be 1")

    def _bernoulli_dims(self):
        return list(range(self.dim)) if self.BERNOULLI_DIMS is None else list(self.BERNOULLI_DIMS)

    def _effective_shift(self):
        """The shift per dimension, the Bernoulli dimensions' clipped to [1e-3, 1 - 1e-3]."""
        shift = list(self.shift)
        for d in self._bernoulli_dims():
            shift[d] = min(max(shift[d], BERNOULLI_SHIFT_MIN), 1.0 - BERNOULLI_SHIFT_MIN)
        return shift

    def normalize(self, x):
        """Data ``x`` [..., D] as the network sees it (the input side of the normaliser; ``x`` without one)."""
        if self.shift is None:
            return x
        shift = tf.constant(self._effective_shift(), x.dtype)
        return (x - shift) / tf.constant(self.scale, x.dtype)

    def _gaussian_affine(self, dims):
        """``(shift, scale)`` float32 tensors of the Gaussian dimensions ``dims`` (None, None without one)."""
        if self.shift is None:
            return None, None
        return (tf.constant([self.shift[d] for d in dims], tf.float32),
                tf.constant([self.scale[d] for d in dims], tf.float32))

    def _logit_offset(self, dims):
        """``log(p / (1 - p))`` of the Bernoulli dimensions ``dims`` (None without a normaliser)."""
        if self.shift is None:
            return None
        p = [self._effective_shift()[d] for d in dims]
        return tf.math.log(tf.constant(p, tf.float32) / (1.0 - tf.constant(p, tf.float32)))

    def build(self, g_shape):
        self.proj = CausalConv1D(self.param_size, 1, bias_initializer=keras.initializers.Constant(self.output_bias),
                                 name="proj", dtype=DISTRIBUTION_DTYPE)

    @property
    def param_size(self) -> int:
        raise NotImplementedError

    def call(self, g):
        return self.proj(g)

    def distribution(self, eta, temperature=1.0):
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "shift": self.shift, "scale": self.scale,
                "scale_fn": self.scale_fn, "output_bias": self.output_bias}


def _unnormalize(mu, sigma, shift, scale):
    return (mu, sigma) if shift is None else (mu * scale + shift, sigma * scale)


@keras.saving.register_keras_serializable(package="tfhier")
class GaussianHead(Head):
    """Diagonal Gaussian, eq. (14): ``eta = [mu, sigma_pre]``, size 2D."""

    BERNOULLI_DIMS = ()

    @property
    def param_size(self):
        return 2 * self.dim

    def distribution(self, eta, temperature=1.0):
        mu, s = tf.split(eta, 2, axis=-1)
        mu, sigma = _unnormalize(mu, gaussian_scale(s, self.scale_fn), *self._gaussian_affine(range(self.dim)))
        return tfd.Independent(tfd.Normal(mu, sigma * temperature), reinterpreted_batch_ndims=1)


@keras.saving.register_keras_serializable(package="tfhier")
class BernoulliHead(Head):
    """Independent Bernoulli per dimension, ``eta`` = logits, size D."""

    BERNOULLI_DIMS = None

    @property
    def param_size(self):
        return self.dim

    def distribution(self, eta, temperature=1.0):
        offset = self._logit_offset(range(self.dim))
        logits = eta if offset is None else eta + offset
        return tfd.Independent(tfd.Bernoulli(logits=logits / temperature, dtype=tf.float32),
                               reinterpreted_batch_ndims=1)


def _split_mixture(eta, n, per_component):
    logits = eta[..., :n]
    params = tf.reshape(eta[..., n:], tf.concat([tf.shape(eta)[:-1], [n, per_component]], 0))
    return logits, params


MIXTURES = ("joint", "per_dim")


def _gaussian_mixture(logits, mu, s, temperature, mixture, scale_fn, shift=None, data_scale=None):
    """Mixture of n diagonal Gaussians with ``logits`` [..., n], ``mu``/``s`` [..., n, D]: event shape [D];
    ``scale_fn``: :data:`SCALE_FNS`' name; ``shift`` / ``data_scale`` [D]: the normaliser's (mapped back to data
    units), or None."""
    mu, scale = _unnormalize(mu, gaussian_scale(s, scale_fn), shift, data_scale)
    scale = scale * temperature
    if mixture == "joint":
        return tfd.MixtureSameFamily(tfd.Categorical(logits=logits / temperature),
                                     tfd.Independent(tfd.Normal(mu, scale), reinterpreted_batch_ndims=1))
    # per_dim: batch [..., D], components last; the weights are shared by the dimensions.
    mu_t, scale_t = tf.linalg.matrix_transpose(mu), tf.linalg.matrix_transpose(scale)
    logits_t = tf.broadcast_to(logits[..., None, :] / temperature, tf.shape(mu_t))
    return tfd.Independent(tfd.MixtureSameFamily(tfd.Categorical(logits=logits_t), tfd.Normal(mu_t, scale_t)),
                           reinterpreted_batch_ndims=1)


@keras.saving.register_keras_serializable(package="tfhier")
class GaussianMixtureHead(Head):
    """Mixture of n diagonal Gaussians over the whole step (A.2): size 2Dn + n.

    One component is drawn for all D dimensions together, in ``log_prob``
    (a logsumexp over components of the joint density) and in ``sample``.
    ``eta = [logits(n), then per component k: mu_k(D), sigma_pre_k(D)]``.
    """

    BERNOULLI_DIMS = ()

    def __init__(self, dim, components=10, mixture="joint", **kwargs):
        super().__init__(dim, **kwargs)
        self.components = int(components)
        self.mixture = _check_mixture(mixture)

    @property
    def param_size(self):
        return 2 * self.dim * self.components + self.components

    def distribution(self, eta, temperature=1.0):
        logits, params = _split_mixture(eta, self.components, 2 * self.dim)
        mu, s = tf.split(params, 2, axis=-1)
        return _gaussian_mixture(logits, mu, s, temperature, self.mixture, self.scale_fn,
                                 *self._gaussian_affine(range(self.dim)))

    def get_config(self):
        return {**super().get_config(), "components": self.components, "mixture": self.mixture}


@keras.saving.register_keras_serializable(package="tfhier")
class BernoulliMixtureHead(Head):
    """Mixture of n independent-Bernoulli vectors (A.2): ``eta = [logits(n), then per component: logits_k(D)]``,
    size Dn + n."""

    BERNOULLI_DIMS = None

    def __init__(self, dim, components=10, **kwargs):
        super().__init__(dim, **kwargs)
        self.components = int(components)

    @property
    def param_size(self):
        return self.dim * self.components + self.components

    def distribution(self, eta, temperature=1.0):
        logits, params = _split_mixture(eta, self.components, self.dim)
        offset = self._logit_offset(range(self.dim))
        params = params if offset is None else params + offset
        return tfd.MixtureSameFamily(
            tfd.Categorical(logits=logits / temperature),
            tfd.Independent(tfd.Bernoulli(logits=params / temperature, dtype=tf.float32),
                            reinterpreted_batch_ndims=1))

    def get_config(self):
        return {**super().get_config(), "components": self.components}


@keras.saving.register_keras_serializable(package="tfhier")
class HandwritingHead(Head):
    """Pen strokes ``[dx, dy, pen]``: a mixture of n diagonal 2-D Gaussians on
    the offsets and an independent Bernoulli on the pen-up flag (A.1 IAM-OnDB:
    "a mixture of 10 Gaussians and a Bernoulli for the pen up event").
    ``eta = [pen_logit, mixture_logits(n), then per component k: mu_k(2), sigma_pre_k(2)]``, size 1 + 5n.
    With ``components=1`` this is the authors' public-code head (one Gaussian).
    """

    BERNOULLI_DIMS = (2,)

    def __init__(self, dim=3, components=10, mixture="joint", **kwargs):
        if dim != 3:
            raise ValueError(f"HandwritingHead models [dx, dy, pen] steps (dim 3), got dim={dim}")
        super().__init__(dim, **kwargs)
        self.components = int(components)
        self.mixture = _check_mixture(mixture)

    @property
    def param_size(self):
        return 1 + 5 * self.components

    def distribution(self, eta, temperature=1.0):
        pen_logit = eta[..., :1]
        offset = self._logit_offset([2])
        pen_logit = pen_logit if offset is None else pen_logit + offset
        logits, params = _split_mixture(eta[..., 1:], self.components, 4)
        mu, s = tf.split(params, 2, axis=-1)
        offsets = _gaussian_mixture(logits, mu, s, temperature, self.mixture, self.scale_fn,
                                     *self._gaussian_affine([0, 1]))
        pen = tfd.Independent(tfd.Bernoulli(logits=pen_logit / temperature, dtype=tf.float32),
                              reinterpreted_batch_ndims=1)
        return tfd.Blockwise([offsets, pen])

    def get_config(self):
        return {**super().get_config(), "components": self.components, "mixture": self.mixture}


HEADS = {
    "gaussian": GaussianHead,
    "gmm": GaussianMixtureHead,
    "bernoulli": BernoulliHead,
    "bernoulli_mixture": BernoulliMixtureHead,
    "handwriting": HandwritingHead,
}


def _check_mixture(mixture):
    if mixture not in MIXTURES:
        raise ValueError(f"--mixture must be one of {MIXTURES}, got {mixture!r}")
    return mixture


def make_head(kind, dim, components=10, mixture="joint", **kwargs) -> Head:
    """The head of type ``kind`` (one of :data:`HEADS`) for steps of size ``dim``; ``mixture`` (see the module
    docstring) applies to the Gaussian mixtures of ``gmm`` and ``handwriting``."""
    if kind not in HEADS:
        raise ValueError(f"unknown output head {kind!r}; expected one of {sorted(HEADS)}")
    cls = HEADS[kind]
    _check_mixture(mixture)
    if cls in (GaussianMixtureHead, HandwritingHead):
        return cls(dim, components=components, mixture=mixture, **kwargs)
    if mixture != "joint":
        raise ValueError(f"--mixture={mixture} is for Gaussian-mixture heads (gmm, handwriting), not --head={kind}")
    if cls in (GaussianHead, BernoulliHead):
        return cls(dim, **kwargs)
    return cls(dim, components=components, **kwargs)
