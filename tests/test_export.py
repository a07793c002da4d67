"""SavedModel export for TF Serving (tfhier/serving.py, export/export.py, export/client.py).

One tiny MS-STCN run is trained for the module and exported once.  The export
is reloaded in a fresh process (with neither tfhier nor TFP imported) both
with ``tf.saved_model.load`` and through the TF1 session loader, feeding and
fetching the SignatureDef tensor names as TF Serving does, and compared with
the in-process model.  The client is checked against a local stand-in for TF
Serving's REST API (loopback, in a thread) that runs each request on the
exported SavedModel.
"""

import ast
import contextlib
import http.server
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfhier import runs, serving, training
from tfhier.data import load_dataset

REPO = Path(__file__).resolve().parents[1]

MODEL = dict(head="handwriting", head_components=2, channels=[8, 8], latent_dims=[2, 2], strides=[1, 2],
             bu_dilations=[[1, 2], [1]], td_blocks=1)
FLAGS_TEXT = "--dataset=hershey\n--num_lines=16\n--seed=1\n"
TRAIN_STEPS = 6
LIMITS = serving.Limits(max_steps=64, max_samples=8)
LENGTHS = np.array([13, 9, 5], np.int32)  # T = 13: not a multiple of the model's time_multiple (2)
SCORE_SEED = np.array([5, 6], np.int32)
SAMPLE = dict(num_samples=3, num_steps=17, seed=np.array([7, 8], np.int32), temperature=0.8)
CONTINUE = dict(num_steps=11, seed=np.array([3, 4], np.int32), temperature=0.9)


def batch_x():
    """Three handwriting-like sequences [3, 13, 3], padded with (finite) garbage after LENGTHS."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 13, 3)).astype(np.float32)
    x[..., 2] = rng.random((3, 13)) < 0.2
    return x


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    data = load_dataset("hershey", seed=1, num_lines=16)
    run_dir = str(tmp_path_factory.mktemp("export") / "run")
    settings = training.TrainSettings(train_steps=TRAIN_STEPS, batch_size=8, seq_len=64, learning_rate=3e-3,
                                      eval_every=TRAIN_STEPS, eval_batches=1, log_every=TRAIN_STEPS,
                                      checkpoint_every=TRAIN_STEPS, sample_every=10_000, num_samples=0,
                                      free_bits=0.02, seed=1, verbose=0)
    training.train(run_dir, "msstcn", MODEL, data, settings, flags_text=FLAGS_TEXT)
    return run_dir


def _export_cli(*args):
    return subprocess.Popen([sys.executable, str(REPO / "export" / "export.py"), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _communicate(proc, timeout=300):
    """``proc.communicate()``; the process is killed if it runs past ``timeout`` seconds."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """The run exported by export.py into a model folder that already holds versions: it must pick 4."""
    base = tmp_path_factory.mktemp("models")
    for name in ("3", "notes"):  # "notes" is not an integer: ignored, as TF Serving ignores it
        (base / "run" / name).mkdir(parents=True)
    proc = _export_cli(f"--run_dir={run_dir}", f"--export_base={base}", f"--max_steps={LIMITS.max_steps}",
                       f"--max_samples={LIMITS.max_samples}")
    stdout, stderr = _communicate(proc)
    assert proc.returncode == 0, stderr[-3000:]
    path = str(base / "run" / "4")
    assert f"as model 'run' version 4: {path}" in stdout, stdout
    return types.SimpleNamespace(path=path, base=str(base), version=4)


@pytest.fixture(scope="module")
def model(run_dir):
    return runs.load_model(run_dir)[0]


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported.path)


@pytest.fixture(scope="module")
def expected(model):
    """In-process results for the inputs the reload script sends."""
    x = batch_x()
    mask = tf.sequence_mask(LENGTHS, x.shape[1], dtype=tf.float32)
    score = {k: v.numpy() for k, v in model.score(tf.constant(x), mask, tf.constant(SCORE_SEED)).items()}
    samples = model.generate(SAMPLE["num_samples"], SAMPLE["num_steps"], tf.constant(SAMPLE["seed"]),
                             SAMPLE["temperature"]).numpy()
    continuations = model.continue_sequences(tf.constant(x), tf.constant(LENGTHS), CONTINUE["num_steps"],
                                             tf.constant(CONTINUE["seed"]), CONTINUE["temperature"]).numpy()
    return {**score, "samples": samples, "continuations": continuations}


# ------------------------------------------------------------------------------ fresh-process reload

RELOAD_SCRIPT = r'''
import json, sys
import numpy as np
import tensorflow as tf

path, inputs_path, out_path = sys.argv[1:4]
inputs = dict(np.load(inputs_path))
requests = {
    "serving_default": {"x": inputs["x"], "lengths": inputs["lengths"], "seed": inputs["score_seed"]},
    "sample": {"num_samples": np.int32(inputs["num_samples"]), "num_steps": np.int32(inputs["sample_steps"]),
               "seed": inputs["sample_seed"], "temperature": np.float32(inputs["sample_temperature"])},
    "continue": {"prefix": inputs["x"], "prefix_lengths": inputs["lengths"],
                 "num_steps": np.int32(inputs["continue_steps"]), "seed": inputs["continue_seed"],
                 "temperature": np.float32(inputs["continue_temperature"])},
}
bad = {
    "num_steps": ("sample", {**requests["sample"], "num_steps": np.int32(2**31 - 1)}),
    "num_samples": ("sample", {**requests["sample"], "num_samples": np.int32(2**31 - 1),
                               "num_steps": np.int32(2**31 - 1)}),
    "temperature": ("sample", {**requests["sample"], "temperature": np.ones([2], np.float32)}),
    "x": ("serving_default", {**requests["serving_default"], "x": np.zeros([3, 5, 4], np.float32)}),
    "x_rank": ("serving_default", {**requests["serving_default"], "x": np.zeros([13, 3], np.float32)}),
    "lengths": ("serving_default", {**requests["serving_default"], "lengths": inputs["lengths"][None]}),
    "seed": ("serving_default", {**requests["serving_default"], "seed": np.zeros([3], np.int32)}),
    "prefix_lengths": ("continue", {**requests["continue"], "prefix_lengths": inputs["lengths"] + 1}),
}
results, report = {}, {"tf2": [], "tf1": [], "tf1_errors": {}}

loaded = tf.saved_model.load(path)
for name, feeds in requests.items():
    if name not in loaded.signatures:
        continue
    out = loaded.signatures[name](**{k: tf.constant(v) for k, v in feeds.items()})
    report["tf2"].append(name)
    results.update({f"tf2/{k}": v.numpy() for k, v in out.items()})

with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    sigs = meta.signature_def
    def run(name, feeds):
        sig = sigs[name]
        fetches = {k: t.name for k, t in sig.outputs.items()}
        return sess.run(fetches, {sig.inputs[k].name: v for k, v in feeds.items()})
    for name, feeds in requests.items():
        if name not in sigs:
            continue
        report["tf1"].append(name)
        results.update({f"tf1/{k}": v for k, v in run(name, feeds).items()})
    for key, (name, feeds) in bad.items():
        try:
            run(name, feeds)
            report["tf1_errors"][key] = "no error"
        except tf.errors.InvalidArgumentError as e:
            report["tf1_errors"][key] = e.message

report["modules"] = sorted(m for m in ("tfhier", "tensorflow_probability") if m in sys.modules)
np.savez(out_path, **results)
print(json.dumps(report))
'''


def _saved_model_cli(path):
    cli = Path(sys.executable).parent / "saved_model_cli"
    assert cli.exists(), f"saved_model_cli not found next to {sys.executable}"
    return subprocess.Popen([str(cli), "show", "--dir", path, "--all"], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.fixture(scope="module")
def fresh(exported, tmp_path_factory):
    """(arrays, report, saved_model_cli output): the reload script run in a new process outside the
    repository, and ``saved_model_cli show --all`` run beside it."""
    tmp = tmp_path_factory.mktemp("fresh")
    x = batch_x()
    np.savez(tmp / "inputs.npz", x=x, lengths=LENGTHS, score_seed=SCORE_SEED, num_samples=SAMPLE["num_samples"],
             sample_steps=SAMPLE["num_steps"], sample_seed=SAMPLE["seed"], sample_temperature=SAMPLE["temperature"],
             continue_steps=CONTINUE["num_steps"], continue_seed=CONTINUE["seed"],
             continue_temperature=CONTINUE["temperature"])
    (tmp / "reload.py").write_text(RELOAD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    cli = _saved_model_cli(exported.path)
    try:
        proc = subprocess.run([sys.executable, "reload.py", exported.path, "inputs.npz", "out.npz"], cwd=tmp,
                              env=env, capture_output=True, text=True, timeout=300)
    finally:
        cli_out, cli_err = _communicate(cli)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cli.returncode == 0, cli_err[-3000:]
    return dict(np.load(tmp / "out.npz")), json.loads(proc.stdout.strip().splitlines()[-1]), cli_out


def test_fresh_process_needs_no_python_code(fresh):
    _, report, _ = fresh
    assert report["modules"] == [], "the SavedModel must run without tfhier or TFP (TF Serving has neither)"
    assert report["tf2"] == report["tf1"] == ["serving_default", "sample", "continue"]


def test_fresh_process_scoring_matches_in_process(fresh, expected):
    arrays, _, _ = fresh
    assert expected["kl"].shape == (3, 2) and expected["kl"].max() > 1e-6  # trained, not the zero-init KL
    np.testing.assert_array_equal(expected["num_steps"], LENGTHS)
    for loader in ("tf2", "tf1"):
        for key in ("elbo", "nll", "kl", "num_steps"):
            np.testing.assert_allclose(arrays[f"{loader}/{key}"], expected[key], rtol=1e-4, atol=1e-4,
                                       err_msg=f"{loader}/{key}")


def test_fresh_process_sampling_matches_in_process(fresh, expected):
    arrays, _, _ = fresh
    assert expected["samples"].shape == (3, 17, 3)
    assert expected["continuations"].shape == (3, 11, 3)
    for loader in ("tf2", "tf1"):
        np.testing.assert_allclose(arrays[f"{loader}/samples"], expected["samples"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(arrays[f"{loader}/continuations"], expected["continuations"], atol=1e-5, rtol=0)
    # Different seeds give different samples (the seed input is really used).
    assert not np.allclose(expected["samples"][0], expected["samples"][1])


def test_tf1_session_rejects_bad_input_before_allocating(fresh):
    _, report, _ = fresh
    errors = report["tf1_errors"]
    expected = {"num_steps": "num_steps must be an integer in [1, 64]",
                "num_samples": "num_samples must be an integer in [1, 8]",
                "temperature": "temperature must be a float32 scalar", "x": "x must have 3 features per step",
                "x_rank": "x must have rank 3", "lengths": "lengths must have shape [batch]",
                "seed": "seed must be two int32 numbers", "prefix_lengths": "prefix_lengths must be in [1, T]"}
    assert set(errors) == set(expected)
    for key, message in expected.items():
        assert message in errors[key], (key, errors[key])


# ------------------------------------------------------------------------------------ signatures

def test_saved_model_cli_lists_the_three_signatures(fresh):
    out = fresh[2]
    for name, inputs, outputs in [
            ("serving_default", ["x", "lengths", "seed"], ["elbo", "nll", "kl", "num_steps"]),
            ("sample", ["num_samples", "num_steps", "seed", "temperature"], ["samples"]),
            ("continue", ["prefix", "prefix_lengths", "num_steps", "seed", "temperature"], ["continuations"])]:
        section = out.split(f"signature_def['{name}']:", 1)[1].split("signature_def[", 1)[0]
        assert "Method name is: tensorflow/serving/predict" in section
        assert sorted(re.findall(r"inputs\['(\w+)'\]", section)) == sorted(inputs)
        assert sorted(re.findall(r"outputs\['(\w+)'\]", section)) == sorted(outputs)


def test_assets_extra(exported, run_dir):
    extra = Path(exported.path, "assets.extra")
    assert json.loads((extra / "config.json").read_text()) == runs.read_config(run_dir)
    info = json.loads((extra / "tfhier_export.json").read_text())
    assert info["model_name"] == "run" and info["version"] == 4
    assert info["limits"] == {"max_steps": 64, "max_samples": 8, "max_score_steps": serving.DEFAULT_MAX_SCORE_STEPS}
    assert info["data_info"]["offset_scale"] > 0 and info["feature_dim"] == 3
    assert info["checkpoint_step"] == TRAIN_STEPS and info["latent_layers"] == ["layer_1", "layer_2"]
    assert set(info["signatures"]) == {"serving_default", "sample", "continue"}
    assert info["signatures"]["serving_default"]["outputs"]["kl"]["shape"] == ["B", 2]


# ------------------------------------------------------------------------------------- bad input

def _score(x=None, lengths=None, seed=SCORE_SEED):
    x = batch_x() if x is None else x
    return dict(x=x, lengths=LENGTHS if lengths is None else lengths, seed=seed)


def _sample(**kw):
    return {**dict(num_samples=2, num_steps=5, seed=np.array([1, 2], np.int32), temperature=1.0), **kw}


def _continue(**kw):
    return {**dict(prefix=batch_x(), prefix_lengths=LENGTHS, num_steps=4, seed=np.array([1, 2], np.int32),
                   temperature=1.0), **kw}


BIG = 2**31 - 1
BAD_INPUTS = [
    ("serving_default", _score(x=np.zeros([3, 13, 4], np.float32)), r"x must have 3 features per step"),
    ("serving_default", _score(x=np.zeros([13, 3], np.float32)), r"x must have rank 3, shape \[batch, time, 3\]"),
    ("serving_default", _score(x=np.zeros([1, 3, 13, 3], np.float32)), r"x must have rank 3"),
    ("serving_default", _score(x=np.zeros([0, 13, 3], np.float32), lengths=np.zeros([0], np.int32)),
     r"x must hold at least one sequence"),
    ("serving_default", _score(lengths=np.array([13, 0, 5], np.int32)), r"lengths must be in \[1, T\]"),
    ("serving_default", _score(lengths=np.array([14, 9, 5], np.int32)), r"lengths must be in \[1, T\].*T =\] \[13\]"),
    ("serving_default", _score(lengths=np.array([13, 9], np.int32)), r"lengths must have shape \[batch\]"),
    ("serving_default", _score(lengths=np.array([[13, 9, 5]], np.int32)), r"lengths must have shape \[batch\]"),
    ("serving_default", _score(x=np.where(np.arange(13)[None, :, None] == 12, np.nan, batch_x()).astype(np.float32)),
     r"x must be finite"),
    ("serving_default", _score(seed=np.array([1, 2, 3], np.int32)), r"seed must be two int32 numbers"),
    ("sample", _sample(num_steps=65), r"num_steps must be an integer in \[1, 64\]"),
    ("sample", _sample(num_steps=0), r"num_steps must be an integer in \[1, 64\]"),
    ("sample", _sample(num_steps=-3), r"num_steps must be an integer in \[1, 64\]"),
    ("sample", _sample(num_steps=BIG), r"num_steps must be an integer in \[1, 64\]"),
    ("sample", _sample(num_steps=np.array([5, 5], np.int32)), r"num_steps must be a scalar"),
    ("sample", _sample(num_samples=9), r"num_samples must be an integer in \[1, 8\]"),
    ("sample", _sample(num_samples=0), r"num_samples must be an integer in \[1, 8\]"),
    ("sample", _sample(num_samples=BIG, num_steps=BIG), r"num_samples must be an integer in \[1, 8\]"),
    ("sample", _sample(temperature=0.0), r"temperature must be a finite number in \(0, 100\]"),
    ("sample", _sample(temperature=-1.0), r"temperature must be a finite number in \(0, 100\]"),
    ("sample", _sample(temperature=float("nan")), r"temperature must be a finite number in \(0, 100\]"),
    ("sample", _sample(temperature=1e38), r"temperature must be a finite number in \(0, 100\]"),
    ("sample", _sample(temperature=np.ones([2], np.float32)), r"temperature must be a float32 scalar"),
    ("sample", _sample(seed=np.array([1], np.int32)), r"seed must be two int32 numbers"),
    ("continue", _continue(prefix=np.zeros([3, 13, 2], np.float32)), r"prefix must have 3 features per step"),
    ("continue", _continue(prefix=np.zeros([13, 3], np.float32)), r"prefix must have rank 3"),
    ("continue", _continue(prefix_lengths=np.array([13, 14, 5], np.int32)), r"prefix_lengths must be in \[1, T\]"),
    ("continue", _continue(prefix_lengths=np.array([0, 1, 1], np.int32)), r"prefix_lengths must be in \[1, T\]"),
    ("continue", _continue(num_steps=BIG), r"num_steps must be an integer in \[1, 64\]"),
    ("continue", _continue(num_steps=0), r"num_steps must be an integer in \[1, 64\]"),
    ("continue", _continue(prefix=np.zeros([9, 2, 3], np.float32), prefix_lengths=np.ones([9], np.int32)),
     r"prefix may hold at most 8 sequences"),
    ("continue", _continue(prefix=np.zeros([1, 65, 3], np.float32), prefix_lengths=np.ones([1], np.int32)),
     r"prefix may have at most 64 steps"),
    ("continue", _continue(temperature=0.0), r"temperature must be a finite number in \(0, 100\]"),
]


@pytest.mark.parametrize("signature,inputs,message", BAD_INPUTS,
                         ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_invalid_argument_with_its_message(loaded, signature, inputs, message):
    fn = loaded.signatures[signature]
    specs = fn.structured_input_signature[1]
    feeds = {k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        fn(**feeds)


def test_limits_themselves_are_accepted(loaded):
    out = loaded.signatures["sample"](**{k: tf.constant(v) for k, v in _sample(num_samples=8, num_steps=64).items()})
    assert out["samples"].shape == (8, 64, 3)
    assert np.all(np.isfinite(out["samples"].numpy()))
    out = loaded.signatures["continue"](**{k: tf.constant(v) for k, v in _continue(num_steps=1).items()})
    assert out["continuations"].shape == (3, 1, 3)


def test_same_seed_same_samples_and_shorter_requests_are_prefixes(loaded):
    sample = loaded.signatures["sample"]
    long = sample(**{k: tf.constant(v) for k, v in _sample(num_samples=2, num_steps=20).items()})["samples"].numpy()
    again = sample(**{k: tf.constant(v) for k, v in _sample(num_samples=2, num_steps=20).items()})["samples"].numpy()
    short = sample(**{k: tf.constant(v) for k, v in _sample(num_samples=2, num_steps=7).items()})["samples"].numpy()
    other = sample(**{k: tf.constant(v) for k, v in _sample(num_samples=2, num_steps=20,
                                                           seed=np.array([1, 3], np.int32)).items()})["samples"]
    np.testing.assert_array_equal(long, again)
    np.testing.assert_allclose(short, long[:, :7], atol=1e-5, rtol=0)
    assert not np.allclose(other.numpy(), long)


def test_xla_signatures_sample_what_the_model_samples_in_process(run_dir, tmp_path):
    """The users' default export (generation steps as XLA computations; the test suite's default is plain graph
    mode, tests/conftest.py): its sample and continue signatures draw what the model draws in process with XLA
    steps."""
    result = serving.export_run(run_dir, str(tmp_path / "models"), limits=LIMITS, xla_generation=True)
    assert result.info["xla_generation"] is True
    loaded = tf.saved_model.load(result.path)
    model = runs.load_model(run_dir)[0]
    model.xla_generation = True
    request = _sample(num_samples=2, num_steps=21)
    saved = loaded.signatures["sample"](**{k: tf.constant(v) for k, v in request.items()})["samples"].numpy()
    own = model.generate(2, 21, tf.constant(request["seed"]), 1.0).numpy()
    np.testing.assert_allclose(saved, own, atol=1e-5, rtol=0)
    request = _continue(num_steps=9)
    saved = loaded.signatures["continue"](**{k: tf.constant(v) for k, v in request.items()})
    own = model.continue_sequences(tf.constant(request["prefix"]), tf.constant(request["prefix_lengths"]), 9,
                                   tf.constant(request["seed"]), 1.0).numpy()
    np.testing.assert_allclose(saved["continuations"].numpy(), own, atol=1e-5, rtol=0)


def test_models_config_parses_as_a_model_server_config():
    """export/models.config against the fields of TF Serving's ModelServerConfig it uses (text format)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

    fdp = descriptor_pb2.FileDescriptorProto(name="model_server_config_subset.proto", package="tfs", syntax="proto3")
    versions = fdp.message_type.add(name="Specific")
    versions.field.add(name="versions", number=1, type=3, label=3)  # repeated int64
    policy = fdp.message_type.add(name="ModelVersionPolicy")
    policy.field.add(name="specific", number=2, type=11, label=1, type_name=".tfs.Specific")
    config = fdp.message_type.add(name="ModelConfig")
    for number, name in ((1, "name"), (2, "base_path"), (4, "model_platform")):
        config.field.add(name=name, number=number, type=9, label=1)
    config.field.add(name="model_version_policy", number=7, type=11, label=1, type_name=".tfs.ModelVersionPolicy")
    config_list = fdp.message_type.add(name="ModelConfigList")
    config_list.field.add(name="config", number=1, type=11, label=3, type_name=".tfs.ModelConfig")
    server = fdp.message_type.add(name="ModelServerConfig")
    server.field.add(name="model_config_list", number=1, type=11, label=1, type_name=".tfs.ModelConfigList")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("tfs.ModelServerConfig"))
    text = (REPO / "export" / "models.config").read_text()
    parsed = text_format.Parse(text, cls())
    configs = list(parsed.model_config_list.config)
    assert [(c.name, c.base_path, c.model_platform) for c in configs] == [("demo", "/models/demo", "tensorflow")]
    # The commented-out version policy parses too, once uncommented.
    policy_line = next(line for line in text.splitlines() if "model_version_policy" in line)
    uncommented = text.replace(policy_line, policy_line.replace("#", "", 1))
    parsed = text_format.Parse(uncommented, cls())
    assert list(parsed.model_config_list.config[0].model_version_policy.specific.versions) == [1, 2]


# --------------------------------------------------------------------------------- export layout

def test_export_refuses_to_overwrite_and_names_versions(exported, run_dir, tmp_path):
    base = exported.base
    assert sorted(os.listdir(os.path.join(base, "run"))) == ["3", "4", "notes"]  # no temporary folder left
    with pytest.raises(serving.ExportError, match=r"already exists: refusing to overwrite version 4.*--version"):
        serving.export_run(run_dir, base, version=4)
    assert serving.plan_export(run_dir, base)[:2] == ("run", 5)
    assert serving.plan_export(run_dir, base, version=9, model_name="other")[:2] == ("other", 9)
    assert serving.plan_export(str(tmp_path / "my run#1"), str(tmp_path))[:2] == ("my_run_1", 1)
    for bad in ("", "a/b", "../x", ".hidden", "sp ace"):
        with pytest.raises(serving.ExportError, match="--model_name"):
            serving.plan_export(run_dir, str(tmp_path), model_name=bad)
    for bad in (0, -1):
        with pytest.raises(serving.ExportError, match="--version must be an integer >= 1"):
            serving.plan_export(run_dir, str(tmp_path), version=bad)
    with pytest.raises(serving.ExportError, match="--max_steps"):
        serving.export_run(run_dir, str(tmp_path), limits=serving.Limits(max_steps=0))
    assert os.listdir(tmp_path) == []


def test_failed_export_leaves_no_version(run_dir, tmp_path, monkeypatch):
    def crash(model, path, limits, extra_files=None):
        os.makedirs(os.path.join(path, "variables"))
        Path(path, "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(serving, "write_saved_model", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        serving.export_run(run_dir, str(tmp_path), model_name="m", version=3)
    assert os.listdir(tmp_path / "m") == []


def test_cli_rejects_bad_flags_with_one_clear_error(exported, run_dir, tmp_path):
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text(Path(run_dir, "config.json").read_text())
    out = tmp_path / "out"
    procs = {  # side by side; each fails before importing TensorFlow
        "exists": _export_cli(f"--run_dir={run_dir}", f"--export_base={exported.base}", "--version=4"),
        "no_ckpt": _export_cli(f"--run_dir={no_ckpt}", f"--export_base={out}"),
        "missing": _export_cli(f"--run_dir={tmp_path / 'missing'}", f"--export_base={out}"),
        "not_a_run": _export_cli(f"--run_dir={tmp_path}", f"--export_base={out}"),
        "no_base": _export_cli(f"--run_dir={run_dir}"),
        "bad_max": _export_cli(f"--run_dir={run_dir}", f"--export_base={out}", "--max_samples=0"),
        "bad_name": _export_cli(f"--run_dir={run_dir}", f"--export_base={out}", "--model_name=a/b"),
    }
    expected = {"exists": r"refusing to overwrite version 4", "no_ckpt": r"has no checkpoint",
                "missing": r"--run_dir=.*does not exist", "not_a_run": r"has no config.json",
                "no_base": r"--export_base is required", "bad_max": r"--max_samples must be an integer >= 1",
                "bad_name": r"--model_name='a/b' is not usable"}
    results = {}
    try:
        for key, proc in procs.items():
            results[key] = _communicate(proc)[1]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for key, stderr in results.items():
        proc = procs[key]
        assert proc.returncode != 0, key
        assert "Traceback" not in stderr, (key, stderr[-2000:])
        errors = [line for line in stderr.splitlines() if line.startswith("export.py: error:")]
        assert len(errors) == 1 and re.search(expected[key], errors[0]), (key, stderr[-2000:])
    assert not out.exists()
    assert sorted(os.listdir(os.path.join(exported.base, "run"))) == ["3", "4", "notes"]


# ------------------------------------------------------------------------------------------ client

def _load_client():
    spec = importlib.util.spec_from_file_location("tfhier_export_client", REPO / "export" / "client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_client_uses_the_standard_library_only():
    tree = ast.parse((REPO / "export" / "client.py").read_text())
    modules = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert modules - {"__future__"} <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


@contextlib.contextmanager
def fake_tf_serving(loaded, model_name="run"):
    """A loopback stand-in for TF Serving's REST API that runs predict requests on the loaded SavedModel.

    Like TF Serving: columnar "inputs" are converted to the signature's dtypes,
    a single-output signature's answer is the bare value, and an
    InvalidArgument error is answered with HTTP 400 and ``{"error": message}``.
    """
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            requests.append(("GET", self.path, None, None))
            self._answer(200, {"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(("POST", self.path, self.headers.get("Content-Type"), body))
            if not re.fullmatch(rf"/v1/models/{model_name}(/versions/\d+)?:predict", self.path):
                return self._answer(404, {"error": f"no model at {self.path}"})
            fn = loaded.signatures[body.get("signature_name", "serving_default")]
            specs = fn.structured_input_signature[1]
            try:
                out = fn(**{k: tf.constant(v, specs[k].dtype) for k, v in body["inputs"].items()})
            except tf.errors.InvalidArgumentError as e:
                return self._answer(400, {"error": e.message})
            outputs = {k: v.numpy().tolist() for k, v in out.items()}
            self._answer(200, {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs})

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 60
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _client(capsys, *argv):
    code = _load_client().main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_client_requests_for_each_signature(loaded, tmp_path, capsys):
    x = batch_x()
    np.savez_compressed(tmp_path / "seqs.npz", x=x, lengths=LENGTHS)
    (tmp_path / "prefix.json").write_text(json.dumps({"prefix": x[:2].tolist(), "prefix_lengths": [4, 13]}))
    np.savez(tmp_path / "samples.npz", samples=x[:2].astype(np.float64))  # as tfhier's sampler writes them
    with fake_tf_serving(loaded) as (server, requests):
        common = [f"--server={server}", "--model_name=run"]

        code, out, err = _client(capsys, *common, "sample", "--num_samples=2", "--num_steps=6", "--seed=7,8",
                                 "--temperature=0.5")
        assert code == 0, err
        assert requests[-1] == ("POST", "/v1/models/run:predict", "application/json", {
            "signature_name": "sample",
            "inputs": {"num_samples": 2, "num_steps": 6, "seed": [7, 8], "temperature": 0.5}})
        direct = loaded.signatures["sample"](num_samples=tf.constant(2), num_steps=tf.constant(6),
                                             seed=tf.constant([7, 8]), temperature=tf.constant(0.5))
        np.testing.assert_allclose(json.loads(out)["samples"], direct["samples"].numpy(), atol=1e-6)

        code, out, err = _client(capsys, *common, "--version=1", "score", f"--npz={tmp_path / 'seqs.npz'}",
                                 "--seed=5,6")
        assert code == 0, err
        _, path, _, body = requests[-1]
        assert path == "/v1/models/run/versions/1:predict"
        assert body == {"signature_name": "serving_default",
                        "inputs": {"x": x.tolist(), "lengths": LENGTHS.tolist(), "seed": [5, 6]}}
        scores = json.loads(out)
        assert set(scores) == {"elbo", "nll", "kl", "num_steps"}
        direct = loaded.signatures["serving_default"](x=tf.constant(x), lengths=tf.constant(LENGTHS),
                                                      seed=tf.constant(SCORE_SEED))
        for key in scores:
            np.testing.assert_allclose(scores[key], direct[key].numpy(), rtol=1e-6, atol=1e-6)

        code, out, err = _client(capsys, *common, "score", f"--npz={tmp_path / 'samples.npz'}")
        assert code == 0, err
        assert requests[-1][3]["inputs"]["lengths"] == [13, 13] and len(json.loads(out)["elbo"]) == 2

        code, out, err = _client(capsys, *common, "continue", f"--json={tmp_path / 'prefix.json'}",
                                 "--num_steps=3", "--seed=1,2", f"--out={tmp_path / 'cont.json'}")
        assert code == 0, err
        assert requests[-1][3] == {"signature_name": "continue",
                                   "inputs": {"prefix": x[:2].tolist(), "prefix_lengths": [4, 13], "num_steps": 3,
                                              "seed": [1, 2], "temperature": 1.0}}
        assert np.array(json.loads((tmp_path / "cont.json").read_text())["continuations"]).shape == (2, 3, 3)

        # Ragged rows without lengths: padded with zero steps, each row's own length sent.
        (tmp_path / "ragged.json").write_text(json.dumps({"x": [x[0, :2].tolist(), x[1, :5].tolist()]}))
        code, out, err = _client(capsys, *common, "score", f"--json={tmp_path / 'ragged.json'}")
        assert code == 0, err
        sent = requests[-1][3]["inputs"]
        assert sent["lengths"] == [2, 5] and sent["x"] == [x[0, :2].tolist() + [[0.0] * 3] * 3, x[1, :5].tolist()]

        code, out, err = _client(capsys, *common, "status")
        assert code == 0 and requests[-1][:2] == ("GET", "/v1/models/run")
        code, out, err = _client(capsys, *common, "metadata")
        assert code == 0 and requests[-1][:2] == ("GET", "/v1/models/run/metadata")

        # A request the model refuses: HTTP 400 with the graph's message, exit status 1.
        n = len(requests)
        code, out, err = _client(capsys, *common, "sample", "--num_steps=1000")
        assert code == 1 and out == "" and len(requests) == n + 1
        assert "server answered 400" in err and "num_steps must be an integer in [1, 64]" in err

        # Problems found before sending anything.
        for argv, message in [(["sample", "--seed=1"], "--seed must be two integers"),
                              (["score"], "exactly one of --npz=FILE or --json=FILE"),
                              (["score", f"--json={tmp_path / 'prefix.json'}"], "none of the arrays")]:
            code, out, err = _client(capsys, *common, *argv)
            assert code == 1 and message in err, (argv, err)
        assert len(requests) == n + 1

    code, out, err = _client(capsys, f"--server={server}", "--model_name=run", "--timeout=5", "sample")
    assert code == 1 and "cannot reach" in err  # the server is gone


def test_client_dry_run_and_npy_reader(tmp_path, capsys):
    client = _load_client()
    arrays = {"f4": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7, "i8": np.array([[1, -2], [3, 4]]),
              "b1": np.array([True, False]), "be": np.arange(3, dtype=">f8"), "scalar": np.int32(5)}
    np.savez(tmp_path / "a.npz", **arrays)
    read = client.read_npz(tmp_path / "a.npz")
    for key, value in arrays.items():
        assert read[key] == np.asarray(value).tolist(), key
    code, out, err = _client(capsys, "--model_name=demo", "sample", "--num_samples=2", "--num_steps=300",
                             "--dry_run")
    assert code == 0
    assert json.loads(out) == {"url": "http://localhost:8501/v1/models/demo:predict",
                               "body": {"signature_name": "sample",
                                        "inputs": {"num_samples": 2, "num_steps": 300, "seed": [0, 0],
                                                   "temperature": 1.0}}}
