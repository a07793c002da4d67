"""Training on a user's own sequences: docs/own_data.md's tfhier.fit example run from a folder outside the
repository (trains, resumes, loads), and train.py + sample.py on a CSV folder (samples back in the data's
header and units)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


def docs_fit_example() -> str:
    text = (REPO / "docs" / "own_data.md").read_text()
    match = re.search(r"<!-- fit-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/own_data.md lost its fit example"
    return match.group(1)


def test_docs_fit_example_trains_resumes_and_loads(tmp_path):
    done = subprocess.run([sys.executable, "-c", docs_fit_example()], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "vrnn on sequences, step 20" in done.stdout, done.stdout
    assert "resumed from" in done.stdout and lines[-1] == "30", done.stdout
    run = tmp_path / "runs" / "walks"
    for name in ("config.json", "flags.cfg", "data.npz", "samples/mine_0.npy", "samples/mine.png"):
        assert (run / name).exists(), name
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    # the samples come back in the data's units (random walks wander far from the standardised 0 / 1)
    x = np.load(run / "samples" / "mine_0.npy")
    assert x.shape == (50, 3) and np.isfinite(x).all()
    import tfhier

    loaded = tfhier.load_run(str(run), "latest")
    assert loaded.step == 30 and len(loaded.data.valid) == 8 and loaded.data.info["standardized"]


def test_train_and_sample_on_a_csv_folder(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "recordings"
    for split, n in (("train", 12), ("test", 3)):
        os.makedirs(data / split)
        for i in range(n):
            t = np.arange(int(rng.integers(20, 40)))[:, None]
            x = np.concatenate([1000 + 50 * np.sin(t / 3 + i), -2 + 0.01 * rng.normal(size=t.shape)], axis=1)
            np.savetxt(data / split / f"r{i}.csv", x, delimiter=";", header="pressure;temp", comments="")
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "--model=stcn", "--dataset=sequences",
                           f"--data_dir={data}", f"--run_dir={run}", "--train_steps=30", "--batch_size=4",
                           "--eval_every=15", "--channels=8,8", "--dilations=1,2", "--latent_dims=2,2",
                           "--latent_hidden=8", "--output_hidden=8", "--num_samples=0", "--verbose=2"],
                          env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = re.search(r"sequences: (\d+) train / (\d+) valid / 3 test sequences of 2-d steps", done.stdout)
    assert counts and int(counts[1]) + int(counts[2]) == 12 and int(counts[2]) >= 1, done.stdout
    losses = [float(v) for v in re.findall(r"train: loss (\S+)", done.stdout)]
    assert len(losses) == 2 and losses[1] < losses[0], done.stdout
    done = subprocess.run([sys.executable, str(REPO / "sample.py"), f"--run_dir={run}", "--num_samples=3",
                           "--num_steps=40"], env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (run / "samples" / "sample_0_2.csv").read_text().splitlines()
    assert lines[0] == "pressure;temp" and len(lines) == 41
    x = np.array([[float(v) for v in line.split(";")] for line in lines[1:]])
    # in the data's units: pressure near 1000 (standardised it would be near 0)
    assert 800 < np.median(x[:, 0]) < 1200, x[:5]
    assert (run / "samples" / "sample_0.png").stat().st_size > 1000
