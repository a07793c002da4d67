"""Evaluation: run loading (tfhier.runs), bounds, KL, active units (tfhier.evaluation) and evaluate.py.

One tiny MS-STCN is trained once for the module on the embedded Hershey data,
loaded exactly as ``train.py --dataset=hershey --num_lines=16 --seed=1``
would, so that ``tfhier.runs`` reloads identical data from flags.cfg.
Reference numbers are recomputed here from the model's distributions with
numpy/scipy, batch by batch with the seeds the module documents.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import logsumexp
from scipy.stats import norm

from tfhier import evaluation, runs, training
from tfhier.data import load_dataset
from tfhier.data.pipeline import make_dataset

REPO = Path(__file__).resolve().parents[1]

MODEL = dict(head="handwriting", head_components=2, channels=[8, 8], latent_dims=[2, 2], strides=[1, 2],
             bu_dilations=[[1, 2], [1]], td_blocks=1)
FLAGS_TEXT = "--dataset=hershey\n--num_lines=16\n--seed=1\n--train_steps=30\n"
TRAIN_STEPS = 30
NUM_SEQ = 12  # test sequences used by the numeric tests (2 batches of BATCH)
BATCH = 6
SEED = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run_dir, trained model, data): a 30-step run with a checkpoint and flags.cfg."""
    data = load_dataset("hershey", seed=1, num_lines=16)
    run_dir = str(tmp_path_factory.mktemp("eval") / "run")
    settings = training.TrainSettings(train_steps=TRAIN_STEPS, batch_size=8, seq_len=64, learning_rate=3e-3,
                                      eval_every=TRAIN_STEPS, eval_batches=1, log_every=TRAIN_STEPS,
                                      checkpoint_every=TRAIN_STEPS, sample_every=10_000, num_samples=0,
                                      free_bits=0.02, seed=1, verbose=0)
    model, _ = training.train(run_dir, "msstcn", MODEL, data, settings, flags_text=FLAGS_TEXT)
    return run_dir, model, data


@pytest.fixture(scope="module")
def loaded(trained):
    run_dir, _, _ = trained
    return runs.load_run(run_dir)


@pytest.fixture(scope="module")
def results(loaded):
    """Evaluations of the first NUM_SEQ test sequences with K = 1, 4, 16 (nested samples) and K=4 chunked."""
    evaluator = evaluation.Evaluator(loaded.model)
    seqs = loaded.data.test[:NUM_SEQ]
    out = {k: evaluator.evaluate(seqs, iw_samples=k, batch_size=BATCH, seed=SEED) for k in (1, 4, 16)}
    out["chunked"] = evaluator.evaluate(seqs, iw_samples=4, batch_size=BATCH, seed=SEED, iw_chunk=3)
    return out


def batches(model, seqs):
    """The batches evaluation sees: (batch index, x, mask)."""
    ds = make_dataset(list(seqs), BATCH, training=False, pad_to_multiple=model.time_multiple)
    return list(enumerate(ds))


def reference_log_weights(model, x, mask, seed, copies=1):
    """log p(x|z) + log p(z) - log q(z) per sequence, [copies, B], with scipy densities for the latents."""
    xt, mt = tf.tile(x, [copies, 1, 1]), tf.tile(mask, [copies, 1])
    out = model.forward(xt, mt, seed=seed)
    m = mt.numpy().astype(np.float64)
    log_w = (out.likelihood.log_prob(xt).numpy().astype(np.float64) * m).sum(axis=1)
    for q, p, z, lm in zip(out.posteriors, out.priors, out.latents, out.latent_masks):
        z = z.numpy().astype(np.float64)
        log_pz = norm.logpdf(z, p.loc.numpy(), p.scale.numpy())
        log_qz = norm.logpdf(z, q.loc.numpy(), q.scale.numpy())
        log_w += ((log_pz - log_qz) * lm.numpy()[..., None]).sum(axis=(1, 2))
    return log_w.reshape(copies, -1)


def paired_stderr(d):
    return float(np.std(d, ddof=1) / math.sqrt(len(d)))


# ------------------------------------------------------------------------------------------------ runs

def test_load_run_restores_every_weight_and_the_data(trained, loaded):
    _, model, data = trained
    assert loaded.step == TRAIN_STEPS and loaded.checkpoint.endswith(f"ckpt-{TRAIN_STEPS}")
    trained_weights = {v.path: v.numpy() for v in model.weights}
    restored = {v.path: v.numpy() for v in loaded.model.weights}
    assert set(restored) == set(trained_weights)
    for path, value in trained_weights.items():
        np.testing.assert_array_equal(restored[path], value, err_msg=path)
    # Trained weights, not the zero initialisation of the latent projections.
    assert np.abs(restored["posterior_1/kernel"]).max() > 0
    assert len(loaded.data.test) == len(data.test)
    for a, b in zip(loaded.data.test, data.test):
        np.testing.assert_array_equal(a, b)
    assert loaded.data.info["offset_scale"] == data.info["offset_scale"]


def test_run_errors_name_the_problem(trained, tmp_path):
    run_dir, _, _ = trained
    with pytest.raises(runs.RunError, match="does not exist"):
        runs.load_run(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(runs.RunError, match="no config.json"):
        runs.load_run(str(empty))
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(os.path.join(run_dir, "config.json"), no_ckpt / "config.json")
    with pytest.raises(runs.RunError, match="no checkpoint"):
        runs.load_run(str(no_ckpt))
    # Data flags that give other data than the run was trained on are refused (other offset scale).
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    (other / "flags.cfg").write_text(FLAGS_TEXT.replace("--num_lines=16", "--num_lines=15"))
    with pytest.raises(runs.RunError, match="not the data the run was trained on.*offset_scale"):
        runs.load_run_data(str(other))


def test_parse_flags_text():
    text = "# comment\n--dataset=hershey\n\n--bu_dilations=1,2;1\n--jit_compile\n--nojit_compile\n--seed=1\n--seed=2\n"
    assert runs.parse_flags_text(text) == {"dataset": "hershey", "bu_dilations": "1,2;1", "jit_compile": "false",
                                           "seed": "2"}
    with pytest.raises(runs.RunError, match="line 1"):
        runs.parse_flags_text("dataset=hershey\n")


# ---------------------------------------------------------------------------------------------- bounds

def test_iwae_is_logmeanexp_of_log_weights(loaded, results):
    model, seqs = loaded.model, loaded.data.test[:NUM_SEQ]
    expected, expected_chunked = [], []
    for i, (x, mask) in batches(model, seqs):
        # iw_chunk=1: sample k is one forward pass with iw_seed(seed, batch, k).
        log_w = np.concatenate([reference_log_weights(model, x, mask, evaluation.iw_seed(SEED, i, k))
                                for k in range(4)])
        expected.append(logsumexp(log_w, axis=0) - np.log(4))
        # iw_chunk=3 with K=4: a chunk of 3 tiled copies, then one of 1.
        log_w = np.concatenate([reference_log_weights(model, x, mask, evaluation.iw_seed(SEED, i, 0), copies=3),
                                reference_log_weights(model, x, mask, evaluation.iw_seed(SEED, i, 1), copies=1)])
        expected_chunked.append(logsumexp(log_w, axis=0) - np.log(4))
    np.testing.assert_allclose(results[4].iwae, np.concatenate(expected), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(results["chunked"].iwae, np.concatenate(expected_chunked), rtol=1e-5, atol=1e-3)


def test_iwae_bound_above_elbo_and_nondecreasing_in_k(results):
    r1, r4, r16 = results[1], results[4], results[16]
    # Same expectation: the sampled-z ELBO (K=1) and the analytic-KL ELBO.
    d = r1.iwae - r1.elbo
    assert abs(d.mean()) <= 3 * paired_stderr(d) + 1e-3, (d.mean(), paired_stderr(d))
    for low, high in ((r1.iwae, r4.iwae), (r4.iwae, r16.iwae), (r16.elbo, r16.iwae)):
        d = high - low
        assert d.mean() >= -3 * paired_stderr(d), (d.mean(), paired_stderr(d))
    # The gain from K=1 to K=16 is real here (log-weights vary by many nats across samples).
    d = r16.iwae - r1.iwae
    assert d.mean() > 2 * paired_stderr(d) > 0


# ------------------------------------------------------------------------------------------- KL, units

def test_active_units_match_numpy_covariance(loaded, results):
    model, seqs = loaded.model, loaded.data.test[:NUM_SEQ]
    means = [[] for _ in model.latent_layer_names]
    for i, (x, mask) in batches(model, seqs):
        out = model.forward(x, mask, seed=evaluation.elbo_seed(SEED, i))
        for l, (q, m) in enumerate(zip(out.posteriors, out.latent_masks)):
            means[l].append(q.mean().numpy()[m.numpy() > 0])
    r = results[4]
    for l, name in enumerate(model.latent_layer_names):
        pairs = np.concatenate(means[l]).astype(np.float64)  # [(sequence, valid step) pairs, Z_l]
        variance = np.cov(pairs, rowvar=False, bias=True).diagonal()
        assert r.posterior_mean_count[l] == pairs.shape[0]
        np.testing.assert_allclose(r.posterior_mean_variance[l], variance, rtol=1e-4, atol=1e-9)
        # Thresholds on both sides of every unit's variance, so every count from 0 to Z_l is checked.
        for t in [evaluation.ACTIVE_UNIT_THRESHOLD, *(variance * 0.9), *(variance * 1.1)]:
            assert r.active_units(t)[name] == (int(np.sum(variance > t)), pairs.shape[1])
        assert r.summary()["active_units"][name]["active"] == int(np.sum(variance > 0.01))


def test_evaluate_run_report_kl_and_elbo_match_score(trained, loaded):
    run_dir, _, _ = trained
    report = evaluation.evaluate_run(run_dir, "test", iw_samples=2, batch_size=BATCH, max_sequences=NUM_SEQ,
                                     seed=SEED)
    with open(os.path.join(run_dir, "eval_test.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(report))
    model = loaded.model
    kl, elbo, steps = [], [], []
    for i, (x, mask) in batches(model, loaded.data.test[:NUM_SEQ]):
        scores = model.score(x, mask, evaluation.elbo_seed(SEED, i))
        kl.append(scores["kl"].numpy())
        elbo.append(scores["elbo"].numpy())
        steps.append(scores["num_steps"].numpy())
    kl, elbo, steps = np.concatenate(kl), np.concatenate(elbo), np.concatenate(steps)
    assert kl.mean(axis=0).max() > 1e-3  # the KL is not trivially zero
    for l, name in enumerate(model.latent_layer_names):
        assert saved["kl_per_layer"][name]["per_sequence"] == pytest.approx(kl[:, l].mean(), rel=1e-4, abs=1e-5)
    assert saved["elbo"]["per_sequence"] == pytest.approx(elbo.mean(), rel=1e-5)
    assert saved["elbo"]["per_step"] == pytest.approx(elbo.sum() / steps.sum(), rel=1e-5)
    assert saved["num_sequences"] == NUM_SEQ and saved["num_steps"] == int(steps.sum())
    assert saved["checkpoint_step"] == TRAIN_STEPS and saved["iw_samples"] == 2
    assert set(saved["active_units"]) == {"layer_1", "layer_2"}
    assert all(au["total"] == 2 for au in saved["active_units"].values())
    md = Path(run_dir, "eval_test.md").read_text()
    assert "| ELBO |" in md and "| IWAE bound (K=2) |" in md and "| layer_2 |" in md
    with pytest.raises(ValueError, match="--iw_samples"):
        evaluation.evaluate_run(run_dir, "test", iw_samples=0)
    with pytest.raises(ValueError, match="--split"):
        evaluation.evaluate_run(run_dir, "dev")


# -------------------------------------------------------------------------------------------------- CLI

def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "evaluate.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_rejects_bad_flags(trained, tmp_path):
    run_dir, _, _ = trained
    for args, flag in [([f"--run_dir={tmp_path / 'missing'}"], "--run_dir"),
                       ([f"--run_dir={run_dir}", "--iw_samples=0"], "--iw_samples"),
                       ([f"--run_dir={run_dir}", "--split=dev"], "--split")]:
        proc = _cli(*args)
        assert proc.returncode != 0
        assert f"evaluate.py: error: {flag}" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_cli_writes_json_and_markdown(trained, tmp_path):
    run_dir, _, _ = trained
    run = tmp_path / "cli_run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("eval_*"))
    proc = _cli(f"--run_dir={run}", "--split=valid", "--iw_samples=3", "--iw_chunk=2", "--batch_size=4",
                "--max_sequences=5")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((run / "eval_valid.json").read_text())
    md = (run / "eval_valid.md").read_text()
    assert report["split"] == "valid" and report["num_sequences"] == 5 and report["iw_samples"] == 3
    assert math.isfinite(report["iwae"]["per_sequence"]) and math.isfinite(report["elbo"]["per_step"])
    assert "| IWAE bound (K=3) |" in md and "| IWAE bound (K=3) |" in proc.stdout
    assert not [p for p in os.listdir(run) if p.startswith(".tmp_")]
