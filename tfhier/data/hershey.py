"""Synthetic handwriting rendered from the Hershey script fonts.

A default dataset that needs no download, so a fresh machine can train and
test end to end.  It has IAM-OnDB's format (``[dx, dy, pen]`` steps, y up, pen
1 on the last point of each stroke; see :mod:`tfhier.data.strokes`) and a
similar scale: lines of random common words in a random script font, slanted,
scaled, with a drifting baseline and small per-point jitter, resampled along
each stroke at a spacing like a pen digitiser's (raw offsets of roughly
10-25 units, a few hundred points per line).
"""

from __future__ import annotations

import functools

import numpy as np
from HersheyFonts import HersheyFonts

from tfhier.data.base import SPLITS, DataError, SequenceData
from tfhier.data.sources import DataOption, DataSource
from tfhier.data.strokes import apply_offset_scale, offset_scale, points_to_steps

# 'cursive' ships the same glyphs as 'scripts' in HersheyFonts 2.1, so it would
# only reweight the two distinct script fonts.
SCRIPT_FONTS = ("scripts", "scriptc")

WORDS = """
a about above across act add after again against age ago air all almost alone
along already also always am among an and animal another answer any appear are
area arm around art as ask at away back bad be bear beauty became because become
bed been before began begin behind being believe below best better between big
bird black blue boat body book both bottom box boy bring brought build built but
by call came can car care carry case cat cause center certain change child city
class clear close cold color come common complete could country course cover
cross cry cut dark day deep did different do does dog done door down draw dream
during each early earth easy eat end enough even evening ever every eye face
fact fall family far farm fast father feel feet few field find fine fire first
fish five floor fly follow food foot for force form found four free friend from
front full game garden gave get girl give glass go gold gone good got great green
ground group grow had half hand happen hard has have he head hear heard heart
help her here high him his hold home hope horse hot hour house how however
hundred idea if important in inside into is it its just keep kind king knew
know land language large last late laugh lay lead learn leave left less let
letter life light like line list listen little live long look love low made make
man many map mark may me mean measure men might mile mind minute miss money
month moon more morning most mother mountain move much music must my name near
need never new next night no north nothing notice now number of off often old on
once one only open or order other our out over own page paper part pass past
people perhaps person picture piece place plain plan plant play point poor
power press pull put question quick quiet rain ran reach read ready real red
remember rest right river road rock room round run said same sat saw say school
sea second see seem seen sentence set several shall she ship short should show
side simple since sing sit six size sleep slow small snow so some song soon
sound south space speak special spring stand star start stay step still stone
stop story street strong study such summer sun sure surface table take talk tell
ten than that the their them then there these they thing think this those though
thought three through time to today together told too took top toward town tree
true try turn two under until up upon us use very voice wait walk want war warm
was watch water way we week well went were what wheel when where which while
white who whole why wide wild will wind window winter with without woman wood
word work world would write year yes yet you young your
""".split()



def make_hershey_handwriting(*, num_train: int = 2000, num_valid: int = 100, num_test: int = 100,
                             words_per_line: tuple = (2, 4), seed: int = 0) -> SequenceData:
    """Renders random lines of script handwriting, deterministic for ``seed``.

    Each split draws from its own child generator of ``seed``, so changing
    ``num_train`` leaves valid and test unchanged.  dx, dy are divided by
    ``info['offset_scale']``, the pooled std of the training offsets, exactly as
    for IAM-OnDB; ``info['line_ids']`` and ``info['start_points']`` match too.

    Args:
      num_train, num_valid, num_test: lines per split, each >= 1.
      words_per_line: inclusive (min, max) number of words in a line.
      seed: seed of the numpy Generator.
    """
    counts = {"train": num_train, "valid": num_valid, "test": num_test}
    for split, count in counts.items():
        if count < 1:
            raise DataError(f"hershey: num_{split} must be >= 1, got {count}")
    min_words, max_words = words_per_line
    if not 1 <= min_words <= max_words:
        raise DataError(f"hershey: words_per_line must be (min, max) with 1 <= min <= max, got {words_per_line}")

    raw, starts = {}, {}
    for split, seed_seq in zip(SPLITS, np.random.SeedSequence(seed).spawn(len(SPLITS))):
        rng = np.random.default_rng(seed_seq)
        raw[split], starts[split] = [], []
        for _ in range(counts[split]):
            points, stroke_end = _render_line(rng, min_words, max_words)
            raw[split].append(points_to_steps(points, stroke_end))
            starts[split].append(points[0])

    scale = offset_scale(raw["train"])
    data = SequenceData(
        name="hershey",
        train=apply_offset_scale(raw["train"], scale),
        valid=apply_offset_scale(raw["valid"], scale),
        test=apply_offset_scale(raw["test"], scale),
        feature_dim=3,
        kind="handwriting",
        info={
            "offset_scale": scale,
            "line_ids": {s: [f"hershey-{s}-{i:05d}" for i in range(counts[s])] for s in SPLITS},
            "start_points": {s: np.array(starts[s], dtype=np.float64) for s in SPLITS},
        },
    )
    return data.check()


@functools.cache
def _font(name: str) -> HersheyFonts:
    font = HersheyFonts()
    font.load_default_font(name)
    return font


def _render_line(rng: np.random.Generator, min_words: int, max_words: int) -> tuple[np.ndarray, np.ndarray]:
    """One random line: points ``[N, 2]`` (raw units, y up) and ``[N]`` stroke-end flags."""
    words = list(rng.choice(WORDS, size=rng.integers(min_words, max_words + 1)))
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    font = _font(SCRIPT_FONTS[rng.integers(len(SCRIPT_FONTS))])
    xy, stroke_sizes = _join_strokes(font.strokes_for_text(" ".join(words)))

    size = rng.uniform(7.0, 11.0)             # font units -> raw units (IAM-like letter size)
    slant = rng.uniform(-0.1, 0.4)            # shear: x += slant * y
    tilt = rng.uniform(-0.03, 0.03)           # baseline slope
    wave_amp = rng.uniform(0.0, 30.0)         # slow baseline wobble, raw units
    wave_period = rng.uniform(1500.0, 4000.0)
    wave_phase = rng.uniform(0.0, 2 * np.pi)
    spacing = rng.uniform(12.0, 22.0)         # distance between pen samples, raw units
    jitter = rng.uniform(0.3, 1.2)            # per-point noise std, raw units

    xy[:, 1] *= -1.0                          # font y points down
    xy[:, 0] += slant * xy[:, 1]
    xy *= size
    xy[:, 1] += tilt * xy[:, 0] + wave_amp * np.sin(2 * np.pi * xy[:, 0] / wave_period + wave_phase)
    points, stroke_end = _resample(xy, stroke_sizes, spacing)
    points += rng.normal(0.0, jitter, size=points.shape)
    return points, stroke_end


def _join_strokes(font_strokes) -> tuple[np.ndarray, np.ndarray]:
    """All points ``[N, 2]`` and the point count of each stroke.

    The fonts store connected script letters as separate per-glyph strokes; a
    pen writes them in one go, so a stroke that starts where the previous one
    ended continues it.
    """
    points, sizes = [], []
    for stroke in font_strokes:
        if points and points[-1] == stroke[0]:
            points.extend(stroke[1:])
            sizes[-1] += len(stroke) - 1
        else:
            points.extend(stroke)
            sizes.append(len(stroke))
    return np.array(points, dtype=np.float64), np.array(sizes)


def _resample(xy: np.ndarray, stroke_sizes: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Resamples every stroke at even arc-length steps about ``spacing`` apart.

    Returns the new points and their stroke-end flags; each stroke keeps its
    two end points (a zero-length stroke, a dot, becomes one point).  All
    strokes are done in one ``np.interp`` on a line-wide arc coordinate in
    which the jump between strokes counts as one unit, so no sample lands on it.
    """
    first = np.cumsum(stroke_sizes) - stroke_sizes
    step = np.hypot(*np.diff(xy, axis=0).T)
    step[first[1:] - 1] = 1.0
    arc = np.concatenate([[0.0], np.cumsum(step)])
    stroke_len = arc[first + stroke_sizes - 1] - arc[first]
    counts = np.where(stroke_len > 0, np.maximum(2, np.rint(stroke_len / spacing).astype(np.int64) + 1), 1)
    stroke_of = np.repeat(np.arange(len(counts)), counts)
    index_in_stroke = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    fraction = index_in_stroke / np.maximum(counts - 1, 1)[stroke_of]
    at = arc[first][stroke_of] + fraction * stroke_len[stroke_of]
    points = np.stack([np.interp(at, arc, xy[:, 0]), np.interp(at, arc, xy[:, 1])], axis=1)
    return points, index_in_stroke == counts[stroke_of] - 1


def _load(data_dir, seed, *, num_lines):
    return make_hershey_handwriting(num_train=num_lines, seed=seed)


SOURCE = DataSource(
    name="hershey", description="script handwriting rendered from Hershey fonts (embedded: no download)",
    load=_load, shape=("handwriting", 3),
    options=(DataOption("num_lines", "int", 2000, "training lines to render."),))
