"""Webcam illumination benchmark: real day/season/weather changes seen by fixed outdoor webcams.

    python -m benchmarks.webcam --conf rootsift,residual_sift --data ../shared/data/webcam \
        --scenes chamonix --output results/webcam.json [--pairs_per_scene 60] [--seed 0] \
        [--warp homography] [--max_keypoints K] [--export_dir DIR] [--overwrite]

Data: the TILDE "Webcam" set (Verdie et al., CVPR 2015; AMOS webcams), one folder per scene of
`YYYYMMDD_HHMMSS.png` images. The cameras do not move, so the ground-truth correspondence between
any two images of a scene is the identity (up to a pixel). Academic use only: the images are read
from --data and never copied into the repository.

**Fixed split.** `chamonix` is the dev benchmark scene: never used for training nor as a style
source. `courbevoie` and `frankfurt` are training scenes (real illumination pairs and styles of the
HNDesc recipe); the runner evaluates them on request (`--scenes courbevoie,frankfurt`) and labels
them `train` in every table; the `dev` summary only averages dev scenes. Other TILDE scenes are
held out and must not be evaluated here.

Pairs (deterministic for a given --seed and folder): the unordered image pairs of a scene are put
in three bins by the difference of their time of day (file-name stamps, circular over 24 h):
`0-2h` (same light direction), `2-5h` and `5-12h` (different sun direction / shadows); an equal
seeded sample is drawn from each bin (`--pairs_per_scene` in all, fewer if a bin is small). Each
pair is also labelled by light level: an image is `night` when its mean grey level is below half
the scene's median (`day-day`, `day-night`, `night-night`). With `--warp homography` the second
image is warped by a seeded synthetic viewpoint homography (benchmarks.make_dev_hpatches, strength
--warp_strength; the frame stays covered, no border) written under the work folder, and the GT is
that homography: viewpoint and illumination at once.

Metrics (per pair, then averaged per scene, per bin, per light label and over the dev scenes):
features extracted by our CLI (or hloc's with HNDESC_BENCH_EXTRACTOR=hloc), float32, at the conf's
resolution; mutual nearest neighbours of the descriptors (as benchmarks.hpatches); a match is
correct at t px when its GT reprojection error, in pixels of the original image, is <= t.
MMA@t (t = 1..10; a pair without matches scores 0), the number of matches, of correct matches
at 3 px and of *verified* correct matches (correct at 3 px and an inlier of the pair's RANSAC homography,
OpenCV, 3 px: the matches a user keeps after geometric verification). Writes <output>.json, <output>.md and <output>_mma.png (MMA vs threshold).
"""
from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

import cv2
import h5py
import numpy as np

from .common import (BenchmarkError, extract, logger, read_features, resolve_feature_conf, run_cli,
                     shared_data_dir, slug, split_names, write_json)
from .hpatches import mma_pair, mutual_nn, top_k

DEV_SCENES = ("chamonix",)
TRAIN_SCENES = ("courbevoie", "frankfurt")
THRESHOLDS = tuple(range(1, 11))
TABLE_THRESHOLDS = (1, 2, 3, 5)
BINS = (("0-2h", 0.0, 2.0), ("2-5h", 2.0, 5.0), ("5-12h", 5.0, 12.01))
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".ppm")
STAMP = re.compile(r"(\d{8})_(\d{6})")


def scene_split(scene: str) -> str:
    return "dev" if scene in DEV_SCENES else "train" if scene in TRAIN_SCENES else "other"


def list_images(root: Path, scene: str) -> list[str]:
    d = Path(root) / scene
    if not d.is_dir():
        raise BenchmarkError(f"Scene folder {d} does not exist (webcam data: one folder per scene of "
                             "YYYYMMDD_HHMMSS.png images).")
    names = sorted(p.name for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if len(names) < 2:
        raise BenchmarkError(f"Scene folder {d} holds {len(names)} image(s); at least 2 are needed.")
    return [f"{scene}/{n}" for n in names]


def time_of_day(name: str) -> Optional[float]:
    """Hours since midnight from a YYYYMMDD_HHMMSS stamp in the file name (None if there is none)."""
    m = STAMP.search(Path(name).stem)
    if not m:
        return None
    try:
        t = datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return t.hour + t.minute / 60 + t.second / 3600


def hour_gap(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None:
        return None
    d = abs(a - b) % 24
    return min(d, 24 - d)


def hour_bin(gap: Optional[float]) -> str:
    if gap is None:
        return "no-stamp"
    for name, lo, hi in BINS:
        if lo <= gap < hi:
            return name
    return BINS[-1][0]


def brightness(path: Path) -> float:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise BenchmarkError(f"Cannot read image {path}.")
    return float(img.mean())


def scene_pairs(root: Path, scene: str, n_pairs: int, seed: int) -> list[dict]:
    """The deterministic pair sample of a scene: equal seeded draws from each time-of-day bin."""
    names = list_images(root, scene)
    light = {n: brightness(Path(root) / n) for n in names}
    med = float(np.median(list(light.values())))
    level = {n: "night" if light[n] < 0.5 * med else "day" for n in names}
    tod = {n: time_of_day(n) for n in names}
    bins: dict[str, list[tuple[str, str]]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            bins.setdefault(hour_bin(hour_gap(tod[a], tod[b])), []).append((a, b))
    rng = np.random.default_rng([seed, sum(map(ord, scene))])
    order = [b for b, _, _ in BINS] + ["no-stamp"]
    keys = [k for k in order if k in bins]
    quota = {k: n_pairs // len(keys) + (1 if i < n_pairs % len(keys) else 0) for i, k in enumerate(keys)}
    out = []
    for k in keys:
        cand = bins[k]
        idx = np.sort(rng.permutation(len(cand))[:quota[k]])
        for j in idx:
            a, b = cand[j]
            labels = sorted((level[a], level[b]), key=lambda s: s != "day")
            out.append({"scene": scene, "split": scene_split(scene), "image0": a, "image1": b, "bin": k,
                        "light": "-".join(labels), "hour_gap": hour_gap(tod[a], tod[b]),
                        "brightness": [light[a], light[b]]})
    return out


def warp_pairs(root: Path, pairs: list[dict], work: Path, seed: int, strength: float) -> Path:
    """Write image1 of every pair warped by a seeded viewpoint homography under work/warped (PNG);
    sets pair['H'] (image0 → warped image1 pixels) and pair['image1_warped']. Returns the image root."""
    from .make_dev_hpatches import viewpoint_homography

    out_root = Path(work) / "warped"
    for k, p in enumerate(pairs):
        img = cv2.imread(str(Path(root) / p["image1"]), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            raise BenchmarkError(f"Cannot read image {Path(root) / p['image1']}.")
        h, w = img.shape[:2]
        rng = np.random.default_rng([seed, k, sum(map(ord, p["image0"] + p["image1"]))])
        H = viewpoint_homography(w, h, strength, rng)
        name = f"{p['scene']}/{Path(p['image0']).stem}__{Path(p['image1']).stem}.png"
        dst = out_root / name
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(dst), cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR,
                                                      borderMode=cv2.BORDER_REFLECT))
        p["H"] = H.tolist()
        p["image1_warped"] = name
    return out_root


def verified_correct(kp0: np.ndarray, kp1: np.ndarray, m: np.ndarray, H: np.ndarray, t: float = 3.0) -> int:
    """Matches within t px of the GT that are also inliers of a RANSAC homography (OpenCV, t px)."""
    if len(m) < 4:
        return 0
    p0, p1 = np.asarray(kp0, np.float64)[m[:, 0]], np.asarray(kp1, np.float64)[m[:, 1]]
    proj = cv2.perspectiveTransform(p0[None], np.asarray(H, np.float64))[0]
    correct = np.linalg.norm(proj - p1, axis=1) <= t
    _, mask = cv2.findHomography(p0, p1, cv2.RANSAC, t, maxIters=2000, confidence=0.999)
    return 0 if mask is None else int((correct & mask.ravel().astype(bool)).sum())


def evaluate_pairs(pairs: Sequence[dict], feats: Path, feats1: Optional[Path] = None,
                   max_keypoints: Optional[int] = None, thresholds: Sequence[float] = THRESHOLDS) -> list[dict]:
    """Per-pair MMA curve, matches and correct matches (@3 px) from hloc feature files: image0 in
    `feats`, image1 (or its warp, pair['image1_warped']) in `feats1` (default `feats`)."""
    feats1 = feats1 or feats
    rows = []
    with h5py.File(str(feats), "r") as f0d, h5py.File(str(feats1), "r") as f1d:
        for p in pairs:
            f0 = top_k(read_features(feats, p["image0"], f0d), max_keypoints)
            n1 = p.get("image1_warped", p["image1"])
            f1 = top_k(read_features(feats1, n1, f1d), max_keypoints)
            H = np.asarray(p.get("H", np.eye(3)), float)
            m = mutual_nn(f0["descriptors"], f1["descriptors"])
            mma = mma_pair(f0["keypoints"], f1["keypoints"], m, H, thresholds)
            row = {k: v for k, v in p.items() if k not in ("H",)}
            row.update(mma=mma.tolist(), matches=int(len(m)), correct=int(round(mma[list(thresholds).index(3)] * len(m)))
                       if 3 in thresholds else None, verified=verified_correct(f0["keypoints"], f1["keypoints"], m, H),
                       keypoints=[int(len(f0["keypoints"])), int(len(f1["keypoints"]))])
            rows.append(row)
    return rows


def summarize(rows: Sequence[dict]) -> Optional[dict]:
    if not rows:
        return None
    return {"mma": np.mean([r["mma"] for r in rows], 0).tolist(),
            "matches": float(np.mean([r["matches"] for r in rows])),
            "correct": float(np.mean([r["correct"] for r in rows])),
            "verified": float(np.mean([r.get("verified", float("nan")) for r in rows])),
            "keypoints": float(np.mean([np.mean(r["keypoints"]) for r in rows])),
            "pairs": len(rows)}


def breakdown(rows: Sequence[dict]) -> dict:
    """Summaries: dev (dev scenes only), per scene, per (split, time bin) and per (split, light label)."""
    out = {"dev": summarize([r for r in rows if r["split"] == "dev"]), "scenes": {}, "bins": {}, "light": {}}
    for r in rows:
        out["scenes"].setdefault(r["scene"], []).append(r)
        out["bins"].setdefault(f"{r['split']}/{r['bin']}", []).append(r)
        out["light"].setdefault(f"{r['split']}/{r['light']}", []).append(r)
    for key in ("scenes", "bins", "light"):
        out[key] = {k: summarize(v) for k, v in sorted(out[key].items())}
    return out


def run_conf(name: str, root: Path, pairs: list[dict], work: Path, warped_root: Optional[Path],
             max_keypoints: Optional[int], overwrite: bool) -> dict:
    conf = resolve_feature_conf(name)
    wdir = Path(work) / slug(name)
    fpath = wdir / "features.h5"
    names = sorted({p["image0"] for p in pairs} | ({p["image1"] for p in pairs} if warped_root is None else set()))
    logger.info(f"webcam: {name}: {len(names)} images, {len(pairs)} pairs")
    extract(conf, root, fpath, names, as_half=False, overwrite=overwrite)
    fpath1 = None
    if warped_root is not None:
        fpath1 = wdir / "features-warped.h5"
        extract(conf, warped_root, fpath1, sorted({p["image1_warped"] for p in pairs}), as_half=False,
                overwrite=overwrite)
    rows = evaluate_pairs(pairs, fpath, fpath1, max_keypoints)
    return {"summary": breakdown(rows), "pairs": rows, "conf": conf}


def _row(name: str, label: str, s: Optional[dict]) -> Optional[str]:
    if s is None:
        return None
    mma = " | ".join(f"{s['mma'][t - 1]:.3f}" for t in TABLE_THRESHOLDS)
    return (f"| {name} | {label} | {mma} | {s['matches']:.0f} | {s['correct']:.0f} | {s.get('verified', float('nan')):.0f} | "
            f"{s['keypoints']:.0f} | "
            f"{s['pairs']} |")


def markdown(results: dict, meta: dict) -> str:
    head = ("| conf | pairs | MMA@1 | @2 | @3 | @5 | #matches | #correct@3 | #verified@3 | #kp | #pairs |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    warp = f", + viewpoint homography (strength {meta['warp_strength']})" if meta["warp"] == "homography" else ""
    lines = [f"# Webcam illumination benchmark ({', '.join(meta['scenes'])}{warp})", "",
             f"Dev scene(s): {', '.join(DEV_SCENES)}; training scenes ({', '.join(TRAIN_SCENES)}) are labelled "
             f"`train`. Mutual NN, GT = {'homography' if meta['warp'] == 'homography' else 'identity'}, "
             f"{meta['pairs_per_scene']} pairs per scene, seed {meta['seed']}, extractor {meta['extractor']}.", "",
             "## Summary (dev scenes, then every scene)", "", head]
    for name, r in results.items():
        s = r["summary"]
        lines += [x for x in [_row(name, "dev", s["dev"])] if x]
        for sc, v in s["scenes"].items():
            lines.append(_row(name, f"{sc} ({scene_split(sc)})", v))
    for key, title in (("bins", "time-of-day difference"), ("light", "light level")):
        lines += ["", f"## By {title}", "", head]
        for name, r in results.items():
            for k, v in r["summary"][key].items():
                lines.append(_row(name, k, v))
    return "\n".join(lines) + "\n"


def plot_mma(results: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({k for r in results.values() for k in r["summary"]["scenes"]})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups) + 3, 4.2), sharey=True, squeeze=False)
    colors = plt.get_cmap("tab10" if len(results) <= 10 else "tab20").colors
    for ax, sc in zip(axes[0], groups):
        for k, (name, r) in enumerate(results.items()):
            s = r["summary"]["scenes"].get(sc)
            if s is not None:
                ax.plot(THRESHOLDS, s["mma"], linewidth=2, label=Path(name).stem if name.endswith(".yaml") else name,
                        color=colors[k % len(colors)], linestyle=("-", "--", ":")[k // len(colors) % 3])
        ax.set_title(f"{sc} ({scene_split(sc)})")
        ax.set_xlabel("threshold [px]")
        ax.set_xlim(1, 10)
        ax.set_ylim(0, 1)
        ax.set_xticks(list(THRESHOLDS))
        ax.grid(True)
    axes[0][0].set_ylabel("MMA")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def default_data() -> Optional[Path]:
    d = shared_data_dir()
    return d / "webcam" if d is not None and (d / "webcam").is_dir() else None


def main(argv=None):
    import os

    parser = argparse.ArgumentParser(prog="python -m benchmarks.webcam", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--conf", required=True, help="feature conf(s), comma-separated (ours or hloc's)")
    parser.add_argument("--data", type=Path, help="webcam root with one folder per scene (default ../shared/data/webcam)")
    parser.add_argument("--scenes", default=",".join(DEV_SCENES),
                        help=f"comma-separated (default: the dev scene {DEV_SCENES[0]}; training scenes: "
                             f"{', '.join(TRAIN_SCENES)})")
    parser.add_argument("--output", type=Path, required=True, help="results JSON (.md and _mma.png beside it)")
    parser.add_argument("--pairs_per_scene", type=int, default=60, help='pairs drawn per scene (stratified by time-of-day difference)')
    parser.add_argument("--seed", type=int, default=0, help='seed of the pair sample (and of the homographies with --warp)')
    parser.add_argument("--warp", default="none", choices=["none", "homography"], help='none: GT = identity; homography: warp the second image by a seeded homography (its GT)')
    parser.add_argument("--warp_strength", type=float, default=0.5, help="viewpoint homography strength in (0, 1]")
    parser.add_argument("--max_keypoints", type=int, help="keep the k best keypoints per image")
    parser.add_argument("--export_dir", type=Path, help="feature / warped-image cache (default: <output>_work)")
    parser.add_argument("--overwrite", action="store_true", help="re-extract cached features")
    args = parser.parse_args(argv)
    root = args.data or default_data()
    if root is None:
        raise BenchmarkError("No webcam data: pass --data DIR (one folder per scene of YYYYMMDD_HHMMSS.png images).")
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"Webcam data folder {root} does not exist.")
    if args.pairs_per_scene < 1:
        raise BenchmarkError("--pairs_per_scene must be at least 1.")
    if not 0 < args.warp_strength <= 1:
        raise BenchmarkError("--warp_strength must be in (0, 1].")
    confs = split_names(args.conf)
    for name in confs:
        resolve_feature_conf(name)  # unknown conf names fail before any work
    scenes = split_names(args.scenes)
    if not scenes:
        raise BenchmarkError("--scenes is empty.")
    pairs = [p for sc in scenes for p in scene_pairs(root, sc, args.pairs_per_scene, args.seed)]
    work = args.export_dir or args.output.with_name(args.output.stem + "_work")
    tag = "identity" if args.warp == "none" else f"warp{args.warp_strength:g}-seed{args.seed}"
    warped_root = warp_pairs(root, pairs, Path(work) / tag, args.seed, args.warp_strength) \
        if args.warp == "homography" else None
    results = {name: run_conf(name, root, pairs, work, warped_root, args.max_keypoints, args.overwrite)
               for name in confs}
    meta = {"data": str(root), "scenes": scenes, "splits": {s: scene_split(s) for s in scenes},
            "pairs_per_scene": args.pairs_per_scene, "seed": args.seed, "warp": args.warp,
            "warp_strength": args.warp_strength if args.warp == "homography" else None,
            "max_keypoints": args.max_keypoints, "thresholds": list(THRESHOLDS),
            "extractor": os.environ.get("HNDESC_BENCH_EXTRACTOR", "auto")}
    write_json(args.output, {"meta": meta, "results": results})
    md = markdown(results, meta)
    args.output.with_suffix(".md").write_text(md)
    plot_mma(results, args.output.with_name(args.output.stem + "_mma.png"),
             f"Webcam MMA ({'identity' if args.warp == 'none' else 'homography'} GT)")
    print(md)
    return {"meta": meta, "results": results}


if __name__ == "__main__":
    run_cli(main)
