"""Image folders and image *sources* (lists of photo paths) for self-supervised training.

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

from .base import IMAGE_EXTS, BaseDataset, CorruptImageWarning, read_image, resize_long_side, to_tensor


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
    return Path(os.path.expandvars(os.path.expanduser(path)))


def list_images(root, recursive: bool = True, exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """Sorted image paths under root (by extension, case-insensitive; hidden files skipped)."""
    root = expand(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder '{root}' does not exist")
    it = root.rglob("*") if recursive else root.iterdir()
    exts = tuple(e.lower() for e in exts)
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


def source_paths(source) -> list[Path]:
    """Image paths of one source dict or a list of them (``exclude``: substrings of paths to drop)."""
    if source is None:
        raise ValueError("data.source is missing: name an image source (dev_images, folder, coco, ...)")
    if isinstance(source, (list, tuple)):
        out = []
        for s in source:
            out += source_paths(s)
        return out
    paths = _source_paths(source)
    exclude = source.get("exclude") or []
    if isinstance(exclude, str):
        exclude = [exclude]
    paths = [p for p in paths if not any(e in str(p) for e in exclude)]
    if not paths:
        raise FileNotFoundError(f"image source {source} is empty after exclusions")
    return paths


def _source_paths(source) -> list[Path]:
    name = source.get("name")
    if name == "dev_images":
        from . import dev_images

        split = source.get("split", "train")
        if split not in ("train", "heldout"):
            raise ValueError(f"dev_images split must be 'train' or 'heldout', got '{split}'")
        paths = dev_images.train_images() if split == "train" else dev_images.heldout_images()
        if not paths:
            raise FileNotFoundError("dev_images: no photos found (../shared/data and skimage/sklearn missing)")
        return list(paths)
    if name == "folder":
        if "root" not in source:
            raise ValueError("source 'folder' needs a 'root'")
        paths = list_images(source["root"], source.get("recursive", True))
        if not paths:
            raise FileNotFoundError(f"No images under '{expand(source['root'])}'")
        return paths
    if name == "coco":
        from .coco import coco_images

        return coco_images(source["root"], source.get("split", "train"))
    if name == "megadepth":
        from .megadepth import megadepth_images

        return megadepth_images(source["root"], source.get("split", "train"), source.get("scenes"))
    if name == "phototourism":
        from .phototourism import phototourism_images

        return phototourism_images(source["root"], source.get("scenes"))
    if name == "list":
        return [expand(p) for p in source["paths"]]
    if name == "webcam":  # static webcams (webcam.py): chamonix, the dev benchmark scene, is refused
        from .webcam import DEFAULT_ROOT, TRAIN_SCENES, webcam_images

        return webcam_images(source.get("root", DEFAULT_ROOT), source.get("scenes", TRAIN_SCENES),
                             source.get("split", "train"), int(source.get("val_every", 5)),
                             int(source.get("val_offset", 2)))
    raise ValueError(f"Unknown image source '{name}' (dev_images, folder, coco, megadepth, phototourism, list, "
                     "webcam)")


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
        "source": {"name": "folder", "root": None, "recursive": True},
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
