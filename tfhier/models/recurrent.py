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
* what FIVO needs (:class:`tfhier.objectives.FIVO`): the time-parallel
  split below on tiled particles, with loop states that can be resampled.

**Only what recurs runs in the loop.**  Scoring and training (latents from the
posterior) and FIVO do not call ``step``: they use a second view of the same
model that splits each step by what depends on the latent chain (the
defaults below give every model this view from its step methods, so the
split is a property of the interface, and a model overrides the four methods
to make it fast):

* ``sequence_features(x, mask)``: everything computable from ``x`` alone, for
  the whole sequence at once (``[B, T, ...]``: feature extractors, input
  products of the cells' gates, deterministic recurrences such as SRNN's
  ``d_{1:T}``, a smoothing posterior's backward pass);
* ``latent_state(batch)`` and ``latent_step(carry, features_t, eps_t)``: the
  loop, which carries only what recurs and returns a record of the step
  (``[B, n]`` tensors of the sizes ``record_sizes()`` declares: the
  posterior's parameters, ``z_t``, and whatever the readout needs);
* ``readout(features, records)``: the prior, the posterior and the head's
  parameters from the features and the stacked records, after the loop, on
  ``B * T`` rows at once.  It must be pointwise in time (step t reads step t's
  features and record only), so that FIVO, which needs each step's weight
  inside its loop, calls it on one step.

The step-by-step path (``step`` in a ``tf.while_loop``: :meth:`RecurrentModel.forward_stepwise`)
stays: it samples from the prior and primes continuations, it is what cached
generation runs, and it is the reference the tests compare the split with.

Noise: ``z_t = loc + scale * eps_t`` (posterior) or ``loc + temperature *
scale * eps_t`` (prior), ``eps`` drawn by :func:`tfhier.noise.latent_noise`
for the call's seed, one layer (index 0), time-major: the same noise contract
as the convolutional models.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_probability as tfp

from tfhier.blocks import loop_steps
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
    #: XLA fuses the loop's many small per-step operations: VRNN and VHRNN train 1.5-7.7x faster with it on CPU;
    #: SRNN and VOSP, whose loops hold larger products, are faster in graph mode and say so (bench/recurrent.py,
    #: docs/benchmarks.md)
    jit_compile_default = True

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

    # -- the time-parallel split (see the module docstring); defaults from the step methods ---------------
    def sequence_features(self, x, mask) -> dict:
        """What the loop and the readout read that depends on ``x`` alone, ``{name: [B, T, ...]}`` (default: the
        inputs and :meth:`prepare`'s features)."""
        return {"x": x, **self.prepare(x, mask)}

    def latent_state(self, batch) -> dict:
        """The latent loop's carry before the first step (default: the step interface's state)."""
        return self.initial_state(batch)

    def record_sizes(self) -> dict:
        """``{name: n}``: the ``[B, n]`` tensors :meth:`latent_step` records at each step."""
        z = self.latent_dim
        return {"p_loc": z, "p_scale": z, "q_loc": z, "q_scale": z, "z": z, "eta": self.head.param_size}

    def latent_step(self, carry, features_t, eps_t):
        """One step of the latent loop, z from the posterior: ``(carry, record)`` (default: the whole step)."""
        prepared_t = {k: v for k, v in features_t.items() if k != "x"}
        out = self.step(carry, features_t["x"], prepared_t, eps_t)
        return out.state, {"p_loc": out.prior.loc, "p_scale": out.prior.scale, "q_loc": out.posterior.loc,
                           "q_scale": out.posterior.scale, "z": out.z, "eta": out.eta}

    def readout(self, features, records):
        """``(prior, posterior, eta)`` from features and records of any leading shape (``[B, T]`` after the
        loop, ``[B]`` for one step); pointwise in time."""
        return (tfd.Normal(records["p_loc"], records["p_scale"]), tfd.Normal(records["q_loc"], records["q_scale"]),
                records["eta"])

    def scan_latents(self, features, eps, batch, num_steps):
        """The latent loop over all steps: the records stacked, ``{name: [B, T, n]}``."""
        sizes = self.record_sizes()
        arrays = {k: tf.TensorArray(tf.float32, size=num_steps, element_shape=tf.TensorShape([None, n]))
                  for k, n in sizes.items()}

        steps = {k: loop_steps(v) for k, v in features.items()}
        eps_steps = loop_steps(eps, time_axis=0)

        def body(t, carry, arrays):
            carry, record = self.latent_step(carry, {k: a.read(t) for k, a in steps.items()}, eps_steps.read(t))
            return t + 1, carry, {k: a.write(t, record[k]) for k, a in arrays.items()}

        # (maximum_iterations: XLA differentiates a loop only with a bound on its length.)
        _, _, arrays = tf.while_loop(lambda t, *_: t < num_steps, body,
                                     (tf.constant(0), self.latent_state(batch), arrays), maximum_iterations=num_steps)
        return {k: tf.transpose(a.stack(), [1, 0, 2]) for k, a in arrays.items()}

    def build_for_data(self):
        """Creates all weights by one step-by-step pass (the path that has always created them, so variable
        paths, hence checkpoints, do not depend on the split), then traces the split once."""
        x = tf.zeros([1, self.time_multiple, self.input_dim])
        self.forward_stepwise(x, tf.ones([1, self.time_multiple]), seed=tf.constant([0, 0]))
        self.built = True
        self.forward(x, tf.ones([1, self.time_multiple]), seed=tf.constant([0, 0]))
        return self

    def forward(self, x, mask, *, seed, latents="posterior", temperature=1.0, training=False,
                observed_lengths=None) -> ModelOutput:
        """One pass over ``x`` (see :class:`tfhier.models.base.SequenceModel` and the module docstring): with
        latents from the posterior, the time-parallel split; otherwise :meth:`forward_stepwise`."""
        if latents != "posterior" or observed_lengths is not None:
            return self.forward_stepwise(x, mask, seed=seed, latents=latents, temperature=temperature,
                                         training=training, observed_lengths=observed_lengths)
        x = masked_inputs(x, mask)
        mask = tf.cast(mask, tf.float32)
        b, t_len = tf.shape(x)[0], tf.shape(x)[1]
        features = self.sequence_features(x, mask)
        records = self.scan_latents(features, latent_noise(seed, 0, t_len, b, self.latent_dim), b, t_len)
        prior, posterior, eta = self.readout(features, records)
        return ModelOutput(likelihood=self.head.distribution(eta), likelihood_params=eta, posteriors=[posterior],
                           priors=[prior], latents=[records["z"]], latent_masks=[mask],
                           kl_elements=self.analytic_kl(posterior.loc, posterior.scale, mask))

    def forward_stepwise(self, x, mask, *, seed, latents="posterior", temperature=1.0, training=False,
                         observed_lengths=None) -> ModelOutput:
        """One pass, every step through :meth:`step` (the reference of the split; priming and prior latents)."""
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
