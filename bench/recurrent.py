"""Benchmark: the recurrent models' training step (graph mode and XLA) and generation on CPU, and side by side
with public PyTorch peers.

    python bench/recurrent.py                                          # every recurrent config, both modes
    python bench/recurrent.py --configs=srnn_jsb --objectives=elbo --modes=graph,xla --batch_size=16 --seq_len=200
    python bench/recurrent.py --configs=vhrnn_jsb,vrnn_jsb --objectives=fivo --batch_size=4
    python bench/recurrent.py --configs=srnn_jsb --objectives=elbo --batch_size=16 --seq_len=200 \\
        --peer_python=$S/torchenv/bin/python --peer_driver=bench/peers/bench_recurrent_peer.py \\
        --peer_dir=$S/benchmarking-lvms --pairs=4

Each config is a flagfile (``configs/<name>.cfg``: the model and its sizes) trained on random 0/1 inputs of its
data's width (88 keys; 2 for the VHRNN synthetic data, Gaussian inputs there), at ``--batch_size`` x ``--seq_len``
(0: the config's own), with each objective of ``--objectives`` (``config``: the config's own; IWAE and FIVO with
``--particles``), in each mode of ``--modes``: ``graph`` (tf.function) and ``xla`` (the step XLA-compiled, as
``train.py --jit_compile``); ``default`` is what train.py does without the flag (the model's
``jit_compile_default``).  Timed after 2 warm-up steps (tracing and XLA compilation), ``--steps`` steps; the
optimizer is built first, as the trainer does.  ``--gen_steps`` > 0 also times one cached generation call.

Every (config, objective, mode) runs in a process of its own, so its ``peak_rss_gb`` is its own.  With
``--peer_driver`` each run is paired with the peer's (``bench/peers/bench_recurrent_peer.py``: the public
PyTorch SRNN / VRNN whose setup docs/benchmarks.md gives), alternating peer and tfhier ``--pairs`` times,
one process at a time, and the JSON gives each pair and the range of the ratio.  Every figure carries the host's
steal over its process (``host_steal_fraction``, bench/hoststat.py): compare only figures from an idle machine.
Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

from absl import app, flags  # noqa: E402

from hoststat import cpu_jiffies, steal_fraction  # noqa: E402

CONFIGS = ["srnn_jsb", "vrnn_jsb", "vhrnn_jsb", "vosp_jsb", "vrnn_synthetic", "vhrnn_synthetic"]
flags.DEFINE_list("configs", CONFIGS, "Flagfiles configs/<name>.cfg to time (their model and sizes).")
flags.DEFINE_list("objectives", ["config"], "Objectives (elbo, iwae, fivo; 'config': the config's own).")
flags.DEFINE_list("modes", ["graph", "xla"], "graph, xla, or default (train.py's choice for the model).")
flags.DEFINE_integer("particles", 4, "K of IWAE and FIVO.")
flags.DEFINE_integer("batch_size", 0, "Sequences per training step (0: the config's --batch_size).")
flags.DEFINE_integer("seq_len", 200, "Steps per training sequence (0: the config's --seq_len).")
flags.DEFINE_integer("steps", 5, "Timed training steps (after 2 warm-up steps).")
flags.DEFINE_integer("gen_steps", 0, "Steps of one timed cached generation call (0: none).")
flags.DEFINE_integer("gen_samples", 1, "Sequences per generation call.")
flags.DEFINE_string("peer_python", None, "Python of the peer's venv (e.g. $S/torchenv/bin/python).")
flags.DEFINE_string("peer_driver", None, "Path of bench/peers/bench_recurrent_peer.py (run by --peer_python).")
flags.DEFINE_string("peer_dir", None, "The peer's checkout (benchmarking-lvms for SRNN, DVAE for VRNN).")
flags.DEFINE_integer("pairs", 4, "With --peer_driver: alternating (peer, tfhier) pairs per run.")
flags.DEFINE_string("one", None, "(internal) time this one config:objective:mode in this process.")
FLAGS = flags.FLAGS


def config_values(name):
    from tfhier.runs import parse_flags_text

    path = os.path.join(REPO, "configs", f"{name}.cfg")
    with open(path, encoding="utf-8") as f:
        return parse_flags_text(f.read(), path), os.path.relpath(path, REPO)


def build(name):
    """The config's model (random weights) and its flag values."""
    from tfhier.models import MODELS, build_model

    values, path = config_values(name)
    model_name = values["model"]
    config = {h.name: h.parse(values[h.name], f"{path}: --{h.name}") for h in MODELS[model_name].HPARAMS
              if h.name in values}
    from tfhier.data import dataset_shape

    width = dataset_shape("vhrnn_synthetic")[1] if values.get("dataset") == "vhrnn_synthetic" else 88
    return build_model(model_name, width, config).build_for_data(), values, path, width


def time_one(spec):
    """One config:objective:mode in this process: a dict of figures."""
    import numpy as np
    import tensorflow as tf

    from tfhier import training
    from tfhier.data.pipeline import without_autotuning

    name, objective, mode = spec.split(":")
    model, values, path, width = build(name)
    objective = values.get("objective", "elbo") if objective == "config" else objective
    batch = FLAGS.batch_size or int(values.get("batch_size", 16))
    seq_len = FLAGS.seq_len or int(values.get("seq_len", 200))
    rng = np.random.default_rng(0)
    if width == 88:
        x = (rng.random((batch, seq_len, width)) < 0.05).astype(np.float32)
    else:
        x = rng.normal(size=(batch, seq_len, width)).astype(np.float32)
    mask = np.ones((batch, seq_len), np.float32)
    ds = without_autotuning(tf.data.Dataset.from_tensors((x, mask)).repeat())
    settings = training.TrainSettings(objective=objective, num_particles=FLAGS.particles, kl_regularizer="none",
                                      clip_norm=1.0)
    jit = {"graph": False, "xla": True, "default": None}[mode]
    jit = training.resolve_jit_compile(jit, model, tf.distribute.get_strategy())
    model.compile(optimizer=training.make_optimizer(settings), objective=training.make_objective(settings),
                  jit_compile=jit)
    model.optimizer.build(model.trainable_variables)  # as the trainer does (else the step is traced twice)
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    warmup = time.perf_counter() - start
    jiffies, cpu0 = cpu_jiffies(), time.process_time()
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=FLAGS.steps, verbose=0)
    elapsed = time.perf_counter() - start
    out = {"config": path, "model": model.NAME, "params": model.count_params(), "objective": objective,
           "particles": FLAGS.particles if objective != "elbo" else 1, "mode": mode, "jit_compile": jit,
           "batch_size": batch, "seq_len": seq_len, "timed_steps": FLAGS.steps,
           "steps_per_second": round(FLAGS.steps / elapsed, 3),
           "sequences_per_second": round(batch * FLAGS.steps / elapsed, 2),
           "cpu_per_wall_timed": round((time.process_time() - cpu0) / elapsed, 2),
           "host_steal_fraction": steal_fraction(jiffies, cpu_jiffies()),
           "warmup_seconds_2_steps_incl_compilation": round(warmup, 1)}
    if FLAGS.gen_steps > 0:
        seed = tf.constant([0, 0], tf.int32)
        n, t = tf.constant(FLAGS.gen_samples), tf.constant(FLAGS.gen_steps)
        start = time.perf_counter()
        model.generate(n, t, seed).numpy()
        first = time.perf_counter() - start
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            model.generate(n, t, seed).numpy()
            walls.append(time.perf_counter() - start)
        out["generate"] = {"num_samples": FLAGS.gen_samples, "num_steps": FLAGS.gen_steps,
                           "first_call_s": round(first, 2), "warm_s": round(min(walls), 4)}
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)
    return out


def run_process(cmd):
    """Runs ``cmd``: its last JSON line, with its own peak RSS (wait4) and the host's steal over its run."""
    jiffies = cpu_jiffies()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{(out + err)[-3000:]}")
    result = json.loads(lines[-1])
    result.setdefault("host_steal_fraction_process", steal_fraction(jiffies, cpu_jiffies()))
    return result


def peer_command(model_name, batch, seq_len):
    return [FLAGS.peer_python, FLAGS.peer_driver, f"--model={model_name}", f"--peer_dir={FLAGS.peer_dir}",
            f"--batch_size={batch}", f"--seq_len={seq_len}", f"--steps={FLAGS.steps}"]


def main(argv):
    del argv
    if FLAGS.one:
        print(json.dumps(time_one(FLAGS.one)))
        return
    import tensorflow as tf

    passed = [f"--steps={FLAGS.steps}", f"--particles={FLAGS.particles}", f"--batch_size={FLAGS.batch_size}",
              f"--seq_len={FLAGS.seq_len}", f"--gen_steps={FLAGS.gen_steps}", f"--gen_samples={FLAGS.gen_samples}"]
    runs = []
    for name in FLAGS.configs:
        for objective in FLAGS.objectives:
            for mode in FLAGS.modes:
                tfhier_cmd = [sys.executable, os.path.abspath(__file__), f"--one={name}:{objective}:{mode}", *passed]
                if not FLAGS.peer_driver:
                    runs.append(run_process(tfhier_cmd))
                    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
                    continue
                values, _ = config_values(name)
                batch = FLAGS.batch_size or int(values.get("batch_size", 16))
                seq_len = FLAGS.seq_len or int(values.get("seq_len", 200))
                pairs = []
                for _ in range(FLAGS.pairs):
                    peer = run_process(peer_command(values["model"], batch, seq_len))
                    ours = run_process(tfhier_cmd)
                    pairs.append({"peer": peer, "tfhier": ours,
                                  "ratio": round(ours["steps_per_second"] / peer["steps_per_second"], 2)})
                    print(json.dumps(pairs[-1]["ratio"]), ours["steps_per_second"], peer["steps_per_second"],
                          file=sys.stderr, flush=True)
                ratios = [p["ratio"] for p in pairs]
                runs.append({"config": name, "objective": objective, "mode": mode, "pairs": pairs,
                             "ratio_min": min(ratios), "ratio_max": max(ratios),
                             "tfhier_steps_per_second": [p["tfhier"]["steps_per_second"] for p in pairs],
                             "peer_steps_per_second": [p["peer"]["steps_per_second"] for p in pairs],
                             "tfhier_peak_rss_gb": [p["tfhier"]["peak_rss_gb"] for p in pairs],
                             "peer_peak_rss_gb": [p["peer"].get("peak_rss_gb") for p in pairs]})
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    print(json.dumps({"benchmark": "recurrent", "runs": runs, "cpu_model": cpu_model, "cpu_count": os.cpu_count(),
                      "load_average_1min": round(os.getloadavg()[0], 2), "machine": platform.machine(),
                      "tensorflow": tf.__version__}, indent=1))


if __name__ == "__main__":
    app.run(main)
