"""Test-set evaluation of a trained model: bounds, KL per layer, active units.

:func:`evaluate_sequences` runs a model over full-length sequences in bounded
memory and returns per-sequence numbers (:class:`Evaluation`);
:func:`evaluate_run` does it for a run directory's split and writes
``R/eval_<split>.json`` and ``R/eval_<split>.md`` (``evaluate.py`` is a thin
command line over it).

What is computed (all in nats; "per sequence" = mean over sequences, "per
step" = sum over sequences / total real time steps):

* **ELBO** (eq. 7): ``E_q log p(x|z) - KL(q || p)`` with the *analytic* KL of
  every layer and the reconstruction term at one sampled ``z`` — exactly
  :meth:`SequenceModel.score`.
* **Importance-weighted bound** (Burda et al. 2015) with K samples:
  ``log (1/K) sum_k w_k``, ``log w = log p(x|z) + log p(z) - log q(z)`` at
  ``z ~ q`` (no analytic KL), per sequence.  In expectation it is >= the ELBO
  and does not decrease with K; K=1 is an ELBO estimate with a sampled
  ``z`` (same expectation as the ELBO above, more variance).
* **KL per latent layer**: the analytic KL of each layer summed over its steps
  and units (the ELBO's KL terms), per sequence.
* **Active units** (Burda et al. 2015: unit u is active if
  ``Cov_x(E_{q(z|x)}[z_u]) > 0.01``).  Sequence models have one latent vector
  per (coarse) time step, so here the variance of the posterior mean
  ``E_q[z_{t,u}]`` of unit u is taken over all (sequence, valid step of that
  layer) pairs of the split, pooled — steps marked 0 in
  ``ModelOutput.latent_masks`` (padding) are left out.  Variation along time
  within one sequence therefore counts as activity too, as it does for a unit
  that encodes the data.  The variance is the population one (divisor n),
  accumulated batch by batch in float64 (Chan et al.'s pairwise update).

Memory does not grow with the split or with K: sequences go through in
batches of ``batch_size`` (``make_dataset(training=False)``: full length, in
order), and the K importance samples of a batch in chunks of ``iw_chunk``
samples, each chunk one forward pass of the tiled batch; only the ``[K, B]``
log-weights of the current batch are kept.

Randomness is stateless and reproducible (for a given ``seed``,
``batch_size`` and ``iw_chunk``): batch ``i``'s ELBO pass uses
:func:`elbo_seed` ``(seed, i)`` and its importance chunk ``c``
:func:`iw_seed` ``(seed, i, c)``.  With ``iw_chunk=1`` (the default), chunk c
is sample k=c, so the samples of a run with K are the first K samples of a
run with a larger K: bounds for different K are then paired comparisons.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tfhier import objectives
from tfhier.checks import integer_at_least
from tfhier.data.base import SPLITS
from tfhier.data.pipeline import make_dataset
from tfhier.noise import stateless_seed

ACTIVE_UNIT_THRESHOLD = 0.01

ACTIVE_UNITS_DEFINITION = (
    "unit u of a layer is active if the variance of its posterior mean E_q[z_u] over all (sequence, valid "
    "time step of that layer) pairs of the split exceeds the threshold (Burda et al. 2015's Cov_x(E_q[z_u]) "
    "> 0.01, pooled over time steps; padded steps excluded; population variance)")


# ---------------------------------------------------------------------------------------------- seeds

def elbo_seed(seed, batch_index):
    """Stateless seed (int32 [2]) of the ELBO pass of batch ``batch_index``."""
    return stateless_seed(tf.constant([int(seed), int(batch_index)], tf.int32), 0)


def iw_seed(seed, batch_index, chunk_index):
    """Stateless seed (int32 [2]) of importance-sample chunk ``chunk_index`` of batch ``batch_index``."""
    return stateless_seed(tf.constant([int(seed), int(batch_index)], tf.int32), 1, int(chunk_index))


# ------------------------------------------------------------------------------------------ results

@dataclasses.dataclass
class Evaluation:
    """Per-sequence results of :func:`evaluate_sequences` (numpy float64, sequences in input order)."""

    layer_names: list
    elbo: np.ndarray  # [N]
    nll: np.ndarray  # [N]
    kl: np.ndarray  # [N, L]: analytic KL per layer
    iwae: np.ndarray  # [N]: log mean_k w_k
    num_steps: np.ndarray  # [N]: real time steps
    posterior_mean_variance: list  # per layer [Z_l]: variance of E_q[z_u] over (sequence, valid step) pairs
    posterior_mean_count: list  # per layer: number of (sequence, valid step) pairs
    iw_samples: int
    seed: int
    batch_size: int
    iw_chunk: int
    fivo: Optional[np.ndarray] = None  # [N]: the FIVO bound (models with the step interface), or None
    fivo_particles: int = 0

    @property
    def num_sequences(self) -> int:
        return int(self.elbo.shape[0])

    @property
    def total_steps(self) -> int:
        return int(self.num_steps.sum())

    def active_units(self, threshold: float = ACTIVE_UNIT_THRESHOLD) -> dict:
        """``{layer: (active, total)}``."""
        return {name: (int(np.sum(v > threshold)), int(v.shape[0]))
                for name, v in zip(self.layer_names, self.posterior_mean_variance)}

    def summary(self, threshold: float = ACTIVE_UNIT_THRESHOLD) -> dict:
        """The JSON-ready numbers (see the module docstring)."""
        steps = max(self.total_steps, 1)

        def stats(values):
            n = values.shape[0]
            stderr = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
            return {"per_sequence": float(np.mean(values)), "per_step": float(np.sum(values) / steps),
                    "per_sequence_stderr": stderr}

        active = self.active_units(threshold)
        return {
            "num_sequences": self.num_sequences,
            "num_steps": self.total_steps,
            "iw_samples": self.iw_samples,
            "elbo": stats(self.elbo),
            "iwae": stats(self.iwae),
            **({"fivo": stats(self.fivo), "fivo_particles": self.fivo_particles} if self.fivo is not None else {}),
            "nll": stats(self.nll),
            "kl": stats(self.kl.sum(axis=1)),
            "kl_per_layer": {name: stats(self.kl[:, i]) for i, name in enumerate(self.layer_names)},
            "active_units": {
                name: {"active": active[name][0], "total": active[name][1],
                       "posterior_mean_variance": [float(v) for v in var],
                       "num_pairs": int(count)}
                for name, var, count in zip(self.layer_names, self.posterior_mean_variance,
                                            self.posterior_mean_count)},
            "active_units_threshold": threshold,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "iw_chunk": self.iw_chunk,
            "units": "nats",
        }


class _MomentAccumulator:
    """Per-unit count, mean and sum of squared deviations over rows, merged batch by batch (float64)."""

    def __init__(self, dim):
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def add(self, rows: np.ndarray):
        rows = np.asarray(rows, np.float64)
        nb = rows.shape[0]
        if nb == 0:
            return
        mean_b = rows.mean(axis=0)
        m2_b = ((rows - mean_b) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2_b + delta ** 2 * self.n * nb / n
        self.n = n

    @property
    def variance(self):
        return self.m2 / self.n if self.n else np.zeros_like(self.m2)


def _compiled_passes(model):
    """Graph-compiled ELBO pass and log-weight pass (any batch size and length: one trace each)."""
    dim = model.input_dim
    spec = [tf.TensorSpec([None, None, dim], tf.float32), tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([2], tf.int32)]

    @tf.function(input_signature=spec)
    def elbo_pass(x, mask, seed):
        out = model.forward(x, mask, seed=seed)
        terms = objectives.elbo_terms(out, x, mask)
        means = [q.mean() for q in out.posteriors]
        return terms.nll, terms.kl_per_layer, terms.num_steps, means, list(out.latent_masks)

    @tf.function(input_signature=spec + [tf.TensorSpec([], tf.int32)])
    def log_weight_pass(x, mask, seed, copies):
        batch = tf.shape(x)[0]
        xt = tf.tile(x, [copies, 1, 1])
        mt = tf.tile(mask, [copies, 1])
        out = model.forward(xt, mt, seed=seed)
        return tf.reshape(objectives.log_importance_weight(out, xt, mt), [copies, batch])

    fivo_passes = {}

    def fivo_pass(x, mask, seed, particles):
        """FIVO bounds [B] with ``particles`` (a Python int: one trace per K)."""
        if particles not in fivo_passes:
            fivo_passes[particles] = tf.function(
                lambda x, mask, seed: objectives.fivo_bound(model, x, mask, seed, particles,
                                                            FIVO_RESAMPLING_THRESHOLD)[0], input_signature=spec)
        return fivo_passes[particles](x, mask, seed)

    return elbo_pass, log_weight_pass, fivo_pass if getattr(model, "supports_step_interface", False) else None


#: the resampling threshold of the evaluation's FIVO bound (Maddison et al.'s 0.5)
FIVO_RESAMPLING_THRESHOLD = 0.5


def fivo_seed(seed, batch_index):
    """Stateless seed (int32 [2]) of the FIVO particle filter of batch ``batch_index``."""
    return stateless_seed(tf.constant([int(seed), int(batch_index)], tf.int32), 2)


def logmeanexp(log_weights: np.ndarray, axis=0) -> np.ndarray:
    """``log mean exp`` along ``axis`` in float64 (the importance-weighted bound from log-weights)."""
    lw = np.asarray(log_weights, np.float64)
    top = np.max(lw, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    out = np.log(np.mean(np.exp(lw - top), axis=axis)) + np.squeeze(top, axis=axis)
    return out


class Evaluator:
    """Evaluates one model; its compiled passes are traced once and reused across calls (e.g. several K)."""

    def __init__(self, model):
        self.model = model
        self.layer_names = list(model.latent_layer_names)
        self._elbo_pass, self._log_weight_pass, self._fivo_pass = _compiled_passes(model)

    def log_weights(self, x, mask, *, iw_samples, seed, batch_index=0, iw_chunk=1) -> np.ndarray:
        """Log importance weights ``[K, B]`` of one padded batch, in chunks of ``iw_chunk`` samples."""
        log_w = np.empty([iw_samples, int(x.shape[0])], np.float64)
        for c, start in enumerate(range(0, iw_samples, iw_chunk)):
            copies = min(iw_chunk, iw_samples - start)
            log_w[start:start + copies] = self._log_weight_pass(
                x, mask, iw_seed(seed, batch_index, c), tf.constant(copies, tf.int32)).numpy()
        return log_w

    def evaluate(self, sequences: list, *, iw_samples: int = 16, batch_size: int = 16, seed: int = 0,
                 iw_chunk: int = 1, fivo_particles: Optional[int] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> Evaluation:
        """See :func:`evaluate_sequences`."""
        iw_samples = integer_at_least("--iw_samples", iw_samples)
        if fivo_particles is None:
            fivo_particles = iw_samples if self._fivo_pass is not None else 0
        fivo_particles = integer_at_least("--fivo_particles", fivo_particles, minimum=0)
        if fivo_particles and self._fivo_pass is None:
            raise ValueError(f"--fivo_particles: --model={self.model.NAME} has no recurrent step interface, so no FIVO "
                             f"bound (give --fivo_particles=0)")
        batch_size = integer_at_least("--batch_size", batch_size)
        iw_chunk = integer_at_least("--iw_chunk", iw_chunk)
        seed = int(seed)
        dataset = make_dataset(list(sequences), batch_size, training=False,
                               pad_to_multiple=self.model.time_multiple)
        num_batches = math.ceil(len(sequences) / batch_size)

        nll, kl, steps, iwae, fivo = [], [], [], [], []
        moments = None
        for i, (x, mask) in enumerate(dataset):
            b_nll, b_kl, b_steps, means, masks = self._elbo_pass(x, mask, elbo_seed(seed, i))
            nll.append(b_nll.numpy())
            kl.append(b_kl.numpy())
            steps.append(b_steps.numpy())
            if moments is None:
                moments = [_MomentAccumulator(int(m.shape[-1])) for m in means]
            for acc, mean, m in zip(moments, means, masks):
                acc.add(mean.numpy()[m.numpy() > 0])
            log_w = self.log_weights(x, mask, iw_samples=iw_samples, seed=seed, batch_index=i, iw_chunk=iw_chunk)
            iwae.append(logmeanexp(log_w, axis=0))
            if fivo_particles:
                fivo.append(self._fivo_pass(x, mask, fivo_seed(seed, i), fivo_particles).numpy().astype(np.float64))
            if progress is not None:
                progress(i + 1, num_batches)

        nll = np.concatenate(nll).astype(np.float64)
        kl = np.concatenate(kl).astype(np.float64).reshape(len(nll), len(self.layer_names))
        return Evaluation(layer_names=self.layer_names, elbo=-(nll + kl.sum(axis=1)), nll=nll, kl=kl,
                          iwae=np.concatenate(iwae), num_steps=np.concatenate(steps).astype(np.float64),
                          posterior_mean_variance=[acc.variance for acc in moments or []],
                          posterior_mean_count=[acc.n for acc in moments or []],
                          iw_samples=iw_samples, seed=seed, batch_size=batch_size, iw_chunk=iw_chunk,
                          fivo=np.concatenate(fivo) if fivo_particles else None, fivo_particles=fivo_particles)


def evaluate_sequences(model, sequences: list, *, iw_samples: int = 16, batch_size: int = 16, seed: int = 0,
                       iw_chunk: int = 1, fivo_particles: Optional[int] = None,
                       progress: Optional[Callable[[int, int], None]] = None) -> Evaluation:
    """Evaluates ``model`` (a :class:`~tfhier.models.base.SequenceModel`) on full-length ``sequences``.

    Args:
      model: a built model with restored weights.
      sequences: list of ``[T_i, D]`` arrays, evaluated in order.
      iw_samples: K, importance samples per sequence (>= 1).
      batch_size: sequences per forward pass.
      seed: seed of all sampling (see the module docstring).
      iw_chunk: importance samples per forward pass (the batch is tiled this many times).
      fivo_particles: particles of the FIVO bound (Maddison et al. 2017), for models with the recurrent step
        interface; default: ``iw_samples`` for those models, none for the others; 0: no FIVO bound.
      progress: called as ``progress(batches_done, num_batches)`` after each batch.
    """
    return Evaluator(model).evaluate(sequences, iw_samples=iw_samples, batch_size=batch_size, seed=seed,
                                     iw_chunk=iw_chunk, fivo_particles=fivo_particles, progress=progress)


# ------------------------------------------------------------------------------------- run directories

def check_split(split):
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {list(SPLITS)}, got {split!r}")
    return split


def output_paths(run_dir, split) -> tuple:
    """``(R/eval_<split>.json, R/eval_<split>.md)``."""
    return (os.path.join(run_dir, f"eval_{split}.json"), os.path.join(run_dir, f"eval_{split}.md"))


def evaluate_run(run_dir, split: str = "test", *, iw_samples: int = 16, batch_size: int = 16,
                 max_sequences: int = 0, seed: int = 0, iw_chunk: int = 1, fivo_particles: Optional[int] = None,
                 checkpoint: Optional[str] = None,
                 data_dir: Optional[str] = None, write: bool = True, plots: int = 0,
                 progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Evaluates the run in ``run_dir`` on ``split``; writes ``R/eval_<split>.{json,md}`` when ``write``.

    Args:
      run_dir: a training run directory (see :mod:`tfhier.runs`).
      split: ``'train'``, ``'valid'`` or ``'test'``.
      max_sequences: evaluate only the first this many sequences of the split (0: all).
      checkpoint: a checkpoint path (default: the run's latest).
      data_dir: overrides the run's ``--data_dir`` (data moved since training).
      Others: see :func:`evaluate_sequences`.

    Returns the report (the JSON's content). Raises ValueError (``RunError``,
    ``DataError``) with a message naming the flag or file on bad input, before
    anything is written.
    """
    from tfhier import runs

    from tfhier import checks

    check_split(split)
    problem = checks.evaluation_problem(iw_samples, batch_size, iw_chunk, fivo_particles, plots, max_sequences, seed)
    if problem:
        raise ValueError(problem)
    run = runs.load_run(run_dir, checkpoint, data_dir=data_dir)
    sequences = run.data.split(split)
    if max_sequences:
        sequences = sequences[:max_sequences]
    if sequences:  # the largest pass: a batch of the longest sequences, tiled by the larger of the two sample counts
        copies = max(iw_chunk, fivo_particles or (iw_samples if fivo_particles is None else 0), 1)
        problem = checks.memory_problem(run.config["model_config"], int(run.config["feature_dim"]),
                                        min(batch_size, len(sequences)), max(len(s) for s in sequences), copies,
                                        what="one evaluation pass", lower="--batch_size, --iw_chunk or "
                                        "--fivo_particles")
        if problem:
            raise ValueError(problem)
    result = evaluate_sequences(run.model, sequences, iw_samples=iw_samples, batch_size=batch_size, seed=seed,
                                iw_chunk=iw_chunk, fivo_particles=fivo_particles, progress=progress)
    report = {"run_dir": str(run_dir), "split": split, "model": run.config["model"],
              "dataset": run.config["dataset"], "checkpoint": run.checkpoint, "checkpoint_step": run.step,
              "split_size": len(run.data.split(split)), **result.summary(),
              "definitions": {
                  "elbo": "E_q log p(x|z) - analytic KL(q||p), reconstruction at one sampled z (model.score)",
                  "iwae": "log (1/K) sum_k p(x,z_k)/q(z_k|x), z_k ~ q (Burda et al. 2015); K=1 is a sampled-z ELBO",
                  "fivo": "log p_hat of a particle filter with fivo_particles particles proposing from q, multinomial "
                          "resampling at ESS < K/2 (Maddison et al. 2017); models with the recurrent step interface",
                  "per_sequence": "mean over sequences", "per_step": "sum over sequences / total real time steps",
                  "kl_per_layer": "analytic KL(q||p) of the layer summed over its valid steps and units",
                  "active_units": ACTIVE_UNITS_DEFINITION}}
    try:
        if write:
            write_report(run_dir, split, report)
        if plots:
            report["plots"] = write_plots(run_dir, split, run.model, sequences, plots, seed)
    except OSError as e:
        raise ValueError(f"--run_dir={run_dir}: cannot write the results ({e.strerror or e})") from None
    return report


def _fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def report_markdown(report: dict) -> str:
    """The report as Markdown: a header line and tables of the bounds and of the active units."""
    lines = [
        f"# Evaluation: {report['run_dir']} ({report['split']} split)",
        "",
        f"Model `{report['model']}` on `{report['dataset']}`, checkpoint step {report['checkpoint_step']} "
        f"(`{report['checkpoint']}`). {report['num_sequences']:,} of {report['split_size']:,} sequences, "
        f"{report['num_steps']:,} time steps; K = {report['iw_samples']} importance samples; seed "
        f"{report['seed']}. Values in nats; per step = sum over sequences / total time steps; "
        f"± is the standard error of the per-sequence mean.",
        "",
        "| quantity | per sequence | ± s.e. | per step |",
        "|---|---:|---:|---:|",
    ]

    def row(label, stats):
        lines.append(f"| {label} | {_fmt(stats['per_sequence'])} | {_fmt(stats['per_sequence_stderr'])} | "
                     f"{_fmt(stats['per_step'], 5)} |")

    row("ELBO", report["elbo"])
    row(f"IWAE bound (K={report['iw_samples']})", report["iwae"])
    if "fivo" in report:
        row(f"FIVO bound (K={report['fivo_particles']} particles)", report["fivo"])
    row("NLL (reconstruction)", report["nll"])
    row("KL total", report["kl"])
    for name, stats in report["kl_per_layer"].items():
        row(f"KL {name}", stats)
    lines += ["", "| latent layer | active units | total units |", "|---|---:|---:|"]
    for name, au in report["active_units"].items():
        lines.append(f"| {name} | {au['active']} | {au['total']} |")
    definition = ACTIVE_UNITS_DEFINITION.replace("the threshold", str(report["active_units_threshold"]))
    lines += ["", f"Active unit: {definition}.", ""]
    return "\n".join(lines)


def sequence_diagnostics(model, x, seed=0) -> dict:
    """Per-step quantities of one sequence ``x`` [T, D] (posterior latents): ``kl`` [T] (the analytic KL of every
    latent layer, layer steps spread over the data steps they serve), ``log_variance`` [T] (of the predicted
    output distribution, mean over dimensions), ``l2`` [T] (distance of its mean from x) and ``x``."""
    xb = tf.constant(np.asarray(x, np.float32)[None])
    mask = tf.ones(tf.shape(xb)[:2])
    out = model.forward(xb, mask, seed=elbo_seed(seed, 0))
    terms = objectives.elbo_terms(out, xb, mask)
    t_len = int(xb.shape[1])
    kl = np.zeros(t_len)
    for factor, elements in zip(model.latent_factors, terms.kl_elements):
        per_layer_step = elements.numpy()[0].sum(-1)
        kl += np.repeat(per_layer_step / factor, factor)[:t_len]
    dist = out.likelihood
    try:
        mean, variance = dist.mean().numpy()[0], dist.variance().numpy()[0]
    except (NotImplementedError, TypeError, ValueError):  # e.g. a Blockwise head: moments from samples
        draws = dist.sample(64, seed=tf.constant([seed, 1], tf.int32)).numpy()[:, 0]
        mean, variance = draws.mean(0), draws.var(0)
    x = np.asarray(x, np.float64)
    return {"x": x, "kl": kl, "log_variance": np.log(np.maximum(variance, 1e-12)).mean(-1),
            "l2": np.sqrt(((mean - x) ** 2).sum(-1))}


def write_plots(run_dir, split, model, sequences, count, seed=0) -> list:
    """VHRNN Figs. 2-4-style plots of the first ``count`` sequences: ``R/plots/<split>_<i>.png`` and the same
    images in TensorBoard (``R/logs/evaluation``, tag ``diagnostics/<split>``). Returns the PNG paths."""
    from tfhier import plotting
    from tfhier.fileio import atomic_write

    paths, images = [], []
    for i, seq in enumerate(sequences[:count]):
        diag = sequence_diagnostics(model, seq, seed)
        fig = plotting.diagnostics_figure(diag["x"], diag["kl"], diag["log_variance"], diag["l2"],
                                          title=f"{model.NAME}, {split} sequence {i}")
        path = os.path.join(run_dir, "plots", f"{split}_{i}.png")
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
        paths.append(path)
        images.append(plotting.figure_to_rgba(fig))
    if images:
        height = max(im.shape[0] for im in images)
        batch = np.stack([np.pad(im, [(0, height - im.shape[0]), (0, 0), (0, 0)]) for im in images])
        writer = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "evaluation"))
        with writer.as_default(step=0):
            tf.summary.image(f"diagnostics/{split}", batch, max_outputs=len(images))
        writer.flush()
    return paths


def write_report(run_dir, split, report) -> tuple:
    """Writes ``R/eval_<split>.json`` and ``.md`` atomically; returns their paths."""
    from tfhier.fileio import atomic_write

    json_path, md_path = output_paths(run_dir, split)
    atomic_write(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write(md_path, report_markdown(report))
    return json_path, md_path


__all__ = ["ACTIVE_UNITS_DEFINITION", "ACTIVE_UNIT_THRESHOLD", "Evaluation", "Evaluator", "SPLITS", "check_split",
           "elbo_seed", "evaluate_run", "evaluate_sequences", "iw_seed", "logmeanexp", "output_paths", "report_markdown",
           "write_report"]
