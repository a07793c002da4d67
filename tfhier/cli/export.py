"""Exports a trained tfhier run as a SavedModel for TF Serving.

    python export/export.py --run_dir=runs/demo --export_base=exports
    python export/export.py --run_dir=runs/demo --export_base=exports --version=3 --max_steps=2000

Writes ``<export_base>/<model_name>/<version>/`` (TF Serving's layout: it
serves the highest integer version of ``<export_base>/<model_name>``) from the
run's latest checkpoint (or ``--checkpoint``), with the signatures
``serving_default`` (scoring: ELBO, NLL, KL per latent layer), ``sample`` and
``continue``, and ``assets.extra/config.json`` + ``assets.extra/tfhier_export.json``.
``--model_name`` defaults to the run directory's name; ``--version`` to one
above the highest existing version.  An existing version is never
overwritten.  Requests asking for more than ``--max_steps`` steps or
``--max_samples`` samples are refused by the served model (InvalidArgument).
See docs/deployment.md for serving it and tfhier/serving.py for the details.
"""

from __future__ import annotations

import os
import sys

from tfhier.cli import prepare  # (no TensorFlow)

prepare(__name__)  # python -m tfhier.cli.export: filter stderr before TensorFlow loads

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("run_dir", None, "Training run directory to export (holds config.json, checkpoints/).")
flags.DEFINE_string("export_base", None, "Base folder of exports; the SavedModel goes to "
                    "<export_base>/<model_name>/<version>/ (mount <export_base>/<model_name> into TF Serving).")
flags.DEFINE_string("model_name", None, "Model name for TF Serving (default: the run directory's name, with "
                    "characters other than letters, digits, '_', '.', '-' replaced by '_').")
flags.DEFINE_integer("version", None, "Integer version folder to write (default: 1 + the highest existing one). "
                     "An existing version is never overwritten.")
flags.DEFINE_string("checkpoint", None, "Checkpoint path prefix (.../checkpoints/ckpt-N), or 'best' (the run's "
                    "best-validation checkpoint, R/best/); default: the latest.")
flags.DEFINE_integer("max_steps", None, "Largest num_steps the sample and continue signatures accept (and the "
                     "longest prefix continue accepts). Default 5000 (1000 for a model without a cached generator, "
                     "whose sampler costs quadratic time).")
flags.DEFINE_boolean("xla_generation", None, "Run each generation step of the sample and continue signatures as "
                     "an XLA computation (fast; TF Serving's CPU build then needs --xla_cpu_compilation_enabled=true). "
                     "--noxla_generation: plain graph mode (slower; another draw for a seed). Default: on, unless "
                     "TFHIER_XLA_GENERATION=0.")
flags.DEFINE_integer("max_samples", 256, "Largest num_samples the sample signature accepts (and the most "
                     "prefixes continue and serving_default accept).")
flags.DEFINE_integer("max_score_steps", 262_144, "Most steps in all (batch x time) of one serving_default (scoring) "
                     "request: a bound on the memory one request takes.")


def check_flags():
    """The first problem with the flags that needs no TensorFlow to see, or None."""
    from tfhier.runs import run_dir_problem  # no TensorFlow

    problem = run_dir_problem(FLAGS.run_dir)
    if problem:
        return problem
    ckpt_dir = os.path.join(FLAGS.run_dir, "checkpoints")
    if FLAGS.checkpoint is None and not os.path.isfile(os.path.join(ckpt_dir, "checkpoint")):
        return f"--run_dir={FLAGS.run_dir} has no checkpoint in {ckpt_dir} (has the run saved one yet?)"
    if not FLAGS.export_base:
        return "--export_base is required (the folder that will hold <model_name>/<version>/)"
    if FLAGS.version is not None and FLAGS.version < 1:
        return f"--version must be an integer >= 1, got {FLAGS.version}"
    for name in ("max_steps", "max_samples", "max_score_steps"):
        if FLAGS[name].value is not None and FLAGS[name].value < 1:
            return f"--{name} must be an integer >= 1, got {FLAGS[name].value}"
    return None


def main(argv):
    from tfhier.cli import begin, quiet_tensorflow_logging

    begin("export.py", argv, check_flags)
    from tfhier import serving  # imports TensorFlow only when first used

    try:  # the destination, still without TensorFlow
        serving.plan_export(FLAGS.run_dir, FLAGS.export_base, FLAGS.version, FLAGS.model_name)
    except serving.ExportError as e:
        sys.exit(f"export.py: error: {e}")

    import tfhier.models  # noqa: F401  (TensorFlow, Keras, TFP)
    from tfhier.runs import RunError

    quiet_tensorflow_logging()  # TensorFlow's INFO lines while saving; --verbosity=0 brings them back

    try:
        result = serving.export_run(
            FLAGS.run_dir, FLAGS.export_base, version=FLAGS.version, model_name=FLAGS.model_name,
            limits=serving.Limits(max_steps=FLAGS.max_steps, max_samples=FLAGS.max_samples,
                                  max_score_steps=FLAGS.max_score_steps),
            checkpoint=FLAGS.checkpoint, xla_generation=FLAGS.xla_generation)
    except (RunError, serving.ExportError) as e:
        sys.exit(f"export.py: error: {e}")
    except KeyboardInterrupt:  # export_run removed its temporary folder on the way out
        sys.stderr.write("export.py: interrupted; nothing was written\n")
        sys.exit(130)
    names = ", ".join(result.info["signatures"])
    limits = result.info["limits"]
    print(f"exported {FLAGS.run_dir} (checkpoint step {result.step}) as model {result.model_name!r} version "
          f"{result.version}: {result.path}\nsignatures: {names}; limits: max_steps={limits['max_steps']}, "
          f"max_samples={limits['max_samples']}, max_score_steps={limits['max_score_steps']}", flush=True)


def run():
    """The console entry point (``tfhier-export``)."""
    from tfhier.cli import start

    start(__name__)


if __name__ == "__main__":
    run()
