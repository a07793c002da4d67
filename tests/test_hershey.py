"""Synthetic Hershey handwriting: determinism, format, scale."""

import numpy as np
import pytest

from tfhier.data.base import DataError
from tfhier.data.hershey import make_hershey_handwriting

SPLITS = ("train", "valid", "test")
SMALL = dict(num_train=60, num_valid=6, num_test=5)


@pytest.fixture(scope="module")
def data():
    return make_hershey_handwriting(**SMALL, seed=4)


def test_deterministic_per_seed(data):
    again = make_hershey_handwriting(**SMALL, seed=4)
    other = make_hershey_handwriting(**SMALL, seed=5)
    for split in SPLITS:
        for a, b in zip(data.split(split), again.split(split)):
            np.testing.assert_array_equal(a, b)
    assert data.info["offset_scale"] == again.info["offset_scale"]
    assert not all(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(data.train, other.train))


def test_held_out_splits_do_not_depend_on_num_train(data):
    more = make_hershey_handwriting(num_train=80, num_valid=6, num_test=5, seed=4)
    for split in ("valid", "test"):
        for a, b in zip(data.split(split), more.split(split)):
            np.testing.assert_allclose(a[:, :2] * data.info["offset_scale"],
                                       b[:, :2] * more.info["offset_scale"], rtol=1e-5, atol=1e-3)
            np.testing.assert_array_equal(a[:, 2], b[:, 2])


def test_format_and_info(data):
    assert (data.name, data.kind, data.feature_dim, data.train_augment) == ("hershey", "handwriting", 3, None)
    for split, count in zip(SPLITS, SMALL.values()):
        seqs = data.split(split)
        assert len(seqs) == count == len(data.info["line_ids"][split])
        assert data.info["start_points"][split].shape == (count, 2)
        for seq in seqs:
            assert seq.dtype == np.float32 and seq.ndim == 2 and seq.shape[1] == 3
            assert 50 <= len(seq) <= 3000


def test_pen_flags_mark_stroke_ends(data):
    for seq in data.train:
        pen = seq[:, 2]
        assert set(np.unique(pen)) == {0.0, 1.0}
        assert pen[-1] == 1.0                       # the last point ends the last stroke
        assert 2 <= pen.sum() < 0.3 * len(pen)      # several strokes, each many points long
        # Within a stroke the pen moves in small resampled steps; every large
        # jump (to a new stroke) follows a pen-up.
        step = np.hypot(*(seq[:, :2] * data.info["offset_scale"]).T)
        lifted = np.r_[True, pen[:-1] == 1.0]
        assert np.all(lifted[step > 60.0])


def test_offset_scale_is_pooled_std_and_iam_like(data):
    scale = data.info["offset_scale"]
    raw = np.concatenate([s[:, :2].astype(np.float64) * scale for s in data.train])
    assert raw.std() == pytest.approx(scale, rel=1e-5)
    step = np.hypot(*raw.T)
    assert 5.0 < np.median(step) < 40.0
    assert 10.0 < scale < 80.0


def test_default_sizes():
    full = make_hershey_handwriting()
    assert [len(full.split(s)) for s in SPLITS] == [2000, 100, 100]


def test_bad_arguments():
    with pytest.raises(DataError):
        make_hershey_handwriting(num_valid=0)
    with pytest.raises(DataError):
        make_hershey_handwriting(words_per_line=(3, 2))
