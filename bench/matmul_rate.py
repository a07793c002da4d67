"""Benchmark: this CPU's float32 matrix-product rate through TensorFlow, at the shapes the recurrent models use.

    python bench/matmul_rate.py
    python bench/matmul_rate.py --shapes=3200x500x500,16x300x900 --seconds=2

Each shape ``MxKxN`` is ``[M, K] @ [K, N]`` (2·M·K·N floating-point operations), run
repeatedly in one XLA-compiled loop (so dispatch costs nothing) for about
``--seconds``; reported: GFLOP/s, the best of ``--repeats``.  The large
shapes are what a time-parallel layer costs (rows = batch x steps), the
small ones one step of a loop (rows = batch).  With a training step's
FLOPs (about 6 x parameters x batch x steps for a recurrent model whose
every weight is used once per step: forward 2, backward 4) the large-shape
rate gives the fastest that step can run here: docs/benchmarks.md uses it to
say what limits each model.  Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

from hoststat import cpu_jiffies, steal_fraction  # noqa: E402

flags.DEFINE_list("shapes", ["3200x500x500", "3200x800x900", "3200x88x500", "16x500x500", "16x300x900",
                             "64x300x900", "4x32x128"], "MxKxN shapes to time.")
flags.DEFINE_float("seconds", 1.5, "Approximate seconds per timed run.")
flags.DEFINE_integer("repeats", 3, "Timed runs per shape (the best is reported).")
FLAGS = flags.FLAGS


def rate(m, k, n):
    import tensorflow as tf

    a = tf.random.normal([m, k])
    b = tf.random.normal([k, n]) / (k ** 0.5)

    @tf.function(jit_compile=True)
    def loop(a, b, iters):
        def body(i, acc):
            # each product depends on the previous one, so none is skipped; the sum keeps the values finite
            return i + 1, acc + tf.reduce_sum(tf.matmul(a + acc * 1e-30, b))

        return tf.while_loop(lambda i, acc: i < iters, body, (tf.constant(0), tf.constant(0.0)))[1]

    loop(a, b, tf.constant(2)).numpy()  # compile
    flop = 2.0 * m * k * n
    t0 = time.perf_counter()
    loop(a, b, tf.constant(3)).numpy()
    per = max((time.perf_counter() - t0) / 3, 1e-7)
    iters = max(3, int(FLAGS.seconds / per))
    best = 0.0
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        loop(a, b, tf.constant(iters)).numpy()
        best = max(best, flop * iters / (time.perf_counter() - t0))
    return best / 1e9


def main(argv):
    del argv
    import tensorflow as tf

    start = cpu_jiffies()
    rows = []
    for shape in FLAGS.shapes:
        m, k, n = (int(v) for v in shape.lower().split("x"))
        rows.append({"shape": shape, "gflops_per_second": round(rate(m, k, n), 1)})
    cpu_model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        pass
    print(json.dumps({"benchmark": "matmul_rate", "dtype": "float32", "rows": rows, "cpu_model": cpu_model,
                      "cpu_count": os.cpu_count(), "machine": platform.machine(), "tensorflow": tf.__version__,
                      "host_steal_fraction": steal_fraction(start, cpu_jiffies())}, indent=1))


if __name__ == "__main__":
    app.run(main)
