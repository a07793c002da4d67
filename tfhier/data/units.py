"""Model units and data units: the per-channel standardisation of a user's own sequences.

A source that standardises its data (``--dataset=sequences`` with ``--standardize``) records the training
split's per-channel mean and standard deviation in ``SequenceData.info`` as ``channel_mean`` and
``channel_std`` (lists, one entry per channel); they are stored with the run (``config.json``'s
``data_info``).  The model sees ``(x - mean) / std``; everything that hands data back to a user (samples
written by ``train.py`` and ``sample.py``, :class:`tfhier.api.LoadedRun`, the SavedModel's signatures) maps
with :func:`to_data_units` / :func:`to_model_units`.  For data without these facts both are the identity.

A density changes with the units: ``log p_data(x) = log p_model((x - mean) / std) - sum_d log std_d`` per
time step (:func:`log_density_offset`).
"""

from __future__ import annotations

import numpy as np

#: list-valued facts of ``SequenceData.info`` that a run stores in ``config.json`` (other lists are left out)
LIST_FACTS = ("channel_mean", "channel_std", "channel_names")


def standardization(info: dict):
    """``(mean, std)`` float32 ``[D]`` arrays, or None when the data are not standardised."""
    if not info or "channel_mean" not in info or "channel_std" not in info:
        return None
    return np.asarray(info["channel_mean"], np.float32), np.asarray(info["channel_std"], np.float32)


def to_data_units(x, info: dict):
    """Model-space values ``x`` [..., D] in the data's own units (numpy)."""
    stats = standardization(info)
    x = np.asarray(x)
    if stats is None:
        return x
    mean, std = stats
    return (x * std + mean).astype(np.float32)


def to_model_units(x, info: dict):
    """Data-unit values ``x`` [..., D] as the model sees them (numpy)."""
    stats = standardization(info)
    x = np.asarray(x, np.float32)
    if stats is None:
        return x
    mean, std = stats
    return ((x - mean) / std).astype(np.float32)


def log_density_offset(info: dict) -> float:
    """``-sum_d log std_d``: add it, once per time step, to a log-density in model units to get data units."""
    stats = standardization(info)
    return 0.0 if stats is None else float(-np.sum(np.log(stats[1].astype(np.float64))))


def units_note(info: dict) -> str:
    """One line saying which units a model's inputs and outputs are in."""
    if standardization(info) is None:
        return "model units are the data's units (no standardisation)"
    return ("data units: inputs are standardised with the training split's per-channel mean and std (data_info "
            "channel_mean, channel_std) inside the model's signatures, outputs mapped back")


__all__ = ["LIST_FACTS", "log_density_offset", "standardization", "to_data_units", "to_model_units", "units_note"]
