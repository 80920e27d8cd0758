"""Validation on held-out real photos with fixed synthetic homographies: MMA of mutual-NN matches.

The pairs are a pure function of the validation conf (seeded), built from
``dev_images.heldout_images()`` (never trained on): view 0 is the photo resized so that its
long side is ``resize``, view 1 is view 0 warped by a homography from the shared sampler.
MMA@t = share of mutual nearest-neighbour matches whose reprojection error (|H x0 - x1|) < t px,
averaged over pairs; ``homography@t`` = share of pairs whose RANSAC homography moves the view
corners by < t px on average; ``correct@3`` = correct matches (error <= 3 px) per pair and
``ransac_correct@3`` = correct matches that are also inliers of the pair's RANSAC homography (OpenCV,
3 px, deterministic): the matches a user keeps after geometric verification. That count rewards
recall and punishes outliers (which break RANSAC), where MMA rewards precision alone; ``val.select``
with ``select_mode: geomean`` weighs the relative change of each listed number alike.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from hndesc_features.config import merge
from hndesc_features.geometry import homography_error, mutual_nn, reprojection_errors
from hndesc_features.geometry import mma as mma_at

from .datasets.base import read_image, resize_long_side, to_tensor
from .datasets.image_folder import source_paths

from .geometry.homography import sample_homography, warp_image

DEFAULT_CONF = {
    "enable": True,
    "source": None,  # an image source spec (datasets/image_folder.py); None → {name: dev_images, split: heldout}
    "n_pairs": 12,  # cycles over the images with a new homography each time
    "resize": 640,
    "seed": 0,
    "homography": {"scale": [0.7, 1.4], "rotation": 30.0, "translation": 0.05, "perspective": 0.1},
    "max_keypoints": 1024,
    "thresholds": [1, 2, 3, 5],
    "grayscale": False,
    # real illumination pairs too (datasets/webcam.py): two held-aside images of a training webcam scene
    # (never the benchmark scene chamonix), view 1 through a fixed seeded homography; logged with the
    # prefix webcam_. Half the pairs are the scene's largest brightness differences, half drawn at random.
    "webcam": {"enable": False, "root": "${HNDESC_SHARED_DATA}/webcam", "scenes": ["courbevoie", "frankfurt"],
               "split": "val", "n_pairs": 12, "resize": 640, "seed": 0,
               "homography": {"scale": [0.7, 1.4], "rotation": 30.0, "translation": 0.05, "perspective": 0.1}},
    # validation metric that picks `train.export: best`: a key of the results or a list (their mean, or with
    # select_mode geomean their geometric mean: counts of different sets weigh by their relative change)
    "select": "mma@3",
    "select_mode": "mean",
}


def make_pairs(conf: Optional[dict] = None) -> list[dict]:
    conf = merge(DEFAULT_CONF, conf, "val")
    paths = source_paths(conf["source"] or {"name": "dev_images", "split": "heldout"})
    pairs = []
    hc = conf["homography"]
    images = {}
    for k in range(int(conf["n_pairs"])):
        path = paths[k % len(paths)]
        if path not in images:
            img = read_image(path, conf["grayscale"])
            images[path] = None if img is None else resize_long_side(img, conf["resize"])
        img = images[path]
        if img is None:
            continue
        rng = np.random.default_rng([int(conf["seed"]), k])
        hw = img.shape[:2]
        H = sample_homography(hw, rng, hc["scale"], hc["rotation"], hc["translation"], hc["perspective"])
        v0 = to_tensor(img)
        v1 = warp_image(v0, H, hw)
        pairs.append({"view0": v0, "view1": v1, "H_0to1": H, "name": str(path)})
    return pairs


def evaluate_pairs(extract: Callable[[torch.Tensor], dict], pairs: list[dict],
                   thresholds=(1, 2, 3, 5)) -> dict:
    """extract(1×C×H×W image) → {"keypoints": N×2, "descriptors": N×D (L2-normalised)}."""
    import cv2

    mma = {t: [] for t in thresholds}
    hacc = {t: [] for t in thresholds}
    n_matches, n_kpts, n_correct, n_verified = [], [], [], []
    for p in pairs:
        f0 = extract(p["view0"][None])
        f1 = extract(p["view1"][None])
        kp0 = f0["keypoints"].detach().cpu().double().numpy().reshape(-1, 2)
        kp1 = f1["keypoints"].detach().cpu().double().numpy().reshape(-1, 2)
        m = mutual_nn(f0["descriptors"].detach().cpu().float(), f1["descriptors"].detach().cpu().float())
        n_kpts.append(0.5 * (len(kp0) + len(kp1)))
        n_matches.append(len(m))
        err = reprojection_errors(kp0, kp1, m, p["H_0to1"])
        herr = homography_error(kp0[m[:, 0]], kp1[m[:, 1]], p["H_0to1"], p["view1"].shape[-2:])
        for t in thresholds:
            mma[t].append(float(mma_at(err, [t])[0]))
            hacc[t].append(float(herr < t))
        correct = np.asarray(err) <= 3.0
        inl = np.zeros(len(m), bool)
        if len(m) >= 4:
            _, mask = cv2.findHomography(kp0[m[:, 0]], kp1[m[:, 1]], cv2.RANSAC, 3.0, maxIters=2000,
                                         confidence=0.999)
            if mask is not None:
                inl = mask.ravel().astype(bool)
        n_correct.append(int(correct.sum()))
        n_verified.append(int((correct & inl).sum()))
    out = {f"mma@{t}": float(np.mean(v)) for t, v in mma.items()}
    out.update({f"homography@{t}": float(np.mean(v)) for t, v in hacc.items()})
    out["correct@3"] = float(np.mean(n_correct))
    out["ransac_correct@3"] = float(np.mean(n_verified))
    out["matches"] = float(np.mean(n_matches))
    out["keypoints"] = float(np.mean(n_kpts))
    return out


def make_webcam_pairs(conf: Optional[dict] = None) -> list[dict]:
    """Real illumination pairs (+ a fixed homography) from held-aside webcam images (``conf["webcam"]``)."""
    from .datasets.webcam import mean_brightness, webcam_images

    wc = merge(DEFAULT_CONF, conf)["webcam"]
    paths = webcam_images(wc["root"], wc["scenes"], wc["split"])
    br = mean_brightness(paths)
    cand = [(i, j) for i in range(len(paths)) for j in range(i + 1, len(paths))
            if paths[i].parent == paths[j].parent]
    cand.sort(key=lambda ij: (-abs(br[ij[0]] - br[ij[1]]), ij))
    n = int(wc["n_pairs"])
    rng = np.random.default_rng(int(wc["seed"]))
    chosen = cand[: n // 2]
    rest = cand[n // 2:]
    chosen += [rest[k] for k in sorted(rng.choice(len(rest), min(n - len(chosen), len(rest)), replace=False))]
    hc = wc["homography"]
    pairs = []
    for k, (i, j) in enumerate(chosen):
        a = resize_long_side(read_image(paths[i]), wc["resize"])
        b = resize_long_side(read_image(paths[j]), wc["resize"])
        hw = a.shape[:2]
        H = sample_homography(hw, np.random.default_rng([int(wc["seed"]), 7, k]), hc["scale"], hc["rotation"],
                              hc["translation"], hc["perspective"])
        pairs.append({"view0": to_tensor(a), "view1": warp_image(to_tensor(b), H, hw), "H_0to1": H,
                      "name": f"{paths[i]}|{paths[j].name}"})
    return pairs


def selection_value(res: dict, select, mode: str = "mean") -> float:
    """The validation number that picks the exported weights: the mean (``mode: mean``) or the geometric
    mean (``mode: geomean``, for counts of different scales) of the listed keys."""
    keys = [select] if isinstance(select, str) else list(select)
    missing = [k for k in keys if k not in res]
    if missing:
        raise KeyError(f"val.select: {missing} not among the validation results {sorted(res)}")
    if mode == "geomean":
        return float(np.exp(np.mean([np.log(max(float(res[k]), 1e-9)) for k in keys])))
    if mode != "mean":
        raise ValueError(f"val.select_mode must be 'mean' or 'geomean', got '{mode}'")
    return float(np.mean([res[k] for k in keys]))
