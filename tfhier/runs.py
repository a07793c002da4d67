"""Loading what a training run left behind: its model (at a checkpoint) and its data.

Shared by ``evaluate.py``, ``sample.py`` and export.  A run directory ``R``
(see :mod:`tfhier.training`) holds ``R/config.json`` (model name, model
config, dataset, data facts), ``R/flags.cfg`` (the flags ``train.py`` ran
with) and ``R/checkpoints/ckpt-N``.

* :func:`load_model` rebuilds the model from ``config.json`` and restores the
  model weights of a checkpoint (the latest by default); optimizer slots and
  objective state in the checkpoint are ignored.  Note: restoring with
  ``tf.train.Checkpoint(model=model)`` alone is NOT enough for a Keras 3 model
  that keeps layers in Python lists (MS-STCN): see :func:`restore_model_weights`.
* :func:`load_run_data` reloads the run's dataset with the data flags of
  ``flags.cfg`` (``--dataset``, ``--data_dir``, ``--seed`` and the source's own
  options, :mod:`tfhier.data.sources`) and checks that
  its facts (feature size, ``data_info``) equal the ones saved at training time.
* :func:`load_run` does both.

Every problem with the run directory raises :class:`RunError` (a
``ValueError``) whose message names the directory or file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Optional

import numpy as np

from tfhier.data.base import SequenceData
from tfhier.data.units import LIST_FACTS

# TensorFlow is imported by the functions that use it: run_dir_problem() lets the command lines refuse a bad
# --run_dir before the seconds that importing TensorFlow takes.

#: ``train.py`` flags that decide the data besides each source's own options (:mod:`tfhier.data.sources`)
DATA_FLAGS = ("dataset", "data_dir", "seed")


class RunError(ValueError):
    """The run directory (or a file in it) cannot be used; the message says which and why."""


class CheckpointGone(RunError):
    """The checkpoint's files vanished while being read (a training process rotated it away)."""


@dataclasses.dataclass
class Run:
    """A loaded run: its model at ``checkpoint`` (step ``step``) and, if asked for, its data."""

    run_dir: str
    config: dict
    flags: dict
    model: object
    checkpoint: str
    step: int
    data: Optional[SequenceData] = None


def _require_run_dir(run_dir) -> str:
    if not run_dir:
        raise RunError("--run_dir is empty; give the directory of a training run")
    if not os.path.isdir(run_dir):
        raise RunError(f"--run_dir={run_dir} does not exist or is not a directory")
    return str(run_dir)


def run_dir_problem(run_dir) -> Optional[str]:
    """Why ``run_dir`` is not a training run directory (unset, missing, no ``config.json``), or None."""
    if not run_dir:
        return "--run_dir is required (a training run directory)"
    if not os.path.isdir(run_dir):
        return f"--run_dir={run_dir} does not exist or is not a directory"
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        return f"--run_dir={run_dir} has no config.json: not a training run directory"
    return None


def read_config(run_dir) -> dict:
    """``R/config.json`` as a dict (model, model_config, dataset, feature_dim, kind, data_info)."""
    problem = run_dir_problem(run_dir)
    if problem:
        raise RunError(problem)
    path = os.path.join(str(run_dir), "config.json")
    return completed_config(check_config(path, read_config_file(path)))


def completed_config(config: dict) -> dict:
    """``config`` with its ``model_config`` completed with what the run was trained with for hyperparameters added
    after it was written (e.g. ``scale_fn``: ``clamp``), so old runs rebuild as they were trained."""
    from tfhier.models import stored_model_config

    return {**config, "model_config": stored_model_config(config["model"], config["model_config"])}


def read_config_file(path) -> dict:
    """The JSON object in ``path`` (a run's ``config.json``); RunError naming the file for anything else."""
    from tfhier.checks import read_json_object

    try:
        return read_json_object(path, path)
    except ValueError as e:
        raise RunError(f"{e}; it was not written by tfhier.training") from None


def check_config(path, config: dict) -> dict:
    """``config`` (read from ``path``) if it has what a run's config.json has, by type; RunError otherwise."""
    from tfhier.checks import hparams_problem, shown

    missing = [k for k in ("model", "model_config", "dataset", "feature_dim") if k not in config]
    if missing:
        raise RunError(f"{path} lacks {missing}; it was not written by tfhier.training")
    wrong = [(k, t) for k, t in (("model", str), ("model_config", dict), ("dataset", str), ("kind", str),
                                 ("data_info", dict)) if k in config and not isinstance(config[k], t)]
    feature_dim = config["feature_dim"]
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or not 1 <= feature_dim <= 1 << 20:
        wrong.append(("feature_dim", int))
    if wrong:
        key, kind = wrong[0]
        raise RunError(f"{path}: {key} must be a {'JSON object' if kind is dict else kind.__name__}"
                       f"{' in 1..1048576' if key == 'feature_dim' else ''}, got {shown(config[key])}; it was not "
                       f"written by tfhier.training")
    problem = hparams_problem(config["model_config"], source="model_config ")
    if problem:
        raise RunError(f"{path}: {problem}")
    return config


def parse_flags_text(text: str, source: str = "flags") -> dict:
    """Parses flagfile text (one ``--name=value`` per line) into ``{name: value string}``.

    Blank lines and whole-line ``#`` comments are skipped; a bare ``--name``
    becomes ``'true'`` and ``--noname`` becomes ``'false'`` (absl's boolean
    forms); a later line overrides an earlier one, as in absl.
    """
    out = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("-"):
            from tfhier.checks import shown

            raise RunError(f"{source}, line {number}: expected --name=value, got {shown(raw)}")
        body = line.lstrip("-")
        if "=" in body:
            name, value = body.split("=", 1)
            out[name] = value
        elif body.startswith("no") and len(body) > 2:
            out[body[2:]] = "false"
        else:
            out[body] = "true"
    return out


def read_flags(run_dir) -> dict:
    """The flags ``R/flags.cfg`` records, as strings (``{}`` when the run has no flags.cfg)."""
    path = os.path.join(_require_run_dir(run_dir), "flags.cfg")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return parse_flags_text(f.read(), path)
    except OSError as e:
        raise RunError(f"cannot read {path}: {e}") from None
    except UnicodeDecodeError:
        raise RunError(f"{path} is not a text file (binary bytes); expected the flags train.py wrote") from None


def latest_checkpoint(run_dir, which="checkpoints") -> str:
    """Path prefix of the latest checkpoint in ``R/checkpoints`` (or ``R/best`` with ``which='best'``:
    the checkpoint with the best validation bound); RunError when there is none."""
    import tensorflow as tf

    from tfhier.rundir import checkpoint_prefixes

    ckpt_dir = os.path.join(_require_run_dir(run_dir), which)
    try:
        path = tf.train.latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    except Exception:  # a garbled state file
        path = None
    if not path or not tf.io.gfile.exists(path + ".index"):
        # The state file is missing, garbled or stale: the newest complete checkpoint present.
        present = checkpoint_prefixes(ckpt_dir)
        path = present[0] if present else None
    if not path:
        raise RunError(f"--run_dir={run_dir} has no checkpoint in {ckpt_dir} (has the run saved one yet?)")
    return path


def checkpoint_step(path) -> int:
    """The optimizer step stored in checkpoint ``path`` (from its ``ckpt-N`` name if not stored)."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(path)
        for key in ("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
                    "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE"):
            if reader.has_tensor(key):
                return int(reader.get_tensor(key))
    except (tf.errors.OpError, ValueError):
        pass
    match = re.search(r"-(\d+)$", str(path))
    return int(match.group(1)) if match else -1


def restore_model_weights(model, checkpoint: str) -> int:
    """Restores every weight of the built ``model`` from a training checkpoint; returns the stored step.

    Training checkpoints hold the model's variables by path under ``model/``
    (:func:`tfhier.rundir.model_variables`); optimizer slots and objective
    state are ignored.  Every weight is set to NaN first, so a weight the
    checkpoint does not provide is detected (training never saves non-finite
    weights) and raises :class:`RunError`.
    """
    import tensorflow as tf

    from tfhier.rundir import model_variables

    weights = [v for v in model.variables if "float" in str(v.dtype)]
    for v in weights:
        v.assign(tf.fill(tf.shape(v), float("nan")))
    try:
        tf.train.Checkpoint(model=model_variables(model)).restore(checkpoint).expect_partial()
    except tf.errors.NotFoundError as e:
        raise CheckpointGone(f"checkpoint {checkpoint} is gone ({e.message.splitlines()[0][:200]})") from None
    except Exception as e:  # truncated or corrupt files raise many error types
        raise RunError(f"checkpoint {checkpoint} cannot be read ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    missing = [v.path for v in weights if not bool(np.all(np.isfinite(v.numpy())))]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise RunError(f"checkpoint {checkpoint} does not hold every weight of this model configuration "
                       f"(not restored: {shown})")
    return checkpoint_step(checkpoint)


def load_model(run_dir, checkpoint: Optional[str] = None, config: Optional[dict] = None):
    """Rebuilds the run's model and restores its weights. Returns ``(model, checkpoint_path, step)``.

    Args:
      run_dir: the run directory.
      checkpoint: a checkpoint path prefix (``.../ckpt-N``); default: the latest in ``R/checkpoints``.
      config: the run's config (default: read from ``R/config.json``).
    """
    import tensorflow as tf

    from tfhier.models import build_model

    config = config or read_config(run_dir)
    if checkpoint not in (None, "best") and not tf.io.gfile.exists(str(checkpoint) + ".index"):
        raise RunError(f"--checkpoint={checkpoint}: no such checkpoint (expected {checkpoint}.index)")
    try:
        model = build_model(config["model"], int(config["feature_dim"]), dict(config["model_config"]))
    except (TypeError, ValueError) as e:
        raise RunError(f"{os.path.join(str(run_dir), 'config.json')}: cannot build model "
                       f"{config['model']!r} from its model_config: {e}") from None
    from tfhier.checks import memory_problem

    problem = memory_problem(dict(config["model_config"]), int(config["feature_dim"]), 1, model.time_multiple,
                             what="the weights")
    if problem:
        raise RunError(f"{os.path.join(str(run_dir), 'config.json')}: {problem}")
    model.build_for_data()
    # A training process may rotate the latest checkpoint away while it is read: read the newest again.
    for attempt in range(3):
        path = checkpoint
        if checkpoint is None:
            path = latest_checkpoint(run_dir)
        elif checkpoint == "best":
            path = latest_checkpoint(run_dir, "best")
        try:
            step = restore_model_weights(model, str(path))
            return model, str(path), step
        except CheckpointGone:
            if checkpoint not in (None, "best") or attempt == 2:
                raise


def data_options(run_dir, config: Optional[dict] = None, flags: Optional[dict] = None, **overrides) -> dict:
    """``load_dataset`` arguments for the run's data (``name``, ``data_dir``, ``seed`` and the source's options,
    by flag name), from flags.cfg and ``overrides``.

    Flags absent from flags.cfg (or a run without one) take the source's defaults, which are ``train.py``'s;
    ``--dataset`` falls back to config.json.  ``overrides`` (by flag name, e.g. ``data_dir='/new/place'``)
    win when not None.
    """
    from tfhier.data import DataError, all_sources, get_source

    config = config or read_config(run_dir)
    flags = read_flags(run_dir) if flags is None else flags
    known = set(DATA_FLAGS) | {o.name for source in all_sources() for o in source.options}
    for name in overrides:
        if name not in known:
            raise TypeError(f"unknown data option {name!r}; expected one of {sorted(known)}")
    name = overrides.get("dataset") or flags.get("dataset") or config["dataset"]
    try:
        source = get_source(name)
    except DataError as e:
        raise RunError(f"{run_dir}: {e}") from None
    values = {}
    for key in ("data_dir", "seed") + tuple(o.name for o in source.options):
        if overrides.get(key) is not None:
            values[key] = overrides[key]
        elif key in flags:
            values[key] = flags[key]
    options = {"name": name}
    try:
        options["seed"] = int(values.pop("seed", 0))
    except (TypeError, ValueError):
        from tfhier.checks import shown

        raise RunError(f"{run_dir}/flags.cfg: --seed must be an integer, got {shown(flags.get('seed'))}") from None
    data_dir = values.pop("data_dir", None)
    options["data_dir"] = None if data_dir in ("", "None") else data_dir
    try:
        options.update(source.resolve(values))
    except DataError as e:
        raise RunError(f"{run_dir}/flags.cfg: {e}") from None
    return options


def jsonable_info(info: dict) -> dict:
    """The scalar facts of a dataset's info (lists of line ids etc. are left out)."""
    out = {}
    for k, v in info.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        if isinstance(v, (int, float, str, bool)):
            out[k] = v
        elif k in LIST_FACTS:  # per-channel facts of a user's own data (tfhier.data.units)
            out[k] = [x.item() if isinstance(x, np.generic) else x for x in v]
    return out


def info_differences(saved: dict, now: dict) -> list:
    """What differs between two data facts of :func:`jsonable_info` (their keys in common), one line each."""
    diffs = []
    for key in sorted(set(saved) & set(now)):
        a, b = saved[key], now[key]
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            same = math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        else:
            same = a == b
        if not same:
            diffs.append(f"{key}: trained on {a!r}, now {b!r}")
    return diffs


def load_run_data(run_dir, config: Optional[dict] = None, flags: Optional[dict] = None,
                  **overrides) -> SequenceData:
    """Reloads the run's dataset (see :func:`data_options`) and checks it against config.json.

    Raises :class:`RunError` when the reloaded data has another dataset name,
    feature size or ``data_info`` (e.g. another normalisation scale: not the
    data the model was trained on), and ``tfhier.data.DataError`` when the data
    cannot be loaded.
    """
    from tfhier.data import load_dataset

    config = config or read_config(run_dir)
    options = data_options(run_dir, config, flags, **overrides)
    name = options.pop("name")
    if name != config["dataset"]:
        raise RunError(f"{run_dir}: flags.cfg says --dataset={name} but config.json says {config['dataset']!r}")
    data = load_dataset(name, **options)
    diffs = []
    if data.feature_dim != int(config["feature_dim"]):
        diffs.append(f"feature_dim: trained on {config['feature_dim']}, now {data.feature_dim}")
    diffs += info_differences(config.get("data_info", {}), jsonable_info(data.info))
    if diffs:
        source = "flags.cfg" if os.path.exists(os.path.join(run_dir, "flags.cfg")) else "default flags (no flags.cfg)"
        raise RunError(f"{run_dir}: the data reloaded with {source} {options} is not the data the run was "
                       f"trained on ({'; '.join(diffs)})")
    return data


def load_run(run_dir, checkpoint: Optional[str] = None, *, with_data: bool = True, **data_overrides) -> Run:
    """Loads a run's model (latest checkpoint unless ``checkpoint``) and, with ``with_data``, its data."""
    config = read_config(run_dir)
    flags = read_flags(run_dir)
    model, path, step = load_model(run_dir, checkpoint, config)
    data = load_run_data(run_dir, config, flags, **data_overrides) if with_data else None
    return Run(run_dir=str(run_dir), config=config, flags=flags, model=model, checkpoint=path, step=step, data=data)


__all__ = ["DATA_FLAGS", "Run", "RunError", "checkpoint_step", "completed_config", "data_options", "latest_checkpoint",
           "load_model", "info_differences", "jsonable_info", "load_run", "load_run_data", "parse_flags_text", "read_config",
           "read_flags", "restore_model_weights"]
