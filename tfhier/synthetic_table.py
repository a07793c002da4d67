"""The VHRNN synthetic benchmark's table (VHRNN Table 1): every run on every test setting, in one command.

    python -m tfhier.synthetic_table --run_dirs=runs/vrnn_synthetic,runs/vrnn6_synthetic,runs/vhrnn_synthetic \\
        --fivo_particles=128 --out=docs/vhrnn_synthetic_table

For each run (trained on ``--dataset=vhrnn_synthetic``) and each of the seven
test settings (Test, NOISELESS, SWITCH, RAND, LONG, ZERO-SHOT, ADD:
:mod:`tfhier.data.vhrnn_synthetic`), the test split of that setting is
generated with the run's data seed and scored with the FIVO bound (models
with the recurrent step interface; others get the ELBO) per time step, as
Table 1 reports it.  Writes ``<out>.json`` and ``<out>.md`` (the table, with
parameter counts and the paper's numbers beside), and prints the table.

The table's first row is the data's own log-likelihood under the process that
generated them (:func:`tfhier.data.vhrnn_synthetic.generator_log_prob`), the
ceiling of every model's expected bound, on the two settings with noise (Test
and RAND); the noiseless settings have no density.
"""

from __future__ import annotations

import json
import sys

SETTINGS = ("standard", "noiseless", "switch", "rand", "long", "zero_shot", "add")
COLUMNS = {"standard": "Test", "noiseless": "NOISELESS", "switch": "SWITCH", "rand": "RAND", "long": "LONG",
           "zero_shot": "ZERO-SHOT", "add": "ADD"}
#: VHRNN Table 1 (FIVO per step), by (model, z)
PAPER = {("vrnn", 8): (2612, [-5.43, -2.50, -334173, -5.02, -1033348, -3.64, -3.57]),
         ("vrnn", 6): (1516, [-5.80, -3.66, -19735, -5.24, -27200, -4.39, -5.09]),
         ("vhrnn", 4): (1568, [-4.68, -2.08, -4.27, -3.91, -3005, -2.57, -2.62])}


def generator_bounds(seed=0) -> dict:
    """``{setting: per-step exact log-likelihood}`` of the test split under its own generator (Test, RAND)."""
    from tfhier.data import load_dataset
    from tfhier.data.vhrnn_synthetic import NOISY_SETTINGS, generator_log_prob

    out = {}
    for setting in NOISY_SETTINGS:
        data = load_dataset("vhrnn_synthetic", seed=seed, setting=setting)
        mats = data.info["split_matrices"]["test"]
        total = sum(generator_log_prob(x, setting, mats) for x in data.test)
        out[setting] = total / sum(len(x) for x in data.test)
    return out


def evaluate_runs(run_dirs, *, fivo_particles=128, batch_size=20, seed=0, checkpoint="best", progress=None) -> dict:
    """``{"rows": [{run_dir, model, z, params, bounds: {setting: per-step bound}}, ...], ...}``."""
    from tfhier import runs
    from tfhier.data import load_dataset
    from tfhier.evaluation import evaluate_sequences

    rows, seeds = [], set()
    for run_dir in run_dirs:
        config = runs.read_config(run_dir)
        if config["dataset"] != "vhrnn_synthetic":
            raise runs.RunError(f"{run_dir} was trained on --dataset={config['dataset']}, not vhrnn_synthetic")
        model, ckpt, step = runs.load_model(run_dir, checkpoint, config)
        data_seed = int(runs.data_options(run_dir, config).get("seed", 0))
        seeds.add(data_seed)
        recurrent = getattr(model, "supports_step_interface", False)
        bounds = {}
        for setting in SETTINGS:
            data = load_dataset("vhrnn_synthetic", seed=data_seed, setting=setting)
            result = evaluate_sequences(model, data.test, iw_samples=1, batch_size=batch_size, seed=seed,
                                        fivo_particles=fivo_particles if recurrent else 0).summary()
            bounds[setting] = result["fivo" if recurrent else "elbo"]["per_step"]
            if progress:
                progress(run_dir, setting, bounds[setting])
        rows.append({"run_dir": str(run_dir), "model": config["model"], "checkpoint": ckpt, "checkpoint_step": step,
                     "z": int(config["model_config"].get("latent_dims", [0])[0]), "params": model.count_params(),
                     "bound": "fivo" if recurrent else "elbo", "bounds": bounds})
    generator = {str(s): generator_bounds(s) for s in sorted(seeds)}
    return {"rows": rows, "generator": generator, "fivo_particles": fivo_particles, "seed": seed,
            "settings": list(SETTINGS),
            "units": "nats per time step", "paper": {f"{m} z={z}": v for (m, z), v in PAPER.items()}}


def table_markdown(report) -> str:
    head = "| model | z | params | " + " | ".join(COLUMNS[s] for s in SETTINGS) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(SETTINGS)]
    for data_seed, bounds in report.get("generator", {}).items():
        cells = " | ".join(f"{bounds[s]:.2f}" if s in bounds else "∞ (noiseless)" for s in SETTINGS)
        lines.append(f"| the generator itself (exact log-likelihood, data seed {data_seed}) | | | {cells} |")
    for row in report["rows"]:
        cells = " | ".join(f"{row['bounds'][s]:.2f}" for s in SETTINGS)
        lines.append(f"| {row['model']} (tfhier, {row['bound'].upper()}, step {row['checkpoint_step']}) | {row['z']} "
                     f"| {row['params']:,} | {cells} |")
        paper = PAPER.get((row["model"], row["z"]))
        if paper:
            lines.append(f"| {row['model']} (VHRNN paper, Table 1) | {row['z']} | {paper[0]:,} | "
                         + " | ".join(f"{v:g}" for v in paper[1]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tfhier.synthetic_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dirs", required=True, help="comma-separated run directories")
    parser.add_argument("--fivo_particles", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="best", help="'best', a checkpoint path, or 'latest'")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    from tfhier.runs import RunError

    if args.fivo_particles < 1 or args.batch_size < 1:
        sys.exit("synthetic_table: error: --fivo_particles and --batch_size must be >= 1")
    try:
        report = evaluate_runs([d for d in args.run_dirs.split(",") if d], fivo_particles=args.fivo_particles,
                               batch_size=args.batch_size, seed=args.seed,
                               checkpoint=None if args.checkpoint == "latest" else args.checkpoint,
                               progress=lambda r, s, v: print(f"{r} {s}: {v:.3f}", file=sys.stderr, flush=True))
    except (RunError, ValueError) as e:
        sys.exit(f"synthetic_table: error: {e}")
    text = table_markdown(report)
    print(text)
    if args.out:
        from tfhier.fileio import atomic_write

        atomic_write(args.out + ".json", json.dumps(report, indent=2) + "\n")
        atomic_write(args.out + ".md", text)
        print(f"written: {args.out}.json, {args.out}.md", file=sys.stderr)


if __name__ == "__main__":
    main()
