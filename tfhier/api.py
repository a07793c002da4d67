"""The Python API: a trained run as an object, for notebooks and scripts.

    import tfhier

    run = tfhier.load_run("runs/demo")                 # the best checkpoint (R/best), as evaluate.py --checkpoint=best
    test = run.data.split("test")                      # list of [T, D] arrays, in the model's (normalised) units
    test = run.to_data_units(test)                     # in the data's own units (a user's own standardised data)
    bounds = run.score(test[:8], iw_samples=16)        # log p(x) lower bounds in nats, one per sequence
    x = run.sample(num_samples=4, num_steps=400, seed=1)             # [4, 400, D]
    y = run.continue_sequences(test[:2], num_steps=200, seed=1)      # [2, 200, D]: what follows each prefix
    run.save_samples(x, "samples/mine")                # the run's kind of picture / audio, plus mine.npz
    report = run.evaluate("test", iw_samples=64)       # the dict evaluate.py writes to eval_test.json

Everything here is a thin layer over :mod:`tfhier.runs` (loading), :mod:`tfhier.evaluation` (bounds) and
the model's own generation methods, so the numbers equal the command lines' for the same seeds.  Seeds are
plain integers; sampling is stateless and reproducible on one machine (the same seed gives the same draw).

Units: ``score``, ``sample`` and ``continue_sequences`` speak the data's own units.  For a user's own data
trained with ``--standardize`` (:mod:`tfhier.data.units`) they map inputs to the model's units with the run's
stored per-channel mean and std, map samples back, and report log-densities of the data in its units
(``log p_data(x) = log p_model(z) - T * sum_d log std_d``); for every other run the two units are the same.
``run.data`` holds the data set as the model was trained on it (model units).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tfhier import checks

CHECKPOINT_CHOICES = ("best", "latest")


class LoadedRun:
    """A run directory's model at one checkpoint, its configuration and (loaded when first used) its data.

    Attributes:
      run_dir, config (``config.json``), flags (``flags.cfg`` as a dict), model (a Keras model with the
      checkpoint's weights), checkpoint (its path), step (its optimizer step).
    """

    def __init__(self, run_dir, checkpoint="best", data_dir: Optional[str] = None):
        from tfhier import runs

        self.run_dir = str(run_dir)
        self.config = runs.read_config(run_dir)
        self.flags = runs.read_flags(run_dir)
        if checkpoint == "latest":
            checkpoint = None
        self.model, self.checkpoint, self.step = runs.load_model(run_dir, checkpoint, self.config)
        self._data_dir = data_dir
        self._data = None

    def __repr__(self):
        return (f"LoadedRun({self.run_dir!r}: {self.config['model']} on {self.config['dataset']}, "
                f"step {self.step}, {self.checkpoint})")

    @property
    def data(self):
        """The run's data set (a :class:`tfhier.data.base.SequenceData`), reloaded with its training flags and
        checked against the facts saved at training time; ``data_dir`` given to :func:`load_run` overrides."""
        if self._data is None:
            from tfhier import runs

            self._data = runs.load_run_data(self.run_dir, self.config, self.flags, data_dir=self._data_dir)
        return self._data

    @property
    def kind(self) -> str:
        """``'handwriting'``, ``'audio'``, ``'binary'`` or ``'real'``: what the sequences are."""
        return self.config["kind"]

    @property
    def data_info(self) -> dict:
        """The data facts stored with the run (``config.json``'s ``data_info``)."""
        return self.config.get("data_info", {})

    def to_data_units(self, x):
        """Model-unit values (an ``[..., D]`` array or a list of them) in the data's own units."""
        from tfhier.data.units import to_data_units

        if isinstance(x, (list, tuple)):
            return [to_data_units(s, self.data_info) for s in x]
        return to_data_units(x, self.data_info)

    def to_model_units(self, x):
        """Data-unit values (an ``[..., D]`` array or a list of them) as the model sees them."""
        from tfhier.data.units import to_model_units

        if isinstance(x, (list, tuple)):
            return [to_model_units(s, self.data_info) for s in x]
        return to_model_units(x, self.data_info)

    def score(self, sequences: Sequence, *, iw_samples: int = 1, seed: int = 0, batch_size: int = 16,
              max_sequences: int = checks.DEFAULT_MAX_SEQUENCES) -> np.ndarray:
        """Lower bounds on log p(x) in nats, float64 ``[N]``, one per sequence of ``sequences`` (``[T_i, D]``
        arrays of any lengths, in the data's units, finite). ``iw_samples=1``: the ELBO; K > 1: the IWAE bound
        with K importance samples (Burda et al. 2015), as ``evaluate.py --iw_samples=K``.

        Checked before anything is computed (ValueError naming the argument): the shapes, finiteness and count
        of ``sequences`` (at most ``max_sequences``), ``iw_samples``, ``batch_size``, ``seed`` (an integer in
        [0, 2^31 - 1]), and the memory one batch needs (:func:`tfhier.checks.memory_problem`)."""
        from tfhier.data.units import log_density_offset
        from tfhier.evaluation import evaluate_sequences

        checks.integer_at_least("max_sequences", max_sequences)
        sequences = checks.sequences("sequences", sequences, self.model.input_dim, max_sequences=max_sequences)
        iw_samples = checks.integer_in("iw_samples", iw_samples, 1, checks.MAX_IW_SAMPLES)
        batch_size = checks.integer_in("batch_size", batch_size, 1, checks.MAX_BATCH)
        seed = checks.seed("seed", seed)
        longest = max(len(s) for s in sequences)
        problem = checks.memory_problem(self.config["model_config"], self.model.input_dim,
                                        min(batch_size, len(sequences)), longest, what="scoring one batch",
                                        lower="batch_size (or score shorter sequences)")
        if problem:
            raise ValueError(problem.replace("lower --", "lower "))
        result = evaluate_sequences(self.model, self.to_model_units(sequences), iw_samples=iw_samples,
                                    batch_size=batch_size, seed=seed, fivo_particles=0)
        bounds = np.asarray(result.elbo if iw_samples == 1 else result.iwae, np.float64)
        return bounds + np.array([len(s) for s in sequences], np.float64) * log_density_offset(self.data_info)

    def sample(self, num_samples: int = 4, num_steps: int = 400, *, seed: int = 0, temperature: float = 1.0,
               max_samples: int = checks.DEFAULT_MAX_SAMPLES, max_steps: int = checks.DEFAULT_MAX_STEPS) -> np.ndarray:
        """Draws ``[num_samples, num_steps, D]`` from the model (its cached generator where it has one), in the
        data's units.

        The limits of ``sample.py`` apply (ValueError naming the argument): ``num_samples`` <= ``max_samples``
        (256), ``num_steps`` <= ``max_steps`` (5,000): raise them to draw more; ``temperature`` finite in
        (0, 100]; ``seed`` an integer in [0, 2^31 - 1]."""
        import tensorflow as tf

        problem = checks.generation_problem(num_samples, num_steps, max_samples, max_steps)
        if problem:
            raise ValueError(problem)
        seed = checks.seed("seed", seed)
        temperature = checks.temperature("temperature", temperature)
        self._check_generation(int(num_steps))
        return self.to_data_units(self.model.generate(int(num_samples), int(num_steps),
                                                      tf.constant([seed, 0], tf.int32), temperature).numpy())

    def continue_sequences(self, prefixes: Sequence, num_steps: int, *, seed: int = 0, temperature: float = 1.0,
                           max_samples: int = checks.DEFAULT_MAX_SAMPLES,
                           max_steps: int = checks.DEFAULT_MAX_STEPS) -> np.ndarray:
        """The ``num_steps`` steps that follow each prefix (``[T_i, D]`` arrays of any lengths, finite, in the
        data's units): ``[len(prefixes), num_steps, D]`` in the data's units. Latents the prefix covers come from
        the posterior. Limits as :meth:`sample`: at most ``max_samples`` prefixes, prefix plus ``num_steps`` at
        most ``max_steps`` steps."""
        import tensorflow as tf

        checks.integer_at_least("max_samples", max_samples)
        checks.integer_at_least("max_steps", max_steps)
        prefixes = checks.sequences("prefixes", prefixes, self.model.input_dim, max_steps=max_steps,
                                    max_sequences=max_samples, max_sequences_name="max_samples")
        longest = max(len(p) for p in prefixes)
        problem = checks.generation_problem(len(prefixes), num_steps, max_samples, max_steps - longest + 1,
                                            samples_name="len(prefixes)")
        if problem:
            raise ValueError(problem.replace(f"the limit {max_steps - longest + 1:,}",
                                             f"the limit max_steps={max_steps:,} less the longest prefix's "
                                             f"{longest:,} steps"))
        seed = checks.seed("seed", seed)
        temperature = checks.temperature("temperature", temperature)
        self._check_generation(longest + int(num_steps))
        prefixes = self.to_model_units(prefixes)
        lengths = np.array([len(p) for p in prefixes], np.int32)
        padded = np.zeros([len(prefixes), longest, prefixes[0].shape[-1]], np.float32)
        for i, p in enumerate(prefixes):
            padded[i, :len(p)] = p
        return self.to_data_units(self.model.continue_sequences(
            padded, lengths, int(num_steps), tf.constant([seed, 0], tf.int32), temperature).numpy())

    def _check_generation(self, total_steps):
        """A model without a cached generator re-runs its network at every step: its own limit applies."""
        if not self.model.has_cached_generator:
            from tfhier.models.base import naive_generation_problem

            problem = naive_generation_problem(self.model, total_steps)
            if problem:
                raise ValueError(problem)

    def evaluate(self, split: str = "test", *, iw_samples: int = 16, max_sequences: int = 0, seed: int = 0,
                 batch_size: int = 16, fivo_particles: Optional[int] = None, write: bool = False) -> dict:
        """The report ``evaluate.py`` prints and writes (ELBO, IWAE, FIVO where the model has it, KL per layer,
        active units) for this checkpoint on ``split``; ``write=True`` also writes ``R/eval_<split>.{json,md}``."""
        from tfhier import evaluation

        return evaluation.evaluate_run(self.run_dir, split, iw_samples=iw_samples, batch_size=batch_size,
                                       max_sequences=max_sequences, seed=seed, fivo_particles=fivo_particles,
                                       checkpoint=self.checkpoint, data_dir=self._data_dir, write=write)

    def save_samples(self, x, stem, *, prefix_steps: int = 0) -> str:
        """Writes samples ``x`` [N, T, D] (data units, as :meth:`sample` returns them) as ``stem.npz`` plus the
        run's own format (PNG for handwriting and binary data, WAV for audio, CSV / .npy / .mid and a PNG for a
        user's own data); with ``prefix_steps``, the first that many steps of each row are drawn as
        the given prefix (another colour). Returns the main file's path."""
        import os

        from tfhier import samples

        folder = os.path.dirname(str(stem))
        if folder:
            os.makedirs(folder, exist_ok=True)
        return str(samples.save_samples(self.to_model_units(np.asarray(x)), self.kind,
                                        self.config.get("data_info", {}), str(stem), prefix_steps=prefix_steps))


def load_run(run_dir, checkpoint: str = "best", *, data_dir: Optional[str] = None) -> LoadedRun:
    """Loads the run in ``run_dir`` at ``checkpoint``: ``'best'`` (the best validation bound, ``R/best``),
    ``'latest'`` (``R/checkpoints``) or a checkpoint path prefix (``R/checkpoints/ckpt-N``). ``data_dir``
    overrides the run's ``--data_dir`` (data moved since training). Raises ``tfhier.runs.RunError`` (a
    ValueError naming the file) when the run or checkpoint cannot be used."""
    return LoadedRun(run_dir, checkpoint, data_dir)


__all__ = ["LoadedRun", "load_run"]
