"""Everyday use: quiet batch logs and a live terminal line, run files readable by colleagues, the README's
Python API example, the HParams table, and the small rough edges (primed sample names, progress totals)."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
ENV.pop("TFHIER_TF_LOGS", None)

TINY = ["--dataset=hershey", "--num_lines=16", "--channels=8,8", "--latent_dims=2,2", "--strides=1,2",
        "--bu_dilations=1,2;1", "--td_blocks=1", "--kernel_size=2", "--head_components=2", "--batch_size=4",
        "--seq_len=32", "--eval_batches=1", "--log_every=5", "--num_samples=1", "--sample_steps=8",
        "--free_bits_halving_steps=10"]
TF_NOISE = ("oneDNN", "cuda", "cuInit", "cpu_feature_guard", "functional_saver", "Sharding callback",
            "absl::InitializeLog", "rebuild TensorFlow")


def run_tool(args, cwd=REPO, stdout=None, timeout=600):
    """A command line in a fresh process under umask 022 (the usual shared-machine setting)."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, stdout=stdout or subprocess.PIPE,
                          stderr=subprocess.STDOUT if stdout else subprocess.PIPE, text=True, timeout=timeout,
                          preexec_fn=lambda: os.umask(0o022))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """``runs/demo``: 30 steps (validation every 10) with stdout to a file; then sampled (plain and primed),
    evaluated and exported, as a user would, all under umask 022."""
    root = tmp_path_factory.mktemp("work")
    run = root / "runs" / "demo"
    with open(root / "train.log", "w") as log:
        done = run_tool([str(REPO / "train.py"), *TINY, f"--run_dir={run}", "--train_steps=30", "--eval_every=10",
                         "--checkpoint_every=10", "--sample_every=30"], stdout=log)
    assert done.returncode == 0, (root / "train.log").read_text()[-3000:]
    for args in (["sample.py", "--num_samples=1", "--num_steps=8", "--seed=1"],
                 ["sample.py", "--num_samples=1", "--num_steps=8", "--seed=1", "--prime_split=test",
                  "--prime_steps=6"],
                 ["evaluate.py", "--split=valid", "--iw_samples=2", "--max_sequences=2", "--plots=1"],
                 ["export/export.py", f"--export_base={root / 'exports'}"]):
        done = run_tool([str(REPO / args[0]), f"--run_dir={run}", *args[1:]])
        assert done.returncode == 0, done.stderr[-3000:]
        assert not [n for n in TF_NOISE if n in done.stderr], done.stderr[-3000:]
    return root


def test_batch_log_is_one_line_per_validation_interval(runs_dir):
    text = (runs_dir / "train.log").read_text()
    assert "\r" not in text and "\b" not in text
    assert not [n for n in TF_NOISE if n in text], text
    steps = re.findall(r"^step (\d+)/30  train: loss ", text, re.M)
    assert steps == ["10", "20", "30"], text
    for line in text.splitlines():
        if line.startswith("step 10/30"):
            assert "valid: neg_elbo_per_step" in line and "kl/total" in line and "steps/s" in line, line
            assert len(line) < 250, line
    assert len(text.encode()) < 2000, text  # 2,000 steps at --eval_every=250 would be well under 50 kB


def test_terminal_run_shows_a_live_line(tmp_path):
    """In a pseudo-terminal, --verbose=auto redraws one line in place (carriage returns) with the key numbers."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *TINY, f"--run_dir={tmp_path / 'r'}",
                             "--train_steps=8", "--eval_every=8", "--sample_every=1000", "--checkpoint_every=8"],
                            cwd=REPO, env=ENV, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=60) == 0
    os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    live = [part for part in out.split("\r") if part.startswith("step ") and "[" in part]
    assert live, out[-2000:]
    assert "steps/s" in live[-1] and "ETA" in live[-1] and "kl/total" in live[-1], live[-1]
    assert re.search(r"^step 8/8  train: ", out.replace("\r", "\n"), re.M), out[-2000:]


def test_every_run_file_is_readable_by_group_and_others(runs_dir):
    paths = [p for p in (runs_dir / "runs").rglob("*")] + [p for p in (runs_dir / "exports").rglob("*")]
    kinds = {p.suffix for p in paths if p.is_file()}
    assert {".json", ".cfg", ".png", ".npz", ".md", ".index"} <= kinds, kinds
    private = [str(p) for p in paths if (stat.S_IMODE(p.stat().st_mode) & 0o044) != 0o044]
    assert not private, private
    dirs = [str(p) for p in paths if p.is_dir() and (stat.S_IMODE(p.stat().st_mode) & 0o055) != 0o055]
    assert not dirs, dirs


def test_primed_samples_have_their_own_name_and_colour(runs_dir):
    samples = runs_dir / "runs" / "demo" / "samples"
    assert (samples / "sample_1.png").exists() and (samples / "sample_1_primed_test0.png").exists()
    primed = np.load(samples / "sample_1_primed_test0.npz")
    assert int(primed["prefix_steps"]) == 6 and primed["samples"].shape[1] == 6 + 8
    assert int(np.load(samples / "sample_1.npz")["prefix_steps"]) == 0


def test_prefix_is_drawn_in_its_own_colour():
    from matplotlib.colors import to_rgb

    from tfhier import plotting

    steps = np.tile(np.array([[1.0, 0.3, 0.0]], np.float32), (40, 1))
    r, _, b = to_rgb(plotting.PREFIX_COLOR)
    assert b - r > 0.3  # (the test tells the prefix's blue from the black continuation by blue minus red)

    def fraction_prefix_coloured(prefix_steps):
        fig = plotting.handwriting_figure([steps], prefix_steps=prefix_steps)
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
        inked = np.abs(pixels - 255).sum(-1) > 60
        coloured = inked & (pixels[..., 2] - pixels[..., 0] > 30)  # antialiased edges keep the hue
        return coloured.sum() / max(inked.sum(), 1)

    assert fraction_prefix_coloured(0) == 0.0
    assert 0.3 < fraction_prefix_coloured(20) < 0.7  # half the (straight) line is the prefix
    assert fraction_prefix_coloured(40) > 0.9


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_outside_the_repository(runs_dir):
    code = readme_python_example()
    assert 'tfhier.load_run("runs/demo")' in code
    done = subprocess.run([sys.executable, "-c", code], cwd=runs_dir, env={**ENV, "PYTHONPATH": ""},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "msstcn" in done.stdout
    assert (runs_dir / "my_samples" / "unprimed.png").exists()
    # The printed numbers: two score lines of 4 finite bounds, then the report's per-step ELBO and IWAE.
    lines = done.stdout.strip().splitlines()
    assert len(lines) >= 4, done.stdout
    last = [float(v) for v in lines[-1].split()]
    assert len(last) == 2 and all(np.isfinite(last)), lines[-1]


def test_api_matches_the_evaluator_and_the_sampler(runs_dir):
    """load_run's numbers are the library's: the same ELBO as evaluate_sequences, the same draw as
    model.generate for one seed (and another draw for another seed)."""
    import tensorflow as tf

    import tfhier
    from tfhier.evaluation import evaluate_sequences

    run = tfhier.load_run(runs_dir / "runs" / "demo", "latest")
    assert run.step == 30 and run.checkpoint.endswith("ckpt-30")
    seqs = run.data.split("valid")[:3]
    np.testing.assert_allclose(run.score(seqs, seed=4),
                               evaluate_sequences(run.model, seqs, iw_samples=1, seed=4, fivo_particles=0).elbo)
    a = run.sample(2, 12, seed=5)
    np.testing.assert_array_equal(a, run.model.generate(2, 12, tf.constant([5, 0]), 1.0).numpy())
    assert not np.array_equal(a, run.sample(2, 12, seed=6))
    cont = run.continue_sequences([seqs[0][:7], seqs[1][:5]], num_steps=4, seed=5)
    assert cont.shape == (2, 4, 3) and np.all(np.isfinite(cont))
    with pytest.raises(ValueError, match="num_steps"):
        run.sample(1, 0)
    with pytest.raises(ValueError, match=r"prefixes\[0\]"):
        run.continue_sequences([np.zeros([0, 3])], 4)


def test_hparams_table_has_one_row_per_run(runs_dir, tmp_path):
    """TensorBoard's HParams plugin: one session per run under runs/, with the model's hyperparameters and the
    training settings, and the validation bound tags it uses as metrics."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    from tfhier import training
    from tfhier.data.hershey import make_hershey_handwriting

    # A second run, of another model family, beside runs/demo.
    data = make_hershey_handwriting(num_train=8, num_valid=2, num_test=2, seed=1)
    training.train(str(runs_dir / "runs" / "vrnn"), "vrnn", dict(head="handwriting", head_components=2,
                   latent_dims=[3], rnn_units=5, mlp_hidden=[6], feature_units=4), data,
                   training.TrainSettings(train_steps=2, batch_size=2, seq_len=16, eval_every=2, eval_batches=1,
                                          sample_every=1000, verbose=0))
    sessions = {}
    for event_file in (runs_dir / "runs").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != metadata.PLUGIN_NAME:
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    info = data.session_start_info
                    sessions[event_file.parent] = {k: v for k, v in info.hparams.items()}
    assert sorted(sessions) == [runs_dir / "runs" / name / "logs" for name in ("demo", "vrnn")], sessions
    assert sessions[runs_dir / "runs" / "vrnn" / "logs"]["model"].string_value == "vrnn"
    assert sessions[runs_dir / "runs" / "vrnn" / "logs"]["model.rnn_units"].number_value == 5
    hparams = sessions[runs_dir / "runs" / "demo" / "logs"]
    assert hparams["model"].string_value == "msstcn" and hparams["dataset"].string_value == "hershey"
    assert hparams["model.td_blocks"].number_value == 1 and hparams["train.batch_size"].number_value == 4
    assert hparams["model.channels"].string_value == "[8, 8]"
    tags = set()
    for event_file in (runs_dir / "runs" / "demo" / "logs" / "validation").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {v.tag for v in event.summary.value}
    assert "bounds/neg_elbo_per_step" in tags


def test_resumed_run_counts_the_run_s_own_steps(tmp_path, capsys):
    """Validation (and its console line) falls on multiples of --eval_every and at --train_steps, also when
    --train_steps is not a multiple and after a resume mid-interval; the console shows step/train_steps."""
    import tensorflow as tf

    from tfhier import training
    from tfhier.data.hershey import make_hershey_handwriting

    data = make_hershey_handwriting(num_train=8, num_valid=2, num_test=2, seed=1)
    model = dict(head="handwriting", head_components=2, channels=[8, 8], latent_dims=[2, 2], strides=[1, 2],
                 bu_dilations=[[1, 2], [1]], td_blocks=1, kernel_size=2)

    def settings(steps):
        return training.TrainSettings(train_steps=steps, batch_size=2, seq_len=16, eval_every=3, eval_batches=1,
                                      checkpoint_every=1, sample_every=1000, log_every=1, verbose=2)

    run = tmp_path / "run"
    training.train(str(run), "msstcn", model, data, settings(4))
    first = capsys.readouterr().out
    training.train(str(run), "msstcn", model, data, settings(8))
    second = capsys.readouterr().out
    assert re.findall(r"^step (\d+/\d+)  train", first, re.M) == ["3/4", "4/4"], first
    assert re.findall(r"^step (\d+/\d+)  train", second, re.M) == ["6/8", "8/8"], second
    assert "Epoch" not in first + second
    steps = []
    for event_file in sorted((run / "logs" / "validation").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            if any(v.tag == "bounds/neg_elbo_per_step" for v in event.summary.value):
                steps.append(event.step)
    assert steps == [3, 4, 6, 8]


def test_bad_training_flags_are_refused_before_any_data_is_read(tmp_path):
    """A data folder that does not exist would be the error if the data were read first."""
    for flag in ("--batch_size=0", "--seq_len=0", "--learning_rate=-1"):
        done = run_tool([str(REPO / "train.py"), "--dataset=iam_ondb", f"--data_dir={tmp_path / 'nope'}",
                         f"--run_dir={tmp_path / 'r'}", flag], timeout=300)
        assert done.returncode != 0
        assert flag.split("=")[0] in done.stderr and "data_dir" not in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()
