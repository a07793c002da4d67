"""``tf.data`` pipelines from lists of variable-length sequences.

Every batch is ``(x, mask)``: ``x`` float32 ``[B, T, D]`` zero-padded and
``mask`` float32 ``[B, T]``, 1 on real steps and 0 on padding, so models can
sum losses over real steps only.  T is rounded up to a multiple of
``pad_to_multiple`` (a model that downsamples time by k needs T divisible by
k; it also bounds the number of distinct shapes a compiled step sees).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tfhier.data.base import DataError

MAX_BUCKETS = 8
#: with ``static_shapes``, evaluation batches pad T up to a multiple of (about) this many steps
EVAL_LENGTH_QUANTUM = 256
#: batches prepared ahead of the step
PREFETCH_BATCHES = 2


def without_autotuning(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` with tf.data's autotuning turned off.

    The autotuner is a thread per iterator that wakes after 10 ms, then after twice as long each time, up to
    60 s; destroying the iterator joins that thread, and it only sees the cancellation when it next wakes
    (TF 2.21: ``RootDataset::Iterator::~Iterator`` waits while ``Model::OptimizeLoop`` sleeps). An iterator
    destroyed t seconds after it was made blocks until its next wake-up: up to t more seconds, or up to 60 s.
    The trainer makes and ends a training iterator per validation interval and a validation iterator per
    validation, so short intervals lost up to half their time, and a benchmark's ``fit()`` returned only at
    10 * (2^k - 1) ms. Our pipelines are cheap next to the step, so a fixed setting loses nothing: parallel maps
    with ``tf.data.AUTOTUNE`` then run min(16, CPU cores) calls at once, and ``PREFETCH_BATCHES`` batches are
    prepared ahead.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def make_dataset(sequences: list, batch_size: int, *, training: bool,
                 seq_len: Optional[int] = None,
                 augment: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
                 pad_to_multiple: int = 1, seed: Optional[int] = None,
                 bucket: bool = True, static_shapes: bool = False) -> tf.data.Dataset:
    """Builds a dataset of padded ``(x, mask)`` batches.

    Training (``training=True``): repeats forever, in a fresh random order every epoch (a full permutation:
    epoch e's order is a function of ``(seed, e)`` alone, so every iterator of the dataset yields the same
    stream; Keras under a distribution strategy reads one batch of a first iterator before training);
    sequences longer than ``seq_len`` are cut to a random ``seq_len`` window
    drawn afresh each epoch, then ``augment`` is applied; sequences of similar
    length are batched together (``bucket``) to waste little compute on
    padding; incomplete batches are dropped so replicas get equal shares.
    ``seed`` makes the order, the crops and the augmentation reproducible
    (``augment`` gets each element's own stateless seed).

    Evaluation (``training=False``): every sequence exactly once, in order, full
    length, the last batch possibly smaller.

    Args:
      sequences: list of ``[T_i, D]`` arrays (cast to float32), T_i >= 1.
      batch_size: sequences per batch.
      training: selects the mode above.
      seq_len: training crop length; None keeps full sequences.
      augment: training-only ``(tf.Tensor[T, D], seed) -> tf.Tensor[T, D]``, ``seed`` a stateless
        seed pair (int64 ``[2]``) that is the element's own: draw with ``tf.random.stateless_*``.
      pad_to_multiple: padded T is a multiple of this.
      seed: seed for shuffling and cropping; None draws one.
      bucket: batch by length in training; False batches in shuffled order.
      static_shapes: keep the number of distinct batch shapes small, for an
        XLA-compiled step (which compiles once per shape): training batches
        pad to their bucket's upper edge (at most ``MAX_BUCKETS`` + 1 lengths)
        instead of their longest sequence, evaluation batches pad T up to a
        multiple of ~``EVAL_LENGTH_QUANTUM``.  Costs some compute on padding.
    """
    lengths = _check_sequences(sequences)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if pad_to_multiple < 1:
        raise DataError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
    if seq_len is not None and seq_len < 1:
        raise DataError(f"seq_len must be >= 1 or None, got {seq_len}")

    flat = np.concatenate([np.asarray(s, dtype=np.float32) for s in sequences])
    ragged = tf.RaggedTensor.from_row_lengths(flat, lengths)
    ds = tf.data.Dataset.from_tensor_slices(ragged)

    if not training:
        ds = ds.map(_with_mask)
        ds = ds.padded_batch(batch_size, drop_remainder=False)
    else:
        if seed is None:
            seed = int(np.random.default_rng().integers(2 ** 31))
        n, pair = len(sequences), tf.constant(int(seed), tf.int64)

        def epoch_order(epoch):
            keys = tf.random.stateless_uniform([n], seed=tf.stack([pair, epoch]))
            return tf.data.Dataset.from_tensor_slices(tf.argsort(keys))

        ds = (tf.data.Dataset.range(np.iinfo(np.int64).max).flat_map(epoch_order)
              .map(lambda i: ragged[i], num_parallel_calls=tf.data.AUTOTUNE))
        if seq_len is not None or augment is not None:
            # One stateless seed pair per element: reproducible for a given seed (so that N pipelines, one per
            # replica, hold the batches of one), yet a fresh window and fresh noise each epoch.
            element_seeds = tf.data.Dataset.random(seed=seed).batch(2)

            def crop_and_augment(x, s):
                if seq_len is not None:
                    x = _random_window(x, seq_len, s)
                if augment is not None:
                    x = augment(x, tf.random.experimental.stateless_fold_in(s, 1))
                return x

            ds = tf.data.Dataset.zip(ds, element_seeds).map(crop_and_augment, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(_with_mask, num_parallel_calls=tf.data.AUTOTUNE)
        if bucket:
            crop_lengths = lengths if seq_len is None else np.minimum(lengths, seq_len)
            boundaries = _bucket_boundaries(crop_lengths, pad_to_multiple)
            if static_shapes:
                # pad_to_bucket_boundary pads to (edge - 1), so every length needs an edge above it.
                top = int(np.ceil(crop_lengths.max() / pad_to_multiple)) * pad_to_multiple + 1
                boundaries = sorted(set(boundaries) | {top})
            ds = ds.bucket_by_sequence_length(
                lambda x, mask: tf.shape(x)[0], boundaries, [batch_size] * (len(boundaries) + 1),
                drop_remainder=True, pad_to_bucket_boundary=static_shapes)
        else:
            ds = ds.padded_batch(batch_size, drop_remainder=True)

    static_batch = batch_size if training else None
    multiple = pad_to_multiple
    if static_shapes and not training:
        multiple = -(-EVAL_LENGTH_QUANTUM // pad_to_multiple) * pad_to_multiple
    ds = ds.map(lambda x, mask: _finish_batch(x, mask, multiple, static_batch),
                num_parallel_calls=tf.data.AUTOTUNE)
    return without_autotuning(ds.prefetch(PREFETCH_BATCHES))


def _check_sequences(sequences: list) -> np.ndarray:
    """Returns the lengths; raises DataError unless all are non-empty ``[T, D]`` with one D."""
    if len(sequences) == 0:
        raise DataError("make_dataset: got no sequences; expected a non-empty list of [T, D] arrays")
    dims = set()
    for i, s in enumerate(sequences):
        shape = np.shape(s)
        if len(shape) != 2 or shape[0] < 1:
            raise DataError(f"make_dataset: sequence {i} has shape {shape}; expected [T>=1, D]")
        dims.add(shape[1])
    if len(dims) != 1:
        raise DataError(f"make_dataset: sequences have feature sizes {sorted(dims)}; expected one D")
    return np.array([np.shape(s)[0] for s in sequences], dtype=np.int64)


def _random_window(x: tf.Tensor, seq_len: int, seed: tf.Tensor) -> tf.Tensor:
    """A uniformly placed ``seq_len``-step slice of x (x itself when not longer)."""
    length = tf.shape(x)[0]
    start = tf.random.stateless_uniform([], seed=seed, minval=0,
                                        maxval=tf.maximum(length - seq_len, 0) + 1, dtype=tf.int32)
    return x[start:start + seq_len]


def _with_mask(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return x, tf.ones(tf.shape(x)[:1], dtype=tf.float32)


def _bucket_boundaries(lengths: np.ndarray, multiple: int) -> list:
    """Length-quantile bucket edges, on multiples of ``multiple``.

    Edges on multiples mean a bucket's batches pad to the same rounded T;
    quantiles give buckets of similar traffic so none starves for batches.
    """
    quantiles = np.quantile(lengths, np.linspace(0.0, 1.0, MAX_BUCKETS + 1)[1:-1])
    # bucket_by_sequence_length puts length L in the bucket whose upper edge is
    # > L, so edge = (rounded-up quantile) + 1 keeps that quantile inside.
    edges = np.ceil(quantiles / multiple).astype(np.int64) * multiple + 1
    return sorted({int(e) for e in edges if e <= lengths.max()})


def _finish_batch(x: tf.Tensor, mask: tf.Tensor, multiple: int,
                  batch_size: Optional[int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Zero-pads time up to a multiple of ``multiple``; states a fixed batch size.

    A static batch size (training, remainders dropped) lets compiled steps and
    replica splitting see one batch shape.
    """
    extra = (-tf.shape(x)[1]) % multiple
    x = tf.pad(x, [[0, 0], [0, extra], [0, 0]])
    mask = tf.pad(mask, [[0, 0], [0, extra]])
    return tf.ensure_shape(x, [batch_size, None, x.shape[-1]]), tf.ensure_shape(mask, [batch_size, None])
