"""Polyphonic music (JSB Chorales, Nottingham, Piano-midi.de, MuseData) as piano rolls.

The four MIDI datasets of Boulanger-Lewandowski et al. (ICML 2012) are the
polyphonic-music benchmark of SRNN (Fraccaro et al. 2016, §4 and Table 2) and
VHRNN (Deng et al. 2020, §5 and appendix B).  Both model every time step as an
88-dimensional binary vector, one dimension per piano key, with a Bernoulli
output distribution.

File format (as users download it, e.g. ``JSB Chorales.pickle``): a pickled
dict with keys ``'train'``, ``'valid'``, ``'test'``; each value is a list of
sequences, a sequence is a list of time steps, and a time step is a list (or
tuple) of the MIDI note numbers sounding at that step, 21 (A0) .. 108 (C8).
An empty step is a rest.  Third-party copies exist as Python-2 pickles whose
notes are numpy int64 scalars (``jsb-chorales-quarter.pkl``); those need
``encoding='latin1'`` and numpy's scalar-reconstruction globals.

Choices made here (the papers are silent):

* Piano-roll column ``k`` is MIDI note ``21 + k``; a step is 1 where the note
  sounds.  No mean-centering (VHRNN appendix B mean-centres per dimension; a
  model that wants that can do it from the training split itself).
* Extra keys in the dict are ignored; a sequence with no steps is an error.
* Pickles are code.  They are read with :class:`_RestrictedUnpickler`, whose
  ``find_class`` allows only plain builtin containers/numbers, the numpy
  globals needed to rebuild scalars (``numpy.core.multiarray.scalar``,
  ``numpy._core.multiarray.scalar``, ``numpy.dtype``) and ``_codecs.encode``
  restricted to latin1 (how Python 3 stores the scalars' raw bytes in
  protocol-2 pickles).  Anything else (for
  example ``os.system`` in a crafted ``__reduce__``) is refused with a
  :class:`DataError` before it can be called.  numpy arrays
  (``numpy.core.multiarray._reconstruct``) are deliberately not allowed: the
  published files do not need them.
* The pickle is first read with the default (ASCII/UTF-8) string decoding; on
  ``UnicodeDecodeError`` it is re-read with ``encoding='latin1'``, as needed
  for Python-2 pickles holding numpy scalars.

A second format, by file name ending in ``.npz``: the piano rolls the SRNN
authors published with their code (github.com/marcofraccaro/srnn,
``data/<set>_raw_batchsize16_seqlen100.npz``), read by :func:`load_srnn_npz`.
They are not the pickles' piano rolls: their JSB Chorales are the same
chorales sampled twice as often (each test chorale of the pickle is the
authors' sequence at its even steps; 9,396 test steps against 4,725, and 55% of
steps repeat the previous one against 11%), and their Nottingham and
Piano-midi.de have other lengths too, so per-step numbers on the two formats
are not comparable (docs/RESULTS.md).
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

from tfhier.checks import shown
from tfhier.data.base import SPLITS, DataError, SequenceData
from tfhier.data.sources import DataSource

LOWEST_NOTE = 21
HIGHEST_NOTE = 108
NUM_KEYS = HIGHEST_NOTE - LOWEST_NOTE + 1  # 88



def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


# No bytes/bytearray: called by REDUCE with an int they allocate that many bytes (bytearray(3e9) is 35 bytes
# of pickle); music pickles never need them (Python 3 stores protocol-2 bytes through _codecs.encode).
_SAFE_BUILTINS = {
    "list": list, "dict": dict, "tuple": tuple, "set": set, "frozenset": frozenset,
    "int": int, "float": float, "complex": complex, "bool": bool, "str": str,
    "long": int, "unicode": str,
}

#: limits on what a music data set can hold, checked before anything is expanded into piano rolls
MAX_FILE_BYTES = 512 * 2 ** 20
MAX_SEQUENCES = 100_000
MAX_TOTAL_STEPS = 2_000_000  # the published sets hold at most ~0.3 M steps (Nottingham: 266,537)
MAX_STRING_CHARS = 2 ** 20


def _small_dtype(*args, **kwargs):
    """``numpy.dtype`` for the scalar types of music pickles only (a big void dtype would allocate)."""
    dtype = np.dtype(*args, **kwargs)
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise DataError(f"refusing numpy dtype {dtype!r}: a polyphonic music pickle holds integer notes only")
    return dtype


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside a small allow-list."""

    def __init__(self, file, *, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def _latin1_encode(self, obj, encoding="utf-8", errors="strict"):
        # Python 3 writes bytes in protocol <= 2 as _codecs.encode(str, 'latin1').
        if isinstance(obj, str) and len(obj) > MAX_STRING_CHARS:
            raise DataError(f"{self._source}: refusing _codecs.encode of {len(obj)} characters: a numpy scalar's "
                            f"bytes are a few characters")
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
            raise DataError(
                f"{self._source}: refusing _codecs.encode with encoding {encoding!r}: only the "
                f"latin1 form Python 3 uses to store bytes is allowed")
        return obj.encode("latin1", errors)

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _numpy_scalar()
        if module == "numpy" and name == "dtype":
            return _small_dtype
        if module == "_codecs" and name == "encode":
            return self._latin1_encode
        raise DataError(
            f"{self._source}: refusing to unpickle global '{module}.{name}': a polyphonic "
            f"music pickle holds only lists/tuples/dicts of ints (and numpy integer scalars)")


def _unpickle(path: str) -> Any:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise DataError(f"{path}: {size / 2 ** 20:.0f} MB; a polyphonic music pickle is at most "
                            f"{MAX_FILE_BYTES // 2 ** 20} MB (the published ones are a few MB)")
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read the polyphonic music pickle ({e.strerror or e})") from e
    last_error = None
    for kwargs in ({}, {"encoding": "latin1"}):
        try:
            return _RestrictedUnpickler(io.BytesIO(raw), source=path, **kwargs).load()
        except DataError:
            raise
        except UnicodeDecodeError as e:
            last_error = e
            continue
        except Exception as e:  # truncated / corrupted / not a pickle at all
            raise DataError(
                f"{path}: not a readable polyphonic music pickle (truncated or corrupted?): "
                f"{type(e).__name__}: {shown(str(e), 200)}") from None
    raise DataError(f"{path}: cannot decode the pickle's strings as UTF-8 or latin1 ({last_error})")


def _is_int(v: Any) -> bool:
    return (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)))


def _piano_roll(seq: Any, path: str, split: str, i: int) -> np.ndarray:
    where = f"{path}: {split} sequence {i}"
    if not isinstance(seq, (list, tuple)):
        raise DataError(f"{where} is a {type(seq).__name__}, expected a list of time steps")
    if len(seq) == 0:
        raise DataError(f"{where} has no time steps")
    roll = np.zeros((len(seq), NUM_KEYS), np.float32)
    for t, step in enumerate(seq):
        if not isinstance(step, (list, tuple)):
            raise DataError(
                f"{where} step {t} is a {type(step).__name__}, expected a list of MIDI note numbers")
        if len(step) > NUM_KEYS:
            raise DataError(f"{where} step {t} holds {len(step)} notes; a piano has {NUM_KEYS} keys")
        for note in step:
            if not _is_int(note):
                raise DataError(
                    f"{where} step {t} holds {shown(note)} ({type(note).__name__}), expected integer "
                    f"MIDI note numbers")
            n = int(note)
            if not LOWEST_NOTE <= n <= HIGHEST_NOTE:
                raise DataError(
                    f"{where} step {t} holds MIDI note {shown(n)}, outside the piano range "
                    f"{LOWEST_NOTE}..{HIGHEST_NOTE}")
            roll[t, n - LOWEST_NOTE] = 1.0
    return roll


def load_polyphonic(path: str | os.PathLike) -> SequenceData:
    """Loads a Boulanger-Lewandowski polyphonic-music pickle as 88-key piano rolls.

    Args:
      path: the pickle (``JSB Chorales.pickle``, ``Nottingham.pkl``, ...).

    Returns:
      ``SequenceData(name='polyphonic', kind='binary', feature_dim=88)``; each
      sequence a float32 ``[T, 88]`` array of 0/1 with column ``k`` = MIDI note
      ``21 + k``.  ``info`` holds ``source`` (the path), ``lowest_note`` (21)
      and ``dataset`` (the file name without extension).

    Raises:
      DataError: naming the file, when it cannot be read or unpickled, holds a
        refused global, is not a dict with non-empty ``train``/``valid``/``test``
        lists, or holds a step that is not a list of integer notes in 21..108.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: polyphonic music pickle not found")
    obj = _unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: holds a {type(obj).__name__}, expected a dict with keys 'train', 'valid', 'test'")
    missing = [s for s in SPLITS if s not in obj]
    if missing:
        raise DataError(
            f"{path}: the dict lacks key(s) {missing}, expected keys 'train', 'valid', 'test' "
            f"(found {shown(sorted(shown(k, 40) for k in list(obj.keys())[:20]), 200)})")
    splits = {}
    total_steps = 0
    for split in SPLITS:
        seqs = obj[split]
        if not isinstance(seqs, (list, tuple)):
            raise DataError(
                f"{path}: '{split}' is a {type(seqs).__name__}, expected a list of sequences")
        if len(seqs) == 0:
            raise DataError(f"{path}: the '{split}' split is empty")
        if len(seqs) > MAX_SEQUENCES:
            raise DataError(f"{path}: the '{split}' split holds {len(seqs):,} sequences; a music data set holds at "
                            f"most {MAX_SEQUENCES:,}")
        # Shared references make a small pickle stand for a huge data set: count before expanding anything.
        total_steps += sum(len(s) if isinstance(s, (list, tuple)) else 0 for s in seqs)
        if total_steps > MAX_TOTAL_STEPS:
            raise DataError(f"{path}: holds more than {MAX_TOTAL_STEPS:,} time steps (counted up to the "
                            f"'{split}' split); a music data set holds far fewer (refused before building piano "
                            f"rolls)")
    for split in SPLITS:
        seqs = obj[split]
        splits[split] = [_piano_roll(s, path, split, i) for i, s in enumerate(seqs)]
    dataset = os.path.splitext(os.path.basename(path))[0]
    return SequenceData(
        name="polyphonic", feature_dim=NUM_KEYS, kind="binary",
        info={"source": path, "lowest_note": LOWEST_NOTE, "dataset": dataset},
        **splits).check()


#: the arrays of the SRNN authors' ``.npz`` files that are read (``u_*`` are ``x`` shifted by one step)
NPZ_KEYS = ("x_train", "x_valid", "x_test", "mask_test")


def load_srnn_npz(path: str | os.PathLike) -> SequenceData:
    """Loads the SRNN authors' piano rolls (``<set>_raw_batchsize16_seqlen100.npz``) as 88-key piano rolls.

    The file holds ``x_train`` and ``x_valid`` as ``[N, 100, 88]`` crops (each crop one sequence here, as the
    authors train and validate on them) and ``x_test`` ``[N, T, 88]`` with ``mask_test`` ``[N, T]``, 1 on a
    sequence's real steps, which come first; each test sequence is cut to its real steps.  Read with
    ``allow_pickle=False``: an ``.npz`` holding Python objects is refused.

    Raises:
      DataError: naming the file and the array, when it is missing, not ``[N, T, 88]`` of 0/1, or a test mask
        is not ones followed by zeros.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: SRNN piano-roll .npz not found")
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise DataError(f"{path}: larger than {MAX_FILE_BYTES // 2 ** 20} MB; the SRNN authors' files are a few MB")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path}: lacks the array(s) {missing}; an SRNN piano-roll .npz holds "
                                f"{', '.join(NPZ_KEYS)} (found {shown(npz.files, 200)})")
            arrays = {k: npz[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as e:  # not a zip, truncated, or object arrays (pickles)
        raise DataError(f"{path}: not a readable .npz of numeric arrays: {type(e).__name__}: "
                        f"{shown(str(e), 200)}") from None
    for key in ("x_train", "x_valid", "x_test"):
        a = arrays[key]
        if a.ndim != 3 or a.shape[2] != NUM_KEYS or a.shape[0] == 0 or a.shape[1] == 0:
            raise DataError(f"{path}: '{key}' has shape {a.shape}, expected [sequences, steps, {NUM_KEYS}]")
        if a.dtype.kind not in "biuf" or not np.isin(a, (0, 1)).all():
            raise DataError(f"{path}: '{key}' holds values other than 0 and 1 (dtype {a.dtype})")
    mask = arrays["mask_test"]
    if mask.shape != arrays["x_test"].shape[:2] or not np.isin(mask, (0, 1)).all():
        raise DataError(f"{path}: 'mask_test' has shape {mask.shape} (values {shown(np.unique(mask)[:5])}), "
                        f"expected 0/1 of shape {arrays['x_test'].shape[:2]}")
    lengths = mask.sum(axis=1).astype(np.int64)
    for i, n in enumerate(lengths):
        if not mask[i, :n].all():
            raise DataError(f"{path}: 'mask_test' row {i} is not ones followed by zeros")
    if not lengths.any():
        raise DataError(f"{path}: 'mask_test' marks no test step")
    splits = {"train": list(arrays["x_train"].astype(np.float32)),
              "valid": list(arrays["x_valid"].astype(np.float32)),
              # rows of zero length pad the test set to a multiple of the batch size: not sequences
              "test": [x[:n].astype(np.float32) for x, n in zip(arrays["x_test"], lengths) if n > 0]}
    dataset = os.path.splitext(os.path.basename(path))[0]
    return SequenceData(
        name="polyphonic", feature_dim=NUM_KEYS, kind="binary",
        info={"source": path, "lowest_note": LOWEST_NOTE, "dataset": dataset, "format": "srnn_npz"},
        **splits).check()


def _load(data_dir, seed):
    if os.fspath(data_dir).lower().endswith(".npz"):
        return load_srnn_npz(data_dir)
    return load_polyphonic(data_dir)


SOURCE = DataSource(
    name="polyphonic", description="a Boulanger-Lewandowski polyphonic-music pickle as 88-key piano rolls",
    load=_load, shape=("binary", 88), data_dir="the pickle file (e.g. JSB_Chorales.pkl), or the SRNN authors' .npz piano rolls")
