"""Training: the run directory, checkpoints, TensorBoard logging and the fit loop.

A run directory ``R`` holds::

    R/config.json           what the run is: model name and config, dataset, data facts
    R/flags.cfg             the effective flags, usable as --flagfile
    R/checkpoints/ckpt-N.*  model weights, optimizer state, step, objective state (free-bits lambda)
    R/best/ckpt-N.*         the checkpoint with the best validation -ELBO per step so far (early stopping)
    R/logs/train, R/logs/validation   TensorBoard event files
    R/samples/step_NNNNNNN.png        generated samples

Checkpoints are written with ``tf.train.CheckpointManager``: the data files
are complete before the ``checkpoint`` index file is atomically replaced to
point at them, so a process killed mid-save leaves the previous checkpoint in
force.  Rerunning with the same ``--run_dir`` resumes from the latest one; a
run directory holding another configuration is refused before anything in it
is touched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfhier import objectives
from tfhier.fileio import atomic_write
from tfhier.rundir import RunDirError, RunLock, checkpoint_prefixes, repair_state, writable_problem
from tfhier.data.base import SequenceData
from tfhier.data.pipeline import make_dataset, without_autotuning
from tfhier.models import build_model
from tfhier.models.base import check_mixed_precision, multi_worker, naive_generation_problem, precision_policy
from tfhier import samples as samples_lib


@dataclasses.dataclass
class TrainSettings:
    """Training settings (one per ``train.py`` flag of the same name)."""

    train_steps: int = 1000
    batch_size: int = 32
    seq_len: int = 1024
    learning_rate: float = 5e-4
    lr_decay_steps: int = 100_000
    lr_decay_rate: float = 0.5
    clip_norm: float = 1.0
    weight_decay: float = 0.0
    adam_epsilon: float = 1e-7
    seed: int = 0
    objective: str = "elbo"
    num_particles: int = 4
    resampling_threshold: float = 0.5
    kl_regularizer: str = "linear_free_bits"
    free_bits: float = 0.5
    free_bits_halving_steps: int = 300_000
    beta_start: float = 0.0
    anneal_steps: int = 10_000
    eval_every: int = 500
    eval_batches: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    checkpoint_secs: float = 600.0
    sample_every: int = 1000
    num_samples: int = 4
    sample_steps: int = 400
    jit_compile: bool = False
    mixed_precision: bool = False
    max_nonfinite_steps: int = 10
    patience: int = 0
    verbose: str = "auto"

    def validate(self):
        """Raises ValueError naming the flag for the first unusable setting (before any data is read)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{f.name} must be a finite number, got {value}")
        positive = ["train_steps", "batch_size", "seq_len", "lr_decay_steps", "eval_every", "log_every",
                    "checkpoint_every", "sample_every", "max_nonfinite_steps", "free_bits_halving_steps",
                    "anneal_steps"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "lr_decay_rate", "adam_epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("clip_norm", "eval_batches", "num_samples", "sample_steps", "checkpoint_secs", "free_bits",
                     "weight_decay", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.beta_start <= 1.0:
            raise ValueError(f"--beta_start must be in [0, 1] (the initial KL weight), got {self.beta_start}")
        if not 0 <= self.seed < 2 ** 31:
            raise ValueError(f"--seed must be an integer in [0, 2^31 - 1], got {self.seed}")
        if self.objective not in objectives.OBJECTIVES:
            raise ValueError(f"--objective must be one of {objectives.OBJECTIVES}, got {self.objective!r}")
        if self.num_particles < 1:
            raise ValueError(f"--num_particles must be >= 1, got {self.num_particles}")
        if not 0.0 <= self.resampling_threshold <= 1.0:
            raise ValueError(f"--resampling_threshold must be in [0, 1], got {self.resampling_threshold}")
        if self.kl_regularizer not in objectives.KL_REGULARIZERS:
            raise ValueError(f"--kl_regularizer must be one of {objectives.KL_REGULARIZERS}, got "
                             f"{self.kl_regularizer!r}")
        from tfhier.checks import check_train_settings  # limits shared with the Python API and evaluation

        check_train_settings(self)


def _jsonable(info: dict) -> dict:
    """The scalar facts of a dataset's info (lists of line ids etc. are left out)."""
    out = {}
    for k, v in info.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        if isinstance(v, (int, float, str, bool)):
            out[k] = v
    return out


def run_config(model, data: SequenceData) -> dict:
    """What ``config.json`` says of a run: the model's name and its whole ``get_config()`` (every hyperparameter,
    defaults included, so a later change of a default never changes how this run is rebuilt), and the data."""
    return {"model": model.NAME, "model_config": model.get_config(), "dataset": data.name,
            "feature_dim": data.feature_dim, "kind": data.kind, "data_info": _jsonable(data.info)}


IDENTITY_KEYS = ("model", "model_config", "dataset", "feature_dim")


def _saved_identity(old: dict) -> dict:
    """The identity of a saved config, its model config completed with the defaults it was saved without
    (runs written before a hyperparameter existed); unchanged when the model cannot be rebuilt from it."""
    identity = {k: old.get(k) for k in IDENTITY_KEYS}
    try:
        model = build_model(old["model"], int(old["feature_dim"]), dict(old["model_config"]))
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
        from tfhier.runs import _info_differences

        changes = _info_differences(old.get("data_info", {}), config.get("data_info", {}))
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


def _write_flags(run_dir, flags_text, step):
    """``flags.cfg`` holds the flags the run started with; a resume with other flags adds ``flags.step_N.cfg``."""
    path = os.path.join(run_dir, "flags.cfg")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == flags_text:
                return
        path = os.path.join(run_dir, f"flags.step_{step}.cfg")
    atomic_write(path, flags_text)


def check_settings_for(model_name, settings: TrainSettings):
    """Raises ValueError naming the flag if a setting does not apply to the model (before any data is read)."""
    from tfhier.models import MODELS

    if settings.mixed_precision and model_name in MODELS:
        check_mixed_precision(MODELS[model_name])


def make_optimizer(s: TrainSettings):
    """Adam with an exponentially decaying learning rate (MS-STCN §4) and global-norm clipping; with
    ``weight_decay`` > 0, AdamW (decoupled weight decay, Loshchilov & Hutter 2019)."""
    schedule = keras.optimizers.schedules.ExponentialDecay(s.learning_rate, s.lr_decay_steps, s.lr_decay_rate)
    if s.weight_decay:
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=s.weight_decay, epsilon=s.adam_epsilon,
                                      global_clipnorm=s.clip_norm or None)
    return keras.optimizers.Adam(learning_rate=schedule, epsilon=s.adam_epsilon, global_clipnorm=s.clip_norm or None)


STRATEGIES = ("default", "mirrored", "multi_worker")


def _tf_config_problem(text):
    """What is wrong with the ``TF_CONFIG`` environment variable's value (None if usable)."""
    if not text:
        return ("the environment variable TF_CONFIG is not set: --strategy=multi_worker needs it on every worker, "
                "e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                "\"task\": {\"type\": \"worker\", \"index\": 0}}'")
    try:
        config = json.loads(text)
    except ValueError as e:
        return f"TF_CONFIG is not JSON ({e})"
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or \
            not isinstance(config.get("task"), dict):
        return "TF_CONFIG must be a JSON object with a \"cluster\" object and a \"task\" object"
    task = config["task"]
    jobs = config["cluster"]
    if task.get("type") not in jobs or not isinstance(jobs[task.get("type")], list):
        return f"TF_CONFIG's task type {task.get('type')!r} is not a job of its cluster ({', '.join(jobs)})"
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(jobs[task["type"]]):
        return (f"TF_CONFIG's task index {index!r} is not an index of the {len(jobs[task['type']])} "
                f"{task['type']!r} addresses")
    unknown = set(jobs) - {"chief", "worker"}
    if unknown:
        return f"TF_CONFIG's cluster has jobs {sorted(unknown)}: MultiWorkerMirroredStrategy takes chief and worker"
    return None


def make_strategy(name: str = "default", cpu_devices: int = 0,
                  worker_timeout: Optional[float] = None) -> Optional[tf.distribute.Strategy]:
    """The ``tf.distribute`` strategy ``train.py --strategy`` names (None for ``default``: one device).

    ``cpu_devices`` > 1 splits the CPU into that many logical devices first
    (before TensorFlow initialises its devices), so that ``mirrored`` runs on N
    "devices" of one CPU: how distributed training is tested without GPUs.
    ``mirrored``: ``MirroredStrategy`` over every GPU, else over the logical CPUs.
    ``multi_worker``: ``MultiWorkerMirroredStrategy``, cluster and role from the ``TF_CONFIG`` environment
    variable (every GPU of each worker, else its CPU); call it before any other TensorFlow operation.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name}: expected one of {', '.join(STRATEGIES)}")
    from tfhier import cluster  # TF_CONFIG by type, a bounded and interruptible wait for the workers

    problem = cluster.cpu_devices_problem(name, cpu_devices)
    if problem:
        raise ValueError(problem)
    if name == "multi_worker":
        return cluster.multi_worker_strategy(worker_timeout)
    if int(cpu_devices) > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(cpu_devices))
        except RuntimeError:  # already initialised: only an equal split is acceptable
            if len(tf.config.list_logical_devices("CPU")) != int(cpu_devices):
                raise ValueError(f"--cpu_devices={cpu_devices}: TensorFlow's devices are already initialised with "
                                 f"{len(tf.config.list_logical_devices('CPU'))} CPU devices") from None
    if name == "default":
        return None
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def is_multi_worker(strategy) -> bool:
    return strategy is not None and multi_worker(strategy)


def is_chief(strategy) -> bool:
    """True on the one process that writes the run directory (every process outside multi-worker training)."""
    return not is_multi_worker(strategy) or bool(strategy.extended.should_checkpoint)


def same_on_all_workers(strategy, value) -> bool:
    """Whether every worker holds the same number ``value`` (a collective: every worker must call it)."""
    if not is_multi_worker(strategy):
        return True
    v = tf.constant(float(value), tf.float64)
    per_replica = strategy.run(lambda: tf.stack([v, v * v]))
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None).numpy()
    return abs(mean[1] - mean[0] ** 2) <= 1e-9 * max(1.0, mean[1])


def check_batch_for(strategy, settings: TrainSettings):
    """The global batch must split evenly over the replicas (each replica then holds ``batch_size / N`` consecutive
    sequences of it; see :func:`tfhier.models.base.replica_rows`). Validation's last, smaller batch may split
    unevenly: its metrics are weighted by sequences and steps, so they stay those of the whole split."""
    n = strategy.num_replicas_in_sync if strategy is not None else 1
    if settings.batch_size % n:
        raise ValueError(f"--batch_size={settings.batch_size} does not split evenly over the {n} replicas of the "
                         f"strategy (give a multiple of {n})")


def fill_batch(x, mask, batch_size):
    """A last, smaller validation batch filled up to ``batch_size`` with step-less sequences (mask 0), which
    count in no metric (``SequenceModel.test_step``): under N replicas every replica then gets
    ``batch_size / N`` rows, and every sequence's latent noise is that of its row of a full batch, so the
    validation numbers of N replicas are exactly one device's."""
    missing = batch_size - tf.shape(x)[0]
    return (tf.pad(x, [[0, missing], [0, 0], [0, 0]]), tf.pad(mask, [[0, missing], [0, 0]]))


def distribute(strategy, dataset, batch_size):
    """``dataset`` (global batches) as the strategy's replicas take it: replica r gets rows
    ``[r * B/N, (r + 1) * B/N)`` of each global batch, the batch itself unchanged.

    (``strategy.experimental_distribute_dataset``, what Keras would call, rewrites the pipeline's batch
    size to B/N instead, which regroups bucketed and shuffled batches: the replicas would then see other
    sequences than one device does.) With one replica, ``dataset`` itself.

    Under ``MirroredStrategy`` each replica iterates a pipeline of its own on the host
    (``InputReplicationMode.PER_REPLICA``, not fetched ahead to the device): TensorFlow's
    per-device buffers otherwise (a ``MultiDeviceIterator``) are datasets with tf.data autotuning
    on, whatever ``dataset``'s options say, and ending an iterator waits for their autotuning
    threads, which sleep up to 60 s (see :func:`tfhier.data.pipeline.without_autotuning`):
    measured 5.8 s of 93 s at 8 validation intervals of 30 steps on 2 CPU replicas, 0 s this way.
    The price: the host runs the (cheap) batching N times, each replica keeping its rows, and a
    batch is copied to its device when the step starts. ``MultiWorkerMirroredStrategy`` accepts
    only per-worker pipelines, so there the wait remains.
    """
    n = strategy.num_replicas_in_sync if strategy is not None else 1
    if n == 1:
        return dataset
    local = batch_size // n

    def per_worker(context):
        # Each pipeline (one per replica under mirrored, one per worker under multi-worker training) keeps its
        # own replicas' rows of every global batch: workers never train on the same sequences.
        mine = n // context.num_input_pipelines
        first = context.input_pipeline_id * mine

        def split(x, mask):
            parts = lambda v: tf.reshape(v, tf.concat([[n, local], tf.shape(v)[1:]], 0))[first:first + mine]  # noqa
            return tf.data.Dataset.from_tensor_slices((parts(x), parts(mask)))

        # Consecutive elements go to consecutive (local) replicas; a per-replica pipeline holds one replica's.
        return without_autotuning(dataset.flat_map(split))

    options = None
    if not is_multi_worker(strategy):
        options = tf.distribute.InputOptions(
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
            experimental_fetch_to_device=False)
    return strategy.distribute_datasets_from_function(per_worker, options)


def make_objective(s: TrainSettings):
    return objectives.make_objective(s.objective, kl_regularizer=s.kl_regularizer, free_bits=s.free_bits,
                                     free_bits_halving_steps=s.free_bits_halving_steps, beta_start=s.beta_start,
                                     anneal_steps=s.anneal_steps, num_particles=s.num_particles,
                                     resampling_threshold=s.resampling_threshold)


def model_variables(model) -> dict:
    """The model's variables by path, for ``tf.train.Checkpoint``.

    ``tf.train.Checkpoint(model=keras_model)`` does not see Keras 3 layers held
    in Python lists (MS-STCN keeps one per latent layer), so the variables are
    named explicitly: a checkpoint then holds every weight, whatever the
    model's Python structure.
    """
    variables = {v.path: v for v in model.weights}
    if len(variables) != len(model.weights):
        raise ValueError(f"{model.name}: variable paths are not unique; cannot checkpoint by path")
    return variables


class Checkpointer:
    """Checkpoints of model, optimizer (with its step) and objective state in ``run_dir/checkpoints``."""

    def __init__(self, run_dir, model, optimizer, objective, max_to_keep=3):
        self.best_value = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best_valid_neg_elbo_per_step")
        self.checkpoint = tf.train.Checkpoint(model=model_variables(model), optimizer=optimizer, objective=objective,
                                              best_valid_neg_elbo_per_step=self.best_value)
        self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(run_dir, "checkpoints"),
                                                  max_to_keep=max_to_keep)
        self.best_manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(run_dir, "best"), max_to_keep=1)
        self.max_to_keep = max_to_keep
        self.model = model
        self.optimizer = optimizer

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    @property
    def best_step(self):
        """The step of the checkpoint in ``run_dir/best`` (None before the first finite validation)."""
        prefixes = checkpoint_prefixes(self.best_manager.directory)
        return int(prefixes[0].rsplit("-", 1)[1]) if prefixes else None

    def patience_spent(self, settings):
        """True when ``--patience`` validations in a row have not improved on the best (early stopping).

        Derived from the best checkpoint's step, so a resumed run applies the same rule without extra state.
        """
        best = self.best_step
        return bool(settings.patience) and best is not None and \
            self.step - best >= settings.patience * settings.eval_every

    def save_if_best(self, valid_neg_elbo_per_step):
        """Keeps the checkpoint with the lowest validation -ELBO per step in ``run_dir/best`` (early stopping).

        The best value so far is a variable in the checkpoint, so a resumed run keeps comparing against it.
        """
        if not np.isfinite(valid_neg_elbo_per_step) or valid_neg_elbo_per_step >= float(self.best_value.numpy()):
            return None
        if not self.weights_finite():
            return None
        self.best_value.assign(valid_neg_elbo_per_step)
        return _saving(lambda: self.best_manager.save(checkpoint_number=self.step), self.best_manager)

    def restore_latest(self):
        """Restores the newest checkpoint that can be read; returns ``(path, notes)`` (``(None, [])`` if none).

        The candidates are the complete checkpoint files present in
        ``R/checkpoints`` (then ``R/best``), newest first, whatever the state
        file says: a lost or garbled state file is rewritten from them, and a
        checkpoint that cannot be read (truncated, corrupt) is skipped for the
        next older one.  ``notes`` say what was repaired or skipped.  Raises
        RunDirError when checkpoint files exist and none can be restored.
        """
        notes = []
        for manager in (self.manager, self.best_manager):
            problem = repair_state(manager.directory)
            if problem:
                notes.append(f"{manager.directory}: {problem}; rewrote it from the checkpoint files present")
        self._reload_managers()
        candidates = checkpoint_prefixes(self.manager.directory) + checkpoint_prefixes(self.best_manager.directory)
        failures = []
        for path in candidates:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except Exception as e:  # truncated or corrupt files surface as many error types
                failures.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
                continue
            if failures:
                notes.append(f"could not read {'; '.join(failures)}: resumed from the older {path} instead")
            return path, notes
        if failures:
            raise RunDirError(f"no checkpoint of this run can be restored: {'; '.join(failures)}. Nothing was "
                              f"changed; move the run directory aside to start afresh, or restore its files")
        return None, notes

    def _reload_managers(self):
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.manager.directory,
                                                  max_to_keep=self.max_to_keep)
        self.best_manager = tf.train.CheckpointManager(self.checkpoint, self.best_manager.directory, max_to_keep=1)

    def weights_finite(self):
        return all(bool(np.all(np.isfinite(v.numpy()))) for v in self.model.weights)

    def save(self):
        """Saves at the current step unless the weights are not finite; returns the path or None."""
        if not self.weights_finite():
            logging.error("step %d: weights are not finite; not saving (the last good checkpoint stays)",
                          self.step)
            return None
        if self.manager.latest_checkpoint and self.manager.latest_checkpoint.endswith(f"-{self.step}"):
            return self.manager.latest_checkpoint
        return _saving(lambda: self.manager.save(checkpoint_number=self.step), self.manager)


def _saving(save, manager):
    """``save()``; a failed write (disk full, read-only) is a RunDirError: the earlier checkpoints stay intact
    (the state file only moves to a checkpoint once its files are complete)."""
    try:
        return save()
    except (tf.errors.OpError, OSError) as e:
        message = getattr(e, "message", None) or str(e)
        raise RunDirError(f"cannot write a checkpoint in {manager.directory} ({message.splitlines()[0][:300]}); "
                          f"the earlier checkpoints ({manager.latest_checkpoint or 'none'}) are intact") from None


# TensorBoard tag of each metric; every per-layer KL goes under kl/ so TensorBoard groups them.
def metric_tag(name):
    if name.startswith("kl_"):
        return "kl/" + name[len("kl_"):]
    if name == "kl":
        return "kl/total"
    return name


def _clock(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """The console's view of training, in the run's own step count (not Keras' per-fit epochs).

    ``verbose``: ``'auto'`` (a live line on a terminal, else ``2``), ``1`` (a
    live line redrawn in place), ``2`` (one line per validation interval: for
    log files, nohup and batch jobs), ``0`` (nothing).  Only a few numbers are
    shown (loss, the bound per step, the total KL, steps/s, ETA), named as the
    TensorBoard tags; everything else is in TensorBoard.
    """

    def __init__(self, total, verbose, bound="elbo", stream=None):
        import sys

        self.stream = stream or sys.stdout
        if verbose == "auto":
            verbose = 1 if getattr(self.stream, "isatty", lambda: False)() else 2
        self.verbose = int(verbose)
        self.total, self.bound = int(total), bound
        self._start_time = self._start_step = None
        self._last_draw = 0.0
        self._live = False

    def begin(self, step):
        if self._start_time is None:
            self._start_time, self._start_step = time.monotonic(), step

    def _rate_eta(self, step):
        elapsed = time.monotonic() - self._start_time
        done = step - self._start_step
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        return rate, (self.total - step) / rate if rate else float("nan"), elapsed

    def _numbers(self, logs, prefix=""):
        keys = [("loss", "loss"), (f"neg_{self.bound}_per_step", f"neg_{self.bound}_per_step"), ("kl", "kl/total")]
        return "  ".join(f"{prefix}{label} {float(logs[k]):.4g}" for k, label in keys if k in logs)

    def step(self, step, logs):
        if self.verbose != 1:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.25 and step < self.total:
            return
        self._last_draw = now
        rate, eta, _ = self._rate_eta(step)
        width = 24
        filled = int(width * min(step / max(self.total, 1), 1.0))
        bar = "=" * filled + (">" if filled < width else "") + "." * max(width - filled - 1, 0)
        eta_text = _clock(eta) if eta == eta else "?"
        line = (f"\rstep {step}/{self.total} [{bar}] {self._numbers(logs)}  {rate:.2f} steps/s  ETA {eta_text}")
        self.stream.write(line.ljust(110))
        self.stream.flush()
        self._live = True

    def interval(self, step, train_logs, valid_logs):
        if self.verbose == 0:
            return
        rate, eta, elapsed = self._rate_eta(step)
        text = f"step {step}/{self.total}  train: {self._numbers(train_logs)}"
        if valid_logs:
            text += f"  |  valid: {self._numbers(valid_logs)}"
        text += f"  |  {rate:.2f} steps/s  elapsed {_clock(elapsed)}"
        if step < self.total and eta == eta:
            text += f"  ETA {_clock(eta)}"
        self.message(text)

    def message(self, text):
        if self.verbose == 0:
            return
        if self._live:
            self.stream.write("\n")
            self._live = False
        self.stream.write(text + "\n")
        self.stream.flush()


class TrainingMonitor(keras.callbacks.Callback):
    """Writes TensorBoard scalars, checkpoints, samples and the console's progress; stops at ``train_steps`` or
    on repeated NaN.

    Each TensorBoard point is the mean over the last ``log_every`` steps,
    computed from the metrics' running totals (so the metrics are never reset
    mid-interval).  One ``fit`` call is one validation interval (see
    :func:`train`); the console shows the run's own step count (:class:`Progress`).
    """

    def __init__(self, run_dir, settings: TrainSettings, checkpointer: Checkpointer, objective,
                 data: SequenceData, multi_worker: bool = False):
        super().__init__()
        self.s = settings
        self.run_dir = run_dir
        self.checkpointer = checkpointer
        self.objective = objective
        self.data = data
        self.train_writer = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "train"))
        self.valid_writer = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "validation"))
        self.consecutive_nonfinite = 0
        self.failed = False
        self._last_step = None
        self._totals = {}
        self._last_save = time.monotonic()
        self._began = False
        self.progress = Progress(settings.train_steps, settings.verbose, objective.BOUND)
        self.multi_worker = multi_worker

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self._totals = {}  # Keras has just reset the metrics

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if step == self._last_step:  # the update was skipped
            self.consecutive_nonfinite += 1
            logging.warning("non-finite loss or gradient after step %d: update skipped, weights unchanged "
                            "(%d in a row)", step, self.consecutive_nonfinite)
            if self.consecutive_nonfinite >= self.s.max_nonfinite_steps:
                self.failed = True
                self.model.stop_training = True
                logging.error("stopping: %d consecutive non-finite steps at step %d; the last good checkpoint "
                              "(%s) is kept and not overwritten", self.consecutive_nonfinite, step,
                              self.checkpointer.manager.latest_checkpoint)
            return
        self.consecutive_nonfinite = 0
        self._last_step = step
        # Flush before Keras' end-of-epoch validation, which resets the (shared) metric objects.
        last_of_epoch = batch + 1 == self.params.get("steps")
        if step % self.s.log_every == 0 or last_of_epoch or step >= self.s.train_steps:
            self._write_train_scalars(step)
        # (Not by the clock under multi-worker training: every worker must save at the same steps.)
        overdue = (self.s.checkpoint_secs and not self.multi_worker
                   and time.monotonic() - self._last_save >= self.s.checkpoint_secs)
        if step % self.s.checkpoint_every == 0 or overdue:
            self.checkpointer.save()
            self._last_save = time.monotonic()
        if self.s.sample_every and self.s.num_samples and step % self.s.sample_every == 0:
            self.write_samples(step)
        if step >= self.s.train_steps:
            self.model.stop_training = True
        self.progress.step(step, logs or {})

    def _interval_means(self):
        """Each metric's mean over the steps since the last call (or the epoch's start)."""
        means = {}
        for m in self.model.metrics:
            total = float(m.total.numpy())
            count = float(m.count.numpy()) if hasattr(m, "count") else 1.0
            old_total, old_count = self._totals.get(m.name, (0.0, 0.0))
            self._totals[m.name] = (total, count)
            if not hasattr(m, "count"):  # a Sum: report the increment
                means[m.name] = total - old_total
            elif count > old_count:
                means[m.name] = (total - old_total) / (count - old_count)
        return means

    def _write_train_scalars(self, step):
        lr = self.model.optimizer.learning_rate
        lr = float(lr(step) if callable(lr) else lr)
        with self.train_writer.as_default(step=step):
            for name, value in self._interval_means().items():
                tf.summary.scalar(metric_tag(name), value)
                if name.endswith("_per_step"):  # the headline: comparable across splits and models
                    tf.summary.scalar(f"bounds/{name}", value)
            tf.summary.scalar("learning_rate", lr)
            for name, value in self.objective.summary_scalars().items():
                tf.summary.scalar(name, float(value.numpy()))
        self.train_writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        step = self._step()
        logs = logs or {}
        val = {k[len("val_"):]: v for k, v in logs.items() if k.startswith("val_")}
        if val:
            with self.valid_writer.as_default(step=step):
                for name, value in val.items():
                    tf.summary.scalar(metric_tag(name), float(value))
                    if name.endswith("_per_step"):  # the headline: comparable across splits and models
                        tf.summary.scalar(f"bounds/{name}", float(value))
            self.valid_writer.flush()
            self.checkpointer.save_if_best(float(val[f"neg_{self.objective.BOUND}_per_step"]))
        self.progress.interval(step, {k: v for k, v in logs.items() if not k.startswith("val_")}, val)

    def on_train_begin(self, logs=None):
        self._last_step = self._step()
        self.progress.begin(self._last_step)
        if self._began:
            return
        self._began = True
        if self.s.num_samples and self.s.sample_steps and not self.model.has_cached_generator:
            problem = naive_generation_problem(self.model, self.s.sample_steps, "training-time samples of")
            if problem:
                logging.warning("%s: no samples will be drawn during training (lower --sample_steps)", problem)
                self.s.num_samples = 0
            else:
                logging.warning("%s has no cached generator: training-time samples use the naive sampler (cost "
                                "quadratic in --sample_steps=%d)", self.model.NAME, self.s.sample_steps)

    def write_samples(self, step):
        if not self.s.num_samples or not self.s.sample_steps:
            return
        x = self.model.generate(self.s.num_samples, self.s.sample_steps,
                                tf.constant([self.s.seed, step], tf.int32)).numpy()
        path = samples_lib.save_samples(x, self.data.kind, self.data.info,
                                        os.path.join(self.run_dir, "samples", f"step_{step:07d}"))
        with self.train_writer.as_default(step=step):
            samples_lib.summarize_samples(x, self.data.kind, self.data.info)
        self.train_writer.flush()
        self.progress.message(f"step {step}: samples written to {path}")


class Preempted(Exception):
    """Training stopped on SIGTERM / SIGINT after writing a checkpoint at the current step."""

    def __init__(self, signum, step, checkpoint):
        import signal as _signal

        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.name = _signal.Signals(signum).name
        super().__init__(f"stopped by {self.name} at step {step}; checkpoint {checkpoint or '(none written)'}; "
                         f"rerun the same command to resume")

    @property
    def exit_status(self):
        """128 + the signal number: what a shell (and a scheduler) reads as "killed by that signal"."""
        return 128 + self.signum


class _SignalStop:
    """SIGTERM and SIGINT stop training after the current step (a checkpoint is written); a second one exits at
    once.  Outside ``fit`` (while loading), the first one raises :class:`Preempted` straight away."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.received = None
        self.model = None
        self._old = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal
        import sys

        if self.received is not None:  # the second signal: no more waiting
            sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting without a checkpoint\n")
            os._exit(128 + signum)
        self.received = signum
        if self.model is None:
            raise Preempted(signum, None, None)
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                         f"(send it again to exit at once)\n")
        self.model.stop_training = True

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(run_dir, model_name, model_config, data: SequenceData, settings: TrainSettings,
          flags_text: Optional[str] = None, strategy: Optional[tf.distribute.Strategy] = None,
          allow_data_change: bool = False):
    """Trains (or resumes) a run. Returns ``(model, history_logs)``.

    Raises :class:`RunDirError` / ``ValueError`` with a clear message on bad
    input, before anything in ``run_dir`` is changed; :class:`Preempted` after
    SIGTERM / SIGINT (a checkpoint at the step reached is written first).
    The run directory is locked (:class:`tfhier.rundir.RunLock`) for the whole call.
    """
    settings.validate()
    check_batch_for(strategy, settings)
    check_settings_for(model_name, settings)
    data.check()
    if not is_chief(strategy):
        return _train_non_chief(run_dir, model_name, model_config, data, settings, flags_text, strategy,
                                allow_data_change)
    if len(data.train) < settings.batch_size:
        raise ValueError(f"--batch_size={settings.batch_size} is larger than the {len(data.train)} training sequences "
                         f"of this data set (training batches are full batches)")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"--run_dir={run_dir} is a file, not a directory")
    problem = writable_problem(run_dir, "--run_dir")
    if problem:
        raise RunDirError(problem)
    # The configuration (and so the check of run_dir) needs only the model object, not its weights.
    config = run_config(build_model(model_name, data.feature_dim, model_config), data)
    check_run_dir(run_dir, config, allow_data_change)  # before anything is created (again under the lock below)
    os.makedirs(run_dir, exist_ok=True)
    return _train_in(run_dir, model_name, config, data, settings, flags_text, strategy, allow_data_change)


def _train_in(directory, model_name, config, data, settings, flags_text, strategy, allow_data_change):
    """Trains in ``directory`` holding its lock, with SIGTERM / SIGINT turned into a checkpoint and a stop;
    the directory is checked again under the lock (another process may have started a run there)."""
    with RunLock(directory), _SignalStop() as stop:
        resuming = check_run_dir(directory, config, allow_data_change)
        return _train_locked(directory, model_name, config, data, settings, flags_text, strategy, resuming, stop)


def _train_non_chief(run_dir, model_name, model_config, data, settings, flags_text, strategy, allow_data_change):
    """A worker other than the chief (multi-worker training): it trains exactly as the chief does (every
    collective needs every worker), but what it writes goes to a temporary directory, removed at the end; the
    run directory is the chief's. To resume, it starts from a copy of the run directory's checkpoints, so
    the run directory must be on a filesystem every worker can read (checked: every worker must resume at
    the same step)."""
    import shutil
    import tempfile

    task = strategy.cluster_resolver.task_id if strategy.cluster_resolver else "?"
    scratch = tempfile.mkdtemp(prefix=f"tfhier_worker{task}_")
    try:
        work = os.path.join(scratch, "run")
        os.makedirs(work)
        for name in ("config.json", "checkpoints", "best"):
            src = os.path.join(run_dir, name)
            try:
                if os.path.isdir(src):
                    shutil.copytree(src, os.path.join(work, name))
                elif os.path.isfile(src):
                    shutil.copy2(src, os.path.join(work, name))
            except OSError:
                pass  # unreadable here: the check of the restored step names the problem
        config = run_config(build_model(model_name, data.feature_dim, model_config), data)
        return _train_in(work, model_name, config, data, settings, flags_text, strategy, allow_data_change)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_locked(run_dir, model_name, config, data, settings, flags_text, strategy, resuming, stop):
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(settings.seed)

    with strategy.scope(), precision_policy(settings.mixed_precision):
        model = build_model(model_name, data.feature_dim, config["model_config"]).build_for_data()
        optimizer = make_optimizer(settings)
        objective = make_objective(settings)
        model.compile(optimizer=optimizer, objective=objective, jit_compile=settings.jit_compile)
        optimizer.build(model.trainable_variables)
    print(f"{model_name}: {model.count_params():,} parameters", flush=True)

    checkpointer = Checkpointer(run_dir, model, optimizer, objective)
    restored, notes = checkpointer.restore_latest() if resuming else (None, [])
    for note in notes:
        print(f"warning: {note}", flush=True)
    step = checkpointer.step
    if not same_on_all_workers(strategy, step):
        raise RunDirError(f"the workers restored different steps (this one: {step}); every worker must read the "
                          f"chief's run directory {run_dir}: put it on a filesystem they all share")
    if restored:
        state = ", ".join(f"{k} {float(v.numpy()):.4g}" for k, v in objective.summary_scalars().items())
        print(f"resumed from {restored} at step {step}" + (f" ({state})" if state else ""), flush=True)
    try:
        if not resuming:
            atomic_write(os.path.join(run_dir, "config.json"), json.dumps(config, indent=2) + "\n")
        if flags_text is not None:
            _write_flags(run_dir, flags_text, step)
    except OSError as e:
        raise RunDirError(f"--run_dir={run_dir}: cannot write the run's files ({e.strerror or e})") from None
    objective.update(step)
    if step >= settings.train_steps:
        print(f"{run_dir} is already trained to step {step} >= --train_steps={settings.train_steps}", flush=True)
        return model, {}
    if checkpointer.patience_spent(settings):
        print(f"{run_dir} stopped early at step {step}: no better validation bound since step "
              f"{checkpointer.best_step} (--patience={settings.patience})", flush=True)
        return model, {}

    pad = model.time_multiple
    valid_ds = make_dataset(data.valid, settings.batch_size, training=False, pad_to_multiple=pad,
                            static_shapes=settings.jit_compile)
    # The last batch filled up (on any number of replicas, so that each sequence's noise, keyed by its row of a
    # full batch, is the same on 1 or N devices).
    valid_ds = valid_ds.map(lambda x, mask: fill_batch(x, mask, settings.batch_size))
    valid_ds = distribute(strategy, valid_ds, settings.batch_size)
    # The number of validation batches, given: a distributed dataset has no known length, and Keras then warns
    # "Your input ran out of data" at the end of every validation.
    valid_batches = math.ceil(len(data.valid) / settings.batch_size)
    valid_steps = (min(settings.eval_batches, valid_batches) if settings.eval_batches else valid_batches) or None
    monitor = TrainingMonitor(run_dir, settings, checkpointer, objective, data,
                              multi_worker=is_multi_worker(strategy))
    write_hparams(run_dir, config, settings)
    stop.model = model
    if stop.received is not None:
        raise Preempted(stop.received, step, None)
    # One fit() per validation interval, so validation falls on multiples of --eval_every also after a resume
    # mid-interval, and the last, shorter interval is as long as it is. Each interval's data pipeline is seeded
    # by the step it starts at (a resumed run continues with fresh, reproducible data order and crops).
    history = {}
    early_stop = False
    while step < settings.train_steps and not (monitor.failed or stop.received is not None):
        boundary = min((step // settings.eval_every + 1) * settings.eval_every, settings.train_steps)
        train_ds = make_dataset(data.train, settings.batch_size, training=True, seq_len=settings.seq_len,
                                augment=data.train_augment, pad_to_multiple=pad, seed=settings.seed + step,
                                static_shapes=settings.jit_compile)
        result = model.fit(distribute(strategy, train_ds, settings.batch_size), epochs=1,
                           steps_per_epoch=boundary - step, validation_data=valid_ds,
                           validation_steps=valid_steps, callbacks=[monitor], verbose=0,
                           shuffle=False)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
        previous, step = step, checkpointer.step
        if step == previous and not monitor.failed and stop.received is None:
            continue  # every update of the interval was skipped (non-finite): the monitor counts them
        if checkpointer.patience_spent(settings) and not monitor.failed and stop.received is None:
            early_stop = True
            monitor.progress.message(f"early stop at step {step}: the validation bound has not improved for "
                                     f"{settings.patience} evaluations (best at step {checkpointer.best_step}, "
                                     f"kept in {os.path.join(run_dir, 'best')})")
            break
    if not monitor.failed:
        checkpointer.save()
    if monitor.failed:
        raise FloatingPointError(
            f"training stopped at step {checkpointer.step}: {monitor.consecutive_nonfinite} consecutive non-finite "
            f"losses; {_kept(checkpointer)}")
    if stop.received is not None:
        raise Preempted(stop.received, checkpointer.step, checkpointer.manager.latest_checkpoint)
    if checkpointer.step < settings.train_steps and not early_stop:
        raise FloatingPointError(f"training stopped at step {checkpointer.step}, short of --train_steps="
                                 f"{settings.train_steps} ({monitor.consecutive_nonfinite} non-finite steps at the "
                                 f"end); {_kept(checkpointer)}")
    return model, history


def _kept(checkpointer) -> str:
    """What a run that stopped on non-finite losses keeps, for its message."""
    latest = checkpointer.manager.latest_checkpoint
    return f"the last good checkpoint {latest} was kept" if latest else "no checkpoint had been written yet"
