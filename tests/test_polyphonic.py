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


def _srnn_npz(path, x_test, mask, **extra):
    rng = np.random.default_rng(0)
    arrays = {"x_train": (rng.random((3, 100, 88)) < 0.05).astype(np.float32),
              "x_valid": (rng.random((2, 100, 88)) < 0.05).astype(np.float32),
              "x_test": x_test, "mask_test": mask}
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def test_srnn_npz_layout(tmp_path):
    """The SRNN authors' layout: crops are sequences, test rows are cut at their masks, padding rows dropped."""
    from tfhier.data import load_dataset

    rng = np.random.default_rng(1)
    x_test = (rng.random((4, 7, 88)) < 0.1).astype(np.float32)
    mask = np.zeros((4, 7), np.float32)
    for row, n in enumerate((7, 3, 5, 0)):  # the last row pads the test set to a batch multiple
        mask[row, :n] = 1
    arrays = _srnn_npz(tmp_path / "jsb.npz", x_test, mask)
    data = load_dataset("polyphonic", data_dir=str(tmp_path / "jsb.npz"))
    assert [len(s) for s in data.test] == [7, 3, 5]
    for got, want in zip(data.test, x_test):
        np.testing.assert_array_equal(got, want[:len(got)])
    assert len(data.train) == 3 and len(data.valid) == 2 and data.feature_dim == 88
    np.testing.assert_array_equal(data.train[2], arrays["x_train"][2])
    assert data.info["format"] == "srnn_npz"


@pytest.mark.parametrize("change,pattern", [
    (dict(mask_test=np.array([[1, 0, 1, 0, 0, 0, 0]] * 2, np.float32)), "row 0 is not ones followed by zeros"),
    (dict(x_test=np.full((2, 7, 88), 2.0, np.float32)), "'x_test' holds values other than 0 and 1"),
    (dict(x_train=np.zeros((3, 100, 12), np.float32)), r"'x_train' has shape \(3, 100, 12\)"),
    (dict(mask_test=np.ones((2, 6), np.float32)), "'mask_test' has shape"),
    (dict(x_valid=np.array([[[{"a": 1}]]], dtype=object)), "not a readable .npz"),
])
def test_srnn_npz_bad_input(tmp_path, change, pattern):
    arrays = {"x_test": np.zeros((2, 7, 88), np.float32), "mask_test": np.ones((2, 7), np.float32)}
    arrays.update(change)
    _srnn_npz(tmp_path / "bad.npz", arrays.pop("x_test"), arrays.pop("mask_test"), **arrays)
    with pytest.raises(DataError, match=pattern) as e:
        load_polyphonic_or_npz(tmp_path / "bad.npz")
    assert "bad.npz" in str(e.value)


def test_srnn_npz_missing_array(tmp_path):
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((1, 100, 88), np.float32))
    with pytest.raises(DataError, match=r"lacks the array\(s\) \['x_valid', 'x_test', 'mask_test'\]"):
        load_polyphonic_or_npz(tmp_path / "bad.npz")


def load_polyphonic_or_npz(path):
    from tfhier.data import load_dataset

    return load_dataset("polyphonic", data_dir=str(path))


def test_piano_roll_compare_finds_a_doubled_sampling_rate(tmp_path):
    """A file holding the pickle's pieces with every step written twice is found as such; counts by hand."""
    from tfhier.tools.piano_roll_compare import main

    pieces = [[[60], [62], [64, 67]], [[40], [], [41], [42, 45, 49]]]  # no step repeats the previous one
    other = [[[30], [31]]]  # a piece the .npz does not hold at any rate
    pkl = _write(tmp_path, {"train": pieces, "valid": pieces, "test": pieces + other})
    rolls = [load_polyphonic(pkl).test[i] for i in range(2)]
    doubled = [np.repeat(r, 2, axis=0) for r in rolls]  # lengths 6 and 8
    x_test = np.zeros((3, 8, 88), np.float32)
    mask = np.zeros((3, 8), np.float32)
    for row, d in enumerate(doubled):
        x_test[row, :len(d)], mask[row, :len(d)] = d, 1
    _srnn_npz(tmp_path / "authors.npz", x_test, mask)
    out = tmp_path / "cmp.json"
    main([f"--pickle={pkl}", f"--npz={tmp_path / 'authors.npz'}", f"--out={out}"])
    import json

    (row,) = json.loads(out.read_text())
    assert row["pickle_pieces_at_even_steps_of_npz"] == 2  # the two doubled pieces, not the third
    assert row["pickle_test"] == {"pieces": 3, "steps": 9, "notes_per_step": pytest.approx(11 / 9), "repeat_share": 0.0}
    # doubled: lengths 6 and 8, so 3 of 5 and 4 of 7 steps repeat the previous one; notes 2 * 4 + 2 * 5 = 18
    assert row["npz_test"]["pieces"] == 2 and row["npz_test"]["steps"] == 14
    assert row["npz_test"]["notes_per_step"] == pytest.approx(18 / 14)
    assert row["npz_test"]["repeat_share"] == pytest.approx((3 / 5 + 4 / 7) / 2)


def test_piano_roll_compare_names_the_unpaired_files(tmp_path, capsys):
    from tfhier.tools.piano_roll_compare import main

    with pytest.raises(SystemExit, match="--pickle names 2 file"):
        main(["--pickle=a.pkl,b.pkl", "--npz=a.npz"])
    with pytest.raises(SystemExit, match="absent.npz: SRNN piano-roll .npz not found"):
        pkl = _write(tmp_path, {"train": [[[60]]], "valid": [[[60]]], "test": [[[60]]]})
        main([f"--pickle={pkl}", f"--npz={tmp_path / 'absent.npz'}"])
