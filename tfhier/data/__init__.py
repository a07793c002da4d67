"""Data sources, by the name ``train.py --dataset`` knows them (the registry).

Each source turns files (or a seed) into a :class:`~tfhier.data.base.SequenceData`;
:func:`tfhier.data.pipeline.make_dataset` turns its splits into ``tf.data``
pipelines of ``(inputs, mask)``.  A source declares its name, options and loader
in its module's ``SOURCE`` (:class:`tfhier.data.sources.DataSource`); adding a
source is that module plus one line in :data:`REGISTRY`.  ``train.py``,
evaluation, sampling and export never branch on a source's name.
"""

from __future__ import annotations

import os

from tfhier.data.base import DataError, SequenceData

#: every source, by ``--dataset`` name: the module that holds its ``SOURCE`` (imported when first used)
REGISTRY = {
    "hershey": "tfhier.data.hershey",
    "iam_ondb": "tfhier.data.iam_ondb",
    "polyphonic": "tfhier.data.polyphonic",
    "audio": "tfhier.data.audio",
    "mnist": "tfhier.data.mnist",
    "vhrnn_synthetic": "tfhier.data.vhrnn_synthetic",
    "sequences": "tfhier.data.own",
    "midi": "tfhier.data.midi",
}

DATASETS = tuple(REGISTRY)

#: the output head that fits each kind of data
DEFAULT_HEADS = {"handwriting": "handwriting", "binary": "bernoulli", "audio": "gmm", "real": "gaussian"}

#: keyword names ``load_dataset`` accepted before sources declared their options, and the option each means
_ALIASES = {"setting": "synthetic_setting"}


def get_source(name):
    """The :class:`~tfhier.data.sources.DataSource` of ``--dataset=name``."""
    from tfhier.data.sources import get_source as _get

    return _get(REGISTRY, name)


def all_sources() -> list:
    """Every registered source's declaration, in registry order."""
    return [get_source(name) for name in REGISTRY]


def _options(source, options: dict, strict: bool) -> dict:
    options = {_ALIASES.get(k, k): v for k, v in options.items()}
    if not strict:  # options of other sources (a caller passing every flag) are left out
        own = {o.name for o in source.options}
        options = {k: v for k, v in options.items() if k in own}
    return source.resolve(options)


def _check_data_dir(source, data_dir):
    if source.data_dir is None:
        return
    if not data_dir:
        raise DataError(f"--dataset={source.name} needs --data_dir ({source.data_dir})")
    if not os.path.exists(data_dir):
        raise DataError(f"--data_dir={data_dir} does not exist (--dataset={source.name} reads {source.data_dir})")


def dataset_shape(name, frame_width=None, *, data_dir=None, strict=False, **options):
    """``(kind, feature_dim)`` that ``--dataset=name`` will produce: from the source's declaration, or (a
    source whose files decide, ``shape == "data"``) by loading its data."""
    source = get_source(name)
    if frame_width is not None:
        options["frame_width"] = frame_width
    options = _options(source, options, strict)
    if source.shape == "data":
        data = load_dataset(name, data_dir, strict=strict, **options)
        return data.kind, data.feature_dim
    if callable(source.shape):
        return source.shape(options)
    return source.shape


def load_dataset(name, data_dir=None, *, seed=0, strict=False, **options) -> SequenceData:
    """Loads ``--dataset=name`` from ``--data_dir`` with the source's ``options`` (by flag name; missing ones
    take the source's defaults; with ``strict``, an option the source does not have is a DataError, else it is
    ignored). Raises DataError naming the flag or file on bad input."""
    source = get_source(name)
    options = _options(source, options, strict)
    _check_data_dir(source, data_dir)
    return source.load(data_dir, int(seed), **options).check()


__all__ = ["DATASETS", "DEFAULT_HEADS", "DataError", "REGISTRY", "SequenceData", "all_sources", "dataset_shape",
           "get_source", "load_dataset"]
