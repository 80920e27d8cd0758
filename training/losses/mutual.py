"""Mutual-nearest-neighbour loss on *all* detected keypoints of a pair (shared by the methods).

Why: evaluated with mutual-NN matching (hloc's NN-mutual, the HPatches MMA protocol), most wrong
matches come from keypoints that have no correspondence at all (not repeated by the detector, or
outside the other view). On dev-HPatches at 1024 DoG keypoints, RootSIFT makes 74 (illumination)
and 109 (viewpoint) wrong matches per pair on such keypoints against 16/10 on keypoints that do
have a correspondence. Anchor/positive/negative losses (triplet, AP) never look at these
keypoints, so training can (and on short runs did) add spurious mutual matches among them.

This loss scores the whole similarity matrix of the two views with a soft mutual-NN
(dual-softmax) probability, ``P = softmax_rows(S/t) ⊙ softmax_cols(S/t)``:

- every ground-truth correspondence (i, j): ``-log P_ij`` (it should be a mutual NN);
- every keypoint with no correspondence and nothing within ``radius`` px of its true location in
  the other view: its largest ``P`` (it should not be anyone's mutual NN), weighted by
  ``unmatched_weight``.

Keypoints with no correspondence but a keypoint near their true location (ambiguous: within
``radius`` px, yet not a GT pair) are left out of the second term, and near pairs are never
penalised.
"""
from __future__ import annotations

import numpy as np
import torch

from ..geometry.homography import angle_diff, transfer_frames


def frame_correspondences(f0: np.ndarray, f1: np.ndarray, H: np.ndarray, conf: dict) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth between keypoint frames (x, y, size, angle°) of two views related by H (view 0 →
    view 1): (matches n0: index in view 1 or -1, near n0×n1). A pair matches when each is the
    other's nearest in transferred position, within ``match_px``, with the scale (``max_scale_ratio``)
    and orientation (``max_angle``) the homography predicts; ``near``: within ``radius`` px."""
    matches = -np.ones(len(f0), np.int64)
    near = np.zeros((len(f0), len(f1)), bool)
    if len(f0) == 0 or len(f1) == 0:
        return matches, near
    t0 = transfer_frames(np.asarray(f0, np.float64), np.asarray(H, np.float64))
    d = np.linalg.norm(t0[:, None, :2] - f1[None, :, :2], axis=-1)
    near = d < float(conf["radius"])
    ratio = np.abs(np.log(np.maximum(f1[None, :, 2], 1e-6) / np.maximum(t0[:, None, 2], 1e-6)))
    ok = ratio <= np.log(float(conf["max_scale_ratio"]))
    ok &= angle_diff(t0[:, None, 3], f1[None, :, 3]) <= float(conf["max_angle"])
    d = np.where(ok, d, np.inf)
    nn01, nn10 = d.argmin(1), d.argmin(0)
    i = np.arange(len(f0))
    good = (nn10[nn01] == i) & (d[i, nn01] <= float(conf["match_px"]))
    matches[good] = nn01[good]
    return matches, near


def mutual_nn_loss(d0: torch.Tensor, d1: torch.Tensor, matches: torch.Tensor, valid0: torch.Tensor,
                   valid1: torch.Tensor, near: torch.Tensor, temperature: float = 0.1,
                   unmatched_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """d0 B×N×D, d1 B×M×D (unit vectors); matches B×N (index in view 1, -1: none); valid0 B×N,
    valid1 B×M (padding masks); near B×N×M (view-1 keypoint j lies within the radius of the true
    location of view-0 keypoint i). Returns (loss, logs)."""
    B, N, _ = d0.shape
    M = d1.shape[1]
    pair_ok = valid0[:, :, None] & valid1[:, None, :]
    s = torch.einsum("bnd,bmd->bnm", d0, d1) / float(temperature)
    s = s.masked_fill(~pair_ok, float("-inf"))
    # rows/columns without any valid entry give NaN softmaxes: zero them
    log_r = torch.log_softmax(s, 2).nan_to_num(nan=-1e4, neginf=-1e4)
    log_c = torch.log_softmax(s, 1).nan_to_num(nan=-1e4, neginf=-1e4)
    log_p = log_r + log_c

    has = (matches >= 0) & valid0
    b, i = torch.nonzero(has, as_tuple=True)
    j = matches[b, i]
    pos = -log_p[b, i, j]
    loss_pos = pos.mean() if len(pos) else log_p.sum() * 0.0

    matched1 = torch.zeros(B, M, dtype=torch.bool, device=d0.device)
    matched1[b, j] = True
    ambiguous0 = near.any(2)
    ambiguous1 = near.any(1)
    un0 = valid0 & ~has & ~ambiguous0
    un1 = valid1 & ~matched1 & ~ambiguous1
    p = log_p.exp().masked_fill(near | ~pair_ok, 0.0)
    terms = torch.cat([p.max(2).values[un0], p.max(1).values[un1]])
    loss_un = terms.mean() if len(terms) else p.sum() * 0.0
    loss = loss_pos + float(unmatched_weight) * loss_un

    with torch.no_grad():  # hard mutual NN among the pair's keypoints: how many, how many right
        nn01, nn10 = s.argmax(2), s.argmax(1)  # s: invalid pairs already at -inf
        idx = torch.arange(N, device=d0.device)[None].expand(B, N)
        mutual = (nn10.gather(1, nn01) == idx) & valid0 & valid1.gather(1, nn01)
        right = near.gather(2, nn01[..., None])[..., 0] | ((matches == nn01) & has)
        n_mut = mutual.sum().clamp_min(1)
        logs = {"loss_pos": loss_pos.detach(), "loss_unmatched": loss_un.detach(),
                "mnn_precision": (mutual & right).sum() / n_mut, "mnn_matches": mutual.sum().float() / B,
                "n_pos": float(len(pos)) / B, "n_unmatched": float(len(terms)) / B}
    return loss, logs
