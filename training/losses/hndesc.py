"""HNDesc losses and hard-negative mining (Melekhov et al., "Digging Into Self-Supervised Learning
of Feature Descriptors", 3DV 2021; behaviour read from the MIT reference imelekhov/HNDesc).

Inputs are the L2-normalised descriptors of N keypoints: ``anchors`` (first crop of a pair) and
``positives`` (the same keypoints seen in the second crop), with ``pair_ids`` telling which
training pair (image) each keypoint belongs to. Each anchor is scored against its positive and
``knn`` (20) mined negatives, the hardest ones (highest cosine similarity) of a search space:

- ``in_pair``: the other keypoints' positives of the *same* pair (R2D2/CAPS-like).
- ``in_batch``: the positives of the *other* pairs of the mini-batch (the reference's default
  criterion excludes the anchor's own pair; ``in_batch_with_pair=True`` adds it).
- ``gd``: ``in_batch`` plus keypoints of crops taken from *neighbour images* found with global
  image descriptors (a kNN file: hloc NetVLAD/GeM/... global-features .h5, or a pairs .txt);
  these come in as ``extra`` descriptors.
- ``selfgd``: as ``gd``, neighbours found with the model's own pooled features, refreshed every
  K steps (``SelfGDIndex``).

When fewer than ``knn`` negatives exist the last (weakest) mined one is repeated, as the
reference does; anchors without any negative are dropped.

Losses: quantised AP (``1 - AP``, 20 bins on similarities in [0, 1], R2D2's AP loss as the
reference uses it) or triplet (margin 1, Euclidean distances, hardest negative).
"""
from __future__ import annotations

import logging
import random
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hndesc_features.handcrafted import cv2_gray, dog_frames, dog_keypoints  # noqa: F401

from ..knn import KNNIndex, SelfGDIndex
from ..knn import _unwrap  # noqa: F401
from ..pipelines.hndesc import DEFAULT_CONF, _augmentation, _conf, pick_negative_window  # noqa: F401

logger = logging.getLogger("hndesc_features")


MINING_MODES = ("in_pair", "in_batch", "gd", "selfgd")
DEV_TRAIN = {"name": "dev_images", "split": "train"}  # loss.gd.images: null


# ---------------------------------------------------------------------------------- AP
class QuantizedAP(nn.Module):
    """Differentiable average precision through soft histogram binning (R2D2's AP loss).

    ``nq`` triangular bins centred on ``max, …, min`` (width ``(max-min)/(nq-1)``); the first and
    last bins saturate (everything above ``max`` / below ``min`` falls in them). For each query
    row: AP = Σ_k precision_k · Δrecall_k over the bins sorted from most to least similar.
    """

    def __init__(self, nq: int = 20, vmin: float = 0.0, vmax: float = 1.0):
        super().__init__()
        assert nq >= 2 and vmax > vmin
        self.nq = nq
        self.vmin, self.vmax = vmin, vmax
        self.register_buffer("centers", torch.linspace(vmax, vmin, nq), persistent=False)
        self.a = (nq - 1) / (vmax - vmin)

    def binning(self, x: torch.Tensor) -> torch.Tensor:
        """x N×M → soft memberships N×Q×M (each value's memberships sum to 1 inside [min, max])."""
        d = x.unsqueeze(1) - self.centers.view(1, -1, 1)  # N×Q×M
        q = (1 - self.a * d.abs()).clamp(min=0)
        first = torch.where(d[:, :1] >= 0, torch.ones_like(q[:, :1]), q[:, :1])
        last = torch.where(d[:, -1:] <= 0, torch.ones_like(q[:, -1:]), q[:, -1:])
        return torch.cat([first, q[:, 1:-1], last], 1)

    def forward(self, sim: torch.Tensor, labels: torch.Tensor,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """sim N×M similarities, labels N×M in {0,1}, valid N×M (optional) → AP per row (N)."""
        q = self.binning(sim)
        if valid is not None:
            q = q * valid.unsqueeze(1).to(q)
        nbs = q.sum(-1)  # samples per bin
        rec = (q * labels.unsqueeze(1).to(q)).sum(-1)  # positives per bin
        prec = rec.cumsum(-1) / (1e-16 + nbs.cumsum(-1))
        rec = rec / rec.sum(-1, keepdim=True).clamp(min=1e-16)
        return (prec * rec).sum(-1)


# ---------------------------------------------------------------------------------- mining
def negative_mask(pair_ids: torch.Tensor, mode: str, n_extra: int = 0,
                  in_batch_with_pair: bool = False) -> torch.Tensor:
    """N×(N+n_extra) bool: which candidates (positives, then extra descriptors) are negatives."""
    if mode not in MINING_MODES:
        raise ValueError(f"Unknown mining mode '{mode}'; expected one of {MINING_MODES}")
    n = pair_ids.shape[0]
    same = pair_ids[:, None] == pair_ids[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=pair_ids.device)
    if mode == "in_pair":
        m = same & ~eye
    elif mode == "in_batch" and in_batch_with_pair:
        m = ~eye
    else:  # in_batch, gd, selfgd: the other pairs' positives
        m = ~same
    extra = torch.zeros(n, n_extra, dtype=torch.bool, device=pair_ids.device)
    if mode in ("gd", "selfgd"):
        extra[:] = True
    return torch.cat([m, extra], 1)


def mine_hardest(sim: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k similarities among the masked candidates of each row.

    Returns (neg N×k, keep N): rows with fewer than k candidates repeat their weakest mined
    negative (the reference's padding); rows with none are flagged ``keep=False``.
    """
    n_valid = mask.sum(1)
    masked = sim.masked_fill(~mask, float("-inf"))
    kk = min(k, sim.shape[1]) if sim.shape[1] else 0
    if kk == 0:
        return sim.new_zeros(sim.shape[0], k), torch.zeros_like(n_valid, dtype=torch.bool)
    top, _ = masked.topk(kk, dim=1)
    if kk < k:
        top = torch.cat([top, top[:, -1:].expand(-1, k - kk)], 1)
    # positions beyond a row's count hold -inf: repeat its last valid (weakest) negative
    idx = torch.arange(k, device=sim.device)[None].expand(sim.shape[0], -1)
    last = (n_valid.clamp(min=1) - 1).clamp(max=k - 1)
    fill = top.gather(1, last[:, None])
    top = torch.where(idx < n_valid[:, None], top, fill)
    return top, n_valid > 0


class HNDescLoss(nn.Module):
    """AP (default) or triplet loss with HNDesc hard-negative mining.

    forward(anchors N×D, positives N×D, pair_ids N, extra M×D | None) →
    {"loss", "ap" (mean AP of the kept anchors; for triplet too, as a metric), "n" kept anchors}.
    """

    def __init__(self, loss: str = "ap", mining: str = "in_batch", knn: int = 20, nq: int = 20,
                 margin: float = 1.0, in_batch_with_pair: bool = False):
        super().__init__()
        if loss not in ("ap", "triplet"):
            raise ValueError(f"Unknown HNDesc loss '{loss}'; expected 'ap' or 'triplet'")
        if mining not in MINING_MODES:
            raise ValueError(f"Unknown mining mode '{mining}'; expected one of {MINING_MODES}")
        self.loss, self.mining, self.knn, self.margin = loss, mining, knn, margin
        self.in_batch_with_pair = in_batch_with_pair
        self.ap = QuantizedAP(nq, 0.0, 1.0)

    def similarities(self, anchors, positives, pair_ids, extra=None, exclude=None):
        """(sim_pos N, sim_neg N×knn, keep N) for the configured mining mode. ``exclude`` (N×N
        bool, optional): positives that must not serve as negatives of an anchor (e.g. keypoints
        a few pixels away from it in the same image: the same structure, not a negative)."""
        cands = positives if extra is None or extra.shape[0] == 0 else torch.cat([positives, extra])
        n_extra = cands.shape[0] - positives.shape[0]
        if self.mining in ("gd", "selfgd") and n_extra == 0:
            logger.debug("HNDesc %s mining without neighbour descriptors: in_batch only", self.mining)
        sim = anchors @ cands.t()
        mask = negative_mask(pair_ids, self.mining, n_extra, self.in_batch_with_pair)
        if exclude is not None:
            mask[:, : positives.shape[0]] &= ~exclude
        neg, keep = mine_hardest(sim, mask, self.knn)
        pos = (anchors * positives).sum(-1)
        return pos, neg, keep

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor, pair_ids: torch.Tensor,
                extra: Optional[torch.Tensor] = None, exclude: Optional[torch.Tensor] = None) -> dict:
        pos, neg, keep = self.similarities(anchors, positives, pair_ids, extra, exclude)
        pos, neg = pos[keep], neg[keep]
        if pos.numel() == 0:
            zero = anchors.sum() * 0.0
            return {"loss": zero, "ap": zero.detach(), "n": 0}
        sim = torch.cat([pos[:, None], neg], 1)
        labels = torch.zeros_like(sim)
        labels[:, 0] = 1
        ap = self.ap(sim, labels)
        if self.loss == "ap":
            loss = (1 - ap).mean()
        else:  # triplet on Euclidean distances of unit vectors: d = sqrt(2 - 2 s)
            d_pos = (2 - 2 * pos).clamp(min=1e-12).sqrt()
            d_neg = (2 - 2 * neg[:, 0]).clamp(min=1e-12).sqrt()
            loss = F.relu(d_pos - d_neg + self.margin).mean()
        return {"loss": loss, "ap": ap.mean().detach(), "n": int(pos.shape[0])}



def describe(model: nn.Module, images: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """Model + B×3×H×W images + B×N×2 keypoints (B×N×4 frames for patch backbones) → B×N×D
    L2-normalised descriptors. One model call either way (DDP)."""
    from hndesc_features.models.sampling import sample_descriptors

    net = _unwrap(model)
    if getattr(net, "patch_based", False):
        if keypoints.shape[-1] != 4:
            raise ValueError(f"{type(net).__name__} describes keypoint frames (x, y, size, angle): set "
                             "loss.frames.enable=true in the training config")
        B, N = keypoints.shape[:2]
        with torch.no_grad():
            patches = torch.cat([net.patches(images[b], keypoints[b]) for b in range(B)])
        return model(patches).float().view(B, N, -1)
    keypoints = keypoints[..., :2]
    dense = model(images).float()  # under autocast (train.amp): sample and score in float32
    d = sample_descriptors(dense, keypoints, tuple(images.shape[-2:]), net.sampling, net.stride)
    return d.transpose(1, 2)


class Loss(nn.Module):
    """HNDesc training objective for the shared trainer (``loss.name: hndesc``)."""

    def __init__(self, conf: Optional[dict] = None):
        super().__init__()
        self.conf = c = _conf(conf)
        self.criterion = HNDescLoss(c["loss"], c["mining"], int(c["knn"]), int(c["nq"]), float(c["margin"]),
                                    bool(c["in_batch_with_pair"]))
        self.index = None
        self.calls = 0
        self._images: dict = {}
        self._py_rng = random.Random(0)

    # ----------------------------------------------------------- neighbour images (gd/selfgd)
    def _train_paths(self) -> list[str]:
        from ..datasets.image_folder import source_paths

        return [str(p) for p in source_paths(self.conf["gd"]["images"] or DEV_TRAIN)]

    def _load_neighbour(self, path: str, size: int):
        """(H×W×3 uint8 image resized for cropping, its DoG keypoints), cached."""
        if path not in self._images:
            from ..datasets.base import read_image, resize_long_side

            if len(self._images) >= 256:  # bounded: a large training set must not fill the memory
                self._images.pop(next(iter(self._images)))

            g = self.conf["gd"]
            img = read_image(path)
            if img is None:
                self._images[path] = None
                return None
            img = resize_long_side(img, float(g["resize"]), min_side=size)
            import cv2

            gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            ct = float(self.conf["keypoints"]["contrast_threshold"])
            kp = (dog_frames(gray, 5000, ct, unique=True) if self.conf["frames"]["enable"]
                  else dog_keypoints(gray, 5000, ct))
            self._images[path] = (img, kp)
        return self._images[path]

    def _neighbour_index(self, model):
        mode, g = self.conf["mining"], self.conf["gd"]
        if mode == "gd" and self.index is None:
            if not g["knn_file"]:
                raise ValueError("loss.mining=gd needs loss.gd.knn_file: an hloc global-features .h5 "
                                 "(e.g. NetVLAD) or a retrieval pairs .txt of the training images")
            from ..datasets.base import expand

            path = expand(g["knn_file"])
            if not path.is_file():
                raise FileNotFoundError(f"loss.gd.knn_file {path} not found: write it with `python -m "
                                        "hndesc_features.training.knn CONFIG` (the neighbours of the training images)")
            self.index = KNNIndex(path, self._train_paths(), int(g["k"]), bool(g["allow_unknown"]))
        if mode == "selfgd":
            if self.index is None:
                from ..datasets.base import read_image, resize_long_side

                s = self.conf["selfgd"]

                def load(p):
                    img = read_image(p)
                    img = np.zeros((64, 64, 3), np.uint8) if img is None else resize_long_side(img, s["size"])
                    return img.astype(np.float32) / 255.0

                self.index = SelfGDIndex(self._train_paths(), load, int(s["refresh_every"]), int(s["k"]),
                                         int(s["size"]))
            if self.index.maybe_refresh(_unwrap(model), self.calls):
                logger.info("selfgd: neighbours refreshed at step %d", self.calls)
        return self.index

    def _neighbour_crops(self, model, batch, size: tuple[int, int]):
        """Crops (M×3×h×w, ``size`` = (h, w)) of the neighbour images of the batch, their
        keypoints (M×K×2, padded) and mask (M×K), or None."""
        index = self._neighbour_index(model)
        g = self.conf["gd"]
        crops, kps = [], []
        for name in batch["name"]:
            nbs = index(name)
            if not nbs:
                continue
            nb = nbs[0] if g["pick"] == "first" else nbs[self._py_rng.randrange(len(nbs))]
            loaded = self._load_neighbour(nb, max(size))
            if loaded is None:
                continue
            img, kp = loaded
            h, w = size
            y0, x0 = pick_negative_window(img.shape[:2], kp, (h, w), 5, self._py_rng)
            sel = (kp[:, 0] >= x0) & (kp[:, 0] < x0 + w) & (kp[:, 1] >= y0) & (kp[:, 1] < y0 + h)
            k = kp[sel][: int(g["max_kpts"])].copy()
            k[:, :2] -= np.array([x0, y0], np.float32)
            if len(k) == 0:
                continue
            crops.append(torch.from_numpy(np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w]))
                         .permute(2, 0, 1).float() / 255)
            kps.append(torch.from_numpy(k))
        if not crops:
            return None
        x = torch.stack(crops)
        if self.conf["augment"].get("enable", True):
            x = _augmentation({k: v for k, v in self.conf["augment"].items() if k != "enable"})(x)
        n = max(len(k) for k in kps)
        kp_pad = torch.zeros(len(kps), n, kps[0].shape[1])
        m = torch.zeros(len(kps), n, dtype=torch.bool)
        for i, k in enumerate(kps):
            kp_pad[i, : len(k)], m[i, : len(k)] = k, True
        return x, kp_pad, m

    # ----------------------------------------------------------- objective
    def forward(self, model, batch) -> tuple[torch.Tensor, dict]:
        v0, v1 = batch["view0"], batch["view1"]
        B, N = batch["kmask"].shape
        mask = batch["kmask"]
        images, kpts = [v0, v1], [batch["kpts0"], batch["kpts1"]]
        mutual = "m_frames0" in batch
        if mutual:  # the mutual-NN sets ride along in the same model call (DDP)
            c = kpts[0].shape[-1]
            kpts = [torch.cat([kpts[0], batch["m_frames0"][..., :c]], 1),
                    torch.cat([kpts[1], batch["m_frames1"][..., :c]], 1)]
        neg = None
        if self.conf["mining"] in ("gd", "selfgd"):
            # crops of the views' size, so that everything goes through ONE model forward (DDP)
            if "nb_valid" in batch:  # gd: the neighbour crops came with the batch (data workers)
                ok = batch["nb_valid"]
                neg = (batch["nb_image"][ok], batch["nb_kpts"][ok], batch["nb_mask"][ok]) if bool(ok.any()) else None
            else:
                neg = self._neighbour_crops(model, batch, (int(v0.shape[-2]), int(v0.shape[-1])))
            if neg is not None:
                x, kp, m = (t.to(v0.device) for t in neg)
                images.append(x)
                n = max(kpts[0].shape[1], kp.shape[1])
                pad = lambda t: F.pad(t, (0, 0, 0, n - t.shape[1]))  # noqa: E731
                kpts = [pad(k) for k in kpts] + [pad(kp)]
        d = describe(model, torch.cat(images), torch.cat(kpts))
        anchors, positives = d[:B, :N][mask], d[B:2 * B, :N][mask]
        extra = d[2 * B:, : neg[2].shape[1]][neg[2].to(d.device)] if neg is not None else None
        pair_ids = torch.arange(B, device=mask.device)[:, None].expand(B, N)[mask]
        exclude = None
        if float(self.conf["neg_min_dist"]) > 0 and (self.conf["mining"] == "in_pair" or self.conf["in_batch_with_pair"]):
            p1 = batch["kpts1"][..., :2].to(d.device)[mask]
            exclude = (pair_ids[:, None] == pair_ids[None, :]) & (torch.cdist(p1, p1) < float(self.conf["neg_min_dist"]))
        self.calls += 1
        out = self.criterion(anchors, positives, pair_ids, extra, exclude)
        logs = {"ap": out["ap"], "kpts": float(mask.sum()) / B,
                "pos_sim": (anchors * positives).sum(-1).mean().detach()}
        loss = float(self.conf["main_weight"]) * out["loss"]
        if mutual:
            from .mutual import mutual_nn_loss

            mc = self.conf["mutual"]
            nm = batch["m_frames0"].shape[1]
            lm, ml = mutual_nn_loss(d[:B, N:N + nm], d[B:2 * B, N:N + nm], batch["m_matches"], batch["m_valid0"],
                                    batch["m_valid1"], batch["m_near"], float(mc["temperature"]),
                                    float(mc["unmatched_weight"]))
            loss = loss + float(mc["weight"]) * lm
            logs.update({"mutual": lm.detach(), "mnn_precision": ml["mnn_precision"],
                         "mnn_matches": ml["mnn_matches"], "m_pos": ml["n_pos"]})
        if self.conf["mining"] in ("gd", "selfgd"):
            logs["extra_negs"] = float(0 if extra is None else extra.shape[0])
        return loss, logs
