"""Compare feature confs on your own photos: keypoints, matches, RANSAC inliers, speed, a picture.

    python -m hndesc_features.compare --images DIR --confs hndesc,rootsift,orb [--pairs FILE]
        [--homography] [--output DIR]

For every conf: extract the images (our extraction code, no hloc needed), match every pair with
mutual nearest neighbours (hloc's NN-mutual), fit a fundamental matrix with RANSAC (any static
3D scene; `--homography` for planar scenes or a camera that only rotates) and count the inliers.
More inliers on the same pairs = more correspondences consistent with one camera geometry, the
quantity SfM and localization build on. ms/img is the extractor's median time per image on this
machine (reading and writing excluded; the first image left out as warm-up). Writes
<output>/compare.json (every pair), <output>/compare.png (bar chart + one pair drawn per conf) and
prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import logger
from .confs import DEFAULT_FEATURE_CONF, feature_confs, get_matcher_conf
from .extract_features import image_names, main as extract
from .geometry import estimate_geometry
from .io import ImageReadError, list_h5_names, read_image
from .match_features import parse_pairs
from .matching import nearest_neighbor

DEFAULT_CONFS = f"{DEFAULT_FEATURE_CONF},rootsift,orb"
#: figure geometry (inches at FIG_DPI): the PNG is FIG_WIDTH × (BAR_HEIGHT + PAIR_HEIGHT·#confs) inches
FIG_DPI, FIG_WIDTH, BAR_HEIGHT, PAIR_HEIGHT = 100, 12, 3.5, 4.0


def default_pairs(names: list[str], max_pairs: int) -> list[tuple[str, str]]:
    """All pairs of the sorted names, nearest in order first ((i, i+1), then (i, i+2), ...: the
    likely overlapping neighbours of a photo sequence), at most max_pairs."""
    pairs = [(names[i], names[i + gap]) for gap in range(1, len(names)) for i in range(len(names) - gap)]
    return pairs[:max_pairs]


def read_features(path: Path, name: str):
    with h5py.File(str(path), "r") as f:
        return f[name]["keypoints"][()].astype(np.float64), f[name]["descriptors"][()].astype(np.float32)


def match_pair(desc0: np.ndarray, desc1: np.ndarray, matcher: dict) -> np.ndarray:
    """K×2 index pairs of hloc's nearest_neighbor matcher (descriptors D×N, as stored)."""
    m0, _ = nearest_neighbor(torch.from_numpy(desc0)[None], torch.from_numpy(desc1)[None], **matcher)
    m0 = m0[0].numpy()
    idx = np.flatnonzero(m0 > -1)
    return np.stack([idx, m0[idx]], -1).astype(np.int64)


def evaluate_pair(kp0, kp1, matches, model: str, ransac_px: float) -> tuple[dict, np.ndarray]:
    """Counts of one pair and the inlier mask of its matches."""
    _, inl = estimate_geometry(kp0[matches[:, 0]], kp1[matches[:, 1]], model, ransac_px, seed=0)
    n, k = len(matches), int(inl.sum())
    return {"keypoints": [len(kp0), len(kp1)], "matches": n, "inliers": k,
            "inlier_ratio": k / n if n else 0.0}, inl


def run_conf(name: str, conf: dict, image_dir: Path, names: list[str], pairs, out: Path, model_kind: str,
             ransac_px: float, matcher: dict) -> dict:
    from .extractors import load_model

    feats = out / "features" / f"{name}.h5"
    model = load_model(conf["model"]).eval()
    times = []
    forward = model.forward

    def timed(data):  # the extractor's own time per image (not reading, resizing or writing);
        # reported: the median, the first image left out (warm-up) when there are 3 or more
        t0 = time.perf_counter()
        out = forward(data)
        times.append(time.perf_counter() - t0)
        return out

    model.forward = timed
    extract(conf, image_dir, feature_path=feats, as_half=False, image_list=names, overwrite=True, model=model)
    done = set(list_h5_names(feats)) & set(names)  # unreadable images were warned about and skipped
    kps = {}
    rows, masks = [], {}
    for a, b in tqdm(pairs, desc=f"{name}: match + RANSAC", leave=False):
        if a not in done or b not in done:
            rows.append({"pair": [a, b], "skipped": "an image of the pair could not be read"})
            continue
        for n in (a, b):
            if n not in kps:
                kps[n] = read_features(feats, n)
        (k0, d0), (k1, d1) = kps[a], kps[b]
        m = match_pair(d0, d1, matcher)
        row, inl = evaluate_pair(k0, k1, m, model_kind, ransac_px)
        rows.append({"pair": [a, b], **row})
        masks[(a, b)] = (k0[m[:, 0]], k1[m[:, 1]], inl)
    ok = [r for r in rows if "skipped" not in r]
    mean = (lambda k: float(np.mean([r[k] for r in ok])) if ok else 0.0)
    summary = {
        "conf": name,
        "images": len(done),
        "keypoints_per_image": float(np.mean([len(kps[n][0]) for n in kps])) if kps else 0.0,
        "matches_per_pair": mean("matches"),
        "inliers_per_pair": mean("inliers"),
        "inlier_ratio": mean("inlier_ratio"),
        "ms_per_image": 1000 * float(np.median(times[1:] if len(times) > 2 else times)) if times else 0.0,
        "pairs": rows,
    }
    return summary, masks


def table(results: list[dict], model_kind: str) -> str:
    head = ["conf", "keypoints/img", "matches/pair", f"inliers/pair ({model_kind})", "inlier ratio", "ms/img"]
    lines = [[r["conf"], f"{r['keypoints_per_image']:.0f}", f"{r['matches_per_pair']:.0f}",
              f"{r['inliers_per_pair']:.0f}", f"{r['inlier_ratio']:.3f}", f"{r['ms_per_image']:.0f}"]
             for r in results]
    w = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda row: "  ".join(x.rjust(n) if i else x.ljust(n) for i, (x, n) in enumerate(zip(row, w)))  # noqa: E731
    out = [fmt(head), fmt(["-" * n for n in w])] + [fmt(r) for r in lines]
    pairs = [r["pair"] for r in results[0]["pairs"]]
    if len(pairs) > 1:
        out += ["", "inliers per pair (first 20):"]
        ph = ["pair"] + [r["conf"] for r in results]
        prow = [[f"{a} {b}"] + [str(r["pairs"][i].get("inliers", "-")) for r in results]
                for i, (a, b) in enumerate(pairs[:20])]
        pw = [max(len(x) for x in col) for col in zip(ph, *prow)]
        pf = lambda row: "  ".join(x.rjust(n) if i else x.ljust(n) for i, (x, n) in enumerate(zip(row, pw)))  # noqa: E731
        out += [pf(ph)] + [pf(r) for r in prow]
    return "\n".join(out)


def _small(image_dir: Path, name: str, side: int = 640):
    img = read_image(image_dir / name)
    s = min(1.0, side / max(img.shape[:2]))
    if s < 1:
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img), s


def draw(results: list[dict], masks: list[dict], image_dir: Path, pair, path: Path, model_kind: str,
         max_lines: int = 100) -> Path:
    """Bar chart (keypoints, matches, inliers per conf; inlier ratio) and `pair` drawn per conf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .demo import plot_matches, sample_matches

    n = len(results)
    fig = plt.figure(figsize=(FIG_WIDTH, BAR_HEIGHT + PAIR_HEIGHT * n), dpi=FIG_DPI)
    grid = fig.add_gridspec(1 + n, 2, height_ratios=[BAR_HEIGHT] + [PAIR_HEIGHT] * n, width_ratios=[3, 1])
    ax = fig.add_subplot(grid[0, 0])
    x = np.arange(n)
    for k, (key, label) in enumerate((("keypoints_per_image", "keypoints / image"),
                                      ("matches_per_pair", "mutual matches / pair"),
                                      ("inliers_per_pair", f"RANSAC inliers / pair ({model_kind})"))):
        bars = ax.bar(x + (k - 1) * 0.27, [r[key] for r in results], 0.27, label=label)
    for bar, r in zip(bars, results):  # the inlier ratio above each inlier bar
        ax.annotate(f"{100 * r['inlier_ratio']:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [r["conf"] for r in results])
    ax.margins(y=0.15)
    legend = fig.add_subplot(grid[0, 1])
    legend.axis("off")
    legend.legend(*ax.get_legend_handles_labels(), loc="center", fontsize=8)
    ax.set_title("mean over images / pairs (% above the inliers: inlier ratio)", fontsize=10)
    if pair is not None:
        (img0, s0), (img1, s1) = _small(image_dir, pair[0]), _small(image_dir, pair[1])
        for i, (r, m) in enumerate(zip(results, masks)):
            axp = fig.add_subplot(grid[1 + i, :])
            if tuple(pair) not in m:
                axp.axis("off")
                continue
            p0, p1, inl = m[tuple(pair)]
            idx = np.flatnonzero(inl)[sample_matches(int(inl.sum()), max_lines)]
            out = np.flatnonzero(~inl)[sample_matches(int((~inl).sum()), max_lines // 4)]
            shown = np.concatenate([out, idx])
            plot_matches(axp, img0, img1, p0[shown] * s0, p1[shown] * s1, inl[shown],
                         f"{r['conf']}: {pair[0]} – {pair[1]}: {int(inl.sum())} inliers of {len(inl)} matches "
                         f"(drawn: {len(idx)} inliers in green, {len(out)} outliers in red)")
            axp.title.set_fontsize(9)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.97, bottom=0.02, hspace=0.3)
    fig.savefig(path, dpi=FIG_DPI)
    plt.close(fig)
    return path


def run(image_dir: Path, conf_names: list[str], output: Path, pairs_file: Path | None = None,
        homography: bool = False, max_pairs: int = 50, ransac_px: float = 3.0, resize_max: int | None = None) -> dict:
    """Compare the confs; returns the report written to <output>/compare.json."""
    confs = feature_confs()
    unknown = [c for c in conf_names if c not in confs]
    if unknown:
        raise KeyError(f"Unknown conf(s) {', '.join(unknown)}. Available: {', '.join(sorted(confs))}")
    image_dir, output = Path(image_dir), Path(output)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"--images {image_dir} is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    selected = {}
    for c in conf_names:
        conf = confs[c]
        if resize_max:
            conf["preprocessing"] = {**conf.get("preprocessing", {}), "resize_max": int(resize_max)}
        selected[c] = conf
    if pairs_file is not None:
        pairs = parse_pairs(pairs_file)
        names = sorted({n for p in pairs for n in p})
        missing = [n for n in names if not (image_dir / n).exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of {pairs_file} are not in {image_dir}, e.g. {missing[0]}")
    else:
        names = image_names(selected[conf_names[0]], image_dir)
        if len(names) < 2:
            raise ValueError(f"{image_dir} holds {len(names)} image(s): need at least 2 to compare")
        pairs = default_pairs(names, max_pairs)
    model_kind = "homography" if homography else "fundamental"
    matcher = {k: v for k, v in get_matcher_conf("NN-mutual")["model"].items() if k != "name"}
    logger.info(f"Comparing {len(conf_names)} conf(s) on {len(names)} images, {len(pairs)} pairs "
                f"(RANSAC {model_kind}, {ransac_px} px).")
    results, masks = [], []
    for c in tqdm(conf_names, desc="confs"):
        r, m = run_conf(c, selected[c], image_dir, names, pairs, output, model_kind, ransac_px, matcher)
        results.append(r)
        masks.append(m)
    drawn = next((tuple(p) for p in pairs if all(tuple(p) in m for m in masks)), None)
    picture = draw(results, masks, image_dir, drawn, output / "compare.png", model_kind)
    report = {"images": str(image_dir), "model": model_kind, "ransac_px": ransac_px,
              "resize_max": resize_max, "pairs": [list(p) for p in pairs],
              "drawn_pair": list(drawn) if drawn else None, "picture": str(picture), "confs": results}
    (output / "compare.json").write_text(json.dumps(report, indent=2))
    return report


def cli(argv=None):
    from .confs import help_epilog

    p = argparse.ArgumentParser(prog="python -m hndesc_features.compare", description=__doc__.split("\n\n")[0],
                                epilog=help_epilog("features"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="folder of your photos (searched recursively)")
    p.add_argument("--confs", default=DEFAULT_CONFS,
                   help=f"comma-separated feature confs to compare (listed below; default: {DEFAULT_CONFS})")
    p.add_argument("--pairs", type=Path, help="pairs file, one 'name0 name1' per line, names relative to --images "
                                              "(default: all pairs, nearest in sorted order first, at most --max_pairs)")
    p.add_argument("--max_pairs", type=int, default=50, help="cap on the default pairs (default: 50)")
    p.add_argument("--homography", action="store_true",
                   help="fit a homography (planar scene or a camera that only rotates) instead of a fundamental matrix")
    p.add_argument("--ransac_px", type=float, default=3.0,
                   help="RANSAC threshold in pixels of the original images (default: 3)")
    p.add_argument("--resize_max", type=int,
                   help="resize images so the long side is at most this (default: each conf's own, 1024)")
    p.add_argument("--output", type=Path, default=Path("compare_out"),
                   help="output folder: compare.json, compare.png, features/<conf>.h5 (default: compare_out)")
    a = p.parse_args(argv)
    names = [c.strip() for c in a.confs.split(",") if c.strip()]
    confs = feature_confs()
    unknown = [c for c in names if c not in confs]
    if not names or unknown:
        p.error(f"unknown conf(s) {', '.join(unknown) or '(none given)'} in --confs; choose from: "
                f"{', '.join(sorted(confs))}")
    if a.max_pairs < 1:
        p.error("--max_pairs must be at least 1")
    try:
        report = run(a.images, names, a.output, a.pairs, a.homography, a.max_pairs, a.ransac_px, a.resize_max)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, ImageReadError) as e:
        logger.error(str(e).strip("'\""))
        sys.exit(1)
    print(table(report["confs"], report["model"]))
    print(f"\nwrote {a.output / 'compare.json'} and {report['picture']}")


if __name__ == "__main__":
    cli()
