"""Data sources, by the name ``train.py --dataset`` knows them.

Each source turns files (or a seed) into a :class:`~tfhier.data.base.SequenceData`;
:func:`tfhier.data.pipeline.make_dataset` turns its splits into ``tf.data``
pipelines of ``(inputs, mask)``.
"""

from __future__ import annotations

import os

from tfhier.data.base import DataError, SequenceData

DATASETS = ("hershey", "iam_ondb", "polyphonic", "audio", "mnist", "vhrnn_synthetic")

#: what each source's steps are, known before any file is read: (kind, feature size; None: set by a flag)
DATASET_SHAPES = {"hershey": ("handwriting", 3), "iam_ondb": ("handwriting", 3), "polyphonic": ("binary", 88),
                  "audio": ("audio", None), "mnist": ("binary", 1), "vhrnn_synthetic": ("real", 2)}


def dataset_shape(name, frame_width=200):
    """``(kind, feature_dim)`` that ``--dataset=name`` will produce (audio: ``frame_width``), without reading data."""
    if name not in DATASET_SHAPES:
        raise DataError(f"--dataset must be one of {list(DATASETS)}, got {name!r}")
    kind, dim = DATASET_SHAPES[name]
    return kind, int(frame_width) if dim is None else dim


#: the output head that fits each kind of data
DEFAULT_HEADS = {"handwriting": "handwriting", "binary": "bernoulli", "audio": "gmm", "real": "gaussian"}


def load_dataset(name, data_dir=None, *, seed=0, sample_rate=16000, frame_width=200, num_lines=2000,
                 setting="train", offset_scale="std", framing="consecutive") -> SequenceData:
    """Loads ``--dataset=name`` from ``--data_dir``; raises DataError naming the flag or file on bad input."""
    if name not in DATASETS:
        raise DataError(f"--dataset must be one of {list(DATASETS)}, got {name!r}")
    needs_dir = name in ("iam_ondb", "polyphonic", "audio", "mnist")
    if needs_dir:
        if not data_dir:
            raise DataError(f"--dataset={name} needs --data_dir (the downloaded data)")
        if not os.path.exists(data_dir):
            raise DataError(f"--data_dir={data_dir} does not exist")
    if name == "hershey":
        from tfhier.data.hershey import make_hershey_handwriting

        data = make_hershey_handwriting(num_train=num_lines, seed=seed)
    elif name == "iam_ondb":
        from tfhier.data.iam_ondb import load_iam_ondb

        data = load_iam_ondb(data_dir, seed=seed, offset_scale_convention=offset_scale)
    elif name == "polyphonic":
        from tfhier.data.polyphonic import load_polyphonic

        data = load_polyphonic(data_dir)
    elif name == "audio":
        from tfhier.data.audio import load_audio

        data = load_audio(data_dir, sample_rate=sample_rate, frame_width=frame_width, seed=seed, framing=framing)
    elif name == "mnist":
        from tfhier.data.mnist import load_binarized_mnist

        data = load_binarized_mnist(data_dir)
    else:
        from tfhier.data.vhrnn_synthetic import make_vhrnn_synthetic

        data = make_vhrnn_synthetic(setting, seed=seed)
    return data.check()


__all__ = ["DATASETS", "DATASET_SHAPES", "DEFAULT_HEADS", "DataError", "SequenceData", "dataset_shape",
           "load_dataset"]
