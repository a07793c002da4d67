"""Bounded and clear under every input: a hang, a crash or a silently accepted value for each case below would fail
its test.  The hang cases run in a subprocess with a timeout of the test's own; the memory cases run under
``resource.setrlimit(RLIMIT_AS)`` in a subprocess, so that a regression fails the test instead of taking the
machine (or the test process) down.  docs/bad_input.md lists what each bad input gets."""

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tfhier import checks, cluster, runs, serving, training
from tfhier.data import DataError
from tfhier.data.hershey import make_hershey_handwriting
from tfhier.models.hparams import HParam, HParamError, read_model_config_flag

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
MODEL = dict(head="handwriting", head_components=2, channels=[8, 8], latent_dims=[2, 2], strides=[1, 2],
             bu_dilations=[[1, 2], [1]], td_blocks=1, kernel_size=2)
TINY = ["--dataset=hershey", "--num_lines=8", "--channels=8,8", "--latent_dims=2,2", "--strides=1,2",
        "--bu_dilations=1,2;1", "--td_blocks=1", "--head_components=2", "--batch_size=4", "--seq_len=32",
        "--train_steps=2", "--verbose=0", "--num_samples=0"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cli(args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**ENV, **(env or {})}, **kwargs)


def run_capped(code, cap_gb, timeout=240):
    """``code`` in a fresh Python whose address space is capped at ``cap_gb``; returns the finished process."""
    prelude = textwrap.dedent(f"""
        import resource
        cap = int({cap_gb} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=REPO)


# ---------------------------------------------------------------------------------------------- hangs

def two_worker_config(index=0):
    ports = [free_port(), free_port()]
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}}), ports


def test_multi_worker_start_with_an_absent_peer_ends_at_the_timeout_naming_it(tmp_path):
    config, ports = two_worker_config()
    proc = train_cli([*TINY, f"--run_dir={tmp_path / 'run'}", "--strategy=multi_worker", "--worker_timeout=3"],
                     env={"TF_CONFIG": config})
    try:
        _, err = proc.communicate(timeout=150)  # the test's own bound: a hang fails here
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert f"nothing answers at worker[1] at 127.0.0.1:{ports[1]}" in err and "--worker_timeout=3" in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_multi_worker_start_at_once(tmp_path, signum):
    config, _ = two_worker_config()
    proc = train_cli([*TINY, f"--run_dir={tmp_path / 'run'}", "--strategy=multi_worker"], env={"TF_CONFIG": config})
    try:
        end = time.monotonic() + 150
        line = ""
        while "waiting up to" not in line and time.monotonic() < end:  # stderr: the wait has begun
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        assert "waiting up to 300 s" in line, line
        time.sleep(2)
        proc.send_signal(signum)
        start = time.monotonic()
        _, err = proc.communicate(timeout=20)
        assert time.monotonic() - start < 10
    finally:
        proc.kill()
    if signum == signal.SIGTERM:
        assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)
    else:
        assert proc.returncode == 1 and "interrupted before training began; nothing was written" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, expected", [
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": True}}, "index must be an integer"),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": "1"}}, "index must be an integer"),
    ({"cluster": {"worker": ["a:1", 5]}, "task": {"type": "worker", "index": 0}}, "worker[1] = 5 is a int"),
    ({"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}, "must be a non-empty list"),
    ({"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}, "names a:1 twice"),
    ({"cluster": {"worker": ["a:x"]}, "task": {"type": "worker", "index": 0}}, "no port number"),
    ({"cluster": {"worker": ["a:1"]}, "task": []}, "\"task\" must be a JSON object"),
    ({"cluster": [], "task": {}}, "\"cluster\" must be a non-empty JSON object"),
    (5, "must be a JSON object, got int"),
    ({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}, "MultiWorkerMirroredStrategy takes"),
])
def test_tf_config_is_checked_by_type(config, expected):
    problem = cluster.tf_config_problem(json.dumps(config))
    assert problem is not None and expected in problem


def test_tf_config_of_wrong_types_is_refused_before_tensorflow_starts(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": True}}))
    with pytest.raises(ValueError, match="task index must be an integer"):
        training.make_strategy("multi_worker")


def test_cpu_devices_is_bounded_and_belongs_to_mirrored():
    start = time.monotonic()
    with pytest.raises(ValueError, match="more than 64 logical CPU devices"):
        training.make_strategy("mirrored", cpu_devices=100000)
    with pytest.raises(ValueError, match="applies to --strategy=mirrored only"):
        training.make_strategy("default", cpu_devices=2)
    with pytest.raises(ValueError, match="integer >= 0"):
        training.make_strategy("mirrored", cpu_devices=-1)
    assert time.monotonic() - start < 5
    assert cluster.cpu_devices_problem("mirrored", 2) is None


# ----------------------------------------------------------------------------- limits before allocation

def test_train_cli_refuses_huge_model_sizes_under_a_memory_cap(tmp_path):
    """Each case is refused in seconds, naming the flag, in a process capped at 6 GB (a segfault, an abort or
    an out-of-memory kill before: --strides=...,1000000 segfaulted)."""
    cases = [("--strides=1,2,2,2,1000000", "--strides=1000000 is more than 1,024"),
             ("--kernel_size=100000", "--kernel_size=100000 is more than 64"),
             ("--channels=3000,3000,3000,3000,3000", "lower --channels")]
    code = f"""
        import subprocess, sys
        cases = {cases!r}
        for flag, expected in cases:
            res = subprocess.run([sys.executable, "train.py", "--flagfile=configs/demo.cfg",
                                  "--run_dir={tmp_path / 'run'}", flag], capture_output=True, text=True, timeout=120)
            print(repr((flag, res.returncode, res.stderr.strip().splitlines()[-1:])))
    """
    # One train.py at a time, each inheriting the cap; a shell would be faster but would not show the limit.
    res = run_capped(code, cap_gb=6, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    results = [eval(line) for line in res.stdout.splitlines()]  # noqa: S307 - our own repr output
    for (flag, expected), (flag2, rc, last) in zip(cases, results):
        assert flag == flag2 and rc == 1 and last and expected in last[0] and "error" in last[0], (flag, rc, last)
        assert len(last[0]) < 600
    assert len(results) == len(cases)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, expected", [
    (dict(td_blocks=100000), "--td_blocks=100000 is more than 64"),
    (dict(head_components=10 ** 6), "--head_components=1000000 is more than 1,024"),
    (dict(latent_dims=[100000, 8]), "--latent_dims=100000 is more than 8,192"),
    (dict(channels=[8] * 100), "--channels has 100 entries, more than 64 layers"),
    (dict(strides=[1, 16, 16, 16, 16]), "product 65,536 is more than 4,096"),
    (dict(rnn_units=10 ** 5000), "--rnn_units=an integer of 5001 digits is more than 8,192"),
])
def test_model_sizes_are_capped(config, expected):
    assert expected in checks.hparams_problem(config)


def test_memory_estimate_compares_with_the_address_space_limit():
    code = """
        from tfhier import checks
        config = dict(channels=[1024] * 5, latent_dims=[8] * 5, kernel_size=2, td_blocks=2,
                      bu_dilations=[[1, 2]] * 5, head_components=2)
        print(checks.memory_problem(config, 3, 64, 1024))
    """
    res = run_capped(code, cap_gb=2, timeout=60)
    assert "more than the process's address-space limit" in res.stdout and "lower --channels" in res.stdout
    demo = dict(channels=[32] * 5, latent_dims=[8, 8, 8, 4, 2], kernel_size=2, td_blocks=2,
                bu_dilations=[[1, 1, 1, 1]] * 4 + [[1, 2, 4, 8]], head_components=5)
    assert checks.memory_problem(demo, 3, 16, 256) is None


def test_train_settings_limits():
    base = dict(train_steps=2, batch_size=4, seq_len=32, verbose=0)
    for overrides, expected in [(dict(lr_decay_rate=1e30), "--lr_decay_rate must be in \\(0, 1\\]"),
                                (dict(num_particles=10 ** 7), "--num_particles=10,000,000 is more than"),
                                (dict(batch_size=10 ** 9), "--batch_size=1,000,000,000 is more than"),
                                (dict(learning_rate=1e30), "--learning_rate must be in")]:
        with pytest.raises(ValueError, match=expected):
            training.TrainSettings(**{**base, **overrides}).validate()


@pytest.mark.parametrize("kwargs, expected", [
    (dict(batch_size=10 ** 9), "--batch_size=1,000,000,000 is more than"),
    (dict(iw_chunk=10 ** 6), "--iw_chunk=1,000,000 is more than"),
    (dict(fivo_particles=10 ** 6), "--fivo_particles=1,000,000 is more than"),
    (dict(iw_samples=10 ** 9), "--iw_samples=1,000,000,000 is more than"),
    (dict(plots=-1), "--plots must be an integer >= 0"),
    (dict(plots=10 ** 6), "--plots=1,000,000 is more than"),
    (dict(seed=1.5), "--seed must be an integer"),
])
def test_evaluation_numbers_are_bounded(kwargs, expected):
    assert expected in checks.evaluation_problem(**kwargs)


def test_evaluate_cli_checks_free_space_not_only_writability(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=0))
    problem = checks.free_space_problem(tmp_path, 2 ** 20, "--run_dir (where eval_<split>.json is written)")
    assert "0.0 MB free in" in problem and str(tmp_path) in problem


# ------------------------------------------------------------------------------------------- the API

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    data = make_hershey_handwriting(num_train=8, num_valid=4, num_test=4, seed=1)
    path = tmp_path_factory.mktemp("robust") / "run"
    training.train(str(path), "msstcn", MODEL, data,
                   training.TrainSettings(train_steps=2, batch_size=4, seq_len=32, eval_every=2, eval_batches=1,
                                          log_every=1, checkpoint_every=2, sample_every=1000, num_samples=0,
                                          verbose=0))
    return str(path)


def test_api_refuses_what_the_command_lines_refuse_under_a_memory_cap(run_dir):
    """Each call is refused with a ValueError naming the argument, before anything is allocated (before:
    ``run.sample(10, 10**8)`` aborted; temperatures 0, NaN, inf, NaN inputs gave NaN results)."""
    code = f"""
        import json, numpy as np, tfhier
        run = tfhier.load_run({run_dir!r}, "latest")
        x = np.zeros([10, 3], np.float32)
        nan = x.copy(); nan[3, 1] = np.nan
        calls = {{
            "sample_steps": lambda: run.sample(10, 10 ** 8),
            "sample_samples": lambda: run.sample(10 ** 6, 10),
            "temperature_0": lambda: run.sample(2, 4, temperature=0),
            "temperature_neg": lambda: run.sample(2, 4, temperature=-1.0),
            "temperature_nan": lambda: run.sample(2, 4, temperature=float("nan")),
            "temperature_inf": lambda: run.sample(2, 4, temperature=float("inf")),
            "temperature_1e38": lambda: run.sample(2, 4, temperature=1e38),
            "seed_float": lambda: run.sample(2, 4, seed=1.5),
            "seed_negative": lambda: run.sample(2, 4, seed=-3),
            "score_nan": lambda: run.score([x, nan]),
            "score_inf": lambda: run.score([x * np.inf]),
            "score_shape": lambda: run.score([np.zeros([10, 5], np.float32)]),
            "score_rank": lambda: run.score([np.zeros([2, 10, 3], np.float32)]),
            "score_batch": lambda: run.score([x], batch_size=10 ** 9),
            "score_seed": lambda: run.score([x], seed=-1),
            "score_many": lambda: run.score([x] * 11, max_sequences=10),
            "continue_nan": lambda: run.continue_sequences([nan], 5),
            "continue_steps": lambda: run.continue_sequences([x], 10 ** 8),
            "continue_temperature": lambda: run.continue_sequences([x], 5, temperature=0.0),
            "continue_shape": lambda: run.continue_sequences([np.zeros([4, 7], np.float32)], 5),
        }}
        out = {{}}
        for name, call in calls.items():
            try:
                call()
                out[name] = "ACCEPTED"
            except ValueError as e:
                out[name] = str(e)
        ok = run.sample(2, 4, seed=3, temperature=0.5)
        out["ok"] = list(ok.shape)
        print("RESULT", json.dumps(out))
    """
    res = run_capped(code, cap_gb=8, timeout=300)
    line = next((l for l in res.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, res.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    expected = {
        "sample_steps": "num_steps=100,000,000 is more than the limit 5,000 (raise max_steps",
        "sample_samples": "num_samples=1,000,000 is more than the limit 256 (raise max_samples",
        "temperature_0": "temperature must be a finite number in (0, 100]",
        "temperature_neg": "temperature must be a finite number",
        "temperature_nan": "temperature must be a finite number",
        "temperature_inf": "temperature must be a finite number",
        "temperature_1e38": "temperature must be a finite number in (0, 100]",
        "seed_float": "seed must be an integer in [0, 2^31 - 1], got 1.5",
        "seed_negative": "seed must be an integer in [0, 2^31 - 1], got -3",
        "score_nan": "sequences[1] holds a non-finite value (nan) at step 3, feature 1",
        "score_inf": "sequences[0] holds a non-finite value",
        "score_shape": "sequences[0]: expected 3 features per step",
        "score_rank": "sequences[0]: expected a non-empty [T, D] array, got shape (2, 10, 3)",
        "score_batch": "batch_size=1,000,000,000 is more than",
        "score_seed": "seed must be an integer",
        "score_many": "sequences holds 11 sequences, more than max_sequences=10",
        "continue_nan": "prefixes[0] holds a non-finite value",
        "continue_steps": "num_steps=100,000,000 is more than the limit max_steps=5,000 less the longest prefix",
        "continue_temperature": "temperature must be a finite number",
        "continue_shape": "prefixes[0]: expected 3 features per step",
    }
    for name, text in expected.items():
        assert text in out[name], (name, out[name])
    assert out["ok"] == [2, 4, 3]


# -------------------------------------------------------------------------------------- export / serving

def test_scoring_signature_has_batch_and_length_limits(run_dir):
    import tensorflow as tf

    model, _, _ = runs.load_model(run_dir)
    limits = serving.Limits(max_steps=64, max_samples=4, max_score_steps=100)
    score = tf.function(serving.score_fn(model, limits))
    seed = tf.constant([1, 2], tf.int32)
    ok = score(tf.zeros([4, 25, 3]), tf.fill([4], 25), seed)
    assert ok["elbo"].shape == (4,)
    with pytest.raises(tf.errors.InvalidArgumentError, match="x may hold at most 4 sequences"):
        score(tf.zeros([5, 2, 3]), tf.fill([5], 2), seed)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 100 steps in all, batch x time"):
        score(tf.zeros([2, 51, 3]), tf.fill([2], 51), seed)
    info = serving.signature_info(model, limits)
    assert info["serving_default"]["inputs"]["x"]["range"] == "B in 1..4, B x T <= 100"
    assert info["sample"]["inputs"]["temperature"]["range"] == "(0, 100]"


def test_export_cleans_stale_temporaries_and_reports_write_failures(run_dir, tmp_path, monkeypatch):
    base = tmp_path / "exports"
    model_dir = base / "run"
    stale_old = model_dir / ".tmp_export_1_abc"  # the old naming: no pid; removed once an hour old
    stale_dead = model_dir / ".tmp_export_1_999999999_abc"  # a pid that cannot exist
    live = model_dir / f".tmp_export_1_{os.getpid()}_abc"  # an export in progress: kept
    for d in (stale_old, stale_dead, live):
        (d / "saved_model").mkdir(parents=True)
    os.utime(stale_old, (time.time() - 7200, time.time() - 7200))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serving, "write_saved_model", full_disk)
    with pytest.raises(serving.ExportError, match="cannot write the export to .*No space left on device.*nothing "
                                                  "was written"):
        serving.export_run(run_dir, str(base))
    assert not stale_old.exists() and not stale_dead.exists() and live.exists()
    assert sorted(p.name for p in model_dir.iterdir()) == [live.name]  # its own temporary was removed too

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(serving, "write_saved_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        serving.export_run(run_dir, str(base))
    assert sorted(p.name for p in model_dir.iterdir()) == [live.name]

    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(serving.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(serving.ExportError, match="MB free, the export needs about"):
        serving.export_run(run_dir, str(base))


def test_export_to_an_unwritable_model_folder_is_one_error(run_dir, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    model_dir = tmp_path / "exports" / "run"
    model_dir.mkdir(parents=True)
    model_dir.chmod(0o500)
    try:
        with pytest.raises(serving.ExportError, match="cannot write in"):
            serving.plan_export(run_dir, str(tmp_path / "exports"))
    finally:
        model_dir.chmod(0o700)


def test_next_version_taken_by_a_file_says_so(run_dir, tmp_path):
    model_dir = tmp_path / "run"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "2").write_text("not a version")
    with pytest.raises(serving.ExportError) as e:
        serving.plan_export(run_dir, str(tmp_path))
    assert "is not a version folder" in str(e.value) and "leave --version out" not in str(e.value)


def test_ctrl_c_during_export_is_one_line(run_dir, tmp_path):
    code = f"""
        import sys
        from tfhier import serving
        def interrupted(*a, **k):
            raise KeyboardInterrupt
        serving.write_saved_model = interrupted
        sys.argv = ["export.py", "--run_dir={run_dir}", "--export_base={tmp_path / 'exports'}"]
        from tfhier.cli import start
        start("tfhier.cli.export")
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=180,
                         env=ENV, cwd=REPO)
    assert res.returncode == 130 and "export.py: interrupted; nothing was written" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert [p.name for p in (tmp_path / "exports" / "run").iterdir()] == []


# ------------------------------------------------------------------------------- files and messages

@pytest.mark.parametrize("content", [b"5", b"null", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", b"[" * 100000, b"\"text\""])
def test_config_json_of_any_content_is_one_error_naming_it(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes(content)
    with pytest.raises(runs.RunError, match="config.json"):
        runs.read_config(run)
    with pytest.raises(training.RunDirError, match="config.json"):
        training.check_run_dir(str(run), {})


def test_config_json_of_wrong_types_or_sizes_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = {"model": "msstcn", "model_config": dict(MODEL), "dataset": "hershey", "feature_dim": 3}
    for bad, expected in [({"feature_dim": True}, "feature_dim must be a int"),
                          ({"model_config": 5}, "model_config must be a JSON object"),
                          ({"model_config": {**MODEL, "strides": [1, 10 ** 6]}}, "strides=1000000 is more than")]:
        (run / "config.json").write_text(json.dumps({**good, **bad}))
        with pytest.raises(runs.RunError, match=expected):
            runs.read_config(run)


def test_model_config_that_is_a_binary_file_or_deep_json_names_the_flag(tmp_path):
    with pytest.raises(HParamError, match="--model_config=/bin/ls is not a text file"):
        read_model_config_flag("/bin/ls")
    with pytest.raises(HParamError, match="nested too deeply"):
        read_model_config_flag("{\"channels\": " + "[" * 100000 + "]" * 100000 + "}")


def test_flags_cfg_of_binary_bytes_and_json_of_huge_numbers_name_the_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "flags.cfg").write_bytes(b"\xff\xfe--seed=1\n")
    with pytest.raises(runs.RunError, match="flags.cfg is not a text file"):
        runs.read_flags(run)
    with pytest.raises(HParamError, match="--model_config is not valid JSON") as e:
        read_model_config_flag('{"channels": [' + "9" * 5000 + "]}")
    assert len(str(e.value)) < 400
    (run / "config.json").write_text('{"feature_dim": ' + "9" * 5000 + "}")
    with pytest.raises(runs.RunError, match="config.json is not valid JSON"):
        runs.read_config(run)


def test_values_in_messages_are_cut_to_a_line():
    assert len(checks.shown("x" * 5_000_000)) < 200
    assert checks.shown(10 ** 5000) == "an integer of 5001 digits"
    deep = []
    for _ in range(100000):
        deep = [deep]
    assert "too deep" in checks.shown(deep)
    with pytest.raises(HParamError) as e:
        HParam("channels", "ints", [8], "").parse("9" * 5000, "--channels")
    assert len(str(e.value)) < 300


def polyphonic(tmp_path, note):
    path = tmp_path / "music.pickle"
    data = {split: [[[60, 64], [62]]] for split in ("train", "valid", "test")}
    data["train"][0][1] = [note]
    path.write_bytes(pickle.dumps(data))
    return path


@pytest.mark.parametrize("note, expected", [("digits", "an integer of 5001 digits"), ("string", "characters"),
                                            ("deep", "expected integer MIDI note numbers")])
def test_polyphonic_notes_of_any_size_give_a_short_message(tmp_path, note, expected):
    from tfhier.data.polyphonic import load_polyphonic

    if note == "digits":
        note = 10 ** 5000
    elif note == "string":
        note = "x" * 5_000_000
    elif note == "deep":
        note = []
        for _ in range(3000):
            note = [note]
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))  # pickle.dumps of the nesting itself
    path = polyphonic(tmp_path, note)
    with pytest.raises(DataError) as e:
        load_polyphonic(path)
    assert expected in str(e.value) and len(str(e.value)) < 500 and str(path) in str(e.value)


def test_a_run_stopped_before_any_checkpoint_says_so():
    message = training.kept_message(SimpleNamespace(manager=SimpleNamespace(latest_checkpoint=None)))
    assert "None" not in message and "no checkpoint had been written" in message


def test_zero_spread_names_the_data_folder(tmp_path):
    from tfhier.data import iam_ondb

    folder = tmp_path / "iam"
    for i in range(40):  # forms of one line each, every line one point repeated: all offsets zero
        strokes = folder / "lineStrokes" / "a01" / f"a01-{i:03d}"
        strokes.mkdir(parents=True)
        (strokes / f"a01-{i:03d}u-01.xml").write_text(
            '<?xml version="1.0"?><WhiteboardCaptureSession><StrokeSet><Stroke>'
            + '<Point x="10" y="10" time="0"/>' * 4 + '</Stroke></StrokeSet></WhiteboardCaptureSession>')
    with pytest.raises(DataError, match="zero spread") as e:
        iam_ondb.load_iam_ondb(str(folder))
    assert f"--data_dir={folder}" in str(e.value)
