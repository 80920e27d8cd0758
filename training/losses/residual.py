"""Residual descriptors: triplet loss with the hardest in-batch negative (method adapter).

Data: training/pipelines/residual.py (``prepare``, in the data workers): on both views of a homography pair the handcrafted
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

import torch
import torch.nn.functional as F
from torch import nn

from hndesc_features.config import merge

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
