"""The step interface of recurrent latent-variable models, and everything it gives them.

A recurrent model (VRNN, SRNN, ...) is a :class:`RecurrentModel` that
implements one time step in four parts, in the spirit of Keras RNN cells
(state in, state out) and of FIVO's ``zero_state`` / ``set_observations`` /
``propose_and_weight``:

* ``initial_state(batch)``: a dict of batch-first tensors ``[B, ...]`` (so a
  particle filter can ``tf.gather`` it);
* ``prepare(x, mask)``: a per-sequence pass before the steps, returning a dict
  of batch-first ``[B, T, ...]`` tensors whose step t the step gets (SRNN's
  backward RNN ``a_t``; ``{}`` for a filtering model);
* ``prior(state, prepared_t)`` -> ``tfd.Normal`` over ``z_t`` ``[B, Z]``;
  ``posterior(state, prior, x_t, prepared_t)`` -> ``tfd.Normal``;
  ``emission(state, z_t, prepared_t)`` -> the features the head projects to
  ``p(x_t | ...)``'s parameters;
* ``transition(state, z_t, x_t, prepared_t)`` -> the next state.

From those this class writes, once for every recurrent model:

* :meth:`RecurrentModel.step`: ``(state, x_t, prepared_t, eps_t) -> StepOutput``
  (new state, prior, posterior, z, the head's parameters ``eta``);
* ``forward`` (the contract of :mod:`tfhier.models.base`): a ``tf.while_loop``
  over ``step``, latents from the posterior (scoring, training) or the prior
  (generation, causality checks), or, with ``observed_lengths``, from the
  posterior for the steps inside the observed prefix.  The preparation pass
  then sees the observed prefix only (the padding of the rest is masked), so
  a smoothing posterior primes from the prefix and nothing after it: the rule
  cached and naive generation share;
* cached generation (the step-wise interface of the base class): the
  recurrence itself, O(1) per step;
* what FIVO needs (:class:`tfhier.objectives.FIVO`): ``prepare`` and ``step``
  on tiled particles, with states that can be resampled.

Noise: ``z_t = loc + scale * eps_t`` (posterior) or ``loc + temperature *
scale * eps_t`` (prior), ``eps`` drawn by :func:`tfhier.noise.latent_noise`
for the call's seed, one layer (index 0), time-major: the same noise contract
as the convolutional models.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_probability as tfp

from tfhier.models.base import ModelOutput, SequenceModel
from tfhier.noise import latent_noise, masked_inputs, primed_latent_mask

tfd = tfp.distributions


#: why the recurrent models train in float32 only
RECURRENT_MIXED_PRECISION = (
    "it is not offered for the recurrent models: their time steps run one after another, each a few small matrix "
    "products whose cost is per-operation overhead rather than arithmetic, which bfloat16 does not reduce (it adds "
    "casts)")


@dataclasses.dataclass
class StepOutput:
    """One step of a recurrent model."""

    state: dict
    prior: tfd.Normal  # [B, Z]
    posterior: tfd.Normal  # [B, Z]
    z: tf.Tensor  # [B, Z]
    eta: tf.Tensor  # [B, P]: the head's parameters of p(x_t | ...)


def _time_slice(prepared, t):
    return {k: tf.gather(v, t, axis=1) for k, v in prepared.items()}


class RecurrentModel(SequenceModel):
    """Base class of the recurrent models (see the module docstring)."""

    mixed_precision = False
    mixed_precision_problem = RECURRENT_MIXED_PRECISION

    stepwise_generation = True
    #: the model's posterior at t depends on x_{<=t} only (FIVO needs a filtering proposal... or at least a
    #: sequential one: a smoothing posterior is allowed too, as FIVO's own smoothing proposal)
    supports_step_interface = True

    # -- what subclasses implement ---------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        raise NotImplementedError

    def initial_state(self, batch) -> dict:
        raise NotImplementedError

    def prepare(self, x, mask) -> dict:
        """Per-sequence features ``{name: [B, T, ...]}`` (default: none)."""
        return {}

    def prior(self, state, prepared_t):
        raise NotImplementedError

    def posterior(self, state, prior, x_t, prepared_t):
        raise NotImplementedError

    def emission(self, state, z, prepared_t):
        raise NotImplementedError

    def transition(self, state, z, x_t, prepared_t) -> dict:
        raise NotImplementedError

    def emission_params(self, state, z, prepared_t):
        """The head's parameters ``eta`` [B, P] of p(x_t | ...): the head on :meth:`emission` (VHRNN modulates
        the projection itself)."""
        return self.head(self.emission(state, z, prepared_t))

    def analytic_kl(self, q_loc, q_scale, mask):
        """The KL per element ``[B, T, Z]`` when the prior does not factorise over steps (a Wiener process), in a
        one-layer list; None: the step priors' element-wise KL."""
        return None

    # -- derived -------------------------------------------------------------------------
    @property
    def latent_layer_names(self):
        return ["z"]

    @property
    def latent_dims(self):
        return [self.latent_dim]

    def step(self, state, x_t, prepared_t, eps_t, use_posterior=True, temperature=1.0) -> StepOutput:
        """One step: ``z_t`` from the posterior where ``use_posterior`` ([B] bool, or a Python bool), else from
        the prior with ``temperature``; ``x_t`` [B, D] is what the step observes (the state moves on with it)."""
        prior = self.prior(state, prepared_t)
        posterior = self.posterior(state, prior, x_t, prepared_t)
        z_q = posterior.loc + posterior.scale * eps_t
        if use_posterior is True:
            z = z_q
        else:
            z_p = prior.loc + prior.scale * (temperature * eps_t)
            z = z_p if use_posterior is False else tf.where(use_posterior[:, None], z_q, z_p)
        eta = self.emission_params(state, z, prepared_t)
        return StepOutput(self.transition(state, z, x_t, prepared_t), prior, posterior, z, eta)

    def forward(self, x, mask, *, seed, latents="posterior", temperature=1.0, training=False,
                observed_lengths=None) -> ModelOutput:
        """One pass over ``x`` (see :class:`tfhier.models.base.SequenceModel` and the module docstring)."""
        if latents not in ("posterior", "prior"):
            raise ValueError(f"latents must be 'posterior' or 'prior', got {latents!r}")
        if observed_lengths is not None and latents != "prior":
            raise ValueError("observed_lengths (priming) goes with latents='prior'")
        x = masked_inputs(x, mask)
        mask = tf.cast(mask, tf.float32)
        b, t_len = tf.shape(x)[0], tf.shape(x)[1]
        if observed_lengths is not None:
            seen = tf.sequence_mask(observed_lengths, t_len, dtype=tf.float32)
            prepared = self.prepare(masked_inputs(x, seen), seen)  # the prefix only: the priming rule
            use_q = primed_latent_mask(observed_lengths, 1, t_len)
        else:
            prepared = self.prepare(x, mask)
            use_q = None
        eps = latent_noise(seed, 0, t_len, b, self.latent_dim)
        z_dim = self.latent_dim

        def body(t, state, arrays):
            use = (latents == "posterior") if use_q is None else tf.gather(use_q, t, axis=1)
            out = self.step(state, tf.gather(x, t, axis=1), _time_slice(prepared, t), tf.gather(eps, t), use,
                            temperature)
            values = (out.prior.loc, out.prior.scale, out.posterior.loc, out.posterior.scale, out.z, out.eta)
            return t + 1, out.state, tuple(a.write(t, v) for a, v in zip(arrays, values))

        sizes = (z_dim,) * 5 + (self.head.param_size,)
        arrays = tuple(tf.TensorArray(tf.float32, size=t_len, element_shape=tf.TensorShape([None, n]))
                       for n in sizes)
        # (maximum_iterations: XLA, train.py --jit_compile, differentiates a loop only with a bound on its length.)
        _, _, arrays = tf.while_loop(lambda t, *_: t < t_len, body, (tf.constant(0), self.initial_state(b), arrays),
                                     maximum_iterations=t_len)
        p_loc, p_scale, q_loc, q_scale, z, eta = (tf.transpose(a.stack(), [1, 0, 2]) for a in arrays)
        return ModelOutput(likelihood=self.head.distribution(eta), likelihood_params=eta,
                           posteriors=[tfd.Normal(q_loc, q_scale)], priors=[tfd.Normal(p_loc, p_scale)],
                           latents=[z], latent_masks=[mask], kl_elements=self.analytic_kl(q_loc, q_scale, mask))

    # -- cached generation: the recurrence --------------------------------------------------
    def generation_prepare(self, prefix, lengths):
        if prefix is None:
            return {}
        seen = tf.sequence_mask(lengths, tf.shape(prefix)[1], dtype=tf.float32)
        return self.prepare(masked_inputs(prefix, seen), seen)

    def generation_state(self, batch):
        return self.initial_state(batch)

    def generation_emit(self, state, eps, temperature, observed=None, prepared_t=None):
        prepared_t = prepared_t or {}
        prior = self.prior(state, prepared_t)
        z = prior.loc + prior.scale * (temperature * eps[0])
        if observed is not None:
            x_t, is_observed = observed
            posterior = self.posterior(state, prior, x_t, prepared_t)
            z = tf.where(is_observed[:, None], posterior.loc + posterior.scale * eps[0], z)
        return self.emission_params(state, z, prepared_t), {"z": z, "prepared": prepared_t}

    def generation_observe(self, state, carry, y):
        return self.transition(state, carry["z"], y, carry["prepared"])


__all__ = ["RecurrentModel", "StepOutput"]
