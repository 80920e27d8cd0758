"""Where mutual-NN precision goes: each wrong match of the HPatches MMA protocol is put in one of two
bins — its keypoint has *no* correspondence in the other image (no keypoint within the threshold of
its true position: not repeated by the detector, or outside the other view) or it has one and the
descriptor picked another keypoint.

    python -m benchmarks.experiments.match_errors --dataset_dir /tmp/full/dev-hpatches --conf rootsift,hndesc \
        --max_keypoints 1024 --output benchmarks/results/match_errors.json

Per split (i / v), averaged over image pairs: mutual matches, correct ones (≤ --threshold px),
wrong ones on keypoints without a correspondence, wrong ones on keypoints with one, and the number
of keypoints with a correspondence. MMA pooled over pairs (correct / matches). This is the analysis
behind the mutual-NN training term (training/losses/mutual.py).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np

from ..common import BenchmarkError, read_features, run_cli
from hndesc_features.geometry import mutual_nn, warp_points

from ..hpatches import _max_kp_override, dataset_root, image_file, list_sequences, read_homography, top_k

FIELDS = ("matches", "correct", "wrong_no_correspondence", "wrong_with_correspondence", "keypoints_with_correspondence")


def pair_errors(f0: dict, f1: dict, H: np.ndarray, threshold: float = 3.0) -> np.ndarray:
    """[matches, correct, wrong (no correspondence), wrong (with one), keypoints with one] of a pair."""
    m = mutual_nn(f0["descriptors"], f1["descriptors"])
    p = warp_points(f0["keypoints"].astype(np.float64), H)
    if len(p) == 0 or len(f1["keypoints"]) == 0:
        return np.array([len(m), 0, len(m), 0, 0])
    nearest = np.linalg.norm(p[:, None] - f1["keypoints"][None], axis=-1).min(1)
    has = nearest <= threshold
    ok = np.linalg.norm(p[m[:, 0]] - f1["keypoints"][m[:, 1]], axis=1) <= threshold
    return np.array([len(m), ok.sum(), (~ok & ~has[m[:, 0]]).sum(), (~ok & has[m[:, 0]]).sum(), has.sum()])


def evaluate(root: Path, seqs, feature_path: Path, max_keypoints, threshold: float) -> dict:
    rows: dict = {"i": [], "v": []}
    with h5py.File(str(feature_path), "r") as fd:
        def feats(seq, k):
            name = image_file(root / seq, k).relative_to(root).as_posix()
            return top_k(read_features(feature_path, name, fd), max_keypoints)

        for seq in seqs:
            f0 = feats(seq, 1)
            for k in range(2, 7):
                rows[seq[0]].append(pair_errors(f0, feats(seq, k), read_homography(root / seq / f"H_1_{k}"), threshold))
    out = {}
    for split, r in rows.items():
        if not r:
            continue
        a = np.array(r, np.float64)
        mean = a.mean(0)
        out[split] = {**{f: float(v) for f, v in zip(FIELDS, mean)}, "pairs": len(r),
                      "mma_pooled": float(a[:, 1].sum() / max(a[:, 0].sum(), 1))}
    return out


def main(argv=None) -> dict:
    from ..common import extract, resolve_feature_conf, slug

    ap = argparse.ArgumentParser(prog="python -m benchmarks.experiments.match_errors", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", type=Path, required=True, help="folder in HPatches layout")
    ap.add_argument("--conf", required=True, help="feature conf name(s) or YAML file(s), comma-separated")
    ap.add_argument("--max_keypoints", type=int, default=1024)
    ap.add_argument("--threshold", type=float, default=3.0)
    ap.add_argument("--output", type=Path, required=True, help="results JSON (a .md table beside it)")
    ap.add_argument("--export_dir", type=Path, help="feature cache (default: <output>_work)")
    a = ap.parse_args(argv)
    root = dataset_root(a.dataset_dir)
    seqs = list_sequences(root)
    if not seqs:
        raise BenchmarkError(f"no HPatches sequences in {a.dataset_dir}")
    export = a.export_dir or a.output.with_name(a.output.stem + "_work")
    results = {}
    for name in [c.strip() for c in a.conf.split(",") if c.strip()]:
        conf = resolve_feature_conf(name)
        conf["model"].update(_max_kp_override(conf, a.max_keypoints))
        conf["preprocessing"]["resize_max"] = None  # full resolution, as the MMA protocol
        path = extract(conf, root, Path(export) / slug(name) / "features.h5")
        results[name] = evaluate(root, seqs, path, a.max_keypoints, a.threshold)
    lines = [f"| conf | split | matches | correct | wrong, no correspondence | wrong, with one | "
             f"keypoints with one | MMA@{a.threshold:g} (pooled) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for split, s in r.items():
            lines.append(f"| {name} | {split} | {s['matches']:.1f} | {s['correct']:.1f} | "
                         f"{s['wrong_no_correspondence']:.1f} | {s['wrong_with_correspondence']:.1f} | "
                         f"{s['keypoints_with_correspondence']:.0f} | {s['mma_pooled']:.3f} |")
    md = "\n".join(lines) + "\n"
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps({"dataset": str(a.dataset_dir), "max_keypoints": a.max_keypoints,
                                    "threshold": a.threshold, "results": results}, indent=1))
    a.output.with_suffix(".md").write_text(md)
    print(md)
    return results


if __name__ == "__main__":
    run_cli(main)
