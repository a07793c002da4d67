"""A user's own sequences (--dataset=sequences): formats, refusals, splits, kind, standardisation, the
data-source registry and its flags.  Files are written to a temporary folder; nothing here trains."""

import hashlib
import os
import pickle

import numpy as np
import pytest

from tfhier.data import DataError, REGISTRY, all_sources, get_source, load_dataset
from tfhier.data import own
from tfhier.data.units import to_data_units, to_model_units


def write_csv(path, rows, header=None, delimiter=","):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    lines = [delimiter.join(header)] if header else []
    lines += [delimiter.join(repr(float(v)) for v in row) for row in rows]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def csv_folder(root, n=12, dim=3, seed=0, header=("a", "b", "c"), subfolders=False, binary=False):
    rng = np.random.default_rng(seed)
    raw = {}
    for i in range(n):
        length = int(rng.integers(5, 30))
        x = (rng.random([length, dim]) > 0.5).astype(float) if binary else \
            rng.normal([100.0, -3.0, 0.5][:dim], [10.0, 0.1, 2.0][:dim], [length, dim])
        split = ("train", "train", "valid", "test")[i % 4] if subfolders else ""
        name = os.path.join(split, f"rec_{i:03d}.csv") if split else f"rec_{i:03d}.csv"
        write_csv(os.path.join(root, name), x, header)
        raw[name] = x
    return raw


# ------------------------------------------------------------------------------------ CSV parsing

def test_header_is_detected_and_kept(tmp_path):
    write_csv(tmp_path / "h.csv", [[1, 2], [3, 4]], header=["acc_x", "acc_y"])
    write_csv(tmp_path / "n.csv", [[1, 2], [3, 4]])
    x, names, _ = own.read_csv(tmp_path / "h.csv")
    assert names == ["acc_x", "acc_y"] and x.tolist() == [[1, 2], [3, 4]]
    x, names, _ = own.read_csv(tmp_path / "n.csv")
    assert names is None and x.shape == (2, 2)
    # a numeric header is data unless said otherwise
    x, names, _ = own.read_csv(tmp_path / "n.csv", header="yes")
    assert names == ["1.0", "2.0"] and x.shape == (1, 2)


@pytest.mark.parametrize("delimiter", [";", "\t", "|", " "])
def test_delimiter_is_detected(tmp_path, delimiter):
    p = tmp_path / "d.csv"
    p.write_text(f"x{delimiter}y\n1.5{delimiter}-2\n3{delimiter}4e-3\n")
    x, names, used = own.read_csv(p)
    assert names == ["x", "y"] and np.allclose(x, [[1.5, -2], [3, 4e-3]])


@pytest.mark.parametrize("content, message", [
    ("a,b\n1,2\n3\n", r"r\.csv, line 3: 1 values, expected 2"),
    ("a,b\n1,2\n3,high\n", r"r\.csv, line 3, column 2 \(b\): 'high', not a number"),
    ("a,b\n1,2\n3,\n", r"r\.csv, line 3, column 2 \(b\): an empty cell"),
    ("a,b\n1,2\n3,nan\n", r"r\.csv, line 3, column 2: 'nan' \(NaN or infinite"),
    ("a,b\n1,inf\n", r"r\.csv, line 2, column 2: 'inf' \(NaN or infinite"),
    ("", r"r\.csv: the file is empty"),
    ("\n\n", r"r\.csv: the file is empty"),
    ("a,b\n", r"r\.csv: only a header line"),
])
def test_bad_csv_is_refused_naming_file_and_line(tmp_path, content, message):
    (tmp_path / "r.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        own.read_csv(tmp_path / "r.csv")


def test_bad_file_in_a_folder_is_named(tmp_path):
    csv_folder(tmp_path, n=6)
    (tmp_path / "zz_bad.csv").write_text("a,b,c\n1,2,3\n4,5\n")
    with pytest.raises(DataError, match=r"zz_bad\.csv, line 3"):
        load_dataset("sequences", str(tmp_path))
    (tmp_path / "zz_bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"2 channels, but .* has 3|header .* differs"):
        load_dataset("sequences", str(tmp_path))


def test_folder_without_usable_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="holds no usable file"):
        load_dataset("sequences", str(tmp_path))
    np.save(tmp_path / "a.npy", np.zeros([3, 2]))
    write_csv(tmp_path / "b.csv", [[1, 2]])
    with pytest.raises(DataError, match="both .csv and .npy"):
        load_dataset("sequences", str(tmp_path))


# ---------------------------------------------------------------------------------------------- splits

def test_hash_split_is_stable_when_files_are_added(tmp_path):
    names = [f"rec_{i:04d}.csv" for i in range(60)]
    before = own.hash_split(names, 0.2, 0.1)
    after = own.hash_split(names + [f"new_{i:04d}.csv" for i in range(200)], 0.2, 0.1)
    where_before = {n: s for s, ns in before.items() for n in ns}
    where_after = {n: s for s, ns in after.items() for n in ns}
    assert all(where_after[n] == where_before[n] for n in names)
    # the split is the documented function of the name alone (an independent computation)
    for n in names:
        u = int(hashlib.sha256(n.encode()).hexdigest()[:15], 16) / 16 ** 15
        assert where_before[n] == ("test" if u < 0.1 else "valid" if u < 0.3 else "train")
    # and the fractions hold roughly over many names
    many = own.hash_split([f"f{i}" for i in range(5000)], 0.2, 0.1)
    assert abs(len(many["test"]) / 5000 - 0.1) < 0.02 and abs(len(many["valid"]) / 5000 - 0.2) < 0.02


def test_split_subfolders_and_a_missing_valid_folder(tmp_path):
    raw = csv_folder(tmp_path, n=16, subfolders=True)
    data = load_dataset("sequences", str(tmp_path))
    names = data.info["sequence_names"]
    assert sorted(names["test"]) == sorted(n for n in raw if n.startswith("test"))
    assert sorted(names["valid"]) == sorted(n for n in raw if n.startswith("valid"))
    # without valid/: carved out of train/, test/ kept as it is
    import shutil

    shutil.rmtree(tmp_path / "valid")
    data = load_dataset("sequences", str(tmp_path), valid_fraction=0.3)
    names = data.info["sequence_names"]
    assert names["valid"] and all(n.startswith("train") for n in names["valid"])
    assert sorted(names["test"]) == sorted(n for n in raw if n.startswith("test"))
    assert not set(names["valid"]) & set(names["train"])


def test_tiny_folder_still_fills_every_split(tmp_path):
    csv_folder(tmp_path, n=3)
    data = load_dataset("sequences", str(tmp_path))
    assert len(data.train) == len(data.valid) == len(data.test) == 1
    for f in list(tmp_path.iterdir())[1:]:
        f.unlink()
    with pytest.raises(DataError, match="split is empty"):
        load_dataset("sequences", str(tmp_path))


# -------------------------------------------------------------------------- kind and standardisation

def test_real_data_are_standardised_by_training_statistics_and_undone_exactly(tmp_path):
    raw = csv_folder(tmp_path, n=20)
    data = load_dataset("sequences", str(tmp_path))
    assert data.kind == "real" and data.feature_dim == 3 and data.info["standardized"]
    assert data.info["channel_names"] == ["a", "b", "c"]
    train_raw = np.concatenate([np.loadtxt(tmp_path / n, delimiter=",", skiprows=1)
                                for n in data.info["sequence_names"]["train"]])
    assert np.allclose(data.info["channel_mean"], train_raw.mean(0)) and \
        np.allclose(data.info["channel_std"], train_raw.std(0))
    model = np.concatenate(data.train)
    assert np.allclose(model.mean(0), 0, atol=1e-5) and np.allclose(model.std(0), 1, atol=1e-4)
    for split in ("train", "valid", "test"):
        for name, x in zip(data.info["sequence_names"][split], data.split(split)):
            assert np.allclose(to_data_units(x, data.info), raw[name], rtol=1e-5, atol=1e-4)
            assert np.allclose(to_model_units(raw[name], data.info), x, atol=1e-5)
    off = load_dataset("sequences", str(tmp_path), standardize=False)
    assert not off.info["standardized"] and "channel_mean" not in off.info
    assert np.allclose(to_data_units(off.train[0], off.info), off.train[0])


def test_binary_data_are_detected_and_never_standardised(tmp_path):
    csv_folder(tmp_path, n=8, binary=True, header=None)
    data = load_dataset("sequences", str(tmp_path))
    assert data.kind == "binary" and not data.info["standardized"]
    assert set(np.unique(np.concatenate(data.train))) <= {0.0, 1.0}
    # one value that is neither 0 nor 1 makes the data real
    write_csv(tmp_path / "x.csv", [[0, 1, 0.5]])
    assert load_dataset("sequences", str(tmp_path)).kind == "real"


def test_samples_are_written_back_in_the_data_format_and_units(tmp_path):
    from tfhier import samples

    csv_folder(tmp_path / "d", n=8)
    data = load_dataset("sequences", str(tmp_path / "d"))
    x = np.random.default_rng(0).normal(size=[2, 7, 3]).astype(np.float32)
    png = samples.save_samples(x, data.kind, data.info, str(tmp_path / "out" / "s"))
    assert png.endswith(".png") and os.path.getsize(png) > 1000
    text = (tmp_path / "out" / "s_1.csv").read_text().splitlines()
    assert text[0] == "a,b,c"
    back = np.loadtxt(tmp_path / "out" / "s_1.csv", delimiter=",", skiprows=1)
    expect = x[1] * np.array(data.info["channel_std"]) + np.array(data.info["channel_mean"])
    assert np.allclose(back, expect, rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------------------- npy / npz

def test_npy_folder(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(8):
        np.save(tmp_path / f"s{i}.npy", rng.normal(size=[10 + i, 2]) if i else rng.normal(size=[9]))
    with pytest.raises(DataError, match=r"s0\.npy: 1 channels, but|s\d\.npy: 2 channels, but"):
        load_dataset("sequences", str(tmp_path))
    np.save(tmp_path / "s0.npy", rng.normal(size=[9, 2]))
    data = load_dataset("sequences", str(tmp_path))
    assert data.feature_dim == 2 and data.info["format"] == "npy"
    bad = rng.normal(size=[6, 2])
    bad[4, 1] = np.nan
    np.save(tmp_path / "s9.npy", bad)
    with pytest.raises(DataError, match=r"s9\.npy: step 4 \(row 4\), channel 1 is nan"):
        load_dataset("sequences", str(tmp_path))
    np.save(tmp_path / "s9.npy", np.zeros([2, 2, 2]))
    with pytest.raises(DataError, match=r"s9\.npy: an array of shape \(2, 2, 2\)"):
        load_dataset("sequences", str(tmp_path))


def test_npz_with_split_lists_and_with_one_array_per_sequence(tmp_path):
    rng = np.random.default_rng(2)
    seqs = [rng.normal(size=[int(rng.integers(4, 12)), 2]) for _ in range(10)]
    lists = np.empty(6, dtype=object)
    lists[:] = seqs[:6]
    tests = np.empty(2, dtype=object)
    tests[:] = seqs[8:]
    np.savez(tmp_path / "splits.npz", train=lists, test=tests, valid=np.stack([seqs[6][:4], seqs[7][:4]]))
    data = load_dataset("sequences", str(tmp_path / "splits.npz"), standardize=False)
    assert len(data.train) == 6 and len(data.valid) == 2 and len(data.test) == 2
    assert np.allclose(data.test[1], seqs[9])
    np.savez(tmp_path / "each.npz", **{f"walk_{i}": s for i, s in enumerate(seqs)})
    data = load_dataset("sequences", str(tmp_path / "each.npz"), standardize=False)
    assert sum(len(data.split(s)) for s in ("train", "valid", "test")) == 10


def test_npz_of_the_wrong_structure_is_refused(tmp_path):
    a = np.zeros([5, 2])
    np.savez(tmp_path / "mixed.npz", train=np.stack([a, a]), extra=a)
    with pytest.raises(DataError, match=r"mixed\.npz: keys \['extra', 'train'\]"):
        load_dataset("sequences", str(tmp_path / "mixed.npz"))
    np.savez(tmp_path / "flat.npz", train=a, test=a)
    with pytest.raises(DataError, match=r"flat\.npz\['t\w+'\]: an array of shape \(5, 2\); expected \[N, T, D\]"):
        load_dataset("sequences", str(tmp_path / "flat.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz"):
        load_dataset("sequences", str(tmp_path / "junk.npz"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_npz_object_array_never_runs_code(tmp_path):
    evil = np.empty(2, dtype=object)
    evil[:] = [np.zeros([3, 2]), _Evil()]
    np.savez(tmp_path / "evil.npz", train=evil)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(DataError, match="refusing to unpickle global"):
            load_dataset("sequences", str(tmp_path / "evil.npz"))
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "PWNED").exists()
    assert pickle.dumps(_Evil())  # the payload is a real pickle (the refusal is not a pickling error)


# ------------------------------------------------------------------------------- registry and flags

def test_every_registered_source_declares_itself():
    for name in REGISTRY:
        source = get_source(name)
        assert source.name == name and source.description
        assert len({o.name for o in source.options}) == len(source.options)


def test_a_source_s_flag_given_to_another_source_is_refused():
    from absl import flags

    from tfhier.data import sources

    fv = flags.FlagValues()
    flags.DEFINE_string("dataset", "hershey", "", flag_values=fv)
    table = sources.define_flags(all_sources(), fv, module_name="test")
    fv(["prog", "--delimiter=;", "--standardize=false"])
    with pytest.raises(DataError, match=r"--delimiter is an option of --dataset=sequences; --dataset=hershey "
                                        r"does not use it"):
        sources.options_from_flags(get_source("hershey"), table, fv)
    opts = sources.options_from_flags(get_source("sequences"), table, fv)
    assert opts["delimiter"] == ";" and opts["standardize"] is False and opts["valid_fraction"] == 0.1
    fv2 = flags.FlagValues()
    table = sources.define_flags(all_sources(), fv2, module_name="test")
    fv2(["prog", "--frame_width=20"])
    with pytest.raises(DataError, match=r"--frame_width is an option of --dataset=audio; --dataset=midi"):
        sources.options_from_flags(get_source("midi"), table, fv2)


def test_train_help_groups_flags_by_purpose():
    import importlib

    text = importlib.import_module("tfhier.cli.train").help_text()
    titles = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles[:5] == ["run: what to train, on what, where:", "training:", "objective:", "devices:",
                          "logging, checkpoints and samples:"], titles

    def section(start):
        body = text[text.index(start):]
        return body[:body.index("\n\n")]

    assert "--delimiter:" in section("data source --dataset=sequences") and "--frame_width" not in \
        section("data source --dataset=sequences")
    assert "--frame_width:" in section("data source --dataset=audio")
    assert "--steps_per_beat:" in section("data source --dataset=midi")
    assert "--strategy:" in section("devices:") and "--learning_rate:" in section("training:")
    assert "--rnn_units:" in text[text.index("models: "):]


def test_export_signatures_speak_the_data_units():
    """The SavedModel's functions with the run's standardisation against the model in its own units (same
    seeds, so the same noise): inputs standardised, outputs mapped back, densities shifted by -sum log std."""
    import tensorflow as tf

    from tfhier import serving
    from tfhier.models import build_model

    info = {"channel_mean": [1000.0, -2.0], "channel_std": [50.0, 0.01]}
    units = serving.DataUnits.of(info)
    model = build_model("stcn", 2, dict(channels=[8, 6], dilations=[1, 2], latent_dims=[2, 3], latent_hidden=[8],
                                        output_hidden=[8], head="gaussian")).build_for_data()
    rng = np.random.default_rng(0)
    x_data = np.stack([1000 + 50 * rng.normal(size=[12]), -2 + 0.01 * rng.normal(size=[12])], -1)[None]
    x_data = x_data.astype(np.float32)
    seed = tf.constant([3, 4], tf.int32)
    lengths = tf.constant([12], tf.int32)
    got = serving.score_fn(model, units=units)(tf.constant(x_data), lengths, seed)
    z = (x_data - np.array([1000.0, -2.0], np.float32)) / np.array([50.0, 0.01], np.float32)
    ref = model.score(tf.constant(z), tf.ones([1, 12]), seed)
    shift = -12 * (np.log(50.0) + np.log(0.01))
    assert np.allclose(got["elbo"].numpy(), ref["elbo"].numpy() + shift, rtol=1e-5)
    assert np.allclose(got["nll"].numpy(), ref["nll"].numpy() - shift, rtol=1e-5)
    limits = serving.Limits(max_steps=20, max_samples=4)
    s = serving.sample_fn(model, limits, units)(tf.constant(2), tf.constant(5), seed, tf.constant(1.0))["samples"]
    ref = model.generate(2, 5, seed, 1.0).numpy()
    assert np.allclose(s.numpy(), to_data_units(ref, info), rtol=1e-5, atol=1e-4)
    assert serving.DataUnits.of({}) is None


def test_columns_select_channels_and_a_trailing_delimiter_is_no_column(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("time;x;y;\n2024-01-01 10:00;1.5;2;\n2024-01-01 10:01;3;4;\n")
    with pytest.raises(DataError, match=r"t\.csv, line 2, column 1 \(time\): '2024-01-01 10:00', not a number"):
        own.read_csv(p)
    x, names, _ = own.read_csv(p, columns="y,x")
    assert names == ["y", "x"] and x.tolist() == [[2, 1.5], [4, 3]]
    x, names, _ = own.read_csv(p, columns="2")
    assert names == ["x"] and x.tolist() == [[1.5], [3]]
    with pytest.raises(DataError, match=r"--columns names 'z', which is not a column"):
        own.read_csv(p, columns="x,z")
