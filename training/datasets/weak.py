"""Weakly-labelled keypoint-bag datasets for the Markuš KCC ("wlrn") descriptor.

Only image-level labels are used: images of one group (the same object / scene) form matching
bag pairs, images of different groups non-matching ones. Layouts:

- UKBench (`ukbench%05d.jpg`, 4 images per object): label = index // 4 (`ukbench_groups`).
- one folder per group (`folder_groups`).
- one group of synthetic views per image of a folder (`synthetic_groups`).
- the dev data here (`dev_groups`): the Sacré-Cœur mapping set as one group, the Sceaux castle as
  one group, and, for each other training photo, a group of synthetic views (random homography +
  photometric change) of that photo (`rounds` different sets of views).

A bag is the set of 32×32 patches (uint8) around the ORB (+ optionally SIFT, as in the reference)
keypoints of one image. Each sample is a bag triplet: anchor bag, positive bag of another image
of the same group, `num_negatives` bags of images of other groups (the reference uses 12).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from hndesc_features.patches import extract_patches

from .base import BaseDataset, read_image
from .dev_images import IMAGE_EXTS, shared_data_dir, train_images

logger = logging.getLogger("hndesc_features.training")

UKBENCH_RE = re.compile(r"ukbench(\d{5})", re.IGNORECASE)


# ----------------------------------------------------------------------------- group listings
@dataclass
class Group:
    name: str
    images: list             # paths
    synthetic: bool = False  # True: one photo (or one tile of it), `views` synthetic views per round
    region: tuple | None = None  # synthetic: (x0, y0, x1, y1) tile of the photo, fractions of its size
    parent: str | None = None    # synthetic tiles: the photo they come from (sibling tiles share it)


def tile_groups(photos: list, tiles: int = 1) -> list[Group]:
    """`tiles`×`tiles` synthetic groups per photo (disjoint regions; 1 = the whole photo)."""
    out = []
    for p in photos:
        p = Path(p)
        for ty in range(tiles):
            for tx in range(tiles):
                region = (tx / tiles, ty / tiles, (tx + 1) / tiles, (ty + 1) / tiles)
                name = p.stem if tiles == 1 else f"{p.stem}@{tx}{ty}"
                out.append(Group(name, [p], synthetic=True, region=region, parent=str(p)))
    return out


def ukbench_groups(root: str | Path) -> list[Group]:
    """UKBench layout: `ukbenchNNNNN.jpg` anywhere under root; group = NNNNN // 4."""
    root = Path(root)
    by_label: dict[int, list] = {}
    for p in sorted(root.rglob("*")):
        m = UKBENCH_RE.search(p.name)
        if m and p.suffix.lower() in IMAGE_EXTS:
            by_label.setdefault(int(m.group(1)) // 4, []).append(p)
    if not by_label:
        raise FileNotFoundError(f"no ukbenchNNNNN images under '{root}'")
    return [Group(f"ukbench{lab:04d}", ims) for lab, ims in sorted(by_label.items())]


def folder_groups(root: str | Path, min_images: int = 2) -> list[Group]:
    """One sub-folder of root per group (images found recursively inside it)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"'{root}' is not a folder")
    groups = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        ims = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if len(ims) >= min_images:
            groups.append(Group(d.name, ims))
    if not groups:
        raise FileNotFoundError(f"no sub-folder of '{root}' holds {min_images}+ images")
    return groups


def synthetic_groups(root: str | Path, tiles: int = 1) -> list[Group]:
    """Every image under root (or each of its tiles×tiles tiles) is a group of synthetic views."""
    root = Path(root)
    ims = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS) if root.is_dir() else []
    if not ims:
        raise FileNotFoundError(f"no images under '{root}'")
    return tile_groups(ims, tiles)


def dev_groups(split: str = "train", val_every: int = 0, tiles: int = 1) -> list[Group]:
    """Groups built from `train_images()` only (held-out photos are never touched).

    split="train": Sacré-Cœur mapping (one group), Sceaux castle (one group), and `tiles`² synthetic
    groups per remaining training photo (except every `val_every`-th when val_every > 0);
    split="val": those every-`val_every`-th photos.
    """
    data = shared_data_dir()
    imgs = train_images()
    if not imgs:
        raise FileNotFoundError("no training images found (../shared/data, skimage, sklearn)")
    scenes: dict[str, list] = {"sacre_coeur": [], "sceaux_castle": []}
    singles = []
    for p in imgs:
        parts = Path(p).parts
        if "sacre_coeur" in parts:
            scenes["sacre_coeur"].append(p)
        elif "sceaux_castle" in parts:
            scenes["sceaux_castle"].append(p)
        else:
            singles.append(p)
    val = [p for i, p in enumerate(singles) if val_every and i % val_every == val_every - 1]
    trn = [p for p in singles if p not in val]
    if split == "val":
        return tile_groups(val, tiles)
    if split != "train":
        raise ValueError(f"unknown split '{split}' (train or val)")
    groups = [Group(k, v) for k, v in scenes.items() if len(v) >= 2]
    if data is None:
        logger.warning("../shared/data not found: training on synthetic groups only")
    return groups + tile_groups(trn, tiles)


# ----------------------------------------------------------------------------- images
def read_gray(path: str | Path, resize_max: int | None = None) -> np.ndarray:
    img = read_image(path, grayscale=True, warn=False)
    if img is None:
        raise OSError(f"cannot read image '{path}'")
    if resize_max and max(img.shape) > resize_max:
        s = resize_max / max(img.shape)
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    return img


def random_homography(h: int, w: int, rng: np.random.Generator, max_angle: float = 45.0,
                      full_rotation_prob: float = 0.1, scale: tuple = (0.6, 1.0),
                      perspective: float = 0.15, max_tries: int = 50) -> np.ndarray:
    """3×3 H mapping output-view pixels to source pixels; the view (same h×w) is (mostly) covered by
    the source image: a random, rotated, scaled, perspective-jittered quadrilateral of it."""
    out = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    c = out.mean(0)
    q = out - c
    for _ in range(max_tries):
        s = rng.uniform(*scale)
        ang = rng.uniform(-np.pi, np.pi) if rng.random() < full_rotation_prob else \
            np.deg2rad(rng.uniform(-max_angle, max_angle))
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        q = (out - c) * s + rng.uniform(-perspective, perspective, size=(4, 2)) * np.array([w, h]) * s
        q = q @ rot.T
        low, high = -q.min(0), np.array([w - 1, h - 1]) - q.max(0)  # centres keeping q inside
        if np.all(low <= high):
            src = q + rng.uniform(low, high)
            return cv2.getPerspectiveTransform(out.astype(np.float32), src.astype(np.float32))
    # nothing fitted (e.g. a large rotation): centred, with some of the view outside the image
    return cv2.getPerspectiveTransform(out.astype(np.float32), (q + c).astype(np.float32))


def photometric(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random gain/bias/gamma, blur and noise on a uint8 grayscale image."""
    x = img.astype(np.float32) / 255.0
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-0.4, 0.4) * strength)
    x = x * np.exp(rng.uniform(-0.35, 0.35) * strength) + rng.uniform(-0.1, 0.1) * strength
    if rng.random() < 0.3 * strength:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
    x = x + rng.normal(0, rng.uniform(0, 0.02 * strength), size=x.shape).astype(np.float32)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def synthetic_view(img: np.ndarray, rng: np.random.Generator, homography: dict | None = None,
                   photometric_strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A random view of `img` → (view uint8, H view→img)."""
    h, w = img.shape[:2]
    H = random_homography(h, w, rng, **(homography or {}))
    view = cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return photometric(view, rng, photometric_strength), H


# ----------------------------------------------------------------------------- bags
def detect_bag_keypoints(gray: np.ndarray, n_orb: int, n_sift: int = 0) -> np.ndarray:
    """ORB (nfeatures=n_orb) + SIFT (nfeatures=n_sift) keypoints → K×4 (x, y, size, angle)."""
    kps = []
    if n_orb > 0:
        kps += list(cv2.ORB_create(nfeatures=n_orb).detect(gray, None))
    if n_sift > 0:
        kps += list(cv2.SIFT_create(nfeatures=n_sift).detect(gray, None))[:n_sift]
    return np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in kps], np.float32).reshape(-1, 4)


def bag_from_image(gray: np.ndarray, n_orb: int, n_sift: int = 0, patch_size: int = 32,
                   scale_factor: float = 1.5, min_keypoints: int = 16, return_keypoints: bool = False):
    """uint8 patches K×1×P×P around the image's keypoints (None when fewer than min_keypoints);
    with return_keypoints, (patches, K×4 frames x, y, size, angle°)."""
    kp = detect_bag_keypoints(gray, n_orb, n_sift)
    if len(kp) < min_keypoints:
        return (None, kp) if return_keypoints else None
    p = extract_patches(torch.from_numpy(gray)[None].float(), kp[:, :2], kp[:, 2], kp[:, 3],
                        patch_size=patch_size, scale_factor=scale_factor, pyramid=True)
    p = p.round().clamp(0, 255).to(torch.uint8)
    return (p, kp) if return_keypoints else p


def generate_triplets(labels: list[int], num_negatives: int, rng: np.random.Generator) -> list:
    """All (i, j) pairs, i < j, of bags with the same label, each with `num_negatives` random bags
    of other labels → [(i, j, [n_1, …])] (the reference's triplet list)."""
    labels = np.asarray(labels)
    out = []
    for i in range(len(labels)):
        others = np.flatnonzero(labels != labels[i])
        if len(others) == 0:
            continue
        for j in range(i + 1, len(labels)):
            if labels[i] == labels[j]:
                out.append((i, j, [int(q) for q in rng.choice(others, size=num_negatives)]))
    return out


class WeakBags(BaseDataset):
    """Bag triplets from weakly-labelled image groups (the trainer's `data.name: weak`).

    Index space: every positive pair (group, image a, image b), a < b, of every group. A sample
    (index, seed) draws, from its seed: the round r of synthetic views (`rounds` different sets of
    random views per single-photo group, built lazily and cached), the anchor/positive order and
    `num_negatives` bags of images of other groups (same round). Real images' bags are computed
    once. Items: `anchor` Na×1×32×32 uint8, `positive` Np×…, `negatives` ΣNn×… (the bags
    concatenated), `negative_sizes` (per bag).
    """

    default_conf = {
        "layout": "dev",            # dev | ukbench | folders | synthetic (each image = one group)
        "root": None,               # image root for ukbench / folders / synthetic
        "val_every": 0,             # dev layout: > 0 keeps every n-th single photo for split="val"
        "tiles": 1,                 # synthetic groups: tiles×tiles disjoint regions per photo
        "sibling_negatives": 0,     # negative bags taken from sibling tiles (same photo) when any
        "resize_max": 640,          # images are downscaled to this long side before detection
        "n_orb": 96,                # ORB keypoints per bag (ORB nfeatures)
        "n_sift": 32,               # + SIFT keypoints per bag (the reference mixes 512 + 512)
        "patch_size": 32,
        "scale_factor": 1.5,
        "views": 4,                 # synthetic views per single-photo group (UKBench has 4 per object)
        "rounds": 8,                # distinct sets of synthetic views
        "homography": {},           # random_homography kwargs
        "photometric_strength": 1.0,
        "num_negatives": 12,        # negative bags per triplet (reference: 12)
        "max_negative_bag": 0,      # random subset of each negative bag (compute budget); 0 = all
        "seed": 0,                  # seed of the synthetic views
        # also return the anchor/positive keypoint frames and the homography between them
        # (synthetic groups only; NaN for real groups): for the loss's auxiliary mutual-NN term
        "correspondences": False,
    }

    def _init(self, conf):
        if conf["layout"] == "dev":
            self.groups = dev_groups(self.split if self.split == "val" else "train", conf["val_every"],
                                     conf["tiles"])
        elif conf["layout"] == "ukbench":
            self.groups = ukbench_groups(conf["root"])
        elif conf["layout"] in ("folders", "folder"):
            self.groups = folder_groups(conf["root"])
        elif conf["layout"] == "synthetic":
            self.groups = synthetic_groups(conf["root"], conf["tiles"])
        else:
            raise ValueError(f"unknown data.layout '{conf['layout']}' (dev | ukbench | folders | synthetic)")
        self.sizes = [conf["views"] if g.synthetic else len(g.images) for g in self.groups]
        self.pairs = [(g, a, b) for g, n in enumerate(self.sizes) for a in range(n) for b in range(a + 1, n)]
        if len(self.groups) < 2 or not self.pairs:
            raise ValueError(f"weak dataset: need 2+ groups and one with 2+ images, got {self.sizes}")
        self.siblings = [[q for q, h in enumerate(self.groups) if q != g and h.parent is not None
                          and h.parent == self.groups[g].parent] for g in range(len(self.groups))]
        self._bags: dict = {}
        self._frames: dict = {}  # key → K×4 keypoint frames of the bag
        self._homographies: dict = {}  # synthetic (g, v, rnd) → H view → source photo
        self._sources: dict = {}
        logger.info("weak bags (%s): %d groups (%d synthetic), %d positive pairs", conf["layout"],
                    len(self.groups), sum(g.synthetic for g in self.groups), len(self.pairs))

    def __len__(self) -> int:
        return len(self.pairs)

    def _make_bag(self, gray: np.ndarray, key) -> torch.Tensor:
        c = self.conf
        b, kp = bag_from_image(gray, c["n_orb"], c["n_sift"], c["patch_size"], c["scale_factor"], min_keypoints=0,
                               return_keypoints=True)
        self._frames[key] = kp
        return b if b is not None else torch.zeros((0, 1, c["patch_size"], c["patch_size"]), dtype=torch.uint8)

    def _key(self, g: int, item: int, rnd: int) -> tuple:
        """Cache key of a bag: real images have one bag, synthetic views one per round."""
        return (g, item, rnd) if self.groups[g].synthetic else (g, item)

    def bag(self, g: int, item: int, rnd: int) -> torch.Tensor:
        """uint8 patches of image `item` of group `g` (synthetic groups: view `item` of round `rnd`)."""
        group = self.groups[g]
        key = self._key(g, item, rnd)
        if not group.synthetic:
            if key not in self._bags:
                self._bags[key] = self._make_bag(read_gray(group.images[item], self.conf["resize_max"]), key)
            return self._bags[key]
        if key not in self._bags:
            if g not in self._sources:
                img = read_gray(group.images[0], self.conf["resize_max"])
                if group.region is not None:
                    h, w = img.shape
                    x0, y0, x1, y1 = group.region
                    img = np.ascontiguousarray(img[round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)])
                self._sources[g] = img
            rng = np.random.default_rng([int(self.conf["seed"]), g, rnd])
            for v in range(self.sizes[g]):  # all views of (group, round) at once: one rng stream
                view, H = synthetic_view(self._sources[g], rng, self.conf["homography"],
                                         self.conf["photometric_strength"])
                self._bags[(g, v, rnd)] = self._make_bag(view, (g, v, rnd))
                self._homographies[(g, v, rnd)] = H
        return self._bags[key]

    def _subset(self, bag: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        m = self.conf["max_negative_bag"]
        if not m or bag.shape[0] <= m:
            return bag
        return bag[torch.from_numpy(np.sort(rng.choice(bag.shape[0], m, replace=False)))]

    def get(self, index: int, rng: np.random.Generator, seed: int) -> dict:
        g, a, b = self.pairs[index]
        rnd = int(rng.integers(max(1, int(self.conf["rounds"]))))
        if rng.random() < 0.5:
            a, b = b, a
        others = [q for q in range(len(self.groups)) if q != g]
        sib = self.siblings[g]
        neg = []
        for k in range(int(self.conf["num_negatives"])):
            if k < int(self.conf["sibling_negatives"]) and sib:
                q = sib[int(rng.integers(len(sib)))]
            else:
                q = others[int(rng.integers(len(others)))]
            neg.append(self._subset(self.bag(q, int(rng.integers(self.sizes[q])), rnd), rng))
        out = {
            "anchor": self.bag(g, a, rnd),
            "positive": self.bag(g, b, rnd),
            "negatives": torch.cat(neg, 0),
            "negative_sizes": torch.tensor([n.shape[0] for n in neg], dtype=torch.long),
        }
        if self.conf["correspondences"]:
            ka, kb = self._key(g, a, rnd), self._key(g, b, rnd)
            H = np.full((3, 3), np.nan)
            if self.groups[g].synthetic:  # anchor view → photo → positive view
                H = np.linalg.inv(self._homographies[kb]) @ self._homographies[ka]
            out["anchor_frames"] = torch.from_numpy(self._frames[ka].reshape(-1, 4))
            out["positive_frames"] = torch.from_numpy(self._frames[kb].reshape(-1, 4))
            out["H_ap"] = torch.from_numpy(H)
        return out

    @staticmethod
    def collate(batch: list[dict]) -> dict:
        return collate_triplets(batch)


def collate_triplets(batch: list[dict]) -> dict:
    """Bags differ in size: concatenate each field and keep the per-triplet sizes."""
    out = {}
    for k in ("anchor", "positive", "negatives"):
        out[k] = torch.cat([b[k] for b in batch], 0)
        out[k + "_sizes"] = torch.tensor([b[k].shape[0] for b in batch], dtype=torch.long)
    out["negative_bag_sizes"] = torch.cat([b["negative_sizes"] for b in batch], 0)
    out["num_negative_bags"] = torch.tensor([b["negative_sizes"].numel() for b in batch], dtype=torch.long)
    if "H_ap" in batch[0]:  # frames align with the anchor / positive bags
        for k in ("anchor_frames", "positive_frames"):
            out[k] = torch.cat([b[k] for b in batch], 0)
        out["H_ap"] = torch.stack([b["H_ap"] for b in batch])
    return out
