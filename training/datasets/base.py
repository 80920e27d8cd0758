"""Shared pieces of the training datasets: image reading, per-sample seeding, the base class.

Every dataset is indexed by ``(index, seed)`` pairs (a plain int ``i`` means ``(i, i)``): the
trainer's sampler decides the data order and gives each sample its own seed, so a sample is a
pure function of its key. That is what makes ``--resume`` exact and DDP ranks independent of
worker scheduling.
"""
from __future__ import annotations

import os
import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch

from hndesc_features.config import merge  # noqa: F401 (re-exported: the one config merge)

logger = logging.getLogger("hndesc_features.training")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


class CorruptImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


def read_image(path, grayscale: bool = False, warn: bool = True) -> Optional[np.ndarray]:
    """H×W×3 RGB (or H×W gray) uint8 read by the package's one image reader (hloc's pixels,
    EXIF orientation ignored: ``hndesc_features.io.read_image``); None (and a warning) if unreadable."""
    from hndesc_features.io import ImageReadError
    from hndesc_features.io import read_image as _read

    try:
        img = _read(Path(path), grayscale)
    except ImageReadError as e:
        if warn:
            warnings.warn(f"Skipping image: {e}", CorruptImageWarning, stacklevel=2)
        return None
    if img.dtype != np.uint8:  # 16-bit files: to 8 bits as OpenCV's 8-bit decode does
        img = (img / 257.0).round().clip(0, 255).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    return np.ascontiguousarray(img)


def resize_long_side(img: np.ndarray, long_side: float, min_side: int = 0) -> np.ndarray:
    """Resize so that max(H, W) == long_side (and min(H, W) >= min_side), cv2 area/linear."""
    h, w = img.shape[:2]
    s = long_side / max(h, w)
    if min_side:
        s = max(s, min_side / min(h, w))
    if abs(s - 1) < 1e-6:
        return img
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """H×W(×C) uint8 → C×H×W float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img))
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    return t.float() / 255.0


def split_key(key) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), int(key)


def sample_rng(seed: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(e) & 0xFFFFFFFF for e in extra]])


class BaseDataset(torch.utils.data.Dataset):
    """Datasets of the trainer: ``default_conf`` merged with the config's ``data`` section.

    Subclasses implement ``_init(conf)``, ``__len__`` and ``get(index, rng, seed) -> dict``.
    A class-level ``collate`` (staticmethod) may replace torch's default collation.
    """

    default_conf: dict[str, Any] = {}

    def __init__(self, conf: Optional[dict] = None, split: str = "train"):
        self.conf = merge(self.default_conf, conf)
        self.split = split
        self._init(self.conf)

    def _init(self, conf: dict) -> None:  # pragma: no cover - interface
        pass

    def get(self, index: int, rng: np.random.Generator, seed: int) -> dict:  # pragma: no cover
        raise NotImplementedError

    def __getitem__(self, key) -> dict:
        index, seed = split_key(key)
        return self.get(index, sample_rng(seed, index), seed)


DEFAULT_ENV = {"HNDESC_WALLPAPERS": "~/.cache/hndesc_features/wallpapers"}


def expand(path) -> Path:
    """~ and $VARS expanded; ${HNDESC_WALLPAPERS} defaults to ~/.cache/hndesc_features/wallpapers,
    ${HNDESC_SHARED_DATA} to the ../shared/data folder found by dev_images."""
    path = str(path)
    if "HNDESC_SHARED_DATA" in path and "HNDESC_SHARED_DATA" not in os.environ:
        from .dev_images import shared_data_dir

        d = shared_data_dir()
        if d is None:
            raise FileNotFoundError(f"'{path}': ../shared/data not found (set HNDESC_SHARED_DATA)")
        path = path.replace("${HNDESC_SHARED_DATA}", str(d)).replace("$HNDESC_SHARED_DATA", str(d))
    for k, v in DEFAULT_ENV.items():
        path = path.replace(f"${{{k}}}", os.environ.get(k, v)).replace(f"${k}", os.environ.get(k, v))
    out = os.path.expandvars(os.path.expanduser(path))
    import re

    unset = re.findall(r"\$\{?(HNDESC_[A-Z_]+)", out)
    if unset:  # e.g. ${HNDESC_MEGADEPTH} of the paper's training configs
        raise FileNotFoundError(f"'{path}': set the environment variable {unset[0]} (a dataset folder, "
                                "see training/README.md)")
    return Path(out)


def list_images(root, recursive: bool = True, exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """Sorted image paths under root (by extension, case-insensitive; hidden files skipped)."""
    root = expand(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder '{root}' does not exist")
    it = root.rglob("*") if recursive else root.iterdir()
    exts = tuple(e.lower() for e in exts)
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))
