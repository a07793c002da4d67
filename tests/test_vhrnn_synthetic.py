"""Tests for tfhier.data.vhrnn_synthetic (VHRNN §4 synthetic benchmark)."""

import numpy as np
import pytest

from tfhier.data.base import DataError
from tfhier.data.vhrnn_synthetic import make_vhrnn_synthetic, vhrnn_matrices

LEVELS = {0.25, 1.0, 4.0}


@pytest.fixture(scope="module")
def standard():
    return make_vhrnn_synthetic("train", seed=0)


def _changes(sigma):
    """Rows t >= 2 with sigma_t != sigma_{t-1} (independent of the generator's switch_times)."""
    s = np.asarray(sigma)
    return [t for t in range(2, len(s)) if s[t] != s[t - 1]]


def test_sizes_and_kind(standard):
    d = standard
    assert (len(d.train), len(d.valid), len(d.test)) == (800, 100, 100)
    assert d.name == "vhrnn_synthetic" and d.kind == "real" and d.feature_dim == 2
    for s in d.train + d.valid + d.test:
        assert s.shape == (100, 2) and s.dtype == np.float32 and np.all(np.isfinite(s))
        assert np.all(np.abs(s[0]) <= 1)  # x_0 ~ U[-1, 1]^2


def test_noise_switches_exactly_twice(standard):
    for split in ("train", "valid", "test"):
        for sigma, times in zip(standard.info["sigma"][split], standard.info["switch_times"][split]):
            assert np.isnan(sigma[0])
            assert set(np.unique(sigma[1:]).tolist()) <= LEVELS
            ch = _changes(sigma)
            assert len(ch) == 2
            assert ch == list(times)
            # Documented: every constant segment is at least 10 steps long.
            assert min(ch[0] - 1, ch[1] - ch[0], 100 - ch[1]) >= 10
    firsts = np.array([s[1] for s in standard.info["sigma"]["train"]])
    for lv in LEVELS:  # the first level is uniform over the three
        assert 200 < np.sum(firsts == lv) < 340


def test_matrices_fixed_and_chosen_uniformly(standard):
    w = vhrnn_matrices()
    assert w.shape == (10, 2, 2)
    np.testing.assert_array_equal(w, standard.info["matrices"])
    np.testing.assert_array_equal(w, make_vhrnn_synthetic("train", seed=5, num_train=2, num_valid=1,
                                                          num_test=1).info["matrices"])
    rho = np.abs(np.linalg.eigvals(w)).max(axis=1)
    assert np.all((rho >= 0.9) & (rho <= 1.03))  # documented range
    assert np.any(rho > 1) and np.any(rho < 1)
    idx = np.array([m[0] for m in standard.info["matrix_index"]["train"]])
    counts = np.bincount(idx, minlength=10)
    assert counts.sum() == 800 and counts.min() > 45 and counts.max() < 120


def test_dynamics_equation_recovers_standard_normal_noise(standard):
    w = standard.info["matrices"]
    eps_by_level = {lv: [] for lv in LEVELS}
    lag = []
    for x, sigma, idx in zip(standard.train, standard.info["sigma"]["train"],
                             standard.info["matrix_index"]["train"]):
        x = x.astype(np.float64)
        pred = x[:-1] @ w[idx[0]].T  # W x_{t-1}
        eps = (x[1:] - pred) / sigma[1:, None]
        for lv in LEVELS:
            eps_by_level[lv].append(eps[sigma[1:] == lv])
        lag.append(np.sum(eps[1:] * eps[:-1], axis=0) / len(eps))
    allv = np.concatenate([np.concatenate(v) for v in eps_by_level.values()])
    assert abs(allv.mean()) < 0.02 and abs(allv.std() - 1) < 0.02
    for lv, v in eps_by_level.items():  # right sigma at every step
        v = np.concatenate(v)
        assert abs(v.std() - 1) < 0.03, lv
    assert np.all(np.abs(np.mean(lag, axis=0)) < 0.02)  # no leftover dynamics
    kurt = np.mean(allv ** 4) / np.mean(allv ** 2) ** 2
    assert abs(kurt - 3) < 0.1  # Gaussian, not uniform (1.8) or Laplace (6)


def test_determinism_and_seed():
    a = make_vhrnn_synthetic("rand", seed=3, num_train=20, num_valid=5, num_test=5)
    b = make_vhrnn_synthetic("rand", seed=3, num_train=20, num_valid=5, num_test=5)
    c = make_vhrnn_synthetic("rand", seed=4, num_train=20, num_valid=5, num_test=5)
    for split in ("train", "valid", "test"):
        for x, y in zip(a.split(split), b.split(split)):
            np.testing.assert_array_equal(x, y)
        for x, y in zip(a.info["sigma"][split], b.info["sigma"][split]):
            np.testing.assert_array_equal(x, y)
        assert not np.array_equal(a.split(split)[0], c.split(split)[0])
    # Train/valid do not depend on the test setting.
    d = make_vhrnn_synthetic("add", seed=3, num_train=20, num_valid=5, num_test=5)
    for x, y in zip(a.train + a.valid, d.train + d.valid):
        np.testing.assert_array_equal(x, y)


def _check_noiseless(x, w):
    x = x.astype(np.float64)
    np.testing.assert_allclose(x[1:], x[:-1] @ w.T, rtol=1e-5, atol=1e-6)


def test_noiseless():
    d = make_vhrnn_synthetic("noiseless", seed=1)
    assert len(d.test) == 100
    w = d.info["matrices"]
    for x, sigma, idx in zip(d.test, d.info["sigma"]["test"], d.info["matrix_index"]["test"]):
        assert x.shape == (100, 2)
        assert np.isnan(sigma[0]) and np.all(sigma[1:] == 0)
        _check_noiseless(x, w[idx[0]])
        assert np.all(np.abs(x[0]) <= 1)


def test_long_is_twice_as_long_and_noiseless():
    d = make_vhrnn_synthetic("long", seed=1)
    w = d.info["matrices"]
    assert len(d.test) == 100
    for x, idx in zip(d.test, d.info["matrix_index"]["test"]):
        assert x.shape == (200, 2)
        _check_noiseless(x, w[idx[0]])
    # Some matrices are unstable, so some LONG sequences grow beyond their start.
    growth = [np.abs(x[-1]).max() / max(np.abs(x[0]).max(), 1e-3) for x in d.test]
    assert max(growth) > 5


def test_switch_concatenates_three_noiseless_regimes():
    d = make_vhrnn_synthetic("switch", seed=2)
    w = d.info["matrices"]
    for x, idx, starts, sigma in zip(d.test, d.info["matrix_index"]["test"],
                                     d.info["regime_starts"]["test"], d.info["sigma"]["test"]):
        assert x.shape == (300, 2)
        assert list(starts) == [0, 100, 200] and len(idx) == 3
        assert idx[0] != idx[1] and idx[1] != idx[2]
        for k in range(3):
            seg = x[100 * k:100 * (k + 1)]
            assert np.all(np.abs(seg[0]) <= 1)
            _check_noiseless(seg, w[idx[k]])
            assert np.isnan(sigma[100 * k]) and np.all(sigma[100 * k + 1:100 * (k + 1)] == 0)


def test_rand_random_walk_with_up_to_three_switches():
    d = make_vhrnn_synthetic("rand", seed=0)
    n_switch = []
    z = []
    for x, sigma, times in zip(d.test, d.info["sigma"]["test"], d.info["switch_times"]["test"]):
        assert x.shape == (100, 2)
        ch = _changes(sigma)
        assert ch == list(times) and len(ch) <= 3
        n_switch.append(len(ch))
        inc = np.diff(x.astype(np.float64), axis=0)  # W = I: x_t - x_{t-1} = sigma_t eps_t
        z.append(inc / sigma[1:, None])
    assert set(n_switch) == {0, 1, 2, 3}
    z = np.concatenate(z)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


def test_zero_shot_uses_other_matrices():
    d = make_vhrnn_synthetic("ZERO-SHOT", seed=0)
    assert d.info["setting"] == "zero_shot"
    zs, std = d.info["zero_shot_matrices"], d.info["matrices"]
    np.testing.assert_array_equal(zs, vhrnn_matrices(zero_shot=True))
    # No zero-shot matrix equals a training matrix.
    dist = np.abs(zs[:, None] - std[None]).max(axis=(2, 3))
    assert dist.min() > 1e-2
    for x, idx in zip(d.test, d.info["matrix_index"]["test"]):
        _check_noiseless(x, zs[idx[0]])
    # Train is still generated with the standard matrices.
    x, idx, s = d.train[0].astype(np.float64), d.info["matrix_index"]["train"][0], d.info["sigma"]["train"][0]
    eps = (x[1:] - x[:-1] @ std[idx[0]].T) / s[1:, None]
    assert np.abs(eps).max() < 6


def test_add():
    d = make_vhrnn_synthetic("add", seed=0)
    for x, b in zip(d.test, d.info["offset"]["test"]):
        x = x.astype(np.float64)
        assert np.all((x[0] >= 0) & (x[0] <= 1))
        assert np.all((b >= 0) & (b <= 1))
        np.testing.assert_allclose(np.diff(x, axis=0), np.broadcast_to(b, (99, 2)), atol=1e-4)


def test_bad_arguments():
    with pytest.raises(DataError, match="setting"):
        make_vhrnn_synthetic("sideways")
    with pytest.raises(DataError, match="seq_len"):
        make_vhrnn_synthetic(seq_len=2)
    d = make_vhrnn_synthetic("switch", seq_len=20, num_train=3, num_valid=2, num_test=2)
    assert d.train[0].shape == (20, 2) and d.test[0].shape == (60, 2)


def _brute_force_log_prob(x, mats, switch_counts):
    """log p(x) by enumerating every matrix, switch-time tuple and level sequence (scipy densities)."""
    import itertools

    from scipy.special import logsumexp
    from scipy.stats import norm

    n_rows = len(x)
    min_seg = max(1, n_rows // 10)
    levels = (0.25, 1.0, 4.0)
    per_k = []
    for k in switch_counts:
        tuples = [t for t in itertools.combinations(range(2, n_rows), k)
                  if all(b - a >= min_seg for a, b in zip((1,) + t, t + (n_rows,)))]
        terms = []
        for w in mats:
            resid = x[1:] - x[:-1] @ np.asarray(w).T
            for times in tuples:
                for first in range(3):
                    for steps in itertools.product((1, 2), repeat=k):  # each switch moves to another level
                        lev = [first]
                        for s in steps:
                            lev.append((lev[-1] + s) % 3)
                        sigma = np.empty(n_rows - 1)
                        for level, a, b in zip(lev, (1,) + times, times + (n_rows,)):
                            sigma[a - 1:b - 1] = levels[level]
                        lp = norm.logpdf(resid, scale=sigma[:, None]).sum()
                        terms.append(lp - np.log(len(mats)) - np.log(len(tuples)) - np.log(3) - k * np.log(2))
        per_k.append(logsumexp(terms) - np.log(len(switch_counts)))
    return logsumexp(per_k) + np.log(0.25)


@pytest.mark.parametrize("setting,n_rows", [("standard", 8), ("standard", 23), ("rand", 9), ("rand", 20)])
def test_generator_log_prob_equals_enumeration(setting, n_rows):
    from tfhier.data.vhrnn_synthetic import generator_log_prob

    d = make_vhrnn_synthetic(setting, seed=3, seq_len=n_rows, num_train=1, num_valid=1, num_test=3)
    rand = setting == "rand"
    mats = np.eye(2)[None] if rand else vhrnn_matrices()[:3]  # three matrices keep the enumeration short
    for x in d.test:
        x = np.asarray(x, np.float64)
        got = generator_log_prob(x, setting, None if rand else mats)
        want = _brute_force_log_prob(x, mats, (0, 1, 2, 3) if rand else (2,))
        assert got == pytest.approx(want, abs=1e-9)


def test_generator_log_prob_is_the_noise_entropy_on_long_sequences(standard):
    """Per row, log p(x) of a 100-row sequence is close to -E[-log N(eps; 0, sigma^2 I_2)] = -(ln 2 pi + 1)
    (the mean of ln sigma over the three levels is 0): the regime is nearly known after a few rows."""
    from tfhier.data.vhrnn_synthetic import generator_log_prob

    per_row = np.mean([generator_log_prob(x, "test") / len(x) for x in standard.test[:30]])
    assert -(np.log(2 * np.pi) + 1) - 0.3 < per_row < -(np.log(2 * np.pi) + 1) + 0.1


def test_generator_log_prob_bad_input():
    from tfhier.data.vhrnn_synthetic import generator_log_prob

    with pytest.raises(DataError, match="noiseless"):
        generator_log_prob(np.zeros((10, 2)), "noiseless")
    with pytest.raises(DataError, match=r"\[T, 2\]"):
        generator_log_prob(np.zeros((10, 3)), "test")
