"""IAM-OnDB loader, checked against a regex reading of the XML (not the loader's parser)."""

import hashlib
import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfhier.data.base import DataError
from tfhier.data.iam_ondb import load_iam_ondb

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "iam_ondb"
pytestmark = pytest.mark.skipif(not (SAMPLE / "lineStrokes").is_dir(),
                                reason=f"IAM-OnDB sample not found at {SAMPLE}")
SPLITS = ("train", "valid", "test")


def regex_strokes(path):
    """Strokes as lists of (x, y) ints, read with regexes."""
    text = Path(path).read_text(encoding="latin-1")
    return [[(int(x), int(y)) for x, y in re.findall(r'<Point x="(-?\d+)" y="(-?\d+)"', body)]
            for body in re.findall(r"<Stroke\b[^>]*>(.*?)</Stroke>", text, re.S)]


def sample_files():
    return {p.stem: p for p in (SAMPLE / "lineStrokes").rglob("*.xml")}


def form_of(line_id):
    return line_id.rsplit("-", 1)[0]


@pytest.fixture(scope="module")
def data():
    return load_iam_ondb(SAMPLE)


def test_all_lines_load_with_format(data):
    files = sample_files()
    assert len(files) == 388
    ids = [i for s in SPLITS for i in data.info["line_ids"][s]]
    assert sorted(ids) == sorted(files)
    assert (data.name, data.kind, data.feature_dim) == ("iam_ondb", "handwriting", 3)
    for split in SPLITS:
        seqs = data.split(split)
        assert len(seqs) == len(data.info["line_ids"][split]) == len(data.info["start_points"][split])
        for line_id, seq in zip(data.info["line_ids"][split], seqs):
            n_points = sum(len(s) for s in regex_strokes(files[line_id]))
            assert seq.shape == (n_points - 1, 3) and seq.dtype == np.float32


def test_offsets_rebuild_xml_coordinates_and_pen_on_stroke_ends(data):
    files = sample_files()
    scale = data.info["offset_scale"]
    for split in SPLITS:
        for k in range(0, len(data.split(split)), max(1, len(data.split(split)) // 4)):
            line_id = data.info["line_ids"][split][k]
            strokes = regex_strokes(files[line_id])
            expected = np.array([p for s in strokes for p in s], dtype=np.float64) * [1, -1]
            seq = data.split(split)[k].astype(np.float64)
            start = data.info["start_points"][split][k]
            rebuilt = np.concatenate([start[None], start + np.cumsum(seq[:, :2] * scale, axis=0)])
            np.testing.assert_allclose(rebuilt, expected, atol=1e-2)
            np.testing.assert_array_equal(np.rint(rebuilt), expected)
            last_points = np.cumsum([len(s) for s in strokes]) - 1
            expected_pen = np.zeros(len(expected) - 1)
            expected_pen[last_points[last_points > 0] - 1] = 1.0
            np.testing.assert_array_equal(seq[:, 2], expected_pen)


def test_offset_scale_is_pooled_std_of_raw_training_offsets(data):
    files = sample_files()
    raw = []
    for line_id in data.info["line_ids"]["train"]:
        points = np.array([p for s in regex_strokes(files[line_id]) for p in s], dtype=np.float64)
        raw.append((np.diff(points, axis=0) * [1, -1]).ravel())
    assert data.info["offset_scale"] == pytest.approx(np.concatenate(raw).std(), rel=1e-9)
    scaled = np.concatenate([s[:, :2] for s in data.train]).astype(np.float64)
    assert scaled.std() == pytest.approx(1.0, rel=1e-5)


def test_fallback_split_follows_md5_order_and_is_stable(data):
    forms = sorted({form_of(i) for i in sample_files()})
    ordered = sorted(forms, key=lambda f: hashlib.md5(f"0:{f}".encode()).hexdigest())
    k = math.ceil(0.05 * len(forms))
    expected = {"test": set(ordered[:k]), "valid": set(ordered[k:2 * k]), "train": set(ordered[2 * k:])}
    for split in SPLITS:
        assert {form_of(i) for i in data.info["line_ids"][split]} == expected[split]
        assert expected[split]
    again = load_iam_ondb(SAMPLE)
    assert again.info["line_ids"] == data.info["line_ids"]
    reseeded = load_iam_ondb(SAMPLE, seed=1)
    assert reseeded.info["line_ids"]["test"] != data.info["line_ids"]["test"]


def test_fallback_split_unchanged_when_lines_are_added(tmp_path):
    """A form's split depends on the set of forms, not on how many lines each has."""
    files = sample_files()
    forms = sorted({form_of(i) for i in files})[:12]
    (tmp_path / "lineStrokes").mkdir()
    for line_id, path in files.items():
        if form_of(line_id) in forms and line_id.endswith("-01"):
            shutil.copy(path, tmp_path / "lineStrokes" / path.name)
    fewer = load_iam_ondb(tmp_path)
    for line_id, path in files.items():
        if form_of(line_id) in forms:
            shutil.copy(path, tmp_path / "lineStrokes" / path.name)
    more = load_iam_ondb(tmp_path)
    for split in SPLITS:
        assert {form_of(i) for i in fewer.info["line_ids"][split]} == \
            {form_of(i) for i in more.info["line_ids"][split]}
        assert fewer.split(split)


def test_task_files_decide_the_split(tmp_path, caplog):
    (tmp_path / "lineStrokes").symlink_to(SAMPLE / "lineStrokes")
    files = sample_files()
    forms = sorted({form_of(i) for i in files})
    chosen = {"trainset.txt": forms[:6], "testset_v.txt": forms[6:8], "testset_t.txt": forms[8:9],
              "testset_f.txt": forms[9:11]}
    for name, listed in chosen.items():
        (tmp_path / name).write_text("\n".join(listed) + "\n")
    with caplog.at_level(logging.INFO, logger="absl"):
        data = load_iam_ondb(tmp_path)
    expected = {"train": set(forms[:6]), "valid": set(forms[6:9]), "test": set(forms[9:11])}
    for split in SPLITS:
        ids = data.info["line_ids"][split]
        assert sorted(ids) == sorted(i for i in files if form_of(i) in expected[split])
    assert "left out" in caplog.text


def test_augment_perturbs_offsets_by_at_most_half_a_raw_unit(data):
    seq = data.train[0]
    bound = 0.5 / data.info["offset_scale"]
    first = data.train_augment(tf.constant(seq), tf.constant([1, 2], tf.int64)).numpy()
    second = data.train_augment(tf.constant(seq), tf.constant([1, 3], tf.int64)).numpy()
    again = data.train_augment(tf.constant(seq), tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(first, again)  # stateless: the seed decides the noise
    for out in (first, second):
        assert out.shape == seq.shape and out.dtype == np.float32
        delta = out[:, :2] - seq[:, :2]
        assert np.abs(delta).max() <= bound * (1 + 1e-5)
        assert np.abs(delta).max() > 0.5 * bound
        np.testing.assert_array_equal(out[:, 2], seq[:, 2])
    assert not np.array_equal(first, second)


def test_missing_and_empty_dirs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_iam_ondb(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"no lineStrokes/\*\*/\*\.xml"):
        load_iam_ondb(tmp_path)


def copy_forms(tmp_path, n_forms):
    """Copies the first line of the first n forms; returns the copied paths."""
    files = sample_files()
    firsts = sorted(p for i, p in files.items() if i.endswith("-01"))[:n_forms]
    (tmp_path / "lineStrokes" / "x").mkdir(parents=True)
    return [Path(shutil.copy(p, tmp_path / "lineStrokes" / "x" / p.name)) for p in firsts]


@pytest.mark.parametrize("damage", ["malformed", "truncated", "bad_point"])
def test_bad_xml_names_the_file(tmp_path, damage):
    target = copy_forms(tmp_path, 3)[1]
    text = target.read_bytes()
    if damage == "malformed":
        text = text.replace(b"</Stroke>", b"</Strok>", 1)
    elif damage == "truncated":
        text = text[: len(text) // 2]
    else:
        text = re.sub(rb'<Point x="\d+"', b'<Point x="12.5"', text, count=1)
    target.write_bytes(text)
    with pytest.raises(DataError, match=re.escape(target.name)):
        load_iam_ondb(tmp_path)


def test_short_line_skipped_with_warning(tmp_path, caplog):
    paths = copy_forms(tmp_path, 4)
    text = paths[0].read_text(encoding="latin-1")
    one_point = re.sub(r"<StrokeSet>.*</StrokeSet>",
                       '<StrokeSet><Stroke><Point x="1" y="2" time="0"/></Stroke></StrokeSet>', text, flags=re.S)
    paths[0].write_text(one_point, encoding="latin-1")
    with caplog.at_level(logging.WARNING, logger="absl"):
        data = load_iam_ondb(tmp_path)
    assert paths[0].name in caplog.text
    assert sum(len(data.split(s)) for s in SPLITS) == 3


def test_too_few_forms_gives_an_empty_split_error(tmp_path):
    copy_forms(tmp_path, 2)
    with pytest.raises(DataError, match="split is empty"):
        load_iam_ondb(tmp_path)
