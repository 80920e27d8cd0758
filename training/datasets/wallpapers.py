"""Extra real training photos from Debian wallpaper packages (a one-off preparation step).

    mkdir -p ~/.cache/hndesc_features/debs && cd ~/.cache/hndesc_features/debs
    apt-get download mate-backgrounds plasma-workspace-wallpapers lomiri-wallpapers-16.04 \
        lomiri-wallpapers-20.04 lomiri-wallpapers ukui-wallpapers gnome-backgrounds
    python -m hndesc_features.training.datasets.wallpapers [--debs DIR] [--output DIR]

Extracts every JPEG/PNG of the .deb files (``dpkg-deb -x``), keeps one copy per picture (the
packages hold many resolutions of each: near-duplicates are detected on 32×32 thumbnails and the
largest copy is kept), resizes to ≤ ``--max-side`` px, drops images smaller than ``--min-side``,
drops low-texture pictures (gradients, logos: < ``--min-keypoints`` SIFT keypoints at 640 px)
and drops every near-duplicate of a photo of ``../shared/data/photos`` — by thumbnail and by
name — (the same packages are the source of that folder, which holds held-out images).
Writes JPEGs and ``manifest.tsv``.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from .base import read_image, resize_long_side
from .base import DEFAULT_ENV, expand, list_images


def thumbnail(img: np.ndarray, size: int = 32) -> np.ndarray:
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    t = cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-9)


def near_duplicate(a: np.ndarray, b: np.ndarray, threshold: float = 0.9) -> bool:
    return float(a @ b) > threshold


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hndesc_features.training.datasets.wallpapers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debs", default="~/.cache/hndesc_features/debs")
    p.add_argument("--output", default=DEFAULT_ENV["HNDESC_WALLPAPERS"])
    p.add_argument("--max-side", type=int, default=1600)
    p.add_argument("--min-side", type=int, default=480)
    p.add_argument("--min-keypoints", type=int, default=80,
                   help="drop low-texture pictures (gradients, logos): fewer SIFT keypoints at 640 px")
    p.add_argument("--exclude", action="append", default=None,
                   help="folders whose photos (and their near-duplicates) must not be used "
                        "(default: ../shared/data/photos)")
    a = p.parse_args(argv)
    debs = sorted(expand(a.debs).glob("*.deb"))
    if not debs:
        print(f"error: no .deb in {expand(a.debs)} (run the apt-get download step first)", file=sys.stderr)
        return 2
    exclude_dirs = a.exclude
    if exclude_dirs is None:
        from .dev_images import shared_data_dir

        d = shared_data_dir()
        exclude_dirs = [d / "photos"] if d is not None else []
    excluded, excluded_names = [], []
    for d in exclude_dirs:
        for q in list_images(d):
            img = read_image(q)
            if img is not None:
                excluded.append(thumbnail(img))
            # "34_Autumn.jpg" → "autumn": the package path of the same picture contains it
            stem = q.stem.split("_", 1)[1] if q.stem[:2].isdigit() and "_" in q.stem else q.stem
            excluded_names.append(stem.lower())
    sift = cv2.SIFT_create(contrastThreshold=0.04)
    out = expand(a.output)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.jpg"):
        old.unlink()
    kept: list[dict] = []  # {thumb, area, name, src, deb, size}
    with tempfile.TemporaryDirectory() as tmp:
        for deb in debs:
            dst = Path(tmp) / deb.stem
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dst)], check=True)
            for path in sorted(list_images(dst)):
                if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                    continue
                img = read_image(path, warn=False)
                if img is None or min(img.shape[:2]) < a.min_side:
                    continue
                th = thumbnail(img)
                src_l = str(path.relative_to(dst)).lower()
                if any(near_duplicate(th, e) for e in excluded) or any(n in src_l for n in excluded_names):
                    continue
                small = cv2.cvtColor(resize_long_side(img, 640), cv2.COLOR_RGB2GRAY)
                if len(sift.detect(small, None)) < a.min_keypoints:
                    continue
                area = img.shape[0] * img.shape[1]
                dup = next((k for k in kept if near_duplicate(th, k["thumb"])), None)
                if dup is not None:
                    if area <= dup["area"]:
                        continue
                    kept.remove(dup)
                    (out / dup["name"]).unlink()
                img = resize_long_side(img, a.max_side) if max(img.shape[:2]) > a.max_side else img
                src = str(path.relative_to(dst))
                name = hashlib.sha1(src.encode()).hexdigest()[:10] + "_" + Path(src).stem[:40] + ".jpg"
                name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
                cv2.imwrite(str(out / name), np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
                kept.append({"thumb": th, "area": area, "name": name, "src": src, "deb": deb.name,
                             "size": f"{img.shape[1]}x{img.shape[0]}"})
            subprocess.run(["rm", "-rf", str(dst)], check=True)
    lines = ["file\tdebian_package\tsource_path\tsize"]
    lines += [f"{k['name']}\t{k['deb']}\t{k['src']}\t{k['size']}" for k in kept]
    (out / "manifest.tsv").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(kept)} photos to {out} (excluded near-duplicates of {len(excluded)} shared photos)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
