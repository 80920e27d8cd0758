"""Our SURF (hndesc_features.surf) against OpenCV SIFT / RootSIFT on synthetic homographies.

    python -m benchmarks.experiments.surf_vs_sift [--methods surf64,surf128,usurf64,sift,rootsift]
        [--pairs 3] [--resize 1024] [--rotation 30] [--scale 0.7 1.4] [--perspective 0.1]
        [--max-keypoints 2048] [--seed 0] [--output surf_vs_sift.json]

Images: the held-out photos (training/datasets/dev_images.heldout_images()), long side resized
to --resize. For each image, --pairs random homographies about the image centre (rotation
uniform in ±--rotation degrees, scale log-uniform in --scale, each corner moved by
±--perspective × size) warp it into a second view (cv2.warpPerspective, bilinear). Both views go
through every method; descriptors are matched by mutual nearest neighbour. Reported per method:

* MMA@1/3/5: share of the matches whose keypoint lands within 1/3/5 px of its ground-truth
  position (pooled over all pairs: correct matches / matches).
* H-acc@1/3/5: share of pairs where cv2.findHomography (RANSAC, 3 px) on the matches gives a
  mean error over the four image corners below 1/3/5 px.
* keypoints / matches / correct matches per pair, and seconds per image (detection +
  description; CPU time of this single-threaded process and wall time).

All methods keep at most --max-keypoints keypoints (strongest first). SIFT uses
``hndesc_features.handcrafted.detect_sift`` (OpenCV, threads set to 1).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from hndesc_features.geometry import homography_error, mutual_nn, reprojection_errors

from ..common import BenchmarkError, logger, run_cli

METHODS = ["surf64", "surf128", "usurf64", "sift", "rootsift"]


def heldout_sources() -> list[Path]:
    try:
        from hndesc_features.training.datasets.dev_images import heldout_images
    except ImportError:
        from hndesc_features.training.datasets.dev_images import heldout_images
    return list(heldout_images())


def make_extractor(name: str, max_keypoints: int, hessian_threshold: float) -> Callable[[np.ndarray], dict]:
    from hndesc_features.handcrafted import detect_sift
    from hndesc_features.surf import detect_and_describe

    if name in ("surf64", "surf128", "usurf64", "usurf128"):
        kw = {"extended": name.endswith("128"), "upright": name.startswith("u")}
        return lambda img: detect_and_describe(img, hessian_threshold=hessian_threshold,
                                               max_keypoints=max_keypoints, **kw)
    if name in ("sift", "rootsift", "usift", "urootsift"):
        kw = {"root": "root" in name, "upright": name.startswith("u")}

        def run(img):
            out = detect_sift(img, max_keypoints=max_keypoints, **kw)
            d = out["descriptors"].astype(np.float32)
            out["descriptors"] = d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-8)
            return out
        return run
    raise BenchmarkError(f"Unknown method {name!r}; choose from "
                         f"{METHODS + ['usurf128', 'usift', 'urootsift']}.")


def sample_homography(w: int, h: int, rng: np.random.Generator, rotation: float,
                      scale: Sequence[float], perspective: float) -> np.ndarray:
    """Random homography about the image centre (pixel centres at integer coordinates)."""
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    a = np.deg2rad(rng.uniform(-rotation, rotation))
    s = np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1])))
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    src_p = src + rng.uniform(-perspective, perspective, (4, 2)) * [w, h]
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = (src_p - c) @ rot.T + c
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def evaluate_pair(f0: dict, f1: dict, H: np.ndarray, w: int, h: int) -> dict:
    m = mutual_nn(f0["descriptors"], f1["descriptors"])
    i = m[:, 0]
    err = reprojection_errors(f0["keypoints"], f1["keypoints"], m, H)
    corner_err = homography_error(f0["keypoints"][m[:, 0]], f1["keypoints"][m[:, 1]], H, (h, w))
    return {"n_kpts": (len(f0["keypoints"]) + len(f1["keypoints"])) / 2, "n_matches": len(i),
            "correct": {t: int(np.sum(err < t)) for t in (1, 3, 5)}, "corner_err": corner_err}


def load_gray(path: Path, resize: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise BenchmarkError(f"Cannot read {path}.")
    h, w = img.shape
    s = resize / max(h, w)
    if s != 1:
        img = cv2.resize(img, (int(round(w * s)), int(round(h * s))),
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return img


def run(methods: Sequence[str], images: Sequence[Path], pairs: int = 3, resize: int = 1024,
        rotation: float = 30.0, scale: Sequence[float] = (0.7, 1.4), perspective: float = 0.1,
        max_keypoints: int = 2048, hessian_threshold: float = 30.0, seed: int = 0) -> dict:
    cv2.setNumThreads(1)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    extractors = {m: make_extractor(m, max_keypoints, hessian_threshold) for m in methods}
    stats = {m: {"pairs": [], "cpu_s": [], "wall_s": []} for m in methods}
    rng = np.random.default_rng(seed)
    for path in tqdm(images, desc="surf_vs_sift"):
        img = load_gray(path, resize)
        h, w = img.shape
        views = [(sample_homography(w, h, rng, rotation, scale, perspective)) for _ in range(pairs)]
        warped = [cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR) for H in views]
        for m, fn in extractors.items():
            feats = []
            for im in [img] + warped:
                t0, c0 = time.perf_counter(), time.process_time()
                feats.append(fn(im))
                stats[m]["cpu_s"].append(time.process_time() - c0)
                stats[m]["wall_s"].append(time.perf_counter() - t0)
            for H, f1 in zip(views, feats[1:]):
                stats[m]["pairs"].append(evaluate_pair(feats[0], f1, H, w, h))
    return summarise(stats)


def summarise(stats: dict) -> dict:
    out = {}
    for m, s in stats.items():
        pr = s["pairs"]
        n_m = sum(p["n_matches"] for p in pr)
        ce = np.array([p["corner_err"] for p in pr])
        out[m] = {
            **{f"MMA@{t}": sum(p["correct"][t] for p in pr) / max(n_m, 1) for t in (1, 3, 5)},
            **{f"H-acc@{t}": float(np.mean(ce < t)) for t in (1, 3, 5)},
            "keypoints": float(np.mean([p["n_kpts"] for p in pr])),
            "matches": n_m / max(len(pr), 1),
            "correct@3": sum(p["correct"][3] for p in pr) / max(len(pr), 1),
            "cpu_s_per_image": float(np.mean(s["cpu_s"])),
            "wall_s_per_image": float(np.mean(s["wall_s"])),
            "n_pairs": len(pr),
        }
    return out


def format_table(res: dict) -> str:
    cols = ["MMA@1", "MMA@3", "MMA@5", "H-acc@1", "H-acc@3", "H-acc@5", "keypoints", "matches",
            "correct@3", "cpu_s_per_image", "wall_s_per_image"]
    lines = ["| method | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for m, r in res.items():
        vals = [f"{r[c]:.3f}" if ("@" in c and "correct" not in c) or c.endswith("image")
                else f"{r[c]:.0f}" for c in cols]
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.experiments.surf_vs_sift",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated: surf64, surf128, usurf64, usurf128, sift, rootsift, usift, urootsift")
    ap.add_argument("--images", nargs="*", type=Path, default=None,
                    help="image files (default: the held-out photos of training/datasets/dev_images.py)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--pairs", type=int, default=3, help="random homographies per image")
    ap.add_argument("--resize", type=int, default=1024, help="long side of the source image")
    ap.add_argument("--rotation", type=float, default=30.0, help="max |rotation| in degrees")
    ap.add_argument("--scale", type=float, nargs=2, default=[0.7, 1.4], help="scale range (log-uniform)")
    ap.add_argument("--perspective", type=float, default=0.1, help="corner jitter, fraction of size")
    ap.add_argument("--max-keypoints", type=int, default=2048)
    ap.add_argument("--hessian-threshold", type=float, default=30.0, help="SURF (OpenCV units)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    images = args.images if args.images else heldout_sources()
    images = list(images)[: args.limit] if args.limit else list(images)
    if not images:
        raise BenchmarkError("No images: pass --images, or provide ../shared/data / scikit-image.")
    for p in images:
        if not Path(p).is_file():
            raise BenchmarkError(f"Image not found: {p}")
    logger.info(f"{len(images)} images × {args.pairs} homographies, methods {methods}")
    res = run(methods, images, args.pairs, args.resize, args.rotation, args.scale,
              args.perspective, args.max_keypoints, args.hessian_threshold, args.seed)
    print(format_table(res))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        cli = {k: v for k, v in vars(args).items() if k not in ("images", "output")}
        args.output.write_text(json.dumps({"args": cli, "images": [str(p) for p in images],
                                           "results": res}, indent=2))
        logger.info(f"wrote {args.output}")
    return res


if __name__ == "__main__":
    run_cli(main)
