"""Extract local features into an hloc feature file, with hloc's flags and .h5 layout.

    python -m hndesc_features.extract_features --conf hndesc --image_dir D --export_dir E

Same semantics as `hloc.extract_features` (images already in the file are skipped unless
--overwrite; keypoints rescaled to the original resolution; --as_half stores float16), plus:
unreadable images (empty, not an image, truncated JPEG, too small) are named, skipped and listed
at the end (--strict fails instead); a killed run leaves a readable .h5 and the rerun resumes; a
second process writing the same .h5 gets a clear error.
"""
from __future__ import annotations

import argparse
import collections.abc as collections
import glob
import pprint
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Union

import cv2
import numpy as np
import torch
from tqdm import tqdm

from . import logger
from .confs import DEFAULT_FEATURE_CONF, feature_confs
from .io import (FeatureJournal, FileLockedError, ImageReadError, exclusive_lock, list_h5_names,
                 original_size, read_image)

DEFAULT_PREPROCESSING = {
    "globs": ["*.jpg", "*.png", "*.jpeg", "*.JPG", "*.PNG"],
    "grayscale": False,
    "resize_max": None,
    "resize_force": False,
    "interpolation": "cv2_area",
}


def resize_image(image: np.ndarray, size, interp: str) -> np.ndarray:
    """hloc's resize: cv2_* (area falls back to linear when upsampling) or pil_*."""
    if interp.startswith("cv2_"):
        flag = getattr(cv2, "INTER_" + interp[len("cv2_"):].upper())
        h, w = image.shape[:2]
        if flag == cv2.INTER_AREA and (w < size[0] or h < size[1]):
            flag = cv2.INTER_LINEAR
        return cv2.resize(image, size, interpolation=flag)
    if interp.startswith("pil_"):
        import PIL.Image

        mode = getattr(PIL.Image, interp[len("pil_"):].upper())
        out = PIL.Image.fromarray(image.astype(np.uint8)).resize(size, resample=mode)
        return np.asarray(out, dtype=image.dtype)
    raise ValueError(f"Unknown interpolation {interp}.")


def parse_image_list(path: Path) -> list[str]:
    names = []
    files = sorted(Path(path.parent).glob(path.name))
    if not files:
        raise FileNotFoundError(f"Image list {path} does not exist.")
    for f in files:
        for line in f.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                names.append(line.split()[0])
    return names


class ImageDataset(torch.utils.data.Dataset):
    """hloc's ImageDataset; a bad image yields {"name", "error"} instead of raising."""

    def __init__(self, root, conf: dict, paths=None):
        self.conf = SimpleNamespace(**{**DEFAULT_PREPROCESSING, **conf})
        self.root = Path(root)
        if paths is None:
            found = []
            for g in self.conf.globs:
                found += glob.glob((self.root / "**" / g).as_posix(), recursive=True)
            if not found:
                raise ValueError(f"Could not find any image in root: {root} (globs {self.conf.globs}).")
            self.names = [Path(p).relative_to(self.root).as_posix() for p in sorted(set(found))]
        else:
            if isinstance(paths, (str, Path)):
                self.names = parse_image_list(Path(paths))
            elif isinstance(paths, collections.Iterable):
                self.names = [p.as_posix() if isinstance(p, Path) else p for p in paths]
            else:
                raise ValueError(f"Unknown format for path argument {paths}.")
            missing = [n for n in self.names if not (self.root / n).exists()]
            if missing:
                raise ValueError(f"{len(missing)} image(s) do not exist in root {root}, e.g. {missing[0]}.")
        logger.info(f"Found {len(self.names)} images in root {root}.")

    def load(self, name: str) -> dict:
        c = self.conf
        path = self.root / name
        image = read_image(path, c.grayscale, c.resize_max)
        size = original_size(path, image)
        image = image.astype(np.float32)
        cur = image.shape[:2][::-1]
        if c.resize_max and (c.resize_force or max(size) > c.resize_max):
            scale = c.resize_max / max(size)
            size_new = tuple(int(round(x * scale)) for x in size)
            if tuple(cur) != size_new:
                image = resize_image(image, size_new, c.interpolation)
        image = image[None] if c.grayscale else image.transpose((2, 0, 1))
        return {"name": name, "image": image / 255.0, "original_size": np.array(size)}

    def __getitem__(self, idx):
        name = self.names[idx]
        try:
            return self.load(name)
        except ImageReadError as e:
            return {"name": name, "error": str(e)}
        except Exception as e:  # any other decoder failure: still name the file
            return {"name": name, "error": f"{self.root / name}: {type(e).__name__}: {e}"}

    def __len__(self):
        return len(self.names)


def _first(batch):
    return batch[0]


def postprocess(pred: dict, image: torch.Tensor, orig_size: np.ndarray, model, as_half: bool):
    """hloc's post-processing: rescale keypoints to the original resolution, half precision."""
    pred = {k: v[0].cpu().numpy() for k, v in pred.items()}
    pred["image_size"] = orig_size
    uncertainty = None
    if "keypoints" in pred:
        size = np.array(image.shape[-2:][::-1])
        scales = (orig_size / size).astype(np.float32)
        pred["keypoints"] = (pred["keypoints"] + 0.5) * scales[None] - 0.5
        if "scales" in pred:
            pred["scales"] *= scales.mean()
        uncertainty = getattr(model, "detection_noise", 1) * scales.mean()
    if as_half:
        for k in pred:
            if pred[k].dtype == np.float32:
                pred[k] = pred[k].astype(np.float16)
    return pred, uncertainty


@torch.no_grad()
def main(
    conf: Dict,
    image_dir: Path,
    export_dir: Optional[Path] = None,
    as_half: bool = True,
    image_list: Optional[Union[Path, List[str]]] = None,
    feature_path: Optional[Path] = None,
    overwrite: bool = False,
    strict: bool = False,
    model=None,
    progress: bool = True,
) -> Path:
    """Extract features of the images in image_dir (hloc's signature, plus `strict`).

    model: an already-built extractor (else built from conf["model"]); progress: show tqdm.
    Sharded extraction over processes is in hndesc_features.distributed.
    """
    logger.info(f"Extracting local features with configuration:\n{pprint.pformat(conf)}")
    image_dir = Path(image_dir)
    dataset = ImageDataset(image_dir, conf.get("preprocessing", {}), image_list)
    if feature_path is None:
        if export_dir is None:
            raise ValueError("Provide export_dir or feature_path.")
        feature_path = Path(export_dir, conf["output"] + ".h5")
    feature_path = Path(feature_path)
    feature_path.parent.mkdir(exist_ok=True, parents=True)

    with exclusive_lock(feature_path):
        journal = FeatureJournal(feature_path)
        committed = journal.commit()  # images finished by a killed earlier run
        if committed:
            logger.info(f"Recovered {committed} images from an interrupted run.")
        skip = set(list_h5_names(feature_path)) if feature_path.exists() and not overwrite else set()
        names = [n for n in dataset.names if n not in skip]
        dataset.names = names
        if not names:
            logger.info("Skipping the extraction.")
            return feature_path

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if model is None:
            from .extractors import load_model

            model = load_model(conf["model"])
        model = model.eval().to(device)

        loader = torch.utils.data.DataLoader(dataset, num_workers=1, shuffle=False,
                                             batch_size=1, collate_fn=_first)
        failed = []
        try:
            for data in tqdm(loader, desc=f"extract {conf.get('output', '')}", disable=not progress):
                name = data["name"]
                if "error" in data:
                    if strict:
                        raise ImageReadError(data["error"])
                    logger.warning(f"Skipping image: {data['error']}")
                    failed.append(data["error"])
                    continue
                image = torch.from_numpy(data["image"])[None].to(device)
                pred = model({"image": image, "name": name, "image_path": str(dataset.root / name)})
                pred, unc = postprocess(pred, image, data["original_size"], model, as_half)
                journal.add(name, pred, unc)
        finally:
            journal.commit()
        if failed:
            logger.warning(f"Skipped {len(failed)} unreadable image(s):\n  " + "\n  ".join(failed))
    logger.info("Finished exporting features.")
    return feature_path


def image_names(conf: dict, image_dir: Path, image_list=None) -> list[str]:
    """The names main() would extract for this conf (sharded runs split them over processes)."""
    return list(ImageDataset(Path(image_dir), conf.get("preprocessing", {}), image_list).names)


def build_parser(confs: dict) -> argparse.ArgumentParser:
    from .confs import help_epilog

    parser = argparse.ArgumentParser(prog="python -m hndesc_features.extract_features",
                                     description=__doc__.split("\n\n")[0],
                                     epilog=help_epilog("features") + "\n\nHNDESC_KEYPOINTS=<conf name or .h5>: the "
                                     "hndesc_small / hndesc_caps / hndesc_r2d2 confs describe the keypoints stored "
                                     "there (all, in order) instead of detecting; the output name says which.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_dir", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument("--export_dir", type=Path, required=True,
                        help="output folder; features go to <export_dir>/<conf output>.h5")
    parser.add_argument("--conf", type=str, default=DEFAULT_FEATURE_CONF, choices=list(confs.keys()), metavar="CONF",
                        help=f"feature conf (listed below; default: {DEFAULT_FEATURE_CONF})")
    parser.add_argument("--as_half", action="store_true", help="store keypoints/descriptors as float16 (as hloc)")
    parser.add_argument("--image_list", type=Path, help="text file of image names (relative to image_dir) to extract")
    parser.add_argument("--feature_path", type=Path, help="explicit output .h5 path (overrides export_dir/<output>.h5)")
    parser.add_argument("--overwrite", action="store_true", help="re-extract images already in the .h5")
    parser.add_argument("--strict", action="store_true",
                        help="fail on the first unreadable image (empty, not an image, truncated JPEG, too small) "
                             "instead of warning, skipping it and listing it at the end")
    return parser


def cli(argv=None):
    from .keypoint_source import apply_env

    confs = feature_confs()
    apply_env(confs)  # $HNDESC_KEYPOINTS, as under hloc's CLI
    args = build_parser(confs).parse_args(argv)
    from .distributed import dist_info

    rank, world = dist_info()
    try:
        if world > 1:
            from .distributed import sharded_main

            sharded_main(confs[args.conf], args.image_dir, args.export_dir, args.as_half,
                         args.image_list, args.feature_path, args.overwrite, args.strict,
                         main_fn=main, list_names=image_names)
        else:
            main(confs[args.conf], args.image_dir, args.export_dir, args.as_half, args.image_list,
                 args.feature_path, args.overwrite, args.strict)
    except (FileLockedError, ImageReadError, ValueError, FileNotFoundError) as e:
        logger.error(str(e))
        sys.exit(1)


if __name__ == "__main__":
    cli()
