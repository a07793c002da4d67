"""A folder of MIDI files (``--dataset=midi``) as 88-key piano rolls, read with ``pretty_midi``.

Each ``.mid`` / ``.midi`` file is one sequence: a binary ``[T, 88]`` piano roll, column ``k`` = MIDI note
``21 + k`` (A0 .. C8), the layout of :mod:`tfhier.data.polyphonic`, so the same models and the Bernoulli head
apply.  Splits as for :mod:`tfhier.data.own` (``train/ valid/ test/`` subfolders, else a stable hash of the
file name with ``--valid_fraction`` / ``--test_fraction``).

Time step (chosen by flags):

* ``--steps_per_beat=N`` (default 4: sixteenth notes in 4/4): each beat, as the file's tempo map places
  the beats (``PrettyMIDI.get_beats``, so tempo changes are followed), is divided into N equal steps;
* ``--frame_rate=R`` > 0 instead: a fixed grid of R steps per second (tempo ignored).

A note sounds from the grid step nearest its onset up to (not including) the step nearest its end, and at
least one step.  Choices made here:

* drum tracks (``is_drum``: MIDI channel 10) are left out: their note numbers name percussion instruments,
  not pitches;
* notes outside the piano's range (below 21 or above 108) are left out; how many is logged and stored in
  the data facts (``notes_out_of_range``);
* every other instrument is merged into the one roll (a piano reduction); velocities are dropped;
* a file with no pitched note in range is refused, as is a file ``pretty_midi`` cannot parse (one
  :class:`DataError` naming the file).

Samples are written back as MIDI files (:func:`roll_to_midi`): a piano (program 0) at velocity 80, one
note per run of consecutive active steps, at 120 beats per minute with ``--steps_per_beat`` steps per beat
(or at ``--frame_rate``), so ``roll -> MIDI -> roll`` gives back the same roll.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from tfhier.data.base import DataError
from tfhier.data.own import SPLITS, from_splits, split_files
from tfhier.data.sources import DataOption, DataSource

LOWEST_NOTE = 21
HIGHEST_NOTE = 108
NUM_KEYS = HIGHEST_NOTE - LOWEST_NOTE + 1
SUFFIXES = (".mid", ".midi")
#: tempo of written samples on a beat grid
WRITE_BPM = 120.0
#: ticks per beat of written files (divisible by 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)
WRITE_RESOLUTION = 960
MAX_STEPS = 1_000_000


def _grid(pm, steps_per_beat: int, frame_rate: float, end: float) -> np.ndarray:
    """Step start times (seconds) covering ``[0, end]`` and one step beyond."""
    if frame_rate > 0:
        n = int(np.ceil(end * frame_rate)) + 2
        if n > MAX_STEPS:
            raise DataError(f"{n} steps at --frame_rate={frame_rate}: more than {MAX_STEPS}")
        return np.arange(n) / frame_rate
    beats = np.asarray(pm.get_beats(), np.float64)
    if len(beats) < 2:
        beats = np.array([0.0, 60.0 / WRITE_BPM])
    last = beats[-1] - beats[-2]
    extra = int(np.ceil(max(0.0, end - beats[-1]) / last)) + 2
    beats = np.concatenate([beats, beats[-1] + last * np.arange(1, extra + 1)])
    if len(beats) * steps_per_beat > MAX_STEPS:
        raise DataError(f"{len(beats) * steps_per_beat} steps at --steps_per_beat={steps_per_beat}: more than "
                        f"{MAX_STEPS}")
    frac = np.arange(steps_per_beat) / steps_per_beat
    return (beats[:-1, None] + np.diff(beats)[:, None] * frac[None, :]).reshape(-1)


def midi_to_roll(path, steps_per_beat: int = 4, frame_rate: float = 0.0):
    """``(roll float32 [T, 88], notes out of range)`` of one MIDI file (see the module docstring)."""
    import pretty_midi

    try:
        pm = pretty_midi.PrettyMIDI(str(path))
    except Exception as e:  # mido / pretty_midi raise many types for a bad file
        raise DataError(f"{path}: not a readable MIDI file ({type(e).__name__}: {str(e)[:200]})") from None
    notes = [n for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    in_range = [n for n in notes if LOWEST_NOTE <= n.pitch <= HIGHEST_NOTE]
    dropped = len(notes) - len(in_range)
    if not in_range:
        raise DataError(f"{path}: no pitched note in the piano range {LOWEST_NOTE}..{HIGHEST_NOTE} (drum tracks "
                        f"are left out); nothing to learn from")
    end = max(n.end for n in in_range)
    grid = _grid(pm, steps_per_beat, frame_rate, end)

    def nearest(t):
        i = int(np.searchsorted(grid, t))
        if i > 0 and (i == len(grid) or t - grid[i - 1] <= grid[i] - t):
            return i - 1
        return i

    spans = [(nearest(n.start), nearest(n.end), n.pitch) for n in in_range]
    length = max(max(s + 1, e) for s, e, _ in spans)
    roll = np.zeros([length, NUM_KEYS], np.float32)
    for s, e, pitch in spans:
        roll[s:max(e, s + 1), pitch - LOWEST_NOTE] = 1.0
    return roll, dropped


def roll_to_midi(roll, path=None, steps_per_beat: int = 4, frame_rate: float = 0.0):
    """A ``pretty_midi.PrettyMIDI`` of a ``[T, 88]`` roll (values > 0.5 sound); written to ``path`` if given."""
    import pretty_midi

    roll = np.asarray(roll) > 0.5
    step = 1.0 / frame_rate if frame_rate > 0 else 60.0 / WRITE_BPM / steps_per_beat
    pm = pretty_midi.PrettyMIDI(resolution=WRITE_RESOLUTION, initial_tempo=WRITE_BPM)
    piano = pretty_midi.Instrument(program=0, name="tfhier")
    padded = np.concatenate([np.zeros([1, roll.shape[1]], bool), roll, np.zeros([1, roll.shape[1]], bool)])
    for k in range(roll.shape[1]):
        changes = np.flatnonzero(np.diff(padded[:, k].astype(np.int8)))
        for start, stop in zip(changes[::2], changes[1::2]):
            piano.notes.append(pretty_midi.Note(velocity=80, pitch=LOWEST_NOTE + k, start=start * step,
                                                end=stop * step))
    pm.instruments.append(piano)
    if path is not None:
        from tfhier.fileio import atomic_write

        atomic_write(str(path), lambda p: pm.write(p))
    return pm


def load_midi(data_dir, *, steps_per_beat: int = 4, frame_rate: float = 0.0, valid_fraction: float = 0.1,
              test_fraction: float = 0.1):
    """Loads a folder of MIDI files as piano rolls (see the module docstring)."""
    if steps_per_beat < 1:
        raise DataError(f"--steps_per_beat must be >= 1, got {steps_per_beat}")
    if not frame_rate >= 0 or not np.isfinite(frame_rate):
        raise DataError(f"--frame_rate must be >= 0 (0: a beat grid of --steps_per_beat), got {frame_rate}")
    if not os.path.isdir(str(data_dir)):
        raise DataError(f"--data_dir={data_dir} is not a folder; --dataset=midi reads a folder of .mid files")
    paths = split_files(str(data_dir), SUFFIXES, valid_fraction, test_fraction, "MIDI files")
    splits, dropped = {}, 0
    for s in SPLITS:
        splits[s] = []
        for p in paths[s]:
            roll, d = midi_to_roll(p, steps_per_beat, frame_rate)
            dropped += d
            splits[s].append((os.path.relpath(p, str(data_dir)), roll))
    if dropped:
        logging.warning("--dataset=midi: %d notes outside the piano range %d..%d were left out", dropped,
                        LOWEST_NOTE, HIGHEST_NOTE)
    facts = {"format": "midi", "lowest_note": LOWEST_NOTE, "steps_per_beat": int(steps_per_beat),
             "frame_rate": float(frame_rate), "notes_out_of_range": int(dropped)}
    data = from_splits("midi", splits, facts, standardize=False)
    data.kind = "binary"  # a roll is binary even when every step of every file sounds (all ones)
    return data


def _load(data_dir, seed, **options):
    return load_midi(data_dir, **options)


SOURCE = DataSource(
    name="midi", description="a folder of MIDI files as 88-key piano rolls (drums and notes outside A0..C8 left out)",
    load=_load, shape=("binary", NUM_KEYS), data_dir="a folder of .mid files",
    options=(
        DataOption("steps_per_beat", "int", 4, "time steps per beat (the file's tempo map places the beats)."),
        DataOption("frame_rate", "float", 0.0, "> 0: a fixed grid of this many steps per second instead of beats."),
        DataOption("valid_fraction", "float", 0.1, "share of files hashed into the valid split (without a valid/ "
                   "subfolder), by a stable hash of the file name."),
        DataOption("test_fraction", "float", 0.1, "share of files hashed into the test split (without a test/ "
                   "subfolder)."),
    ))

__all__ = ["SOURCE", "load_midi", "midi_to_roll", "roll_to_midi"]
