"""The interface every tfhier model exposes, and the training step they share.

A model is a :class:`SequenceModel` (a ``keras.Model``) that declares its
hyperparameters (``NAME``, ``HPARAMS``: see :mod:`tfhier.models.hparams`; the
constructor takes them as keyword arguments and ``get_config`` returns all of
them) and implements

* ``forward(x, mask, *, seed, latents='posterior', temperature=1.0, training=False,
  observed_lengths=None) -> ModelOutput``: one pass over a batch; latent
  variables are drawn from the posteriors (scoring, training) or from the
  priors (generation, causality checks), or, with ``observed_lengths``, from
  the posteriors for the latent steps the observed prefix covers and the
  priors elsewhere (priming, see :func:`tfhier.noise.primed_latent_mask`), with
  stateless noise from ``seed`` (int32 [2]) drawn by :func:`tfhier.noise.latent_noise`;
* ``latent_layer_names``: one name per latent layer, closest to the data first
  (empty for a model without latent variables), with ``latent_dims`` and
  ``latent_factors`` (units per step and time factor of each layer);
* optionally a cached generator: MS-STCN overrides ``generate`` /
  ``continue_sequences``; a model whose every step has the same rate (WaveNet,
  STCN, the recurrent models) instead implements the three methods of the
  step-wise generation interface (:meth:`SequenceModel.generation_state`,
  :meth:`~SequenceModel.generation_emit`, :meth:`~SequenceModel.generation_observe`)
  and gets the cached loop from this class.  ``has_cached_generator`` says
  which (``sample.py``, training-time samples and export read it);

and gets from this class:

* ``score(x, mask, seed)``: per-sequence ELBO, NLL, KL per layer, steps;
* ``generate(num_samples, num_steps, seed, temperature)`` and
  ``continue_sequences(prefix, prefix_lengths, num_steps, seed, temperature)``:
  samples, by default by the naive reference method (``generate_naive`` /
  ``continue_sequences_naive``: re-running ``forward`` over the whole buffer at
  every step, cost quadratic in the length); models with a cached generator
  (MS-STCN: :mod:`tfhier.generation`) override the two.  Both kinds follow the
  noise contract (:mod:`tfhier.noise`), so for the same seed they give the same sequences;
* ``train_step`` / ``test_step`` for ``fit`` / ``evaluate``, with the loss of
  :class:`tfhier.objectives.Objective` given to ``compile``.

The training step follows tf.distribute conventions so a strategy can wrap
it unchanged: the per-sequence loss is averaged over the *global* batch
(``tf.nn.compute_average_loss``), gradients are clipped by the optimizer's
``global_clipnorm`` after aggregation, and every reported number is a Keras
metric.

Generation follows the noise contract of :mod:`tfhier.noise` (what makes
cached and naive generators agree, and ``generate(N, 700)`` the first 700
steps of ``generate(N, 1400)``, in and out of a SavedModel): latent noise from
:func:`~tfhier.noise.generation_latent_seed`, output step t from
:func:`~tfhier.noise.output_step_seed`.

Generation runs its step body as one XLA computation (:func:`generation_step`:
a ``tf.function(jit_compile=True)`` called inside the graph-mode
``tf.while_loop``, so lengths stay dynamic and one compilation per batch size
serves every length), in ``generate``, ``sample.py``, training-time samples
and the SavedModel signatures alike.  XLA draws stateless random numbers with
its own implementation, so every sampler, the naive reference included, draws
its output steps inside an XLA computation (the same seed gives the same
sequences everywhere) and its latent noise outside (drawn once per call).
``model.xla_generation = False`` runs the same bodies in plain graph mode (a
different, equally valid draw for a seed; for servers without XLA's CPU JIT).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Optional

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfhier import blocks, objectives
from tfhier.models import hparams as hp
from tfhier.noise import generation_latent_seed, latent_noise, masked_inputs, output_step_seed, stateless_seed
from tfhier.replicas import all_reduce_sum, multi_worker, replica_position

tfd = tfp.distributions

#: keyword arguments that go to keras.Model rather than being hyperparameters
_KERAS_KWARGS = ("name", "dtype", "trainable")


#: the help text of ``activation``, which models declare with their own choices and defaults
ACTIVATION_HELP = "Hidden-layer nonlinearity of the MLPs (SRNN appendix A: leaky ReLU 1/3 clipped at +-3; STORN's " \
                  "Table 2: tanh)."


def head_hparams(default_head="gaussian", default_components=10, default_scale_fn="clamp"):
    """The output-head hyperparameters every model has (:mod:`tfhier.heads`), and ``scale_fn``: how every Gaussian
    of the model (latents and output) gets its scale; runs stored before it existed used ``clamp``."""
    from tfhier.heads import HEADS, SCALE_FNS

    return (
        hp.HParam("head", "str", default_head, "Output distribution of one step ('auto' in train.py: by data kind).",
                  choices=("auto",) + tuple(sorted(HEADS))),
        hp.HParam("head_components", "int", default_components, "Mixture components of the output head."),
        hp.HParam("mixture", "str", "joint", "Gaussian-mixture heads (gmm, handwriting): one component for the whole "
                  "step (joint, A.2) or a product of 1-D mixtures with per-dimension component draws (per_dim).",
                  choices=("joint", "per_dim")),
        hp.HParam("scale_fn", "str", default_scale_fn, "Scale of every Gaussian (latents and output) from its "
                  "pre-activation: clamp = clip(softplus, 1e-3, 5) (MS-STCN A.2); softplus = softplus + 1e-4, no cap "
                  "(VRNN, VHRNN); exp = exp(pre / 2), a log-variance (SRNN eq. 3, STORN).",
                  choices=tuple(sorted(SCALE_FNS)), stored_default="clamp"),
    )


def make_model_head(model, name="head", **kwargs):
    """The output head a model's ``head*``, ``mixture`` and ``scale_fn`` hyperparameters describe (``kwargs``: more
    of :class:`tfhier.heads.Head`'s arguments)."""
    from tfhier.heads import make_head

    h = model.hparams
    return make_head(h["head"], model.input_dim, h["head_components"], mixture=h["mixture"], scale_fn=h["scale_fn"],
                     name=name, **kwargs)


@dataclasses.dataclass
class ModelOutput:
    """What one forward pass produces (see :mod:`tfhier.objectives`)."""

    likelihood: tfd.Distribution  # batch [B, T], event [D]
    likelihood_params: tf.Tensor  # [B, T, P]: the head's eta
    posteriors: list  # per layer: element-wise distribution, batch [B, T_l, Z_l]
    priors: list  # per layer, same shapes
    latents: list  # per layer [B, T_l, Z_l]: z used by the generative path
    latent_masks: list  # per layer [B, T_l]
    # per layer [B, T_l, Z_l]: the analytic KL(q || p) per element when the prior does not factorise over steps
    # (STORN's Wiener process); None: the element-wise KL of posteriors and priors
    kl_elements: Optional[list] = None


def latent_normal(params, scale_fn):
    """Eq. (11)/(13): ``[mu, sigma_pre]`` -> element-wise Normal, its scale by ``scale_fn`` (the model's
    hyperparameter: :data:`tfhier.heads.SCALE_FNS`)."""
    from tfhier.heads import gaussian_scale

    mu, s = tf.split(tf.cast(params, tf.float32), 2, axis=-1)  # float32 under mixed precision too
    return tfd.Normal(mu, gaussian_scale(s, scale_fn))


#: the longest sequence the quadratic naive sampler draws where nobody asked for it explicitly
NAIVE_MAX_STEPS = 1000


def naive_generation_problem(model, num_steps, what="sampling") -> Optional[str]:
    """Why ``num_steps`` steps of ``model`` should not be drawn without asking for the naive sampler, or None.

    A model without a cached generator samples by re-running ``forward`` at
    every step (cost quadratic in the length).  Callers warn up to
    :data:`NAIVE_MAX_STEPS` and refuse above it unless the naive method was
    asked for by name, rather than silently paying the quadratic cost.
    """
    if model.has_cached_generator or num_steps <= NAIVE_MAX_STEPS:
        return None
    return (f"{model.NAME} has no cached generator: {what} {num_steps} steps would re-run the whole network at "
            f"every step (cost quadratic in the length); the limit without asking is {NAIVE_MAX_STEPS} steps")


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
    all_finite = all_reduce_sum(replica, 1.0 - tf.cast(finite, tf.float32)) == 0

    def cross_replica(strategy, grads, all_finite):
        def apply_each():
            strategy.extended.call_for_each_replica(lambda g: optimizer.apply(g, variables), args=(grads,))

        tf.cond(strategy.experimental_local_results(all_finite)[0], apply_each, lambda: None)

    replica.merge_call(cross_replica, args=(grads, all_finite))


def gather_continuations(sequences, lengths, num_steps):
    """``sequences[b, lengths[b] : lengths[b] + num_steps]`` for every row b: ``[B, num_steps, D]``."""
    idx = tf.cast(lengths, tf.int32)[:, None] + tf.range(num_steps)[None, :]
    return tf.gather(sequences, idx, batch_dims=1)


#: the Keras dtype policy of ``train.py --mixed_precision``
MIXED_PRECISION_POLICY = "mixed_bfloat16"


def check_mixed_precision(model_cls, flag="--mixed_precision"):
    """Raises ValueError naming ``flag`` if the model class does not train under mixed precision."""
    if not model_cls.mixed_precision:
        raise ValueError(f"{flag}: {model_cls.NAME or model_cls.__name__} trains in float32 only; "
                         f"{model_cls.mixed_precision_problem}")


@contextlib.contextmanager
def precision_policy(mixed: bool):
    """Within this context, layers created (and built) compute under mixed precision if ``mixed``.

    ``mixed_bfloat16``: every layer's variables stay float32 (so checkpoints are the same as a float32 run's,
    and evaluate.py, sample.py and export rebuild the model in float32), its computation runs in bfloat16, and
    the layers whose outputs parameterise a distribution (:data:`tfhier.heads.DISTRIBUTION_DTYPE`) in float32,
    so densities, KLs and losses are float32. bfloat16 has float32's exponent range, so no loss scaling is
    needed (float16 would need it: it is not offered, see docs/training.md, "Mixed precision").
    """
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(MIXED_PRECISION_POLICY if mixed else "float32")  # whatever the caller's policy
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def generation_step(model, fn):
    """``fn`` compiled as one XLA computation (``tf.function(jit_compile=True)``) if ``model.xla_generation``,
    else ``fn`` itself (inlined in the caller's graph).

    Why: a generation step is hundreds of tiny ops; graph mode pays its per-op
    dispatch on each of them (about 0.5 ms per MS-STCN step on CPU), XLA fuses
    them into a few kernels.  Only the step is compiled, not the loop, so the
    number of steps stays a run-time value (no recompilation per length); XLA
    compiles once per distinct argument shape (the batch size) and caches it.
    """
    if not model.xla_generation:
        return fn
    return tf.function(fn, jit_compile=True, autograph=False, reduce_retracing=True)


def graph_call(model, key, fn, *args):
    """``fn(*args)``: traced in place inside a tf.function, else through a cached tf.function of ``model``.

    Inside a function being traced (a caller's tf.function, an ExportArchive
    endpoint) Python ints stay Python ints, so shapes can be static (XLA).
    Eagerly, the arguments become tensors and one graph per (model, key) is
    traced and reused (graph mode is far faster than eager for these loops);
    the cache is set on the instance past Keras' attribute tracking, so nothing extra is tracked or exported.
    """
    if tf.inside_function():
        return fn(*args)
    functions = model.__dict__.get("_tfhier_graph_functions")
    if functions is None:
        functions = {}
        object.__setattr__(model, "_tfhier_graph_functions", functions)
    if key not in functions:
        functions[key] = tf.function(fn, reduce_retracing=True, autograph=False)
    return functions[key](*[None if a is None else tf.convert_to_tensor(a) for a in args])


class SequenceModel(keras.Model):
    """Base class of all tfhier models (see the module docstring)."""

    #: the name ``train.py --model`` knows the model by (the registry's key)
    NAME = ""
    #: the model's hyperparameters (:class:`tfhier.models.hparams.HParam`)
    HPARAMS: tuple = ()
    #: one line for ``--help`` and README
    DESCRIPTION = ""
    #: sequences are padded to a multiple of this inside ``forward`` (downsampling models)
    time_multiple = 1
    #: the model implements the step-wise generation interface (``generation_state`` / ``_emit`` / ``_observe``)
    stepwise_generation = False
    #: p(x_t | ...) depends on x_{<t} (False for STORN's VRAE, which generates from its latent sequence alone)
    autoregressive = True
    #: generation steps run as XLA computations (:func:`generation_step`); False: plain graph mode
    #: (the environment variable TFHIER_XLA_GENERATION=0 makes False the default, e.g. for the test suite)
    xla_generation = os.environ.get("TFHIER_XLA_GENERATION", "1") != "0"
    #: generation steps per XLA computation of the step-wise sampler (one launch from the graph costs
    #: milliseconds on CPU; the last launch computes up to this many - 1 steps that are dropped)
    steps_per_launch = 16
    #: train.py compiles the training and validation steps with XLA unless told otherwise (--[no]jit_compile):
    #: what was measured faster for the model (bench/recurrent.py, bench/train_step.py)
    jit_compile_default = False
    #: the model trains under a mixed-precision policy (``train.py --mixed_precision``: its layers compute in
    #: bfloat16, what parameterises a distribution in float32); False: the model refuses it, with a reason
    mixed_precision = True
    #: why ``mixed_precision`` is False (named in the error)
    mixed_precision_problem = ""

    def __init__(self, input_dim, noise_seed=0, **kwargs):
        keras_kwargs = {k: kwargs.pop(k) for k in _KERAS_KWARGS if k in kwargs}
        super().__init__(**keras_kwargs)
        self.input_dim = int(input_dim)
        self.noise_seed = int(noise_seed)
        values = hp.resolve(type(self), kwargs, model_name=self.NAME or type(self).__name__)
        if values.get("head_components", 1) < 1:
            raise hp.HParamError(f"{self.NAME}: --head_components must be >= 1, got {values['head_components']}")
        if values.get("head") == "auto":
            raise hp.HParamError(f"{self.NAME}: head='auto' must be resolved from the data kind before building "
                                 "(tfhier.models.config_for_data does it)")
        object.__setattr__(self, "_hparams", values)  # a plain dict, past Keras' attribute tracking
        self.objective: Optional[objectives.Objective] = None

    @property
    def hparams(self) -> dict:
        """The model's hyperparameters, defaults filled in (a copy)."""
        return hp.copy_value(self._hparams)

    @property
    def scale_fn(self) -> str:
        """How the model's Gaussians get their scales (:data:`tfhier.heads.SCALE_FNS`)."""
        return self._hparams["scale_fn"]

    def get_config(self):
        """Everything the constructor needs: ``input_dim``, ``noise_seed`` and every hyperparameter."""
        return {"input_dim": self.input_dim, "noise_seed": self.noise_seed, **self.hparams}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- what subclasses implement -------------------------------------------------
    @property
    def latent_layer_names(self) -> list:
        raise NotImplementedError

    @property
    def latent_dims(self) -> list:
        """Latent units per step of each layer (layer 1 first)."""
        return []

    @property
    def latent_factors(self) -> list:
        """Time factor of each latent layer: layer l has one step per ``latent_factors[l]`` data steps."""
        return [1] * len(self.latent_layer_names)

    @property
    def weight_decay_exempt(self) -> list:
        """Trainable variables that weight decay must leave alone because they are not weights (fast dropout's
        learned keep rates: the logit of a probability, which decay would pull towards 1/2)."""
        return []

    @property
    def has_cached_generator(self) -> bool:
        """Whether ``generate`` / ``continue_sequences`` cost O(1) per step (else: the quadratic naive sampler)."""
        return self.stepwise_generation or type(self).generate is not SequenceModel.generate

    def forward(self, x, mask, *, seed, latents="posterior", temperature=1.0, training=False,
                observed_lengths=None) -> ModelOutput:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------
    def build_for_data(self):
        """Creates all weights by one pass on a dummy batch."""
        x = tf.zeros([1, self.time_multiple, self.input_dim])
        self.forward(x, tf.ones([1, self.time_multiple]), seed=tf.constant([0, 0]))
        self.built = True
        return self

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (TF backend) builds a model under a strategy from a first batch reduced across the replicas,
        # which MultiWorkerMirroredStrategy cannot do eagerly on per-replica data. These models are built before
        # fit (build_for_data) and compiled without Keras metrics or losses: there is nothing to build, and
        # skipping it also saves a batch of every interval's pipeline.
        if self.built and (self.optimizer is None or self.optimizer.built) and \
                getattr(self, "_compile_metrics", None) is None and getattr(self, "_compile_loss", None) is None:
            return
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

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

    def draw_step(self, eta, seed, t, temperature=1.0):
        """Output step ``t`` of a generation call with ``seed``: :meth:`sample_step` with
        :func:`output_step_seed`, as its own XLA computation (:func:`generation_step`), for samplers whose step
        is not one (the naive reference, STORN's decode).  The seed is derived inside it too (fold-in is a
        random op, which XLA computes differently), so these are the random numbers of a cached step."""
        return generation_step(self, lambda eta, seed, t, temperature: self.sample_step(
            eta, output_step_seed(seed, t), temperature))(eta, seed, t, temperature)

    # -- generation ------------------------------------------------------------------
    # All four methods take tensors or Python values, trace inside tf.function / ExportArchive endpoints
    # (tf.while_loop, no autograph) and use stateless noise only (see the module doc). Called eagerly,
    # they run through a cached tf.function.

    def generate(self, num_samples, num_steps, seed, temperature=1.0):
        """Samples float32 ``[num_samples, num_steps, D]``: the cached step-wise loop for a model with the
        step-wise interface, else the naive method (unless a model overrides this)."""
        if self.stepwise_generation:
            return graph_call(self, "generate", lambda n, t, s, temp: self._stepwise_sample(
                None, None, t, s, temp, num_samples=n), num_samples, num_steps, seed, temperature)
        return self.generate_naive(num_samples, num_steps, seed, temperature)

    def continue_sequences(self, prefix, prefix_lengths, num_steps, seed, temperature=1.0):
        """The ``num_steps`` steps following each prefix, float32 ``[B, num_steps, D]``.

        ``prefix`` [B, T0, D] holds row b's observed steps in ``[:prefix_lengths[b]]``
        (1 <= length <= T0; the rest is padding and ignored).  Latent steps
        the prefix covers entirely come from the posterior (see
        :func:`tfhier.noise.primed_latent_mask`).  The cached step-wise loop or the naive
        method, as :meth:`generate`.
        """
        if self.stepwise_generation:
            return graph_call(self, "continue", self._stepwise_sample, prefix, prefix_lengths, num_steps, seed,
                              temperature)
        return self.continue_sequences_naive(prefix, prefix_lengths, num_steps, seed, temperature)

    # -- the step-wise generation interface (single-rate models) ------------------------
    def generation_state(self, batch):
        """The state before the first step: a nested structure of ``[B, ...]`` tensors."""
        raise NotImplementedError

    def generation_prepare(self, prefix, lengths) -> dict:
        """Per-sequence features of an observed prefix, ``{name: [B, T0, ...]}`` (its observed steps only), for
        ``generation_emit``'s ``prepared_t`` (a smoothing posterior's backward pass; default: none)."""
        return {}

    def generation_emit(self, state, eps, temperature, observed=None, prepared_t=None):
        """The output parameters of the next step: ``(eta [B, P], carry)``.

        ``eps``: this step's standard normal latent noise, one ``[B, Z_l]`` per
        latent layer (from the call's :func:`tfhier.noise.latent_noise`); latents are
        ``loc + temperature * scale * eps`` from the prior, or, where
        ``observed = (x_t [B, D], is_observed [B] bool)`` says the step is in
        the prefix, ``loc + scale * eps`` from the posterior (what ``forward``
        does with ``observed_lengths``).  ``carry`` is whatever
        :meth:`generation_observe` needs besides the step's value (e.g. z_t).
        """
        raise NotImplementedError

    def generation_observe(self, state, carry, y):
        """The state after the step took the value ``y`` [B, D] (sampled or observed)."""
        raise NotImplementedError

    def _stepwise_sample(self, prefix, prefix_lengths, num_steps, seed, temperature, num_samples=None):
        """The cached loop over the step-wise interface: O(1) per step, the noise contract of :mod:`tfhier.noise`.

        The prefix (if any) is fed through the same steps, teacher-forced, so
        the state after it is the one a forward pass over it would reach.
        With ``xla_generation`` each XLA computation runs ``steps_per_launch``
        consecutive steps (an inner loop); the steps of the last launch past
        the end are computed and dropped.
        """
        seed = tf.cast(seed, tf.int32)
        temperature = tf.cast(temperature, tf.float32)
        num_steps = tf.cast(num_steps, tf.int32)
        primed = prefix is not None
        if primed:
            prefix = tf.cast(prefix, tf.float32)
            lengths = tf.cast(prefix_lengths, tf.int32)
            b, t0 = tf.shape(prefix)[0], tf.shape(prefix)[1]
            prefix = masked_inputs(prefix, tf.sequence_mask(lengths, t0))
            stop = tf.reduce_max(lengths) + num_steps
            total = t0 + num_steps
        else:
            b = tf.cast(num_samples, tf.int32)
            lengths = tf.zeros([b], tf.int32)
            stop = total = num_steps
        calls = int(self.steps_per_launch) if self.xla_generation else 1
        n_launch = (stop + calls - 1) // calls
        n_alloc = (total + calls - 1) // calls * calls
        latent_seed = generation_latent_seed(seed)
        # time-major [n_alloc, B, Z]: drawing more steps does not change the earlier ones
        eps = [latent_noise(latent_seed, l, n_alloc, b, z) for l, z in enumerate(self.latent_dims)]
        prepared = {}
        if primed:
            prepared = self.generation_prepare(prefix, lengths)
            # padded to whole launches so that every launch's slice has a static length (steps past a row's
            # prefix are never read as observed: is_observed below)
            prefix = tf.pad(prefix, [[0, 0], [0, n_alloc - t0], [0, 0]])
            prepared = {n: tf.pad(v, [[0, 0], [0, n_alloc - tf.shape(v)[1]]] + [[0, 0]] * (v.shape.rank - 2))
                        for n, v in prepared.items()}

        def launch(i, state, eps_blk, seed, temperature, prefix_blk, lengths, prepared_blk):
            """Steps ``i * calls ... (i + 1) * calls - 1``: one XLA computation (:func:`generation_step`)."""

            def one(j, state, ys):
                t = i * calls + j
                with blocks.step_weights():
                    eps_t = [tf.gather(e, j) for e in eps_blk]
                    observed = None
                    prepared_t = {}
                    if primed:
                        observed = (tf.gather(prefix_blk, j, axis=1), t < lengths)
                        prepared_t = {n: tf.gather(v, j, axis=1) for n, v in prepared_blk.items()}
                    eta, carry = self.generation_emit(state, eps_t, temperature, observed, prepared_t)
                    y = self.sample_step(eta, output_step_seed(seed, t), temperature)
                    if primed:
                        y = tf.where(observed[1][:, None], observed[0], y)
                    return j + 1, self.generation_observe(state, carry, y), ys.write(j, y)

            ys = tf.TensorArray(tf.float32, size=calls, element_shape=tf.TensorShape([None, self.input_dim]))
            if calls == 1:
                _, state, ys = one(tf.constant(0), state, ys)
            else:
                _, state, ys = tf.while_loop(lambda j, *_: j < calls, one, (tf.constant(0), state, ys))
            return state, ys.stack()  # [calls, B, D]

        launch = generation_step(self, launch)

        def body(i, state, out):
            start = i * calls
            eps_blk = [e[start:start + calls] for e in eps]
            prefix_blk = prepared_blk = None
            if primed:
                prefix_blk = prefix[:, start:start + calls]
                prepared_blk = {n: v[:, start:start + calls] for n, v in prepared.items()}
            state, ys = launch(i, state, eps_blk, seed, temperature, prefix_blk, lengths, prepared_blk)
            return i + 1, state, out.write(i, ys)

        out = tf.TensorArray(tf.float32, size=n_launch,
                             element_shape=tf.TensorShape([calls, None, self.input_dim]))
        _, _, out = tf.while_loop(lambda i, *_: i < n_launch, body, (tf.constant(0), self.generation_state(b), out))
        steps = tf.transpose(out.concat()[:stop], [1, 0, 2])  # [B, stop, D]
        if primed:
            return gather_continuations(steps, lengths, num_steps)
        return steps

    def generate_naive(self, num_samples, num_steps, seed, temperature=1.0):
        """Reference sampler: re-runs ``forward`` over the whole buffer at every step.

        Latent noise is fixed for the whole call, so a latent step keeps its
        value however often it is recomputed; with a causal model its prior
        parameters do not change either, so this is an exact (if slow, cost
        quadratic in the length) sampler of the model.
        """
        return graph_call(self, "generate_naive", lambda n, t, s, temp: self._naive_sample(
            None, None, t, s, temp, num_samples=n), num_samples, num_steps, seed, temperature)

    def continue_sequences_naive(self, prefix, prefix_lengths, num_steps, seed, temperature=1.0):
        """Reference continuation (see :meth:`continue_sequences` and :meth:`generate_naive`)."""
        return graph_call(self, "continue_naive", self._naive_sample, prefix, prefix_lengths, num_steps, seed,
                          temperature)

    def _naive_sample(self, prefix, prefix_lengths, num_steps, seed, temperature, num_samples=None):
        seed = tf.cast(seed, tf.int32)
        temperature = tf.cast(temperature, tf.float32)
        num_steps = tf.cast(num_steps, tf.int32)
        primed = prefix is not None
        if primed:
            prefix = tf.cast(prefix, tf.float32)
            lengths = tf.cast(prefix_lengths, tf.int32)
            b, t0 = tf.shape(prefix)[0], tf.shape(prefix)[1]
            prefix = masked_inputs(prefix, tf.sequence_mask(lengths, t0))
        else:
            b, t0 = tf.cast(num_samples, tf.int32), 0
            lengths = tf.zeros([b], tf.int32)
            prefix = tf.zeros([b, 0, self.input_dim])
        m = self.time_multiple
        t_pad = (t0 + num_steps + m - 1) // m * m
        buffer = tf.pad(prefix, [[0, 0], [0, t_pad - t0], [0, 0]])
        ones = tf.ones([b, t_pad])
        latent_seed = generation_latent_seed(seed)
        positions = tf.range(t_pad)

        def body(t, buffer):
            out = self.forward(buffer, ones, seed=latent_seed, latents="prior", temperature=temperature,
                               observed_lengths=lengths if primed else None)
            y_t = self.draw_step(out.likelihood_params[:, t], seed, t, temperature)
            y_t = tf.where((t < lengths)[:, None], buffer[:, t], y_t)
            return t + 1, tf.where((positions == t)[None, :, None], y_t[:, None, :], buffer)

        stop = tf.reduce_max(lengths) + num_steps if primed else num_steps
        _, buffer = tf.while_loop(lambda t, _: t < stop, body, [tf.reduce_min(lengths), buffer])
        return gather_continuations(buffer, lengths, num_steps)

    # -- training ----------------------------------------------------------------------
    def compile(self, optimizer, objective: objectives.Objective, **kwargs):
        """``objective`` (:class:`tfhier.objectives.Objective`) gives the training loss and its metrics;
        validation always reports the ELBO and, for another objective, its bound as well."""
        objective.check(self)
        super().compile(optimizer=optimizer, **kwargs)
        self.objective = objective
        self._validation_elbo = objectives.ELBO("none", name="validation_elbo")
        self._train_names = objective.metric_names(self)
        self._valid_names = self._validation_elbo.metric_names(self)[1:]  # no 'loss'
        if objective.BOUND != "elbo":
            self._valid_names += [f"neg_{objective.BOUND}", f"neg_{objective.BOUND}_per_step"]
        names = list(dict.fromkeys(self._train_names + self._valid_names))
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self._trackers["grad_norm"] = keras.metrics.Mean(name="grad_norm")
        self._trackers["nonfinite_steps"] = keras.metrics.Sum(name="nonfinite_steps")

    @property
    def metrics(self):
        return list(getattr(self, "_trackers", {}).values())

    def _update_objective_metrics(self, result: objectives.ObjectiveOutput, names, weight):
        """Means over sequences; ``*_per_step`` names are sums over sequences / their steps (nats per step)."""
        steps = result.num_steps
        values = dict(result.values, loss=result.loss)
        for name in names:
            if name.endswith("_per_step"):
                total = values[name[: -len("_per_step")]]
                self._trackers[name].update_state(total / tf.maximum(steps, 1.0), sample_weight=steps * weight)
            else:
                self._trackers[name].update_state(values[name], sample_weight=weight)

    def _training_seed(self, step):
        # The same on every replica: each sequence's noise is keyed by its row of the global batch
        # (tfhier.noise.replica_rows), so N replicas draw what one device draws.
        return stateless_seed(tf.stack([self.noise_seed, tf.cast(step, tf.int32)]), 0)

    def train_step(self, data):
        x, mask = data
        step = self.optimizer.iterations
        self.objective.update(step)
        with tf.GradientTape() as tape:
            result = self.objective.compute(self, x, mask, self._training_seed(step), training=True)
            loss = tf.nn.compute_average_loss(result.loss)
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        grads, grad_norm = self._global_gradient(grads)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(grad_norm)
        # A non-finite step is skipped: weights and optimizer state stay as they were.
        apply_if_finite(self.optimizer, grads, variables, finite)
        weight = tf.cast(finite, tf.float32)
        safe = lambda v: tf.where(finite, v, tf.zeros_like(v))  # noqa: E731
        result = objectives.ObjectiveOutput(loss=safe(result.loss), num_steps=result.num_steps,
                                            values={k: safe(v) for k, v in result.values.items()})
        self._update_objective_metrics(result, self._train_names, weight)
        self._trackers["grad_norm"].update_state(safe(grad_norm), sample_weight=weight)
        self._trackers["nonfinite_steps"].update_state(1.0 - weight)
        return self._results(self._train_names + ["grad_norm", "nonfinite_steps"])

    def _results(self, names):
        """The metrics' values over the whole global batch so far. (Under N replicas a metric read in a step
        holds its own replica's share, and Keras averages the replicas' values, a mean of ratios: wrong when
        the replicas hold different weights, e.g. sequences of other lengths. Here totals and counts are
        summed over the replicas first.)"""
        n, _ = replica_position()
        if n == 1:
            return {name: self._trackers[name].result() for name in names}
        context = tf.distribute.get_replica_context()
        if multi_worker():
            # Keras averages a multi-worker step's outputs over their axis 0 (TF backend, reduce_per_replica):
            # one-element vectors, equal on every replica, come back as the scalars.
            return {k: tf.reshape(v, [1]) for k, v in self._reduced_results(names, context).items()}
        return self._reduced_results(names, context)

    def _reduced_results(self, names, context):
        out = {}
        for name in names:
            tracker = self._trackers[name]
            if hasattr(tracker, "count"):  # a Mean: total / count
                total, count = all_reduce_sum(context, [tracker.total, tracker.count])
                out[name] = tf.math.divide_no_nan(total, count)
            else:  # a Sum
                out[name] = all_reduce_sum(context, tracker.result())
        return out

    def _global_gradient(self, grads):
        """``(gradients to hand the optimizer, the global gradient's norm)``.

        One device: the gradients as they are (the optimizer clips them by
        ``global_clipnorm``). N replicas: Keras' optimizer clips each replica's
        share *before* summing them, so a threshold would mean another thing on
        N devices; here the replicas' gradients are summed first (the global
        batch's gradient, as one device computes it), clipped by its global
        norm, and divided by N, since the optimizer sums the replicas' gradients
        again (exact for N a power of 2; its own clipping is then a no-op).
        """
        n, _ = replica_position()
        if n == 1:
            return grads, tf.linalg.global_norm(grads)
        present = [i for i, g in enumerate(grads) if g is not None]
        summed = all_reduce_sum(tf.distribute.get_replica_context(), [grads[i] for i in present])
        norm = tf.linalg.global_norm(summed)
        clip = getattr(self.optimizer, "global_clipnorm", None)
        if clip:
            summed, _ = tf.clip_by_global_norm(summed, clip, use_norm=norm)
        out = list(grads)
        for i, g in zip(present, summed):
            out[i] = g / n
        return out, norm

    def test_step(self, data):
        x, mask = data
        seed = stateless_seed(tf.constant([self.noise_seed, -1]))
        elbo = self._validation_elbo.compute(self, x, mask, seed)
        # A sequence without steps is padding (a distributed validation batch filled up to split evenly over
        # the replicas, see tfhier.training): it counts in no mean.
        weight = tf.cast(elbo.num_steps > 0, tf.float32)
        self._update_objective_metrics(elbo, [n for n in self._valid_names if n in elbo.values or
                                              n[: -len("_per_step")] in elbo.values], weight)
        if self.objective.BOUND != "elbo":
            bound = self.objective.compute(self, x, mask, seed)
            self._update_objective_metrics(bound, [f"neg_{self.objective.BOUND}",
                                                   f"neg_{self.objective.BOUND}_per_step"], weight)
        return self._results(self._valid_names)
