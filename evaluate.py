"""``python evaluate.py ...``: the command line of :mod:`tfhier.cli.evaluate` (see its docstring; also
``python -m tfhier.cli.evaluate`` or ``tfhier-evaluate`` from an installed package)."""

from tfhier.cli import start

if __name__ == "__main__":
    start("tfhier.cli.evaluate")
