"""The interface every tfhier model exposes, and the training step they share.

A model is a :class:`SequenceModel` (a ``keras.Model``) that implements

* ``forward(x, mask, *, seed, latents='posterior', temperature=1.0, training=False)
  -> ModelOutput``: one pass over a batch; latent variables are drawn from the
  posteriors (scoring, training) or from the priors (generation, causality
  checks) with stateless noise from ``seed`` (int32 [2]);
* ``latent_layer_names``: one name per latent layer, closest to the data first.

and gets from this class:

* ``score(x, mask, seed)``: per-sequence ELBO, NLL, KL per layer, steps;
* ``generate(num_samples, num_steps, seed, temperature)``: samples, by the
  naive method (re-running ``forward`` over the whole buffer at every step,
  cost quadratic in the length) unless the model overrides it;
* ``train_step`` / ``test_step`` for ``fit`` / ``evaluate``, with the loss of
  :class:`tfhier.objectives.Objective` given to ``compile``.

The training step follows tf.distribute conventions so a strategy can wrap
it unchanged: the per-sequence loss is averaged over the *global* batch
(``tf.nn.compute_average_loss``), gradients are clipped by the optimizer's
``global_clipnorm`` after aggregation, and every reported number is a Keras
metric.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfhier import objectives

tfd = tfp.distributions


@dataclasses.dataclass
class ModelOutput:
    """What one forward pass produces (see :mod:`tfhier.objectives`)."""

    likelihood: tfd.Distribution  # batch [B, T], event [D]
    likelihood_params: tf.Tensor  # [B, T, P]: the head's eta
    posteriors: list  # per layer: element-wise distribution, batch [B, T_l, Z_l]
    priors: list  # per layer, same shapes
    latents: list  # per layer [B, T_l, Z_l]: z used by the generative path
    latent_masks: list  # per layer [B, T_l]


def stateless_seed(seed, *salts):
    """Derives an int32 [2] stateless seed from ``seed`` and integer salts."""
    seed = tf.cast(seed, tf.int32)
    for salt in salts:
        seed = tf.random.experimental.stateless_fold_in(seed, salt)
    return seed


def latent_normal(params):
    """Eq. (11)/(13): ``[mu, sigma_pre]`` -> element-wise Normal with the A.2 clamped softplus scale."""
    from tfhier.heads import gaussian_scale

    mu, s = tf.split(params, 2, axis=-1)
    return tfd.Normal(mu, gaussian_scale(s))


def apply_if_finite(optimizer, grads, variables, finite):
    """``optimizer.apply(grads)`` unless ``finite`` is False on any replica (then nothing changes).

    Under a merge-call strategy (MirroredStrategy) ``optimizer.apply`` syncs
    replicas, which a ``cond`` in replica context may not contain; as Keras'
    LossScaleOptimizer does, the ``cond`` is taken in cross-replica context.
    """
    def apply():
        optimizer.apply(grads, variables)

    if not tf.distribute.has_strategy() or tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(finite, apply, lambda: None)
        return
    replica = tf.distribute.get_replica_context()
    all_finite = replica.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32)) == 0

    def cross_replica(strategy, grads, all_finite):
        def apply_each():
            strategy.extended.call_for_each_replica(lambda g: optimizer.apply(g, variables), args=(grads,))

        tf.cond(strategy.experimental_local_results(all_finite)[0], apply_each, lambda: None)

    replica.merge_call(cross_replica, args=(grads, all_finite))


class SequenceModel(keras.Model):
    """Base class of all tfhier models (see the module docstring)."""

    #: sequences are padded to a multiple of this inside ``forward`` (downsampling models)
    time_multiple = 1

    def __init__(self, input_dim, noise_seed=0, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.noise_seed = int(noise_seed)
        self.objective: Optional[objectives.Objective] = None

    # -- what subclasses implement -------------------------------------------------
    @property
    def latent_layer_names(self) -> list:
        raise NotImplementedError

    def forward(self, x, mask, *, seed, latents="posterior", temperature=1.0, training=False) -> ModelOutput:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------
    def build_for_data(self):
        """Creates all weights by one pass on a dummy batch."""
        x = tf.zeros([1, self.time_multiple, self.input_dim])
        self.forward(x, tf.ones([1, self.time_multiple]), seed=tf.constant([0, 0]))
        self.built = True
        return self

    def call(self, inputs, training=False):
        x, mask = inputs
        return self.score(x, mask, tf.constant([0, 0]), training=training)

    def score(self, x, mask, seed, training=False):
        """Per-sequence bound terms (nats): ``elbo`` [B], ``nll`` [B], ``kl`` [B, L], ``num_steps`` [B]."""
        out = self.forward(x, mask, seed=seed, training=training)
        terms = objectives.elbo_terms(out, x, mask)
        return {"elbo": terms.elbo, "nll": terms.nll, "kl": terms.kl_per_layer, "num_steps": terms.num_steps}

    def sample_step(self, eta, seed, temperature=1.0):
        """Draws one step from the head's distribution for parameters ``eta`` [N, P]."""
        return self.head.distribution(eta, temperature).sample(seed=seed)

    def generate(self, num_samples, num_steps, seed, temperature=1.0):
        """Samples [num_samples, num_steps, D] by re-running ``forward`` at every step.

        Latent noise is fixed for the whole call (drawn once from ``seed``), so
        a latent step keeps its value however often it is recomputed; with a
        causal model its prior parameters do not change either, so this is an
        exact (if slow) sampler of the model.
        """
        return self._naive_generate(tf.convert_to_tensor(num_samples, tf.int32),
                                    tf.convert_to_tensor(num_steps, tf.int32),
                                    tf.cast(seed, tf.int32), tf.convert_to_tensor(temperature, tf.float32))

    @tf.function(reduce_retracing=True)
    def _naive_generate(self, num_samples, num_steps, seed, temperature):
        m = self.time_multiple
        t_pad = (num_steps + m - 1) // m * m
        buffer = tf.zeros([num_samples, t_pad, self.input_dim])
        ones = tf.ones([num_samples, t_pad])
        latent_seed = stateless_seed(seed, 0)

        def body(t, buffer):
            out = self.forward(buffer, ones, seed=latent_seed, latents="prior", temperature=temperature)
            y_t = self.sample_step(out.likelihood_params[:, t], stateless_seed(seed, 1, t), temperature)
            update = tf.one_hot(t, t_pad)[None, :, None] * (y_t[:, None, :] - buffer)
            return t + 1, buffer + update

        _, buffer = tf.while_loop(lambda t, _: t < num_steps, body, [tf.constant(0), buffer])
        return buffer[:, :num_steps]

    # -- training ----------------------------------------------------------------------
    def compile(self, optimizer, objective: objectives.Objective, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.objective = objective
        names = ["loss", "neg_elbo", "nll", "kl", "neg_elbo_per_step"]
        names += [f"kl_{n}" for n in self.latent_layer_names]
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self._trackers["grad_norm"] = keras.metrics.Mean(name="grad_norm")
        self._trackers["nonfinite_steps"] = keras.metrics.Sum(name="nonfinite_steps")

    @property
    def metrics(self):
        return list(getattr(self, "_trackers", {}).values())

    def _update_bound_metrics(self, terms: objectives.ElboTerms, weight):
        t = self._trackers
        neg_elbo = -terms.elbo
        t["neg_elbo"].update_state(neg_elbo, sample_weight=weight)
        t["nll"].update_state(terms.nll, sample_weight=weight)
        t["kl"].update_state(terms.kl, sample_weight=weight)
        # Weighted by steps, this is sum(-ELBO) / sum(steps): nats per time step.
        t["neg_elbo_per_step"].update_state(neg_elbo / tf.maximum(terms.num_steps, 1.0),
                                            sample_weight=terms.num_steps * weight)
        for i, name in enumerate(self.latent_layer_names):
            t[f"kl_{name}"].update_state(terms.kl_per_layer[:, i], sample_weight=weight)

    def _training_seed(self, step):
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica is not None else 0
        return stateless_seed(tf.stack([self.noise_seed, tf.cast(step, tf.int32)]), replica_id)

    def train_step(self, data):
        x, mask = data
        step = self.optimizer.iterations
        self.objective.update(step)
        with tf.GradientTape() as tape:
            out = self.forward(x, mask, seed=self._training_seed(step), training=True)
            terms = objectives.elbo_terms(out, x, mask)
            per_sequence = self.objective.per_sequence_loss(terms)
            loss = tf.nn.compute_average_loss(per_sequence)
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        grad_norm = tf.linalg.global_norm(grads)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(grad_norm)
        # A non-finite step is skipped: weights and optimizer state stay as they were.
        apply_if_finite(self.optimizer, grads, variables, finite)
        weight = tf.cast(finite, tf.float32)
        safe = lambda v: tf.where(finite, v, tf.zeros_like(v))  # noqa: E731
        self._trackers["loss"].update_state(safe(per_sequence), sample_weight=weight)
        self._trackers["grad_norm"].update_state(safe(grad_norm), sample_weight=weight)
        self._trackers["nonfinite_steps"].update_state(1.0 - weight)
        self._update_bound_metrics(
            objectives.ElboTerms(nll=safe(terms.nll), kl_per_layer=safe(terms.kl_per_layer), kl_elements=[],
                                 latent_masks=[], num_steps=terms.num_steps), weight)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, mask = data
        out = self.forward(x, mask, seed=stateless_seed(tf.constant([self.noise_seed, -1])))
        self._update_bound_metrics(objectives.elbo_terms(out, x, mask), 1.0)
        names = ["neg_elbo", "nll", "kl", "neg_elbo_per_step"] + [f"kl_{n}" for n in self.latent_layer_names]
        return {n: self._trackers[n].result() for n in names}
