"""Trains a tfhier model.

    python train.py --flagfile=configs/demo.cfg
    python train.py --flagfile=configs/iam.cfg --data_dir=/data/IAM-OnDB --run_dir=runs/iam

Later flags override the flagfile.  Rerunning with the same --run_dir resumes
from its latest checkpoint.  See README.md.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)

from absl import app, flags, logging  # noqa: E402

from tfhier.data import DATASETS, DEFAULT_HEADS  # noqa: E402
from tfhier.heads import HEADS  # noqa: E402
from tfhier.models import MODELS  # noqa: E402
from tfhier.objectives import KL_REGULARIZERS  # noqa: E402

FLAGS = flags.FLAGS

# What and where.
flags.DEFINE_enum("model", "msstcn", sorted(MODELS), "Model to train.")
flags.DEFINE_enum("dataset", "hershey", list(DATASETS), "Data source (hershey is embedded: no download).")
flags.DEFINE_string("data_dir", None, "Downloaded data: a directory (iam_ondb, audio) or file (polyphonic pickle, "
                    "mnist npz).")
flags.DEFINE_string("run_dir", "runs/demo", "Checkpoints, TensorBoard logs, flags and samples go here.")

# Training.
flags.DEFINE_integer("train_steps", 1000, "Total optimizer steps (a resumed run continues to this count).")
flags.DEFINE_integer("batch_size", 32, "Global batch size (sequences).")
flags.DEFINE_integer("seq_len", 1024, "Training sequences longer than this are cut to a random window of it.")
flags.DEFINE_float("learning_rate", 5e-4, "Adam learning rate (MS-STCN §4: 5e-4).")
flags.DEFINE_integer("lr_decay_steps", 100_000, "Exponential decay: lr * rate^(step/decay_steps).")
flags.DEFINE_float("lr_decay_rate", 0.5, "Exponential decay rate per --lr_decay_steps.")
flags.DEFINE_float("clip_norm", 1.0, "Global gradient-norm clipping threshold (0: none).")
flags.DEFINE_integer("seed", 0, "Seed for initialisation, data order and noise.")
flags.DEFINE_boolean("jit_compile", False, "Compile the training and validation steps with XLA (on CPU no "
                     "faster than graph mode for MS-STCN and uses more memory, bench/train_step.py; try it on GPUs). "
                     "Batches are then padded to a few fixed lengths, since XLA compiles once per shape.")

# Objective.
flags.DEFINE_enum("kl_regularizer", "linear_free_bits", list(KL_REGULARIZERS),
                  "KL term: linear free bits (MS-STCN eq. 16), free bits (eq. 15), beta annealing, or none.")
flags.DEFINE_float("free_bits", 0.5, "Initial free-bits threshold lambda, nats per latent unit and step.")
flags.DEFINE_integer("free_bits_halving_steps", 300_000, "lambda halves every this many steps (smoothly).")
flags.DEFINE_float("beta_start", 0.0, "KL annealing: initial KL weight.")
flags.DEFINE_integer("anneal_steps", 10_000, "KL annealing: steps for the KL weight to reach 1.")

# Logging.
flags.DEFINE_integer("eval_every", 500, "Validation ELBO every this many steps (a Keras 'epoch').")
flags.DEFINE_integer("eval_batches", 0, "Validation batches per evaluation (0: the whole split).")
flags.DEFINE_integer("log_every", 50, "TensorBoard scalars every this many steps (means over them).")
flags.DEFINE_integer("checkpoint_every", 500, "Checkpoint every this many steps (and at the end).")
flags.DEFINE_float("checkpoint_secs", 600.0, "Also checkpoint when this many seconds passed since the last one "
                   "(0: only by steps).")
flags.DEFINE_integer("sample_every", 1000, "Generate and plot samples every this many steps.")
flags.DEFINE_integer("num_samples", 4, "Samples per plot (0: none).")
flags.DEFINE_integer("sample_steps", 400, "Time steps per sample.")
flags.DEFINE_integer("max_nonfinite_steps", 10, "Stop after this many consecutive non-finite losses.")
flags.DEFINE_enum("verbose", "auto", ["auto", "0", "1", "2"],
                  "Keras progress display: 1 progress bar, 2 one line per validation interval (for log files), 0 none.")

# Data options.
flags.DEFINE_integer("sample_rate", 16000, "audio: resample to this rate (Hz).")
flags.DEFINE_integer("frame_width", 200, "audio: waveform samples per time step.")
flags.DEFINE_integer("num_lines", 2000, "hershey: training lines to render.")
flags.DEFINE_string("synthetic_setting", "train", "vhrnn_synthetic: which test setting forms the test split.")

# MS-STCN (appendix A.1; one entry per latent layer, layer 1 = closest to the data).
flags.DEFINE_enum("head", "auto", ["auto"] + sorted(HEADS), "Output distribution (auto: by data kind).")
flags.DEFINE_integer("head_components", 10, "Mixture components of the output head.")
flags.DEFINE_list("channels", "64,64,64,64,64", "Filters per layer.")
flags.DEFINE_list("latent_dims", "8,8,8,4,2", "Latent units per layer and step.")
flags.DEFINE_list("strides", "1,2,2,2,1", "Downsampling factor of each layer relative to the one below.")
flags.DEFINE_string("bu_dilations", "1,1,1,1;1,1,1,1;1,1,1,1;1,1,1,1;1,2,4,8",
                    "Bottom-up dilations: one comma list per layer, layers separated by ';'.")
flags.DEFINE_integer("td_blocks", 2, "WaveNet blocks in each top-down stack.")
flags.DEFINE_integer("kernel_size", 2, "Bottom-up convolution kernel size.")
flags.DEFINE_enum("gen_post", "conditional", ["conditional", "plain"],
                  "How z enters the top-down output stack: eq. 12 conditioning or concatenation.")
flags.DEFINE_enum("downsampling", "strided", ["strided", "sum_pool"],
                  "strided: the paper's strided conv + average; sum_pool: the authors' code.")


def _int_list(flag_name, values):
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--{flag_name} must be a comma-separated list of integers, got {','.join(values)!r}") from None


def model_config_from_flags(data) -> dict:
    """The model's constructor arguments from the flags (see tfhier.models)."""
    head = DEFAULT_HEADS[data.kind] if FLAGS.head == "auto" else FLAGS.head
    if FLAGS.model == "msstcn":
        dilations = [_int_list("bu_dilations", layer.split(",")) for layer in FLAGS.bu_dilations.split(";")]
        return {"head": head, "head_components": FLAGS.head_components,
                "channels": _int_list("channels", FLAGS.channels),
                "latent_dims": _int_list("latent_dims", FLAGS.latent_dims),
                "strides": _int_list("strides", FLAGS.strides), "bu_dilations": dilations,
                "td_blocks": FLAGS.td_blocks, "kernel_size": FLAGS.kernel_size, "gen_post": FLAGS.gen_post,
                "downsampling": FLAGS.downsampling, "noise_seed": FLAGS.seed}
    raise ValueError(f"--model={FLAGS.model} has no flag mapping")


def flags_text() -> str:
    """This script's flags as a flagfile (one --name=value per line)."""
    own = FLAGS.get_key_flags_for_module(sys.argv[0])
    return "".join(f.serialize() + "\n" for f in sorted(own, key=lambda f: f.name) if f.serialize())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from tfhier import training
    from tfhier.data import DataError, load_dataset

    # TF's own INFO lines (checkpoint sharding etc.) drown the progress bar; --verbosity=0 brings them back.
    # Set after importing TF, which resets the level.
    if FLAGS["verbosity"].using_default_value:
        import logging as std_logging

        logging.set_verbosity(logging.WARNING)
        logging.get_absl_handler().setLevel(std_logging.WARNING)

    settings = training.TrainSettings(**{f.name: getattr(FLAGS, f.name)
                                         for f in training.dataclasses.fields(training.TrainSettings)})
    settings.verbose = "auto" if FLAGS.verbose == "auto" else int(FLAGS.verbose)
    try:
        data = load_dataset(FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed, sample_rate=FLAGS.sample_rate,
                            frame_width=FLAGS.frame_width, num_lines=FLAGS.num_lines,
                            setting=FLAGS.synthetic_setting)
        print(f"{FLAGS.dataset}: {len(data.train)} train / {len(data.valid)} valid / {len(data.test)} test "
              f"sequences of {data.feature_dim}-d steps", flush=True)
        training.train(FLAGS.run_dir, FLAGS.model, model_config_from_flags(data), data, settings,
                       flags_text=flags_text())
    except (DataError, training.RunDirError, ValueError, FloatingPointError) as e:
        logging.flush()
        sys.exit(f"train.py: error: {e}")
    print(f"done: {FLAGS.run_dir}", flush=True)


if __name__ == "__main__":
    app.run(main)
