"""The synthetic switching-noise linear dynamics of VHRNN (Deng et al. 2020, §4).

Paper specification (§4, Eq. 6 and the list of test settings):

* ``x_t = W x_{t-1} + sigma_t eps_t`` with ``eps_t ~ N(0, I_2)`` and
  ``x_0 ~ U[-1, 1]^2``.
* For each sequence ``W`` is drawn with equal probability from 10 predefined
  random 2x2 matrices ``{W_i}``; the same matrices serve train, valid and
  test.
* ``sigma_t`` takes values in ``{0.25, 1, 4}`` and shifts exactly twice
  within a sequence (exactly two ``t`` with ``sigma_t != sigma_{t-1}``).
* 800 training, 100 validation and 100 test sequences.
* Test settings replacing the standard test split:

  - NOISELESS: the same recurrence and matrices with ``sigma_t = 0``.
  - SWITCH: three NOISELESS sequences concatenated into one.
  - RAND: ``W = I`` (random walks); sigma switches randomly *up to 3 times*
    within ``{0.25, 1, 4}``.
  - LONG: NOISELESS sequences with twice the number of steps.
  - ZERO-SHOT: NOISELESS sequences from a different set of matrices.
  - ADD: ``x_t = x_{t-1} + b`` with ``b`` and ``x_0`` uniform on ``[0, 1]^2``.

Choices made here, where the paper is silent:

* Sequence length ``seq_len = 100`` rows, row 0 being ``x_0``: a sequence is
  ``x_0 .. x_99`` (99 transitions).  LONG has 200 rows; SWITCH has 3 x 100
  rows; every test setting has 100 sequences.
* The matrices.  The paper says "random" and that NOISELESS/LONG data grow
  exponentially for some of them ("when the singular values ... are greater
  than 1"; LONG "can exceed well beyond the range of training data"), so they
  are not all contracting.  Each ``W_i = A_i * r_i / rho(A_i)`` with ``A_i``
  having iid N(0, 1) entries, ``rho`` the spectral radius and ``r_i ~
  U[0.9, 1.03]``: every matrix is within a few percent of the stability
  boundary, most decay (``r_i < 1``), the others grow at most ``1.03^t``
  (<= ~20x over 100 steps, <= ~400x over LONG's 200, before transient
  non-normal gain), so the data stay finite in float32 while LONG does show
  growth beyond the training range.  The 10 standard matrices come from the
  fixed seed :data:`MATRIX_SEED`, the ZERO-SHOT matrices from
  :data:`ZERO_SHOT_MATRIX_SEED` with the same recipe; neither depends on the
  data ``seed``.  See :func:`vhrnn_matrices`.
* Noise schedule: ``sigma_1`` uniform on the three levels; the two switch
  times ``t1 < t2`` (rows 2 .. T-1) are drawn uniformly among the pairs that
  leave every one of the three constant-sigma segments at least
  ``max(1, T // 10)`` steps long (10 for T = 100); at each switch the
  new level is uniform over the two other levels, so it really changes.
* RAND: the number of switches is uniform on ``{0, 1, 2, 3}`` ("up to 3"),
  with the same switch-time and level rules; length ``seq_len``.
* SWITCH: the three concatenated NOISELESS sequences each start from their
  own ``x_0 ~ U[-1, 1]^2``, and consecutive segments use different matrices.
* ADD has no noise.  NOISELESS/SWITCH/LONG/ZERO-SHOT/ADD have ``sigma = 0``.
* Randomness: ``numpy.random.default_rng([seed, k])`` with one stream ``k`` per
  split and per test setting, so train/valid do not depend on ``setting``.

``info`` (per split, lists aligned with the sequences):

* ``sigma[split][i]``: float array ``[T_i]``, ``sigma[t]`` is the noise std
  used to produce row ``t``; NaN on rows drawn from the initial distribution
  (row 0, and rows 100, 200 of a SWITCH sequence).
* ``switch_times[split][i]``: int array of the rows ``t`` where the noise
  level changes (``sigma_t != sigma_{t-1}``, both finite).
* ``matrix_index[split][i]``: int array, one index into the split's matrix
  set per regime (1 entry; 3 for SWITCH; empty for RAND and ADD, whose
  transition is ``I``).
* ``regime_starts[split][i]``: rows where a regime (fresh ``x_0``) starts.
* ``offset[split][i]``: ``b`` for ADD, else ``None``.
* ``matrices`` (the standard 10), ``zero_shot_matrices``,
  ``split_matrices[split]`` (the set ``matrix_index`` refers to),
  ``transition[split][i]``: ``'W'``, ``'I'`` (RAND) or ``'add'`` (ADD),
  plus ``setting``, ``seq_len``, ``noise_levels``, ``seed``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tfhier.data.base import DataError, SequenceData
from tfhier.data.sources import DataOption, DataSource

NOISE_LEVELS = (0.25, 1.0, 4.0)
NUM_MATRICES = 10
MATRIX_SEED = 20200426
ZERO_SHOT_MATRIX_SEED = 20200427
SPECTRAL_RADIUS_RANGE = (0.9, 1.03)

SETTINGS = ("standard", "noiseless", "switch", "rand", "long", "zero_shot", "add")
_ALIASES = {"train": "standard", "test": "standard", "standard": "standard",
            "noiseless": "noiseless", "switch": "switch", "rand": "rand", "long": "long",
            "zero_shot": "zero_shot", "zeroshot": "zero_shot", "zero-shot": "zero_shot",
            "add": "add"}
_STREAM = {"train": 0, "valid": 1, "standard": 2, "noiseless": 3, "switch": 4, "rand": 5,
           "long": 6, "zero_shot": 7, "add": 8}


def vhrnn_matrices(zero_shot: bool = False) -> np.ndarray:
    """The 10 fixed transition matrices, float64 ``[10, 2, 2]`` (independent of any data seed)."""
    rng = np.random.default_rng(ZERO_SHOT_MATRIX_SEED if zero_shot else MATRIX_SEED)
    a = rng.standard_normal((NUM_MATRICES, 2, 2))
    r = rng.uniform(*SPECTRAL_RADIUS_RANGE, size=NUM_MATRICES)
    rho = np.abs(np.linalg.eigvals(a)).max(axis=1)
    return a * (r / rho)[:, None, None]


def _switch_rows(rng: np.random.Generator, n_rows: int, n_switch: int) -> np.ndarray:
    """``n_switch`` sorted rows in 2..n_rows-1, every constant segment >= min_seg transitions."""
    if n_switch == 0:
        return np.zeros(0, np.int64)
    n_trans = n_rows - 1  # transitions are rows 1 .. n_rows-1
    min_seg = max(1, n_rows // 10)
    while True:
        t = np.sort(rng.choice(np.arange(2, n_rows), size=n_switch, replace=False))
        bounds = np.concatenate([[1], t, [n_rows]])
        if np.all(np.diff(bounds) >= min_seg):
            return t.astype(np.int64)


def _sigma_schedule(rng: np.random.Generator, n_rows: int, n_switch: int):
    """Per-row sigma (NaN at row 0) with exactly ``n_switch`` changes, and the switch rows."""
    times = _switch_rows(rng, n_rows, n_switch)
    sigma = np.empty(n_rows)
    sigma[0] = np.nan
    level = int(rng.integers(3))
    start = 1
    for t in list(times) + [n_rows]:
        sigma[start:t] = NOISE_LEVELS[level]
        if t < n_rows:
            level = (level + 1 + int(rng.integers(2))) % 3  # one of the two other levels
        start = t
    return sigma, times


def _simulate(rng, w: np.ndarray, sigma: np.ndarray, x0: np.ndarray) -> np.ndarray:
    n = sigma.shape[0]
    x = np.empty((n, 2))
    x[0] = x0
    eps = rng.standard_normal((n, 2))
    for t in range(1, n):
        x[t] = w @ x[t - 1] + sigma[t] * eps[t]
    return x


def _empty_meta():
    return {"sigma": [], "switch_times": [], "matrix_index": [], "regime_starts": [],
            "offset": [], "transition": []}


def _generate(kind: str, n: int, seq_len: int, rng: np.random.Generator, mats: np.ndarray):
    seqs, meta = [], _empty_meta()
    for _ in range(n):
        offset, starts, transition = None, np.zeros(1, np.int64), "W"
        if kind in ("standard", "noiseless", "long", "zero_shot"):
            rows = 2 * seq_len if kind == "long" else seq_len
            idx = np.array([rng.integers(NUM_MATRICES)])
            if kind == "standard":
                sigma, times = _sigma_schedule(rng, rows, 2)
            else:
                sigma, times = np.zeros(rows), np.zeros(0, np.int64)
                sigma[0] = np.nan
            x = _simulate(rng, mats[idx[0]], sigma, rng.uniform(-1, 1, 2))
        elif kind == "switch":
            first = int(rng.integers(NUM_MATRICES))
            idx = [first]
            for _ in range(2):  # consecutive regimes use different matrices
                idx.append((idx[-1] + 1 + int(rng.integers(NUM_MATRICES - 1))) % NUM_MATRICES)
            idx = np.array(idx)
            parts, sigmas = [], []
            for i in idx:
                s = np.zeros(seq_len)
                s[0] = np.nan
                parts.append(_simulate(rng, mats[i], s, rng.uniform(-1, 1, 2)))
                sigmas.append(s)
            x, sigma = np.concatenate(parts), np.concatenate(sigmas)
            times = np.zeros(0, np.int64)
            starts = np.arange(3, dtype=np.int64) * seq_len
        elif kind == "rand":
            idx, transition = np.zeros(0, np.int64), "I"
            sigma, times = _sigma_schedule(rng, seq_len, int(rng.integers(4)))
            x = _simulate(rng, np.eye(2), sigma, rng.uniform(-1, 1, 2))
        elif kind == "add":
            idx, transition = np.zeros(0, np.int64), "add"
            offset = rng.uniform(0, 1, 2)
            x0 = rng.uniform(0, 1, 2)
            x = x0 + np.arange(seq_len)[:, None] * offset
            sigma = np.zeros(seq_len)
            sigma[0] = np.nan
            times = np.zeros(0, np.int64)
        else:  # pragma: no cover
            raise AssertionError(kind)
        seqs.append(x.astype(np.float32))
        meta["sigma"].append(sigma)
        meta["switch_times"].append(times)
        meta["matrix_index"].append(np.asarray(idx, np.int64))
        meta["regime_starts"].append(starts)
        meta["offset"].append(offset)
        meta["transition"].append(transition)
    return seqs, meta


def make_vhrnn_synthetic(setting: str = "train", *, seed: int = 0, seq_len: int = 100,
                         num_train: int = 800, num_valid: int = 100, num_test: int = 100,
                         ) -> SequenceData:
    """Generates the VHRNN synthetic dataset (VHRNN §4).

    Args:
      setting: which test split to generate: ``'train'`` (or ``'standard'``,
        ``'test'``): the standard generator; or one of ``'noiseless'``,
        ``'switch'``, ``'rand'``, ``'long'``, ``'zero-shot'`` (also
        ``'zero_shot'``), ``'add'`` (case-insensitive).  Train and valid are
        always the standard generator and do not depend on ``setting``.
      seed: data seed (matrices do not depend on it).
      seq_len: rows per sequence including ``x_0`` (LONG: twice; SWITCH: thrice).
      num_train, num_valid, num_test: number of sequences (800/100/100).

    Returns:
      ``SequenceData(name='vhrnn_synthetic', kind='real', feature_dim=2)``
      with float32 ``[T, 2]`` sequences; ``info`` as in the module docstring.

    Raises:
      DataError: for an unknown ``setting`` or invalid sizes.
    """
    key = _ALIASES.get(str(setting).strip().lower().replace(" ", "_"))
    if key is None:
        raise DataError(
            f"vhrnn_synthetic: unknown setting {setting!r}; expected one of train/standard, "
            f"noiseless, switch, rand, long, zero-shot, add")
    for name, v, lo in (("seq_len", seq_len, 5), ("num_train", num_train, 1),
                        ("num_valid", num_valid, 1), ("num_test", num_test, 1)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise DataError(f"vhrnn_synthetic: {name} must be an integer >= {lo}, got {v!r}")
    mats = vhrnn_matrices()
    zs = vhrnn_matrices(zero_shot=True)

    def rng(stream: str) -> np.random.Generator:
        return np.random.default_rng([int(seed), _STREAM[stream]])

    train, m_train = _generate("standard", num_train, seq_len, rng("train"), mats)
    valid, m_valid = _generate("standard", num_valid, seq_len, rng("valid"), mats)
    test_mats = zs if key == "zero_shot" else mats
    test, m_test = _generate(key, num_test, seq_len, rng(key), test_mats)
    metas = {"train": m_train, "valid": m_valid, "test": m_test}
    info = {k: {s: metas[s][k] for s in metas} for k in _empty_meta()}
    info.update({
        "setting": key, "seq_len": int(seq_len), "noise_levels": NOISE_LEVELS, "seed": int(seed),
        "matrices": mats, "zero_shot_matrices": zs,
        "split_matrices": {"train": mats, "valid": mats, "test": test_mats},
    })
    return SequenceData(name="vhrnn_synthetic", train=train, valid=valid, test=test,
                        feature_dim=2, kind="real", info=info).check()


#: The settings whose generator has a density: the others are noiseless (sigma = 0), so every sequence has
#: infinite log-density under its own generator.
NOISY_SETTINGS = ("standard", "rand")


def generator_log_prob(x, setting: str = "standard", matrices: Optional[np.ndarray] = None) -> float:
    """The exact log-density of one sequence under the process that generated it (nats, whole sequence).

    The best any model can score on these data: a bound like FIVO is below it in expectation.  The
    unknowns of the generator are summed out exactly: the matrix (uniform over ``matrices``; RAND: ``W = I``),
    the first noise level (uniform), the switch times (uniform over the times :func:`_switch_rows` allows)
    and each new level (uniform over the two others); the number of switches is 2 (Test) or uniform on
    0..3 (RAND).  Row 0 has the density of ``U[-1, 1]^2``, 1/4.  A semi-Markov forward recursion over
    (switches so far, current level, row of the last switch) does the sum in ``O(T^2)`` per matrix.

    Args:
      x: ``[T, 2]`` sequence (rows ``x_0 .. x_{T-1}``) of ``setting``'s test split.
      setting: ``'standard'`` (also ``'train'``/``'test'``) or ``'rand'``; the noiseless settings have
        no density (sigma = 0) and raise.
      matrices: the ``[M, 2, 2]`` matrix set (default: :func:`vhrnn_matrices`); ignored for RAND.

    Raises:
      DataError: for a setting without a density or a sequence that is not ``[T, 2]`` with T >= 5.
    """
    key = _ALIASES.get(str(setting).strip().lower().replace(" ", "_"))
    if key not in NOISY_SETTINGS:
        raise DataError(f"vhrnn_synthetic: setting {setting!r} is noiseless and has no density; "
                        f"generator_log_prob takes {' or '.join(NOISY_SETTINGS)}")
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] < 5:
        raise DataError(f"vhrnn_synthetic: generator_log_prob expects a [T, 2] sequence with T >= 5, "
                        f"got shape {x.shape}")
    if key == "rand":
        mats, switch_counts = np.eye(2)[None], (0, 1, 2, 3)
    else:
        mats = vhrnn_matrices() if matrices is None else np.asarray(matrices, np.float64)
        switch_counts = (2,)
    n_rows = x.shape[0]
    min_seg = max(1, n_rows // 10)
    levels = np.asarray(NOISE_LEVELS)
    rows = np.arange(1, n_rows + 1)  # a segment runs from its first row a to the row b before the next one
    allowed = (rows[None, :] - rows[:, None]) >= min_seg  # [a, b]: segment a .. b-1 is long enough
    per_matrix = []
    for w in mats:
        sq = np.sum((x[1:] - x[:-1] @ w.T) ** 2, axis=1)  # transitions: rows 1 .. T-1
        log_n = -np.log(2 * np.pi) - 2 * np.log(levels)[:, None] - sq[None, :] / (2 * levels[:, None] ** 2)
        cum = np.concatenate([np.zeros((3, 1)), np.cumsum(log_n, axis=1)], axis=1)  # cum[l, k]: rows 1 .. k
        # seg[l, a-1, b-1]: log-density of rows a .. b-1 at level l, -inf where the segment is too short
        seg = np.where(allowed[None], cum[:, None, rows - 1] - cum[:, rows - 1, None], -np.inf)
        start = np.full((3, n_rows), -np.inf)  # start[l, a-1]: segments so far end at row a, level l next
        start[:, 0] = -np.log(3)
        terms = []
        for k in range(max(switch_counts) + 1):
            if k in switch_counts:
                # the last segment ends at row T (index n_rows - 1 in seg's second axis)
                total = _logsumexp(start + seg[:, :, n_rows - 1])
                count = _log_count(allowed, k, n_rows)
                terms.append(total - count - np.log(len(switch_counts)))
            ended = _logsumexp(start[:, :, None] + seg, axis=1)  # [l, b-1]: level l ran until row b
            other = np.array([_logsumexp(np.delete(ended, l, axis=0), axis=0) for l in range(3)])
            start = other - np.log(2)
        per_matrix.append(_logsumexp(np.array(terms)) - np.log(len(mats)))
    return float(_logsumexp(np.array(per_matrix)) + np.log(0.25))


def _log_count(allowed: np.ndarray, k: int, n_rows: int) -> float:
    """Log of the number of switch-time tuples with ``k`` switches that :func:`_switch_rows` allows."""
    ways = np.zeros(n_rows)
    ways[0] = 1.0
    for _ in range(k):
        ways = ways @ allowed
    return float(np.log(ways @ allowed[:, n_rows - 1]))


def _logsumexp(a, axis=None):
    from scipy.special import logsumexp

    return logsumexp(a, axis=axis)


def _load(data_dir, seed, *, synthetic_setting):
    return make_vhrnn_synthetic(synthetic_setting, seed=seed)


SOURCE = DataSource(
    name="vhrnn_synthetic", description="the VHRNN paper's synthetic switching sequences (generated: no download)",
    load=_load, shape=("real", 2),
    options=(DataOption("synthetic_setting", "str", "train", "which test setting forms the test split."),))
