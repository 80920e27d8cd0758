"""Training curves of wlrn (KCC) runs side by side: smoothed loss, share of anchor keypoints with a
match (cosine > 0.6) in the positive / negative bag, and the trainer's validation MMA@3.

    python -m benchmarks.kcc_curves runs/kcc_orb runs/kcc_orb_nomining --output runs/kcc_curves.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .common import BenchmarkError, run_cli


def read_metrics(run: Path) -> tuple[list, list]:
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        raise BenchmarkError(f"{path} does not exist (not a training run folder?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "val"]


def smooth(x: np.ndarray, k: int = 8) -> np.ndarray:
    if len(x) < k:
        return x
    return np.convolve(x, np.ones(k) / k, mode="valid")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with metrics.jsonl)")
    parser.add_argument("--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--smooth", type=int, default=8, help="moving average over logged steps")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in args.runs:
        train, val = read_metrics(run)
        if not train:
            raise BenchmarkError(f"{run}: no training records")
        steps = np.array([r["step"] for r in train])
        k = min(args.smooth, len(steps))
        s = steps[k - 1:] if len(steps) >= k else steps
        axes[0].plot(s, smooth(np.array([r["loss"] for r in train]), k), label=run.name)
        axes[1].plot(s, smooth(np.array([r["match_pos"] for r in train]), k), label=f"{run.name}: positive bag")
        axes[1].plot(s, smooth(np.array([r["match_neg"] for r in train]), k), "--", label=f"{run.name}: negative bag")
        if val:
            axes[2].plot([r["step"] for r in val], [r["mma@3"] for r in val], "o-", label=run.name)
    axes[0].set_title("KCC loss (smoothed)")
    axes[1].set_title("anchors with a match (cos > 0.6)")
    axes[2].set_title("validation MMA@3 (train photos, synthetic H)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(True)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_cli(main)
