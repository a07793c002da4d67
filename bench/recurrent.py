"""Benchmark: the recurrent models' training step and generation on CPU.

    python bench/recurrent.py                                  # srnn and vrnn, every objective
    python bench/recurrent.py --models=srnn --objectives=elbo --steps=10

For each model (built from its JSB flagfile, ``configs/<model>_jsb.cfg``, on
88-key piano-roll-sized random 0/1 inputs) and each objective (ELBO; IWAE and
FIVO with ``--particles``): training steps per second at
``--batch_size`` x ``--seq_len`` (graph mode, as train.py runs it; timed
after 2 warm-up steps that include tracing), and the generation time of
``--gen_samples`` x ``--gen_steps`` with the cached recurrence (minimum of 3
warm calls).  Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

from absl import app, flags  # noqa: E402

flags.DEFINE_list("models", ["srnn", "vrnn"], "Models to time (each from configs/<model>_jsb.cfg).")
flags.DEFINE_list("objectives", ["elbo", "iwae", "fivo"], "Objectives to time the training step with.")
flags.DEFINE_integer("particles", 4, "K of IWAE and FIVO.")
flags.DEFINE_integer("batch_size", 32, "Sequences per training step.")
flags.DEFINE_integer("seq_len", 256, "Steps per training sequence.")
flags.DEFINE_integer("steps", 5, "Timed training steps (after 2 warm-up steps).")
flags.DEFINE_integer("gen_samples", 1, "Sequences per generation call.")
flags.DEFINE_integer("gen_steps", 700, "Steps per generated sequence.")
flags.DEFINE_boolean("jit_compile", False, "XLA-compile the training step (train.py --jit_compile).")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jsb_model(name):
    from tfhier.models import MODELS, build_model
    from tfhier.runs import parse_flags_text

    path = os.path.join(REPO, "configs", f"{name}_jsb.cfg")
    with open(path, encoding="utf-8") as f:
        values = parse_flags_text(f.read(), path)
    config = {h.name: h.parse(values[h.name], f"{path}: --{h.name}") for h in MODELS[name].HPARAMS if h.name in values}
    return build_model(name, 88, config).build_for_data(), os.path.relpath(path, REPO)


def main(_):
    import numpy as np
    import tensorflow as tf

    from tfhier import training
    from tfhier.data.pipeline import without_autotuning

    rng = np.random.default_rng(0)
    x = (rng.random((FLAGS.batch_size, FLAGS.seq_len, 88)) < 0.05).astype(np.float32)
    mask = np.ones((FLAGS.batch_size, FLAGS.seq_len), np.float32)
    # As the trainer's pipelines: with autotuning on, fit() returns only when the iterator's autotuning thread
    # next wakes (tfhier.data.pipeline.without_autotuning), which the timing would include.
    ds = without_autotuning(tf.data.Dataset.from_tensors((x, mask)).repeat())
    reports = []
    for name in FLAGS.models:
        model, config = jsb_model(name)
        entry = {"model": name, "config": f"{config} model, random weights", "params": model.count_params(),
                 "train": []}
        for objective in FLAGS.objectives:
            settings = training.TrainSettings(objective=objective, num_particles=FLAGS.particles,
                                              kl_regularizer="none")
            model.compile(optimizer=training.make_optimizer(settings), objective=training.make_objective(settings),
                          jit_compile=FLAGS.jit_compile)
            # As the trainer does: variables made inside the first trace make tf.function trace the step twice
            # (on the iam.cfg model: 0.2 GB more peak RSS and twice the warm-up).
            model.optimizer.build(model.trainable_variables)
            start = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
            warmup = time.perf_counter() - start
            start = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=FLAGS.steps, verbose=0)
            elapsed = time.perf_counter() - start
            entry["train"].append({
                "objective": objective, "particles": FLAGS.particles if objective != "elbo" else 1,
                "batch_size": FLAGS.batch_size, "seq_len": FLAGS.seq_len, "timed_steps": FLAGS.steps,
                "jit_compile": FLAGS.jit_compile,
                "steps_per_second": round(FLAGS.steps / elapsed, 3), "seconds_per_step": round(elapsed / FLAGS.steps, 3),
                "sequences_per_second": round(FLAGS.batch_size * FLAGS.steps / elapsed, 2),
                "warmup_seconds_2_steps_incl_tracing": round(warmup, 1)})
            print(f"{name} {objective}: {entry['train'][-1]['steps_per_second']} steps/s", file=sys.stderr, flush=True)
        seed = tf.constant([0, 0], tf.int32)
        fn = tf.function(lambda n, t, s: model.generate(n, t, s), autograph=False)
        n, t = tf.constant(FLAGS.gen_samples), tf.constant(FLAGS.gen_steps)
        start = time.perf_counter()
        fn(n, t, seed).numpy()
        first = time.perf_counter() - start
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            fn(n, t, seed).numpy()
            walls.append(time.perf_counter() - start)
        entry["generate"] = {"num_samples": FLAGS.gen_samples, "num_steps": FLAGS.gen_steps,
                             "first_call_s_incl_tracing": round(first, 2), "warm_s": round(min(walls), 4),
                             "ms_per_step": round(1e3 * min(walls) / FLAGS.gen_steps, 4)}
        reports.append(entry)
    print(json.dumps({"benchmark": "recurrent", "models": reports,
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2),
                      "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
                      "machine": platform.machine(), "tensorflow": tf.__version__}, indent=1))


if __name__ == "__main__":
    app.run(main)
