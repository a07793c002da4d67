"""Tests for tfhier.data.audio (Blizzard-style raw-waveform preprocessing)."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from tfhier.data.audio import frames_to_waveform, load_audio, read_audio, trim_silence
from tfhier.data.base import DataError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LJ = DATA / "audio" / "ljspeech"
FSDD = DATA / "audio" / "fsdd" / "recordings"

needs_lj = pytest.mark.skipif(not LJ.is_dir(), reason=f"{LJ} not present")
needs_fsdd = pytest.mark.skipif(not FSDD.is_dir(), reason=f"{FSDD} not present")


def _loud(n, seed):
    """A signal whose every sample is at least 10 % of its peak (nothing to trim)."""
    rng = np.random.default_rng(seed)
    return (rng.choice([-1.0, 1.0], n) * rng.uniform(0.1, 0.5, n)).astype(np.float32)


def _write(path, x, rate=16000):
    sf.write(str(path), x, rate, subtype="FLOAT")
    return path


def test_framing_normalisation_and_inverse(tmp_path):
    W, row = 100, 8000
    lengths = [2 * row + 123, row + 7, 3 * row, row + 4000, row * 2]
    raw = {}
    for i, n in enumerate(lengths):
        x = _loud(n, i)
        _write(tmp_path / f"f{i}.wav", x)
        raw[f"f{i}.wav"] = x.astype(np.float64)
    data = load_audio(tmp_path, frame_width=W, seed=3)
    assert data.kind == "audio" and data.feature_dim == W and data.name == "audio"
    info = data.info
    assert info["sample_rate"] == 16000 and info["frame_width"] == W

    # Independent statistics over the training files' whole rows.
    train_rows = np.concatenate(
        [raw[f][: (len(raw[f]) // row) * row] for f in info["files"]["train"]])
    assert info["mean"] == pytest.approx(train_rows.mean(), rel=1e-9, abs=1e-12)
    assert info["std"] == pytest.approx(train_rows.std(), rel=1e-9)

    for split in ("train", "valid", "test"):
        seqs = data.split(split)
        assert len(seqs) == sum(len(raw[f]) // row for f in info["files"][split])
        k = 0
        for f in info["files"][split]:
            x = raw[f]
            for r in range(len(x) // row):
                s = seqs[k]
                assert s.shape == (row // W, W) and s.dtype == np.float32
                # Step t holds samples tW .. tW+W-1 of the row, normalised.
                for t in (0, 1, 57, row // W - 1):
                    expect = (x[r * row + t * W: r * row + (t + 1) * W] - info["mean"]) / info["std"]
                    np.testing.assert_allclose(s[t], expect, rtol=1e-5, atol=1e-5)
                # frames_to_waveform rebuilds the raw row.
                np.testing.assert_allclose(frames_to_waveform(s, info), x[r * row:(r + 1) * row],
                                           rtol=1e-6, atol=1e-6)
                k += 1
    batch = np.stack(data.train[:2])
    wave = frames_to_waveform(batch, info)
    assert wave.shape == (2, row) and wave.dtype == np.float32
    with pytest.raises(DataError, match="frame_width"):
        frames_to_waveform(np.zeros((4, W + 1)), info)


def test_split_by_file_seeded(tmp_path):
    for i in range(40):
        _write(tmp_path / f"x{i:02d}.wav", _loud(8000 + 10 * i, i))
    a = load_audio(tmp_path, seed=0)
    b = load_audio(tmp_path, seed=0)
    c = load_audio(tmp_path, seed=1)
    fa = a.info["files"]
    # 5 % of 40 files = 2 valid, 2 test, the other 36 train.
    assert [len(fa[s]) for s in ("train", "valid", "test")] == [36, 2, 2]
    sets = [set(fa[s]) for s in ("train", "valid", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set.union(*sets) == {f"x{i:02d}.wav" for i in range(40)}
    assert fa == b.info["files"]
    assert fa != c.info["files"]


def test_three_files_minimum(tmp_path):
    for i in range(3):
        _write(tmp_path / f"x{i}.wav", _loud(8000, i))
    d = load_audio(tmp_path)
    assert [len(d.info["files"][s]) for s in ("train", "valid", "test")] == [1, 1, 1]
    (tmp_path / "x2.wav").unlink()
    with pytest.raises(DataError, match="at least 3"):
        load_audio(tmp_path)


@needs_lj
def test_ljspeech_split_and_pipeline():
    data = load_audio(LJ)
    files = data.info["files"]
    all_files = sorted(p.name for p in LJ.glob("*.wav"))
    assert sorted(files["train"] + files["valid"] + files["test"]) == all_files
    assert (len(files["train"]), len(files["valid"]), len(files["test"])) == (28, 2, 2)
    assert not set(files["train"]) & (set(files["valid"]) | set(files["test"]))
    assert not set(files["valid"]) & set(files["test"])
    for s in ("train", "valid", "test"):
        assert len(data.split(s)) == sum(data.info["rows_per_file"][s])
    # Independent pipeline for the first test file: 22,050 -> 16,000 is up 320 / down 441.
    x, rate = sf.read(str(LJ / files["test"][0]), dtype="float64")
    assert rate == 22050
    y = scipy.signal.resample_poly(x, 320, 441)
    loud = np.flatnonzero(np.abs(y) >= 0.01 * np.abs(y).max())
    y = y[loud[0]:loud[-1] + 1]
    n = len(y) // 8000
    assert n == data.info["rows_per_file"]["test"][0]
    for r in range(n):
        np.testing.assert_allclose(frames_to_waveform(data.test[r], data.info),
                                   y[r * 8000:(r + 1) * 8000], atol=1e-6)
    # Normalised training data has zero mean, unit variance.
    tr = np.concatenate(data.train)
    assert abs(tr.mean()) < 1e-3 and abs(tr.std() - 1) < 1e-3


@needs_lj
def test_resampling_keeps_duration_ljspeech():
    for name in ("LJ001-0002.wav", "LJ001-0008.wav", "LJ001-0013.wav"):
        n = sf.info(str(LJ / name)).frames
        y, rate = read_audio(LJ / name, 16000)
        assert rate == 16000
        assert abs(len(y) - n * 16000 / 22050) <= 1


@needs_fsdd
def test_resampling_keeps_duration_fsdd():
    for name in ("0_george_0.wav", "7_jackson_32.wav", "3_theo_10.wav"):
        if not (FSDD / name).exists():
            continue
        x, r = sf.read(str(FSDD / name), dtype="float64")
        assert r == 8000
        y, rate = read_audio(FSDD / name, 16000)
        assert abs(len(y) - 2 * len(x)) <= 1
        # Upsampling by 2 keeps the original samples at even positions (low-pass interpolation).
        mid = slice(100, len(x) - 100)
        assert np.corrcoef(y[::2][mid], x[mid])[0, 1] > 0.99


def test_resampling_is_accurate(tmp_path):
    # A 440 Hz tone at 22,050 Hz resampled to 16,000 Hz matches the tone sampled at 16,000 Hz.
    t = np.arange(22050) / 22050
    _write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 22050)
    y, rate = read_audio(tmp_path / "tone.wav", 16000)
    assert rate == 16000 and abs(len(y) - 16000) <= 1
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(y)) / 16000)
    np.testing.assert_allclose(y[500:-500], ref[500:-500], atol=2e-3)


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = _loud(9000, 1), _loud(9000, 2)
    sf.write(str(tmp_path / "st.wav"), np.stack([left, right], 1), 16000, subtype="FLOAT")
    y, _ = read_audio(tmp_path / "st.wav")
    np.testing.assert_allclose(y, (left.astype(np.float64) + right) / 2, atol=1e-7)


def test_silence_trimming(tmp_path):
    sig = _loud(2 * 8000 + 500, 7)
    rng = np.random.default_rng(0)
    padded = np.concatenate([np.zeros(6000), 1e-4 * rng.standard_normal(3000), sig,
                             np.zeros(7900)]).astype(np.float32)
    np.testing.assert_array_equal(trim_silence(padded), sig)
    assert trim_silence(np.zeros(100)).size == 0
    _write(tmp_path / "pad.wav", padded)
    for i in range(2):
        _write(tmp_path / f"other{i}.wav", _loud(8000, 10 + i))
    # Untrimmed, pad.wav would give 3 rows; trimmed it gives exactly the 2 rows of `sig`.
    for seed in range(6):
        d = load_audio(tmp_path, seed=seed)
        for split in ("train", "valid", "test"):
            if "pad.wav" in d.info["files"][split]:
                k = d.info["files"][split].index("pad.wav")
                assert d.info["rows_per_file"][split][k] == 2
                first = sum(d.info["rows_per_file"][split][:k])
                np.testing.assert_allclose(frames_to_waveform(d.split(split)[first], d.info),
                                           sig[:8000], atol=1e-6)


def test_short_file_skipped_with_warning(tmp_path, caplog):
    for i in range(3):
        _write(tmp_path / f"x{i}.wav", _loud(8000, i))
    _write(tmp_path / "short.wav", _loud(7999, 9))
    with caplog.at_level(logging.WARNING, logger="tfhier.data.audio"):
        d = load_audio(tmp_path)
    assert d.info["skipped"] == ["short.wav"]
    assert any("short.wav" in r.getMessage() for r in caplog.records)


def _three_good(tmp_path):
    for i in range(3):
        _write(tmp_path / f"g{i}.wav", _loud(8000, i))


def test_non_audio_file_named(tmp_path):
    _three_good(tmp_path)
    bad = tmp_path / "sub" / "text.wav"
    bad.parent.mkdir()
    bad.write_text("this is not audio\n" * 100)
    with pytest.raises(DataError) as err:
        load_audio(tmp_path)
    assert str(bad) in str(err.value)


@needs_lj
@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_truncated_file_named(tmp_path, fmt):
    _three_good(tmp_path)
    src = LJ / "LJ001-0002.wav"
    if fmt == "wav":
        raw = src.read_bytes()
    else:
        x, r = sf.read(str(src))
        tmp = tmp_path.parent / f"{tmp_path.name}_full.{fmt}"
        sf.write(str(tmp), x, r)
        raw = tmp.read_bytes()
    bad = tmp_path / f"cut.{fmt}"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as err:
        load_audio(tmp_path)
    assert str(bad) in str(err.value)


def test_header_only_wav_named(tmp_path):
    _three_good(tmp_path)
    raw = (tmp_path / "g0.wav").read_bytes()
    bad = tmp_path / "hdr.wav"
    bad.write_bytes(raw[:30])
    with pytest.raises(DataError) as err:
        load_audio(tmp_path)
    assert str(bad) in str(err.value)


def test_directory_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_audio(tmp_path / "absent")
    (tmp_path / "metadata.csv").write_text("a|b\n")
    with pytest.raises(DataError, match="no audio files"):
        load_audio(tmp_path)


def test_flag_errors(tmp_path):
    _three_good(tmp_path)
    with pytest.raises(DataError, match="frame_width"):
        load_audio(tmp_path, frame_width=300)
    with pytest.raises(DataError, match="row_seconds"):
        load_audio(tmp_path, row_seconds=0.00001)


@needs_lj
def test_other_frame_widths_and_rates(tmp_path):
    for name in sorted(p.name for p in LJ.glob("*.wav"))[:4]:
        (tmp_path / name).symlink_to(LJ / name)
    d = load_audio(tmp_path, frame_width=2, sample_rate=8000, row_seconds=0.5)
    assert d.train[0].shape == (2000, 2)
    wave = frames_to_waveform(d.train[0], d.info)
    np.testing.assert_allclose(wave[2 * 5:2 * 6], d.train[0][5] * d.info["std"] + d.info["mean"],
                               rtol=1e-6, atol=1e-7)
