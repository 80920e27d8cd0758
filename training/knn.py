"""Write a global-descriptor file (hloc global-features .h5 layout) of the training images, for
HNDesc's ``gd`` mining (``loss.gd.knn_file``).

The paper mines with NetVLAD/GeM neighbours; those weights cannot be downloaded here. This tool
uses any HNDesc model we have instead (default: the shipped dense ``hndesc_small``): the global
descriptor of an image is the L2-normalised mean of the model's descriptors
(``training.losses.hndesc.global_descriptor``). With hloc and NetVLAD weights at hand, use hloc's
``extract_features --conf netvlad`` on the training images instead: ``KNNIndex`` reads both.

    python -m training.knn --output runs/knn_hndesc_small.h5 [--backbone small --weights W] [--size 384]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm


def image_key(path: Path) -> str:
    """Group name of an image: its folder and file name (``KNNIndex`` matches names as path suffixes)."""
    return f"{path.parent.name}/{path.name}"


def write_global_descriptors(paths, model, output: Path, size: int = 384) -> Path:
    from .datasets.base import read_image, resize_long_side
    from .losses.hndesc import global_descriptor

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".partial")
    n = 0
    with h5py.File(tmp, "w") as f:
        for p in tqdm(list(paths), desc="global descriptors"):
            img = read_image(str(p))
            if img is None:
                continue
            img = resize_long_side(img, size)
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
            g = global_descriptor(model, x).numpy().astype(np.float32)
            f.create_group(image_key(Path(p))).create_dataset("global_descriptor", data=g[None])
            n += 1
    if n == 0:
        tmp.unlink(missing_ok=True)
        raise ValueError("no readable training image")
    tmp.replace(output)
    return output


def parse_sources(text: str) -> list[dict]:
    """``dev_images:train,webcam:train,folder:~/photos`` → image source dicts (datasets.image_folder)."""
    out = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        name, _, arg = item.partition(":")
        out.append({"name": "folder", "root": arg} if name == "folder" else {"name": name, "split": arg or "train"})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.knn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--backbone", default="small", help="HNDesc backbone (small | patch | caps | r2d2)")
    ap.add_argument("--weights", default=None, help="default: the shipped weights of the backbone")
    ap.add_argument("--images", default="dev_images:train",
                    help="image source(s), comma-separated name:split (dev_images:train, webcam:train) or "
                         "folder:<root> (the training split of the dev photos by default)")
    ap.add_argument("--exclude", default="", help="comma-separated path substrings to leave out (e.g. sacre_coeur)")
    ap.add_argument("--size", type=int, default=384, help="long side the images are resized to")
    a = ap.parse_args(argv)
    from hndesc_features.extractors.hndesc import load_hndesc

    from .datasets.image_folder import source_paths

    torch.set_grad_enabled(False)
    model = load_hndesc(a.backbone, a.weights)
    excl = [e for e in a.exclude.split(",") if e]
    paths = [p for p in source_paths(parse_sources(a.images)) if not any(e in str(p) for e in excl)]
    out = write_global_descriptors(paths, model, a.output, a.size)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
