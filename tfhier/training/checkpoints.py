"""Checkpoints of a run: model weights, optimizer state (with its step), objective state and the best
validation bound so far, in ``R/checkpoints`` (the latest few) and ``R/best`` (the best one, early stopping).

Checkpoints are written with ``tf.train.CheckpointManager``: the data files are complete before the
``checkpoint`` index file is atomically replaced to point at them, so a process killed mid-save leaves the
previous checkpoint in force; a lost or garbled index file is rebuilt from the files present
(:func:`tfhier.rundir.repair_state`), and a checkpoint that cannot be read is skipped for an older one.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import logging

from tfhier.rundir import RunDirError, checkpoint_prefixes, model_variables, repair_state


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
