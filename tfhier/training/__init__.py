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

One module per concern:

* :mod:`~tfhier.training.settings`: :class:`TrainSettings` (one per ``train.py`` flag), the optimizer and the
  objective they make;
* :mod:`~tfhier.training.config`: ``config.json``, ``flags.cfg``, the HParams of ``R/logs``, and the check that a
  rerun continues the run in ``R``;
* :mod:`~tfhier.training.distribution`: ``tf.distribute`` strategies and the data as their replicas take it;
* :mod:`~tfhier.training.checkpoints`: :class:`Checkpointer` (``R/checkpoints``, ``R/best``);
* :mod:`~tfhier.training.progress`: the console's progress line;
* :mod:`~tfhier.training.monitor`: :class:`TrainingMonitor`, the callback writing TensorBoard scalars, checkpoints
  and samples;
* :mod:`~tfhier.training.signals`: SIGTERM / SIGINT turned into a checkpoint and a stop (:class:`Preempted`);
* :mod:`~tfhier.training.loop`: :func:`train`, the fit loop.

The names below are this package's interface (``from tfhier import training; training.train(...)``).
"""

from tfhier.rundir import RunDirError, model_variables
from tfhier.training.checkpoints import Checkpointer
from tfhier.training.config import IDENTITY_KEYS, check_run_dir, run_config, write_flags, write_hparams
from tfhier.training.distribution import (STRATEGIES, check_batch_for, distribute, fill_batch, is_chief,
                                          is_multi_worker, make_strategy, resolve_jit_compile, same_on_all_workers)
from tfhier.training.loop import kept_message, train
from tfhier.training.monitor import TrainingMonitor, metric_tag
from tfhier.training.progress import Progress
from tfhier.training.settings import TrainSettings, check_settings_for, make_objective, make_optimizer
from tfhier.training.signals import Preempted, SignalStop

#: the name the signal handler had before it was public (tests use it)
_SignalStop = SignalStop

__all__ = ["IDENTITY_KEYS", "STRATEGIES", "Checkpointer", "Preempted", "Progress", "RunDirError", "SignalStop",
           "TrainSettings", "TrainingMonitor", "check_batch_for", "check_run_dir", "check_settings_for", "distribute",
           "fill_batch", "is_chief", "is_multi_worker", "kept_message", "make_objective", "make_optimizer",
           "make_strategy", "metric_tag", "model_variables", "resolve_jit_compile", "run_config",
           "same_on_all_workers", "train", "write_flags", "write_hparams"]
