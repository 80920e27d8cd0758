"""Write a global-descriptor file (hloc global-features .h5 layout) of the training images, for
HNDesc's ``gd`` mining (``loss.gd.knn_file``).

The paper mines with NetVLAD/GeM neighbours; those weights cannot be downloaded here. This tool
uses any HNDesc model we have instead (default: the shipped dense ``hndesc_small``): the global
descriptor of an image is the L2-normalised mean of the model's descriptors
(``global_descriptor`` below). With hloc and NetVLAD weights at hand, use hloc's
``extract_features --conf netvlad`` on the training images instead: ``KNNIndex`` reads both.

    python -m hndesc_features.training.knn --output runs/knn_hndesc_small.h5 [--backbone small --weights W] [--size 384]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from hndesc_features.handcrafted import cv2_gray, dog_frames

logger = logging.getLogger("hndesc_features")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def image_key(path: Path) -> str:
    """Group name of an image: its folder and file name (``KNNIndex`` matches names as path suffixes)."""
    return f"{path.parent.name}/{path.name}"


def write_global_descriptors(paths, model, output: Path, size: int = 384) -> Path:
    from .datasets.base import read_image, resize_long_side

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
    ap = argparse.ArgumentParser(prog="python -m hndesc_features.training.knn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, required=True, help='global-features .h5 to write')
    ap.add_argument("--backbone", default="small", help="HNDesc backbone (small | patch | caps | r2d2)")
    ap.add_argument("--weights", default=None, help="default: the shipped weights of the backbone")
    ap.add_argument("--images", default="dev_images:train",
                    help="image source(s), comma-separated name:split (dev_images:train, webcam:train) or "
                         "folder:<root> (the training split of the dev photos by default)")
    ap.add_argument("--exclude", default="", help="comma-separated path substrings to leave out (e.g. sacre_coeur)")
    ap.add_argument("--size", type=int, default=384, help="long side the images are resized to")
    a = ap.parse_args(argv)
    from hndesc_features import weights as registry

    from .datasets.image_folder import source_paths

    torch.set_grad_enabled(False)
    model = registry.load_model(a.weights, f"hndesc_{a.backbone}", f"hndesc_{a.backbone}")[0]
    excl = [e for e in a.exclude.split(",") if e]
    paths = [p for p in source_paths(parse_sources(a.images)) if not any(e in str(p) for e in excl)]
    out = write_global_descriptors(paths, model, a.output, a.size)
    print(f"wrote {out}")
    return 0



# ---------------------------------------------------------------- neighbour indexes of the gd / selfgd mining
# ------------------------------------------------------------------ neighbour images (gd)
def _match_names(file_names: Sequence[str], train_names: Sequence[str]) -> dict:
    """Map names used in a kNN file onto training image names (exact, else path-suffix match)."""
    train = list(train_names)
    exact = set(train)
    out = {}
    for n in file_names:
        if n in exact:
            out[n] = n
            continue
        cands = [t for t in train if t.endswith("/" + n.lstrip("/")) or n.endswith("/" + t.lstrip("/"))]
        if len(cands) == 1:
            out[n] = cands[0]
    return out


class KNNIndex:
    """Neighbour images of each training image, from a global-descriptor kNN file.

    ``path``: an hloc global-features .h5 (one group per image with ``global_descriptor``; the kNN
    is computed by cosine similarity) or a pairs .txt (``query neighbour`` per line, in order of
    preference, as written by hloc's pairs_from_retrieval). ``train_names``: the training images
    (paths as strings); file names are matched exactly or as path suffixes. A file naming images
    that are not training images raises a ``ValueError`` (``allow_unknown=True``: drop them).
    """

    def __init__(self, path, train_names: Sequence[str], k: int = 5, allow_unknown: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"kNN file not found: {self.path}")
        self.k = k
        self.train_names = [str(n) for n in train_names]
        if self.path.suffix in (".h5", ".hdf5"):
            raw = self._from_h5()
        else:
            raw = self._from_pairs()
        names = set(raw) | {m for v in raw.values() for m in v}
        mapping = _match_names(sorted(names), self.train_names)
        unknown = sorted(n for n in names if n not in mapping)
        if unknown and not allow_unknown:
            raise ValueError(
                f"kNN file {self.path} names {len(unknown)} image(s) that are not training images, "
                f"e.g. {', '.join(unknown[:3])}. Recompute it on the training images or pass "
                "allow_unknown=True to ignore them.")
        if unknown:
            logger.warning("kNN file %s: ignoring %d unknown image(s)", self.path, len(unknown))
        self.neighbours: dict[str, list[str]] = {}
        for q, nn_list in raw.items():
            if q not in mapping:
                continue
            nb = [mapping[m] for m in nn_list if m in mapping and mapping[m] != mapping[q]]
            self.neighbours[mapping[q]] = nb[:k]

    def _from_pairs(self) -> dict:
        raw: dict[str, list[str]] = {}
        for line in self.path.read_text().splitlines():
            parts = line.strip().split()
            if len(parts) < 2 or line.lstrip().startswith("#"):
                continue
            lst = raw.setdefault(parts[0], [])
            if parts[1] not in lst:
                lst.append(parts[1])
        if not raw:
            raise ValueError(f"{self.path}: no 'query neighbour' lines found")
        return raw

    def _from_h5(self) -> dict:
        import h5py

        names, descs = [], []
        with h5py.File(str(self.path), "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Group) and "global_descriptor" in obj:
                    names.append(name)
                    descs.append(np.asarray(obj["global_descriptor"][()], np.float32).reshape(-1))
            f.visititems(visit)
        if not names:
            raise ValueError(f"{self.path}: no 'global_descriptor' datasets (not an hloc global-features file?)")
        return knn_from_descriptors(names, np.stack(descs), self.k)

    def __call__(self, name: str) -> list[str]:
        return self.neighbours.get(str(name), [])


def knn_from_descriptors(names: Sequence[str], descs: np.ndarray, k: int) -> dict:
    d = descs / (np.linalg.norm(descs, axis=1, keepdims=True) + 1e-12)
    sim = d @ d.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return {names[i]: [names[j] for j in order[i]] for i in range(len(names))}


@torch.no_grad()
def global_descriptor(model: nn.Module, image: torch.Tensor, max_keypoints: int = 512) -> torch.Tensor:
    """1×3×H×W image in [0, 1] → the model's own global descriptor (D): the L2-normalised mean of
    its L2-normalised descriptors — dense ones, or for patch backbones those of the strongest
    ``max_keypoints`` DoG frames."""
    net = _unwrap(model)
    if getattr(net, "patch_based", False):
        frames = dog_frames(cv2_gray(image[0].cpu()), max_keypoints, 0.005, unique=True)
        if len(frames) == 0:
            return torch.zeros(net.descriptor_dim, device=image.device)
        d = net.describe(image[0], torch.from_numpy(frames).to(image.device))
        return F.normalize(d.mean(0), dim=0)
    dense = F.normalize(net(image), dim=1)
    return F.normalize(dense.mean((2, 3)), dim=1)[0]


class SelfGDIndex:
    """``selfgd``: neighbours from the model's own global descriptors, refreshed every K steps.

    The global descriptor of an image is ``global_descriptor``: the L2-normalised mean of its
    L2-normalised dense (or keypoint-patch) descriptors, image resized to ``size`` px on its long side. ``load_image(name)`` must
    return an H×W×3 float array in [0, 1].
    """

    def __init__(self, train_names: Sequence[str], load_image: Callable[[str], np.ndarray],
                 refresh_every: int = 1000, k: int = 5, size: int = 256):
        self.train_names = [str(n) for n in train_names]
        self.load_image = load_image
        self.refresh_every, self.k, self.size = refresh_every, k, size
        self.neighbours: dict[str, list[str]] = {}
        self.last_refresh: Optional[int] = None

    @torch.no_grad()
    def global_descriptors(self, model: nn.Module) -> np.ndarray:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        for n in self.train_names:
            img = torch.from_numpy(np.ascontiguousarray(self.load_image(n))).float().permute(2, 0, 1)[None]
            s = self.size / max(img.shape[-2:])
            if s < 1:
                img = F.interpolate(img, scale_factor=s, mode="area")
            out.append(global_descriptor(model, img.to(device)).cpu().numpy())
        model.train(was_training)
        return np.stack(out)

    def maybe_refresh(self, model: nn.Module, step: int) -> bool:
        if self.last_refresh is not None and step - self.last_refresh < self.refresh_every:
            return False
        self.neighbours = knn_from_descriptors(self.train_names, self.global_descriptors(model), self.k)
        self.last_refresh = step
        return True

    def __call__(self, name: str) -> list[str]:
        return self.neighbours.get(str(name), [])


if __name__ == "__main__":
    sys.exit(main())
