"""Benchmark: tfhier's MS-STCN training step back to back with the authors' PyTorch code, on this machine.

    python bench/side_by_side.py --anchor=$S [--pairs=4] [--sizes=128x1024,32x256] [--steps=6]
        [--mixed_precision_too] [--busy_cores=1] [--tfhier_flags='--intra_op_threads=1']

``$S`` is the folder set up as docs/benchmarks.md says (``$S/torchenv`` with torch,
``$S/MS-STCN`` checked out at afd3586, ``$S/bench`` with the drivers of ``bench/authors/``). Nothing of the
authors' code is in this repository: it runs from that folder, in its own process.

For every size, ``--pairs`` pairs are run, each pair the authors' step then tfhier's
(``bench/train_step.py``), one process at a time, so both see the same machine within seconds of each
other. Both time the same model (IAM-OnDB configuration, 64 channels, a 10-component mixture head) on
the same batch shape after warm-up steps; peak memory is each process's own maximum resident set
(``wait4``). Prints one JSON object: every pair's figures and the range of the throughput ratio.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

from absl import app, flags

from hoststat import cpu_jiffies, steal_fraction

flags.DEFINE_string("anchor", None, "Folder with torchenv/, MS-STCN/ and bench/ (docs/benchmarks.md).")
flags.DEFINE_integer("pairs", 4, "Pairs per size (authors, then tfhier).")
flags.DEFINE_list("sizes", ["128x1024", "32x256"], "Batch x sequence length, comma-separated.")
flags.DEFINE_integer("steps", 6, "Timed steps per process (after warm-up).")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads for the authors' code (0: the number of CPUs).")
flags.DEFINE_string("tfhier_flags", "", "Extra flags for bench/train_step.py (e.g. '--jit_compile').")
flags.DEFINE_boolean("mixed_precision_too", False, "Each pair also runs bench/train_step.py --mixed_precision "
                     "(after tfhier's float32 step): the 'tfhier_mp_*' figures and 'ratio_mp'.")
flags.DEFINE_integer("busy_cores", 0, "Run this many CPU-bound processes (a Python busy loop each) for the whole "
                     "benchmark: a shared machine, to compare how each code's step degrades.")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_measured(cmd, env=None):
    """Runs ``cmd``; returns (its last JSON line, its peak RSS in GB, the host's steal share over its run)."""
    jiffies = cpu_jiffies()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{out[-2000:]}")
    return json.loads(lines[-1]), round(usage.ru_maxrss / 1024 ** 2, 2), steal_fraction(jiffies, cpu_jiffies())


def main(argv):
    del argv
    if not FLAGS.anchor:
        raise app.UsageError("--anchor: the folder set up as docs/benchmarks.md says")
    anchor = os.path.abspath(FLAGS.anchor)
    torch_python = os.path.join(anchor, "torchenv", "bin", "python")
    driver = os.path.join(anchor, "bench", "bench_ms_stcn.py")
    for path in (torch_python, driver, os.path.join(anchor, "MS-STCN")):
        if not os.path.exists(path):
            raise app.UsageError(f"--anchor={anchor}: {path} is missing (see docs/benchmarks.md)")
    threads = FLAGS.threads or os.cpu_count()
    env = {**os.environ, "PYTHONPATH": os.path.join(anchor, "MS-STCN")}
    result = {"benchmark": "side_by_side_train_step", "machine": platform.machine(), "cpu_count": os.cpu_count(),
              "processor": _cpu_name(), "load_average_start": os.getloadavg(), "sizes": {}}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(FLAGS.busy_cores)]
    result["busy_cores"] = FLAGS.busy_cores
    try:
        _run_sizes(result, torch_python, driver, env, threads)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    print(json.dumps(result))


def _run_sizes(result, torch_python, driver, env, threads):
    for size in FLAGS.sizes:
        batch, seq_len = (int(v) for v in size.lower().split("x"))
        pairs = []
        for _ in range(FLAGS.pairs):
            authors, authors_rss, authors_steal = run_measured(
                [torch_python, driver, "--mode", "train", "--batch", str(batch), "--seqlen", str(seq_len),
                 "--head", "gmm10", "--sizes", "64", "--steps", str(FLAGS.steps), "--warmup", "2",
                 "--threads", str(threads)], env=env)
            ours, ours_rss, ours_steal = run_measured(
                [sys.executable, os.path.join(REPO, "bench", "train_step.py"), f"--batch_size={batch}",
                 f"--seq_len={seq_len}", f"--steps={FLAGS.steps}", *FLAGS.tfhier_flags.split()])
            pair = {"authors_seq_per_s": authors["seq_per_s"], "authors_peak_rss_gb": authors_rss,
                    "authors_params": authors["params"],
                    "tfhier_seq_per_s": ours["sequences_per_second"], "tfhier_peak_rss_gb": ours_rss,
                    "tfhier_params": ours["params"],
                    "ratio": round(ours["sequences_per_second"] / authors["seq_per_s"], 2),
                    # The hypervisor's steal over each whole process (warm-up included), and over tfhier's
                    # timed steps alone: time the vCPUs were runnable but served another guest.
                    "authors_host_steal": authors_steal, "tfhier_host_steal": ours_steal,
                    "tfhier_host_steal_timed": ours.get("host_steal_fraction")}
            if FLAGS.mixed_precision_too:
                mixed, mixed_rss, _ = run_measured(
                    [sys.executable, os.path.join(REPO, "bench", "train_step.py"), f"--batch_size={batch}",
                     f"--seq_len={seq_len}", f"--steps={FLAGS.steps}", "--mixed_precision",
                     *FLAGS.tfhier_flags.split()])
                pair.update(tfhier_mp_seq_per_s=mixed["sequences_per_second"], tfhier_mp_peak_rss_gb=mixed_rss,
                            ratio_mp=round(mixed["sequences_per_second"] / authors["seq_per_s"], 2))
            pair["load_average"] = os.getloadavg()[0]
            pairs.append(pair)
        ratios = [p["ratio"] for p in pairs]
        if FLAGS.mixed_precision_too:
            result["sizes"].setdefault(size, {}).update(ratio_mp_min=min(p["ratio_mp"] for p in pairs),
                                                        ratio_mp_max=max(p["ratio_mp"] for p in pairs))
        result["sizes"].setdefault(size, {}).update({"pairs": pairs, "ratio_min": min(ratios), "ratio_max": max(ratios),
                                 "tfhier_timesteps_per_s_max": round(max(p["tfhier_seq_per_s"] for p in pairs) *
                                                                     seq_len),
                                 "authors_timesteps_per_s_max": round(max(p["authors_seq_per_s"] for p in pairs) *
                                                                      seq_len)})


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    app.run(main)
