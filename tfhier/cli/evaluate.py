"""Evaluates a trained tfhier run on a data split.

    python evaluate.py --run_dir=runs/demo --split=test --iw_samples=64

Reloads the model (latest checkpoint) from ``--run_dir`` and the run's data
with the flags it was trained with (``R/flags.cfg``), then computes on
full-length sequences: the ELBO, the importance-weighted bound with
``--iw_samples`` samples (Burda et al. 2015), the KL of each latent layer and
the active units of each layer, per sequence and per time step, in nats;
for models with the recurrent step interface also the FIVO bound with
``--fivo_particles`` particles (Maddison et al. 2017).
Writes ``R/eval_<split>.json`` and ``R/eval_<split>.md`` and prints the table.
See tfhier/evaluation.py for the definitions.
"""

from __future__ import annotations

import sys

from tfhier.cli import prepare  # (no TensorFlow)

prepare(__name__)  # python -m tfhier.cli.evaluate: filter stderr before TensorFlow loads

from absl import flags, logging  # noqa: E402

from tfhier.data.base import SPLITS  # noqa: E402  (no TensorFlow)

FLAGS = flags.FLAGS

flags.DEFINE_string("run_dir", None, "Training run directory to evaluate (holds config.json, flags.cfg, "
                    "checkpoints/).")
flags.DEFINE_string("split", "test", "Data split: train, valid or test.")
flags.DEFINE_integer("iw_samples", 16, "K: importance samples per sequence for the importance-weighted bound.")
flags.DEFINE_integer("fivo_particles", None, "Particles of the FIVO bound (models with the recurrent step "
                     "interface: VRNN, SRNN, ...; default: --iw_samples for those, none for the others; 0: none).")
flags.DEFINE_integer("iw_chunk", 1, "Importance samples per forward pass (memory grows with this, not with K).")
flags.DEFINE_integer("batch_size", 16, "Sequences per forward pass (full-length sequences).")
flags.DEFINE_integer("max_sequences", 0, "Evaluate only the first this many sequences of the split (0: all).")
flags.DEFINE_integer("seed", 0, "Seed of the latent samples.")
flags.DEFINE_string("checkpoint", None, "Checkpoint path prefix (.../checkpoints/ckpt-N), or 'best' (the "
                    "checkpoint with the best validation bound, R/best/); default: the latest.")
flags.DEFINE_string("data_dir", None, "Overrides the run's --data_dir (if the data has moved since training).")
flags.DEFINE_integer("plots", 0, "Also plot the first this many sequences: data, KL per step, predicted output "
                     "log-variance, error of the predicted mean (VHRNN Figs. 2-4), to R/plots/ and TensorBoard.")


def check_flags():
    """The first problem with the flags, or None (tfhier.evaluation checks again)."""
    from tfhier.runs import run_dir_problem  # no TensorFlow

    problem = run_dir_problem(FLAGS.run_dir)
    if problem:
        return problem
    if FLAGS.split not in SPLITS:
        return f"--split must be one of {list(SPLITS)}, got {FLAGS.split!r}"
    from tfhier import checks  # no TensorFlow; the same checks as tfhier.evaluation and the Python API

    problem = checks.evaluation_problem(FLAGS.iw_samples, FLAGS.batch_size, FLAGS.iw_chunk, FLAGS.fivo_particles,
                                        FLAGS.plots, FLAGS.max_sequences, FLAGS.seed)
    if problem:
        return problem
    from tfhier.rundir import writable_problem  # no TensorFlow

    # eval_<split>.json/.md (and the plots) go into the run directory: fail now, not after computing everything.
    what = "--run_dir (where eval_<split>.json is written)"
    return writable_problem(FLAGS.run_dir, what) or \
        checks.free_space_problem(FLAGS.run_dir, (1 + 2 * FLAGS.plots) * 2 ** 20, what)


def main(argv):
    from tfhier.cli import begin

    begin("evaluate.py", argv, check_flags)
    from tfhier import evaluation
    from tfhier.data import DataError
    from tfhier.runs import RunError

    def progress(done, total):
        print(f"\rbatch {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    try:
        report = evaluation.evaluate_run(
            FLAGS.run_dir, FLAGS.split, iw_samples=FLAGS.iw_samples, batch_size=FLAGS.batch_size,
            max_sequences=FLAGS.max_sequences, seed=FLAGS.seed, iw_chunk=FLAGS.iw_chunk,
            fivo_particles=FLAGS.fivo_particles, plots=FLAGS.plots,
            checkpoint=FLAGS.checkpoint, data_dir=FLAGS.data_dir, progress=progress)
    except (RunError, DataError, ValueError) as e:
        logging.flush()
        sys.exit(f"evaluate.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit("evaluate.py: interrupted; nothing was written")
    print(evaluation.report_markdown(report), flush=True)
    json_path, md_path = evaluation.output_paths(FLAGS.run_dir, FLAGS.split)
    print(f"written: {json_path}, {md_path}" + "".join(f", {p}" for p in report.get("plots", [])), flush=True)


def run():
    """The console entry point (``tfhier-evaluate``)."""
    from tfhier.cli import start

    start(__name__)


if __name__ == "__main__":
    run()
