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
}


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
    lc = {**DEFAULT_CONF, **conf["loss"]}
    n = int(lc["train_keypoints"])
    dim, _, upright, _, sign = DESCRIPTORS[mc["descriptor"]]
    H = sample["H_0to1"].double().numpy()
    use_ctx = bool(mc["context_scale"]) and mc["use_handcrafted"]
    feats = []
    for v in ("0", "1"):
        gray = to_gray_u8(sample["view" + v])
        f = detect_handcrafted(gray, mc["descriptor"], -1, mc["contrast_threshold"], mc["hessian_threshold"])
        keep = np.nonzero(_valid_at(sample["valid" + v].numpy(), f["keypoints"], int(lc["border"])))[0][:n]
        f = {k: f[k][keep] for k in ("keypoints", "scales", "oris", "descriptors")}
        f["context"] = (context_descriptors(gray, f, mc["descriptor"], float(mc["context_scale"]), mc["contrast_threshold"])
                        if use_ctx else np.zeros((len(keep), dim), np.float32))
        feats.append(f)
    m = gt_matches(feats[0], feats[1], H, lc, upright, sign)
    out = {"image0": sample["view0"], "image1": sample["view1"], "H_0to1": sample["H_0to1"]}
    for v, f in zip("01", feats):
        k = len(f["keypoints"])
        pad = n - k
        out["kp" + v] = torch.from_numpy(np.pad(f["keypoints"], ((0, pad), (0, 0))).astype(np.float32))
        out["scales" + v] = torch.from_numpy(np.pad(f["scales"], (0, pad), constant_values=1).astype(np.float32))
        out["oris" + v] = torch.from_numpy(np.pad(f["oris"], (0, pad)).astype(np.float32))
        out["g" + v] = torch.from_numpy(np.pad(f["descriptors"].reshape(k, dim), ((0, pad), (0, 0))).astype(np.float32))
        out["ctx" + v] = torch.from_numpy(np.pad(f["context"].reshape(k, dim), ((0, pad), (0, 0))).astype(np.float32))
        out["mask" + v] = torch.from_numpy(np.arange(n) < k)
    out["matches"] = torch.from_numpy(np.pad(m, (0, n - len(m)), constant_values=-1))
    # each keypoint's true location in the other view (for the negative exclusion radius)
    out["kp0_in1"] = torch.from_numpy(warp_points(out["kp0"].double().numpy(), H).astype(np.float32))
    out["kp1_in0"] = torch.from_numpy(warp_points(out["kp1"].double().numpy(), np.linalg.inv(H)).astype(np.float32))
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
        self.conf = merge(DEFAULT_CONF, conf, "loss")

    def forward(self, model, batch: dict):
        B, N = batch["kp0"].shape[:2]
        data = {
            "image": torch.cat([batch["image0"], batch["image1"]]),
            "keypoints": torch.cat([batch["kp0"], batch["kp1"]]),
            "scales": torch.cat([batch["scales0"], batch["scales1"]]),
            "oris": torch.cat([batch["oris0"], batch["oris1"]]),
            "handcrafted": torch.cat([batch["g0"], batch["g1"]]),
            "context": torch.cat([batch["ctx0"], batch["ctx1"]]),
        }
        aux = float(self.conf["aux_h_weight"]) > 0
        if aux:
            data["return_h"] = True
        out = model(data)
        desc, h = (out["descriptors"], out["h"]) if isinstance(out, dict) else (out, None)
        m = batch["matches"]
        if self.conf["type"] == "mutual":
            return self._mutual(desc, batch)
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
        return mutual_nn_loss(desc[:B], desc[B:], batch["matches"], batch["mask0"], batch["mask1"], near,
                              float(self.conf["temperature"]), float(self.conf["unmatched_weight"]))

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
