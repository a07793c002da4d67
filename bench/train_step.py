"""Benchmark: MS-STCN training step (configs/iam.cfg model) on CPU.

    python bench/train_step.py [--batch_size=128] [--seq_len=1024] [--steps=5] [--jit_compile] [--mixed_precision]
        [--flops]

Prints one JSON object: sequences per second over timed steps (after warm-up)
and the process's peak resident memory (which includes the 128 x 1024 batch
and TensorFlow's own allocations), and the time of the first two steps
(tracing, and with --jit_compile the XLA compilation, which a training run
pays once per batch shape).
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
from hoststat import cpu_jiffies, steal_fraction  # noqa: E402

flags.DEFINE_integer("batch_size", 128, "Sequences per step.")
flags.DEFINE_integer("seq_len", 1024, "Steps per sequence.")
flags.DEFINE_integer("steps", 5, "Timed steps (after 2 warm-up steps).")
flags.DEFINE_boolean("jit_compile", False, "XLA-compile the step.")
flags.DEFINE_boolean("mixed_precision", False, "train.py --mixed_precision: layers in bfloat16.")
flags.DEFINE_string("downsampling", "strided", "strided (paper) or sum_pool (authors' code).")
flags.DEFINE_integer("intra_op_threads", 0,
                     "TensorFlow's intra-op thread pool size (0: TensorFlow's default, the CPUs).")
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow's inter-op thread pool size (0: TensorFlow's default).")
flags.DEFINE_boolean("flops", False, "Also count the step's floating-point operations (TensorFlow's profiler over "
                     "the traced step with the batch's static shape) and time a large matrix product in float32 and "
                     "bfloat16: what the step achieves against what this CPU's matrix kernels can do.")
FLAGS = flags.FLAGS


def resident_gb(field="VmRSS"):
    """The process's resident memory now, in GB: all of it (VmRSS), or the pages mapped from files
    (RssFile: shared libraries' code and data, shared with other processes mapping the same files)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return round(kb / 1024 ** 2, 2)


def step_flops(model, x, mask):
    """Floating-point operations of one training step (forward, backward, optimizer), as TensorFlow's profiler
    counts them over the graph traced for the batch's static shape (MatMul, Conv, element-wise ops)."""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    spec = (tf.TensorSpec(x.shape, tf.float32), tf.TensorSpec(mask.shape, tf.float32))
    graph = tf.function(lambda a, b: model.train_step((a, b))).get_concrete_function(*spec).graph
    builder = option_builder.ProfileOptionBuilder
    opts = builder(builder.float_operation()).with_empty_output()
    return model_analyzer.profile(graph, options=opts.build()).total_float_ops


def matmul_gflops(dtype, n=2048, repeats=10):
    """GFLOP/s of an n x n x n matrix product in ``dtype`` (oneDNN's kernels): a practical peak of this CPU."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda m: tf.matmul(m, m))
    product(a).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        product(a).numpy()
    return round(2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9, 1)


def main(_):
    import numpy as np
    import tensorflow as tf

    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    from tfhier import training
    from tfhier.data.pipeline import without_autotuning
    from tfhier.models import MSSTCN
    from tfhier.models.base import precision_policy

    rss_after_import = resident_gb()  # TensorFlow, Keras, TFP and tfhier imported, nothing built
    rss_file_after_import = resident_gb("RssFile")

    with precision_policy(FLAGS.mixed_precision):
        model = MSSTCN(3, head="handwriting", head_components=10, downsampling=FLAGS.downsampling).build_for_data()
    settings = training.TrainSettings(mixed_precision=FLAGS.mixed_precision)
    model.compile(optimizer=training.make_optimizer(settings), objective=training.make_objective(settings),
                  jit_compile=FLAGS.jit_compile)
    # As the trainer does: variables made inside the first trace make tf.function trace the step twice
    # (on the iam.cfg model: 0.2 GB more peak RSS and twice the warm-up).
    model.optimizer.build(model.trainable_variables)
    rss_after_build = resident_gb()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(FLAGS.batch_size, FLAGS.seq_len, 3)).astype(np.float32)
    x[..., 2] = rng.random((FLAGS.batch_size, FLAGS.seq_len)) < 0.05
    mask = np.ones((FLAGS.batch_size, FLAGS.seq_len), np.float32)
    # As the trainer's pipelines: with autotuning on, fit() returns only when the iterator's autotuning thread
    # next wakes (tfhier.data.pipeline.without_autotuning), which the timing would include.
    ds = without_autotuning(tf.data.Dataset.from_tensors((x, mask)).repeat())
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)  # trace (+ XLA compilation) + warm up
    warmup = time.perf_counter() - start
    jiffies = cpu_jiffies()
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=FLAGS.steps, verbose=0)
    elapsed = time.perf_counter() - start
    steal = steal_fraction(jiffies, cpu_jiffies())
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra = {}
    if FLAGS.flops:
        flop = step_flops(model, x, mask)
        extra = {"step_gflop": round(flop / 1e9, 1),
                 "mflop_per_time_step": round(flop / x.shape[0] / x.shape[1] / 1e6, 3),
                 "step_gflop_per_s": round(flop / (elapsed / FLAGS.steps) / 1e9, 1),
                 "matmul_2048_gflop_per_s_float32": matmul_gflops(tf.float32),
                 "matmul_2048_gflop_per_s_bfloat16": matmul_gflops(tf.bfloat16)}
    print(json.dumps({
        "benchmark": "msstcn_train_step", "config": "configs/iam.cfg model", "params": model.count_params(),
        "batch_size": FLAGS.batch_size, "seq_len": FLAGS.seq_len, "jit_compile": FLAGS.jit_compile,
        "mixed_precision": FLAGS.mixed_precision,
        "downsampling": FLAGS.downsampling, "timed_steps": FLAGS.steps,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        # CPU time the hypervisor gave to other guests during the timed steps (bench/hoststat.py).
        "host_steal_fraction": steal,
        "seconds_per_step": round(elapsed / FLAGS.steps, 3),
        "warmup_seconds_2_steps_incl_tracing": round(warmup, 1),
        "sequences_per_second": round(FLAGS.batch_size * FLAGS.steps / elapsed, 2),
        "time_steps_per_second": round(FLAGS.batch_size * FLAGS.seq_len * FLAGS.steps / elapsed),
        "peak_rss_gb": round(peak_kb / 1024 ** 2, 2), "rss_gb_after_import": rss_after_import,
        "rss_file_backed_gb_after_import": rss_file_after_import, "rss_gb_after_build": rss_after_build,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "tensorflow": tf.__version__, **extra}))


if __name__ == "__main__":
    app.run(main)
