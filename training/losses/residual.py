"""Residual descriptors: triplet loss with the hardest in-batch negative (method adapter).

Data (``prepare``, in the data workers): on both views of a homography pair the handcrafted
detector/descriptor g runs on the fly (OpenCV SIFT or our SURF, top ``train_keypoints``);
GT correspondences are mutual nearest neighbours in symmetric reprojection error below
``pos_threshold`` px whose orientations (non-upright g) and scales agree with the local
homography, so a pair is one that the handcrafted g itself is meant to match.

Loss: descriptors d = model(...) (unit vectors). For a positive (a, p) the hardest negative is
the closest descriptor, over all keypoints of the other view of *every* pair in the batch, that is
not within ``neg_radius`` px of the true correspondence; then

    L = mean( max(0, margin + |a − p| − min(|a − n_a|, |p − n_p|)) ).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hndesc_features.config import merge

from hndesc_features.models.residual import (
    DESCRIPTORS, ResidualDescriptor, context_descriptors, detect_handcrafted, to_gray_u8,
)

from ..geometry.homography import homography_jacobian, warp_points

DEFAULT_CONF = {
    "type": "triplet",  # "triplet" (hinge, hardest in-batch negative) | "infonce" (softmax over the other view)
    #                     | "mutual" (soft mutual NN over all keypoints of the pair, training/losses/mutual.py)
    "margin": 1.0,
    "temperature": 0.05,  # infonce, mutual
    "unmatched_weight": 1.0,  # mutual: weight of the keypoints without a correspondence
    "aux_h_weight": 0.0,  # the same loss on the CNN part h alone (deep supervision of the CNN)
    "gor_weight": 0.0,  # global orthogonal regularisation (spread-out descriptors, Zhang et al. 2017)
    "train_keypoints": 512,  # per view (top by detector score)
    "pos_threshold": 3.0,  # px
    "neg_radius": 8.0,  # px: keypoints this close to the true location are never negatives
    "ori_tolerance": 30.0,  # degrees (non-upright descriptors)
    "scale_tolerance": 1.6,  # ratio
    "border": 4,  # px: drop keypoints closer than this to invalid (outside-the-image) pixels
    # --- the HNDesc recipe on the residual model (confs/train/hndesc.yaml; all off by default) ---
    # photometric, in the data workers, before g is computed (as at test time g sees the image):
    # stylization of view 1 (training/stylize.py; styles "webcam": the training webcam scenes) and
    # HNDesc's colour augmentation of both views (training/augment_hndesc.py, kornia)
    "stylize": {"mode": "none", "p": 0.7, "styles": None},
    "augment": {"enable": False, "p_color": 0.6, "p_blur": 0.3, "p_noise": 0.1},
    # with type mutual: loss = mutual_weight · mutual-NN term + ap_weight · HNDesc AP loss over the GT
    # pairs, each anchor (view 0) against its positive and the `knn` hardest negatives mined
    # in_pair | in_batch | gd (in_batch + keypoints of a crop of a neighbour image found with global
    # descriptors, gd.knn_file: `python -m hndesc_features.training.knn`). Pairs of the same webcam scene share content:
    # they are never each other's in-batch negatives.
    "mutual_weight": 1.0,
    "ap_weight": 0.0,
    "mining": "in_batch",
    "in_batch_with_pair": False,
    "neg_min_dist": 8.0,  # px: same-pair candidates this close to the positive are not negatives
    "knn": 20,
    "nq": 20,
    "gd": {"knn_file": None, "k": 5, "images": None, "resize": [640, 1024], "keypoints": 256},
}


def _loss_conf(conf: dict) -> dict:
    return merge(DEFAULT_CONF, conf, "loss")


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
    f["context"] = (context_descriptors(gray, f, mc["descriptor"], float(mc["context_scale"]), mc["contrast_threshold"])
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


def hardest_negative(anchor: torch.Tensor, cand: torch.Tensor, cand_mask: torch.Tensor, exclude: torch.Tensor):
    """Distance from each anchor (M×D) to its closest allowed candidate (K×D)."""
    dist = torch.sqrt((2 - 2 * anchor @ cand.t()).clamp_min(1e-8))
    dist = dist.masked_fill(exclude | ~cand_mask[None], 10.0)
    return dist.min(1).values


class Loss(nn.Module):
    default_conf = DEFAULT_CONF

    def __init__(self, conf: dict):
        super().__init__()
        self.conf = _loss_conf(conf)
        self.ap = None
        if float(self.conf["ap_weight"]) > 0:
            if self.conf["type"] != "mutual":
                raise ValueError("loss.ap_weight > 0 (the HNDesc AP term) goes with loss.type: mutual")
            from .hndesc import HNDescLoss

            c = self.conf
            self.ap = HNDescLoss("ap", c["mining"], int(c["knn"]), int(c["nq"]),
                                 in_batch_with_pair=bool(c["in_batch_with_pair"]))

    def forward(self, model, batch: dict):
        B, N = batch["kp0"].shape[:2]
        views = ("0", "1", "2") if "image2" in batch else ("0", "1")  # 2: gd neighbour crops
        data = {
            "image": torch.cat([batch["image" + v] for v in views]),
            "keypoints": torch.cat([batch["kp" + v] for v in views]),
            "scales": torch.cat([batch["scales" + v] for v in views]),
            "oris": torch.cat([batch["oris" + v] for v in views]),
            "handcrafted": torch.cat([batch["g" + v] for v in views]),
            "context": torch.cat([batch["ctx" + v] for v in views]),
        }
        aux = float(self.conf["aux_h_weight"]) > 0
        if aux:
            data["return_h"] = True
        out = model(data)
        desc, h = (out["descriptors"], out["h"]) if isinstance(out, dict) else (out, None)
        m = batch["matches"]
        if self.conf["type"] == "mutual":
            loss, logs = self._mutual(desc, batch)
            loss = float(self.conf["mutual_weight"]) * loss
            if self.ap is not None:
                la, ap_logs = self._ap(desc, batch)
                loss = loss + float(self.conf["ap_weight"]) * la
                logs.update(ap_logs)
            return loss, logs
        b, i = torch.nonzero(m >= 0, as_tuple=True)
        j = m[b, i]
        if len(b) == 0:
            return desc.sum() * 0.0, {"n_pos": 0.0, "d_pos": 0.0, "d_neg": 0.0, "acc": 0.0}
        r2 = float(self.conf["neg_radius"]) ** 2
        cb = torch.arange(B, device=desc.device).repeat_interleave(N)  # pair index of each candidate
        same = b[:, None] == cb[None]
        # candidates near the true location of the anchor (same pair) are not negatives
        near1 = ((batch["kp0_in1"][b, i][:, None] - batch["kp1"].reshape(B * N, 2)[None]) ** 2).sum(-1) < r2
        near0 = ((batch["kp1_in0"][b, j][:, None] - batch["kp0"].reshape(B * N, 2)[None]) ** 2).sum(-1) < r2
        excl1, excl0 = near1 & same, near0 & same
        loss, logs = self._loss(desc, B, N, b, i, j, excl1, excl0, batch, same)
        if aux:
            la, _ = self._loss(F.normalize(h, dim=-1), B, N, b, i, j, excl1, excl0, batch, same)
            loss = loss + float(self.conf["aux_h_weight"]) * la
            logs["loss_h"] = la.detach()
        return loss, logs

    def _mutual(self, desc, batch):
        from .mutual import mutual_nn_loss

        B = batch["kp0"].shape[0]
        r = float(self.conf["neg_radius"])
        near = torch.cdist(batch["kp0_in1"], batch["kp1"]) < r
        return mutual_nn_loss(desc[:B], desc[B:2 * B], batch["matches"], batch["mask0"], batch["mask1"], near,
                              float(self.conf["temperature"]), float(self.conf["unmatched_weight"]))

    def _ap(self, desc, batch):
        """HNDesc AP loss over the GT pairs: anchors in view 0, positives in view 1, negatives mined
        among the other positives (in_pair / in_batch) and the gd neighbour crops' keypoints."""
        B = batch["kp0"].shape[0]
        m = batch["matches"]
        b, i = torch.nonzero(m >= 0, as_tuple=True)
        j = m[b, i]
        anchors, positives = desc[:B][b, i], desc[B:2 * B][b, j]
        extra = desc[2 * B:][batch["mask2"]] if "image2" in batch else None
        # candidates that are not negatives: same-pair keypoints near the positive, and every keypoint
        # of another pair of the same webcam scene (the same place under other lighting)
        p1 = batch["kp1"][b, j]
        same = b[:, None] == b[None, :]
        exclude = same & (torch.cdist(p1, p1) < float(self.conf["neg_min_dist"]))
        grp = batch["group"][b]
        exclude |= ~same & (grp[:, None] == grp[None, :]) & (grp[:, None] >= 0)
        out = self.ap(anchors, positives, b, extra, exclude)
        logs = {"ap": out["ap"], "ap_loss": out["loss"].detach(), "ap_anchors": float(out["n"]) / B}
        if extra is not None:
            logs["gd_negatives"] = float(extra.shape[0]) / B
        return out["loss"], logs

    def _loss(self, desc, B, N, b, i, j, excl1, excl0, batch, same):
        d0, d1 = desc[:B], desc[B:]
        a, p = d0[b, i], d1[b, j]
        flat1, flat0 = d1.reshape(B * N, -1), d0.reshape(B * N, -1)
        mask1, mask0 = batch["mask1"].reshape(-1), batch["mask0"].reshape(-1)
        d_pos = (a - p).norm(dim=-1)
        triplet = self.conf["type"] == "triplet"
        with torch.set_grad_enabled(triplet and torch.is_grad_enabled()):
            n_a = hardest_negative(a, flat1, mask1, excl1)
            n_p = hardest_negative(p, flat0, mask0, excl0)
        d_neg = torch.minimum(n_a, n_p)
        if triplet:
            loss = torch.relu(float(self.conf["margin"]) + d_pos - d_neg).mean()
        elif self.conf["type"] == "infonce":
            # softmax over the keypoints of the other view of the same pair (positive included)
            t = float(self.conf["temperature"])
            pos_col1 = b * N + j
            pos_col0 = b * N + i
            s1 = (a @ flat1.t()) / t
            s1 = s1.masked_fill(excl1 | ~mask1[None] | ~same, float("-inf"))
            s1[torch.arange(len(b)), pos_col1] = (a * p).sum(-1) / t
            s0 = (p @ flat0.t()) / t
            s0 = s0.masked_fill(excl0 | ~mask0[None] | ~same, float("-inf"))
            s0[torch.arange(len(b)), pos_col0] = (a * p).sum(-1) / t
            loss = 0.5 * (F.cross_entropy(s1, pos_col1) + F.cross_entropy(s0, pos_col0))
        else:
            raise ValueError(f"loss.type must be 'triplet' or 'infonce', got '{self.conf['type']}'")
        if float(self.conf["gor_weight"]) > 0:
            # non-matching pairs (anchor vs every valid keypoint of the other view, true location
            # excluded) should look like random unit vectors: mean dot 0, mean squared dot 1/D
            sim = a @ flat1.t()
            ok = ~excl1 & mask1[None]
            m1 = sim[ok].mean()
            m2 = (sim[ok] ** 2).mean()
            gor = m1 ** 2 + torch.relu(m2 - 1.0 / desc.shape[-1])
            loss = loss + float(self.conf["gor_weight"]) * gor
        with torch.no_grad():
            logs = {"d_pos": d_pos.mean(), "d_neg": d_neg.mean(), "n_pos": float(len(b)) / B,
                    "acc": (d_pos < d_neg).float().mean()}
        return loss, logs
