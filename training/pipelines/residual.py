"""Residual descriptors' data pipeline (in the data workers): on both views of a homography pair the
handcrafted detector/descriptor g runs on the fly (OpenCV SIFT or our SURF, top ``train_keypoints``)
after the HNDesc recipe's photometric changes (stylization of view 1, colour augmentation: off by
default, on in confs/train/hndesc.yaml); GT correspondences are mutual nearest neighbours in
symmetric reprojection error below ``pos_threshold`` px whose orientations (non-upright g) and
scales agree with the local homography. The config section is the loss's (``DEFAULT_CONF`` in
training/losses/residual.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from hndesc_features.models.residual import (
    DESCRIPTORS, ResidualDescriptor, context_descriptors, detect_handcrafted, to_gray_u8,
)

from ..geometry.homography import homography_jacobian, warp_points

from ..losses.residual import _loss_conf


def _model_conf(conf: dict) -> dict:
    return {**ResidualDescriptor.default_conf, **{k: v for k, v in conf["model"].items() if k != "name"}}


def gt_matches(f0: dict, f1: dict, H: np.ndarray, conf: dict, upright: bool, ori_sign: float) -> np.ndarray:
    """Index in view 1 of each keypoint of view 0 (-1: no correspondence)."""
    k0, k1 = f0["keypoints"].astype(np.float64), f1["keypoints"].astype(np.float64)
    out = -np.ones(len(k0), np.int64)
    if len(k0) == 0 or len(k1) == 0:
        return out
    w0 = warp_points(k0, H)
    w1 = warp_points(k1, np.linalg.inv(H))
    d = 0.5 * (np.linalg.norm(w0[:, None] - k1[None], axis=-1) + np.linalg.norm(k0[:, None] - w1[None], axis=-1))
    J = homography_jacobian(H, k0)
    scale = np.sqrt(np.abs(np.linalg.det(J)))
    ratio = f1["scales"][None].astype(np.float64) / (f0["scales"][:, None] * scale[:, None] + 1e-9)
    bad = np.abs(np.log(ratio)) > math.log(conf["scale_tolerance"])
    if not upright:
        th0 = np.deg2rad(ori_sign * f0["oris"].astype(np.float64))
        v = np.einsum("nij,nj->ni", J, np.stack([np.cos(th0), np.sin(th0)], -1))
        exp = np.arctan2(v[:, 1], v[:, 0])
        th1 = np.deg2rad(ori_sign * f1["oris"].astype(np.float64))
        dth = np.abs((th1[None] - exp[:, None] + np.pi) % (2 * np.pi) - np.pi)
        bad |= dth > np.deg2rad(conf["ori_tolerance"])
    d = np.where(bad, np.inf, d)
    nn01 = d.argmin(1)
    nn10 = d.argmin(0)
    i = np.arange(len(k0))
    ok = (nn10[nn01] == i) & (d[i, nn01] < conf["pos_threshold"])
    out[ok] = nn01[ok]
    return out


def _valid_at(valid: np.ndarray, kp: np.ndarray, border: int) -> np.ndarray:
    if border > 0:
        import cv2

        valid = cv2.erode(valid.astype(np.uint8), np.ones((2 * border + 1, 2 * border + 1), np.uint8)) > 0
    h, w = valid.shape
    x = np.clip(np.round(kp[:, 0]).astype(int), 0, w - 1)
    y = np.clip(np.round(kp[:, 1]).astype(int), 0, h - 1)
    return valid[y, x]


def prepare(sample: dict, conf: dict) -> dict:
    """Homography pair → views + handcrafted features + GT matches (fixed-size, padded)."""
    mc = _model_conf(conf)
    lc = _loss_conf(conf["loss"])
    n = int(lc["train_keypoints"])
    dim, _, upright, _, sign = DESCRIPTORS[mc["descriptor"]]
    H = sample["H_0to1"].double().numpy()
    views = _photometric(sample, lc)
    feats = []
    for v in ("0", "1"):
        feats.append(_features(views[int(v)], sample["valid" + v].numpy(), mc, lc, n))
    m = gt_matches(feats[0], feats[1], H, lc, upright, sign)
    out = {"image0": views[0], "image1": views[1], "H_0to1": sample["H_0to1"]}
    for v, f in zip("01", feats):
        out.update(_padded(f, v, n, dim))
    out["matches"] = torch.from_numpy(np.pad(m, (0, n - len(m)), constant_values=-1))
    if float(lc["ap_weight"]) > 0:  # which pairs share content (same webcam scene: never in-batch negatives)
        out["group"] = torch.tensor(_group_id(sample), dtype=torch.int64)
        if lc["mining"] == "gd":
            out.update(_neighbour_sample(sample, conf, mc, lc, views[0].shape[-2:]))
    # each keypoint's true location in the other view (for the negative exclusion radius)
    out["kp0_in1"] = torch.from_numpy(warp_points(out["kp0"].double().numpy(), H).astype(np.float32))
    out["kp1_in0"] = torch.from_numpy(warp_points(out["kp1"].double().numpy(), np.linalg.inv(H)).astype(np.float32))
    return out


def _photometric(sample: dict, lc: dict) -> list:
    """(view0, view1) after the HNDesc recipe's stylization of view 1 and colour augmentation."""
    from ..pipelines.hndesc import _augmentation, _stylize_view1

    v0, v1 = sample["view0"], sample["view1"]
    sconf, aconf = lc["stylize"], lc["augment"]
    if sconf.get("mode", "none") == "none" and not aconf.get("enable", False):
        return [v0, v1]
    rng = np.random.default_rng([int(sample.get("seed", 0)) & 0xFFFFFFFF, 4243])
    if sconf.get("mode", "none") != "none":
        v1 = _stylize_view1(sample, {"root": None, "rel_to": None, **sconf}, rng)
    if aconf.get("enable", False):
        if v0.shape[0] == 1:
            v0, v1 = v0.expand(3, -1, -1), v1.expand(3, -1, -1)
        aug = _augmentation({k: v for k, v in aconf.items() if k != "enable"})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**31)))
            v0, v1 = aug(v0[None])[0], aug(v1[None])[0]
    return [v0.contiguous(), v1.contiguous()]


def _features(view: torch.Tensor, valid: np.ndarray, mc: dict, lc: dict, n: int) -> dict:
    """g (top n inside the valid region), its keypoint frames and context descriptors of one view."""
    dim = DESCRIPTORS[mc["descriptor"]][0]
    gray = to_gray_u8(view)
    try:
        f = detect_handcrafted(gray, mc["descriptor"], -1, mc["contrast_threshold"], mc["hessian_threshold"])
    except ValueError as e:  # a view without any keypoint (flat night crop) on a detector that cannot return none
        if "reshape" not in str(e):
            raise
        f = {"keypoints": np.zeros((0, 2), np.float32), "scales": np.zeros(0, np.float32),
             "oris": np.zeros(0, np.float32), "descriptors": np.zeros((0, dim), np.float32)}
    keep = np.nonzero(_valid_at(valid, f["keypoints"], int(lc["border"])))[0][:n]
    f = {k: f[k][keep] for k in ("keypoints", "scales", "oris", "descriptors")}
    use_ctx = bool(mc["context_scale"]) and mc["use_handcrafted"]
    f["context"] = (context_descriptors(gray, f, mc["descriptor"], float(mc["context_scale"]), mc["contrast_threshold"],
                                       int(mc.get("context_downsample", 1)))
                    if use_ctx else np.zeros((len(keep), dim), np.float32))
    return f


def _padded(f: dict, v: str, n: int, dim: int) -> dict:
    k = len(f["keypoints"])
    pad = n - k
    return {
        "kp" + v: torch.from_numpy(np.pad(f["keypoints"].reshape(k, 2), ((0, pad), (0, 0))).astype(np.float32)),
        "scales" + v: torch.from_numpy(np.pad(f["scales"], (0, pad), constant_values=1).astype(np.float32)),
        "oris" + v: torch.from_numpy(np.pad(f["oris"], (0, pad)).astype(np.float32)),
        "g" + v: torch.from_numpy(np.pad(f["descriptors"].reshape(k, dim), ((0, pad), (0, 0))).astype(np.float32)),
        "ctx" + v: torch.from_numpy(np.pad(f["context"].reshape(k, dim), ((0, pad), (0, 0))).astype(np.float32)),
        "mask" + v: torch.from_numpy(np.arange(n) < k),
    }


def _group_id(sample: dict) -> int:
    """-1 for a photo pair; a stable id per webcam scene (its pairs show the same place)."""
    scene = sample.get("scene") or ""
    if not scene:
        return -1
    import zlib

    return int(zlib.crc32(scene.encode()) & 0x7FFFFFFF)


_GD_CACHE: dict = {}


def _knn_index(lc: dict):
    from ..datasets.image_folder import source_paths
    from ..knn import KNNIndex

    g = lc["gd"]
    if not g.get("knn_file") or not g.get("images"):
        raise ValueError("loss.mining=gd needs loss.gd.knn_file (python -m hndesc_features.training.knn) and loss.gd.images "
                         "(the image source the file describes)")
    key = (str(g["knn_file"]), repr(g["images"]), int(g["k"]))
    if key not in _GD_CACHE:
        from ..datasets.image_folder import expand

        names = [str(p) for p in source_paths(g["images"])]
        _GD_CACHE[key] = KNNIndex(expand(g["knn_file"]), names, 10_000)  # full order: same-scene ones are skipped
    return _GD_CACHE[key]


def _neighbour_sample(sample: dict, conf: dict, mc: dict, lc: dict, hw) -> dict:
    """HNDesc gd mining: g and frames of a crop (the views' size) of a neighbour image of the pair's
    source (global-descriptor kNN), described in the same forward pass; all are negatives. Neighbours
    from the same webcam scene (the same place) are skipped."""
    from ..datasets.base import read_image, resize_long_side, to_tensor

    g = lc["gd"]
    n = int(g["keypoints"])
    dim = DESCRIPTORS[mc["descriptor"]][0]
    rng = np.random.default_rng([int(sample.get("seed", 0)) & 0xFFFFFFFF, 4244])
    src = str(sample.get("name", ""))
    nbs = [p for p in _knn_index(lc)(src)
           if not (sample.get("scene") and str(Path(p).parent) == str(Path(src).parent))][: int(g["k"])]
    h, w = int(hw[0]), int(hw[1])
    img = None
    if nbs:
        p = nbs[int(rng.integers(len(nbs)))]
        img = _GD_CACHE.get(("img", p))
        if img is None:
            img = read_image(p)
            if img is not None:
                img = resize_long_side(img, 1024)
            _GD_CACHE[("img", p)] = img
    if img is None:
        f = {"keypoints": np.zeros((0, 2), np.float32), "scales": np.zeros(0, np.float32),
             "oris": np.zeros(0, np.float32), "descriptors": np.zeros((0, dim), np.float32),
             "context": np.zeros((0, dim), np.float32)}
        crop = torch.zeros(3, h, w)
    else:
        lo, hi = g["resize"]
        im = resize_long_side(img, rng.uniform(lo, hi), min_side=max(h, w))
        y0 = int(rng.integers(im.shape[0] - h + 1))
        x0 = int(rng.integers(im.shape[1] - w + 1))
        crop = to_tensor(im[y0:y0 + h, x0:x0 + w])
        if crop.shape[0] == 1:
            crop = crop.expand(3, -1, -1)
        crop = _photometric({"view0": crop, "view1": crop, "seed": int(sample.get("seed", 0)) + 7},
                            {**lc, "stylize": {"mode": "none"}})[0]
        f = _features(crop, np.ones((h, w), bool), mc, lc, n)
    out = _padded(f, "2", n, dim)
    out["image2"] = crop.contiguous()
    return out


def collate(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
