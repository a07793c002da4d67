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

* FIVO (Maddison et al. 2017): a particle filter's estimate of log p(x)
  (:class:`FIVO`, :func:`fivo_bound`), for models with the recurrent step interface.

Training objectives (:class:`Objective`: a model and a batch in, a per-sequence
loss and metrics out): :class:`ELBO` (with the KL regularisers below),
:class:`IWAE` (K samples), :class:`FIVO` (K particles).

KL regularisers of the ELBO (per element = sequence x latent unit x step):

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

from tfhier.blocks import loop_steps
from tfhier.noise import latent_noise, masked_inputs, replica_categorical, stateless_seed, tiled_rows

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
    """ELBO terms (eq. 7) of a model output for data ``x`` [B, T, D] and mask [B, T]; a model whose prior does
    not factorise over steps gives its analytic KL per element itself (``output.kl_elements``)."""
    if getattr(output, "kl_elements", None) is not None:
        kl_elements = [k * m[..., None] for k, m in zip(output.kl_elements, output.latent_masks)]
    else:
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


@dataclasses.dataclass
class ObjectiveOutput:
    """What an objective computes for a batch: the training loss and its metrics, per sequence (nats)."""

    loss: tf.Tensor  # [B]: the per-sequence training loss (averaged over the global batch by the trainer)
    values: dict  # metric name -> [B] per-sequence value
    num_steps: tf.Tensor  # [B]: real (unpadded) time steps


def _per_sequence_kl_values(model, kl_per_layer):
    values = {"kl": tf.reduce_sum(kl_per_layer, axis=-1)}
    for i, name in enumerate(model.latent_layer_names):
        values[f"kl_{name}"] = kl_per_layer[:, i]
    return values


class Objective(tf.Module):
    """A training objective: a per-sequence loss and its metrics from a model and a batch.

    Objectives know nothing of a model's internals: ELBO and IWAE use
    ``model.forward``, FIVO the step interface of
    :class:`tfhier.models.recurrent.RecurrentModel`.  ``BOUND`` names the
    lower bound on log p(x) that the objective estimates; its negative,
    per sequence and per step (``neg_<BOUND>``, ``neg_<BOUND>_per_step``), is
    among the metrics, and the trainer keeps the checkpoint with the best
    validation ``neg_<BOUND>_per_step``.  Metric names ending in ``_per_step``
    are sums over sequences divided by their steps; the others are means over
    sequences.
    """

    NAME = ""
    BOUND = ""

    def check(self, model):
        """Raises ValueError naming the objective and the model when the model cannot take it."""

    def update(self, step):
        """Sets schedules (free-bits lambda, KL weight) from the training step."""

    def metric_names(self, model) -> list:
        raise NotImplementedError

    def compute(self, model, x, mask, seed, training=False) -> ObjectiveOutput:
        raise NotImplementedError

    def summary_scalars(self) -> dict:
        """Scalars of the objective's own state for TensorBoard (e.g. the free-bits lambda)."""
        return {}

    def get_config(self) -> dict:
        return {}


class ELBO(Objective):
    """The negative ELBO (eq. 7) with a KL regulariser, and its schedules.

    Its state (the free-bits threshold lambda, the KL weight beta) lives in
    variables so checkpoints restore it; :meth:`update` sets it from the
    training step, so a resumed run continues the schedule exactly.

    Free-bits lambda decays smoothly as ``lambda_0 * 0.5 ** (step / halving_steps)``
    (MS-STCN §4: "smoothly decay the threshold ... halving the threshold every
    300 000 iterations").
    """

    NAME = "elbo"
    BOUND = "elbo"

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

    def summary_scalars(self):
        out = {"free_bits_lambda": self.free_bits_lambda}
        if self.kl_regularizer == "anneal":
            out["kl_weight"] = self.kl_weight
        return out

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

    def metric_names(self, model):
        return ["loss", "neg_elbo", "nll", "kl", "neg_elbo_per_step"] + [f"kl_{n}" for n in model.latent_layer_names]

    def compute(self, model, x, mask, seed, training=False):
        out = model.forward(x, mask, seed=seed, training=training)
        terms = elbo_terms(out, x, mask)
        values = {"neg_elbo": -terms.elbo, "nll": terms.nll, **_per_sequence_kl_values(model, terms.kl_per_layer)}
        return ObjectiveOutput(loss=self.per_sequence_loss(terms), values=values, num_steps=terms.num_steps)


class IWAE(Objective):
    """The importance-weighted bound (Burda et al. 2015) with ``num_samples`` samples, as a training loss.

    The batch is tiled K times (sample-major) and scored in one forward pass;
    ``-log (1/K) sum_k w_k`` is the loss.  The ELBO terms averaged over the K
    samples (analytic KL per layer) are logged beside it.
    """

    NAME = "iwae"
    BOUND = "iwae"

    def __init__(self, num_samples=4, name="objective"):
        super().__init__(name=name)
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"--num_particles must be an integer >= 1 (the IWAE's K), got {num_samples!r}")
        self.num_samples = int(num_samples)

    def get_config(self):
        return {"num_samples": self.num_samples}

    def metric_names(self, model):
        return (["loss", "neg_iwae", "neg_iwae_per_step", "neg_elbo", "nll", "kl"] +
                [f"kl_{n}" for n in model.latent_layer_names])

    def compute(self, model, x, mask, seed, training=False):
        k = self.num_samples
        b = tf.shape(x)[0]
        xt, mt = tf.tile(x, [k, 1, 1]), tf.tile(mask, [k, 1])
        with tiled_rows(k):  # (the noise of row k*B + b is sample k's of sequence b, on any number of replicas)
            out = model.forward(xt, mt, seed=seed, training=training)
        log_w = tf.reshape(log_importance_weight(out, xt, mt), [k, b])
        bound = iwae_bound(log_w)
        terms = elbo_terms(out, xt, mt)
        mean_over_samples = lambda v: tf.reduce_mean(tf.reshape(v, tf.concat([[k, b], tf.shape(v)[1:]], 0)), 0)  # noqa
        kl_per_layer = mean_over_samples(terms.kl_per_layer)
        nll = mean_over_samples(terms.nll)
        values = {"neg_iwae": -bound, "neg_elbo": nll + tf.reduce_sum(kl_per_layer, -1), "nll": nll,
                  **_per_sequence_kl_values(model, kl_per_layer)}
        return ObjectiveOutput(loss=-bound, values=values, num_steps=tf.reduce_sum(mask, axis=-1))


RESAMPLING = ("multinomial",)


class FIVO(Objective):
    """The filtering variational objective (Maddison et al. 2017, "Filtering Variational Objectives").

    A particle filter with ``num_particles`` particles per sequence, proposing
    each ``z_t`` from the model's posterior (its proposal) through the step
    interface of :class:`tfhier.models.recurrent.RecurrentModel`.  Each step
    multiplies a particle's weight by
    ``w_t = p(x_t | ...) p(z_t | ...) / q(z_t | ...)``; when the effective
    sample size ``ESS = (sum w)^2 / sum w^2`` of a sequence's weights falls
    below ``resampling_threshold * K`` the particles are resampled
    (multinomially, ancestors drawn with stateless noise) and the running
    estimate ``log p_hat`` takes ``log mean_k w_k``; the bound is ``log p_hat``
    after the last step.  As Maddison et al. do, the gradients of the
    resampling decisions (the score-function term) are dropped: ancestor
    indices carry no gradient.  With one particle (and a threshold <= 1, so
    that it never resamples) the bound is the single-sample ELBO
    ``log p(x, z) - log q(z | x)`` of the same noise.

    Padded steps neither weight nor resample.  Latent noise is the model's
    contract (:func:`tfhier.noise.latent_noise`) with the K particles as
    extra batch rows, particle-major (row ``k*B + b``).  Logged beside the
    bound: the fraction of steps at which a sequence resampled and the
    analytic KL(q || p) of the particles (mean over particles, summed over
    time), since FIVO has no per-layer KL of its own.
    """

    NAME = "fivo"
    BOUND = "fivo"

    def __init__(self, num_particles=4, resampling_threshold=0.5, resampling="multinomial", name="objective"):
        super().__init__(name=name)
        if isinstance(num_particles, bool) or int(num_particles) != num_particles or num_particles < 1:
            raise ValueError(f"--num_particles must be an integer >= 1, got {num_particles!r}")
        if not 0.0 <= float(resampling_threshold) <= 1.0:
            raise ValueError(f"--resampling_threshold must be in [0, 1] (a fraction of --num_particles), got "
                             f"{resampling_threshold!r}")
        if resampling not in RESAMPLING:
            raise ValueError(f"--resampling must be one of {RESAMPLING}, got {resampling!r}")
        self.num_particles = int(num_particles)
        self.resampling_threshold = float(resampling_threshold)
        self.resampling = resampling

    def get_config(self):
        return {"num_particles": self.num_particles, "resampling_threshold": self.resampling_threshold,
                "resampling": self.resampling}

    def check(self, model):
        if not getattr(model, "supports_step_interface", False):
            raise ValueError(f"--objective=fivo needs a model with the recurrent step interface (a particle filter "
                             f"resamples per-step states); --model={model.NAME} has none: use --objective=elbo or "
                             f"iwae")

    def metric_names(self, model):
        return (["loss", "neg_fivo", "neg_fivo_per_step", "resampling_rate", "kl"] +
                [f"kl_{n}" for n in model.latent_layer_names])

    def compute(self, model, x, mask, seed, training=False):
        bound, resampled, kl = fivo_bound(model, x, mask, seed, self.num_particles, self.resampling_threshold,
                                          training=training)
        steps = tf.reduce_sum(mask, axis=-1)
        values = {"neg_fivo": -bound, "resampling_rate": resampled / tf.maximum(steps, 1.0),
                  **_per_sequence_kl_values(model, kl[:, None])}
        return ObjectiveOutput(loss=-bound, values=values, num_steps=steps)


def effective_sample_size(log_weights, axis=0):
    """``(sum w)^2 / sum w^2`` of the weights ``exp(log_weights)`` along ``axis``, computed in log space."""
    return tf.exp(2.0 * tf.reduce_logsumexp(log_weights, axis) - tf.reduce_logsumexp(2.0 * log_weights, axis))


def resample_decision(log_weights, threshold):
    """Whether each sequence resamples: ``ESS < threshold * K`` for log weights ``[K, B]``; ``[B]`` bool."""
    k = tf.cast(tf.shape(log_weights)[0], log_weights.dtype)
    return effective_sample_size(log_weights) < threshold * k


def particle_filter(propose_and_weight, initial_state, mask, num_particles, resampling_threshold, seed):
    """A particle filter over time with multinomial resampling (the core of :class:`FIVO`).

    Args:
      propose_and_weight: ``(state, t) -> (state, log_increment [K*B], kl [K*B])``: moves every particle one
        step (rows particle-major, ``k*B + b``) and returns its log weight increment (0 on padded steps).
      initial_state: nested ``[K*B, ...]`` tensors.
      mask: ``[B, T]``, 1 on real steps.
      num_particles: K.
      resampling_threshold: resample a sequence when ``ESS < threshold * K`` (at a real step that is not its
        last: resampling there would not change the bound).
      seed: int32 [2]; step t's ancestors are drawn with ``stateless_seed(seed, 2, t)``.

    Returns ``(log p_hat [B], number of resampling steps [B], kl summed over time, mean over particles [B])``.
    """
    k = int(num_particles)
    mask = tf.cast(mask, tf.float32)
    b, t_len = tf.shape(mask)[0], tf.shape(mask)[1]
    log_k = tf.math.log(tf.cast(k, tf.float32))
    rows = tf.range(b)
    next_valid = tf.pad(mask, [[0, 0], [0, 1]])[:, 1:] > 0

    def body(t, state, log_w, log_p_hat, resampled, kl):
        state, inc, kl_t = propose_and_weight(state, t)
        log_w = log_w + tf.reshape(inc, [k, b])
        kl = kl + tf.reduce_mean(tf.reshape(kl_t, [k, b]), 0)
        do = (resample_decision(log_w, resampling_threshold) & (tf.gather(mask, t, axis=1) > 0)
              & tf.gather(next_valid, t, axis=1))
        log_p_hat = log_p_hat + tf.where(do, tf.reduce_logsumexp(log_w, 0) - log_k, 0.0)
        # Ancestors carry no gradient: the resampling decisions' score-function term is dropped.
        ancestors = replica_categorical(tf.transpose(tf.stop_gradient(log_w)), k,
                                        stateless_seed(seed, 2, t))  # [B, K]
        ancestors = tf.where(do[:, None], ancestors, tf.range(k)[None, :])
        flat = tf.reshape(tf.transpose(ancestors) * b + rows[None, :], [-1])  # new row k*B+b <- old row a*B+b
        state = tf.nest.map_structure(lambda v: tf.gather(v, flat), state)
        log_w = tf.where(do[None, :], tf.zeros_like(log_w), log_w)
        return t + 1, state, log_w, log_p_hat, resampled + tf.cast(do, tf.float32), kl

    zeros = tf.zeros([b])
    _, _, log_w, log_p_hat, resampled, kl = tf.while_loop(
        lambda t, *_: t < t_len, body, (tf.constant(0), initial_state, tf.zeros([k, b]), zeros, zeros, zeros),
        maximum_iterations=t_len)  # (a bound on its length, for XLA's gradient of the loop)
    return log_p_hat + tf.reduce_logsumexp(log_w, 0) - log_k, resampled, kl


def fivo_bound(model, x, mask, seed, num_particles, resampling_threshold=0.5, training=False, stepwise=False):
    """The FIVO bound of each sequence (see :class:`FIVO`): ``(log p_hat [B], resampling steps [B],
    analytic KL(q || p) summed over time, mean over particles [B])``.

    The particles move by the model's latent loop (``latent_step``) on features computed once for the whole
    sequence, and each step's weight comes from ``readout`` on that step; ``stepwise=True`` runs every step
    through ``step`` instead (the reference the tests compare with).
    """
    k = int(num_particles)
    x = masked_inputs(x, mask)
    mask = tf.cast(mask, tf.float32)
    b, t_len = tf.shape(x)[0], tf.shape(x)[1]
    xk, mk = tf.tile(x, [k, 1, 1]), tf.tile(mask, [k, 1])  # particle-major rows k*B + b
    with tiled_rows(k):
        eps = latent_noise(seed, 0, t_len, k * b, model.latent_dim)

    def weight(x_t, t, prior, posterior, z, eta):
        valid = tf.gather(mk, t, axis=1) > 0
        log_w = (model.head.distribution(eta).log_prob(x_t) + tf.reduce_sum(prior.log_prob(z), -1)
                 - tf.reduce_sum(posterior.log_prob(z), -1))
        kl = tf.reduce_sum(tfd.kl_divergence(posterior, prior), -1)
        return tf.where(valid, log_w, 0.0), tf.where(valid, kl, 0.0)

    if stepwise:
        prepared = model.prepare(xk, mk)

        def propose_and_weight(state, t):
            x_t = tf.gather(xk, t, axis=1)
            out = model.step(state, x_t, {n: tf.gather(v, t, axis=1) for n, v in prepared.items()},
                             tf.gather(eps, t))
            return (out.state, *weight(x_t, t, out.prior, out.posterior, out.z, out.eta))

        initial = model.initial_state(k * b)
    else:
        features = model.sequence_features(xk, mk)
        # TensorArrays of the steps: their gradient is written step by step (blocks.loop_steps)
        steps = {n: loop_steps(v) for n, v in features.items()}
        eps_steps, x_steps = loop_steps(eps, time_axis=0), loop_steps(xk)

        def propose_and_weight(carry, t):
            features_t = {n: a.read(t) for n, a in steps.items()}
            carry, record = model.latent_step(carry, features_t, eps_steps.read(t))
            prior, posterior, eta = model.readout(features_t, record)
            return (carry, *weight(x_steps.read(t), t, prior, posterior, record["z"], eta))

        initial = model.latent_state(k * b)
    return particle_filter(propose_and_weight, initial, mask, k, resampling_threshold, seed)


OBJECTIVES = ("elbo", "iwae", "fivo")


def make_objective(name, *, kl_regularizer="linear_free_bits", free_bits=0.5, free_bits_halving_steps=300_000,
                   beta_start=0.0, anneal_steps=10_000, num_particles=4, resampling_threshold=0.5,
                   resampling="multinomial") -> Objective:
    """The objective ``--objective=name`` with its settings."""
    if name == "elbo":
        return ELBO(kl_regularizer, free_bits=free_bits, free_bits_halving_steps=free_bits_halving_steps,
                    beta_start=beta_start, anneal_steps=anneal_steps)
    if name == "iwae":
        return IWAE(num_particles)
    if name == "fivo":
        return FIVO(num_particles, resampling_threshold, resampling)
    raise ValueError(f"--objective must be one of {OBJECTIVES}, got {name!r}")
