"""MS-STCN learns on the real IAM-OnDB sample lines (../shared/data/iam_ondb).

CI runs a short version; ``TFHIER_FULL=1`` runs the long one (marked slow).
"""

import os
from pathlib import Path

import numpy as np
import pytest

from tfhier import training
from tfhier.data.iam_ondb import load_iam_ondb
from tfhier.data.pipeline import make_dataset

IAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "iam_ondb"
FULL = os.environ.get("TFHIER_FULL") == "1"

pytestmark = pytest.mark.skipif(not IAM.exists(), reason="../shared/data/iam_ondb not present")


def valid_neg_elbo(model, data):
    ds = make_dataset(data.valid, 8, training=False, pad_to_multiple=model.time_multiple)
    total, steps = 0.0, 0.0
    for x, mask in ds:
        s = model.score(x, mask, np.array([0, 0], np.int32))
        total += float(-s["elbo"].numpy().sum())
        steps += float(s["num_steps"].numpy().sum())
    return total / steps


@pytest.mark.parametrize("steps", [pytest.param(300, marks=pytest.mark.slow)] if FULL else [40])
def test_msstcn_validation_bound_improves_on_iam_sample(tmp_path, steps):
    data = load_iam_ondb(IAM)
    config = dict(head="handwriting", head_components=3, channels=[16, 16, 16], latent_dims=[4, 4, 2],
                  strides=[1, 2, 2], bu_dilations=[[1, 2, 4], [1, 2], [1, 2]], td_blocks=1)
    settings = training.TrainSettings(train_steps=steps, batch_size=8, seq_len=256, learning_rate=2e-3,
                                      eval_every=steps, eval_batches=1, log_every=10, checkpoint_every=steps,
                                      sample_every=10 * steps, num_samples=0, verbose=0)
    untrained, _ = training.train(str(tmp_path / "r0"), "msstcn", config, data,
                                  training.TrainSettings(**{**settings.__dict__, "train_steps": 1,
                                                            "learning_rate": 1e-12}))
    before = valid_neg_elbo(untrained, data)
    model, _ = training.train(str(tmp_path / "r1"), "msstcn", config, data, settings)
    after = valid_neg_elbo(model, data)
    # Validation lines come from forms never trained on (split by form id).
    assert set(data.info["line_ids"]["valid"]).isdisjoint(data.info["line_ids"]["train"])
    assert after < before - 0.5, (before, after)


def test_mirrored_iam_cfg_training_resumes_after_sigkill(tmp_path):
    """``train.py --flagfile=configs/iam.cfg --strategy=mirrored --cpu_devices=2`` on the IAM-OnDB sample lines,
    killed with SIGKILL after its first checkpoint: the same command resumes from it and finishes."""
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    cmd = [sys.executable, str(repo / "train.py"), "--flagfile=configs/iam.cfg", f"--data_dir={IAM}",
           f"--run_dir={run}", "--strategy=mirrored", "--cpu_devices=2", "--batch_size=4", "--seq_len=128",
           "--train_steps=8", "--eval_every=4", "--eval_batches=1", "--checkpoint_every=2", "--log_every=2",
           "--sample_every=1000", "--verbose=0"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    try:
        while not (run / "checkpoints" / "ckpt-2.index").exists():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "resumed from" in out.stdout and f"done: {run}" in out.stdout, out.stdout
    assert (run / "checkpoints" / "ckpt-8.index").exists()
