"""Image folders for self-supervised training; their images come from a *source* (sources.py).

A source is a dict (or a list of dicts, concatenated) with a ``name``:

- ``dev_images``: the fixed split of the photos we can reach (``split: train|heldout``),
  see dev_images.py;
- ``folder``: every image under ``root`` (recursive by default; ``~`` and ``$VARS`` expanded);
- ``coco``: a COCO 2017 folder (``root/{train,val,test}2017/*.jpg``), ``split`` train|val|test;
- ``megadepth``: the images of MegaDepth as released for CAPS (``root/<split>/<scene>/dense*/aligned/images``);
- ``phototourism``: the images of Phototourism scenes in the IMC layout;
- ``list``: explicit ``paths``;
- ``webcam``: static-webcam images (``scenes``, ``split: train|val|all``; see webcam.py).

Unreadable files are detected when first loaded: a ``CorruptImageWarning`` names the file and
the dataset moves on to the next image.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .base import DEFAULT_ENV, BaseDataset, CorruptImageWarning, expand, list_images, read_image, resize_long_side, to_tensor  # noqa: F401
from .sources import source_paths  # noqa: F401 (re-exported)


class ImageLoader:
    """Reads images of a path list with an optional in-memory cache, skipping corrupt files."""

    def __init__(self, paths: Sequence[Path], grayscale: bool = False, max_side: Optional[int] = None,
                 cache: bool = False):
        self.paths = list(paths)
        self.grayscale = grayscale
        self.max_side = max_side
        self.cache = {} if cache else None
        self.bad: set[int] = set()

    def __len__(self):
        return len(self.paths)

    def load(self, index: int) -> tuple[int, np.ndarray]:
        """(index actually used, image): a corrupt file is skipped for the next readable one."""
        n = len(self.paths)
        for k in range(n):
            i = (index + k) % n
            if i in self.bad:
                continue
            if self.cache is not None and i in self.cache:
                return i, self.cache[i]
            img = read_image(self.paths[i], self.grayscale, warn=False)
            if img is None:
                self.bad.add(i)
                warnings.warn(f"Skipping corrupt or unreadable image {self.paths[i]}", CorruptImageWarning)
                continue
            if self.max_side and max(img.shape[:2]) > self.max_side:
                img = resize_long_side(img, self.max_side)
            if self.cache is not None:
                self.cache[i] = img
            return i, img
        raise RuntimeError(f"None of the {n} images can be read (first: {self.paths[0] if n else None})")


class ImageFolder(BaseDataset):
    """Single images of a source (e.g. for features/inference or custom pair generators)."""

    default_conf = {
        "source": None,  # an image source spec (sources.py), e.g. {name: folder, root: DIR}
        "grayscale": False,
        "resize_max": None,  # long side; None = original size
        "cache": False,
    }

    def _init(self, conf):
        self.loader = ImageLoader(source_paths(conf["source"]), conf["grayscale"], conf["resize_max"],
                                  conf["cache"])

    def __len__(self):
        return len(self.loader)

    def get(self, index, rng, seed):
        i, img = self.loader.load(index)
        return {"image": to_tensor(img), "name": str(self.loader.paths[i]), "index": i}
