"""Phototourism scenes in the Image Matching Challenge (IMC) layouts: image pairs with poses.

Two layouts are detected per scene folder (``root/<scene>/``):

- IMC 2021/2022 (Kaggle)::

      <scene>/images/<image_id>.jpg
      <scene>/calibration.csv        # image_id,camera_intrinsics,rotation_matrix,translation_vector
      <scene>/pair_covisibility.csv  # pair ("id0-id1"),covisibility,fundamental_matrix

  (the vector fields are space-separated, row-major);
- IMC 2020::

      <scene>/<sub>/images/<key>.jpg          # <sub> = set_100, dense, ... (or none)
      <scene>/<sub>/calibration/calibration_<key>.h5   # datasets K, R, T
      <scene>/<sub>/new-vis-pairs/keys-th-<covisibility>.npy  # array of "key0-key1" (optional)

Poses map world to camera (x_c = R x_w + T). Pairs with covisibility below ``min_covisibility``
are dropped; without a pair list every pair of the scene is used.
"""
from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np


from .base import expand, list_images
from .megadepth import Camera, CameraPairDataset, collate_pairs


def _imc2020_dirs(scene: Path) -> list[Path]:
    return sorted({p.parent for p in scene.rglob("calibration") if p.is_dir() and (p.parent / "images").is_dir()})


def _scenes(root, scenes=None) -> list[Path]:
    root = expand(root)
    if not root.is_dir():
        raise FileNotFoundError(f"phototourism: '{root}' not found")
    out = [p for p in sorted(root.iterdir()) if p.is_dir() and (scenes is None or p.name in set(scenes))]
    out = [p for p in out if (p / "calibration.csv").is_file() or _imc2020_dirs(p)]
    if not out:
        raise FileNotFoundError(f"phototourism: no scene with calibration.csv (IMC 2021/22) or "
                                f"calibration/*.h5 (IMC 2020) under '{root}'")
    return out


def _vec(s: str) -> np.ndarray:
    return np.array(s.replace(",", " ").split(), np.float64)


def _read_imc2021(scene: Path) -> tuple[dict, list]:
    cams = {}
    with open(scene / "calibration.csv", newline="") as f:
        for row in csv.DictReader(f):
            T = np.eye(4)
            T[:3, :3] = _vec(row["rotation_matrix"]).reshape(3, 3)
            T[:3, 3] = _vec(row["translation_vector"])
            cams[row["image_id"]] = Camera(scene / "images" / f"{row['image_id']}.jpg", 0, 0,
                                           _vec(row["camera_intrinsics"]).reshape(3, 3), T)
    pairs = []
    pc = scene / "pair_covisibility.csv"
    if pc.is_file():
        with open(pc, newline="") as f:
            for row in csv.DictReader(f):
                a, b = row["pair"].split("-")
                pairs.append((a, b, float(row["covisibility"])))
    return cams, pairs


def _read_imc2020(sub: Path) -> tuple[dict, list]:
    import h5py

    cams = {}
    for img in list_images(sub / "images", recursive=False):
        cal = sub / "calibration" / f"calibration_{img.stem}.h5"
        if not cal.is_file():
            continue
        with h5py.File(cal, "r") as f:
            T = np.eye(4)
            T[:3, :3] = np.asarray(f["R"]).reshape(3, 3)
            T[:3, 3] = np.asarray(f["T"]).reshape(3)
            cams[img.stem] = Camera(img, 0, 0, np.asarray(f["K"]).reshape(3, 3), T)
    pairs = []
    vis = sorted((sub / "new-vis-pairs").glob("keys-th-*.npy")) if (sub / "new-vis-pairs").is_dir() else []
    for v in vis:
        th = float(v.stem.split("keys-th-")[1])
        for key in np.load(v, allow_pickle=False):
            a, b = str(key).split("-")
            pairs.append((a, b, th))
    return cams, pairs


def read_scene(scene: Path) -> list[tuple[dict, list]]:
    if (scene / "calibration.csv").is_file():
        return [_read_imc2021(scene)]
    return [_read_imc2020(sub) for sub in _imc2020_dirs(scene)]


def phototourism_images(root, scenes=None) -> list[Path]:
    paths = []
    for scene in _scenes(root, scenes):
        for cams, _ in read_scene(scene):
            paths += [c.path for c in cams.values() if c.path.is_file()]
    return sorted(paths)


class PhotoTourismPairs(CameraPairDataset):
    default_conf = {
        "root": None,
        "scenes": None,
        "min_covisibility": 0.1,
        "resize_max": 640,
        "grayscale": False,
    }
    collate = staticmethod(collate_pairs)

    def _init(self, conf):
        if conf["root"] is None:
            raise ValueError("phototourism: data.root is required")
        self.cams: dict[Path, Camera] = {}
        self.pairs = []
        for scene in _scenes(conf["root"], conf["scenes"]):
            for cams, pairs in read_scene(scene):
                self.cams.update({c.path: c for c in cams.values()})
                if not pairs:  # no pair list: all pairs of the scene
                    pairs = [(a, b, 1.0) for a, b in itertools.combinations(sorted(cams), 2)]
                seen = set()
                for a, b, cov in pairs:
                    if cov < conf["min_covisibility"] or a not in cams or b not in cams or (a, b) in seen:
                        continue
                    seen.add((a, b))
                    self.pairs.append((cams[a].path, cams[b].path))
        if not self.pairs:
            raise FileNotFoundError(f"phototourism: no pair with covisibility >= {conf['min_covisibility']}")

    def __len__(self):
        return len(self.pairs)

    def get(self, index, rng, seed):
        return self.camera_pair(index)
