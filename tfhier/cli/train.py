"""Trains a tfhier model.

    python train.py --flagfile=configs/demo.cfg
    python train.py --flagfile=configs/iam.cfg --data_dir=/data/IAM-OnDB --run_dir=runs/iam

Later flags override the flagfile.  Rerunning with the same --run_dir resumes
from its latest checkpoint.  See README.md.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from tfhier.cli import prepare  # (no TensorFlow)

prepare(__name__)  # python -m tfhier.cli.train: filter stderr before TensorFlow loads

from absl import flags, logging  # noqa: E402

from tfhier.data import DATASETS, all_sources  # noqa: E402
from tfhier.data import sources as data_sources  # noqa: E402
from tfhier.models import MODELS  # noqa: E402
from tfhier.models import define_flags as define_model_flags  # noqa: E402
from tfhier.objectives import KL_REGULARIZERS, OBJECTIVES  # noqa: E402

FLAGS = flags.FLAGS

# What and where.
flags.DEFINE_enum("model", "msstcn", sorted(MODELS), "Model to train: " + "; ".join(
    f"{name}: {cls.DESCRIPTION}" for name, cls in sorted(MODELS.items())) + ".")
flags.DEFINE_enum("dataset", "hershey", list(DATASETS), "Data source: " + "; ".join(
    f"{s.name}: {s.description}" for s in all_sources()) + ".")
flags.DEFINE_string("data_dir", None, "The data: " + "; ".join(
    f"{s.name}: {s.data_dir}" for s in all_sources() if s.data_dir) + ".")
flags.DEFINE_string("run_dir", "runs/demo", "Checkpoints, TensorBoard logs, flags and samples go here.")

# Training.
flags.DEFINE_integer("train_steps", 1000, "Total optimizer steps (a resumed run continues to this count).")
flags.DEFINE_integer("batch_size", 32, "Global batch size (sequences).")
flags.DEFINE_integer("seq_len", 1024, "Training sequences longer than this are cut to a random window of it.")
flags.DEFINE_float("learning_rate", 5e-4, "The optimizer's learning rate (step rate) before decay (MS-STCN §4: 5e-4).")
flags.DEFINE_integer("lr_decay_steps", 100_000, "Exponential decay: lr * rate^(step/decay_steps).")
flags.DEFINE_float("lr_decay_rate", 0.5, "Exponential decay rate per --lr_decay_steps.")
flags.DEFINE_integer("lr_decay_start", 0, "Steps at the initial learning rate before the decay begins; then "
                     "lr * rate^((step - start)/decay_steps).")
flags.DEFINE_float("clip_norm", 1.0, "Global gradient-norm clipping threshold (0: none).")
flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay per step (with Adam: AdamW); 0: none.")
flags.DEFINE_enum("optimizer", "adam", ["adam", "nesterov_rmsprop"], "adam: Adam (MS-STCN §4 and most papers); "
                  "nesterov_rmsprop: rmsprop with Nesterov momentum, STORN's optimizer (appendix 'Details on "
                  "learning'; --momentum, --rms_decay).")
flags.DEFINE_float("adam_epsilon", 1e-7, "Adam's epsilon (Keras' default; the MS-STCN authors' code uses 1e-8).")
flags.DEFINE_float("momentum", 0.9, "--optimizer=nesterov_rmsprop: the Nesterov momentum (STORN Table 2: 0 to 0.995).")
flags.DEFINE_float("rms_decay", 0.9, "--optimizer=nesterov_rmsprop: the decay of the moving average of squared "
                   "gradients (STORN Table 2: 0.8, 0.9).")
flags.DEFINE_integer("seed", 0, "Seed for initialisation, data order and noise.")
flags.DEFINE_boolean("jit_compile", None, "Compile the training and validation steps with XLA. Default: what the "
                     "model declares (jit_compile_default), on one device only (--strategy=mirrored|multi_worker "
                     "train in graph mode unless --jit_compile is given). Measured on a 2-vCPU AMD EPYC (Zen 2) with "
                     "bench/recurrent.py at the configs' sizes: on for VRNN and VHRNN (XLA 1.5-2.6x graph mode's "
                     "steps/s with the ELBO at 16 x 200, 1.7-7.9x with FIVO at batch 4); off for SRNN (graph mode "
                     "1.1-1.6x XLA's, 1.2 GB peak memory against 2.0), VOSP and VRAE (graph mode 1.7-2.1x with the "
                     "ELBO), and for the convolutional models (MS-STCN, STCN, WaveNet: bench/train_step.py found XLA "
                     "no faster on CPU, with more memory). With XLA, batches are padded to a few fixed lengths, "
                     "since it compiles once per shape; docs/benchmarks.md has the figures.")
flags.DEFINE_boolean("mixed_precision", False, "Train the convolutional models under Keras' mixed_bfloat16 policy: "
                     "layers compute in bfloat16, distributions, KLs and losses in float32, weights and checkpoints "
                     "stay float32 (evaluate.py, sample.py and export run in float32). bench/train_step.py "
                     "--mixed_precision measures what it gains on a machine (docs/training.md, \"Mixed precision\").")

# Devices.
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"], "tf.distribute strategy: "
                  "default (one device), mirrored (MirroredStrategy over every GPU, else over the --cpu_devices "
                  "logical CPUs) or multi_worker (MultiWorkerMirroredStrategy; cluster and role from the TF_CONFIG "
                  "environment variable; the chief writes --run_dir); --batch_size is the global batch, split evenly "
                  "over all replicas.")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into this many logical devices (e.g. to run --strategy=mirrored "
                     "without GPUs); 0: as it is.")
flags.DEFINE_float("worker_timeout", 300.0, "multi_worker: seconds to wait for every worker of TF_CONFIG to start; "
                   "then the command ends naming the addresses that do not answer (SIGTERM / Ctrl-C end the wait "
                   "at once).")

# Objective.
flags.DEFINE_enum("objective", "elbo", list(OBJECTIVES), "Training objective: elbo (with --kl_regularizer), iwae "
                  "(Burda et al. 2015, --num_particles samples) or fivo (Maddison et al. 2017, --num_particles "
                  "particles; models with the recurrent step interface).")
flags.DEFINE_integer("num_particles", 4, "iwae: importance samples K; fivo: particles K per sequence.")
flags.DEFINE_float("resampling_threshold", 0.5, "fivo: resample when the effective sample size falls below this "
                   "fraction of --num_particles.")
flags.DEFINE_enum("kl_regularizer", "linear_free_bits", list(KL_REGULARIZERS),
                  "elbo: KL term: linear free bits (MS-STCN eq. 16), free bits (eq. 15), beta annealing, or none.")
flags.DEFINE_float("free_bits", 0.5, "Initial free-bits threshold lambda, nats per latent unit and step.")
flags.DEFINE_integer("free_bits_halving_steps", 300_000, "lambda halves every this many steps (smoothly).")
flags.DEFINE_float("beta_start", 0.0, "KL annealing: initial KL weight.")
flags.DEFINE_integer("anneal_steps", 10_000, "KL annealing: steps for the KL weight to reach 1.")

# Logging.
flags.DEFINE_integer("eval_every", 500, "Validation every this many steps (and at --train_steps).")
flags.DEFINE_integer("eval_batches", 0, "Validation batches per evaluation (0: the whole split).")
flags.DEFINE_integer("log_every", 50, "TensorBoard scalars every this many steps (means over them).")
flags.DEFINE_integer("checkpoint_every", 500, "Checkpoint every this many steps (and at the end).")
flags.DEFINE_float("checkpoint_secs", 600.0, "Also checkpoint when this many seconds passed since the last one "
                   "(0: only by steps).")
flags.DEFINE_integer("sample_every", 1000, "Generate and plot samples every this many steps.")
flags.DEFINE_integer("num_samples", 4, "Samples per plot (0: none).")
flags.DEFINE_integer("sample_steps", 400, "Time steps per sample.")
flags.DEFINE_integer("max_nonfinite_steps", 10, "Stop after this many consecutive non-finite losses.")
flags.DEFINE_integer("patience", 0, "Early stopping: stop when this many validations in a row (every --eval_every "
                     "steps) have not improved on the best bound; R/best keeps the best checkpoint (0: train to "
                     "--train_steps).")
flags.DEFINE_boolean("allow_data_change", False, "Resume a run on data whose facts (sizes, normalisation) differ "
                     "from the ones it was trained on (refused otherwise).")
flags.DEFINE_enum("verbose", "auto", ["auto", "0", "1", "2"],
                  "Console: 1 a live line, 2 one line per validation interval (log files), 0 nothing; auto: 1 on a "
                  "terminal, else 2.")

flags.DEFINE_string("model_config", None, "Model hyperparameters as a JSON object (or the path of a JSON file), "
                    "e.g. '{\"channels\": [32, 32]}'; overrides the model flags below.")

# Data options: each source declares its own (SOURCE.options in tfhier/data/*.py); a source's flag given to another
# source is an error.
#: the module absl files this script's flags under (the script's path when it runs as __main__)
FLAGS_MODULE = sys.argv[0] if __name__ == "__main__" else __name__
DATA_OPTIONS = data_sources.define_flags(all_sources(), FLAGS, module_name=FLAGS_MODULE,
                                         reserved={name for name in FLAGS})

# Model hyperparameters: each model declares its own (tfhier/models/*.py HPARAMS); a flag shared by several models
# means the same in each. A model's flag given to a model that does not use it is an error.
_OWN_FLAGS = {name for name in FLAGS}
define_model_flags(FLAGS, module_name=FLAGS_MODULE, reserved=_OWN_FLAGS)


#: train.py --help: the flags by what they are for (data sources' and models' own flags are added by declaration;
#: a flag in no group is listed under "other")
HELP_GROUPS = (
    ("run: what to train, on what, where", ("model", "dataset", "data_dir", "run_dir", "model_config",
                                            "allow_data_change")),
    ("training", ("train_steps", "batch_size", "seq_len", "learning_rate", "lr_decay_steps", "lr_decay_rate",
                  "lr_decay_start", "clip_norm", "weight_decay", "optimizer", "adam_epsilon", "momentum",
                  "rms_decay", "seed", "patience", "jit_compile",
                  "mixed_precision", "max_nonfinite_steps")),
    ("objective", ("objective", "num_particles", "resampling_threshold", "kl_regularizer", "free_bits",
                   "free_bits_halving_steps", "beta_start", "anneal_steps")),
    ("devices", ("strategy", "cpu_devices")),
    ("logging, checkpoints and samples", ("eval_every", "eval_batches", "log_every", "checkpoint_every",
                                          "checkpoint_secs", "sample_every", "num_samples", "sample_steps",
                                          "verbose")),
)


def _model_families() -> list:
    """``[(title, flag names)]``: model hyperparameter flags grouped by the models that use them."""
    from tfhier.models.hparams import flag_table

    by_users = {}
    for name, (_, defaults) in flag_table(MODELS).items():
        by_users.setdefault(tuple(sorted(defaults)), []).append(name)
    ordered = sorted(by_users.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    return [("models: " + (", ".join(users) if len(users) < len(MODELS) else "all"), sorted(names))
            for users, names in ordered]


def help_text() -> str:
    """``--help``: the flags in groups (run, training, objective, devices, logging, each data source, each
    model family), each with its help and default."""
    import textwrap

    own = {f.name: f for f in FLAGS.get_key_flags_for_module(FLAGS_MODULE)}
    groups = [(title, list(names)) for title, names in HELP_GROUPS]
    groups += [(f"data source --dataset={s.name}: {s.description}", [o.name for o in s.options])
               for s in all_sources() if s.options]
    groups += _model_families()
    listed = {n for _, names in groups for n in names}
    rest = sorted(n for n in own if n not in listed)
    if rest:
        groups.append(("other", rest))
    out = [(sys.modules["__main__"].__doc__ or __doc__).strip(), ""]
    for title, names in groups:
        out.append(f"{title}:")
        for name in names:
            flag = own.get(name)
            if flag is None:
                continue
            default = "" if flag.default is None else f" (default: {flag.default_as_str or repr('')})"
            out.append(textwrap.fill(f"--{name}: {flag.help}{default}", width=110, initial_indent="  ",
                                     subsequent_indent="      "))
        out.append("")
    out.append("Also: --flagfile=FILE (flags from a file, one per line), --verbosity, --helpfull (every flag of "
               "every module).")
    return "\n".join(out) + "\n"


def parse_flags(argv):
    """absl's parsing, with ``--help`` / ``-h`` / ``--helpshort`` printing the grouped :func:`help_text`."""
    from absl import app

    if any(a in ("--help", "-h", "-?", "--helpshort", "--nohelp=false") for a in argv[1:]):
        sys.stdout.write(help_text())
        sys.exit(0)
    return app.parse_flags_with_usage(argv)


def flags_text() -> str:
    """This script's flags as a flagfile (one --name=value per line)."""
    own = FLAGS.get_key_flags_for_module(FLAGS_MODULE)
    return "".join(f.serialize() + "\n" for f in sorted(own, key=lambda f: f.name) if f.serialize())


def check_flags():
    """The first problem with the flags that needs no TensorFlow runtime to see (None if none): the cluster, the
    devices, flags of another objective (TrainSettings.validate checks the rest)."""
    from tfhier import cluster

    problem = cluster.cpu_devices_problem(FLAGS.strategy, FLAGS.cpu_devices)
    if problem:
        return problem
    if FLAGS.strategy == "multi_worker":
        problem = cluster.tf_config_problem(os.environ.get("TF_CONFIG")) or \
            cluster.worker_timeout_problem(FLAGS.worker_timeout)
        if problem:
            return f"--strategy=multi_worker: {problem}"
    elif FLAGS["worker_timeout"].present:
        return f"--worker_timeout applies to --strategy=multi_worker, not --strategy={FLAGS.strategy}"
    if FLAGS.objective == "elbo":
        given = [n for n in ("num_particles", "resampling_threshold") if FLAGS[n].present]
        if given:
            return (f"--{given[0]} is a setting of --objective=iwae or fivo; --objective=elbo draws one sample "
                    f"(remove it, or give --objective)")
    return None


def model_config_from_flags(feature_dim, kind) -> dict:
    """The model's hyperparameters from the flags, checked against the limits of tfhier.checks (sizes, and the
    memory one training step needs) and by building the model (no weights, no data)."""
    from tfhier import checks
    from tfhier.models import MODELS, build_model, config_from_flags
    from tfhier.models.hparams import resolve

    config = config_from_flags(FLAGS.model, FLAGS, kind, FLAGS.model_config)
    full = resolve(MODELS[FLAGS.model], config, model_name=FLAGS.model)
    copies = FLAGS.num_particles if FLAGS.objective != "elbo" else 1
    problem = checks.hparams_problem(full) or checks.memory_problem(full, feature_dim, FLAGS.batch_size,
                                                                     FLAGS.seq_len, copies)
    if problem:
        raise ValueError(problem)
    build_model(FLAGS.model, feature_dim, config)  # raises on an unusable combination, naming the flag
    return config


def main(argv):
    from tfhier.cli import begin, quiet_tensorflow_logging

    begin("train.py", argv, check_flags)
    from tfhier import training
    from tfhier.data import DataError, dataset_shape, get_source, load_dataset

    quiet_tensorflow_logging()  # TF's INFO lines drown the progress bar; --verbosity=0 brings them back

    settings = training.TrainSettings(**{f.name: getattr(FLAGS, f.name)
                                         for f in dataclasses.fields(training.TrainSettings)})
    settings.verbose = "auto" if FLAGS.verbose == "auto" else int(FLAGS.verbose)
    try:
        # Every flag is checked before any data is read.
        settings.validate()
        strategy = training.make_strategy(FLAGS.strategy, FLAGS.cpu_devices, FLAGS.worker_timeout)
        training.check_batch_for(strategy, settings)
        training.check_settings_for(FLAGS.model, settings)
        if settings.objective != "elbo":
            given = [n for n in ("kl_regularizer", "free_bits", "free_bits_halving_steps", "beta_start", "anneal_steps")
                     if FLAGS[n].present]
            if given:
                raise ValueError(f"--{given[0]} is a setting of --objective=elbo; --objective={settings.objective} "
                                 f"does not use it")
        unused = {"adam": ("momentum", "rms_decay"), "nesterov_rmsprop": ("adam_epsilon",)}[settings.optimizer]
        given = [n for n in unused if FLAGS[n].present]
        if given:
            raise ValueError(f"--{given[0]} is not a setting of --optimizer={settings.optimizer}")
        source = get_source(FLAGS.dataset)
        data_options = data_sources.options_from_flags(source, DATA_OPTIONS, FLAGS)
        data = None
        if source.shape == "data":  # the files decide the kind and size: read them first
            data = load_dataset(FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed, strict=True, **data_options)
            kind, feature_dim = data.kind, data.feature_dim
        else:
            kind, feature_dim = dataset_shape(FLAGS.dataset, data_dir=FLAGS.data_dir, strict=True, **data_options)
        model_config = model_config_from_flags(feature_dim, kind)
        from tfhier.models import build_model

        training.make_objective(settings).check(build_model(FLAGS.model, feature_dim, model_config))
        if data is None:
            data = load_dataset(FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed, strict=True, **data_options)
        print(f"{FLAGS.dataset}: {len(data.train)} train / {len(data.valid)} valid / {len(data.test)} test "
              f"sequences of {data.feature_dim}-d steps", flush=True)
        model_config["noise_seed"] = FLAGS.seed
        training.train(FLAGS.run_dir, FLAGS.model, model_config, data, settings, flags_text=flags_text(),
                       strategy=strategy, allow_data_change=FLAGS.allow_data_change)
    except training.Preempted as e:
        logging.flush()
        print(f"train.py: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:  # before training began: nothing to save
        sys.exit("train.py: interrupted before training began; nothing was written")
    except (DataError, training.RunDirError, ValueError, FloatingPointError) as e:
        logging.flush()
        sys.exit(f"train.py: error: {e}")
    print(f"done: {FLAGS.run_dir}", flush=True)


def run():
    """The console entry point (``tfhier-train``)."""
    from tfhier.cli import start

    start(__name__)


if __name__ == "__main__":
    run()
