"""Write a global-descriptor file (hloc global-features .h5 layout) of the training images, for
HNDesc's ``gd`` mining (``loss.gd.knn_file``).

The paper mines with NetVLAD/GeM neighbours; those weights cannot be downloaded here. This tool
uses any HNDesc model we have instead (default: the shipped dense ``hndesc_small``): the global
descriptor of an image is the L2-normalised mean of the model's descriptors
(``training.losses.hndesc.global_descriptor``). With hloc and NetVLAD weights at hand, use hloc's
``extract_features --conf netvlad`` on the training images instead: ``KNNIndex`` reads both.

    python -m hndesc_features.training.knn --output runs/knn_hndesc_small.h5 [--backbone small --weights W] [--size 384]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hndesc_features.training.knn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--backbone", default="small", help="HNDesc backbone (small | patch | caps | r2d2)")
    ap.add_argument("--weights", default=None, help="default: the shipped weights of the backbone")
    ap.add_argument("--images", default="dev_images:train",
                    help="image source as name:split (the training split of the dev photos by default)")
    ap.add_argument("--size", type=int, default=384, help="long side the images are resized to")
    a = ap.parse_args(argv)
    from hndesc_features import weights as registry

    from .datasets.image_folder import source_paths

    name, _, split = a.images.partition(":")
    torch.set_grad_enabled(False)
    model = registry.load_model(a.weights, f"hndesc_{a.backbone}", f"hndesc_{a.backbone}")[0]
    out = write_global_descriptors(source_paths({"name": name, "split": split or "train"}), model, a.output, a.size)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
