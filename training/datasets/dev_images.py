"""The fixed split of the real photos we can reach here (../shared/data + images inside wheels).

Every method trains on `train_images()` and is validated / benchmarked on `heldout_images()`;
nothing from the held-out list may be used for training or tuning. Strecha scenes are kept for
GT-pose localization benchmarks only.
"""
from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")

# skimage.data images that are real photographs (no synthetic/medical/text images).
SKIMAGE_PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "brick.png",
                  "grass.png", "gravel.png", "camera.png", "coins.png", "horse.png",
                  "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg"]
SKIMAGE_HELDOUT = {"coffee.png", "motorcycle_left.png", "motorcycle_right.png"}


def shared_data_dir() -> Path | None:
    """`../shared/data` seen from the repository root, or $HNDESC_SHARED_DATA."""
    env = os.environ.get("HNDESC_SHARED_DATA")
    cands = [Path(env)] if env else []
    root = Path(__file__).resolve().parents[2]
    cands += [root / ".." / "shared" / "data", Path.cwd() / ".." / "shared" / "data"]
    for c in cands:
        if c.is_dir():
            return c.resolve()
    return None


def _skimage_dir() -> Path | None:
    try:
        import skimage.data
    except ImportError:
        return None
    return Path(skimage.data.__file__).parent


def _sklearn_dir() -> Path | None:
    try:
        import sklearn.datasets
    except ImportError:
        return None
    return Path(sklearn.datasets.__file__).parent / "images"


def _split():
    train, held = [], []
    data = shared_data_dir()
    if data is not None:
        photos = sorted(p for p in (data / "photos").iterdir() if p.suffix.lower() in IMAGE_EXTS)
        for i, p in enumerate(photos):
            (held if i % 4 == 0 else train).append(p)
        train += sorted((data / "sceaux_castle" / "images").glob("*.JPG"))
        train += sorted((data / "sacre_coeur" / "mapping").glob("*.jpg"))
    sk = _skimage_dir()
    if sk is not None:
        for n in SKIMAGE_PHOTOS:
            if (sk / n).exists():
                (held if n in SKIMAGE_HELDOUT else train).append(sk / n)
    sl = _sklearn_dir()
    if sl is not None:
        train += [p for p in sorted(sl.glob("*.jpg")) if p.name == "china.jpg"]
        held += [p for p in sorted(sl.glob("*.jpg")) if p.name == "flower.jpg"]
    return train, held


def train_images() -> list[Path]:
    return _split()[0]


def heldout_images() -> list[Path]:
    return _split()[1]
