"""Benchmark: generation time of every convolutional model at its IAM-OnDB size, cached vs naive, on CPU.

    python bench/generation.py --models=msstcn       # everything below, for MS-STCN
    python bench/generation.py --methods=cached,naive --steps=700 --samples=1   # every model, 1 x 700
    python bench/generation.py --methods=cached,xla --steps=700,1400 --samples=1,64
    python bench/generation.py --saved_model=exports/msstcn/1   # also time its `sample` signature
    python bench/generation.py --saved_model=export   # ... of this benchmark's own model, exported

Models (``--models``, default: every registered model): each is built from its
IAM-OnDB flagfile (``configs/iam.cfg`` for msstcn, ``configs/<model>_iam.cfg``
for the others), with random weights (the cost does not depend on their values).

Methods:

* ``cached``: ``model.generate`` (per-layer state, constant cost per step) in
  one graph-mode tf.function with tensor arguments, the way ``model.generate``
  runs when called eagerly (and the way ``sample.py`` and a SavedModel run
  it): traced once for every size; each step is one XLA computation
  (tfhier.models.base.generation_step), compiled once per batch size.
* ``graph``: the same with ``model.xla_generation = False`` (every op of the
  step dispatched by the graph executor: export's ``--noxla_generation``).
  XLA draws its stateless random numbers with its own implementation, so its
  samples are a different (equally valid) draw than this one's for a seed.
* ``xla``: the whole cached loop with ``jit_compile=True`` and the sizes as
  Python ints (static shapes; one compilation per size).
* ``naive``: ``model.generate_naive`` (re-runs the whole network over the
  buffer at every step, cost quadratic in the length), only up to
  ``--naive_max_steps`` x ``--naive_max_samples`` (default 700 x 1): larger
  sizes take minutes.
* ``saved_model`` (with ``--saved_model=DIR``): the ``sample`` signature of a
  SavedModel written by export/export.py, loaded with ``tf.saved_model.load``.
  ``--saved_model=export`` exports the benchmark's own model (the same random
  weights as the other methods) with tfhier.serving to a temporary directory
  first (``export_s``), and checks its samples against ``cached``'s
  (``max_abs_diff_vs_cached``: the same seed gives the same samples).

Each (method, samples, steps) is timed ``--repeats`` times after a first call;
reported: tracing (``trace_s``: building the graph) and the first call
(``first_call_s``: graph optimisation / XLA compilation plus one run) apart from
the warm runs (``warm_s``: the minimum; ``warm_median_s``; and CPU seconds).
The machine is shared, so the 1-minute load average is recorded before and
after.  Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

from absl import app, flags  # noqa: E402

flags.DEFINE_list("models", [], "Models to time (default: every registered model).")
flags.DEFINE_list("methods", ["cached", "graph", "xla", "naive"], "Any of cached, graph, xla, naive (saved_model is added by "
                  "--saved_model).")
flags.DEFINE_list("steps", ["700", "1400"], "Sequence lengths to time.")
flags.DEFINE_list("samples", ["1", "64"], "Batch sizes (samples drawn per call) to time.")
flags.DEFINE_integer("repeats", 3, "Warm (timed) calls per size, after the first call.")
flags.DEFINE_integer("naive_max_steps", 700, "Time the naive method only up to this many steps ...")
flags.DEFINE_integer("naive_max_samples", 1, "... and this many samples (it is quadratic in the length).")
flags.DEFINE_string("saved_model", None, "Also time the `sample` signature of this SavedModel directory; "
                    "'export': of this benchmark's model, exported to a temporary directory.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
flags.DEFINE_float("authors_700x1_s", None, "The authors' sampler's time for 1 x 700 steps measured on this machine "
                   "(bench/authors/bench_ms_stcn.py --mode sample, docs/benchmarks.md), for the speed-up figures.")
FLAGS = flags.FLAGS



def _authors_s():
    """The authors' 1 x 700 time given by --authors_700x1_s (measured back to back on this machine), or None."""
    return FLAGS.authors_700x1_s


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _time_calls(call, repeats):
    """(first call seconds, [warm wall seconds], [warm cpu seconds], last output)."""
    start = time.perf_counter()
    out = call()
    first = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = call()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return first, walls, cpus, out


def _entry(method, n, t, trace, first, walls, cpus, **extra):
    return {"method": method, "num_samples": n, "num_steps": t,
            "trace_s": None if trace is None else round(trace, 3), "first_call_s": round(first, 3),
            "warm_s": round(min(walls), 4), "warm_median_s": round(statistics.median(walls), 4),
            "warm_cpu_s": round(min(cpus), 4), "warm_runs_s": [round(w, 4) for w in walls],
            "ms_per_step": round(1e3 * min(walls) / t, 4), **extra}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def iam_model(name):
    """Model ``name`` at the size of its IAM-OnDB flagfile, random weights; and the flagfile's path."""
    from tfhier.models import MODELS, build_model
    from tfhier.runs import parse_flags_text

    path = os.path.join(REPO, "configs", "iam.cfg" if name == "msstcn" else f"{name}_iam.cfg")
    with open(path, encoding="utf-8") as f:
        values = parse_flags_text(f.read(), path)
    if values.get("model") != name:
        sys.exit(f"bench/generation.py: error: {path} is not a --model={name} flagfile")
    config = {h.name: h.parse(values[h.name], f"{path}: --{h.name}") for h in MODELS[name].HPARAMS if h.name in values}
    return build_model(name, 3, config).build_for_data(), os.path.relpath(path, REPO)


def main(_):
    import tensorflow as tf

    from tfhier.models import MODELS

    unknown = set(FLAGS.methods) - {"cached", "graph", "xla", "naive"}
    if unknown:
        sys.exit(f"bench/generation.py: error: unknown --methods {sorted(unknown)}")
    names = FLAGS.models or sorted(MODELS)
    bad = sorted(set(names) - set(MODELS))
    if bad:
        sys.exit(f"bench/generation.py: error: unknown --models {bad}; registered: {sorted(MODELS)}")
    load_before = _load_average()
    reports = []
    for name in names:
        model, config = iam_model(name)
        reports.append(time_model(name, model, config))
    print(json.dumps({
        "benchmark": "generation", "temperature": FLAGS.temperature, "repeats": FLAGS.repeats,
        "authors_700x1_s_reference": _authors_s(), "models": reports,
        "load_average_1min": {"before": load_before, "after": _load_average()}, "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "tensorflow": tf.__version__}, indent=1))


def time_model(name, model, config):
    """Times every method for one model; returns its JSON report."""
    import numpy as np
    import tensorflow as tf

    steps = [int(s) for s in FLAGS.steps]
    samples = [int(s) for s in FLAGS.samples]
    seed = tf.constant([0, 0], tf.int32)
    temperature = tf.constant(FLAGS.temperature, tf.float32)
    results, notes = [], []
    graph_out = {}
    print(f"timing {name} ({model.count_params():,} parameters)", file=sys.stderr, flush=True)

    default_xla = model.xla_generation
    for method in ("cached", "graph"):
        if method not in FLAGS.methods:
            continue
        model.xla_generation = method == "cached"
        fn = tf.function(lambda n, t, s, temp: model.generate(n, t, s, temp), autograph=False)
        start = time.perf_counter()
        fn.get_concrete_function(tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32),
                                 tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.float32))
        trace = time.perf_counter() - start
        for n in samples:
            for t in steps:
                first, walls, cpus, out = _time_calls(
                    lambda: fn(tf.constant(n), tf.constant(t), seed, temperature).numpy(), FLAGS.repeats)
                if method == "cached":
                    graph_out[(n, t)] = out
                results.append(_entry(method, n, t, trace, first, walls, cpus, graph=(
                    "one tf.function, tensor arguments (dynamic shapes), each step one XLA computation "
                    "(first_call_s includes its compilation)" if method == "cached" else
                    "one tf.function, tensor arguments, plain graph mode (model.xla_generation = False)")))
                trace = None  # traced once for all sizes; first_call_s of later sizes is a plain run
        model.xla_generation = default_xla
    if "xla" in FLAGS.methods:
        for n in samples:
            for t in steps:
                fn = tf.function(lambda s, temp, n=n, t=t: model.generate(n, t, s, temp), autograph=False,
                                 jit_compile=True)
                start = time.perf_counter()
                fn.get_concrete_function(tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.float32))
                trace = time.perf_counter() - start
                first, walls, cpus, out = _time_calls(lambda: fn(seed, temperature).numpy(), FLAGS.repeats)
                extra = {"graph": "jit_compile=True, static sizes (first_call_s includes the XLA compilation)"}
                if (n, t) in graph_out:
                    extra["max_abs_diff_vs_graph"] = float(np.abs(out - graph_out[(n, t)]).max())
                results.append(_entry("xla", n, t, trace, first, walls, cpus, **extra))
    if "naive" in FLAGS.methods:
        fn = tf.function(lambda n, t, s, temp: model.generate_naive(n, t, s, temp), autograph=False)
        traced = False
        for n in samples:
            for t in steps:
                if n > FLAGS.naive_max_samples or t > FLAGS.naive_max_steps:
                    notes.append(f"naive {n}x{t} not timed (capped at {FLAGS.naive_max_samples} samples x "
                                 f"{FLAGS.naive_max_steps} steps: cost quadratic in the length)")
                    continue
                trace = None
                if not traced:
                    start = time.perf_counter()
                    fn.get_concrete_function(tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32),
                                             tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.float32))
                    trace, traced = time.perf_counter() - start, True
                first, walls, cpus, out = _time_calls(
                    lambda: fn(tf.constant(n), tf.constant(t), seed, temperature).numpy(), max(1, FLAGS.repeats - 2))
                extra = {}
                if (n, t) in graph_out:
                    extra["max_abs_diff_vs_cached"] = float(np.abs(out - graph_out[(n, t)]).max())
                results.append(_entry("naive", n, t, trace, first, walls, cpus, **extra))
    if FLAGS.saved_model:
        import shutil
        import tempfile

        path, export_s, tmp = FLAGS.saved_model, None, None
        if path == "export":  # this model, same weights: its samples must equal cached's
            from tfhier import serving

            tmp = tempfile.mkdtemp(prefix="tfhier_bench_")
            path = os.path.join(tmp, "1")
            start = time.perf_counter()
            serving.write_saved_model(model, path, serving.Limits(max_steps=max(steps), max_samples=max(samples)))
            export_s = round(time.perf_counter() - start, 3)
        try:
            start = time.perf_counter()
            loaded = tf.saved_model.load(path)
            sample = loaded.signatures["sample"]
            load_s = time.perf_counter() - start
            for n in samples:
                for t in steps:
                    first, walls, cpus, out = _time_calls(
                        lambda: sample(num_samples=tf.constant(n), num_steps=tf.constant(t), seed=seed,
                                       temperature=temperature)["samples"].numpy(), FLAGS.repeats)
                    extra = {"export_s": export_s} if export_s is not None else {}
                    if tmp and (n, t) in graph_out:
                        extra["max_abs_diff_vs_cached"] = float(np.abs(out - graph_out[(n, t)]).max())
                    results.append(_entry("saved_model", n, t, None, first, walls, cpus,
                                          load_s=None if load_s is None else round(load_s, 3),
                                          saved_model=FLAGS.saved_model, **extra))
                    load_s = export_s = None
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)

    def warm(method, n, t):
        for r in results:
            if (r["method"], r["num_samples"], r["num_steps"]) == (method, n, t):
                return r["warm_s"]
        return None

    summary = {}
    for method in ("cached", "graph", "xla", "saved_model", "naive"):
        one = warm(method, 1, 700)
        if one and name == "msstcn" and _authors_s():  # the reference is the authors' MS-STCN sampler
            summary[f"{method}_speedup_vs_authors_700x1"] = round(_authors_s() / one, 1)
        for n in samples:
            a, b = warm(method, n, 700), warm(method, n, 1400)
            if a and b:
                summary[f"{method}_ratio_1400_over_700_x{n}"] = round(b / a, 3)
    if warm("cached", 1, 700) and warm("naive", 1, 700):
        summary["cached_speedup_vs_naive_700x1"] = round(warm("naive", 1, 700) / warm("cached", 1, 700), 1)
    return {"model": name, "config": f"{config} model, random weights", "params": model.count_params(),
            "cached_generator": model.has_cached_generator, "summary": summary, "results": results, "notes": notes}


if __name__ == "__main__":
    app.run(main)
