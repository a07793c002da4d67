"""Tests for tfhier.data.polyphonic (Boulanger-Lewandowski piano-roll pickles)."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tfhier.data.base import DataError
from tfhier.data.polyphonic import load_polyphonic

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
POLY = DATA / "polyphonic"

needs_data = pytest.mark.skipif(not POLY.is_dir(), reason=f"{POLY} not present")


def _raw(path):
    """Independent reading of the published files (trusted here: they are the shared samples)."""
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except UnicodeDecodeError:
            f.seek(0)
            return pickle.load(f, encoding="latin1")


@needs_data
@pytest.mark.parametrize("fname", ["JSB_Chorales.pkl", "jsb-chorales-quarter.pkl"])
def test_jsb_split_sizes_and_rolls(fname):
    data = load_polyphonic(POLY / fname)
    assert (len(data.train), len(data.valid), len(data.test)) == (229, 76, 77)
    assert data.name == "polyphonic" and data.kind == "binary" and data.feature_dim == 88
    raw = _raw(POLY / fname)
    for split in ("train", "valid", "test"):
        for i in (0, 5, len(raw[split]) - 1):
            seq = raw[split][i]
            roll = data.split(split)[i]
            assert roll.dtype == np.float32 and roll.shape == (len(seq), 88)
            for t, step in enumerate(seq):
                on = set(np.flatnonzero(roll[t]).tolist())
                assert on == {int(n) - 21 for n in step}, (split, i, t)
    # Every roll is 0/1.
    for s in data.train:
        assert set(np.unique(s)).issubset({0.0, 1.0})


@needs_data
def test_both_jsb_variants_agree():
    a = load_polyphonic(POLY / "JSB_Chorales.pkl")
    b = load_polyphonic(POLY / "jsb-chorales-quarter.pkl")
    for split in ("train", "valid", "test"):
        for x, y in zip(a.split(split), b.split(split)):
            np.testing.assert_array_equal(x, y)


@needs_data
@pytest.mark.parametrize("fname,sizes", [("Nottingham.pkl", (694, 173, 170)),
                                         ("Piano_midi.pkl", (87, 12, 25))])
def test_other_datasets_sizes(fname, sizes):
    data = load_polyphonic(POLY / fname)
    assert (len(data.train), len(data.valid), len(data.test)) == sizes
    raw = _raw(POLY / fname)
    seq = raw["test"][3]
    roll = data.test[3]
    expected = np.zeros((len(seq), 88), np.float32)
    for t, step in enumerate(seq):
        for n in step:
            expected[t, n - 21] = 1
    np.testing.assert_array_equal(roll, expected)
    # Total active notes equals the total number of (distinct) notes in the file.
    total = sum(len(set(step)) for s in raw["train"] for step in s)
    assert sum(float(r.sum()) for r in data.train) == total


def _write(tmp_path, obj, name="music.pkl", protocol=4):
    p = tmp_path / name
    with open(p, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return p


def test_small_synthetic_file_exact(tmp_path):
    obj = {"train": [[[21, 108], [], (60, 64, 67)]], "valid": [[[22]]],
           "test": [[[np.int64(40)], [41]]]}
    data = load_polyphonic(_write(tmp_path, obj))
    assert data.train[0].shape == (3, 88)
    assert data.train[0][0, 0] == 1 and data.train[0][0, 87] == 1 and data.train[0][0].sum() == 2
    assert data.train[0][1].sum() == 0
    assert np.flatnonzero(data.train[0][2]).tolist() == [39, 43, 46]
    assert np.flatnonzero(data.test[0][0]).tolist() == [19]


def test_python2_numpy_scalar_pickle(tmp_path):
    # Protocol 2 with numpy scalars, like the third-party JSB file.
    obj = {"train": [[(np.int64(60), np.int64(64))]], "valid": [[(np.int64(61),)]],
           "test": [[()]]}
    data = load_polyphonic(_write(tmp_path, obj, protocol=2))
    assert np.flatnonzero(data.train[0][0]).tolist() == [39, 43]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "MARKER"
    obj = {"train": [[[60]]], "valid": [[[60]]], "test": [[[60]]], "x": _Evil(marker)}
    p = _write(tmp_path, obj)
    with pytest.raises(DataError) as err:
        load_polyphonic(p)
    msg = str(err.value)
    assert str(p) in msg and "system" in msg
    assert not marker.exists()


def test_malicious_pickle_other_globals_refused(tmp_path):
    class Evil2:
        def __reduce__(self):
            return (eval, ("1+1",))
    p = _write(tmp_path, {"train": Evil2()})
    with pytest.raises(DataError, match="builtins.eval"):
        load_polyphonic(p)


@pytest.mark.parametrize("obj,pattern", [
    ([[[60]]], "expected a dict"),
    ({"train": [[[60]]], "valid": [[[60]]]}, "test"),
    ({"train": [[[60]]], "valid": [], "test": [[[60]]]}, "'valid' split is empty"),
    ({"train": [[[60]]], "valid": [[[60]]], "test": [[[60, 109]]]}, "109"),
    ({"train": [[[20]]], "valid": [[[60]]], "test": [[[60]]]}, "20"),
    ({"train": [[60]], "valid": [[[60]]], "test": [[[60]]]}, "step 0"),
    ({"train": [[[60.0]]], "valid": [[[60]]], "test": [[[60]]]}, "integer"),
    ({"train": [[]], "valid": [[[60]]], "test": [[[60]]]}, "no time steps"),
])
def test_bad_layout(tmp_path, obj, pattern):
    p = _write(tmp_path, obj)
    with pytest.raises(DataError, match=pattern) as err:
        load_polyphonic(p)
    assert str(p) in str(err.value)


def test_truncated_and_garbage(tmp_path):
    p = _write(tmp_path, {"train": [[[60]] * 50], "valid": [[[60]]], "test": [[[60]]]})
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as err:
        load_polyphonic(p)
    assert str(p) in str(err.value)
    g = tmp_path / "garbage.pkl"
    g.write_text("this is not a pickle\n")
    with pytest.raises(DataError) as err:
        load_polyphonic(g)
    assert str(g) in str(err.value)
    with pytest.raises(DataError, match="not found"):
        load_polyphonic(tmp_path / "absent.pkl")
