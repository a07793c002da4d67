"""Imports a checkpoint of the MS-STCN authors' PyTorch code as a tfhier run.

    python -m tfhier.tools.import_authors_msstcn --checkpoint=their_run/model.pt \\
        --options=their_run/options.txt --run_dir=runs/authors_iam \\
        --dataset=iam_ondb --data_dir=/data/IAM-OnDB

``--checkpoint``: their state file (``model.pt`` as their ``ModelState.save_model`` writes it, a dict whose
``'model'`` is the state dict, or a bare state dict), read with ``torch.load(weights_only=True)``, which
runs no code from the file.  ``--options``: their options (``options.txt`` of their run, or a file holding
their ``model_options`` dict as JSON or a Python literal; never executed).  The run directory gets
``config.json`` (the tfhier MS-STCN of :func:`tfhier.tools.authors_msstcn.tfhier_config`), ``flags.cfg``
(the data flags), ``checkpoints/`` and ``best/`` (the imported weights) and ``authors_import.json`` (where
they came from), so ``evaluate.py``, ``sample.py``, ``export/export.py`` and ``tfhier.load_run`` use it like
any run.  Their data conventions are the defaults here: IAM-OnDB offsets divided by their ``X_std``
(``--offset_scale=chung2015``) and audio framed as their ``reshape(frame_size, -1)``
(``--framing=authors``).

Needs PyTorch (``pip install 'tfhier[authors]'``); nothing else in tfhier imports it.
"""

from __future__ import annotations

import ast
import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "Their state file (model.pt of their run, or a state dict).")
flags.DEFINE_string("options", None, "Their options: options.txt of their run, or a JSON / Python-literal file "
                    "holding their model_options dict.")
flags.DEFINE_string("run_dir", None, "The new tfhier run directory (must not exist, or be empty).")
flags.DEFINE_string("dataset", None, "The run's data source (iam_ondb, audio, ...): what evaluate.py and sample.py "
                    "reload. Default: iam_ondb for their IAM-OnDB head, audio otherwise.")
flags.DEFINE_string("data_dir", None, "The run's --data_dir.")
flags.DEFINE_enum("offset_scale", "chung2015", ["std", "chung2015"], "iam_ondb: the offsets' scale (their X_std "
                  "is chung2015).")
flags.DEFINE_enum("framing", "authors", ["consecutive", "authors"], "audio: how samples form a step (theirs: "
                  "authors).")
flags.DEFINE_integer("sample_rate", 16000, "audio: the sampling rate.")
flags.DEFINE_integer("seed", 0, "The run's --seed (its data split).")


class ImportError_(ValueError):
    """The import cannot proceed; the message names the file or flag."""


def read_options(path) -> dict:
    """Their options file: JSON, else a Python literal (``ast.literal_eval``: no code runs)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ImportError_(f"--options={path}: cannot read ({e.strerror or e})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError) as e:
            raise ImportError_(f"--options={path}: neither JSON nor a Python literal ({e})") from None
    if not isinstance(value, dict):
        raise ImportError_(f"--options={path}: expected a dict of their options, got {type(value).__name__}")
    return value


def read_state(path) -> tuple:
    """``(state dict as numpy arrays, the file's other scalar entries)`` of their state file."""
    try:
        import torch
    except ImportError:
        raise ImportError_("importing the authors' checkpoint needs PyTorch, which is not installed: "
                           "pip install 'tfhier[authors]' (or: pip install torch)") from None
    if not os.path.isfile(path):
        raise ImportError_(f"--checkpoint={path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file it cannot (or will not) read
        raise ImportError_(f"--checkpoint={path}: not a state file torch can read without running code "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if not isinstance(ckpt, dict):
        raise ImportError_(f"--checkpoint={path}: expected a dict, got {type(ckpt).__name__}")
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
        raise ImportError_(f"--checkpoint={path}: holds no state dict (expected their model.pt, whose 'model' "
                           f"entry is one, or a state dict)")
    facts = {k: v for k, v in ckpt.items() if k != "model" and isinstance(v, (int, float, str))}
    return {k: v.detach().cpu().numpy() for k, v in state.items()}, facts


def build_model(state, options):
    """The tfhier MS-STCN of their ``state`` and ``options``, with their weights."""
    from tfhier.models import build_model as build
    from tfhier.tools import authors_msstcn as am

    n_channels = am.n_channels_of(state)
    config = am.tfhier_config(options, n_channels, am.normaliser_of(state, options, n_channels))
    model = build("msstcn", n_channels, config).build_for_data()
    am.assign_weights(model, state, options)
    return model


def import_run(checkpoint, options_path, run_dir, dataset=None, data_dir=None, offset_scale="chung2015",
               framing="authors", sample_rate=16000, seed=0):
    """Writes the tfhier run ``run_dir`` of their ``checkpoint`` and options; returns the model."""
    import tensorflow as tf

    from tfhier.data import load_dataset
    from tfhier.fileio import atomic_write
    from tfhier.tools import authors_msstcn as am
    from tfhier.training import model_variables, run_config

    if not run_dir:
        raise ImportError_("--run_dir is required (the new run directory)")
    if os.path.exists(run_dir) and (not os.path.isdir(run_dir) or os.listdir(run_dir)):
        raise ImportError_(f"--run_dir={run_dir} exists and is not empty; the import writes a new run")
    options = read_options(options_path)
    state, facts = read_state(checkpoint)
    model = build_model(state, options)
    kind = am.head_of(am.model_options_of(options)["pred_options"], model.input_dim)[2]
    dataset = dataset or ("iam_ondb" if kind == "handwriting" else "audio")
    frame_width = model.input_dim
    data = load_dataset(dataset, data_dir, seed=seed, sample_rate=sample_rate, frame_width=frame_width,
                        offset_scale=offset_scale, framing=framing)
    if data.feature_dim != model.input_dim:
        raise ImportError_(f"--dataset={dataset}: its steps have {data.feature_dim} values, their model's "
                           f"{model.input_dim}")
    os.makedirs(run_dir, exist_ok=True)
    atomic_write(os.path.join(run_dir, "config.json"), json.dumps(run_config(model, data), indent=2) + "\n")
    flag_lines = [f"--model=msstcn", f"--dataset={dataset}", f"--seed={seed}"]
    if data_dir:
        flag_lines.append(f"--data_dir={data_dir}")
    if dataset == "iam_ondb":
        flag_lines.append(f"--offset_scale={offset_scale}")
    if dataset == "audio":
        flag_lines += [f"--framing={framing}", f"--sample_rate={sample_rate}", f"--frame_width={frame_width}"]
    atomic_write(os.path.join(run_dir, "flags.cfg"), "\n".join(flag_lines) + "\n")
    step = int(facts.get("epoch", 0)) if isinstance(facts.get("epoch", 0), int) else 0
    ckpt = tf.train.Checkpoint(model=model_variables(model))
    for sub in ("checkpoints", "best"):
        tf.train.CheckpointManager(ckpt, os.path.join(run_dir, sub), max_to_keep=1).save(checkpoint_number=step)
    provenance = {"source": am.REPO_URL, "commit": am.REPO_COMMIT, "checkpoint": os.path.abspath(checkpoint),
                  "options": os.path.abspath(options_path), "facts": facts,
                  "model_options": am.model_options_of(options),
                  "channel_order": am.channel_order(options, model.input_dim)}
    atomic_write(os.path.join(run_dir, "authors_import.json"), json.dumps(provenance, indent=2, default=str) + "\n")
    return model


def main(argv):
    if len(argv) > 1:
        sys.exit(f"import_authors_msstcn: error: unexpected arguments: {' '.join(argv[1:])}")
    for name in ("checkpoint", "options", "run_dir"):
        if not getattr(FLAGS, name):
            sys.exit(f"import_authors_msstcn: error: --{name} is required")
    from tfhier.data.base import DataError
    from tfhier.tools.authors_msstcn import AuthorsOptionError

    try:
        model = import_run(FLAGS.checkpoint, FLAGS.options, FLAGS.run_dir, FLAGS.dataset, FLAGS.data_dir,
                           FLAGS.offset_scale, FLAGS.framing, FLAGS.sample_rate, FLAGS.seed)
    except (ImportError_, AuthorsOptionError, DataError) as e:
        sys.exit(f"import_authors_msstcn: error: {e}")
    print(f"{FLAGS.run_dir}: tfhier MS-STCN ({model.count_params():,} parameters) with the weights of "
          f"{FLAGS.checkpoint}")


if __name__ == "__main__":
    app.run(main)
