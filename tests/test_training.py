"""The trainer: run directory, checkpoints and resume, TensorBoard tags, refusal of bad input."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tfhier import training
from tfhier.data.base import SequenceData
from tfhier.data.hershey import make_hershey_handwriting

REPO = Path(__file__).resolve().parents[1]

MODEL = dict(head="handwriting", head_components=2, channels=[8, 8], latent_dims=[2, 2], strides=[1, 2],
             bu_dilations=[[1, 2], [1]], td_blocks=1, kernel_size=2)


def settings(**overrides):
    base = dict(train_steps=4, batch_size=4, seq_len=32, eval_every=2, eval_batches=1, log_every=1,
                checkpoint_every=2, sample_every=4, num_samples=1, sample_steps=8, free_bits_halving_steps=4,
                verbose=0)
    base.update(overrides)
    return training.TrainSettings(**base)


@pytest.fixture(scope="module")
def data():
    return make_hershey_handwriting(num_train=16, num_valid=4, num_test=4, seed=1)


def files_digest(run_dir):
    """Hash of every file under run_dir except TensorBoard logs (which a refused run may not touch either)."""
    digest = {}
    for path in sorted(Path(run_dir).rglob("*")):
        if path.is_file():
            digest[str(path.relative_to(run_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def event_tags(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return acc, set(acc.Tags()["tensors"])


def test_train_writes_run_dir_and_resumes(tmp_path, data, capsys):
    run = tmp_path / "run"
    model, _ = training.train(str(run), "msstcn", MODEL, data, settings(), flags_text="--seed=0\n")
    assert int(model.optimizer.iterations.numpy()) == 4
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "msstcn" and config["model_config"]["channels"] == [8, 8]
    assert (run / "flags.cfg").read_text() == "--seed=0\n"
    assert (run / "samples" / "step_0000004.png").stat().st_size > 0
    assert (run / "checkpoints" / "ckpt-4.index").exists()
    # Early stopping: R/best holds the checkpoint of the lowest validation -ELBO per step so far.
    val_acc, _ = event_tags(run / "logs" / "validation")
    import tensorflow as tf

    val = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in val_acc.Tensors("neg_elbo_per_step")}
    best_step = min(val, key=val.get)
    assert tf.train.latest_checkpoint(str(run / "best")).endswith(f"ckpt-{best_step}")

    # Every model weight is in the checkpoint under its path (not only via the optimizer's slots).
    import tensorflow as tf

    stored = {name for name, _ in tf.train.list_variables(str(run / "checkpoints" / "ckpt-4"))}
    for v in model.weights:
        assert any(name.startswith("model/") and v.path in name.replace(".S", "/") for name in stored), v.path

    acc, tags = event_tags(run / "logs" / "train")
    assert {"kl/layer_1", "kl/layer_2", "kl/total", "neg_elbo", "nll", "free_bits_lambda", "learning_rate",
            "grad_norm", "loss"} <= tags
    assert [e.step for e in acc.Tensors("loss")] == [1, 2, 3, 4]
    assert "samples/handwriting" in tags
    _, val_tags = event_tags(run / "logs" / "validation")
    assert {"neg_elbo", "kl/layer_1", "kl/layer_2"} <= val_tags

    # Resume: same run_dir, more steps; the step and the free-bits lambda continue.
    capsys.readouterr()
    model, _ = training.train(str(run), "msstcn", MODEL, data, settings(train_steps=6), flags_text="--seed=0\n")
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "at step 4" in printed
    # Restored before any new step: the lambda of the last step taken (iteration 3 of 0..3).
    assert f"lambda {0.5 * 0.5 ** (3 / 4):.4g}" in printed
    assert int(model.optimizer.iterations.numpy()) == 6
    import tensorflow as tf

    lam = [float(tf.make_ndarray(e.tensor_proto)) for e in
           event_tags(run / "logs" / "train")[0].Tensors("free_bits_lambda")]
    assert math.isclose(lam[-1], 0.5 * 0.5 ** (5 / 4), rel_tol=1e-5)  # logged after iteration 5


def test_train_scalars_are_flushed_before_validation(tmp_path, data):
    """With log_every beyond the run, each epoch's training interval is still written, with training values."""
    import tensorflow as tf

    run = tmp_path / "run"
    training.train(str(run), "msstcn", MODEL, data, settings(log_every=100, sample_every=100))
    acc, tags = event_tags(run / "logs" / "train")
    assert {"loss", "grad_norm", "neg_elbo"} <= tags
    assert [e.step for e in acc.Tensors("loss")] == [2, 4]
    val, _ = event_tags(run / "logs" / "validation")
    train_nll = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("nll")]
    val_nll = [float(tf.make_ndarray(e.tensor_proto)) for e in val.Tensors("nll")]
    assert len(val_nll) == 2 and all(abs(a - b) > 1e-3 for a, b in zip(train_nll, val_nll))


def test_other_configuration_is_refused_and_nothing_changes(tmp_path, data):
    run = tmp_path / "run"
    training.train(str(run), "msstcn", MODEL, data, settings(train_steps=2, sample_every=100))
    before = files_digest(run)
    other = dict(MODEL, channels=[16, 8])
    with pytest.raises(training.RunDirError, match=r"another configuration.*channels"):
        training.train(str(run), "msstcn", other, data, settings(train_steps=4))
    assert files_digest(run) == before


def test_checkpoint_without_config_is_refused(tmp_path, data):
    run = tmp_path / "run"
    training.train(str(run), "msstcn", MODEL, data, settings(train_steps=2, sample_every=100))
    os.remove(run / "config.json")
    before = files_digest(run)
    with pytest.raises(training.RunDirError, match="no config.json"):
        training.train(str(run), "msstcn", MODEL, data, settings(train_steps=4))
    assert files_digest(run) == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data):
    run = tmp_path / "run"
    training.train(str(run), "msstcn", MODEL, data, settings(train_steps=2, sample_every=100))
    ckpt_before = files_digest(run / "checkpoints")
    # Finite values (NaN data is refused at load) whose log-density overflows float32: a non-finite loss.
    poisoned = SequenceData(name=data.name, train=[np.full_like(s, 1e30) for s in data.train],
                            valid=data.valid, test=data.test, feature_dim=3, kind="handwriting", info=data.info)
    with pytest.raises(FloatingPointError, match="non-finite"):
        training.train(str(run), "msstcn", MODEL, poisoned, settings(train_steps=20, max_nonfinite_steps=3,
                                                                     sample_every=100))
    assert files_digest(run / "checkpoints") == ckpt_before


@pytest.mark.parametrize("overrides, flag", [({"batch_size": 0}, "batch_size"),
                                             ({"learning_rate": -1.0}, "learning_rate"),
                                             ({"kl_regularizer": "magic"}, "kl_regularizer")])
def test_invalid_settings_are_named(tmp_path, data, overrides, flag):
    with pytest.raises(ValueError, match=flag):
        training.train(str(tmp_path / "run"), "msstcn", MODEL, data, settings(**overrides))
    assert not (tmp_path / "run").exists()


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_cli_rejects_bad_input_with_one_clear_message(tmp_path):
    missing = run_cli("--dataset=iam_ondb", f"--data_dir={tmp_path / 'nope'}", f"--run_dir={tmp_path / 'r'}")
    assert missing.returncode != 0
    assert f"--data_dir={tmp_path / 'nope'} does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli("--dataset=iam_ondb", f"--data_dir={tmp_path / 'empty'}", f"--run_dir={tmp_path / 'r'}")
    assert empty.returncode != 0 and "lineStrokes" in empty.stderr and "Traceback" not in empty.stderr
    unknown = run_cli("--no_such_flag=1")
    assert unknown.returncode != 0 and "no_such_flag" in unknown.stderr
    bad_enum = run_cli("--model=transformer")
    assert bad_enum.returncode != 0 and "--model" in bad_enum.stderr
    bad_list = run_cli("--channels=64,x", "--dataset=hershey", "--num_lines=4", f"--run_dir={tmp_path / 'r'}")
    assert bad_list.returncode != 0 and "--channels" in bad_list.stderr and "Traceback" not in bad_list.stderr
    assert not (tmp_path / "r").exists()


def test_patience_stops_when_the_validation_bound_stops_improving(tmp_path, data, capsys):
    """--patience=2: training ends at the first validation that is two intervals past the best one, read back
    from the validation events (an independent record of every bound), and a rerun does not train further."""
    import tensorflow as tf

    run = tmp_path / "run"
    # A learning rate so small that the bound wanders by noise alone: it stops improving early.
    s = settings(train_steps=60, patience=2, learning_rate=1e-9, sample_every=1000, checkpoint_every=1000)
    model, _ = training.train(str(run), "msstcn", MODEL, data, s)
    stopped = int(model.optimizer.iterations.numpy())
    val_acc, _ = event_tags(run / "logs" / "validation")
    vals = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in val_acc.Tensors("neg_elbo_per_step")]
    assert [v[0] for v in vals] == list(range(2, stopped + 1, 2))
    # The rule, computed from the events: the first step at which the best so far is 2 evaluations old.
    best_step, best, expected = None, np.inf, None
    for step, value in vals:
        if value < best:
            best_step, best = step, value
        if step - best_step >= 4:
            expected = step
            break
    assert expected is not None and stopped == expected < 60
    assert tf.train.latest_checkpoint(str(run / "best")).endswith(f"ckpt-{best_step}")
    assert (run / "checkpoints" / f"ckpt-{stopped}.index").exists()
    capsys.readouterr()
    model, _ = training.train(str(run), "msstcn", MODEL, data, s)
    assert int(model.optimizer.iterations.numpy()) == stopped
    assert "stopped early" in capsys.readouterr().out


@pytest.mark.parametrize("start", [0, 30])
def test_learning_rate_schedule_holds_then_decays(start):
    """The optimizer's learning rate at each step against the closed form: constant for --lr_decay_start steps,
    then lr * rate^((step - start) / decay_steps); start = 0 is Keras' ExponentialDecay (old runs unchanged)."""
    s = training.TrainSettings(learning_rate=1e-3, lr_decay_steps=17, lr_decay_rate=1 / 1.2, lr_decay_start=start)
    s.validate()
    optimizer = training.make_optimizer(s)
    for step in [0, 1, 29, 30, 31, 47, 200]:
        optimizer.iterations.assign(step)
        expected = 1e-3 * (1 / 1.2) ** (max(step - start, 0) / 17)
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-6), step
    config = keras.optimizers.serialize(optimizer)
    assert keras.optimizers.deserialize(config).get_config() == optimizer.get_config()


def test_negative_lr_decay_start_is_named():
    with pytest.raises(ValueError, match="--lr_decay_start must be >= 0"):
        training.TrainSettings(lr_decay_start=-1).validate()
