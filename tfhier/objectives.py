"""Bounds and training objectives, all in one place (as in the FIVO codebase).

Everything here takes distributions, samples and masks and knows nothing of
the models that made them.  A model's :class:`~tfhier.models.base.ModelOutput`
carries:

* ``likelihood``: distribution of the data, batch shape ``[B, T]``, event ``[D]``;
* ``posteriors``, ``priors``: per latent layer, element-wise distributions with
  batch shape ``[B, T_l, Z_l]`` (layer 1 closest to the data);
* ``latents``: the sampled ``z`` per layer (from the posteriors);
* ``latent_masks``: ``[B, T_l]``, 1 where a layer's step is used by a real data step.

Bounds (per sequence, in nats):

* ELBO, eq. (7): ``E_q log p(x|z) - KL(q || p)`` with the analytic KL of each
  layer (:func:`elbo_terms`).
* Importance-weighted bound (Burda et al. 2015): ``log mean_k w_k`` with
  ``log w = log p(x|z) + log p(z) - log q(z)`` for z ~ q (:func:`log_importance_weight`,
  :func:`iwae_bound`).

KL regularisers for training (per element = sequence x latent unit x step):

* ``'linear_free_bits'``: MS-STCN eq. (16), ``stopgrad(min(KL/lambda, 1)) * KL``;
* ``'free_bits'``: eq. (15), ``max(KL, lambda)`` (Kingma et al. 2016), applied
  element-wise here too;
* ``'anneal'``: ``beta * KL`` with beta rising linearly from ``beta_start`` to 1
  over ``anneal_steps`` (Bowman et al. 2016);
* ``'none'``: the plain negative ELBO.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

KL_REGULARIZERS = ("linear_free_bits", "free_bits", "anneal", "none")


@dataclasses.dataclass
class ElboTerms:
    """Per-sequence terms of the ELBO, in nats."""

    nll: tf.Tensor  # [B]: -sum_t mask_t log p(x_t | ...)
    kl_per_layer: tf.Tensor  # [B, L]: analytic KL of each latent layer, summed over its steps and units
    kl_elements: list  # per layer [B, T_l, Z_l], masked
    latent_masks: list  # per layer [B, T_l]
    num_steps: tf.Tensor  # [B]: real (unpadded) time steps

    @property
    def kl(self):
        return tf.reduce_sum(self.kl_per_layer, axis=-1)

    @property
    def elbo(self):
        return -(self.nll + self.kl)


def masked_kl_elements(posteriors, priors, latent_masks):
    """Analytic KL(q || p) per element, zero on padded steps: list of [B, T_l, Z_l]."""
    out = []
    for q, p, m in zip(posteriors, priors, latent_masks):
        out.append(tfd.kl_divergence(q, p) * m[..., None])
    return out


def sequence_nll(likelihood, x, mask):
    """``-sum_t log p(x_t)`` over the steps where ``mask > 0``, per sequence, [B].

    Padded steps of ``x`` are zeroed first (a NaN there would make the
    log-density's gradient NaN even behind a ``where``), and the sum uses
    ``where`` rather than a product, so a padded step whose log-density is not
    finite cannot turn it into NaN (0 * inf)."""
    valid = mask > 0
    log_prob = likelihood.log_prob(tf.where(valid[..., None], x, tf.zeros_like(x)))
    return -tf.reduce_sum(tf.where(valid, log_prob, 0.0), axis=-1)


def elbo_terms(output, x, mask) -> ElboTerms:
    """ELBO terms (eq. 7) of a model output for data ``x`` [B, T, D] and mask [B, T]."""
    kl_elements = masked_kl_elements(output.posteriors, output.priors, output.latent_masks)
    if kl_elements:
        kl_per_layer = tf.stack([tf.reduce_sum(k, axis=[1, 2]) for k in kl_elements], axis=-1)
    else:
        kl_per_layer = tf.zeros([tf.shape(x)[0], 0])
    return ElboTerms(nll=sequence_nll(output.likelihood, x, mask), kl_per_layer=kl_per_layer,
                     kl_elements=kl_elements, latent_masks=list(output.latent_masks), num_steps=tf.reduce_sum(mask, axis=-1))


def log_importance_weight(output, x, mask):
    """``log p(x|z) + log p(z) - log q(z)`` per sequence for the sampled z in ``output``, [B]."""
    log_w = -sequence_nll(output.likelihood, x, mask)
    for q, p, z, m in zip(output.posteriors, output.priors, output.latents, output.latent_masks):
        log_w += tf.reduce_sum((p.log_prob(z) - q.log_prob(z)) * m[..., None], axis=[1, 2])
    return log_w


def iwae_bound(log_weights):
    """Importance-weighted bound from ``log_weights`` [K, B]: ``logsumexp_k - log K``, [B]."""
    k = tf.cast(tf.shape(log_weights)[0], log_weights.dtype)
    return tf.reduce_logsumexp(log_weights, axis=0) - tf.math.log(k)


def linear_free_bits(kl, lam):
    """MS-STCN eq. (16), element-wise: ``stopgrad(min(KL/lambda, 1)) * KL``.

    Value KL^2/lambda below lambda (gradient scaled by KL/lambda), KL above.
    """
    return tf.stop_gradient(tf.minimum(kl / lam, 1.0)) * kl


def free_bits(kl, lam):
    """Eq. (15), element-wise: ``max(KL, lambda)`` (no gradient below lambda)."""
    return tf.maximum(kl, lam)


class Objective(tf.Module):
    """The training loss: negative ELBO with a KL regulariser, and its schedules.

    Its state (the free-bits threshold lambda, the KL weight beta) lives in
    variables so checkpoints restore it; :meth:`update` sets it from the
    training step, so a resumed run continues the schedule exactly.

    Free-bits lambda decays smoothly as ``lambda_0 * 0.5 ** (step / halving_steps)``
    (MS-STCN §4: "smoothly decay the threshold ... halving the threshold every
    300 000 iterations").
    """

    def __init__(self, kl_regularizer="linear_free_bits", free_bits=0.5, free_bits_halving_steps=300_000,
                 beta_start=0.0, anneal_steps=10_000, name="objective"):
        super().__init__(name=name)
        if kl_regularizer not in KL_REGULARIZERS:
            raise ValueError(f"--kl_regularizer must be one of {KL_REGULARIZERS}, got {kl_regularizer!r}")
        if kl_regularizer in ("linear_free_bits", "free_bits") and not free_bits > 0:
            raise ValueError(f"--free_bits must be > 0 with --kl_regularizer={kl_regularizer}, got {free_bits}")
        if free_bits_halving_steps <= 0 or anneal_steps <= 0:
            raise ValueError("--free_bits_halving_steps and --anneal_steps must be > 0")
        self.kl_regularizer = kl_regularizer
        self.free_bits0 = float(free_bits)
        self.halving_steps = float(free_bits_halving_steps)
        self.beta_start = float(beta_start)
        self.anneal_steps = float(anneal_steps)
        self.free_bits_lambda = tf.Variable(self.free_bits0, trainable=False, dtype=tf.float32,
                                            name="free_bits_lambda")
        self.kl_weight = tf.Variable(1.0 if kl_regularizer != "anneal" else self.beta_start, trainable=False,
                                     dtype=tf.float32, name="kl_weight")

    def get_config(self):
        return {"kl_regularizer": self.kl_regularizer, "free_bits": self.free_bits0,
                "free_bits_halving_steps": self.halving_steps, "beta_start": self.beta_start,
                "anneal_steps": self.anneal_steps}

    def update(self, step):
        step = tf.cast(step, tf.float32)
        self.free_bits_lambda.assign(self.free_bits0 * tf.pow(0.5, step / self.halving_steps))
        if self.kl_regularizer == "anneal":
            frac = tf.minimum(step / self.anneal_steps, 1.0)
            self.kl_weight.assign(self.beta_start + (1.0 - self.beta_start) * frac)

    def regularized_kl(self, kl_elements, latent_masks):
        """Per-sequence KL term of the loss [B] from masked KL elements."""
        total = 0.0
        for kl, mask in zip(kl_elements, latent_masks):
            if self.kl_regularizer == "linear_free_bits":
                kl = linear_free_bits(kl, self.free_bits_lambda)
            elif self.kl_regularizer == "free_bits":
                # Padded elements must stay 0, not lambda.
                kl = free_bits(kl, self.free_bits_lambda) * mask[..., None]
            total += tf.reduce_sum(kl, axis=[1, 2])
        return self.kl_weight * total

    def per_sequence_loss(self, terms: ElboTerms):
        """The loss of each sequence [B]: ``nll + regularised KL`` (summed over time and channels)."""
        return terms.nll + self.regularized_kl(terms.kl_elements, terms.latent_masks)

