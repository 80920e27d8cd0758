"""Image *sources*: lists of photo paths named by a dict (or a list of dicts, concatenated) with a
``name`` — ``dev_images``, ``folder``, ``coco``, ``megadepth``, ``phototourism``, ``list``
(see image_folder.py for the keys of each)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base import expand, list_images

# static webcams (webcam.py): the fixed split shared with benchmarks/webcam.py
FORBIDDEN_SCENES = ("chamonix",)  # the dev benchmark scene (benchmarks/webcam.py): never trained on
TRAIN_SCENES = ("courbevoie", "frankfurt")
DEFAULT_ROOT = "${HNDESC_SHARED_DATA}/webcam"


def check_scenes(scenes: Sequence[str]) -> list[str]:
    scenes = [scenes] if isinstance(scenes, str) else list(scenes)
    bad = [s for s in scenes if s in FORBIDDEN_SCENES]
    if bad:
        raise ValueError(f"webcam scene(s) {bad} are the dev benchmark scene: never train, validate or take "
                         f"styles on them (training scenes: {list(TRAIN_SCENES)})")
    if not scenes:
        raise ValueError("webcam: no scene given")
    return scenes


def webcam_images(root: str = DEFAULT_ROOT, scenes: Sequence[str] = TRAIN_SCENES, split: str = "train",
                  val_every: int = 5, val_offset: int = 2) -> list[Path]:
    """Sorted image paths of the scenes' ``train`` / ``val`` / ``all`` images (see the module doc)."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"webcam split must be train, val or all, got '{split}'")
    out = []
    for scene in check_scenes(scenes):
        d = expand(f"{root}/{scene}")
        if not d.is_dir():
            raise FileNotFoundError(f"webcam scene folder '{d}' does not exist")
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        for k, p in enumerate(files):
            held = val_every > 0 and k % int(val_every) == int(val_offset) % int(val_every)
            if split == "all" or (split == "val") == held:
                out.append(p)
    return out


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
        return webcam_images(source.get("root", DEFAULT_ROOT), source.get("scenes", TRAIN_SCENES),
                             source.get("split", "train"), int(source.get("val_every", 5)),
                             int(source.get("val_offset", 2)))
    raise ValueError(f"Unknown image source '{name}' (dev_images, folder, coco, megadepth, phototourism, list, "
                     "webcam)")
