"""Never lose a trained run, never take the machine down: one test per failure a careful user (or a scheduler)
can cause.  See docs/bad_input.md for the table of what each bad input gets."""

import hashlib
import importlib.util
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tfhier import rundir, training
from tfhier.data import DataError
from tfhier.data.hershey import make_hershey_handwriting

REPO = Path(__file__).resolve().parents[1]
MODEL = dict(head="handwriting", head_components=2, channels=[8, 8], latent_dims=[2, 2], strides=[1, 2],
             bu_dilations=[[1, 2], [1]], td_blocks=1, kernel_size=2)


def settings(**overrides):
    base = dict(train_steps=6, batch_size=4, seq_len=32, eval_every=100, eval_batches=1, log_every=1,
                checkpoint_every=2, sample_every=1000, num_samples=0, verbose=0)
    base.update(overrides)
    return training.TrainSettings(**base)


@pytest.fixture(scope="module")
def data():
    return make_hershey_handwriting(num_train=16, num_valid=4, num_test=4, seed=1)


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ckpt_files(run, name):
    return sorted(p for p in (Path(run) / "checkpoints").iterdir() if p.name.startswith(name + "."))


# ------------------------------------------------------------------------------- resume never loses data

@pytest.mark.parametrize("damage", ["removed", "garbled"])
def test_lost_state_file_resumes_from_the_files_present(tmp_path, data, capsys, damage):
    run = tmp_path / "run"
    training.train(str(run), "msstcn", MODEL, data, settings())
    kept = {p.name: digest(p) for name in ("ckpt-4", "ckpt-6") for p in ckpt_files(run, name)}
    state = run / "checkpoints" / "checkpoint"
    if damage == "removed":
        state.unlink()
    else:
        state.write_text("model_checkpoint_path: \x00\x01 garbage {{{")
    capsys.readouterr()
    model, _ = training.train(str(run), "msstcn", MODEL, data, settings(train_steps=7))
    out = capsys.readouterr().out
    assert "resumed from" in out and "ckpt-6 at step 6" in out and "rewrote it from the checkpoint files" in out
    assert int(model.optimizer.iterations.numpy()) == 7
    assert {p.name: digest(p) for name in ("ckpt-4", "ckpt-6") for p in ckpt_files(run, name)} == kept


def test_a_corrupt_latest_checkpoint_falls_back_to_the_older_one(tmp_path, data, capsys):
    run = tmp_path / "run"
    training.train(str(run), "msstcn", MODEL, data, settings())
    data_file = next(p for p in ckpt_files(run, "ckpt-6") if ".data-" in p.name)
    data_file.write_bytes(data_file.read_bytes()[:40])  # truncated
    capsys.readouterr()
    training.train(str(run), "msstcn", MODEL, data, settings(train_steps=7))
    out = capsys.readouterr().out
    assert "could not read" in out and "ckpt-6" in out and "resumed from the older" in out
    assert "resumed from" in out and "ckpt-4 at step 4" in out


def test_no_readable_checkpoint_is_refused_and_nothing_changes(tmp_path, data):
    run = tmp_path / "run"
    training.train(str(run), "msstcn", MODEL, data, settings(train_steps=2))
    for p in list((run / "checkpoints").glob("ckpt-*.data-*")) + list((run / "best").glob("ckpt-*.data-*")):
        p.write_bytes(b"garbage")
    before = {str(p): digest(p) for p in run.rglob("*") if p.is_file() and "logs" not in p.parts}
    with pytest.raises(training.RunDirError, match="no checkpoint of this run can be restored"):
        training.train(str(run), "msstcn", MODEL, data, settings(train_steps=4))
    assert {str(p): digest(p) for p in run.rglob("*") if p.is_file() and "logs" not in p.parts} == before


def test_resuming_on_other_data_is_refused_unless_asked(tmp_path, data):
    run = tmp_path / "run"
    training.train(str(run), "msstcn", MODEL, data, settings(train_steps=2))
    other = make_hershey_handwriting(num_train=24, num_valid=4, num_test=4, seed=1)
    with pytest.raises(training.RunDirError, match="trained on other data.*--allow_data_change"):
        training.train(str(run), "msstcn", MODEL, other, settings(train_steps=4))
    model, _ = training.train(str(run), "msstcn", MODEL, other, settings(train_steps=4), allow_data_change=True)
    assert int(model.optimizer.iterations.numpy()) == 4


# ------------------------------------------------------------------------------------- one owner at a time

def test_a_second_trainer_is_refused_naming_the_holder(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    with rundir.RunLock(run):
        assert json.loads((run / rundir.OWNER_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(training.RunDirError, match=rf"in use by another training process \(pid {os.getpid()}"):
            training.train(str(run), "msstcn", MODEL, data, settings(train_steps=2))
        assert not (run / "config.json").exists()
    assert not (run / rundir.OWNER_FILE).exists()
    training.train(str(run), "msstcn", MODEL, data, settings(train_steps=2))  # released: usable again


def train_cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, **kwargs)


def wait_for(condition, timeout=240):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return False


LONG_RUN = ["--dataset=hershey", "--num_lines=16", "--channels=8,8", "--latent_dims=2,2", "--strides=1,2",
            "--bu_dilations=1;1", "--td_blocks=1", "--head_components=2", "--batch_size=4", "--seq_len=32",
            "--train_steps=100000", "--eval_every=100000", "--checkpoint_every=100000", "--checkpoint_secs=0",
            "--sample_every=100000", "--log_every=1", "--verbose=0"]


def _trained_steps(run):
    logs = Path(run) / "logs" / "train"
    return logs.is_dir() and any(p.stat().st_size > 200 for p in logs.iterdir())


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_writes_a_checkpoint_at_the_current_step_and_exits_as_preempted(tmp_path, sig, status):
    run = tmp_path / "run"
    proc = train_cli(*LONG_RUN, f"--run_dir={run}")
    try:
        assert wait_for(lambda: _trained_steps(run)), "training did not start"
        if sig == signal.SIGTERM:  # a second trainer meanwhile is refused, naming the first one's pid
            second = train_cli(*LONG_RUN, f"--run_dir={run}")
            _, err = second.communicate(timeout=240)
            assert second.returncode != 0 and f"pid {proc.pid}" in err and "Traceback" not in err
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    last = err.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(sig).name} at step" in last and "Traceback" not in err
    step = int(last.split("at step ")[1].split(";")[0])
    assert step >= 1 and (run / "checkpoints" / f"ckpt-{step}.index").exists()
    assert not (run / rundir.OWNER_FILE).exists()


def test_a_second_signal_exits_at_once(monkeypatch):
    stop = training._SignalStop()
    stop.model = type("M", (), {"stop_training": False})()
    stop._handle(signal.SIGTERM, None)
    assert stop.model.stop_training and stop.received == signal.SIGTERM
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    stop._handle(signal.SIGTERM, None)
    assert exits == [143]


def test_a_failed_checkpoint_write_is_one_error_and_the_earlier_ones_stay(tmp_path, data, monkeypatch):
    import tensorflow as tf

    run = tmp_path / "run"
    training.train(str(run), "msstcn", MODEL, data, settings(train_steps=2))
    before = {p.name: digest(p) for p in (run / "checkpoints").iterdir()}

    def disk_full(self, *args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", disk_full)
    with pytest.raises(training.RunDirError, match="cannot write a checkpoint.*No space left.*are intact"):
        training.train(str(run), "msstcn", MODEL, data, settings(train_steps=4))
    assert {p.name: digest(p) for p in (run / "checkpoints").iterdir()} == before


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no one can write in (chmod for a user, chattr +i for root); skipped where neither works."""
    path = tmp_path / "ro"
    path.mkdir()
    (path / "x").write_text("x")
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only folder as root here (no chattr +i)")
        yield path
        subprocess.run(["chattr", "-i", str(path)])
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def test_read_only_or_file_run_dirs_are_one_error(tmp_path, data, read_only_dir):
    with pytest.raises(training.RunDirError, match="cannot write in"):
        training.train(str(read_only_dir / "run"), "msstcn", MODEL, data, settings(train_steps=2))
    with pytest.raises(training.RunDirError, match="cannot write in"):
        training.train(str(read_only_dir), "msstcn", MODEL, data, settings(train_steps=2))
    (tmp_path / "file").write_text("x")
    with pytest.raises(training.RunDirError, match="is a file, not a directory"):
        training.train(str(tmp_path / "file"), "msstcn", MODEL, data, settings(train_steps=2))
    from tfhier import serving

    with pytest.raises(serving.ExportError, match="--export_base: cannot write in"):
        serving.plan_export(str(tmp_path), str(read_only_dir / "exports"))


def test_evaluate_and_sample_refuse_an_unwritable_destination_before_computing(tmp_path, data, read_only_dir):
    run = tmp_path / "run"
    training.train(str(run), "msstcn", MODEL, data, settings(train_steps=2))
    res = subprocess.run([sys.executable, str(REPO / "sample.py"), f"--run_dir={run}",
                          f"--out={read_only_dir / 'samples' / 's'}"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0 and "--out: cannot write in" in res.stderr and "Traceback" not in res.stderr
    # The same check evaluate.py makes of its --run_dir, before TensorFlow is imported.
    assert "cannot write in" in rundir.writable_problem(read_only_dir, "--run_dir")


def test_sample_refuses_a_corrupt_export_description(tmp_path):
    export = tmp_path / "1"
    (export / "assets.extra").mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"x")
    (export / "assets.extra" / "tfhier_export.json").write_text("{not json")
    res = subprocess.run([sys.executable, str(REPO / "sample.py"), f"--saved_model={export}",
                          f"--out={tmp_path / 's'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "tfhier_export.json: unreadable" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------------- limits before allocation

def run_capped(code, cap_gb=1.5, timeout=120):
    """Runs ``code`` in a fresh Python with its address space capped (RLIMIT_AS); returns the process."""
    prelude = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(REPO)!r})
        cap = int({cap_gb} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


def test_a_wav_declaring_one_hertz_is_refused_under_a_memory_cap(tmp_path):
    import soundfile as sf

    folder = tmp_path / "audio"
    folder.mkdir()
    sf.write(folder / "slow.wav", np.zeros(20000), 1, format="WAV", subtype="PCM_16")  # 40 KB, "5.5 hours"
    res = run_capped(f"""
        from tfhier.data.audio import read_audio
        from tfhier.data import DataError
        try:
            read_audio({str(folder / 'slow.wav')!r}, 16000)
        except DataError as e:
            print("REFUSED", e)
    """)
    assert "REFUSED" in res.stdout and "slow.wav" in res.stdout and "sampling rate 1 Hz" in res.stdout, res.stderr


class _Allocate:
    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (bytearray, (self.n,))


@pytest.mark.parametrize("payload, message", [
    (_Allocate(3 * 10 ** 9), "bytearray': a polyphonic music pickle holds only"),
    ({"train": [[[60, 64, 67]] * 2000] * 2000, "valid": [[[60]]], "test": [[[60]]]}, "more than 2,000,000 time steps"),
])
def test_pickles_that_would_fill_the_memory_are_refused_under_a_memory_cap(tmp_path, payload, message):
    path = tmp_path / "music.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    assert path.stat().st_size < 20_000
    res = run_capped(f"""
        from tfhier.data.polyphonic import load_polyphonic
        from tfhier.data import DataError
        try:
            load_polyphonic({str(path)!r})
        except DataError as e:
            print("REFUSED", e)
    """)
    assert "REFUSED" in res.stdout and "music.pkl" in res.stdout and message in res.stdout, res.stdout + res.stderr


# ---------------------------------------------------------------------------------------- the client

def _load_client():
    spec = importlib.util.spec_from_file_location("tfhier_export_client", REPO / "export" / "client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Server:
    """A raw TCP server on 127.0.0.1 answering every connection with ``respond(socket)``."""

    def __init__(self, respond):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.respond = respond
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                self._read_request(conn)
                self.respond(conn)
                conn.shutdown(socket.SHUT_WR)  # then drain: closing with unread data would reset the connection
                conn.settimeout(5)
                while conn.recv(65536):
                    pass
            except OSError:
                pass
            finally:
                conn.close()

    @staticmethod
    def _read_request(conn):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk

    def close(self):
        self.sock.close()


def _trickle(conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(200):
        conn.sendall(b" ")
        time.sleep(0.1)


def _answer(body, status=b"HTTP/1.1 200 OK", length=None):
    """Answers ``body``; ``length``: the Content-Length to declare (default: the true one; -1: none, the body runs
    until the connection closes)."""
    def respond(conn):
        headers = [status, b"Content-Type: application/json", b"Connection: close"]
        if length != -1:
            headers.append(b"Content-Length: " + str(len(body) if length is None else length).encode())
        conn.sendall(b"\r\n".join(headers) + b"\r\n\r\n" + body)
    return respond


@pytest.mark.parametrize("respond, message", [
    (_trickle, "did not answer within --timeout=2 s"),
    (_answer(b"{}", length=10 ** 10), "more than --max_response_bytes"),
    (_answer(b" " * 2_000_000, length=-1), "answered more than --max_response_bytes"),
    (_answer(b"\xff\xfe not utf-8"), "not UTF-8"),
    (_answer(b"{}", status=b"GARBAGE"), "did not answer in HTTP"),
    (_answer(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    (_answer(b'{"outputs": '), "is not JSON"),
])
def test_client_returns_within_its_deadline_with_one_error(respond, message, capsys):
    client = _load_client()
    server = _Server(respond)
    try:
        start = time.monotonic()
        code = client.main([f"--server={server.url}", "--model_name=m", "--timeout=2", "--max_response_bytes=1000000",
                            "sample"])
        elapsed = time.monotonic() - start
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 1 and message in err and elapsed < 6, (err, elapsed)


def test_client_refuses_an_npz_declaring_a_huge_shape(tmp_path):
    client = _load_client()
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 100000000000, 0), }"
    header += " " * (118 - len(header)) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    import zipfile

    with zipfile.ZipFile(tmp_path / "x.npz", "w") as z:
        z.writestr("x.npy", npy)
    start = time.monotonic()
    with pytest.raises(client.ClientError, match="larger than this client handles"):
        client.read_npz(tmp_path / "x.npz")
    assert time.monotonic() - start < 2


# -------------------------------------------------------------------- tracebacks become one clear error

def test_broken_xml_entries_are_named(tmp_path):
    from tfhier.data.iam_ondb import load_iam_ondb

    lines = tmp_path / "iam" / "lineStrokes" / "a01" / "a01-000"
    lines.mkdir(parents=True)
    (lines / "dangling.xml").symlink_to(tmp_path / "nowhere.xml")
    with pytest.raises(DataError, match="dangling.xml: cannot read it"):
        load_iam_ondb(tmp_path / "iam")
    (lines / "dangling.xml").unlink()
    (lines / "loop.xml").symlink_to(lines / "loop.xml")
    with pytest.raises(DataError, match="loop.xml: cannot read it"):
        load_iam_ondb(tmp_path / "iam")
    (lines / "loop.xml").unlink()
    (lines / "folder.xml").mkdir()
    with pytest.raises(DataError, match="folder.xml: is a directory"):
        load_iam_ondb(tmp_path / "iam")
    (lines / "folder.xml").rmdir()
    (lines / "big.xml").write_text('<WhiteboardCaptureSession><StrokeSet><Stroke><Point x="' + "9" * 401
                                   + '" y="1"/><Point x="1" y="1"/></Stroke></StrokeSet></WhiteboardCaptureSession>')
    with pytest.raises(DataError, match=r"big.xml: .*401 digits.*expected pen coordinates within"):
        load_iam_ondb(tmp_path / "iam")
    with pytest.raises(DataError, match="give its parent folder"):
        load_iam_ondb(tmp_path / "iam" / "lineStrokes")


def test_non_finite_data_is_named(data):
    from tfhier.data.base import SequenceData

    train = [s.copy() for s in data.train]
    train[3][5, 0] = np.nan
    bad = SequenceData(name="x", train=train, valid=data.valid, test=data.test, feature_dim=3, kind="handwriting",
                       info={"line_ids": {"train": [f"line-{i}" for i in range(len(train))]}})
    with pytest.raises(DataError, match=r"train sequence 3 holds a NaN or infinite value \(first at step 5, line "
                                        r"line-3\)"):
        bad.check()


def cli(*args):
    return subprocess.run([sys.executable, str(REPO / "train.py"), "--dataset=hershey", "--num_lines=8", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("arg, message", [
    ("--lr_decay_rate=inf", "--lr_decay_rate must be a finite number"),
    ("--clip_norm=nan", "--clip_norm must be a finite number"),
    ("--checkpoint_secs=nan", "--checkpoint_secs must be a finite number"),
    ("--head_components=0", "--head_components must be >= 1"),
    ("--head=bernoulli", "--head=bernoulli does not fit handwriting data"),
    ("--seed=-5", "--seed must be an integer in [0, 2^31 - 1]"),
    ("--batch_size=1000", "--batch_size=1000 is larger than the 8 training sequences"),
    ("--objective=fivo", "--objective=fivo needs a model with the recurrent step interface"),
    ("--objective=iwae --kl_regularizer=anneal", "--kl_regularizer is a setting of --objective=elbo"),
    ("--momentum=0.5", "--momentum is not a setting of --optimizer=adam"),
    ("--optimizer=nesterov_rmsprop --momentum=1", "--momentum must be in [0, 1), got 1.0"),
])
def test_silently_accepted_flags_are_one_clear_error(tmp_path, arg, message):
    res = cli(*arg.split(), f"--run_dir={tmp_path / 'r'}")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert message in res.stderr.strip().splitlines()[-1], res.stderr
    assert not (tmp_path / "r").exists()
