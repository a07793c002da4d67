"""``python sample.py ...``: the command line of :mod:`tfhier.cli.sample` (see its docstring; also
``python -m tfhier.cli.sample`` or ``tfhier-sample`` from an installed package)."""

from tfhier.cli import start

if __name__ == "__main__":
    start("tfhier.cli.sample")
