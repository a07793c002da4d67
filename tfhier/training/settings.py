"""The training settings (one per ``train.py`` flag) and what they build: the optimizer and the objective.

Every setting is checked (:meth:`TrainSettings.validate`, :func:`check_settings_for`) before any data is read.
"""

from __future__ import annotations

import dataclasses
from typing import Optional
import math

import keras
import tensorflow as tf

from tfhier import objectives
from tfhier.models import MODELS
from tfhier.models.base import check_mixed_precision
from tfhier.training.rmsprop import NesterovRMSprop

#: ``--optimizer`` choices: Adam (AdamW with ``--weight_decay``), and STORN's rmsprop with Nesterov momentum
OPTIMIZERS = ("adam", "nesterov_rmsprop")


@dataclasses.dataclass
class TrainSettings:
    """Training settings (one per ``train.py`` flag of the same name)."""

    train_steps: int = 1000
    batch_size: int = 32
    seq_len: int = 1024
    learning_rate: float = 5e-4
    lr_decay_steps: int = 100_000
    lr_decay_rate: float = 0.5
    lr_decay_start: int = 0
    clip_norm: float = 1.0
    weight_decay: float = 0.0
    optimizer: str = "adam"
    adam_epsilon: float = 1e-7
    momentum: float = 0.9
    rms_decay: float = 0.9
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
    jit_compile: Optional[bool] = None  # None: the model's jit_compile_default on one device
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
                     "weight_decay", "patience", "lr_decay_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("momentum", "rms_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
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


def check_settings_for(model_name, settings: TrainSettings):
    """Raises ValueError naming the flag if a setting does not apply to the model (before any data is read)."""
    if settings.mixed_precision and model_name in MODELS:
        check_mixed_precision(MODELS[model_name])


@keras.saving.register_keras_serializable("tfhier")
class DelayedExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``initial_learning_rate`` for the first ``start`` steps, then ``initial_learning_rate * rate^((step - start)
    / decay_steps)``: the schedule of the SRNN authors' MainSRNN_midi.py (constant for 20 epochs, then divided by
    1.2 per epoch; continuous here, as Keras' ExponentialDecay is)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, start):
        super().__init__()
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.start = start

    def __call__(self, step):
        elapsed = tf.maximum(tf.cast(step, tf.float32) - float(self.start), 0.0)
        return self.initial_learning_rate * tf.pow(float(self.decay_rate), elapsed / float(self.decay_steps))

    def get_config(self):
        return dict(initial_learning_rate=self.initial_learning_rate, decay_steps=self.decay_steps,
                    decay_rate=self.decay_rate, start=self.start)


def make_optimizer(s: TrainSettings, model=None):
    """The optimizer of ``s.optimizer`` with an exponentially decaying learning rate (MS-STCN §4; after
    ``lr_decay_start`` constant steps) and global-norm clipping. ``adam``: Adam, or with ``weight_decay`` > 0
    AdamW (decoupled weight decay, Loshchilov & Hutter 2019); ``nesterov_rmsprop``: STORN's optimizer
    (:class:`~tfhier.training.rmsprop.NesterovRMSprop`, decay ``rms_decay``, ``momentum``), with the same
    decoupled decay. The decay leaves ``model.weight_decay_exempt`` alone."""
    if s.lr_decay_start:
        schedule = DelayedExponentialDecay(s.learning_rate, s.lr_decay_steps, s.lr_decay_rate, s.lr_decay_start)
    else:
        schedule = keras.optimizers.schedules.ExponentialDecay(s.learning_rate, s.lr_decay_steps, s.lr_decay_rate)
    common = dict(learning_rate=schedule, global_clipnorm=s.clip_norm or None)
    if s.optimizer == "nesterov_rmsprop":
        optimizer = NesterovRMSprop(decay=s.rms_decay, momentum=s.momentum, weight_decay=s.weight_decay or None,
                                    **common)
    elif s.weight_decay:
        optimizer = keras.optimizers.AdamW(weight_decay=s.weight_decay, epsilon=s.adam_epsilon, **common)
    else:
        return keras.optimizers.Adam(epsilon=s.adam_epsilon, **common)
    exempt = [] if model is None or not s.weight_decay else model.weight_decay_exempt
    if exempt:
        optimizer.exclude_from_weight_decay(var_list=exempt)
    return optimizer


def make_objective(s: TrainSettings):
    return objectives.make_objective(s.objective, kl_regularizer=s.kl_regularizer, free_bits=s.free_bits,
                                     free_bits_halving_steps=s.free_bits_halving_steps, beta_start=s.beta_start,
                                     anneal_steps=s.anneal_steps, num_particles=s.num_particles,
                                     resampling_threshold=s.resampling_threshold)
