"""make_dataset: masks, padding, crops, bucketing, eval coverage."""

import numpy as np
import pytest
import tensorflow as tf

from tfhier.data.base import DataError
from tfhier.data.pipeline import make_dataset


def tagged_sequences(lengths):
    """Sequence i has rows (i, t, 1): every row says where it came from."""
    return [np.stack([np.full(n, i), np.arange(n), np.ones(n)], axis=1).astype(np.float32)
            for i, n in enumerate(lengths)]


def batches(ds, n=None):
    ds = ds if n is None else ds.take(n)
    return [(x.numpy(), m.numpy()) for x, m in ds]


def real_rows(x, mask):
    """Per sequence in a batch: its real rows, after checking mask shape and zero padding."""
    rows = []
    for xi, mi in zip(x, mask):
        n = int(mi.sum())
        np.testing.assert_array_equal(mi, np.r_[np.ones(n), np.zeros(len(mi) - n)])
        assert not xi[n:].any()
        rows.append(xi[:n])
    return rows


LENGTHS = [3, 17, 5, 40, 8, 1, 23, 12, 30, 9, 14]


def test_eval_yields_every_sequence_once_in_order_full_length():
    seqs = tagged_sequences(LENGTHS)
    out = batches(make_dataset(seqs, 4, training=False, pad_to_multiple=8))
    assert [len(x) for x, _ in out] == [4, 4, 3]
    got = []
    for x, mask in out:
        assert x.shape[1] % 8 == 0 and x.shape[1] - 8 < mask.sum(1).max() <= x.shape[1]
        got.extend(real_rows(x, mask))
    assert len(got) == len(seqs)
    for g, s in zip(got, seqs):
        np.testing.assert_array_equal(g, s)


def test_eval_ignores_augment_and_crop_args():
    seqs = tagged_sequences(LENGTHS)
    out = batches(make_dataset(seqs, 100, training=False, seq_len=4, augment=lambda x, seed: x + 1.0))
    for g, s in zip(real_rows(*out[0]), seqs):
        np.testing.assert_array_equal(g, s)


def test_training_crops_are_contiguous_windows_and_batches_are_full():
    seqs = tagged_sequences(LENGTHS)
    ds = make_dataset(seqs, 3, training=True, seq_len=10, pad_to_multiple=4, seed=1)
    assert ds.element_spec[0].shape.as_list() == [3, None, 3]
    starts = {}
    for x, mask in batches(ds, 40):
        assert x.shape[0] == 3 and x.shape[1] % 4 == 0
        for rows in real_rows(x, mask):
            i = int(rows[0, 0])
            assert len(rows) == min(LENGTHS[i], 10)
            start = int(rows[0, 1])
            np.testing.assert_array_equal(rows, seqs[i][start:start + len(rows)])
            starts.setdefault(i, set()).add(start)
    assert len(starts[3]) > 1, "the window of the 40-step sequence never moved"


def test_training_reshuffles_each_epoch_and_is_seeded():
    seqs = tagged_sequences(range(1, 21))
    ds = make_dataset(seqs, 1, training=True, bucket=False, seed=3)
    order = [int(x[0, 0, 0]) for x, _ in batches(ds, 40)]
    assert sorted(order[:20]) == sorted(order[20:]) == list(range(20))
    assert order[:20] != order[20:]
    again = [int(x[0, 0, 0]) for x, _ in batches(make_dataset(seqs, 1, training=True, bucket=False, seed=3), 40)]
    assert again == order


def test_augment_is_applied_after_cropping_in_training():
    seqs = tagged_sequences([30, 30, 30, 30])
    ds = make_dataset(seqs, 2, training=True, seq_len=6,
                      augment=lambda x, seed: tf.concat([x[:, :1], x[:, 1:2] - x[0, 1], x[:, 2:]], axis=1), seed=0)
    for x, mask in batches(ds, 6):
        for rows in real_rows(x, mask):
            np.testing.assert_array_equal(rows[:, 1], np.arange(6))


def test_augment_noise_is_the_seeds_and_fresh_for_every_element():
    seqs = tagged_sequences([12, 12, 12, 12])
    noisy = lambda x, seed: x + tf.random.stateless_uniform(tf.shape(x), seed)  # noqa: E731
    run = lambda s: [x for x, _ in batches(make_dataset(seqs, 2, training=True, seq_len=12, augment=noisy,  # noqa
                                                          seed=s, bucket=False), 8)]
    first, again, other = run(5), run(5), run(6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)  # the run's seed makes the augmentation reproducible
    assert not np.array_equal(first[0], other[0])
    # Every element and epoch gets noise of its own: the noise of the 16 elements (4 epochs) is all different.
    noise = [(row - seqs[int(np.floor(row[0, 0]))]).ravel() for x in first for row in x]
    assert len({tuple(np.round(n, 6)) for n in noise}) == 16


def test_bucketing_batches_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(10, 21, size=40)) + list(rng.integers(200, 211, size=40))
    ds = make_dataset(tagged_sequences(lengths), 4, training=True, seed=0)
    seen_short = False
    for x, mask in batches(ds, 60):
        n = mask.sum(1)
        assert n.max() - n.min() <= 10
        seen_short |= x.shape[1] <= 20
    assert seen_short


def test_static_shapes_use_few_lengths_and_keep_every_real_step():
    """For XLA: training batches pad to bucket edges, evaluation batches to multiples of the quantum."""
    from tfhier.data.pipeline import EVAL_LENGTH_QUANTUM, MAX_BUCKETS

    rng = np.random.default_rng(1)
    lengths = list(rng.integers(1, 300, size=200))
    seqs = tagged_sequences(lengths)
    ds = make_dataset(seqs, 4, training=True, seq_len=250, pad_to_multiple=8, seed=0, static_shapes=True)
    shapes = set()
    for x, mask in batches(ds, 150):
        shapes.add(x.shape[1])
        assert x.shape[1] % 8 == 0 and x.shape[1] <= 256
        for rows in real_rows(x, mask):  # a contiguous window of its own sequence, uncut
            i = int(rows[0, 0])
            assert len(rows) == min(lengths[i], 250)
            np.testing.assert_array_equal(np.diff(rows[:, 1]), 1)
    assert len(shapes) <= MAX_BUCKETS + 1

    ds = make_dataset(seqs, 16, training=False, pad_to_multiple=8, static_shapes=True)
    seen = []
    for x, mask in batches(ds):
        assert x.shape[1] % EVAL_LENGTH_QUANTUM == 0
        seen += real_rows(x, mask)
    assert [len(r) for r in seen] == lengths


def test_bad_arguments():
    with pytest.raises(DataError):
        make_dataset([], 2, training=False)
    with pytest.raises(DataError):
        make_dataset(tagged_sequences([3]), 0, training=True)
    with pytest.raises(DataError):
        make_dataset([np.zeros((3, 2), np.float32), np.zeros((3, 3), np.float32)], 2, training=False)


def test_pipelines_run_without_tf_data_autotuning():
    # With autotuning on, ending an iterator waits for the autotuning thread's next wake-up (up to 60 s):
    # the trainer ends one per validation interval (tfhier.data.pipeline.without_autotuning).
    seqs = tagged_sequences([5, 9, 12, 3])
    for ds in (make_dataset(seqs, 2, training=False),
               make_dataset(seqs, 2, training=True, seq_len=4, seed=1),
               make_dataset(seqs, 2, training=True, bucket=False, seed=1).map(lambda x, m: (x, m))):
        assert ds.options().autotune.enabled is False
    assert tf.data.Dataset.range(3).options().autotune.enabled is not False  # the default this test guards against
