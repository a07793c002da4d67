"""``python export/export.py ...``: the command line of :mod:`tfhier.cli.export` (see its docstring; also
``python -m tfhier.cli.export`` or ``tfhier-export`` from an installed package)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, uninstalled

from tfhier.cli import start  # noqa: E402

if __name__ == "__main__":
    start("tfhier.cli.export")
