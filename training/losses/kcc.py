"""The keypoint-correspondence criterion (KCC) of Markuš et al. with hard-negative mining.

For a bag triplet (anchor K, positive K⁺ from the same group, negatives K⁻ from other groups) with
L2-normalised descriptors, cosine similarities are mapped to [0, 1] and passed through a steep
sigmoid that is ~0 below the threshold and ~1 above it,

    m(s) = σ(β ((s + 1) / 2 − τ)),   τ = 0.8,   β = ln 99 / (1 − τ)   (m = 0.99 at s = 1),

and the loss is the ratio of "matched" anchor keypoints in the negative and positive bags,

    L = (1 + Σ_k max_{k⁻} m(d_k · d_k⁻)) / (1 + Σ_k max_{k⁺} m(d_k · d_k⁺)).

Hard-negative mining (as in the reference): for each anchor keypoint the most similar keypoint of
the union of the negative bags is selected with the current network (no gradient), and the
negative bag of the loss is the set of these selected keypoints.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from hndesc_features.config import merge

THRESHOLD = 0.8
SLOPE = math.log(99.0) / (1.0 - THRESHOLD)  # = -ln(1/0.99 - 1) / (1 - τ)


def soft_match(sim: torch.Tensor, threshold: float = THRESHOLD, slope: float | None = None) -> torch.Tensor:
    """Cosine similarity in [-1, 1] → soft "is a match" in (0, 1)."""
    if slope is None:
        slope = math.log(99.0) / (1.0 - threshold)
    return torch.sigmoid(((sim + 1.0) * 0.5 - threshold) * slope)


def best_soft_matches(anchor: torch.Tensor, other: torch.Tensor, threshold: float = THRESHOLD,
                      slope: float | None = None) -> torch.Tensor:
    """For each anchor descriptor (N×D), its best soft match in `other` (M×D) → N."""
    if other.shape[0] == 0:
        return anchor.new_zeros(anchor.shape[0])
    return soft_match(anchor @ other.t(), threshold, slope).max(dim=1).values


def kcc_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
             threshold: float = THRESHOLD, slope: float | None = None) -> torch.Tensor:
    """KCC loss of one bag triplet (descriptors N×D, M×D, K×D, unit norm) → scalar."""
    pos = best_soft_matches(anchor, positive, threshold, slope)
    neg = best_soft_matches(anchor, negative, threshold, slope)
    return (1.0 + neg.sum()) / (1.0 + pos.sum())


@torch.no_grad()
def mine_hard_negatives(anchor_desc: torch.Tensor, negative_desc: torch.Tensor) -> torch.Tensor:
    """Index (into `negative_desc`, the union of the negative bags) of each anchor keypoint's most
    similar negative keypoint → N (long)."""
    return (anchor_desc @ negative_desc.t()).argmax(dim=1)


@torch.no_grad()
def kcc_statistics(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                   threshold: float = THRESHOLD) -> dict:
    """Hard counts for logging: share of anchor keypoints with a (thresholded) match in each bag."""
    def share(other):
        if other.shape[0] == 0:
            return 0.0
        s = ((anchor @ other.t()).max(dim=1).values + 1) * 0.5
        return (s > threshold).float().mean().item()

    return {"match_pos": share(positive), "match_neg": share(negative)}


# ----------------------------------------------------------------------------- trainer method
class Loss(nn.Module):
    """The trainer's `loss.name: wlrn`: KCC over a batch of bag triplets (`data.name: weak`).

    conf: `mining` (hard-negative mining, default true), `threshold` (0.8), `slope`
    (None → ln 99 / (1 − threshold)), `mining_batch` (patches per no-grad forward),
    `center_init` (before the first step, a data-dependent init of conv5 on the first batch:
    zero-mean, unit-variance outputs, see `KCCNet.center_outputs`; off by default: measured
    here with PyTorch's default init, the descriptors collapse within 3 RMSprop steps anyway,
    the model conf `init: he` trains instead).
    Without mining, the first negative bag of each triplet (a random bag of another group) is
    the negative bag, as in the reference's one-bag triplets.
    The batch loss is the mean of the triplets' KCC losses. The anchor, positive and (mined)
    negative patches of the whole batch go through the network in one forward pass.
    """

    default_conf = {"mining": True, "threshold": THRESHOLD, "slope": None, "mining_batch": 4096,
                    "center_init": False,
                    # auxiliary mutual-NN term (training/losses/mutual.py; not in the paper) on the
                    # anchor/positive bags of synthetic-view groups, whose homography is known
                    # (needs data.correspondences: true); 0: off
                    "mutual": {"weight": 0.0, "temperature": 0.05, "unmatched_weight": 4.0, "match_px": 3.0,
                               "max_scale_ratio": 1.5, "max_angle": 30.0, "radius": 8.0}}

    def __init__(self, conf: dict | None = None):
        super().__init__()
        self.conf = merge(self.default_conf, conf, "loss")
        # set once the data-dependent initialisation ran (saved in the trainer's checkpoints)
        self.register_buffer("centered", torch.tensor(False))

    def forward(self, model, batch: dict):
        c = self.conf
        thr, slope = float(c["threshold"]), c["slope"]
        if c["center_init"] and not bool(self.centered):
            net = model.module if hasattr(model, "module") else model
            net.center_outputs(torch.cat([batch["anchor"], batch["positive"], batch["negatives"]]).float())
            self.centered.fill_(True)
        na, npos, nneg = (batch["anchor_sizes"].tolist(), batch["positive_sizes"].tolist(),
                          batch["negatives_sizes"].tolist())
        anchors = batch["anchor"].split(na)
        negatives = batch["negatives"].split(nneg)
        if c["mining"]:
            with torch.no_grad():
                # the network in its current state, without gradients (the reference switches
                # to eval mode here; this network has no train/eval-dependent layers)
                allneg = batch["negatives"]
                dn = torch.cat([model(allneg[i:i + c["mining_batch"]].float())
                                for i in range(0, allneg.shape[0], c["mining_batch"])], 0) \
                    if allneg.shape[0] else allneg.new_zeros((0, 128), dtype=torch.float32)
                da = torch.cat([model(a.float()) for a in anchors], 0) if sum(na) else dn[:0]
                chosen = []
                for da_t, dn_t, neg_t in zip(da.split(na), dn.split(nneg), negatives):
                    if da_t.shape[0] == 0 or dn_t.shape[0] == 0:
                        chosen.append(neg_t[:0])
                    else:
                        chosen.append(neg_t[mine_hard_negatives(da_t, dn_t)])
        else:  # one negative bag per triplet (the reference's no-mining triplets)
            bag_sizes = batch["negative_bag_sizes"].split(batch["num_negative_bags"].tolist())
            chosen = [neg_t[: int(bs[0])] if len(bs) and n_a else neg_t[:0]
                      for neg_t, bs, n_a in zip(negatives, bag_sizes, na)]
        nsel = [x.shape[0] for x in chosen]
        patches = torch.cat([batch["anchor"], batch["positive"], *chosen], 0).float()
        d = model(patches)
        da, dp, dn = d.split([sum(na), sum(npos), sum(nsel)])
        losses, stats = [], []
        for a, p, n in zip(da.split(na), dp.split(npos), dn.split(nsel)):
            if a.shape[0] == 0:  # an image without keypoints (e.g. a blank tile): nothing to learn
                continue
            losses.append(kcc_loss(a, p, n, thr, slope))
            stats.append(kcc_statistics(a.detach(), p.detach(), n.detach(), thr))
        # `0 * d.sum()` keeps the loss in the graph when no triplet has keypoints
        loss = (torch.stack(losses).mean() if losses else d.new_ones(())) + 0.0 * d.sum()
        logs = {k: float(np.mean([s[k] for s in stats])) if stats else 0.0 for k in ("match_pos", "match_neg")}
        if float(c["mutual"]["weight"]) > 0:
            if "H_ap" not in batch:
                raise ValueError("loss.mutual needs the bags' keypoints and homographies: set data.correspondences: true")
            lm, ml = self._mutual(da.split(na), dp.split(npos), batch)
            if lm is not None:
                loss = loss + float(c["mutual"]["weight"]) * lm
                logs.update({"mutual": float(lm.detach()), **{k: float(v) for k, v in ml.items()}})
        return loss, logs

    def _mutual(self, das, dps, batch):
        """Mean mutual-NN loss over the triplets whose anchor→positive homography is known."""
        from .mutual import frame_correspondences, mutual_nn_loss

        mc = self.conf["mutual"]
        fa = batch["anchor_frames"].split([x.shape[0] for x in das])
        fp = batch["positive_frames"].split([x.shape[0] for x in dps])
        terms, logs = [], []
        for a, p, f0, f1, H in zip(das, dps, fa, fp, batch["H_ap"]):
            if not torch.isfinite(H).all() or a.shape[0] == 0 or p.shape[0] == 0:
                continue
            m, near = frame_correspondences(f0.numpy(), f1.numpy(), H.double().numpy(), mc)
            ones0 = torch.ones(1, a.shape[0], dtype=torch.bool, device=a.device)
            ones1 = torch.ones(1, p.shape[0], dtype=torch.bool, device=a.device)
            lt, lg = mutual_nn_loss(a[None], p[None], torch.from_numpy(m)[None].to(a.device), ones0, ones1,
                                    torch.from_numpy(near)[None].to(a.device), float(mc["temperature"]),
                                    float(mc["unmatched_weight"]))
            terms.append(lt)
            logs.append(lg)
        if not terms:
            return None, {}
        keys = ("mnn_precision", "mnn_matches", "n_pos")
        return torch.stack(terms).mean(), {k: float(np.mean([float(g[k]) for g in logs])) for k in keys}
