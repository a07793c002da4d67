"""SavedModel export for TF Serving: scoring, sampling and continuation signatures.

``export/export.py`` is the command line over this module.  An export of a
run directory ``R`` (see :mod:`tfhier.runs`) is written to
``<export_base>/<model_name>/<version>/``, the layout TF Serving polls (it
serves the highest integer version and ignores other folder names)::

    <version>/saved_model.pb, variables/      the SavedModel (tag "serve")
    <version>/assets.extra/config.json        the run's config.json
    <version>/assets.extra/tfhier_export.json model name, version, signatures, limits, data facts, units

Signatures (built with ``keras.export.ExportArchive``; all randomness is
stateless, drawn from the ``seed`` input, so a request is reproducible)::

    serving_default  x [B,T,D] float32, lengths [B] int32, seed [2] int32
                     -> elbo [B], nll [B], kl [B,L] (one column per latent layer), num_steps [B]
    sample           num_samples int32 scalar, num_steps int32 scalar, seed [2] int32,
                     temperature float32 scalar -> samples [N, num_steps, D]
    continue         prefix [B,T0,D] float32, prefix_lengths [B] int32, num_steps int32 scalar,
                     seed [2] int32, temperature float32 scalar -> continuations [B, num_steps, D]

Every input is declared with an *unknown* shape in the SignatureDef and
checked inside the graph instead (``tf.debugging.Assert``): a request with a
wrong rank or feature size, lengths outside ``[1, T]``, ``num_steps`` or
``num_samples`` outside ``[1, max]`` (maxima fixed at export time), a
non-positive temperature or a seed that is not two integers fails with
``InvalidArgument`` and a message that names the input and what was
expected; TF Serving answers it as a client error (HTTP 400).  Declaring the
shapes would move these checks out of the graph: the Python loaders reject a
mismatching feed before the graph runs (with a ``ValueError`` that says
nothing about the model), and graph optimizers may fold shape checks into
constants from the declared shape.  Every check runs before any tensor sized
by ``num_steps`` or ``num_samples`` is allocated: the model (and each later
check) reads the inputs only through Identity ops that carry control
dependencies on the checks made so far (:class:`Checks` says why it is done so).

Units: for a run on a user's own data trained with ``--standardize`` (:mod:`tfhier.data.units`), ``x``,
``prefix``, ``samples`` and ``continuations`` are in the data's own units (the standardisation is part of
the graph) and ``elbo`` / ``nll`` are densities of the data in those units; ``tfhier_export.json`` says so
(``"units": "data"``).  Every other export speaks the model's units (``"units": "model"``).

Padding: a batch of ``x`` (or ``prefix``) rows of different lengths is padded
to the longest; ``lengths`` says how many steps of each row are real.  Padded
steps are ignored but must be finite numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from typing import Optional

import numpy as np

from tfhier.checks import MAX_TEMPERATURE, integer_at_least, shown
from tfhier.rundir import writable_problem


class _LazyTensorFlow:
    """Stands for the ``tensorflow`` module until first used, then replaces itself with it.

    Planning an export (:func:`plan_export`: names, versions, refusing to
    overwrite) needs no TensorFlow, so ``export.py`` refuses a bad destination
    without the seconds that importing TensorFlow takes.
    """

    def __getattr__(self, name):
        import tensorflow

        globals()["tf"] = tensorflow
        return getattr(tensorflow, name)


tf = _LazyTensorFlow()

#: defaults of ``export.py --max_steps`` / ``--max_samples`` / ``--max_score_steps``
DEFAULT_MAX_STEPS = 5000
DEFAULT_MAX_SAMPLES = 256
DEFAULT_MAX_SCORE_STEPS = 262_144  # B x T of one scoring request: 256 sequences of 1,024 steps

#: SavedModel folder for extra files (TF Serving's convention, e.g. for warm-up requests)
ASSETS_EXTRA = "assets.extra"
EXPORT_INFO_FILE = "tfhier_export.json"

SIGNATURE_NAMES = ("serving_default", "sample", "continue")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportError(ValueError):
    """The export cannot be written (bad destination, version or limits); the message says why."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Maxima fixed at export time; requests above them are refused in the graph."""

    # num_steps of `sample` / `continue`; prefix length of `continue` (export_run: None = the default for the model)
    max_steps: Optional[int] = DEFAULT_MAX_STEPS
    max_samples: int = DEFAULT_MAX_SAMPLES  # num_samples of `sample`; batch size of `continue` and `serving_default`
    max_score_steps: int = DEFAULT_MAX_SCORE_STEPS  # batch x time of one `serving_default` request

    def validate(self):
        for name in ("max_steps", "max_samples", "max_score_steps"):
            integer_at_least(f"--{name}", getattr(self, name), error=ExportError)


# ------------------------------------------------------------------------------------ in-graph checks
#
# Ordering: a check must run before anything that would fail (with a less helpful message) or allocate
# on the input it checks.  Control dependencies alone are not enough here: Grappler's constant folding
# (on in TF Serving's sessions as in tf.function calls) was seen to run an op whose control dependency
# on a failing Assert sat on its Const inputs or that was an EnsureShape, before the Assert.  So every
# tensor that a later check or the model uses is a *data* consumer of an Identity that carries control
# dependencies on all checks made so far (``Checks.gate``), the pattern Grappler keeps in order; static
# shapes are restored with Reshape (not EnsureShape).


class Checks:
    """The Asserts of one endpoint, in the order they are made."""

    def __init__(self):
        self.ops = []

    def require(self, condition, *message):
        """Fails with InvalidArgument ``assertion failed: [message...]`` unless ``condition`` (bool scalar)."""
        self.ops.append(tf.debugging.Assert(condition, list(message), summarize=8))

    def gate(self, *tensors):
        """``tensors`` through Identities that run only after every check so far has passed."""
        with tf.control_dependencies(self.ops):
            out = tuple(tf.identity(t) for t in tensors)
        return out if len(out) > 1 else out[0]


def check_scalar_int(checks: Checks, name, value, low, high, what):
    """Rank 0 and ``low <= value <= high``; returns the gated value with static shape []."""
    checks.require(tf.equal(tf.rank(value), 0), f"{name} must be a scalar int32 ({what}); got shape",
                   tf.shape(value))
    v = tf.reshape(checks.gate(value), [])
    checks.require((v >= low) & (v <= high), f"{name} must be an integer in [{low}, {high}] ({what}); got", v)
    return checks.gate(v)


def check_seed(checks: Checks, seed):
    """Shape [2]; returns the gated seed with static shape [2]."""
    checks.require(tf.equal(tf.rank(seed), 1) & tf.equal(tf.size(seed), 2),
                   "seed must be two int32 numbers, shape [2]; got shape", tf.shape(seed))
    return tf.reshape(checks.gate(seed), [2])


def check_temperature(checks: Checks, temperature):
    """A finite scalar > 0; returns the gated value with static shape []."""
    checks.require(tf.equal(tf.rank(temperature), 0),
                   "temperature must be a float32 scalar > 0 (1: the model itself); got shape", tf.shape(temperature))
    t = tf.reshape(checks.gate(temperature), [])
    # NaN and +inf fail too.
    checks.require((t > 0.0) & (t <= MAX_TEMPERATURE),
                   f"temperature must be a finite number in (0, {MAX_TEMPERATURE:g}] (1: the model itself); got", t)
    return checks.gate(t)


def check_sequences(checks: Checks, x_name, x, len_name, lengths, dim, max_batch=None, max_steps=None,
                    max_total=None):
    """A padded batch ``x`` [B, T, dim] and its ``lengths`` [B] (1 <= length <= T).

    Returns gated ``(x, lengths)`` with static shapes [None, None, dim] and [None].
    """
    checks.require(tf.equal(tf.rank(x), 3),
                   f"{x_name} must have rank 3, shape [batch, time, {dim}]; got shape", tf.shape(x))
    shape = tf.shape(checks.gate(x))  # rank 3 from here on
    checks.require(tf.equal(shape[2], dim),
                   f"{x_name} must have {dim} features per step, shape [batch, time, {dim}]; got shape", shape)
    checks.require((shape[0] >= 1) & (shape[1] >= 1),
                   f"{x_name} must hold at least one sequence of at least one step; got shape", shape)
    if max_batch is not None:
        checks.require(shape[0] <= max_batch,
                       f"{x_name} may hold at most {max_batch} sequences (max_samples of this export); got shape",
                       shape)
    if max_steps is not None:
        checks.require(shape[1] <= max_steps,
                       f"{x_name} may have at most {max_steps} steps (max_steps of this export); got shape", shape)
    if max_total is not None:  # in int64: batch x time of int32 sizes may overflow int32
        wide = tf.cast(shape, tf.int64)
        checks.require(wide[0] * wide[1] <= max_total,
                       f"{x_name} may hold at most {max_total} steps in all, batch x time (max_score_steps of this "
                       f"export); got shape", shape)
    checks.require(tf.reduce_all(tf.math.is_finite(checks.gate(x))),
                   f"{x_name} must be finite (no NaN or Inf, padding included)")
    checks.require(tf.equal(tf.rank(lengths), 1) & tf.equal(tf.size(lengths), shape[0]),
                   f"{len_name} must have shape [batch], one length per sequence of {x_name}; got shape",
                   tf.shape(lengths), f"for {x_name} of shape", shape)
    gated = tf.reshape(checks.gate(lengths), [-1])
    checks.require(tf.reduce_all((gated >= 1) & (gated <= shape[1])),
                   f"{len_name} must be in [1, T] where T is the time size of {x_name}; got", gated, "with T =",
                   shape[1])
    x, lengths = checks.gate(x, lengths)
    # Static shapes for the model: a Pack of scalars (a concat of a slice would leave the rank unknown).
    x = tf.reshape(x, tf.stack([shape[0], shape[1], dim]))
    return x, tf.reshape(lengths, [-1])


# -------------------------------------------------------------------------------------- endpoints

def _specs(**dtypes):
    """Input specs of unknown shape (see the module docstring) in argument order."""
    return [tf.TensorSpec(None, tf.as_dtype(dtype), name=name) for name, dtype in dtypes.items()]


SCORE_SPECS = dict(x="float32", lengths="int32", seed="int32")
SAMPLE_SPECS = dict(num_samples="int32", num_steps="int32", seed="int32", temperature="float32")
CONTINUE_SPECS = dict(prefix="float32", prefix_lengths="int32", num_steps="int32", seed="int32",
                      temperature="float32")


class DataUnits:
    """The per-channel standardisation a run's data went through (:mod:`tfhier.data.units`), applied inside the
    signatures so that they take and return the data's own units; ``None`` stands for none."""

    def __init__(self, mean, std):
        import numpy as np

        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        #: added once per step to a log-density in model units gives one in data units
        self.log_density_offset = float(-np.sum(np.log(self.std.astype(np.float64))))

    @classmethod
    def of(cls, data_info: dict):
        from tfhier.data.units import standardization

        stats = standardization(data_info)
        return None if stats is None else cls(*stats)

    def to_model(self, x):
        return (x - tf.constant(self.mean)) / tf.constant(self.std)

    def to_data(self, x):
        return x * tf.constant(self.std) + tf.constant(self.mean)


def score_fn(model, limits: Limits = Limits(), units: Optional[DataUnits] = None):
    """The ``serving_default`` function: ``(x, lengths, seed) -> {elbo, nll, kl, num_steps}``; with ``units``,
    ``x`` in the data's units and ``elbo``, ``nll`` densities of the data in those units."""
    dim = model.input_dim

    def score(x, lengths, seed):
        checks = Checks()
        x, lengths = check_sequences(checks, "x", x, "lengths", lengths, dim, max_batch=limits.max_samples,
                                     max_total=limits.max_score_steps)
        seed = check_seed(checks, seed)
        x, lengths, seed = checks.gate(x, lengths, seed)
        mask = tf.sequence_mask(lengths, tf.shape(x)[1], dtype=tf.float32)
        if units is None:
            out = model.score(x, mask, seed)
            return {"elbo": out["elbo"], "nll": out["nll"], "kl": out["kl"], "num_steps": out["num_steps"]}
        out = model.score(units.to_model(x), mask, seed)
        shift = out["num_steps"] * units.log_density_offset
        return {"elbo": out["elbo"] + shift, "nll": out["nll"] - shift, "kl": out["kl"], "num_steps": out["num_steps"]}

    return score


def sample_fn(model, limits: Limits, units: Optional[DataUnits] = None):
    """The ``sample`` function: ``(num_samples, num_steps, seed, temperature) -> {samples}`` (in the data's
    units with ``units``)."""

    def sample(num_samples, num_steps, seed, temperature):
        checks = Checks()
        num_samples = check_scalar_int(checks, "num_samples", num_samples, 1, limits.max_samples,
                                       "how many sequences to draw")
        num_steps = check_scalar_int(checks, "num_steps", num_steps, 1, limits.max_steps, "steps per sequence")
        seed = check_seed(checks, seed)
        temperature = check_temperature(checks, temperature)
        num_samples, num_steps, seed, temperature = checks.gate(num_samples, num_steps, seed, temperature)
        samples = model.generate(num_samples, num_steps, seed, temperature)
        return {"samples": samples if units is None else units.to_data(samples)}

    return sample


def continue_fn(model, limits: Limits, units: Optional[DataUnits] = None):
    """The ``continue`` function: ``(prefix, prefix_lengths, num_steps, seed, temperature) -> {continuations}``
    (prefix and continuations in the data's units with ``units``)."""
    dim = model.input_dim

    def continue_(prefix, prefix_lengths, num_steps, seed, temperature):
        checks = Checks()
        prefix, prefix_lengths = check_sequences(checks, "prefix", prefix, "prefix_lengths", prefix_lengths, dim,
                                                 max_batch=limits.max_samples, max_steps=limits.max_steps)
        num_steps = check_scalar_int(checks, "num_steps", num_steps, 1, limits.max_steps,
                                     "steps to generate after each prefix")
        seed = check_seed(checks, seed)
        temperature = check_temperature(checks, temperature)
        prefix, prefix_lengths, num_steps, seed, temperature = checks.gate(
            prefix, prefix_lengths, num_steps, seed, temperature)
        if units is not None:
            prefix = units.to_model(prefix)
        out = model.continue_sequences(prefix, prefix_lengths, num_steps, seed, temperature)
        return {"continuations": out if units is None else units.to_data(out)}

    return continue_


def build_archive(model, limits: Limits = Limits(), units: Optional[DataUnits] = None):
    """A ``keras.export.ExportArchive`` with the module's signatures for a built ``model`` (speaking the data's
    units with ``units``).

    ``serving_default`` (scoring) is added first.  Every model has ``continue``:
    :class:`tfhier.models.base.SequenceModel` gives all of them ``continue_sequences``.
    """
    import keras

    limits.validate()
    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint becomes serving_default; naming it so makes that explicit in the SignatureDefs.
    archive.add_endpoint("serving_default", score_fn(model, limits, units), input_signature=_specs(**SCORE_SPECS))
    archive.add_endpoint("sample", sample_fn(model, limits, units), input_signature=_specs(**SAMPLE_SPECS))
    archive.add_endpoint("continue", continue_fn(model, limits, units), input_signature=_specs(**CONTINUE_SPECS))
    return archive


def signature_info(model, limits: Limits) -> dict:
    """What each signature takes and returns (written to ``tfhier_export.json``)."""
    d, n_layers = model.input_dim, len(model.latent_layer_names)
    return {
        "serving_default": {
            "inputs": {"x": {"dtype": "float32", "shape": ["B", "T", d],
                             "range": f"B in 1..{limits.max_samples}, B x T <= {limits.max_score_steps}"},
                       "lengths": {"dtype": "int32", "shape": ["B"], "range": "1..T"},
                       "seed": {"dtype": "int32", "shape": [2]}},
            "outputs": {"elbo": {"dtype": "float32", "shape": ["B"]},
                        "nll": {"dtype": "float32", "shape": ["B"]},
                        "kl": {"dtype": "float32", "shape": ["B", n_layers], "columns": model.latent_layer_names},
                        "num_steps": {"dtype": "float32", "shape": ["B"]}},
        },
        "sample": {
            "inputs": {"num_samples": {"dtype": "int32", "shape": [], "range": f"1..{limits.max_samples}"},
                       "num_steps": {"dtype": "int32", "shape": [], "range": f"1..{limits.max_steps}"},
                       "seed": {"dtype": "int32", "shape": [2]},
                       "temperature": {"dtype": "float32", "shape": [], "range": f"(0, {MAX_TEMPERATURE:g}]"}},
            "outputs": {"samples": {"dtype": "float32", "shape": ["num_samples", "num_steps", d]}},
        },
        "continue": {
            "inputs": {"prefix": {"dtype": "float32", "shape": ["B", "T0", d],
                                  "range": f"B in 1..{limits.max_samples}, T0 in 1..{limits.max_steps}"},
                       "prefix_lengths": {"dtype": "int32", "shape": ["B"], "range": "1..T0"},
                       "num_steps": {"dtype": "int32", "shape": [], "range": f"1..{limits.max_steps}"},
                       "seed": {"dtype": "int32", "shape": [2]},
                       "temperature": {"dtype": "float32", "shape": [], "range": f"(0, {MAX_TEMPERATURE:g}]"}},
            "outputs": {"continuations": {"dtype": "float32", "shape": ["B", "num_steps", d]}},
        },
    }


def write_saved_model(model, path, limits: Limits = Limits(), extra_files: Optional[dict] = None,
                      units: Optional[DataUnits] = None):
    """Writes ``model``'s SavedModel to ``path`` (a new directory) plus ``assets.extra/<name>`` text files."""
    archive = build_archive(model, limits, units)
    archive.write_out(str(path), verbose=False)
    if extra_files:
        extra = os.path.join(str(path), ASSETS_EXTRA)
        os.makedirs(extra, exist_ok=True)
        for name, text in extra_files.items():
            with open(os.path.join(extra, name), "w", encoding="utf-8") as f:
                f.write(text)
    return str(path)


# ------------------------------------------------------------------------------- export of a run

def sanitize_model_name(name: str) -> str:
    """A TF Serving model name (letters, digits, ``_ . -``; URL-safe) from a run directory's name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).lstrip("._-")
    return cleaned or "model"


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name or ""):
        raise ExportError(f"--model_name={name!r} is not usable as a TF Serving model name: use letters, digits, "
                          "'_', '.', '-', starting with a letter or digit (it becomes part of the REST URL)")
    return name


def existing_versions(model_dir) -> list:
    """The integer version folders in ``model_dir`` (what TF Serving would consider), sorted."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(p) for p in os.listdir(model_dir)
                  if p.isdigit() and os.path.isdir(os.path.join(model_dir, p)))


def plan_export(run_dir, export_base, version: Optional[int] = None, model_name: Optional[str] = None):
    """``(model_name, version, model_dir, version_dir)``, or ExportError; touches nothing.

    Default name: the run directory's base name, sanitised; default version:
    one above the highest existing integer version (1 if none).  An existing
    version directory is never overwritten.
    """
    if not export_base:
        raise ExportError("--export_base is empty; give the folder that holds <model_name>/<version>/ exports")
    if os.path.exists(export_base) and not os.path.isdir(export_base):
        raise ExportError(f"--export_base={export_base} exists and is not a directory")
    problem = writable_problem(export_base, "--export_base")
    if problem:
        raise ExportError(problem)
    if model_name is None:
        model_name = sanitize_model_name(os.path.basename(os.path.normpath(os.path.abspath(str(run_dir)))))
    check_model_name(model_name)
    model_dir = os.path.join(str(export_base), model_name)
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ExportError(f"{model_dir} exists and is not a directory")
    given = version is not None
    if version is None:
        versions = existing_versions(model_dir)
        version = versions[-1] + 1 if versions else 1
    else:
        integer_at_least("--version", version, error=ExportError)
    version_dir = os.path.join(model_dir, str(version))
    if os.path.lexists(version_dir) and given:
        raise ExportError(f"{version_dir} already exists: refusing to overwrite version {version} of model "
                          f"{model_name!r} (give another --version, or leave --version out to use "
                          f"{(existing_versions(model_dir) or [0])[-1] + 1})")
    if os.path.lexists(version_dir):  # the next version's name is taken by a file or link, not a version folder
        raise ExportError(f"{version_dir} exists and is not a version folder, so the next version ({version}) "
                          f"cannot be written: move it away, or give --version")
    if os.path.isdir(model_dir):
        problem = writable_problem(model_dir, f"the model folder {model_dir}")
        if problem:
            raise ExportError(problem)
    return model_name, version, model_dir, version_dir


#: a temporary export folder whose writer is gone (by its pid), or with no pid and older than this, is removed
STALE_SECONDS = 3600
_TMP_EXPORT = re.compile(r"^\.tmp_export_\d+_(?:(\d+)_)?")


def remove_stale_temporaries(model_dir) -> list:
    """Removes the ``.tmp_export_*`` folders of exports that were killed (their process is gone); returns their
    paths. TF Serving ignores such folders, but each holds a whole SavedModel."""
    removed = []
    for name in os.listdir(model_dir):
        match = _TMP_EXPORT.match(name)
        path = os.path.join(model_dir, name)
        if not match or not os.path.isdir(path) or os.path.islink(path):
            continue
        if match.group(1):
            try:
                os.kill(int(match.group(1)), 0)
                continue  # its writer is alive: an export in progress
            except ProcessLookupError:
                pass
            except (PermissionError, OverflowError):
                continue
        elif time.time() - os.path.getmtime(path) < STALE_SECONDS:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def export_bytes(model) -> int:
    """Roughly what an export of ``model`` takes on disk: its float32 weights (variables/) and the graphs of the
    three signatures (a few MB), with room to spare."""
    weights = sum(int(np.prod(v.shape)) * 4 for v in model.weights)  # every weight is float32 (or smaller)
    return int(weights * 1.2) + 32 * 2 ** 20


@dataclasses.dataclass
class ExportResult:
    path: str  # the version directory
    model_name: str
    version: int
    checkpoint: str
    step: int
    info: dict  # tfhier_export.json


def export_run(run_dir, export_base, *, version: Optional[int] = None, model_name: Optional[str] = None,
               limits: Limits = Limits(), checkpoint: Optional[str] = None,
               xla_generation: Optional[bool] = None) -> ExportResult:
    """Exports run ``run_dir`` (latest checkpoint unless ``checkpoint``) to ``export_base/model_name/version``.

    ``xla_generation``: the sample and continue signatures run each generation
    step as an XLA computation (tfhier.models.base.generation_step; up to 6x
    faster on CPU); False writes plain graph-mode signatures, for a server
    without XLA's CPU JIT (TF Serving's CPU build refuses XLA unless started with
    ``--xla_cpu_compilation_enabled=true``).  The two draw different samples
    for a seed.  None: the models' default (True unless TFHIER_XLA_GENERATION=0).

    The SavedModel is written to a hidden temporary folder next to the
    version folder and renamed into place once complete, so TF Serving never
    sees a partial version and a crash leaves none (only, at worst, a
    ``.tmp_export_*`` folder, which TF Serving ignores).

    Raises :class:`tfhier.runs.RunError` for a bad run directory and
    :class:`ExportError` for a bad destination, version or limits.
    """
    from tfhier import runs
    from tfhier.models.base import NAIVE_MAX_STEPS, naive_generation_problem

    dataclasses.replace(limits, max_steps=limits.max_steps or 1).validate()
    model_name, version, model_dir, version_dir = plan_export(run_dir, export_base, version, model_name)
    config = runs.read_config(run_dir)
    model, ckpt, step = runs.load_model(run_dir, checkpoint, config)
    if xla_generation is not None:
        model.xla_generation = bool(xla_generation)
    if limits.max_steps is None:  # not given: the default, or the naive sampler's limit without a cached generator
        limits = dataclasses.replace(limits, max_steps=DEFAULT_MAX_STEPS if model.has_cached_generator else
                                     min(DEFAULT_MAX_STEPS, NAIVE_MAX_STEPS))
    limits.validate()
    units = DataUnits.of(config.get("data_info", {}))
    problem = naive_generation_problem(model, limits.max_steps, "the sample and continue signatures drawing")
    if problem:
        raise ExportError(f"{problem}: give --max_steps <= the limit")
    if not model.has_cached_generator:
        import warnings

        warnings.warn(f"{model.NAME} has no cached generator: the sample and continue signatures re-run the network "
                      f"at every step (cost quadratic in num_steps)")
    info = {
        "format": "tfhier SavedModel export, version 1",
        "model_name": model_name,
        "version": version,
        "run_dir": os.path.abspath(str(run_dir)),
        "checkpoint": os.path.abspath(ckpt),
        "checkpoint_step": step,
        "model": config["model"],
        "dataset": config["dataset"],
        "kind": config.get("kind"),
        "feature_dim": int(config["feature_dim"]),
        "data_info": config.get("data_info", {}),
        "latent_layers": list(model.latent_layer_names),
        "time_multiple": int(model.time_multiple),
        "xla_generation": model.xla_generation,
        "units": "data" if units is not None else "model",
        "units_note": ("x, prefix, samples and continuations are in the data's own units; the signatures "
                       "standardise inputs with data_info's channel_mean and channel_std and map outputs back; "
                       "elbo and nll are densities of the data in its units" if units is not None else
                       "the signatures take and return the values the model was trained on (data_info says how "
                       "they relate to the raw data)"),
        "limits": dataclasses.asdict(limits),
        "signatures": signature_info(model, limits),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tensorflow_version": tf.__version__,
    }
    try:
        os.makedirs(model_dir, exist_ok=True)
        remove_stale_temporaries(model_dir)
        need = export_bytes(model)
        free = shutil.disk_usage(model_dir).free
        if free < need:
            raise ExportError(f"{model_dir}: {free / 2 ** 20:,.1f} MB free, the export needs about "
                              f"{need / 2 ** 20:,.1f} MB; nothing was written")
        tmp = tempfile.mkdtemp(dir=model_dir, prefix=f".tmp_export_{version}_{os.getpid()}_")
    except OSError as e:
        raise ExportError(f"cannot write in {model_dir} ({e.strerror or e}); nothing was written") from None
    try:
        saved = os.path.join(tmp, "saved_model")
        try:
            write_saved_model(model, saved, limits, extra_files={
                "config.json": json.dumps(config, indent=2) + "\n",
                EXPORT_INFO_FILE: json.dumps(info, indent=2) + "\n",
            }, **({"units": units} if units is not None else {}))
            if os.path.lexists(version_dir):  # appeared while we were writing
                raise ExportError(f"{version_dir} appeared during the export: refusing to overwrite it")
            os.rename(saved, version_dir)
        except (OSError, tf.errors.OpError) as e:
            reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
            reason = shown(reason.splitlines()[0] if reason else type(e).__name__, 200)
            raise ExportError(f"cannot write the export to {version_dir} ({reason}); nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(path=version_dir, model_name=model_name, version=version, checkpoint=ckpt, step=step,
                        info=info)


__all__ = ["ASSETS_EXTRA", "DEFAULT_MAX_SAMPLES", "DEFAULT_MAX_STEPS", "EXPORT_INFO_FILE", "ExportError",
           "DataUnits", "ExportResult", "Limits", "SIGNATURE_NAMES", "build_archive", "check_model_name", "existing_versions",
           "export_run", "plan_export", "sanitize_model_name", "signature_info",
           "write_saved_model"]
