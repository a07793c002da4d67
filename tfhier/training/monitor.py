"""The callback that watches training: TensorBoard scalars (``R/logs/train``, ``R/logs/validation``),
checkpoints by step and by the clock, the best checkpoint, training-time samples (``R/samples``), the console's
progress, and the stop after repeated non-finite steps.
"""

from __future__ import annotations

import os
import time

import keras
import tensorflow as tf
from absl import logging

from tfhier import samples as samples_lib
from tfhier.data.base import SequenceData
from tfhier.models.base import naive_generation_problem
from tfhier.training.checkpoints import Checkpointer
from tfhier.training.progress import Progress
from tfhier.training.settings import TrainSettings


# TensorBoard tag of each metric; every per-layer KL goes under kl/ so TensorBoard groups them.
def metric_tag(name):
    if name.startswith("kl_"):
        return "kl/" + name[len("kl_"):]
    if name == "kl":
        return "kl/total"
    return name


class TrainingMonitor(keras.callbacks.Callback):
    """Writes TensorBoard scalars, checkpoints, samples and the console's progress; stops at ``train_steps`` or
    on repeated NaN.

    Each TensorBoard point is the mean over the last ``log_every`` steps,
    computed from the metrics' running totals (so the metrics are never reset
    mid-interval).  One ``fit`` call is one validation interval (see
    :func:`tfhier.training.train`); the console shows the run's own step count (:class:`Progress`).
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
