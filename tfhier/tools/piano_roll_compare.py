"""How two piano-roll files of the same music set differ: the Boulanger-Lewandowski pickle and the SRNN authors' .npz.

    python -m tfhier.tools.piano_roll_compare \\
        --pickle=$DATA/polyphonic/JSB_Chorales.pkl,$DATA/polyphonic/Nottingham.pkl \\
        --npz=srnn_data/jsb_raw_batchsize16_seqlen100.npz,srnn_data/nottingham_raw_batchsize16_seqlen100.npz

For each pair, on the test split of each file: pieces, steps, notes per step, the share of steps equal to the
step before (per piece, averaged over pieces), and how many of the pickle's pieces are one of the other file's
pieces read at its even steps (the mark of a file sampled twice as often). A bound per step is comparable
between two files only where these agree. Prints a markdown table; ``--out`` also writes it as JSON.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def stats(sequences) -> dict:
    """Pieces, steps, notes per step and the mean share of steps repeating the previous one of ``[T, 88]`` rolls."""
    steps = sum(len(x) for x in sequences)
    repeats = [float(np.all(x[1:] == x[:-1], axis=1).mean()) for x in sequences if len(x) > 1]
    return {"pieces": len(sequences), "steps": int(steps),
            "notes_per_step": float(sum(float(x.sum()) for x in sequences) / max(steps, 1)),
            "repeat_share": float(np.mean(repeats)) if repeats else 0.0}


def even_step_matches(sequences, others) -> int:
    """How many of ``sequences`` equal some piece of ``others`` read at its even steps (0, 2, 4, ...)."""
    count = 0
    for x in sequences:
        count += any(len(y) >= 2 * len(x) - 1 and np.array_equal(y[::2][:len(x)], x) for y in others)
    return count


def compare(pickle_path: str, npz_path: str) -> dict:
    """:func:`stats` of both test splits and :func:`even_step_matches` of the pickle's pieces in the .npz's."""
    from tfhier.data.polyphonic import load_polyphonic, load_srnn_npz

    a = load_polyphonic(pickle_path).test
    b = load_srnn_npz(npz_path).test
    return {"pickle": pickle_path, "npz": npz_path, "pickle_test": stats(a), "npz_test": stats(b),
            "pickle_pieces_at_even_steps_of_npz": even_step_matches(a, b)}


def table_markdown(rows) -> str:
    head = ("| pickle / .npz | test pieces | test steps | notes per step | steps repeating the previous step "
            "| pickle pieces equal to the even steps of an .npz piece |\n|---|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        p, n = r["pickle_test"], r["npz_test"]
        lines.append(f"| {r['pickle']} / {r['npz']} | {p['pieces']} / {n['pieces']} | {p['steps']:,} / {n['steps']:,} "
                     f"| {p['notes_per_step']:.2f} / {n['notes_per_step']:.2f} "
                     f"| {p['repeat_share']:.0%} / {n['repeat_share']:.0%} "
                     f"| {r['pickle_pieces_at_even_steps_of_npz']} of {p['pieces']} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tfhier.tools.piano_roll_compare",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--pickle", required=True, help="comma-separated pickle files (JSB_Chorales.pkl, ...)")
    parser.add_argument("--npz", required=True, help="comma-separated SRNN .npz files, one per --pickle, same order")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    from tfhier.data.base import DataError

    pickles = [p for p in args.pickle.split(",") if p]
    npzs = [p for p in args.npz.split(",") if p]
    if len(pickles) != len(npzs):
        sys.exit(f"piano_roll_compare: error: --pickle names {len(pickles)} file(s) and --npz {len(npzs)}; "
                 "give one .npz per pickle, in the same order")
    try:
        rows = [compare(p, n) for p, n in zip(pickles, npzs)]
    except DataError as e:
        sys.exit(f"piano_roll_compare: error: {e}")
    print(table_markdown(rows), end="")
    if args.out:
        from tfhier.fileio import atomic_write

        atomic_write(args.out, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
