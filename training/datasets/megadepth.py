"""MegaDepth as released for CAPS (Wang et al., ECCV 2020): image pairs with camera poses.

Layout (``root`` = the folder holding ``train/`` and ``test/``)::

    root/<split>/<scene_id>/dense<k>/aligned/
        images/<name>.jpg
        img_cam.txt     # "name w h fx fy cx cy r11 .. r33 t1 t2 t3" per line ('#' = comment)
        pairs.txt       # "name0 name1" per line

``[R | t]`` maps world to camera coordinates, so ``T_0to1 = [R1|t1] · [R0|t0]⁻¹``. As in CAPS,
pairs whose relative rotation exceeds ``max_rotation`` degrees are dropped, and at most
``max_pairs_per_scene`` pairs are kept per scene folder (a seeded subset).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import BaseDataset, read_image, resize_long_side, to_tensor
from .base import expand


@dataclass
class Camera:
    path: Path
    w: int
    h: int
    K: np.ndarray  # 3×3
    T_w2c: np.ndarray  # 4×4 world → camera


def _dense_folders(root: Path, split: str, scenes=None) -> list[Path]:
    base = expand(root) / split
    if not base.is_dir():
        raise FileNotFoundError(f"MegaDepth (CAPS layout): '{base}' not found; expected "
                                f"root/{split}/<scene>/dense*/aligned/img_cam.txt")
    out = []
    for scene in sorted(p for p in base.iterdir() if p.is_dir()):
        if scenes is not None and scene.name not in set(map(str, scenes)):
            continue
        for dense in sorted(p for p in scene.iterdir() if p.is_dir() and "dense" in p.name):
            if (dense / "aligned" / "img_cam.txt").is_file():
                out.append(dense / "aligned")
    if not out:
        raise FileNotFoundError(f"MegaDepth (CAPS layout): no <scene>/dense*/aligned/img_cam.txt under '{base}'")
    return out


def read_img_cam(folder: Path) -> dict[str, Camera]:
    cams = {}
    for ln, line in enumerate((folder / "img_cam.txt").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        e = line.split()
        if len(e) != 19:
            raise ValueError(f"{folder / 'img_cam.txt'}:{ln}: expected 19 fields "
                             f"(name w h fx fy cx cy R[9] t[3]), got {len(e)}")
        fx, fy, cx, cy = map(float, e[3:7])
        T = np.eye(4)
        T[:3, :3] = np.array(e[7:16], np.float64).reshape(3, 3)
        T[:3, 3] = np.array(e[16:19], np.float64)
        cams[e[0]] = Camera(folder / "images" / e[0], int(e[1]), int(e[2]),
                            np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), T)
    return cams


def megadepth_images(root, split: str = "train", scenes=None) -> list[Path]:
    paths = []
    for f in _dense_folders(root, split, scenes):
        paths += [c.path for c in read_img_cam(f).values() if c.path.is_file()]
    return sorted(paths)


def skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])


def fundamental(K0, K1, T_0to1) -> np.ndarray:
    """F with x1ᵀ F x0 = 0 (pixel coordinates)."""
    E = skew(T_0to1[:3, 3]) @ T_0to1[:3, :3]
    F = np.linalg.inv(K1).T @ E @ np.linalg.inv(K0)
    return F / (np.abs(F).max() + 1e-12)


def rotation_angle(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def collate_pairs(samples: list[dict]) -> dict:
    """Stack what has one shape across the batch, keep lists otherwise."""
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if isinstance(vals[0], torch.Tensor) and all(v.shape == vals[0].shape for v in vals):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], np.ndarray) and all(v.shape == vals[0].shape for v in vals):
            out[k] = torch.from_numpy(np.stack(vals))
        else:
            out[k] = vals
    return out


class CameraPairDataset(BaseDataset):
    """Pairs of posed photos (``self.pairs``: (path_a, path_b); ``self.cams``: path → Camera).

    ``camera_pair(index)`` reads both views resized to ``resize_max`` on the long side with the
    intrinsics rescaled to match, skipping pairs with an unreadable image, and returns the
    images, K0/K1, the relative pose T_0to1 and the fundamental matrix F_0to1.
    """

    def _view(self, cam: Camera):
        img = read_image(cam.path, self.conf["grayscale"])
        if img is None:
            return None
        h, w = img.shape[:2]
        if self.conf["resize_max"]:
            img = resize_long_side(img, self.conf["resize_max"])
        sx, sy = img.shape[1] / w, img.shape[0] / h
        # pixel centres at integers: x' = (x + .5) s - .5
        S = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        return to_tensor(img), S @ cam.K

    def camera_pair(self, index) -> dict:
        n = len(self.pairs)
        for k in range(n):  # skip pairs with an unreadable image (warned by read_image)
            a, b = self.pairs[(index + k) % n]
            v0, v1 = self._view(self.cams[a]), self._view(self.cams[b])
            if v0 is not None and v1 is not None:
                break
        else:
            raise RuntimeError(f"{type(self).__name__}: no readable pair")
        T = self.cams[b].T_w2c @ np.linalg.inv(self.cams[a].T_w2c)
        return {"image0": v0[0], "image1": v1[0], "K0": v0[1].astype(np.float32),
                "K1": v1[1].astype(np.float32), "T_0to1": T.astype(np.float32),
                "F_0to1": fundamental(v0[1], v1[1], T).astype(np.float32),
                "name0": str(a), "name1": str(b)}


class MegaDepthPairs(CameraPairDataset):
    default_conf = {
        "root": None,
        "split": "train",
        "scenes": None,  # list of scene ids, None = all
        "max_rotation": 80.0,  # degrees (CAPS drops larger relative rotations)
        "max_pairs_per_scene": 5000,
        "resize_max": 640,  # long side of both images (intrinsics scaled accordingly)
        "grayscale": False,
        "seed": 234,
    }
    collate = staticmethod(collate_pairs)

    def _init(self, conf):
        if conf["root"] is None:
            raise ValueError("megadepth: data.root is required (the folder holding train/ and test/)")
        self.cams: dict[Path, Camera] = {}
        self.pairs: list[tuple[Path, Path]] = []
        rng = np.random.default_rng(conf["seed"])
        for folder in _dense_folders(conf["root"], conf["split"], conf["scenes"]):
            cams = read_img_cam(folder)
            self.cams.update({c.path: c for c in cams.values()})
            pf = folder / "pairs.txt"
            if not pf.is_file():
                continue
            pairs = []
            for line in pf.read_text().splitlines():
                if not line.strip():
                    continue
                a, b = line.split()[:2]
                if a not in cams or b not in cams:
                    continue
                T = cams[b].T_w2c @ np.linalg.inv(cams[a].T_w2c)
                if rotation_angle(T[:3, :3]) > conf["max_rotation"]:
                    continue
                pairs.append((cams[a].path, cams[b].path))
            if len(pairs) > conf["max_pairs_per_scene"]:
                keep = rng.permutation(len(pairs))[: conf["max_pairs_per_scene"]]
                pairs = [pairs[i] for i in sorted(keep)]
            self.pairs += pairs
        if not self.pairs:
            raise FileNotFoundError(f"megadepth: no usable pairs under {expand(conf['root'])}/{conf['split']}")

    def __len__(self):
        return len(self.pairs)

    def get(self, index, rng, seed):
        return self.camera_pair(index)
