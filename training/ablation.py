"""Run a folder of ablation configs one after the other and tabulate their validation.

    python -m hndesc_features.training.ablation confs/train/hndesc_residual_ablation --runs runs/abl \
        --output benchmarks/results/hndesc_residual_ablation [--only full,no_ap] [--table-only]

Every ``*.yaml`` of the folder except ``_*.yaml`` is one run (``python -m hndesc_features.training.train <conf> --output
<runs>/<stem>``; a finished run is not redone, an interrupted one is resumed). The table (``<output>.md`` and
``<output>.json``) lists, per run, the trainer's validation at each validated step and the last step:
homography pairs MMA@3, webcam pairs MMA@3, their mean (``select``) and the match counts.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def read_val(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    if not p.exists():
        return []
    out = {}
    for line in p.read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "val":
            out[r["step"]] = r
    return [out[k] for k in sorted(out)]


def finished(run: Path) -> bool:
    return (run / "summary.json").exists()


def table(rows: dict, command: str, start: dict | None) -> str:
    keys = [("mma@3", "homography MMA@3"), ("webcam_mma@3", "webcam MMA@3"), ("select", "mean"),
            ("matches", "matches"), ("webcam_matches", "webcam matches")]
    lines = [f"Command: `{command}`", "",
             "Trainer validation of each run (Sacré-Cœur homography pairs + held-aside webcam pairs of the training "
             "scenes, 1024 keypoints, 640 px, mutual NN), last step:", "",
             "| run | step | " + " | ".join(k[1] for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    if start:
        lines.append("| start (all runs) | 0 | " + " | ".join(f"{start.get(k, float('nan')):.4g}" for k, _ in keys) + " |")
    for name, vals in rows.items():
        if not vals:
            lines.append(f"| {name} | – |" + " – |" * len(keys))
            continue
        last = vals[-1]
        lines.append(f"| {name} | {last['step']} | " + " | ".join(f"{last.get(k, float('nan')):.4g}" for k, _ in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hndesc_features.training.ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--output", type=Path, required=True, help="table path without extension (.md and .json)")
    ap.add_argument("--only", default="", help="comma-separated config stems (default: all)")
    ap.add_argument("--start", type=Path, default=None, help="a run whose step-0 validation is the common start")
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args(argv)
    confs = sorted(p for p in a.folder.glob("*.yaml") if not p.name.startswith("_"))
    if a.only:
        keep = set(a.only.split(","))
        confs = [c for c in confs if c.stem in keep]
    command = "python -m hndesc_features.training.ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    for c in confs:
        run = a.runs / c.stem
        if a.table_only or finished(run):
            continue
        cmd = [sys.executable, "-m", "training.train", str(c), "--output", str(run)]
        if (run / "checkpoint_last.pt").exists():
            cmd.append("--resume")
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    rows = {c.stem: read_val(a.runs / c.stem) for c in confs}
    start = None
    if a.start is not None:
        v = read_val(a.start)
        start = v[0] if v and v[0]["step"] == 0 else None
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.with_suffix(".json").write_text(json.dumps({"command": command, "start": start, "runs": rows}, indent=1))
    md = table(rows, command, start)
    a.output.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
