"""Extract and match two images, then write a match picture — the package's default job.

    python -m hndesc_features.demo --output demo_out [--conf CONF] [--image0 A --image1 B]

Without --image0/--image1 it uses a real photo that ships with matplotlib (grace_hopper.jpg) and
a copy of it under a known homography and a darkening: the report then also gives the share of
matches within 3 px of the ground truth.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np

from . import logger
from .confs import DEFAULT_FEATURE_CONF, feature_confs, get_feature_conf, get_matcher_conf
from .extract_features import main as extract
from .match_features import main as match, names_to_pair
from .pairs_from_exhaustive import main as make_pairs

DEMO_H = np.array([[0.78, -0.22, 80.0], [0.20, 0.80, 30.0], [1.2e-4, -0.8e-4, 1.0]])


def default_pair(out: Path):
    """grace_hopper.jpg (matplotlib's sample data) and a warped, darkened copy; returns H."""
    from matplotlib import cbook

    src = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    warped = cv2.warpPerspective(img, DEMO_H, (w, h), flags=cv2.INTER_LINEAR)
    dark = (255.0 * (warped / 255.0) ** 1.8 * 0.7).clip(0, 255).astype(np.uint8)
    (out / "images").mkdir(parents=True, exist_ok=True)
    shutil.copy(src, out / "images" / "a.jpg")
    cv2.imwrite(str(out / "images" / "b.jpg"), dark, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return "a.jpg", "b.jpg", DEMO_H


def sample_matches(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Indices of a fixed random sample of at most k of n matches (sorted)."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def plot_matches(ax, img0, img1, kp0, kp1, correct, title: str):
    """Draw two images side by side on `ax` with the given matches (green: correct, red: wrong)."""
    h = max(img0.shape[0], img1.shape[0])
    canvas = np.zeros((h, img0.shape[1] + img1.shape[1], 3), np.uint8)
    canvas[: img0.shape[0], : img0.shape[1]] = img0
    canvas[: img1.shape[0], img0.shape[1]:] = img1
    ax.imshow(canvas)
    for (x0, y0), (x1, y1), ok in zip(kp0, kp1, correct):
        ax.plot([x0, x1 + img0.shape[1]], [y0, y1], "-", lw=1.0,
                color=(0.1, 0.85, 0.2) if ok else (0.95, 0.15, 0.15), alpha=0.85)
        ax.plot([x0, x1 + img0.shape[1]], [y0, y1], "o", ms=2.5, color="yellow", alpha=0.9)
    ax.axis("off")
    ax.set_title(title)


def draw_matches(img0, img1, kp0, kp1, correct, path: Path, title: str):
    """Side-by-side picture of the given matches (green: correct, red: wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = max(img0.shape[0], img1.shape[0])
    w = img0.shape[1] + img1.shape[1]
    fig = plt.figure(figsize=(12, 12 * h / w + 0.6), dpi=100)
    plot_matches(fig.gca(), img0, img1, kp0, kp1, correct, title)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def run(conf_name: str, output: Path, image0=None, image1=None, draw: int = 80) -> dict:
    """Extract + match two images; every match is counted, a fixed random sample of `draw` of
    them is drawn (a picture of hundreds of lines is unreadable)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if image0 is None:
        n0, n1, H = default_pair(output)
        image_dir = output / "images"
    else:
        image_dir = output / "images"
        image_dir.mkdir(exist_ok=True)
        n0, n1, H = "a" + Path(image0).suffix, "b" + Path(image1).suffix, None
        shutil.copy(image0, image_dir / n0)
        shutil.copy(image1, image_dir / n1)
    conf = get_feature_conf(conf_name)
    feats = extract(conf, image_dir, output, as_half=False, image_list=[n0, n1], overwrite=True)
    pairs = make_pairs(output / "pairs.txt", image_list=[n0, n1])
    matches = match(get_matcher_conf("NN-mutual"), pairs, feats, matches=output / "matches.h5", overwrite=True)
    with h5py.File(feats) as f, h5py.File(matches) as fm:
        kp0, kp1 = f[n0]["keypoints"][()], f[n1]["keypoints"][()]
        m0 = fm[names_to_pair(n0, n1)]["matches0"][()]
    valid = m0 > -1
    mk0, mk1 = kp0[valid], kp1[m0[valid]]
    report = {"conf": conf_name, "keypoints": [len(kp0), len(kp1)], "matches": int(valid.sum())}
    if H is not None and len(mk0):
        proj = cv2.perspectiveTransform(mk0[None].astype(np.float64), H)[0]
        err = np.linalg.norm(proj - mk1, axis=1)
        correct = err < 3
        report["precision@3px"] = float(correct.mean())
    else:
        correct = np.ones(len(mk0), bool)
    img0 = cv2.imread(str(image_dir / n0))[:, :, ::-1]
    img1 = cv2.imread(str(image_dir / n1))[:, :, ::-1]
    title = f"{conf_name}: {report['matches']} mutual-NN matches"
    if "precision@3px" in report:
        title += f", {100 * report['precision@3px']:.1f}% within 3 px of the true homography"
    shown = sample_matches(len(mk0), draw)
    report["drawn"] = int(len(shown))
    if len(shown) < len(mk0):
        title += f"\n(a random sample of {len(shown)} drawn; green: correct, red: wrong)"
    draw_matches(img0, img1, mk0[shown], mk1[shown], correct[shown], output / "matches.png", title)
    report["picture"] = str(output / "matches.png")
    (output / "report.json").write_text(json.dumps(report, indent=2))
    return report


def cli(argv=None):
    from .confs import help_epilog

    p = argparse.ArgumentParser(prog="python -m hndesc_features.demo", description=__doc__.split("\n\n")[0],
                                epilog=help_epilog("features"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conf", default=DEFAULT_FEATURE_CONF, choices=sorted(feature_confs()), metavar="CONF",
                   help=f"feature conf (default: {DEFAULT_FEATURE_CONF})")
    p.add_argument("--output", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--image0", type=Path, help="first image (default: a built-in real photo)")
    p.add_argument("--image1", type=Path, help="second image (default: a warped, darkened copy of the first)")
    p.add_argument("--draw", type=int, default=80, help="matches drawn in the picture (all are counted; default 80)")
    a = p.parse_args(argv)
    if (a.image0 is None) != (a.image1 is None):
        p.error("give both --image0 and --image1, or neither")
    try:
        report = run(a.conf, a.output, a.image0, a.image1, a.draw)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        logger.error(str(e))
        sys.exit(1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli()
