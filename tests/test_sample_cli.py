"""sample.py: samples from a (tiny, freshly trained) run directory; bad flags fail in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfhier import training
from tfhier.data import load_dataset

REPO = Path(__file__).resolve().parents[1]

MODEL = dict(head="handwriting", head_components=2, channels=[8, 8], latent_dims=[2, 2], strides=[1, 2],
             bu_dilations=[[1, 2], [1]], td_blocks=1)
FLAGS_TEXT = "--dataset=hershey\n--num_lines=16\n--seed=1\n--train_steps=2\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-step run on 16 embedded Hershey lines, as ``train.py --dataset=hershey --num_lines=16 --seed=1``."""
    data = load_dataset("hershey", seed=1, num_lines=16)
    path = str(tmp_path_factory.mktemp("sample") / "run")
    settings = training.TrainSettings(train_steps=2, batch_size=4, seq_len=32, learning_rate=3e-3, eval_every=2,
                                      eval_batches=1, log_every=2, checkpoint_every=2, sample_every=10_000,
                                      num_samples=0, seed=1, verbose=0)
    training.train(path, "msstcn", MODEL, data, settings, flags_text=FLAGS_TEXT)
    return path


def sample_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "sample.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_writes_npz_png_and_json(run_dir):
    """One run (each costs ~15 s of imports and tracing here): primed, cached; the naive method and unprimed
    generation are compared in test_generation.py."""
    out = Path(run_dir) / "samples" / "sample_5_primed_test1"  # the default --out of a primed sample
    res = sample_cli(f"--run_dir={run_dir}", "--num_samples=2", "--num_steps=12", "--seed=5", "--temperature=0.7",
                     "--prime_split=test", "--prime_index=1", "--prime_steps=9")
    assert res.returncode == 0, res.stderr
    assert "written:" in res.stdout
    x = np.load(f"{out}.npz")["samples"]
    assert x.shape == (2, 9 + 12, 3)
    assert np.isfinite(x).all()
    assert set(np.unique(x[..., 2])) <= {0.0, 1.0}
    # The prefix is the test line's first 9 steps, reloaded with the run's data flags.
    prime = load_dataset("hershey", seed=1, num_lines=16).test[1][:9]
    np.testing.assert_array_equal(x[0, :9], prime)
    np.testing.assert_array_equal(x[1, :9], prime)
    assert not np.allclose(x[0, 9:], x[1, 9:])  # two different continuations
    png = Path(f"{out}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["method"] == "cached" and meta["prime_steps"] == 9 and meta["shape"] == [2, 21, 3]


def test_saved_model_sample_signature_matches_in_process_generation(run_dir, tmp_path):
    """--saved_model draws through the export's `sample` signature: the model's own samples for that seed."""
    import tensorflow as tf

    from tfhier import runs, serving

    export = serving.export_run(run_dir, str(tmp_path / "exports"))
    out = tmp_path / "from_export"
    res = sample_cli(f"--saved_model={export.path}", f"--out={out}", "--num_samples=3", "--num_steps=10",
                     "--seed=4", "--temperature=0.8")
    assert res.returncode == 0, res.stderr
    x = np.load(f"{out}.npz")["samples"]
    model = runs.load_model(run_dir)[0]
    expected = model.generate(3, 10, tf.constant([4, 0]), 0.8).numpy()
    np.testing.assert_allclose(x, expected, atol=1e-5, rtol=0)
    assert Path(f"{out}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path(f"{out}.json").read_text())["signature"] == "sample"
    # This command's own guard, then (raised) the export's own limit: each one clear error.
    res = sample_cli(f"--saved_model={export.path}", f"--out={out}", "--num_steps=100000")
    assert res.returncode != 0 and "more than --max_steps=5000" in res.stderr and "Traceback" not in res.stderr
    res = sample_cli(f"--saved_model={export.path}", f"--out={out}", "--num_steps=100000", "--max_steps=100000")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "refused the request" in res.stderr.strip().splitlines()[-1] and "num_steps" in res.stderr


@pytest.mark.parametrize("args, message", [
    ([], "--run_dir is required"),
    (["--run_dir={missing}"], "does not exist"),
    (["--run_dir={run}", "--num_steps=0"], "--num_steps must be"),
    (["--run_dir={run}", "--temperature=0"], "--temperature must be"),
    (["--run_dir={run}", "--method=fast"], "--method must be one of"),
    (["--run_dir={run}", "--prime_split=dev"], "--prime_split must be one of"),
    (["--run_dir={run}", "--num_samples=two"], "num_samples"),
    (["--run_dir={run}", "--no_such_flag=1"], "no_such_flag"),
    (["--run_dir={run}", "extra"], "unexpected arguments"),
    (["--run_dir={tmp}"], "no config.json"),
    (["--saved_model={tmp}", "--out={tmp}/x"], "no saved_model.pb"),
])
def test_bad_flags_fail_in_one_line(run_dir, tmp_path, args, message):
    args = [a.format(run=run_dir, missing=tmp_path / "missing", tmp=tmp_path) for a in args]
    res = sample_cli(*args)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("sample.py: error:") and message in last, res.stderr
    # Flag problems are found before TensorFlow is imported: nothing else is printed.
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
