"""Pen trajectories to ``[dx, dy, pen]`` steps, shared by every handwriting source.

IAM-OnDB (:mod:`tfhier.data.iam_ondb`) and the synthetic Hershey handwriting
(:mod:`tfhier.data.hershey`) must produce identical formats and scaling, or a
model trained on one would read the other wrongly, so both call these functions.
"""

from __future__ import annotations

import numpy as np

from tfhier.data.base import DataError


def points_to_steps(points: np.ndarray, stroke_end: np.ndarray) -> np.ndarray:
    """Turns N absolute points into N-1 steps ``(dx, dy, pen)``, float32 ``[N-1, 3]``.

    Step t moves from point t to point t+1; its pen flag is 1.0 when point t+1 is
    the last point of its stroke (the MS-STCN authors' convention), so the pen
    lifts after the step is drawn.

    Args:
      points: ``[N, 2]`` absolute (x, y), y pointing up, N >= 2.
      stroke_end: ``[N]`` bool, True on the last point of each stroke.
    """
    points = np.asarray(points, dtype=np.float64)
    stroke_end = np.asarray(stroke_end, dtype=bool)
    steps = np.empty((len(points) - 1, 3), dtype=np.float32)
    steps[:, :2] = np.diff(points, axis=0)
    steps[:, 2] = stroke_end[1:]
    return steps


OFFSET_SCALES = ("std", "chung2015")


def offset_scale(train_steps: list, convention: str = "std") -> float:
    """The scalar that divides dx and dy, from the training steps, in raw units.

    One scalar for both axes keeps the pen's geometry (angles, aspect) intact
    when offsets are scaled.

    * ``'std'``: the standard deviation of all training dx and dy values
      pooled together (one value per coordinate).
    * ``'chung2015'``: the MS-STCN authors' ``X_std`` ("for comparable ll
      calculations" with Chung et al. 2015, ``data/iamondb.py``): sums over
      both coordinates divided by the number of *steps*,
      ``sqrt(E_t[dx^2 + dy^2] - E_t[dx + dy]^2)``, about sqrt(2) times ``'std'``
      for offsets of mean ~0.  Log densities of scaled offsets are then
      ``2 * ln(chung2015 / std)`` nats per step higher for the same model (one
      ``ln`` of the ratio per offset dimension; ~ln 2 = 0.69 nats).
    """
    if convention not in OFFSET_SCALES:
        raise DataError(f"--offset_scale must be one of {OFFSET_SCALES}, got {convention!r}")
    if convention == "chung2015":
        rows = np.concatenate([np.asarray(s, dtype=np.float64)[:, :2] for s in train_steps])
        mean = rows.sum() / len(rows)
        scale = float(np.sqrt(max((rows ** 2).sum() / len(rows) - mean * mean, 0.0)))
        if not scale > 0.0:
            raise DataError(f"the training offsets have zero spread (X_std {scale}); cannot scale them")
        return scale
    offsets = np.concatenate([np.asarray(s, dtype=np.float64)[:, :2].ravel() for s in train_steps])
    mean = offsets.mean()
    scale = float(np.sqrt(max(np.mean(offsets * offsets) - mean * mean, 0.0)))
    if not scale > 0.0:
        raise DataError(f"the training offsets have zero spread (std {scale}); cannot scale them")
    return scale


def apply_offset_scale(steps: list, scale: float) -> list:
    """Returns new float32 arrays with dx and dy divided by ``scale``; pen unchanged."""
    scaled = []
    for s in steps:
        out = np.array(s, dtype=np.float32)
        out[:, :2] = (np.asarray(s, dtype=np.float64)[:, :2] / scale).astype(np.float32)
        scaled.append(out)
    return scaled
