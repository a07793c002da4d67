"""Training from Python on arrays: :func:`fit` (``tfhier.fit``), for notebooks and scripts.

    import numpy as np
    import tfhier

    walks = [np.cumsum(np.random.randn(200, 3), axis=0) for _ in range(64)]     # 64 sequences [T, D]
    run = tfhier.fit(model="vrnn", train=walks[:56], valid=walks[56:], run_dir="runs/walks",
                     train_steps=200, batch_size=8, latent_dims=[4], rnn_units=32)
    x = run.sample(num_samples=4, num_steps=100)       # in the data's units (see tfhier.api)

``fit`` is ``train.py`` on arrays: the same run directory (``config.json``, ``flags.cfg``, checkpoints,
``best/``, TensorBoard logs, samples), the same lock, and calling it again with the same ``run_dir``
resumes (to a larger ``train_steps``).  The arrays become the ``sequences`` data source of a run
(:mod:`tfhier.data.own`): binary (all 0/1) or real, real data standardised per channel by the training
split's statistics (``standardize=True``), stored with the run and undone by everything that hands data
back.  The splits are written to ``R/data.npz`` (``--dataset=sequences --data_dir=R/data.npz`` in
``flags.cfg``), so :func:`tfhier.load_run`, ``evaluate.py`` and ``sample.py`` reload them like any run's data.

Without ``valid``, a ``valid_fraction`` of the training sequences (chosen by a stable hash of their index)
is held out for validation; without ``test``, the test split is the validation split.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np

DATA_FILE = "data.npz"


def _sequences(value, name) -> list:
    """``value`` (a list of ``[T, D]`` / ``[T]`` arrays, or one ``[N, T, D]`` array) as ``[(name, float64 array)]``."""
    from tfhier.data import DataError
    from tfhier.data.own import check_array

    if isinstance(value, np.ndarray) and value.dtype != object:
        if value.ndim != 3:
            raise DataError(f"{name}: an array of shape {value.shape}; expected a list of [T, D] arrays or one "
                            f"[N, T, D] array")
        value = list(value)
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) == 0:
        raise DataError(f"{name}: expected a non-empty list of [T, D] arrays, got {type(value).__name__}")
    return [(f"{name}[{i}]", check_array(np.asarray(a), f"{name}[{i}]")) for i, a in enumerate(value)]


def _object_array(arrays):
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):  # (a slice assignment would broadcast equal-length arrays into rows)
        out[i] = np.asarray(a, np.float64)
    return out


def _flags_text(model, model_config, data_file, settings, standardize) -> str:
    lines = [f"--model={model}", "--dataset=sequences", f"--data_dir={data_file}",
             f"--standardize={'true' if standardize else 'false'}", "--valid_fraction=0.0", "--test_fraction=0.0",
             f"--model_config={json.dumps(model_config, sort_keys=True)}"]
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        lines.append(f"--{field.name}={str(value).lower() if isinstance(value, bool) else value}")
    return "".join(sorted(line + "\n" for line in lines))


def fit(model: str = "msstcn", train: Sequence = None, valid: Optional[Sequence] = None,
        test: Optional[Sequence] = None, *, run_dir, model_config: Optional[dict] = None, standardize: bool = True,
        valid_fraction: float = 0.1, allow_data_change: bool = False, strategy=None, **kwargs):
    """Trains (or resumes) ``model`` on arrays and returns the run as :func:`tfhier.load_run` gives it.

    Args:
      model: a registered model name (``train.py --model``).
      train, valid, test: lists of ``[T_i, D]`` (or ``[T_i]``) arrays of any lengths, or one ``[N, T, D]``
        array each, in the data's own units; see the module docstring for missing ``valid`` / ``test``.
      run_dir: the run directory (created; an existing run of the same configuration is resumed).
      model_config: the model's hyperparameters as a dict (as ``--model_config``); they may also be given
        as keywords (``latent_dims=[4]``), as may every ``train.py`` training setting (``train_steps=200``,
        ``batch_size=8``, ``learning_rate=1e-3``, ``seed=1``, ``verbose=0``, ...: :class:`TrainSettings`).
      standardize: real data: standardise each channel (undone on the way out).
      valid_fraction: share of ``train`` held out for validation when ``valid`` is not given.
      allow_data_change: resume on data whose facts differ from the run's (refused otherwise).
      strategy: a ``tf.distribute`` strategy (default: one device).

    Returns:
      :class:`tfhier.api.LoadedRun` at the best validation checkpoint.

    Raises ``TypeError`` for an unknown keyword, ``tfhier.data.DataError`` / ``ValueError`` (naming the
    argument) for unusable data or settings, ``tfhier.rundir.RunDirError`` when ``run_dir`` holds another run;
    nothing in ``run_dir`` is changed before these checks pass.
    """
    from tfhier import training
    from tfhier.data import DataError
    from tfhier.data.own import SPLITS, check_fractions, from_splits, hash_split
    from tfhier.fileio import atomic_write
    from tfhier.models import MODELS, build_model, config_for_data, model_class
    from tfhier.models.hparams import resolve

    model_class(model)
    fields = {f.name for f in dataclasses.fields(training.TrainSettings)}
    hparams = {h.name for h in MODELS[model].HPARAMS}
    unknown = sorted(set(kwargs) - fields - hparams)
    if unknown:
        raise TypeError(f"fit() got unknown keyword {', '.join(unknown)}: neither a training setting "
                        f"({', '.join(sorted(fields))}) nor a hyperparameter of {model} ({', '.join(sorted(hparams))})")
    settings = training.TrainSettings(**{k: v for k, v in kwargs.items() if k in fields})
    settings.validate()
    training.check_batch_for(strategy, settings)
    training.check_settings_for(model, settings)
    values = dict(model_config or {})
    values.update({k: v for k, v in kwargs.items() if k in hparams})
    resolve(MODELS[model], {k: v for k, v in values.items() if k != "noise_seed"}, model_name=model)  # names checked

    if train is None:
        raise DataError("fit: train is required (a list of [T, D] arrays)")
    splits = {"train": _sequences(train, "train")}
    if valid is None:
        check_fractions(valid_fraction, 0.0)
        if len(splits["train"]) < 2:
            raise DataError("fit: give valid, or at least 2 training sequences to hold some out for validation")
        named = dict(splits["train"])
        carved = hash_split(named, valid_fraction, 0.0, carve=("valid",))
        splits = {s: [(n, named[n]) for n in carved[s]] for s in ("train", "valid")}
    else:
        splits["valid"] = _sequences(valid, "valid")
    splits["test"] = _sequences(test, "test") if test is not None else list(splits["valid"])
    data = from_splits("sequences", splits, {"format": "npz"}, standardize)

    values = config_for_data(model, values, data.kind)
    values["noise_seed"] = settings.seed
    config = training.run_config(build_model(model, data.feature_dim, values), data)
    run_dir = str(run_dir)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise training.RunDirError(f"run_dir={run_dir} is a file, not a directory")
    training.check_run_dir(run_dir, config, allow_data_change)  # before anything is written
    if len(data.train) < settings.batch_size:
        raise ValueError(f"batch_size={settings.batch_size} is larger than the {len(data.train)} training "
                         f"sequences (training batches are full batches)")
    data_file = os.path.join(os.path.abspath(run_dir), DATA_FILE)
    arrays = {s: _object_array([a for _, a in splits[s]]) for s in SPLITS}
    atomic_write(data_file, lambda p: np.savez(p, **arrays))
    training.train(run_dir, model, values, data, settings,
                   flags_text=_flags_text(model, values, data_file, settings, standardize), strategy=strategy,
                   allow_data_change=allow_data_change)
    from tfhier.api import load_run
    from tfhier.runs import RunError

    try:
        return load_run(run_dir, "best")
    except RunError:  # no validation has finished (e.g. stopped early): the latest checkpoint
        return load_run(run_dir, "latest")


__all__ = ["fit"]
