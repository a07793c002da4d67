"""The fit loop: :func:`train` checks everything, takes the run directory's lock, builds or restores the model,
and trains one validation interval per ``fit`` call until ``--train_steps``, an early stop, a preemption or
repeated non-finite steps."""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import keras
import tensorflow as tf

from tfhier.data.base import SequenceData
from tfhier.data.pipeline import make_dataset
from tfhier.fileio import atomic_write
from tfhier.models import build_model
from tfhier.models.base import precision_policy
from tfhier.rundir import RunDirError, RunLock, writable_problem
from tfhier.training.checkpoints import Checkpointer
from tfhier.training.config import check_run_dir, run_config, write_flags, write_hparams
from tfhier.training.distribution import (check_batch_for, distribute, fill_batch, is_chief, is_multi_worker,
                                          resolve_jit_compile, same_on_all_workers)
from tfhier.training.monitor import TrainingMonitor
from tfhier.training.settings import TrainSettings, check_settings_for, make_objective, make_optimizer
from tfhier.training.signals import Preempted, SignalStop


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
    with RunLock(directory), SignalStop() as stop:
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
        optimizer = make_optimizer(settings, model)
        objective = make_objective(settings)
        jit_compile = resolve_jit_compile(settings.jit_compile, model, strategy)
        model.compile(optimizer=optimizer, objective=objective, jit_compile=jit_compile)
        optimizer.build(model.trainable_variables)
    print(f"{model_name}: {model.count_params():,} parameters" + (", XLA-compiled steps" if jit_compile else ""),
          flush=True)

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
            write_flags(run_dir, flags_text, step)
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
                            static_shapes=jit_compile)
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
                                static_shapes=jit_compile)
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
            f"losses; {kept_message(checkpointer)}")
    if stop.received is not None:
        raise Preempted(stop.received, checkpointer.step, checkpointer.manager.latest_checkpoint)
    if checkpointer.step < settings.train_steps and not early_stop:
        raise FloatingPointError(f"training stopped at step {checkpointer.step}, short of --train_steps="
                                 f"{settings.train_steps} ({monitor.consecutive_nonfinite} non-finite steps at the "
                                 f"end); {kept_message(checkpointer)}")
    return model, history


def kept_message(checkpointer) -> str:
    """What a run that stopped on non-finite losses keeps, for its message."""
    latest = checkpointer.manager.latest_checkpoint
    return f"the last good checkpoint {latest} was kept" if latest else "no checkpoint had been written yet"
