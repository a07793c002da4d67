"""Tests for tfhier.data.mnist (sequential binarized MNIST)."""

from pathlib import Path

import numpy as np
import pytest

from tfhier.data.base import DataError
from tfhier.data.mnist import load_binarized_mnist

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST = DATA / "mnist" / "binarized_mnist.npz"


@pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} not present")
def test_real_file_with_limit():
    data = load_binarized_mnist(MNIST, limit=20)
    assert data.name == "mnist" and data.kind == "binary" and data.feature_dim == 1
    assert (len(data.train), len(data.valid), len(data.test)) == (20, 20, 20)
    raw = np.load(MNIST)
    for split in ("train", "valid", "test"):
        for i in (0, 7, 19):
            s = data.split(split)[i]
            assert s.shape == (784, 1) and s.dtype == np.float32
            np.testing.assert_array_equal(s[:, 0], raw[split][i].astype(np.float32))
    # Row-major: step 28*r + c is pixel (r, c) of the image.
    img = raw["test"][7].reshape(28, 28)
    assert data.test[7][28 * 14 + 9, 0] == img[14, 9]
    assert set(np.unique(np.concatenate(data.train))) <= {0.0, 1.0}


@pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} not present")
def test_real_file_full_sizes():
    data = load_binarized_mnist(MNIST)
    assert (len(data.train), len(data.valid), len(data.test)) == (50000, 10000, 10000)


def _npz(tmp_path, **arrays):
    p = tmp_path / "m.npz"
    np.savez(p, **arrays)
    return p


def _good(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 784)) < 0.3).astype(np.uint8)


def test_synthetic_exact_and_limit(tmp_path):
    tr, va, te = _good(5, 1), _good(4, 2), _good(3, 3)
    data = load_binarized_mnist(_npz(tmp_path, train=tr, valid=va, test=te), limit=2)
    assert (len(data.train), len(data.valid), len(data.test)) == (2, 2, 2)
    np.testing.assert_array_equal(data.valid[1][:, 0], va[1])
    data = load_binarized_mnist(_npz(tmp_path, train=tr, valid=va, test=te))
    assert (len(data.train), len(data.valid), len(data.test)) == (5, 4, 3)


@pytest.mark.parametrize("arrays,pattern", [
    (dict(train=_good(), valid=_good()), "test"),
    (dict(train=_good(), valid=_good(), test=_good()[:, :700]), "shape"),
    (dict(train=_good(), valid=_good(), test=np.zeros((0, 784), np.uint8)), "shape"),
    (dict(train=_good() * 255, valid=_good(), test=_good()), "0 and 1"),
    (dict(train=_good(), valid=_good().astype(np.float32) * 0.5, test=_good()), "0 and 1"),
])
def test_bad_npz(tmp_path, arrays, pattern):
    p = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=pattern) as err:
        load_binarized_mnist(p)
    assert str(p) in str(err.value)


def test_not_npz_and_object_arrays(tmp_path):
    p = tmp_path / "text.npz"
    p.write_text("not a zip file")
    with pytest.raises(DataError) as err:
        load_binarized_mnist(p)
    assert str(p) in str(err.value)
    q = tmp_path / "obj.npz"
    np.savez(q, train=np.array([{"a": 1}], dtype=object), valid=_good(), test=_good())
    with pytest.raises(DataError) as err:
        load_binarized_mnist(q)
    assert str(q) in str(err.value)
    with pytest.raises(DataError, match="not found"):
        load_binarized_mnist(tmp_path / "absent.npz")
    with pytest.raises(DataError, match="limit"):
        load_binarized_mnist(q, limit=0)
