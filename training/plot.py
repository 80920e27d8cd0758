"""Training curves (PNG) from a run's logged scalars (metrics.jsonl, the same values as TensorBoard).

    python -m hndesc_features.training.plot runs/residual_sift [--output docs/residual_sift_curves.png]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def read_metrics(run_dir) -> dict:
    """{split: {key: ([steps], [values])}}."""
    out: dict = defaultdict(lambda: defaultdict(lambda: ([], [])))
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"no metrics.jsonl in '{run_dir}'")
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        for k, v in r.items():
            if k in ("step", "split"):
                continue
            out[r["split"]][k][0].append(r["step"])
            out[r["split"]][k][1].append(v)
    return out


def smooth(values, k: int = 9):
    import numpy as np

    v = np.asarray(values, float)
    if len(v) < 2 * k:
        return v
    kernel = np.ones(k) / k
    pad = np.concatenate([np.full(k // 2, v[0]), v, np.full(k // 2, v[-1])])
    return np.convolve(pad, kernel, mode="valid")


def count_keys(scalars: dict, keys=None) -> list[str]:
    """Logged keys that are counts (keypoints, patches, matches): values above 5 in magnitude,
    far out of a loss's or a rate's range. They are drawn on a second y axis."""
    keys = list(scalars) if keys is None else keys
    return [k for k in keys if max((abs(x) for x in scalars[k][1]), default=0.0) > 5.0]


def plot_run(run_dir, output=None, title=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = read_metrics(run_dir)
    train = m.get("train", {})
    val = m.get("val", {})
    train_keys = [k for k in train if k not in ("time", "lr") and not k.startswith("n_")]  # counts apart
    val_keys = [k for k in val if k.startswith(("mma@", "homography@", "webcam_mma@3"))]
    # the counts that select the exported weights (correct / RANSAC-verified matches, the selection value),
    # relative to their first validation so that sets of different sizes share one axis
    rel_keys = [k for k in val if "correct@" in k or k == "select"]
    n = 1 + bool(val_keys) + bool(rel_keys) + ("lr" in train)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6))
    axes = [axes] if n == 1 else list(axes)
    ax = axes[0]
    # counts (keypoints, patches, matches: values far above a loss's range) get their own axis
    counts = count_keys(train, train_keys)
    for k in train_keys:
        if k not in counts:
            s, v = train[k]
            ax.plot(s, smooth(v), label=k)
    ax.set_xlabel("step")
    ax.set_title("train (smoothed)")
    handles, labels = ax.get_legend_handles_labels()
    if counts:
        ax2 = ax.twinx()
        for j, k in enumerate(counts):
            s, v = train[k]
            line, = ax2.plot(s, smooth(v), ls="--", lw=0.8, color=f"C{len(labels) + j}", label=f"{k} (right)")
            handles.append(line)
            labels.append(line.get_label())
        ax2.set_ylabel("count")
    ax.legend(handles, labels, fontsize=7)
    i = 1
    if val_keys:
        ax = axes[i]
        i += 1
        for k in sorted(val_keys):
            s, v = val[k]
            ax.plot(s, v, marker="o", ms=3, label=k)
        ax.set_ylim(0, 1)
        ax.set_xlabel("step")
        ax.set_title("validation")
        ax.legend(fontsize=7)
    if rel_keys:
        ax = axes[i]
        i += 1
        for k in sorted(rel_keys):
            s, v = val[k]
            if v and v[0]:
                ax.plot(s, [x / v[0] for x in v], marker="o", ms=3, label=k, lw=2.5 if k == "select" else 1.2)
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set_xlabel("step")
        ax.set_title("validation counts / first validation")
        ax.legend(fontsize=7)
    if "lr" in train:
        ax = axes[i]
        s, v = train["lr"]
        ax.plot(s, v)
        ax.set_xlabel("step")
        ax.set_title("learning rate")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output = Path(output) if output else Path(run_dir) / "curves.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hndesc_features.training.plot", description=__doc__)
    p.add_argument("run")
    p.add_argument("--output")
    p.add_argument("--title")
    a = p.parse_args(argv)
    try:
        out = plot_run(a.run, a.output, a.title)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
