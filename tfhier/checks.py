"""Argument checks shared by the library's entry points: the command lines, evaluation, export and the Python API.

One layer for all of them, so a value the command lines refuse is refused by the API with the same words.
Every check raises (or returns) a message that names the flag or argument, says what was expected and, for
limits, how to raise them.  Values are shown through :func:`shown`, which never prints more than a line
(a 5 MB string, a 5,000-digit integer or a deeply nested list is summarised, not printed).

Limits (checked before anything is allocated):

* model sizes: :data:`HPARAM_CAPS` per hyperparameter, and :func:`memory_problem`, a derived estimate of the
  memory one training step of the configuration needs, compared with the machine's memory (the smaller of
  its physical memory and the process's address-space limit, or ``TFHIER_MEMORY_GB`` where set);
* generation: ``num_steps`` <= ``max_steps`` (default 5,000) and ``num_samples`` <= ``max_samples`` (256);
* particles and importance-sample chunks: <= :data:`MAX_PARTICLES`; evaluation batches <= :data:`MAX_BATCH`;
* temperatures: finite, in (0, :data:`MAX_TEMPERATURE`].
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Optional, Sequence

import numpy as np

#: the largest sampling temperature (float32 overflows to inf near 1e38; at 100 samples are already noise)
MAX_TEMPERATURE = 100.0
#: defaults of sample.py --max_steps / --max_samples, the API's max_steps / max_samples and export's limits
DEFAULT_MAX_STEPS = 5000
DEFAULT_MAX_SAMPLES = 256
#: the most particles (--num_particles, --fivo_particles) and importance samples per pass (--iw_chunk)
MAX_PARTICLES = 4096
#: the most importance samples per sequence (--iw_samples)
MAX_IW_SAMPLES = 1 << 20
#: the most sequences per forward pass (evaluate.py --batch_size, train.py --batch_size)
MAX_BATCH = 65536
#: the most sequences scored per call of the Python API's ``score`` unless ``max_sequences`` is raised
DEFAULT_MAX_SEQUENCES = 100_000

#: per-hyperparameter caps: far above any published configuration, far below what would crash a process
HPARAM_CAPS = {
    "channels": 8192, "latent_dims": 8192, "rnn_units": 8192, "mlp_hidden": 8192, "feature_units": 8192,
    "latent_hidden": 8192, "output_hidden": 8192, "hyper_units": 8192, "hyper_hidden": 8192,
    "kernel_size": 64, "td_blocks": 64, "head_components": 1024, "strides": 1024, "dilations": 1 << 16,
    "bu_dilations": 1 << 16, "dense_blocks": 1024,
}
#: the most layers (entries of a per-layer list)
MAX_LAYERS = 64
#: the most steps one position of the coarsest layer spans (the product of --strides)
MAX_TIME_MULTIPLE = 4096


def shown(value, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters; never raises (deep nesting, huge integers)."""
    try:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value).bit_length() > 200:
            return f"an integer of {int(int(value).bit_length() * math.log10(2)) + 1} digits"
        if isinstance(value, (str, bytes)) and len(value) > 4 * limit:
            value = value[:limit]  # repr of the head only: a 5 MB string costs nothing here
            text = repr(value)[:limit] + f"... ({len(value):,}+ characters)"
            return text
        text = repr(value)
    except (RecursionError, ValueError, TypeError, MemoryError, OverflowError):
        return f"a {type(value).__name__} (too deep or too large to show)"
    except Exception:  # noqa: BLE001 - a repr that fails shows as its type
        return f"a {type(value).__name__}"
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text):,} characters)"
    return text


def integer_at_least(name: str, value, minimum: int = 1, error: type = ValueError) -> int:
    """``value`` as an ``int``; raises ``error`` naming ``name`` (a flag's ``--name`` or an argument's name)
    unless it is an integer >= ``minimum``. Booleans and floats are refused (``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {shown(value)}")
    return int(value)


def integer_in(name: str, value, minimum: int, maximum: int, error: type = ValueError, raise_with: str = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``; above ``maximum`` the message says how to raise it
    (``raise_with``: the flag or argument that sets the limit) or that the limit is fixed."""
    value = integer_at_least(name, value, minimum, error)
    if value > maximum:
        how = f"raise {raise_with} to allow more" if raise_with else "a fixed limit of tfhier.checks"
        raise error(f"{name}={value:,} is more than the limit {maximum:,} ({how})")
    return value


def check_seed(name: str, value, error: type = ValueError) -> int:
    """A seed: an integer in [0, 2^31 - 1] (as the command lines take it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < 2 ** 31:
        raise error(f"{name} must be an integer in [0, 2^31 - 1], got {shown(value)}")
    return int(value)


seed = check_seed  # tfhier.checks.seed("seed", value)


def temperature(name: str, value, error: type = ValueError) -> float:
    """A sampling temperature: a finite number in (0, MAX_TEMPERATURE]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number in (0, {MAX_TEMPERATURE:g}], got {shown(value)}")
    value = float(value)
    if not (math.isfinite(value) and 0 < value <= MAX_TEMPERATURE):
        raise error(f"{name} must be a finite number in (0, {MAX_TEMPERATURE:g}] (1: the model itself), got "
                    f"{shown(value)}")
    return value


def generation_problem(num_samples, num_steps, max_samples=DEFAULT_MAX_SAMPLES, max_steps=DEFAULT_MAX_STEPS, *,
                       samples_name="num_samples", steps_name="num_steps", max_samples_name="max_samples",
                       max_steps_name="max_steps") -> Optional[str]:
    """Why ``num_samples`` sequences of ``num_steps`` steps cannot be drawn under the limits (None if they can)."""
    try:
        for name, value in ((max_samples_name, max_samples), (max_steps_name, max_steps)):
            integer_at_least(name, value)
        integer_in(samples_name, num_samples, 1, max_samples, raise_with=max_samples_name)
        integer_in(steps_name, num_steps, 1, max_steps, raise_with=max_steps_name)
    except ValueError as e:
        return str(e)
    return None


def sequences(name: str, values, input_dim: Optional[int] = None, max_steps: Optional[int] = None,
              max_steps_name: str = "max_steps", max_sequences: Optional[int] = None,
              max_sequences_name: str = "max_sequences") -> list:
    """``values`` (one ``[T, D]`` array or a list of them) as float32 arrays; raises ValueError naming ``name``
    and the sequence unless each is a non-empty, finite ``[T, input_dim]`` array within the limits."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        values = [values]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} must be a list of [T, D] arrays (or one [T, D] array), got "
                         f"{type(values).__name__}")
    if not len(values):
        raise ValueError(f"{name}: no sequences given")
    if max_sequences is not None and len(values) > max_sequences:
        raise ValueError(f"{name} holds {len(values):,} sequences, more than {max_sequences_name}={max_sequences:,} "
                         f"(raise {max_sequences_name} to allow more)")
    out = []
    for i, s in enumerate(values):
        try:
            a = np.asarray(s, np.float32)
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"{name}[{i}]: expected a [T, D] array of numbers ({shown(str(e))})") from None
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(f"{name}[{i}]: expected a non-empty [T, D] array, got shape {a.shape}")
        if input_dim is not None and a.shape[1] != input_dim:
            raise ValueError(f"{name}[{i}]: expected {input_dim} features per step (shape [T, {input_dim}]), got "
                             f"shape {a.shape}")
        if max_steps is not None and a.shape[0] > max_steps:
            raise ValueError(f"{name}[{i}] has {a.shape[0]:,} steps, more than {max_steps_name}={max_steps:,} "
                             f"(raise {max_steps_name} to allow more)")
        if not np.all(np.isfinite(a)):
            bad = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(f"{name}[{i}] holds a non-finite value ({a[tuple(bad)]}) at step {bad[0]}, feature "
                             f"{bad[1]}")
        out.append(a)
    return out


# ------------------------------------------------------------------------------------------ model sizes

def hparams_problem(config: dict, source: str = "--") -> Optional[str]:
    """Why a model configuration (``{name: value}``) exceeds :data:`HPARAM_CAPS`, :data:`MAX_LAYERS` or
    :data:`MAX_TIME_MULTIPLE` (None if it does not). ``source`` prefixes each name (``--`` for flags)."""
    for name, value in config.items():
        cap = HPARAM_CAPS.get(name)
        items = value if isinstance(value, (list, tuple)) else [value]
        flat = []
        for item in items:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        if isinstance(value, (list, tuple)) and len(value) > MAX_LAYERS:
            return f"{source}{name} has {len(value)} entries, more than {MAX_LAYERS} layers (a fixed limit)"
        if cap is None:
            continue
        for item in flat:
            if isinstance(item, numbers.Integral) and not isinstance(item, bool) and item > cap:
                return (f"{source}{name}={shown(item)} is more than {cap:,}, the largest {name} tfhier builds "
                        f"(a fixed limit: far above published configurations, below what the machine survives)")
    strides = config.get("strides")
    if isinstance(strides, (list, tuple)) and all(isinstance(s, numbers.Integral) for s in strides):
        product = math.prod(int(s) for s in strides)
        if product > MAX_TIME_MULTIPLE:
            return (f"{source}strides={','.join(str(s) for s in strides)}: their product {product:,} is more than "
                    f"{MAX_TIME_MULTIPLE:,} steps per position of the coarsest layer (a fixed limit); use smaller "
                    f"strides")
    return None


def available_memory() -> tuple:
    """``(bytes, where)``: the memory a process here may use: ``TFHIER_MEMORY_GB`` where set, else the smaller of
    the physical memory and the address-space limit (``ulimit -v``)."""
    text = os.environ.get("TFHIER_MEMORY_GB")
    if text:
        try:
            gb = float(text)
            if math.isfinite(gb) and gb > 0:
                return int(gb * 2 ** 30), f"TFHIER_MEMORY_GB={text}"
        except ValueError:
            pass
    total, where = None, "the machine's memory"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and (total is None or soft < total):
            total, where = soft, "the process's address-space limit (ulimit -v)"
    except (ImportError, OSError, ValueError):
        pass
    return (total or 16 * 2 ** 30), where


def _widths(config: dict) -> list:
    out = []
    for name in HPARAM_CAPS:
        if name in ("kernel_size", "td_blocks", "head_components", "strides", "dilations", "bu_dilations",
                    "dense_blocks"):
            continue
        value = config.get(name)
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(item, numbers.Integral) and not isinstance(item, bool):
                out.append((int(item), name))
    return out


def memory_estimate(config: dict, input_dim: int, batch: int, steps: int, copies: int = 1) -> tuple:
    """``(bytes, culprit)``: a rough upper estimate of the memory of one training step (or evaluation pass) of a
    model ``config`` on ``batch`` sequences of ``steps`` steps, ``copies`` samples each, and the hyperparameter
    that weighs most. Weights: layers x width^2 x kernel x blocks, four float32 copies (weights, gradient, two
    Adam moments); activations: batch x copies x steps x width x layers, float32, kept for the gradient."""
    widths = _widths(config) or [(256, "channels")]
    width, widest = max(widths)
    kernel = int(config.get("kernel_size", 1) or 1)
    blocks = int(config.get("td_blocks", 1) or 1)
    dilations = config.get("bu_dilations") or config.get("dilations") or []
    per_layer = max([len(d) if isinstance(d, (list, tuple)) else 1 for d in dilations] or [1])
    depth = blocks + per_layer  # convolutions (or dense layers) per entry
    components = int(config.get("head_components", 1) or 1)
    head = components * (input_dim + 2) * 3
    weights = sum(w * w for w, _ in widths) * kernel * depth + width * head
    weight_bytes = 16 * weights
    activations = 4 * batch * copies * steps * (sum(w for w, _ in widths) * depth * 2 + head)
    culprit = widest
    if head > width * len(widths):
        culprit = "head_components"
    elif kernel > 8 or blocks > 8:
        culprit = "kernel_size" if kernel >= blocks else "td_blocks"
    return weight_bytes + activations, culprit


def memory_problem(config: dict, input_dim: int, batch: int, steps: int, copies: int = 1, *,
                   what: str = "one training step", lower: str = "--batch_size or --seq_len") -> Optional[str]:
    """Why ``config`` would not fit in this machine's memory (see :func:`memory_estimate`), or None."""
    need, culprit = memory_estimate(config, input_dim, batch, steps, copies)
    have, where = available_memory()
    if need <= 0.8 * have:
        return None
    return (f"{what} of this configuration needs about {need / 2 ** 30:,.1f} GB by tfhier's estimate "
            f"({batch:,} sequences x {copies:,} samples x {steps:,} steps), more than {where} allows "
            f"({have / 2 ** 30:,.1f} GB); lower --{culprit} or {lower} (or set TFHIER_MEMORY_GB to the memory "
            f"available, if the estimate is wrong for this machine)")


def check_train_settings(settings):
    """Limits of ``train.py``'s settings beyond their types (``TrainSettings.validate`` calls it): a decay rate
    that would grow the learning rate without bound, particles and batches beyond what any machine holds."""
    if settings.lr_decay_rate > 1:
        raise ValueError(f"--lr_decay_rate must be in (0, 1] (the learning rate is multiplied by it every "
                         f"--lr_decay_steps; 1: no decay), got {shown(settings.lr_decay_rate)}")
    integer_in("--num_particles", settings.num_particles, 1, MAX_PARTICLES)
    integer_in("--batch_size", settings.batch_size, 1, MAX_BATCH)
    if settings.learning_rate > 10:
        raise ValueError(f"--learning_rate must be in (0, 10], got {shown(settings.learning_rate)}")


def read_json_object(path, what: str, max_bytes: int = 64 * 2 ** 20) -> dict:
    """The JSON object in file ``path``; ValueError naming ``what`` (e.g. the file) for anything else: a missing
    or unreadable file, binary bytes, invalid or deeply nested JSON, a value that is no object (5, null)."""
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ValueError(f"{what}: {size:,} bytes, more than the {max_bytes:,} a JSON file of tfhier may have")
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{what}: cannot read it ({e.strerror or e})") from None
    import json

    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not text (binary bytes, not UTF-8); expected a JSON object") from None
    except ValueError as e:  # JSONDecodeError, or a number of more than 4,300 digits
        raise ValueError(f"{what} is not valid JSON ({shown(str(e))})") from None
    except RecursionError:
        raise ValueError(f"{what}: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must hold a JSON object, got {shown(value)} ({type(value).__name__})")
    return value


#: the most sequences evaluate.py --plots draws (one figure each)
MAX_PLOTS = 100


def evaluation_problem(iw_samples=16, batch_size=16, iw_chunk=1, fivo_particles=None, plots=0,
                       max_sequences=0, seed=0) -> Optional[str]:
    """The first problem with ``evaluate.py``'s numbers (the same for ``LoadedRun.evaluate``), or None."""
    try:
        integer_in("--iw_samples", iw_samples, 1, MAX_IW_SAMPLES)
        integer_in("--iw_chunk", iw_chunk, 1, MAX_PARTICLES)
        integer_in("--batch_size", batch_size, 1, MAX_BATCH)
        if fivo_particles is not None:
            integer_in("--fivo_particles", fivo_particles, 0, MAX_PARTICLES)
        integer_in("--plots", plots, 0, MAX_PLOTS)
        integer_at_least("--max_sequences", max_sequences, 0)
        check_seed("--seed", seed)
    except ValueError as e:
        return str(e)
    return None


def free_space_problem(path, need_bytes: int, what: str) -> Optional[str]:
    """Why ``need_bytes`` cannot be written in folder ``path`` (or its nearest existing parent): too little free
    space (a write probe passes on a full disk: an empty file takes no block), or None."""
    import shutil

    probe = os.path.abspath(os.fspath(path))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return None  # the write check names an unusable folder
    if free < need_bytes:
        return (f"{what}: {free / 2 ** 20:,.1f} MB free in {probe}, less than the {need_bytes / 2 ** 20:,.1f} MB "
                f"the results need; free some space first")
    return None
