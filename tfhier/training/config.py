"""What a run directory says the run is, and the check that a rerun continues it.

* ``R/config.json`` (:func:`run_config`): the model's name and whole config, the data set and its facts; a
  rerun with another identity (:data:`IDENTITY_KEYS`) or, unless asked, other data is refused by
  :func:`check_run_dir` before anything in the directory is touched.
* ``R/flags.cfg`` (:func:`write_flags`): the flags the run started with.
* ``R/logs`` (:func:`write_hparams`): the run's hyperparameters for TensorBoard's HParams dashboard.
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf
from absl import logging

from tfhier.data.base import SequenceData
from tfhier.fileio import atomic_write
from tfhier.models import build_model, stored_model_config
from tfhier.rundir import RunDirError, checkpoint_prefixes
from tfhier.runs import info_differences, jsonable_info
from tfhier.training.settings import TrainSettings


def run_config(model, data: SequenceData) -> dict:
    """What ``config.json`` says of a run: the model's name and its whole ``get_config()`` (every hyperparameter,
    defaults included, so a later change of a default never changes how this run is rebuilt), and the data."""
    return {"model": model.NAME, "model_config": model.get_config(), "dataset": data.name,
            "feature_dim": data.feature_dim, "kind": data.kind, "data_info": jsonable_info(data.info)}


IDENTITY_KEYS = ("model", "model_config", "dataset", "feature_dim")


def _saved_identity(old: dict) -> dict:
    """The identity of a saved config, its model config completed with the defaults it was saved without
    (runs written before a hyperparameter existed); unchanged when the model cannot be rebuilt from it."""
    identity = {k: old.get(k) for k in IDENTITY_KEYS}
    try:
        stored = stored_model_config(old["model"], old["model_config"])
        model = build_model(old["model"], int(old["feature_dim"]), stored)
        identity["model_config"] = model.get_config()
    except (KeyError, TypeError, ValueError):
        pass
    return json.loads(json.dumps(identity))


def check_run_dir(run_dir, config, allow_data_change=False) -> bool:
    """Returns True when ``run_dir`` continues an earlier run of ``config``.

    Raises :class:`RunDirError` when it holds another configuration, a
    checkpoint without a ``config.json``, or (unless ``allow_data_change``) a
    run trained on other data (its saved data facts differ: another data set
    behind the same ``--dataset``); nothing is written either way.
    """
    config_path = os.path.join(run_dir, "config.json")
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if os.path.exists(config_path):
        from tfhier.runs import read_config_file  # binary bytes, 5, null: an error naming the file

        try:
            old = read_config_file(config_path)
        except ValueError as e:
            raise RunDirError(f"--run_dir={run_dir}: cannot use {config_path} ({e}); use a new --run_dir") from None
        old_id = _saved_identity(old)
        new_id = json.loads(json.dumps({k: config[k] for k in IDENTITY_KEYS}))
        if old_id != new_id:
            diffs = _differences(old_id, new_id)
            raise RunDirError(
                f"--run_dir={run_dir} holds a run of another configuration ({'; '.join(diffs)}). "
                f"Refusing to resume or overwrite it: use a new --run_dir, or the run's own flags "
                f"(--flagfile={os.path.join(run_dir, 'flags.cfg')}).")
        changes = info_differences(old.get("data_info", {}), config.get("data_info", {}))
        if changes and not allow_data_change:
            raise RunDirError(
                f"--run_dir={run_dir} was trained on other data ({'; '.join(changes)}). Refusing to resume on these "
                f"data; give --allow_data_change to continue training on them anyway")
        if changes:
            logging.warning("resuming %s on other data (--allow_data_change): %s", run_dir, "; ".join(changes))
        return True
    if checkpoint_prefixes(ckpt_dir) or checkpoint_prefixes(os.path.join(run_dir, "best")):
        raise RunDirError(f"--run_dir={run_dir} holds checkpoints but no config.json, so its configuration "
                          f"is unknown; refusing to use it. Use a new --run_dir.")
    return False


def _differences(old, new, prefix=""):
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, prefix + k + ".")
        elif a != b:
            diffs.append(f"{prefix}{k}: saved {a!r}, now {b!r}")
    return diffs


def write_hparams(run_dir, config, settings: TrainSettings):
    """The run's hyperparameters for TensorBoard's HParams dashboard (``R/logs``): the model's config and the
    training settings, flattened to scalars; its metrics are the validation ``bounds/*`` tags, so runs of every
    model and setting compare in one table (``tensorboard --logdir runs/``)."""
    from tensorboard.plugins.hparams import api as hp

    values = {"model": config["model"], "dataset": config["dataset"]}
    for key, value in config["model_config"].items():
        values[f"model.{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, (int, float, str, bool)):
            values[f"train.{field.name}"] = value
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "logs"))
    with writer.as_default():
        hp.hparams(values, trial_id=os.path.basename(os.path.abspath(run_dir)))
    writer.flush()


def write_flags(run_dir, flags_text, step):
    """``flags.cfg`` holds the flags the run started with; a resume with other flags adds ``flags.step_N.cfg``."""
    path = os.path.join(run_dir, "flags.cfg")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == flags_text:
                return
        path = os.path.join(run_dir, f"flags.step_{step}.cfg")
    atomic_write(path, flags_text)
