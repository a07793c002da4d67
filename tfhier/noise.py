"""The noise and mask contract every model and every bound shares: the one place that says which random
numbers a computation draws and which steps it may see.

Everything random in tfhier is *stateless*: a computation gets a ``seed``
(int32 ``[2]``) and derives what it draws from it with
:func:`stateless_seed` (``tf.random.experimental.stateless_fold_in`` of
integer salts), so the same seed gives the same numbers whatever ran before,
in eager or graph mode, in or out of a SavedModel, on one device or N.

What a seed means:

* ``model.forward(x, mask, seed=s)``: latent layer l draws its standard normal
  noise ``eps`` with :func:`latent_noise` ``(s, l, T_l, B, Z_l)``, i.e. from
  ``stateless_seed(s, l)``; the only other random numbers of a forward pass
  are MS-STCN's training-time input dropout, from ``stateless_seed(s, 7)``
  (rows keyed as below).
* Training step n of a model with ``noise_seed`` k: ``stateless_seed([k, n], 0)``;
  validation: ``stateless_seed([k, -1])`` (every validation sees the same noise).
  Evaluation's passes key their seeds by the batch's index
  (:mod:`tfhier.evaluation`); FIVO draws step t's ancestors with
  ``stateless_seed(seed, 2, t)`` (:func:`tfhier.objectives.particle_filter`).
* Generation with ``seed`` g (what makes the cached and the naive samplers
  agree, and ``generate(N, 700)`` the first 700 steps of ``generate(N, 1400)``):
  the latent noise is ``forward``'s with :func:`generation_latent_seed`
  ``(g) = stateless_seed(g, 0)``; output step t (its absolute position,
  prefix included) is drawn by ``head.distribution(eta_t, temperature)
  .sample(seed=output_step_seed(g, t))``, ``stateless_seed(g, 1, t)``.  A
  latent step tau uses ``z = mu_p + temperature * sigma_p * eps[tau]`` from
  the prior or ``z = mu_q + sigma_q * eps[tau]`` from the posterior (primed
  steps, see :func:`primed_latent_mask`).

How rows are keyed, and why: noise is drawn *time-major* (``[T, B, Z]``), so
the value of (step tau, row b) does not depend on how many steps are drawn
(Philox is counter-based: element i of the flattened output is the same
whatever the total size); a generator that knows its final length draws once,
and a forward pass over any padded buffer sees the same values.  Under a
``tf.distribute`` strategy with N replicas in sync, a row's noise is keyed by
its sequence's place in the *global* batch, not by the replica
(:func:`replica_rows`): every replica draws the global batch's noise and keeps
its own rows, so N replicas train and validate on exactly the numbers one
device draws for the same global batch (the data pipeline gives replica r
rows ``[r * B/N, (r + 1) * B/N)``, see :func:`tfhier.training.distribution.distribute`).

Tiling for samples and particles: IWAE's K samples and FIVO's K particles are
extra batch rows, sample-major (row ``k * B + b`` is copy k of sequence b).
Code that tiles a batch so declares it with :func:`tiled_rows` while the graph
is traced, so that each row is keyed by its sequence's global position and its
copy; :func:`replica_categorical` draws per-row categorical samples (FIVO's
ancestors) under the same keying.

Masks: ``mask`` ``[B, T]`` is 1 on real steps and 0 on padding.  Inputs go
through :func:`masked_inputs` before a network sees them (a NaN in padding
would otherwise reach real steps and gradients); a latent step is used by the
bound only where its layer's mask says a real data step depends on it.  When a
prefix is observed (priming, continuation), :func:`primed_latent_mask` says
which latent steps come from the posterior.

XLA draws stateless random numbers with its own implementation (another,
equally valid stream), so where generation compiles its steps
(:func:`tfhier.models.base.generation_step`) the output steps are drawn inside
the compiled computation and the latent noise outside, by every sampler alike.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from tfhier.replicas import replica_position


# ---------------------------------------------------------------------------------------------- seeds

def stateless_seed(seed, *salts):
    """Derives an int32 [2] stateless seed from ``seed`` and integer salts."""
    seed = tf.cast(seed, tf.int32)
    for salt in salts:
        seed = tf.random.experimental.stateless_fold_in(seed, salt)
    return seed


def output_step_seed(seed, t):
    """Seed of the head's draw for output step ``t`` of a generation call with ``seed`` (see the module doc)."""
    return stateless_seed(seed, 1, t)


def generation_latent_seed(seed):
    """Seed ``forward`` gets for the latent noise of a generation call with ``seed``."""
    return stateless_seed(seed, 0)


# ----------------------------------------------------------------------------- rows of the global batch

_ROW_COPIES = [1]


@contextlib.contextmanager
def tiled_rows(copies):
    """Declares (while a graph is traced) that the batch rows are ``copies`` sample-major copies of the
    sequences (row ``k * B + b``: IWAE's samples, FIVO's particles), so :func:`replica_rows` keys each row by its
    sequence's position in the global batch and its copy."""
    _ROW_COPIES.append(int(copies))
    try:
        yield
    finally:
        _ROW_COPIES.pop()


def replica_rows(draw, batch, row_axis=0, copies=None):
    """``draw(rows)`` for this replica's ``batch`` rows as one device would draw them for the global batch.

    Under a ``tf.distribute`` strategy with N replicas in sync, each replica
    holds ``batch`` consecutive rows of the global batch (replica r: sequences
    ``[r * B, (r + 1) * B)``, B = batch / copies of :func:`tiled_rows`).  The
    noise of a sequence is keyed by that global position, not by the replica:
    every replica draws the global batch's noise (cheap beside the network) and
    keeps its own rows, so N replicas draw exactly what one device draws for
    the same global batch.  With one replica this is ``draw(batch)``.
    ``copies``: the rows' layout, when not the one :func:`tiled_rows` declares.
    """
    n, replica_id = replica_position()
    if n == 1:
        return draw(batch)
    copies = _ROW_COPIES[-1] if copies is None else int(copies)
    local = batch // copies
    full = draw(batch * n)  # rows k * (n * local) + global sequence index
    shape = tf.shape(full)
    lead, rest = shape[:row_axis], shape[row_axis + 1:]
    full = tf.reshape(full, tf.concat([lead, [copies, n * local], rest], 0))
    begin = replica_id * local
    mine = tf.gather(full, tf.range(begin, begin + local), axis=row_axis + 1)
    return tf.reshape(mine, tf.concat([lead, [batch], rest], 0))


def replica_categorical(logits, num_samples, seed):
    """``tf.random.stateless_categorical(logits [B, K], num_samples, seed)`` with each row drawn as one device
    draws it at that sequence's place in the global batch (see :func:`replica_rows`; a row's draw depends on
    its own logits and position only, so the other replicas' rows are filled with zeros)."""
    n, replica_id = replica_position()
    b = tf.shape(logits)[0]

    def draw(rows):
        padded = tf.pad(logits, [[replica_id * b, rows - (replica_id + 1) * b], [0, 0]])
        return tf.random.stateless_categorical(padded, num_samples, seed=seed, dtype=tf.int32)

    return replica_rows(draw, b, copies=1)


# ------------------------------------------------------------------------------------------- latent noise

def latent_noise(seed, layer, num_steps, batch, dim):
    """Standard normal noise of latent layer ``layer``, time-major ``[num_steps, batch, dim]``.

    TensorFlow's stateless normal (Philox, counter-based) gives element i of
    the flattened output the same value whatever the total size, so with time
    as the leading axis the noise of (step tau, sample b) is the same however
    many steps are drawn: a generator that knows its final length draws once,
    and a forward pass over any padded buffer sees the same values.  (XLA's
    implementation of the op draws another, equally valid, stream.)  Under a
    distribution strategy each row's noise is that of its place in the global
    batch (:func:`replica_rows`).
    """
    seed = stateless_seed(seed, layer)
    return replica_rows(lambda rows: tf.random.stateless_normal(tf.stack([num_steps, rows, dim]), seed=seed),
                        batch, row_axis=1)


# ------------------------------------------------------------------------------------------------ masks

def masked_inputs(x, mask):
    """``x`` [B, T, D] with every padded step (``mask`` 0) set to 0, NaN and Inf included (``x * mask`` would keep
    them), so padding can reach no real step and no gradient."""
    x = tf.convert_to_tensor(x, tf.float32)
    return tf.where(tf.cast(mask, tf.float32)[..., None] > 0, x, tf.zeros_like(x))


def primed_latent_mask(observed_lengths, factor, num_steps):
    """``[B, T_l]`` bool: latent step tau of a layer with total factor ``factor`` is drawn from the posterior.

    Priming rule: step tau serves fine steps ``[factor*tau, factor*(tau+1))``.
    When that whole span lies inside the observed prefix
    (``factor*(tau+1) <= observed_length``), z is drawn from the approximate
    posterior q(z | prefix), else from the prior.  The prior of step tau only
    sees data before ``factor*tau`` (the Delay of eq. 10): drawing the slow
    latents of a fully observed span from it would ignore what the prefix says
    about them (e.g. a handwriting line's style), so a continuation would not
    follow the prefix.  A partly observed span still uses the prior: q would
    need the unobserved rest of the span.
    """
    taus = tf.range(num_steps)
    lengths = tf.cast(observed_lengths, tf.int32)
    return factor * (taus[None, :] + 1) <= lengths[:, None]
