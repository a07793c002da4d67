"""IAM On-Line Handwriting Database (IAM-OnDB) loader.

Reads the files as users download them: ``<data_dir>/lineStrokes/**/*.xml``
(any depth), one text line per file, e.g.
``lineStrokes/a01/a01-000/a01-000u-01.xml``.  The form id is the file stem
without its last ``-NN`` (``a01-000u``).  Transcriptions (``ascii/``) are not
needed by the unconditional models and are not read.

Each line becomes a float32 ``[N-1, 3]`` array of steps ``(dx, dy, pen)`` from
its N points (all strokes in order, y negated so that up is up): step t goes
from point t to point t+1 and ``pen = 1`` when point t+1 ends its stroke, the
convention of the MS-STCN authors' preprocessing.  Lines with fewer than two
points are skipped with a warning.  ``info['line_ids'][split]`` and
``info['start_points'][split]`` (``[n, 2]``, raw units, y negated) keep what is
needed to rebuild absolute coordinates: ``start + cumsum(steps[:, :2] * offset_scale)``.

Splits:

* With the official task files ``trainset.txt``, ``testset_v.txt``,
  ``testset_t.txt`` and ``testset_f.txt`` (form ids, one per line) in
  ``data_dir``: train = trainset, valid = testset_v + testset_t,
  test = testset_f.  Lines whose form is in no list are left out (logged).
* Otherwise a deterministic split by form, so that lines of one writer's form
  never straddle splits: form ids are sorted by ``md5(f"{seed}:{form_id}")``;
  the first ceil(5%) go to test, the next ceil(5%) to valid, the rest to
  train (at least one form each from 3 forms on).  Adding lines to known forms
  changes nothing; adding forms moves at most the forms next to the two cut
  points, because every other form keeps its place in the hash order.

Scaling: dx and dy of every split are divided by one scalar ``offset_scale``
(``info['offset_scale']``): by default the std of all training dx and dy values
pooled; ``offset_scale='chung2015'`` uses the MS-STCN authors' ``X_std``
(:func:`tfhier.data.strokes.offset_scale` says how the bounds then differ).

Augmentation (``train_augment``): the MS-STCN paper (§4) describes adding
measurement noise to the pen position; the authors' code adds it to the
offsets.  We add U(-0.5, 0.5) raw units to dx and dy (pen untouched), which
exactly dequantises the integer raw offsets.
"""

from __future__ import annotations

import hashlib
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from tfhier.data.base import SPLITS, DataError, SequenceData
from tfhier.data.sources import DataOption, DataSource
from tfhier.data.strokes import OFFSET_SCALES, apply_offset_scale, offset_scale, points_to_steps

TASK_FILES = {
    "train": ("trainset.txt",),
    "valid": ("testset_v.txt", "testset_t.txt"),
    "test": ("testset_f.txt",),
}
HASH_SPLIT_FRACTION = 0.05
#: the largest |x| or |y| accepted (real files stay below 1e5; float32 offsets stay exact far beyond)
MAX_COORDINATE = 10 ** 9


def load_iam_ondb(data_dir, *, seed: int = 0, offset_scale_convention: str = "std") -> SequenceData:
    """Loads IAM-OnDB line strokes from ``data_dir`` (see the module docstring).

    Args:
      data_dir: folder holding ``lineStrokes/`` and, optionally, the task files.
      seed: salts the form hash of the fallback split (ignored with task files).
      offset_scale_convention: ``'std'`` or ``'chung2015'`` (:func:`tfhier.data.strokes.offset_scale`).
    """
    if offset_scale_convention not in OFFSET_SCALES:
        raise DataError(f"--offset_scale must be one of {OFFSET_SCALES}, got {offset_scale_convention!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"IAM-OnDB data_dir {data_dir} does not exist or is not a folder; "
                        "expected a folder holding lineStrokes/**/*.xml")
    paths = sorted((data_dir / "lineStrokes").rglob("*.xml"))
    if not paths:
        hint = ""
        if data_dir.name == "lineStrokes" or next(data_dir.rglob("*.xml"), None) is not None:
            hint = f" (XML files are under {data_dir} itself: give its parent folder, --data_dir={data_dir.parent})"
        raise DataError(f"no lineStrokes/**/*.xml files under {data_dir}; expected the "
                        f"unpacked IAM-OnDB lineStrokes-all.tar.gz there{hint}")

    line_ids, raw_steps, starts = [], [], []
    for path in paths:
        points, stroke_end = _read_line_strokes(path)
        if len(points) < 2:
            logging.warning("IAM-OnDB: skipping %s: %d point(s), need at least 2", path, len(points))
            continue
        line_ids.append(path.stem)
        raw_steps.append(points_to_steps(points, stroke_end))
        starts.append(points[0])

    form_ids = sorted({_form_id(line_id) for line_id in line_ids})
    split_of_form = _task_file_split(data_dir)
    split_method = "task_files"
    if split_of_form is None:
        split_of_form = _hash_split(form_ids, seed)
        split_method = "md5"

    members = {split: [] for split in SPLITS}
    left_out = 0
    for i, line_id in enumerate(line_ids):
        split = split_of_form.get(_form_id(line_id))
        if split is None:
            left_out += 1
        else:
            members[split].append(i)
    if left_out:
        logging.info("IAM-OnDB: %d of %d lines belong to forms in no task file; left out",
                     left_out, len(line_ids))
    for split in SPLITS:
        if not members[split]:
            raise DataError(f"IAM-OnDB under {data_dir}: the {split} split is empty "
                            f"(split by {split_method}, {len(form_ids)} forms with usable lines); "
                            "expected at least one line in each of train/valid/test")

    try:
        scale = offset_scale([raw_steps[i] for i in members["train"]], offset_scale_convention)
    except DataError as e:
        raise DataError(f"--data_dir={data_dir}: {e} (its training lines' pen offsets are all equal)") from None
    data = SequenceData(
        name="iam_ondb",
        train=apply_offset_scale([raw_steps[i] for i in members["train"]], scale),
        valid=apply_offset_scale([raw_steps[i] for i in members["valid"]], scale),
        test=apply_offset_scale([raw_steps[i] for i in members["test"]], scale),
        feature_dim=3,
        kind="handwriting",
        info={
            "offset_scale": scale,
            "offset_scale_convention": offset_scale_convention,
            "line_ids": {s: [line_ids[i] for i in members[s]] for s in SPLITS},
            "start_points": {s: np.array([starts[i] for i in members[s]], dtype=np.float64).reshape(-1, 2)
                             for s in SPLITS},
        },
        train_augment=dequantisation_noise(scale),
    )
    logging.info("IAM-OnDB: %d/%d/%d train/valid/test lines (split by %s), offset_scale %.3f",
                 len(data.train), len(data.valid), len(data.test), split_method, scale)
    return data.check()


def dequantisation_noise(scale: float) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Returns ``(steps [T, 3], seed) -> steps``: adds U(-0.5, 0.5) raw units to dx, dy (stateless, from
    ``seed``, a seed pair: the same seed gives the same noise).

    Raw offsets are integers, so this spreads each over its quantisation cell;
    ``scale`` converts the half-width to the scaled units the steps are in.
    """
    half_width = 0.5 / scale

    def add_noise(steps: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        offsets = steps[:, :2]
        noise = tf.random.stateless_uniform(tf.shape(offsets), seed, -half_width, half_width, dtype=steps.dtype)
        return tf.concat([offsets + noise, steps[:, 2:]], axis=1)

    return add_noise


def _read_line_strokes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Returns a line's points ``[N, 2]`` (y negated) and ``[N]`` stroke-end flags."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected an IAM-OnDB line XML file")
    try:
        data = path.read_bytes()
    except OSError as err:  # a dangling symlink, a symlink loop, no permission
        raise DataError(f"{path}: cannot read it ({err.strerror or err}); expected an IAM-OnDB line XML "
                        "file") from None
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise DataError(f"{path}: malformed or truncated XML ({err}); expected an "
                        "IAM-OnDB <WhiteboardCaptureSession> file") from None
    stroke_set = root.find("StrokeSet")
    if stroke_set is None:
        raise DataError(f"{path}: no <StrokeSet> element; expected an IAM-OnDB "
                        "<WhiteboardCaptureSession> file")
    points, stroke_end = [], []
    for stroke in stroke_set.iter("Stroke"):
        stroke_points = stroke.findall("Point")
        for point in stroke_points:
            x, y = point.get("x"), point.get("y")
            try:
                px, py = int(x), int(y)
            except (TypeError, ValueError):
                raise DataError(f"{path}: <Point x={x!r} y={y!r}>; expected integer x and y "
                                "attributes") from None
            if abs(px) > MAX_COORDINATE or abs(py) > MAX_COORDINATE:
                shown = lambda v: v if len(v) <= 24 else v[:20] + f"... ({len(v)} digits)"  # noqa: E731
                raise DataError(f"{path}: <Point x={shown(x)!r} y={shown(y)!r}>; expected pen coordinates within "
                                f"+-{MAX_COORDINATE:.0e} (IAM-OnDB's whiteboard units are below 1e5)")
            points.append((px, -py))
            stroke_end.append(False)
        if stroke_points:
            stroke_end[-1] = True
    return np.array(points, dtype=np.float64).reshape(-1, 2), np.array(stroke_end, dtype=bool)


def _form_id(line_id: str) -> str:
    """``a01-000u-01`` -> ``a01-000u``: lines of one form share a writer."""
    return line_id.rsplit("-", 1)[0]


def _task_file_split(data_dir: Path) -> dict | None:
    """Maps form id -> split from the official task files, or None if there are none."""
    present = {name for names in TASK_FILES.values() for name in names if (data_dir / name).is_file()}
    if not present:
        return None
    missing = sorted(name for names in TASK_FILES.values() for name in names if name not in present)
    if missing:
        raise DataError(f"{data_dir}: has task file(s) {sorted(present)} but not {missing}; "
                        "expected all of trainset.txt, testset_v.txt, testset_t.txt, testset_f.txt or none")
    split_of_form = {}
    for split, names in TASK_FILES.items():
        for name in names:
            for form_id in (data_dir / name).read_text(encoding="latin-1").split():
                previous = split_of_form.setdefault(form_id, split)
                if previous != split:
                    raise DataError(f"{data_dir / name}: form {form_id} is also in the {previous} "
                                    "task file; expected each form in one split only")
    return split_of_form


def _hash_split(form_ids: list, seed: int) -> dict:
    """Maps form id -> split by md5 order (see the module docstring)."""
    ordered = sorted(form_ids, key=lambda f: hashlib.md5(f"{seed}:{f}".encode()).hexdigest())
    held_out = math.ceil(HASH_SPLIT_FRACTION * len(ordered))
    split_of_form = {f: "test" for f in ordered[:held_out]}
    split_of_form.update({f: "valid" for f in ordered[held_out:2 * held_out]})
    split_of_form.update({f: "train" for f in ordered[2 * held_out:]})
    return split_of_form


def _load(data_dir, seed, *, offset_scale):
    return load_iam_ondb(data_dir, seed=seed, offset_scale_convention=offset_scale)


SOURCE = DataSource(
    name="iam_ondb", description="IAM On-Line Handwriting Database lines (pen offsets and pen-up)",
    load=_load, shape=("handwriting", 3), data_dir="the IAM-OnDB folder (lineStrokes/ and its split lists)",
    options=(DataOption("offset_scale", "str", "std", "divide offsets by the pooled std of dx, dy (std) or by the "
                        "MS-STCN authors' X_std (chung2015, ~sqrt(2) x std: log-likelihood bounds per step "
                        "2 ln(ratio) ~ 0.69 nats higher for the same model).", choices=OFFSET_SCALES),))
