"""The container every data source returns, and the errors they raise.

A data source turns files (or a seed) into a :class:`SequenceData`: lists of
float32 numpy arrays, one ``[T_i, D]`` array per sequence, split into
train/valid/test.  :mod:`tfhier.data.pipeline` turns such lists into
``tf.data`` pipelines of ``(inputs, mask)``.  Models never read files.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

#: the splits of every data set, in this order
SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """Bad input data: the message names the file or flag and what was expected."""


@dataclasses.dataclass
class SequenceData:
    """Sequences of one dataset, split.

    Attributes:
      name: dataset name (as given to ``--dataset``).
      train, valid, test: lists of float32 arrays of shape ``[T_i, feature_dim]``.
      feature_dim: D, the size of one time step.
      kind: what a step holds, which decides plots/samples and the default head:
        ``'handwriting'`` (dx, dy, pen), ``'binary'`` (0/1 values),
        ``'audio'`` (frames of waveform samples), ``'real'`` (other real vectors).
      info: facts needed to map model space back to data space, e.g.
        ``{'offset_scale': 23.1}`` for handwriting or
        ``{'sample_rate': 16000, 'mean': m, 'std': s, 'frame_width': 200}`` for audio.
      train_augment: optional function ``(tf.Tensor[T, D], seed) -> tf.Tensor[T, D]``
        applied to every training sequence each epoch, e.g. IAM-OnDB
        dequantisation noise; ``seed`` is a stateless seed pair (int64 ``[2]``),
        fresh for every element and epoch, drawn from the run's ``--seed``, so
        a run's noise is reproducible.  Never applied to valid/test.
    """

    name: str
    train: list
    valid: list
    test: list
    feature_dim: int
    kind: str
    info: dict = dataclasses.field(default_factory=dict)
    train_augment: Optional[Callable[[Any], Any]] = None

    def split(self, name: str) -> list:
        if name not in SPLITS:
            raise DataError(f"split must be one of train/valid/test, got {name!r}")
        return getattr(self, name)

    def check(self) -> "SequenceData":
        """Raises DataError unless every split is a non-empty list of [T>0, D] float32 arrays."""
        for split in SPLITS:
            seqs = getattr(self, split)
            if len(seqs) == 0:
                raise DataError(f"dataset {self.name!r}: the {split} split is empty")
            for i, s in enumerate(seqs):
                if not isinstance(s, np.ndarray) or s.ndim != 2 or s.shape[1] != self.feature_dim or s.shape[0] == 0:
                    raise DataError(
                        f"dataset {self.name!r}: {split} sequence {i} has shape "
                        f"{getattr(s, 'shape', None)}, expected [T>0, {self.feature_dim}]")
                if s.dtype != np.float32:
                    with np.errstate(over="ignore"):
                        seqs[i] = s = s.astype(np.float32)
                if not np.isfinite(s).all():
                    t = int(np.argwhere(~np.isfinite(s))[0, 0])
                    raise DataError(f"dataset {self.name!r}: {split} sequence {i} holds a NaN or infinite value "
                                    f"(first at step {t}{self._source(split, i)}); expected finite numbers "
                                    f"(float32)")
        return self

    def _source(self, split, i) -> str:
        """Where sequence i of ``split`` came from, if the loader recorded it (IAM-OnDB's ``line_ids``)."""
        names = self.info.get("line_ids")
        names = names.get(split) if isinstance(names, dict) else None
        return f", line {names[i]}" if names is not None and i < len(names) else ""
