"""Validation MMA against training step for several runs on one plot (+ a markdown table): the
convergence comparison of the residual paper (residual model vs the CNN-only "*" model from the
same start), or any other set of runs of the shared trainer.

    python -m benchmarks.experiments.val_curves runs/residual_sift runs/residual_sift_star \
        --output benchmarks/results/residual_curves.png [--metric mma@3]

Reads each run's metrics.jsonl (the values also sent to TensorBoard); the validation pairs are the
ones of each run's config (`val:`), so compare runs that share them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..common import BenchmarkError, run_cli


def val_series(run: Path, metric: str) -> tuple[list, list]:
    from hndesc_features.training.plot import read_metrics

    try:
        val = read_metrics(run).get("val", {})
    except FileNotFoundError as e:
        raise BenchmarkError(f"{run}: {e}") from None
    if metric not in val:
        raise BenchmarkError(f"{run}: no validation '{metric}' logged (set train.val_every; "
                             f"logged: {', '.join(sorted(val)) or 'none'})")
    return val[metric]


def markdown(series: dict, metric: str) -> str:
    steps = sorted({s for xs, _ in series.values() for s in xs})
    lines = ["| run | " + " | ".join(f"step {s}" for s in steps) + " | best |",
             "|---|" + "---|" * (len(steps) + 1)]
    for name, (xs, ys) in series.items():
        by = dict(zip(xs, ys))
        cells = [f"{by[s]:.3f}" if s in by else "–" for s in steps]
        b = max(range(len(ys)), key=lambda k: ys[k])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ys[b]:.3f} (step {xs[b]}) |")
    return f"Validation {metric} by training step\n\n" + "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.val_curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with metrics.jsonl)")
    parser.add_argument("--output", type=Path, required=True, help="PNG to write (a .md table beside it)")
    parser.add_argument("--metric", default="mma@3")
    parser.add_argument("--labels", default=None, help="comma-separated names (default: folder names)")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        raise BenchmarkError(f"{len(labels)} labels for {len(args.runs)} runs")
    series = {lab: val_series(run, args.metric) for lab, run in zip(labels, args.runs)}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, "o-", label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation {args.metric}")
    ax.grid(True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=100)
    md = markdown(series, args.metric)
    args.output.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    run_cli(main)
