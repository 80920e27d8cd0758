"""Write our dev HPatches: an HPatches-layout folder made from the HELD-OUT photos.

    python -m benchmarks.make_dev_hpatches --output datasets/dev-hpatches [--max_size 1024] [--seed 0]

For every held-out photo (training/datasets/dev_images.heldout_images()) two sequences:
- `v_<name>`: 1.ppm is the photo; k.ppm (k = 2..6) views it through a synthetic homography of
  growing strength (out-of-plane tilt = perspective, in-plane rotation, scale), composed with the
  smallest zoom that keeps the whole frame inside the photo (no black borders); mild photometric
  jitter.
- `i_<name>`: identity-ish homographies (sub-pixel shake) and photometric changes of growing
  severity: gamma, brightness/contrast, low light, colour cast, noise+blur (one of each, order
  drawn per sequence).
`H_1_k` maps pixel coordinates of 1.ppm to k.ppm (HPatches convention). Targets are rendered
from the full-resolution photo, so they are not up-sampled from the reference. Deterministic:
the same seed and photos give the same bytes.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from .common import BenchmarkError, logger, run_cli, write_json
from .photometric import PHOTOMETRIC_TYPES, apply_change, rng_for, sensor_noise, gamma

VERSION = 1


def sequence_stem(path: Path) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", Path(path).stem.lower()).strip("_")
    return s[:40] or "img"


def _scale_matrix(sx: float, sy: float) -> np.ndarray:
    """Pixel-centre-aware scaling: x' = (x + .5) sx - .5."""
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def _about_centre(M: np.ndarray, w: int, h: int) -> np.ndarray:
    cx, cy = (w - 1) / 2, (h - 1) / 2
    T = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1.0]])
    Ti = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]])
    return T @ M @ Ti


def _warp_pts(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ H.T
    return p[:, :2] / p[:, 2:]


def _frame_inside(H: np.ndarray, w: int, h: int, margin: float = 0.5) -> bool:
    """True if the whole target frame (w×h) maps inside the source frame through H^-1."""
    n = 9
    xs, ys = np.linspace(0, w - 1, n), np.linspace(0, h - 1, n)
    border = np.concatenate([np.stack([xs, np.zeros(n)], 1), np.stack([xs, np.full(n, h - 1)], 1),
                             np.stack([np.zeros(n), ys], 1), np.stack([np.full(n, w - 1), ys], 1)])
    Hi = np.linalg.inv(H)
    den = np.concatenate([border, np.ones((len(border), 1))], 1) @ Hi[2]
    if np.any(den <= 1e-9):
        return False
    q = _warp_pts(Hi, border)
    return bool(np.all((q[:, 0] >= -margin) & (q[:, 0] <= w - 1 + margin)
                       & (q[:, 1] >= -margin) & (q[:, 1] <= h - 1 + margin)))


def _cover(H0: np.ndarray, w: int, h: int) -> Optional[np.ndarray]:
    """Smallest zoom z ≥ 1 about the centre such that Z(z)·H0 has no border; None if > 4."""
    def Hz(z):
        return _about_centre(np.diag([z, z, 1.0]), w, h) @ H0
    if _frame_inside(Hz(1.0), w, h):
        return Hz(1.0)
    lo, hi = 1.0, 4.0
    if not _frame_inside(Hz(hi), w, h):
        return None
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if _frame_inside(Hz(mid), w, h) else (mid, hi)
    return Hz(hi * 1.002)


def viewpoint_homography(w: int, h: int, t: float, rng: np.random.Generator) -> np.ndarray:
    """Homography of strength t ∈ (0, 1]: tilt (virtual camera rotation → perspective),
    in-plane rotation, scale and shift, plus the zoom that keeps the frame covered."""
    for _ in range(100):
        f = 1.1 * max(w, h)
        K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
        tilt = np.deg2rad(rng.uniform(0.5, 1.0) * 32.0 * t) * rng.choice([-1, 1])
        pan = np.deg2rad(rng.uniform(0.0, 1.0) * 24.0 * t) * rng.choice([-1, 1])
        Rx = cv2.Rodrigues(np.array([tilt, 0.0, 0.0]))[0]
        Ry = cv2.Rodrigues(np.array([0.0, pan, 0.0]))[0]
        P = K @ Ry @ Rx @ np.linalg.inv(K)
        ang = np.deg2rad(rng.uniform(0.4, 1.0) * 28.0 * t) * rng.choice([-1, 1])
        s = math.exp(rng.uniform(-0.2, 0.3) * t)
        c, sn = math.cos(ang) * s, math.sin(ang) * s
        A = np.array([[c, -sn, rng.uniform(-0.04, 0.04) * t * w],
                      [sn, c, rng.uniform(-0.04, 0.04) * t * h], [0, 0, 1.0]])
        P = P / P[2, 2]
        c = np.array([[(w - 1) / 2, (h - 1) / 2]])
        dc = c - _warp_pts(P, c)  # re-centre: the photo centre stays near the frame centre
        P = np.array([[1, 0, dc[0, 0]], [0, 1, dc[0, 1]], [0, 0, 1.0]]) @ P
        H = _cover(_about_centre(A, w, h) @ P, w, h)
        if H is None:
            continue
        zoom = abs(np.linalg.det(H[:2, :2])) ** 0.5
        if zoom < 3.0:
            return H / H[2, 2]
    raise RuntimeError("could not sample a viewpoint homography")


def shake_homography(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Identity-ish: ≤ 0.15° rotation, ≤ 0.8 px shift, and the tiny zoom that hides borders."""
    ang = np.deg2rad(rng.uniform(-0.15, 0.15))
    c, s = math.cos(ang), math.sin(ang)
    A = np.array([[c, -s, rng.uniform(-0.8, 0.8)], [s, c, rng.uniform(-0.8, 0.8)], [0, 0, 1.0]])
    H = _cover(_about_centre(A, w, h), w, h)
    assert H is not None
    return H / H[2, 2]


def _render(full: np.ndarray, S: np.ndarray, H: np.ndarray, w: int, h: int) -> np.ndarray:
    """Target k = warp of the full-resolution photo by H·S (S: full → reference pixels)."""
    M = H @ S
    zoom_out = 1.0 / max(abs(np.linalg.det(M[:2, :2])) ** 0.5, 1e-9)
    src = full
    if zoom_out > 1.5:  # anti-alias strong minification
        src = cv2.GaussianBlur(full, (0, 0), 0.5 * (zoom_out - 1.0))
    return cv2.warpPerspective(src, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _write_h(path: Path, H: np.ndarray) -> None:
    path.write_text("".join(" ".join(f"{v:.12g}" for v in row) + "\n" for row in H))


def make_sequences(image_path: Path, out_dir: Path, seed: int, max_size: int, ext: str = "ppm") -> list[str]:
    full = cv2.imread(str(image_path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if full is None:
        raise BenchmarkError(f"Cannot read held-out image {image_path}.")
    H0, W0 = full.shape[:2]
    scale = min(1.0, max_size / max(H0, W0))
    w, h = int(round(W0 * scale)), int(round(H0 * scale))
    S = _scale_matrix(w / W0, h / H0)
    ref = cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA) if scale < 1 else full.copy()
    stem = sequence_stem(image_path)
    written = []
    for prefix in ("v", "i"):
        name = f"{prefix}_{stem}"
        rng = rng_for(seed, name)
        d = out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"1.{ext}"), ref)
        kinds = list(rng.permutation(PHOTOMETRIC_TYPES))
        for k in range(2, 7):
            t = (k - 1) / 5.0
            if prefix == "v":
                H = viewpoint_homography(w, h, t, rng)
                img = _render(full, S, H, w, h)
                img = sensor_noise(gamma(img, float(rng.uniform(0.9, 1.1))), rng, shot=0.01, read=0.003)
            else:
                H = shake_homography(w, h, rng)
                img = apply_change(_render(full, S, H, w, h), kinds[k - 2], t, rng)
            cv2.imwrite(str(d / f"{k}.{ext}"), img)
            _write_h(d / f"H_1_{k}", H)
        written.append(name)
    return written


def heldout_sources() -> list[Path]:
    try:
        from hndesc_features.training.datasets.dev_images import heldout_images
    except ImportError:
        from hndesc_features.training.datasets.dev_images import heldout_images
    return list(heldout_images())


def make_dev_hpatches(output: Path, images: Optional[Sequence[Path]] = None, seed: int = 0,
                      max_size: int = 1024, ext: str = "ppm", limit: Optional[int] = None) -> list[str]:
    output = Path(output)
    if images is None:
        images = heldout_sources()
    images = sorted({Path(p) for p in images}, key=lambda p: p.name)
    if limit:
        images = images[:limit]
    if not images:
        raise BenchmarkError("No held-out images found (../shared/data missing and no skimage?).")
    stems = [sequence_stem(p) for p in images]
    if len(set(stems)) != len(stems):
        raise BenchmarkError(f"Two source images give the same sequence name: {stems}")
    output.mkdir(parents=True, exist_ok=True)
    seqs = []
    for p in tqdm(images, desc="dev-hpatches"):
        seqs += make_sequences(p, output, seed, max_size, ext)
    write_json(output / "dev_hpatches.json", {
        "version": VERSION, "seed": seed, "max_size": max_size,
        "sources": {sequence_stem(p): str(p) for p in images}, "sequences": sorted(seqs),
        "note": "synthetic homographies/photometry on held-out photos; not the HPatches release"})
    logger.info(f"Wrote {len(seqs)} sequences to {output}.")
    return seqs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--output", type=Path, required=True, help="folder to write")
    parser.add_argument("--max_size", type=int, default=1024, help="long side of 1.ppm (px)")
    parser.add_argument("--seed", type=int, default=0, help='seed of the synthetic changes')
    parser.add_argument("--ext", default="ppm", choices=["ppm", "png"], help='image format (HPatches uses ppm)')
    parser.add_argument("--limit", type=int, help="only the first N held-out photos")
    args = parser.parse_args(argv)
    make_dev_hpatches(args.output, seed=args.seed, max_size=args.max_size, ext=args.ext, limit=args.limit)


if __name__ == "__main__":
    run_cli(main)
