"""A user's own sequences (``--dataset=sequences --data_dir=PATH``): CSV files, ``.npy`` files or one ``.npz``.

Formats (one sequence per file, one row per time step):

* a folder of **CSV** files: numbers separated by a delimiter (``--delimiter=auto`` detects ``,`` ``;`` tab
  ``|`` or spaces from the first lines); a first row holding any cell that is not a number is a header of
  channel names (``--header=auto``; ``yes`` / ``no`` to force), kept and written back with samples;
* a folder of **.npy** files, each a ``[T, D]`` (or ``[T]``: one channel) numeric array;
* one **.npz** file: either one array per sequence (any key names), or the keys ``train`` / ``valid`` /
  ``test``, each a ``[N, T, D]`` array or an object array (a list) of ``[T, D]`` arrays.  It is read
  with ``allow_pickle=False``; an object array is unpickled by a restricted unpickler that rebuilds
  numeric numpy arrays only (no other global can be called, so a crafted file cannot run code).

Folders are searched recursively; hidden files and files of other types are skipped.  A folder holding both
``.csv`` and ``.npy`` files is refused.

Splits: subfolders ``train/``, ``valid/`` and ``test/`` when any is present (a missing ``valid/`` or
``test/`` is carved out of ``train/``); otherwise every file (or ``.npz`` key) goes to a split by a stable
hash of its name (relative path): SHA-256 mapped to u in [0, 1), test when ``u < --test_fraction``, valid
when ``u < --test_fraction + --valid_fraction``, else train.  A file's split depends on its name alone, so
adding files never moves an existing one.  Only when the fractions leave valid or test empty (small data
sets) does the file of lowest hash in the largest split move there, so that every split holds a sequence.

Kind and head: when every value of every file is 0 or 1, the data are ``binary`` (Bernoulli head by
default); otherwise ``real`` (Gaussian head by default; ``--head=gmm`` for a mixture).

Standardisation (``--standardize``, on by default; real data only): each channel is divided by the
training split's standard deviation after subtracting its mean (a channel that is constant in the training
split keeps std 1).  The statistics are stored with the run and undone wherever data leave the model
(:mod:`tfhier.data.units`).

Bad input raises one :class:`DataError` naming the file and line (CSV) or step (arrays): rows of unequal
width, text or empty cells, NaN or infinite values, empty files, arrays of the wrong rank, files with
another number of channels (or another header) than the first.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import zipfile
from typing import Any, Optional

import numpy as np

from tfhier.data.base import SPLITS, DataError, SequenceData
from tfhier.data.sources import DataOption, DataSource

FORMATS = (".csv", ".npy")
DELIMITERS = (",", ";", "\t", "|")
#: lines read to detect a delimiter
_SNIFF_LINES = 5


# ------------------------------------------------------------------------------------------------ splits

def name_hash(name: str) -> float:
    """A stable number in [0, 1) for ``name`` (SHA-256 of its UTF-8 bytes): the same on every machine and run."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:15], 16) / 16.0 ** 15


def hash_split(names, valid_fraction: float, test_fraction: float, carve=("valid", "test")) -> dict:
    """``{split: [names]}``: each name's split by :func:`name_hash` (see the module docstring). Splits not in
    ``carve`` stay empty (all other names go to train)."""
    out = {s: [] for s in SPLITS}
    bounds = {"test": test_fraction if "test" in carve else 0.0}
    bounds["valid"] = bounds["test"] + (valid_fraction if "valid" in carve else 0.0)
    for name in sorted(names):
        u = name_hash(name)
        split = "test" if u < bounds["test"] else "valid" if u < bounds["valid"] else "train"
        out[split].append(name)
    for split in carve:  # a split the fractions left empty takes the name of lowest hash from the largest split
        if not out[split]:
            donor = max(("train",) + tuple(s for s in carve if s != split), key=lambda s: len(out[s]))
            if len(out[donor]) > 1:
                first = min(out[donor], key=name_hash)
                out[donor].remove(first)
                out[split].append(first)
    return out


def check_fractions(valid_fraction, test_fraction):
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DataError(f"--{name} must be in [0, 1), got {value}")
    if valid_fraction + test_fraction >= 1.0:
        raise DataError(f"--valid_fraction + --test_fraction must be < 1 (the rest trains), got "
                        f"{valid_fraction} + {test_fraction}")


def _visible_files(folder, suffixes):
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and f.lower().endswith(suffixes):
                found.append(os.path.join(root, f))
    return found


def split_files(data_dir, suffixes, valid_fraction, test_fraction, what) -> dict:
    """``{split: [paths]}`` of the files under ``data_dir`` whose names end with one of ``suffixes``
    (split subfolders or hash split, see the module docstring); DataError when a split ends up empty."""
    check_fractions(valid_fraction, test_fraction)
    subfolders = [s for s in SPLITS if os.path.isdir(os.path.join(data_dir, s))]
    if subfolders:
        if "train" not in subfolders:
            raise DataError(f"--data_dir={data_dir} has split subfolders {subfolders} but no train/")
        out = {s: _visible_files(os.path.join(data_dir, s), suffixes) if s in subfolders else [] for s in SPLITS}
        carve = tuple(s for s in ("valid", "test") if s not in subfolders)
        if carve:
            rel = {os.path.relpath(p, data_dir): p for p in out["train"]}
            carved = hash_split(rel, valid_fraction, test_fraction, carve)
            for s in ("train",) + carve:
                out[s] = [rel[n] for n in carved[s]]
    else:
        files = _visible_files(data_dir, suffixes)
        rel = {os.path.relpath(p, data_dir): p for p in files}
        carved = hash_split(rel, valid_fraction, test_fraction)
        out = {s: [rel[n] for n in carved[s]] for s in SPLITS}
    total = sum(len(v) for v in out.values())
    if total == 0:
        raise DataError(f"--data_dir={data_dir} holds no usable file: expected {what} "
                        f"({' or '.join(suffixes)}), directly or in train/ valid/ test/ subfolders")
    for s in SPLITS:
        if not out[s]:
            raise DataError(f"--data_dir={data_dir}: the {s} split is empty ({total} {what} found); give more "
                            f"files or a {s}/ subfolder")
    return out


# --------------------------------------------------------------------------------------------------- CSV

def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def detect_delimiter(lines) -> Optional[str]:
    """The delimiter of CSV ``lines`` (None: whitespace-separated or a single column): of the candidates found
    in the first line, the one that splits most of the first lines into as many fields as the first."""
    lines = [l for l in lines if l.strip()][:_SNIFF_LINES]
    best, best_score = None, None
    for d in DELIMITERS:
        first = lines[0].count(d) if lines else 0
        if first == 0:
            continue
        score = (sum(l.count(d) == first for l in lines), first)
        if best_score is None or score > best_score:
            best, best_score = d, score
    return best


def _split_line(line: str, delimiter):
    cells = [c.strip() for c in (line.split() if delimiter is None else line.split(delimiter))]
    return [c[1:-1].strip() if len(c) >= 2 and c[0] == c[-1] and c[0] in "\"'" else c for c in cells]


def _column_indices(columns: str, names, width, path):
    """0-based indices of ``--columns`` (names of the header or 1-based numbers, comma-separated; "" = all)."""
    if not columns:
        return list(range(width))
    out = []
    for part in [p.strip() for p in columns.split(",") if p.strip()]:
        if names and part in names:
            out.append(names.index(part))
        elif part.isdigit() and 1 <= int(part) <= width:
            out.append(int(part) - 1)
        else:
            have = f"its header: {', '.join(names)}" if names else f"{width} columns, numbered from 1"
            raise DataError(f"{path}: --columns names {part!r}, which is not a column of the file ({have})")
    return out


def read_csv(path, delimiter="auto", header="auto", columns=""):
    """``(array [T, D] float64, channel names or None, delimiter used)`` from one CSV file; ``columns``: the
    columns to keep (names or 1-based numbers, comma-separated; "" keeps all)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file in UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    lines = text.splitlines()
    numbered = [(i + 1, l) for i, l in enumerate(lines) if l.strip()]
    if not numbered:
        raise DataError(f"{path}: the file is empty (expected one row of numbers per time step)")
    if delimiter == "auto":
        delim = detect_delimiter([l for _, l in numbered])
    else:
        delim = {"tab": "\t", "\\t": "\t", "space": None, "whitespace": None}.get(delimiter, delimiter)
    if delim is not None and all(l.rstrip().endswith(delim) for _, l in numbered):
        # every line ends with the delimiter (some exporters write one after the last cell): no empty last column
        numbered = [(n, l.rstrip()[:-len(delim)]) for n, l in numbered]
    first = _split_line(numbered[0][1], delim)
    if header == "auto":
        has_header = not all(_is_number(c) for c in first)
    else:
        has_header = header == "yes"
    names = None
    if has_header:
        names = first
        numbered = numbered[1:]
        if not numbered:
            raise DataError(f"{path}: only a header line, no rows of numbers")
    width = len(first)
    keep = _column_indices(columns, names, width, path)
    rows = []
    for number, line in numbered:
        cells = _split_line(line, delim)
        if len(cells) != width:
            shown = "whitespace" if delim is None else repr(delim)
            raise DataError(f"{path}, line {number}: {len(cells)} values, expected {width} (as on line "
                            f"{numbered[0][0] if not has_header else 'of the header'}; delimiter {shown})")
        try:
            row = [float(cells[j]) for j in keep]
        except ValueError:
            col = next(j for j in keep if not _is_number(cells[j]))
            label = f" ({names[col]})" if names else ""
            what = "an empty cell" if cells[col] == "" else f"{cells[col]!r}, not a number"
            raise DataError(f"{path}, line {number}, column {col + 1}{label}: {what} (missing values are not "
                            f"supported; every cell must be a number; --columns keeps only some columns)") from None
        if not all(math.isfinite(v) for v in row):
            col = keep[next(j for j, v in enumerate(row) if not math.isfinite(v))]
            raise DataError(f"{path}, line {number}, column {col + 1}: {cells[col]!r} (NaN or infinite values are "
                            f"not supported: fill or drop them first)")
        rows.append(row)
    names = [names[j] for j in keep] if names else None
    return np.asarray(rows, np.float64).reshape(len(rows), len(keep)), names, delim


# ------------------------------------------------------------------------------------------ npy / npz

def check_array(a, where) -> np.ndarray:
    """``a`` as a float64 ``[T, D]`` array (``[T]`` becomes one channel); DataError naming ``where`` unless it
    is a non-empty, finite, numeric array of rank 1 or 2."""
    if not isinstance(a, np.ndarray):
        raise DataError(f"{where}: a {type(a).__name__}, expected a numeric [T, D] array")
    if a.dtype.kind not in "biuf":
        raise DataError(f"{where}: an array of dtype {a.dtype}, expected numbers")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DataError(f"{where}: an array of shape {a.shape}, expected [T, D] (or [T])")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"{where}: an empty array of shape {a.shape}, expected [T > 0, D > 0]")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        t, d = np.argwhere(bad)[0]
        raise DataError(f"{where}: step {t} (row {t}), channel {d} is {a[t, d]} (NaN or infinite values are not "
                        f"supported)")
    return a


def read_npy(path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{path}: cannot be read without unpickling ({e}); save numeric arrays") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e})") from None
    return check_array(a, path)


_MAX_OBJECTS = 1_000_000


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as r  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as r
    return r


def _numeric_dtype(*args, **kwargs):
    dtype = np.dtype(*args, **kwargs)
    if dtype.kind not in "biufO" or dtype.itemsize > 16:
        raise DataError(f"refusing numpy dtype {dtype!r}: an object array of sequences holds numeric arrays")
    return dtype


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays of numbers (and object arrays of them) and refuses every other global."""

    def __init__(self, file, source):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return _numeric_dtype
        raise DataError(f"{self._source}: refusing to unpickle global '{module}.{name}': an object array of "
                        f"sequences holds numeric numpy arrays only")


def _read_object_array(zf: zipfile.ZipFile, member: str, where: str):
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        if not dtype.hasobject or int(np.prod(shape)) > _MAX_OBJECTS:
            raise DataError(f"{where}: unexpected array header {shape} {dtype}")
        try:
            value = _ArrayUnpickler(io.BytesIO(f.read()), where).load()
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{where}: not a readable object array ({type(e).__name__}: {e})") from None
    return list(np.asarray(value, dtype=object).reshape(-1)) if isinstance(value, np.ndarray) else value


def read_npz(path) -> dict:
    """``{key: array or list of arrays}`` of an ``.npz`` file, without running code from it."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    out = {}
    with zf, np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            try:
                out[key] = npz[key]
            except ValueError:  # an object array: restricted unpickling of the member
                out[key] = _read_object_array(zf, key + ".npy", f"{path}[{key!r}]")
    return out


def _npz_splits(path, valid_fraction, test_fraction):
    """``({split: [(name, array)]}, None)`` of an .npz (see the module docstring)."""
    content = read_npz(path)
    if not content:
        raise DataError(f"{path}: holds no arrays")
    split_keys = set(content) & set(SPLITS)
    if split_keys:
        if "train" not in split_keys or set(content) - set(SPLITS):
            raise DataError(f"{path}: keys {sorted(content)}: expected either train/valid/test (each a list of "
                            f"[T, D] arrays, train required) or one array per sequence under other names")
        out = {s: [] for s in SPLITS}
        for s in split_keys:
            value = content[s]
            if isinstance(value, np.ndarray) and value.dtype != object:
                if value.ndim != 3:
                    raise DataError(f"{path}[{s!r}]: an array of shape {value.shape}; expected [N, T, D] or a list "
                                    f"(object array) of [T, D] arrays")
                value = list(value)
            if not isinstance(value, (list, tuple)):
                raise DataError(f"{path}[{s!r}]: a {type(value).__name__}; expected a list of [T, D] arrays")
            out[s] = [(f"{s}[{i}]", check_array(a, f"{path}[{s!r}][{i}]")) for i, a in enumerate(value)]
        carve = tuple(s for s in ("valid", "test") if s not in split_keys)
        if carve:
            named = dict(out["train"])
            carved = hash_split(named, valid_fraction, test_fraction, carve)
            for s in ("train",) + carve:
                out[s] = [(n, named[n]) for n in carved[s]]
        return out
    for key, value in content.items():
        if not isinstance(value, np.ndarray) or value.dtype == object:
            raise DataError(f"{path}[{key!r}]: an object array; an .npz of one array per sequence holds numeric "
                            f"[T, D] arrays (or use the keys train/valid/test for lists)")
    check_fractions(valid_fraction, test_fraction)
    named = {k: check_array(v, f"{path}[{k!r}]") for k, v in content.items()}
    carved = hash_split(named, valid_fraction, test_fraction)
    return {s: [(n, named[n]) for n in carved[s]] for s in SPLITS}


# ------------------------------------------------------------------------------------------------ loading

def _format_of(data_dir) -> str:
    if os.path.isfile(data_dir):
        if data_dir.lower().endswith(".npz"):
            return "npz"
        raise DataError(f"--data_dir={data_dir} is a file; --dataset=sequences reads a folder of .csv or .npy files "
                        f"or one .npz file")
    found = {s for s in FORMATS if _visible_files(data_dir, (s,))}
    if len(found) > 1:
        raise DataError(f"--data_dir={data_dir} holds both .csv and .npy files; keep one format per data set")
    if not found:
        raise DataError(f"--data_dir={data_dir} holds no usable file: expected .csv or .npy files (one sequence "
                        f"each, directly or in train/ valid/ test/ subfolders) or give one .npz file")
    return found.pop()[1:]


def read_sequences(data_dir, *, delimiter="auto", header="auto", columns="", valid_fraction=0.1,
                   test_fraction=0.1):
    """``({split: [(name, float64 [T, D])]}, facts)``: the raw (unstandardised) sequences and what was detected
    (``format``, ``channel_names``, ``csv_delimiter``)."""
    data_dir = str(data_dir)
    fmt = _format_of(data_dir)
    facts = {"format": fmt}
    if fmt == "npz":
        return _npz_splits(data_dir, valid_fraction, test_fraction), facts
    paths = split_files(data_dir, ("." + fmt,), valid_fraction, test_fraction, f".{fmt} files")
    out = {s: [] for s in SPLITS}
    first = None  # (path, names, width)
    for s in SPLITS:
        for p in paths[s]:
            name = os.path.relpath(p, data_dir)
            if fmt == "csv":
                a, names, delim = read_csv(p, delimiter, header, columns)
                if first is None:
                    first = (p, names, a.shape[1])
                    facts["csv_delimiter"] = "," if delim is None else delim
                    if names:
                        facts["channel_names"] = list(names)
                elif names is not None and first[1] is not None and list(names) != list(first[1]):
                    raise DataError(f"{p}: header {names} differs from {first[0]}'s {first[1]}; every file must "
                                    f"hold the same channels")
            else:
                a = read_npy(p)
                if first is None:
                    first = (p, None, a.shape[1])
            if a.shape[1] != first[2]:
                raise DataError(f"{p}: {a.shape[1]} channels, but {first[0]} has {first[2]}; every file must hold "
                                f"the same channels")
            out[s].append((name, a))
    return out, facts


def _is_binary(splits) -> bool:
    return all(np.all((a == 0) | (a == 1)) for seqs in splits.values() for _, a in seqs)


def from_splits(name, splits: dict, facts: dict, standardize=True) -> SequenceData:
    """A :class:`SequenceData` from raw ``{split: [(name, array)]}``: kind detected, standardised by the training
    split's statistics for real data (``standardize``), facts in ``info``."""
    dims = {a.shape[1] for seqs in splits.values() for _, a in seqs}
    if len(dims) != 1:
        raise DataError(f"{name}: sequences with different numbers of channels {sorted(dims)}; every sequence must "
                        f"hold the same channels")
    dim = dims.pop()
    for s in SPLITS:
        if not splits[s]:
            raise DataError(f"{name}: the {s} split is empty")
    kind = "binary" if _is_binary(splits) else "real"
    info = dict(facts)
    for s in SPLITS:
        info[f"num_{s}"] = len(splits[s])
    info["total_steps"] = int(sum(len(a) for seqs in splits.values() for _, a in seqs))
    info["standardized"] = bool(standardize and kind == "real")
    if info["standardized"]:
        train = np.concatenate([a for _, a in splits["train"]], axis=0)
        mean = train.mean(axis=0)
        std = train.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        info["channel_mean"] = [float(v) for v in mean]
        info["channel_std"] = [float(v) for v in std]
    # names of the sequences of each split (for messages and for users to find a file again)
    info["sequence_names"] = {s: [n for n, _ in splits[s]] for s in SPLITS}

    def convert(a):
        if info["standardized"]:
            a = (a - mean) / std
        return a.astype(np.float32)

    return SequenceData(name=name, train=[convert(a) for _, a in splits["train"]],
                        valid=[convert(a) for _, a in splits["valid"]], test=[convert(a) for _, a in splits["test"]],
                        feature_dim=dim, kind=kind, info=info)


def load_sequences(data_dir, *, delimiter="auto", header="auto", columns="", valid_fraction=0.1,
                   test_fraction=0.1, standardize=True) -> SequenceData:
    """Loads a user's own sequences from ``data_dir`` (see the module docstring)."""
    if not data_dir or not os.path.exists(str(data_dir)):
        raise DataError(f"--data_dir={data_dir} does not exist")
    splits, facts = read_sequences(data_dir, delimiter=delimiter, header=header, columns=columns,
                                   valid_fraction=valid_fraction, test_fraction=test_fraction)
    return from_splits("sequences", splits, facts, standardize)


def _load(data_dir, seed, **options):
    return load_sequences(data_dir, **options)


SOURCE = DataSource(
    name="sequences",
    description="your own sequences: a folder of CSV or .npy files (one sequence each) or one .npz file",
    load=_load, shape="data", data_dir="a folder of .csv or .npy files, or one .npz file",
    options=(
        DataOption("delimiter", "str", "auto", "CSV delimiter: auto (detects , ; tab | or spaces), or the "
                   "character itself (tab: 'tab', whitespace: 'space')."),
        DataOption("header", "str", "auto", "CSV header row of channel names: auto (a first row with any "
                   "non-number is a header), yes or no.", choices=("auto", "yes", "no")),
        DataOption("columns", "str", "", "CSV columns to keep, by header name or number (from 1), comma-separated, "
                   "e.g. acc_x,acc_y or 2,3 (to leave out a time stamp); empty: all."),
        DataOption("valid_fraction", "float", 0.1, "share of files hashed into the valid split (without a valid/ "
                   "subfolder), by a stable hash of the file name."),
        DataOption("test_fraction", "float", 0.1, "share of files hashed into the test split (without a test/ "
                   "subfolder)."),
        DataOption("standardize", "bool", True, "real data: subtract each channel's training-split mean and "
                   "divide by its std (stored with the run, undone on samples and exports); binary data never."),
    ))

__all__ = ["SOURCE", "check_array", "check_fractions", "detect_delimiter", "from_splits", "hash_split", "load_sequences",
           "name_hash", "read_csv", "read_npy", "read_npz", "read_sequences", "split_files"]
