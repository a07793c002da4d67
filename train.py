"""``python train.py ...``: the command line of :mod:`tfhier.cli.train` (see its docstring; also
``python -m tfhier.cli.train`` or ``tfhier-train`` from an installed package)."""

from tfhier.cli import start

if __name__ == "__main__":
    start("tfhier.cli.train")
