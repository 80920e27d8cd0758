"""COCO 2017 as downloaded from cocodataset.org: ``root/train2017/*.jpg``, ``root/val2017``, ...

Only the images are used (self-supervised homography pairs); annotations are ignored.
"""
from __future__ import annotations

from pathlib import Path

from .image_folder import ImageFolder, expand, list_images

SPLITS = ("train", "val", "test", "unlabeled")


def coco_images(root, split: str = "train") -> list[Path]:
    if split not in SPLITS:
        raise ValueError(f"COCO split must be one of {SPLITS}, got '{split}'")
    folder = expand(root) / f"{split}2017"
    if not folder.is_dir():
        raise FileNotFoundError(f"COCO: '{folder}' not found (expected the COCO 2017 layout "
                                f"root/{split}2017/*.jpg)")
    paths = list_images(folder, recursive=False, exts=(".jpg", ".jpeg", ".png"))
    if not paths:
        raise FileNotFoundError(f"COCO: no images in '{folder}'")
    return paths


class COCO(ImageFolder):
    default_conf = {**ImageFolder.default_conf, "source": {"name": "coco", "root": None, "split": "train"}}
