"""Raw speech waveforms, preprocessed as for Blizzard.

Setting reproduced: MS-STCN (Andersson et al. 2021, §4 "Blizzard"): the raw
signal is cut into 0.5 s sequences of 8,000 samples, divided into frames of 200
samples (or fewer, down to 2), the mp3-decoding artifacts "before and after
every sequence" are removed, and the rest follows STCN (Aksan & Hilliges 2019)
which follows SRNN (Fraccaro et al. 2016, appendix A.1) and VRNN (Chung et al.
2015): 16 kHz sampling rate, normalisation by the global mean and standard
deviation of the training set, non-overlapping frames of 200 samples, a
90 % / 5 % / 5 % train/valid/test split.

Pipeline of :func:`load_audio`, for every audio file under ``data_dir``:

1. Find files recursively by extension (:data:`AUDIO_EXTENSIONS`: wav, flac,
   ogg, ... -- what libsndfile reads); other files (``metadata.csv``,
   READMEs) and hidden files (names starting with ``.``, e.g. macOS ``._x.wav``
   resource forks) are ignored.  Files are sorted by path relative to
   ``data_dir``.
2. Read with soundfile as float64 and mix to mono by averaging channels.
   A file soundfile cannot open, or that is truncated (WAV whose ``data``
   chunk is longer than the file, FLAC that loses sync, Ogg without an
   end-of-stream page, fewer frames than the header announces) raises
   :class:`DataError` naming the file.
3. Resample to ``sample_rate`` with ``scipy.signal.resample_poly`` using
   ``up = sample_rate / g`` and ``down = file_rate / g`` with
   ``g = gcd(sample_rate, file_rate)`` (default Kaiser-window FIR), so a file
   of ``n`` samples becomes ``ceil(n * up / down)`` samples: the duration is
   kept to within one sample.
4. Trim leading and trailing silence.  Choice (the papers give none): a sample
   is silent when ``|x| < silence_threshold * max|x|`` with
   ``silence_threshold = 0.01`` (-40 dB below the file's peak); everything
   before the first and after the last non-silent sample is removed.  This is
   also what removes the decoder artifacts MS-STCN mentions; silence inside
   the file is kept.
5. Cut into rows of ``row_seconds * sample_rate`` samples (8,000), dropping
   the remainder at the end.  A file shorter than one row after trimming is
   skipped with a logged warning.
6. Split BY FILE (a file's rows all go to one split): the usable files are
   shuffled with ``numpy.random.default_rng(seed)`` and ``round(5 %)`` of them
   (at least 1) go to valid, as many to test, the rest to train.  Fewer than 3
   usable files is an error.  (SRNN appendix A.1 gives the 90/5/5 ratio but
   not whether the split is by file or by chunk; by file avoids the same
   recording appearing in train and test.)
7. Normalise every row by the mean and standard deviation of all training
   samples (scalars, SRNN A.1), stored in ``info``.
8. Frame each row into ``[row_len / W, W]``: step ``t`` holds samples
   ``t W .. t W + W - 1`` (non-overlapping, consecutive samples in a step;
   ``framing='consecutive'``, the papers' frames).  ``framing='authors'`` is
   the MS-STCN authors' Blizzard loader (``data/blizzard.py``:
   ``reshape(frame_size, -1)`` of each row, channels first): with
   ``T = row_len / W`` steps, feature c of step t is sample ``t + c T``, so a
   channel holds a contiguous block of the row and a step holds samples T
   apart.  That is what produced their Table 1.

:func:`frames_to_waveform` inverts 8 and 7 (for writing WAVs of samples).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import scipy.signal
import soundfile as sf

from tfhier.data.base import DataError, SequenceData
from tfhier.data.sources import DataOption, DataSource

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc",
    ".au", ".snd", ".w64", ".caf", ".mp3",
})

DEFAULT_SILENCE_THRESHOLD = 0.01
FRAMINGS = ("consecutive", "authors")
#: sampling rates accepted in a file (Hz): telephone speech is 8 kHz, studio audio at most 384 kHz
MIN_FILE_RATE, MAX_FILE_RATE = 1_000, 768_000
#: the longest file accepted, seconds (checked from the header, before anything is decoded or resampled)
MAX_FILE_SECONDS = 4 * 3600


def find_audio_files(data_dir: str | os.PathLike) -> list[Path]:
    """Audio files (by extension, case-insensitive) under ``data_dir``, recursively, sorted."""
    root = Path(data_dir)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                files.append(Path(dirpath) / name)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _check_wav_complete(path: Path, head: bytes, size: int) -> None:
    """Raises DataError when a RIFF/WAVE file's data chunk runs past the end of the file."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    with open(path, "rb") as f:
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            hdr = f.read(8)
            cid, csize = hdr[:4], int.from_bytes(hdr[4:8], "little")
            if cid == b"data":
                # 0 and 0xFFFFFFFF are "unknown length" placeholders of streaming writers.
                if csize not in (0, 0xFFFFFFFF) and pos + 8 + csize > size:
                    raise DataError(
                        f"{path}: truncated WAV file: the data chunk announces {csize} bytes but "
                        f"only {size - pos - 8} are present")
                return
            pos += 8 + csize + (csize & 1)


def _check_ogg_complete(path: Path, size: int) -> None:
    """Raises DataError when an Ogg file's last page is incomplete or not end-of-stream."""
    with open(path, "rb") as f:
        start = max(0, size - 70000)  # an Ogg page is at most 65,307 bytes
        f.seek(start)
        tail = f.read()
    i = tail.rfind(b"OggS")
    if i < 0:
        raise DataError(f"{path}: truncated or corrupt Ogg file: no Ogg page near the end")
    page = tail[i:]
    ok = len(page) >= 27
    if ok:
        nseg = page[26]
        ok = len(page) >= 27 + nseg and len(page) >= 27 + nseg + sum(page[27:27 + nseg])
    if not ok or not page[5] & 0x04:
        raise DataError(
            f"{path}: truncated Ogg file: the last page is incomplete or is not an end-of-stream page")


def read_audio(path: str | os.PathLike, sample_rate: Optional[int] = None) -> tuple[np.ndarray, int]:
    """Reads one audio file as mono float64, resampled to ``sample_rate`` if given.

    Returns:
      ``(samples, rate)``: a 1-D float64 array and its sampling rate
      (``sample_rate`` when given, else the file's own rate).

    Raises:
      DataError: naming the file when it cannot be read, is truncated, or holds
        non-finite samples.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        raise DataError(f"{path}: cannot read audio file ({e.strerror or e})") from e
    if size == 0:
        raise DataError(f"{path}: empty file, expected audio")
    _check_wav_complete(path, head, size)
    try:
        with sf.SoundFile(str(path)) as f:
            rate, announced = f.samplerate, f.frames
            fmt = f.format
            # Sizes from the header, before decoding or resampling allocates anything.
            if not MIN_FILE_RATE <= rate <= MAX_FILE_RATE:
                raise DataError(f"{path}: sampling rate {rate} Hz is implausible; expected {MIN_FILE_RATE} to "
                                f"{MAX_FILE_RATE} Hz")
            if 0 < announced < 2**62 and announced / rate > MAX_FILE_SECONDS:
                raise DataError(f"{path}: {announced / rate / 3600:.1f} hours of audio in one file; expected at "
                                f"most {MAX_FILE_SECONDS / 3600:g} hours per file (split it)")
            if f.channels > 64:
                raise DataError(f"{path}: {f.channels} channels; expected mono or a few channels (at most 64)")
            data = f.read(dtype="float64", always_2d=True)
    except DataError:
        raise
    except Exception as e:  # libsndfile errors, decoder errors
        raise DataError(
            f"{path}: not a readable audio file (truncated or not audio?): {type(e).__name__}: {e}"
        ) from e
    if fmt == "OGG":
        _check_ogg_complete(path, size)
    if 0 < announced < 2**62 and data.shape[0] < announced:
        raise DataError(
            f"{path}: truncated audio file: header announces {announced} frames, only "
            f"{data.shape[0]} could be read")
    x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: audio holds NaN or infinite samples")
    if sample_rate is not None and sample_rate != rate and x.size:
        g = math.gcd(int(sample_rate), int(rate))
        x = scipy.signal.resample_poly(x, int(sample_rate) // g, int(rate) // g)
        rate = int(sample_rate)
    return np.ascontiguousarray(x, np.float64), int(rate)


def trim_silence(x: np.ndarray, threshold: float = DEFAULT_SILENCE_THRESHOLD) -> np.ndarray:
    """Removes leading/trailing samples with ``|x| < threshold * max|x|`` (empty if all silent)."""
    a = np.abs(x)
    peak = a.max() if a.size else 0.0
    if peak <= 0:
        return x[:0]
    loud = np.flatnonzero(a >= threshold * peak)
    return x[loud[0]:loud[-1] + 1]


def _check_flags(sample_rate, frame_width, row_seconds, silence_threshold) -> int:
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise DataError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if not isinstance(frame_width, (int, np.integer)) or frame_width <= 0:
        raise DataError(f"frame_width must be a positive integer, got {frame_width!r}")
    if not row_seconds or row_seconds <= 0:
        raise DataError(f"row_seconds must be positive, got {row_seconds!r}")
    if not 0 <= silence_threshold < 1:
        raise DataError(f"silence_threshold must be in [0, 1), got {silence_threshold!r}")
    exact = row_seconds * sample_rate
    row_len = int(round(exact))
    if row_len <= 0 or abs(exact - row_len) > 1e-6 * max(1.0, exact):
        raise DataError(
            f"row_seconds={row_seconds} times sample_rate={sample_rate} is {exact}, not a whole "
            f"number of samples")
    if row_len % frame_width:
        raise DataError(
            f"frame_width={frame_width} does not divide the row length {row_len} samples "
            f"(row_seconds={row_seconds} x sample_rate={sample_rate}); choose a frame_width "
            f"that divides {row_len}")
    return row_len


def frame_rows(rows: np.ndarray, frame_width: int, framing: str = "consecutive") -> np.ndarray:
    """Rows ``[n, L]`` -> frames ``[n, L / W, W]`` (see step 8 of the module docstring)."""
    n, length = rows.shape
    steps = length // frame_width
    if framing == "consecutive":
        return rows.reshape(n, steps, frame_width)
    if framing == "authors":
        return np.swapaxes(rows.reshape(n, frame_width, steps), 1, 2)
    raise DataError(f"--framing must be one of {FRAMINGS}, got {framing!r}")


def load_audio(data_dir: str | os.PathLike, *, sample_rate: int = 16000, frame_width: int = 200,
               row_seconds: float = 0.5, seed: int = 0,
               silence_threshold: float = DEFAULT_SILENCE_THRESHOLD, framing: str = "consecutive") -> SequenceData:
    """Loads every audio file under ``data_dir`` as normalised, framed 0.5 s rows.

    Args:
      data_dir: folder searched recursively for audio files.
      sample_rate: target sampling rate in Hz (16,000 as Blizzard).
      frame_width: samples per time step W; must divide the row length.
      row_seconds: length of one sequence in seconds (0.5 s = 8,000 samples).
      seed: seed of the by-file train/valid/test shuffle.
      silence_threshold: leading/trailing samples below this fraction of the
        file's peak are trimmed.
      framing: ``'consecutive'`` (the papers) or ``'authors'`` (step 8 above).

    Returns:
      ``SequenceData(name='audio', kind='audio', feature_dim=frame_width)``
      whose sequences are float32 ``[row_len / W, W]``.  ``info`` holds
      ``sample_rate``, ``frame_width``, ``mean``, ``std`` (training
      statistics, in raw amplitude units), ``row_length``, ``row_seconds``,
      ``silence_threshold``, ``seed``, ``files`` (split -> list of paths
      relative to ``data_dir``), ``rows_per_file`` (split -> list of ints, in
      the order of ``files``; the split's rows are those files' rows in that
      order), ``skipped`` (files shorter than one row) and ``data_dir``.

    Raises:
      DataError: for a missing folder, no audio files, fewer than 3 usable
        files, a file that is truncated or not audio (naming it), or flags that
        do not fit (naming the flag).
    """
    row_len = _check_flags(sample_rate, frame_width, row_seconds, silence_threshold)
    if framing not in FRAMINGS:
        raise DataError(f"--framing must be one of {FRAMINGS}, got {framing!r}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: audio data_dir does not exist or is not a folder")
    files = find_audio_files(root)
    if not files:
        raise DataError(
            f"{root}: holds no audio files (looked recursively for "
            f"{', '.join(sorted(AUDIO_EXTENSIONS))})")

    names, rows, skipped = [], [], []
    for path in files:
        x, _ = read_audio(path, sample_rate)
        x = trim_silence(x, silence_threshold)
        n = x.size // row_len
        rel = path.relative_to(root).as_posix()
        if n == 0:
            logger.warning("%s: %.3f s of audio after trimming silence is shorter than one row "
                           "(%g s); skipped", path, x.size / sample_rate, row_seconds)
            skipped.append(rel)
            continue
        names.append(rel)
        rows.append(x[: n * row_len].reshape(n, row_len))
    if len(names) < 3:
        raise DataError(
            f"{root}: only {len(names)} audio file(s) hold at least one row of {row_seconds} s "
            f"after trimming silence ({len(skipped)} shorter ones skipped); at least 3 are needed "
            f"for a by-file train/valid/test split")

    n = len(names)
    n_valid = n_test = max(1, int(round(0.05 * n)))
    order = np.random.default_rng(seed).permutation(n)
    split_idx = {
        "valid": sorted(order[:n_valid].tolist()),
        "test": sorted(order[n_valid:n_valid + n_test].tolist()),
        "train": sorted(order[n_valid + n_test:].tolist()),
    }
    train_rows = np.concatenate([rows[i] for i in split_idx["train"]])
    mean = float(train_rows.mean())
    std = float(train_rows.std())
    if not std > 0:
        raise DataError(f"{root}: the training audio is constant (std 0); cannot normalise")

    steps = row_len // frame_width
    splits: dict[str, list] = {}
    for split, idx in split_idx.items():
        seqs = []
        for i in idx:
            normed = ((rows[i] - mean) / std).astype(np.float32)
            seqs.extend(frame_rows(normed, frame_width, framing))
        splits[split] = seqs
    info = {
        "sample_rate": int(sample_rate), "frame_width": int(frame_width), "mean": mean, "std": std,
        "row_length": row_len, "row_seconds": float(row_seconds),
        "silence_threshold": float(silence_threshold), "seed": seed, "framing": framing,
        "files": {s: [names[i] for i in idx] for s, idx in split_idx.items()},
        "rows_per_file": {s: [int(rows[i].shape[0]) for i in idx] for s, idx in split_idx.items()},
        "skipped": skipped, "data_dir": str(root),
    }
    return SequenceData(name="audio", feature_dim=int(frame_width), kind="audio", info=info,
                        **splits).check()


def frames_to_waveform(frames: Any, info: dict) -> np.ndarray:
    """Inverse of framing and normalisation: ``[..., T, W]`` frames -> ``[..., T * W]`` waveform.

    ``frames`` may be a numpy array or a tensor (anything ``np.asarray`` takes).
    The result is float32 in the files' amplitude units (``x * std + mean``),
    ready for ``soundfile.write(path, wave, info['sample_rate'])``.
    """
    f = np.asarray(frames, dtype=np.float64)
    width = int(info["frame_width"])
    if f.ndim < 2 or f.shape[-1] != width:
        raise DataError(
            f"frames_to_waveform: frames have shape {f.shape}, expected [..., T, {width}] "
            f"(frame_width={width})")
    if info.get("framing", "consecutive") == "authors":
        f = np.swapaxes(f, -1, -2)  # [..., W, T]: the row's blocks in order
    wave = f.reshape(*f.shape[:-2], f.shape[-2] * f.shape[-1])
    return (wave * float(info["std"]) + float(info["mean"])).astype(np.float32)


def _load(data_dir, seed, *, sample_rate, frame_width, framing):
    return load_audio(data_dir, sample_rate=sample_rate, frame_width=frame_width, seed=seed, framing=framing)


SOURCE = DataSource(
    name="audio", description="a folder of audio files (WAV, FLAC, ...) as frames of waveform samples",
    load=_load, shape=lambda options: ("audio", int(options["frame_width"])),
    data_dir="a folder of audio files",
    options=(DataOption("sample_rate", "int", 16000, "resample to this rate (Hz)."),
             DataOption("frame_width", "int", 200, "waveform samples per time step."),
             DataOption("framing", "str", "consecutive", "consecutive samples in a step (the papers) or the MS-STCN "
                        "authors' channels-first reshape of each 0.5 s row.", choices=FRAMINGS)))
