"""tfhier's command lines, also runnable from an installed package.

    python -m tfhier.cli.train --flagfile=configs/demo.cfg     (or: tfhier-train ..., or python train.py ...)
    python -m tfhier.cli.evaluate --run_dir=R                  (tfhier-evaluate, python evaluate.py)
    python -m tfhier.cli.sample --run_dir=R                    (tfhier-sample, python sample.py)
    python -m tfhier.cli.export --run_dir=R --export_base=E    (tfhier-export, python export/export.py)

The scripts in the repository root are thin wrappers over these modules.  This package module imports
no TensorFlow, so that :func:`tfhier.quiet.install` runs before TensorFlow's C++ runtime first writes.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings


def prepare(module_name: str):
    """What every command-line module does first, when imported, before absl and TensorFlow load.

    Run as ``python -m tfhier.cli.X`` (``module_name`` is then ``"__main__"``), it filters stderr
    (:func:`tfhier.quiet.install`), as :func:`start` does for the other ways in; TensorFlow's C++ INFO lines are
    off unless ``TF_CPP_MIN_LOG_LEVEL`` says otherwise, and Python's DeprecationWarnings are not shown.
    """
    if module_name == "__main__":
        from tfhier import quiet

        quiet.install()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def start(module_name: str):
    """Runs the command line ``module_name`` (e.g. ``tfhier.cli.train``) under absl's ``app.run``.

    Its flags are registered as key flags of the running script as well, so ``--help`` lists them
    whether the script is ``train.py``, ``tfhier-train`` or ``python -m tfhier.cli.train``.
    """
    from tfhier import quiet

    quiet.install()
    module = importlib.import_module(module_name)
    from absl import app, flags

    main = sys.modules.get("__main__")
    if main is not None and main is not module:
        main.__doc__ = module.__doc__  # absl's --help prints the main module's docstring
    main_name = sys.argv[0]
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(main_name, flag)
    app.run(module.main, flags_parser=getattr(module, "parse_flags", app.parse_flags_with_usage))


def begin(prog: str, argv, check_flags=None):
    """What every command line does first: absl's logging at WARNING unless ``--verbosity`` was given, no
    positional arguments, and ``check_flags()`` (a problem's text, or None) run before TensorFlow is imported,
    so that bad flags fail in a second. Exits with ``"<prog>: error: ..."``.
    """
    from absl import flags, logging

    # (absl sets the flag's value when it installs its log handler: "present" tells whether the user gave it)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        sys.exit(f"{prog}: error: unexpected arguments: {' '.join(argv[1:])}")
    problem = check_flags() if check_flags is not None else None
    if problem:
        sys.exit(f"{prog}: error: {problem}")


def quiet_tensorflow_logging():
    """TensorFlow's own INFO lines (checkpoint sharding, renamed resource inputs) at WARNING, unless
    ``--verbosity`` was given. Call after importing TensorFlow and TFP, which reset absl's level."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        import logging as std_logging

        logging.set_verbosity(logging.WARNING)
        logging.get_absl_handler().setLevel(std_logging.WARNING)


def train():
    """``tfhier-train``."""
    start("tfhier.cli.train")


def evaluate():
    """``tfhier-evaluate``."""
    start("tfhier.cli.evaluate")


def sample():
    """``tfhier-sample``."""
    start("tfhier.cli.sample")


def export():
    """``tfhier-export``."""
    start("tfhier.cli.export")
