"""Draws samples from a trained tfhier run.

    python sample.py --run_dir=runs/demo
    python sample.py --run_dir=runs/demo --num_samples=8 --num_steps=700 --seed=3 --temperature=0.8
    python sample.py --run_dir=runs/demo --prime_split=test --prime_index=0 --prime_steps=100

Loads the model (latest checkpoint unless ``--checkpoint``) from ``--run_dir``
and writes ``<out>.npz`` (``samples`` [N, T, D] in model space) plus the data
kind's own view: a PNG of pen strokes for handwriting (a pen-up ends a
stroke), WAV files for audio, an image for binary data.  ``<out>.json``
records how the samples were drawn.

With ``--prime_split``, every sample continues the first ``--prime_steps``
steps of sequence ``--prime_index`` of that split (reloaded with the run's
data flags): the written sequences are the prefix followed by
``--num_steps`` generated steps.  Latent steps the prefix covers entirely are
drawn from the approximate posterior (see tfhier.models.base).

``--method=cached`` (default) uses the model's cached generator (constant
cost per step); ``--method=naive`` re-runs the network over the whole prefix
at every step (the reference; slow).  For the same seed both give the same
samples up to float rounding.

``--saved_model=DIR`` instead draws through the ``sample`` signature of an
export (export/export.py), the graph TF Serving runs, and plots with the data
facts the export keeps in ``assets.extra/tfhier_export.json``; no run
directory is needed:

    python sample.py --saved_model=exports/demo/1 --out=exports/demo_samples
"""

from __future__ import annotations

import json
import os
import sys

from tfhier.cli import prepare  # (no TensorFlow)

prepare(__name__)  # python -m tfhier.cli.sample: filter stderr before TensorFlow loads

from absl import flags, logging  # noqa: E402

from tfhier.data.base import SPLITS  # noqa: E402  (no TensorFlow)

FLAGS = flags.FLAGS

flags.DEFINE_string("run_dir", None, "Training run directory (holds config.json, checkpoints/).")
flags.DEFINE_string("checkpoint", None, "Checkpoint path prefix (.../checkpoints/ckpt-N); default: the latest.")
flags.DEFINE_integer("num_samples", 4, "How many sequences to draw.")
flags.DEFINE_integer("num_steps", 700, "Steps to generate per sequence (after the prefix when priming).")
flags.DEFINE_integer("seed", 0, "Seed of the stateless sampling noise (0 to 2^31 - 1): the same seed gives the "
                     "same samples.")
flags.DEFINE_float("temperature", 1.0, "Scales the latent prior noise and the output distribution (in (0, 100]; "
                   "< 1: tidier, less varied samples).")
flags.DEFINE_string("out", None, "Output path stem (default: <run_dir>/samples/sample_<seed>, primed: "
                    "sample_<seed>_primed_<split><index>); writes <out>.npz, <out>.json and <out>.png / "
                    "<out>_<i>.wav.")
flags.DEFINE_string("prime_split", None, "Prime with a sequence of this split (train, valid or test) of the "
                    "run's data; default: no priming.")
flags.DEFINE_integer("prime_index", 0, "Index of the priming sequence in --prime_split.")
flags.DEFINE_integer("prime_steps", 100, "Steps of the priming sequence to condition on (fewer if it is shorter).")
flags.DEFINE_string("method", "cached", "cached (constant cost per step) or naive (reference; slow).")
flags.DEFINE_string("data_dir", None, "Overrides the run's --data_dir for priming (if the data has moved).")
flags.DEFINE_string("saved_model", None, "Draw through the `sample` signature of this exported SavedModel "
                    "(export/export.py; a version folder such as exports/demo/1) instead of a run directory.")
flags.DEFINE_integer("max_steps", 5000, "The most steps this command draws per sequence (prefix included) unless "
                     "raised here: a guard against a typo costing hours or all the memory.")
flags.DEFINE_integer("max_samples", 256, "The most sequences this command draws unless raised here.")

METHODS = ("cached", "naive")
PROG = "sample.py"


def check_flags():
    """The first problem with the flags, or None."""
    if FLAGS.saved_model is not None:
        info = os.path.join(FLAGS.saved_model, "assets.extra", "tfhier_export.json")
        if FLAGS.run_dir or FLAGS.prime_split is not None:
            return "--saved_model draws from an export alone: drop --run_dir and --prime_split"
        if not os.path.exists(os.path.join(FLAGS.saved_model, "saved_model.pb")):
            return f"--saved_model={FLAGS.saved_model} holds no saved_model.pb (give a version folder, e.g. exports/demo/1)"
        if not os.path.exists(info):
            return f"--saved_model={FLAGS.saved_model} has no {info}: not exported by export/export.py"
        try:
            with open(info, encoding="utf-8") as f:
                if not isinstance(json.load(f), dict):
                    raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            return f"{info}: unreadable ({e}); expected the JSON object export/export.py writes"
        if not FLAGS.out:
            return "--out is required with --saved_model (an export folder is never written to)"
    elif not FLAGS.run_dir:
        return "--run_dir is required (a training run directory), or --saved_model (an export)"
    else:
        from tfhier.runs import run_dir_problem  # no TensorFlow

        problem = run_dir_problem(FLAGS.run_dir)
        if problem:
            return problem
    for name in ("num_samples", "num_steps", "prime_steps", "max_steps", "max_samples"):
        if FLAGS[name].value < 1:
            return f"--{name} must be an integer >= 1, got {FLAGS[name].value}"
    total = FLAGS.num_steps + (FLAGS.prime_steps if FLAGS.prime_split is not None else 0)
    if total > FLAGS.max_steps:
        return (f"--num_steps={FLAGS.num_steps}{' plus --prime_steps' if FLAGS.prime_split is not None else ''} is "
                f"more than --max_steps={FLAGS.max_steps}; raise --max_steps to draw that many")
    if FLAGS.num_samples > FLAGS.max_samples:
        return f"--num_samples={FLAGS.num_samples} is more than --max_samples={FLAGS.max_samples}; raise --max_samples"
    from tfhier.rundir import writable_problem  # no TensorFlow

    out_dir = os.path.dirname(os.path.abspath(FLAGS.out)) if FLAGS.out else os.path.join(FLAGS.run_dir, "samples")
    problem = writable_problem(out_dir, "--out" if FLAGS.out else "--run_dir")
    if problem:
        return problem
    from tfhier.checks import free_space_problem

    # samples.npz (float32) and a picture per sample (or WAV): a generous bound, checked before drawing
    need = 2 ** 20 + FLAGS.num_samples * (total * 64 + 2 ** 20)
    problem = free_space_problem(out_dir, need, "--out" if FLAGS.out else "--run_dir")
    if problem:
        return problem
    from tfhier import checks  # the Python API's checks too

    try:
        checks.temperature("--temperature", FLAGS.temperature)
        checks.seed("--seed", FLAGS.seed)
    except ValueError as e:
        return str(e)
    if FLAGS.method not in METHODS:
        return f"--method must be one of {list(METHODS)}, got {FLAGS.method!r}"
    if FLAGS.prime_split is not None and FLAGS.prime_split not in SPLITS:
        return f"--prime_split must be one of {list(SPLITS)}, got {FLAGS.prime_split!r}"
    if FLAGS.prime_index < 0:
        return f"--prime_index must be >= 0, got {FLAGS.prime_index}"
    return None


def parse_flags(argv):
    """absl's parsing, but a bad flag is one line on stderr and exit status 1 (no usage dump)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        sys.exit(1)


def draw(model, method, num_samples, num_steps, seed, temperature, prefix=None):
    """Samples [N, T, D] (numpy); with ``prefix`` [P, D], the prefix followed by ``num_steps`` steps."""
    import numpy as np
    import tensorflow as tf

    seed = tf.constant([seed, 0], tf.int32)
    if prefix is None:
        fn = model.generate if method == "cached" else model.generate_naive
        return fn(num_samples, num_steps, seed, temperature).numpy()
    fn = model.continue_sequences if method == "cached" else model.continue_sequences_naive
    prefixes = np.repeat(prefix[None], num_samples, axis=0).astype(np.float32)
    lengths = np.full([num_samples], len(prefix), np.int32)
    cont = fn(prefixes, lengths, num_steps, seed, temperature).numpy()
    return np.concatenate([prefixes, cont], axis=1)


def main(argv):
    from tfhier.cli import begin

    begin(PROG, argv, check_flags)
    import json
    import time

    from tfhier import runs
    from tfhier import samples as samples_lib
    from tfhier.data import DataError
    from tfhier.fileio import atomic_write

    if FLAGS.saved_model is not None:
        return sample_saved_model(samples_lib)
    try:
        config = runs.read_config(FLAGS.run_dir)
        model, checkpoint, step = runs.load_model(FLAGS.run_dir, FLAGS.checkpoint, config)
        info, kind = config.get("data_info", {}), config.get("kind", "real")
        prefix = None
        if FLAGS.prime_split is not None:
            data = runs.load_run_data(FLAGS.run_dir, config, data_dir=FLAGS.data_dir)
            seqs = data.split(FLAGS.prime_split)
            if FLAGS.prime_index >= len(seqs):
                raise runs.RunError(f"--prime_index={FLAGS.prime_index} is out of range: the {FLAGS.prime_split} "
                                    f"split has {len(seqs)} sequences")
            prefix = seqs[FLAGS.prime_index][: FLAGS.prime_steps]
            info, kind = data.info, data.kind
    except (runs.RunError, DataError, ValueError) as e:
        logging.flush()
        sys.exit(f"{PROG}: error: {e}")

    method = FLAGS.method
    if method == "cached" and not model.has_cached_generator:
        from tfhier.models.base import naive_generation_problem

        total = FLAGS.num_steps + (0 if prefix is None else len(prefix))
        problem = naive_generation_problem(model, total)
        if problem:
            sys.exit(f"{PROG}: error: {problem} (give --method=naive to draw them anyway)")
        print(f"{PROG}: warning: {model.NAME} has no cached generator; drawing with the naive sampler "
              f"(cost quadratic in the length)", file=sys.stderr, flush=True)
        method = "naive"
    name = f"sample_{FLAGS.seed}"
    if prefix is not None:  # never the name of an unprimed sample with this seed (one would overwrite the other)
        name += f"_primed_{FLAGS.prime_split}{FLAGS.prime_index}"
    out = FLAGS.out or os.path.join(FLAGS.run_dir, "samples", name)
    start = time.perf_counter()
    x = draw(model, method, FLAGS.num_samples, FLAGS.num_steps, FLAGS.seed, FLAGS.temperature, prefix)
    seconds = time.perf_counter() - start
    try:
        main_path = samples_lib.save_samples(x, kind, info, out,
                                             prefix_steps=0 if prefix is None else len(prefix))
        meta = {"run_dir": FLAGS.run_dir, "checkpoint": checkpoint, "step": step, "method": method,
                "num_samples": FLAGS.num_samples, "num_steps": FLAGS.num_steps, "seed": [FLAGS.seed, 0],
                "temperature": FLAGS.temperature, "prime_split": FLAGS.prime_split,
                "prime_index": FLAGS.prime_index if prefix is not None else None,
                "prime_steps": int(len(prefix)) if prefix is not None else 0,
                "shape": list(x.shape), "seconds": round(seconds, 3)}

        def write_meta(path):
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps(meta, indent=2) + "\n")

        atomic_write(out + ".json", write_meta)
    except OSError as e:
        sys.exit(f"{PROG}: error: cannot write {out}.*: {e}")
    primed = f", continuing {len(prefix)} steps of {FLAGS.prime_split}[{FLAGS.prime_index}]" if prefix is not None else ""
    print(f"{FLAGS.num_samples} samples x {FLAGS.num_steps} steps ({method}{primed}) from {checkpoint} "
          f"in {seconds:.1f} s", flush=True)
    print(f"written: {out}.npz, {main_path}", flush=True)


def sample_saved_model(samples_lib):
    """``--saved_model``: the export's ``sample`` signature, plotted with the export's data facts."""
    import json
    import time

    from tfhier.fileio import atomic_write

    import tensorflow as tf

    with open(os.path.join(FLAGS.saved_model, "assets.extra", "tfhier_export.json"), encoding="utf-8") as f:
        info = json.load(f)
    loaded = tf.saved_model.load(FLAGS.saved_model)
    start = time.perf_counter()
    try:
        x = loaded.signatures["sample"](
            num_samples=tf.constant(FLAGS.num_samples, tf.int32), num_steps=tf.constant(FLAGS.num_steps, tf.int32),
            seed=tf.constant([FLAGS.seed, 0], tf.int32), temperature=tf.constant(FLAGS.temperature, tf.float32))
    except tf.errors.InvalidArgumentError as e:  # the export's own input checks (e.g. --num_steps > max_steps)
        lines = [line.strip() for line in e.message.splitlines() if line.strip()]
        reason = next((line for line in lines if "assertion failed" in line), lines[-1] if lines else str(e))
        sys.exit(f"{PROG}: error: the export refused the request: {reason}")
    x = x["samples"].numpy()
    seconds = time.perf_counter() - start
    if info.get("units") == "data":  # save_samples maps model units to the data's units itself
        from tfhier.data.units import to_model_units

        x = to_model_units(x, info.get("data_info", {}))
    main_path = samples_lib.save_samples(x, info.get("kind") or "real", info.get("data_info", {}), FLAGS.out)
    meta = {"saved_model": FLAGS.saved_model, "signature": "sample", "num_samples": FLAGS.num_samples,
            "num_steps": FLAGS.num_steps, "seed": [FLAGS.seed, 0], "temperature": FLAGS.temperature,
            "shape": list(x.shape), "seconds": round(seconds, 3)}

    def write_meta(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(meta, indent=2) + "\n")

    atomic_write(FLAGS.out + ".json", write_meta)
    print(f"{FLAGS.num_samples} samples x {FLAGS.num_steps} steps through {FLAGS.saved_model} (signature sample) "
          f"in {seconds:.1f} s", flush=True)
    print(f"written: {FLAGS.out}.npz, {main_path}", flush=True)


def run():
    """The console entry point (``tfhier-sample``)."""
    from tfhier.cli import start

    start(__name__)


if __name__ == "__main__":
    run()
