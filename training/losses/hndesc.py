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
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..geometry.homography import angle_diff, transfer_frames, warp_image, warp_points

logger = logging.getLogger("hndesc_features")

MINING_MODES = ("in_pair", "in_batch", "gd", "selfgd")


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


# ------------------------------------------------------------------ neighbour images (gd)
def _match_names(file_names: Sequence[str], train_names: Sequence[str]) -> dict:
    """Map names used in a kNN file onto training image names (exact, else path-suffix match)."""
    train = list(train_names)
    exact = set(train)
    out = {}
    for n in file_names:
        if n in exact:
            out[n] = n
            continue
        cands = [t for t in train if t.endswith("/" + n.lstrip("/")) or n.endswith("/" + t.lstrip("/"))]
        if len(cands) == 1:
            out[n] = cands[0]
    return out


class KNNIndex:
    """Neighbour images of each training image, from a global-descriptor kNN file.

    ``path``: an hloc global-features .h5 (one group per image with ``global_descriptor``; the kNN
    is computed by cosine similarity) or a pairs .txt (``query neighbour`` per line, in order of
    preference, as written by hloc's pairs_from_retrieval). ``train_names``: the training images
    (paths as strings); file names are matched exactly or as path suffixes. A file naming images
    that are not training images raises a ``ValueError`` (``allow_unknown=True``: drop them).
    """

    def __init__(self, path, train_names: Sequence[str], k: int = 5, allow_unknown: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"kNN file not found: {self.path}")
        self.k = k
        self.train_names = [str(n) for n in train_names]
        if self.path.suffix in (".h5", ".hdf5"):
            raw = self._from_h5()
        else:
            raw = self._from_pairs()
        names = set(raw) | {m for v in raw.values() for m in v}
        mapping = _match_names(sorted(names), self.train_names)
        unknown = sorted(n for n in names if n not in mapping)
        if unknown and not allow_unknown:
            raise ValueError(
                f"kNN file {self.path} names {len(unknown)} image(s) that are not training images, "
                f"e.g. {', '.join(unknown[:3])}. Recompute it on the training images or pass "
                "allow_unknown=True to ignore them.")
        if unknown:
            logger.warning("kNN file %s: ignoring %d unknown image(s)", self.path, len(unknown))
        self.neighbours: dict[str, list[str]] = {}
        for q, nn_list in raw.items():
            if q not in mapping:
                continue
            nb = [mapping[m] for m in nn_list if m in mapping and mapping[m] != mapping[q]]
            self.neighbours[mapping[q]] = nb[:k]

    def _from_pairs(self) -> dict:
        raw: dict[str, list[str]] = {}
        for line in self.path.read_text().splitlines():
            parts = line.strip().split()
            if len(parts) < 2 or line.lstrip().startswith("#"):
                continue
            lst = raw.setdefault(parts[0], [])
            if parts[1] not in lst:
                lst.append(parts[1])
        if not raw:
            raise ValueError(f"{self.path}: no 'query neighbour' lines found")
        return raw

    def _from_h5(self) -> dict:
        import h5py

        names, descs = [], []
        with h5py.File(str(self.path), "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Group) and "global_descriptor" in obj:
                    names.append(name)
                    descs.append(np.asarray(obj["global_descriptor"][()], np.float32).reshape(-1))
            f.visititems(visit)
        if not names:
            raise ValueError(f"{self.path}: no 'global_descriptor' datasets (not an hloc global-features file?)")
        return knn_from_descriptors(names, np.stack(descs), self.k)

    def __call__(self, name: str) -> list[str]:
        return self.neighbours.get(str(name), [])


def knn_from_descriptors(names: Sequence[str], descs: np.ndarray, k: int) -> dict:
    d = descs / (np.linalg.norm(descs, axis=1, keepdims=True) + 1e-12)
    sim = d @ d.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return {names[i]: [names[j] for j in order[i]] for i in range(len(names))}


@torch.no_grad()
def global_descriptor(model: nn.Module, image: torch.Tensor, max_keypoints: int = 512) -> torch.Tensor:
    """1×3×H×W image in [0, 1] → the model's own global descriptor (D): the L2-normalised mean of
    its L2-normalised descriptors — dense ones, or for patch backbones those of the strongest
    ``max_keypoints`` DoG frames."""
    net = _unwrap(model)
    if getattr(net, "patch_based", False):
        frames = dog_frames(cv2_gray(image[0].cpu()), max_keypoints, 0.005, unique=True)
        if len(frames) == 0:
            return torch.zeros(net.descriptor_dim, device=image.device)
        d = net.describe(image[0], torch.from_numpy(frames).to(image.device))
        return F.normalize(d.mean(0), dim=0)
    dense = F.normalize(net(image), dim=1)
    return F.normalize(dense.mean((2, 3)), dim=1)[0]


class SelfGDIndex:
    """``selfgd``: neighbours from the model's own global descriptors, refreshed every K steps.

    The global descriptor of an image is ``global_descriptor``: the L2-normalised mean of its
    L2-normalised dense (or keypoint-patch) descriptors, image resized to ``size`` px on its long side. ``load_image(name)`` must
    return an H×W×3 float array in [0, 1].
    """

    def __init__(self, train_names: Sequence[str], load_image: Callable[[str], np.ndarray],
                 refresh_every: int = 1000, k: int = 5, size: int = 256):
        self.train_names = [str(n) for n in train_names]
        self.load_image = load_image
        self.refresh_every, self.k, self.size = refresh_every, k, size
        self.neighbours: dict[str, list[str]] = {}
        self.last_refresh: Optional[int] = None

    @torch.no_grad()
    def global_descriptors(self, model: nn.Module) -> np.ndarray:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        for n in self.train_names:
            img = torch.from_numpy(np.ascontiguousarray(self.load_image(n))).float().permute(2, 0, 1)[None]
            s = self.size / max(img.shape[-2:])
            if s < 1:
                img = F.interpolate(img, scale_factor=s, mode="area")
            out.append(global_descriptor(model, img.to(device)).cpu().numpy())
        model.train(was_training)
        return np.stack(out)

    def maybe_refresh(self, model: nn.Module, step: int) -> bool:
        if self.last_refresh is not None and step - self.last_refresh < self.refresh_every:
            return False
        self.neighbours = knn_from_descriptors(self.train_names, self.global_descriptors(model), self.k)
        self.last_refresh = step
        return True

    def __call__(self, name: str) -> list[str]:
        return self.neighbours.get(str(name), [])


def pick_negative_window(image_hw: tuple[int, int], keypoints: np.ndarray, crop,
                         n_trials: int = 5, rng: Optional[random.Random] = None) -> tuple[int, int]:
    """Top-left (y0, x0) of a crop window (int side or (h, w)) of a neighbour image rich in keypoints.

    As the reference: the best (most keypoints) of ``n_trials`` windows centred on random
    keypoints, clamped inside the image; a centred window if there are no keypoints.
    """
    rng = rng or random
    H, W = image_hw
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    ch, cw = min(int(ch), H), min(int(cw), W)

    def clamp_window(cx, cy):
        x0 = int(round(cx - cw / 2))
        y0 = int(round(cy - ch / 2))
        return min(max(y0, 0), H - ch), min(max(x0, 0), W - cw)

    if len(keypoints) == 0:
        return (H - ch) // 2, (W - cw) // 2
    best, best_n = None, -1
    for _ in range(n_trials):
        cx, cy = keypoints[rng.randrange(len(keypoints))][:2]
        y0, x0 = clamp_window(cx, cy)
        inside = ((keypoints[:, 0] >= x0) & (keypoints[:, 0] < x0 + cw)
                  & (keypoints[:, 1] >= y0) & (keypoints[:, 1] < y0 + ch)).sum()
        if inside > best_n:
            best, best_n = (y0, x0), int(inside)
    return best


# ================================================================== trainer adapter
# The trainer (training/trainer.py) uses: Loss(conf["loss"]) with forward(model, batch) ->
# (loss, logs); prepare(sample, conf) in the data workers; collate; extract(...) for validation.
# Data: the ``homographies`` dataset with the H-crops generator (its own photometric augmentation
# off: HNDesc's colour augmentation is applied here, after stylization).

DEFAULT_CONF = {
    "loss": "ap",  # ap | triplet
    "main_weight": 1.0,  # weight of the AP / triplet term (0 with mutual.weight > 0: the mutual term alone)
    "mining": "in_batch",  # in_pair | in_batch | gd | selfgd
    "in_batch_with_pair": False,
    # same-pair candidates whose view-1 position is closer than this (px) to the anchor's
    # positive are not negatives (in_pair, or in_batch_with_pair): overlapping neighbourhoods
    "neg_min_dist": 8.0,
    "knn": 20,  # mined negatives per anchor
    "nq": 20,  # AP quantisation bins
    "margin": 1.0,  # triplet
    "keypoints": {"max": 200, "min": 16, "contrast_threshold": 0.005},
    "augment": {"enable": True, "p_color": 0.6, "p_blur": 0.3, "p_noise": 0.1},
    # second crop from a stylized version with probability p (reference: 0.7).
    # mode online: StatsStylizer colour map on the crop; pregenerated: copies written by
    # `python -m training.stylize` under `root` (needs samples with A1/source_hw); none.
    # styles: None (default dusk/night photos), {name: [photos]}, or "webcam" (training webcam scenes)
    "stylize": {"mode": "online", "p": 0.7, "root": None, "styles": None, "rel_to": None},
    # neighbour crops have the size of the training crops (one forward pass)
    "gd": {"knn_file": None, "k": 5, "pick": "first", "resize": 800, "max_kpts": 200,
           "allow_unknown": False, "images": {"name": "dev_images", "split": "train"}},
    "selfgd": {"refresh_every": 500, "k": 5, "size": 256},
    # keypoint frames (x, y, size, angle) for patch backbones (hndesc_patch): the view-1 frame of
    # an anchor is the DoG frame detected within match_px of its true position (scale within
    # ×/÷ max_scale_ratio, orientation closest to the true one), else the true frame with
    # Gaussian jitter (angle_jitter degrees, scale_jitter in log-size; detect: false → always
    # the jittered true frame); anchors whose patch
    # (scale_factor × size) exceeds max_extent × the crop side are dropped.
    "frames": {"enable": False, "detect": True, "match_px": 2.0, "max_scale_ratio": 1.5, "angle_jitter": 8.0,
               "scale_jitter": 0.1, "max_extent": 0.5},
    # auxiliary mutual-NN term (training/losses/mutual.py; not in the paper): the top `keypoints`
    # DoG frames of *each* view, correspondences and keypoints without one included, scored as a
    # mutual-NN matcher sees them; added to the AP/triplet loss with `weight` (0: off). GT pairs:
    # mutual nearest within match_px of the true position, scale within max_scale_ratio and
    # orientation within max_angle of the true frame; `radius`: never penalise pairs this close.
    "mutual": {"weight": 0.0, "keypoints": 128, "temperature": 0.05, "unmatched_weight": 4.0,
               "match_px": 3.0, "max_scale_ratio": 1.5, "max_angle": 30.0, "radius": 8.0},
}

_CACHE: dict = {}  # per-process caches (stylizer, augmentation)


def _conf(conf: Optional[dict]) -> dict:
    from ..datasets.base import merge

    return merge(DEFAULT_CONF, {k: v for k, v in (conf or {}).items() if k != "name"})


def _stylizer(sconf: dict):
    from ..stylize import StatsStylizer, default_style_photos

    key = ("stylizer", repr(sconf.get("styles")))
    if key not in _CACHE:
        photos = sconf.get("styles") or default_style_photos()
        if photos == "webcam":  # the training webcam scenes' own train images (stylize.webcam_style_photos)
            from ..stylize import webcam_style_photos

            photos = webcam_style_photos()
        _CACHE[key] = StatsStylizer({k: list(v) for k, v in photos.items()}, seed=0)
    return _CACHE[key]


def _augmentation(aconf: dict):
    from ..augment_hndesc import build_augmentation

    key = ("augment", repr(sorted(aconf.items())))
    if key not in _CACHE:
        _CACHE[key] = build_augmentation(aconf)
    return _CACHE[key]


def _u8(t: torch.Tensor) -> np.ndarray:
    """C×H×W float [0,1] → H×W×3 uint8."""
    a = (t.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(a, 3, -1) if a.shape[-1] == 1 else np.ascontiguousarray(a)


def _stylize_view1(sample: dict, sconf: dict, rng: np.random.Generator) -> torch.Tensor:
    view1 = sample["view1"]
    if sconf["mode"] == "none" or rng.uniform() >= float(sconf["p"]):
        return view1
    if sconf["mode"] == "online":
        st = _stylizer(sconf)
        out = st(_u8(view1), list(st.styles)[rng.integers(len(st.styles))], rng=rng)
        out = torch.from_numpy(out).permute(2, 0, 1).float() / 255.0
    elif sconf["mode"] == "pregenerated":
        out = _pregenerated_view1(sample, sconf, rng)
        if out is None:
            return view1
    else:
        raise ValueError(f"loss.stylize.mode must be online, pregenerated or none, got {sconf['mode']!r}")
    if "valid1" in sample:  # keep the invalid (outside the image) pixels as the sampler made them
        v = torch.as_tensor(sample["valid1"])[None]
        out = torch.where(v, out, view1)
    return out


def _pregenerated_view1(sample: dict, sconf: dict, rng: np.random.Generator):
    from ..stylize import read_rgb, stylized_versions

    if sconf.get("root") is None:
        raise ValueError("loss.stylize.mode=pregenerated needs loss.stylize.root "
                         "(the output folder of `python -m training.stylize`)")
    if "A1" not in sample or "source_hw" not in sample:
        raise ValueError("loss.stylize.mode=pregenerated needs samples with 'A1' (image→view1 "
                         "homography) and 'source_hw' (size of the resized source image); this "
                         "dataset does not provide them: use mode=online")
    name = Path(sample["name"])
    rel = name.relative_to(sconf["rel_to"]) if sconf.get("rel_to") else Path(name.name)
    versions = stylized_versions(sconf["root"], rel)
    if not versions:
        return None
    img = read_rgb(versions[rng.integers(len(versions))])
    h, w = [int(x) for x in sample["source_hw"]]
    import cv2

    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    t = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    return warp_image(t, np.asarray(sample["A1"], np.float64), sample["view1"].shape[-2:])


def view1_frames(true1: np.ndarray, detected1: np.ndarray, fconf: dict,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Frames of the anchors in view 1 as a detector sees them (see DEFAULT_CONF["frames"]).

    Returns (frames N×4, matched N bool: the frame is a real detection)."""
    out = true1.astype(np.float64).copy()
    matched = np.zeros(len(out), bool)
    if len(detected1) and len(out):
        d = np.linalg.norm(true1[:, None, :2] - detected1[None, :, :2], axis=-1)
        ratio = np.abs(np.log(np.maximum(detected1[None, :, 2], 1e-6) / np.maximum(true1[:, None, 2], 1e-6)))
        ok = (d <= float(fconf["match_px"])) & (ratio <= np.log(float(fconf["max_scale_ratio"])))
        cost = np.where(ok, angle_diff(true1[:, None, 3], detected1[None, :, 3]), np.inf)
        j = cost.argmin(1)
        matched = np.isfinite(cost[np.arange(len(out)), j])
        out[matched] = detected1[j[matched]]
    n = int((~matched).sum())
    if n:
        out[~matched, 3] = (out[~matched, 3] + rng.normal(0, float(fconf["angle_jitter"]), n)) % 360.0
        out[~matched, 2] *= np.exp(rng.normal(0, float(fconf["scale_jitter"]), n))
    return out.astype(np.float32), matched


def _in_valid(points: np.ndarray, valid, hw) -> np.ndarray:
    """Points (N×2, or frames N×4) whose rounded position lies inside the view and on a valid
    (in-image) pixel; valid None: every pixel."""
    h, w = hw
    valid = np.ones((h, w), bool) if valid is None else np.asarray(valid, bool)
    r = np.round(points[:, :2]).astype(int)
    ok = (r[:, 0] >= 0) & (r[:, 0] < w) & (r[:, 1] >= 0) & (r[:, 1] < h)
    ok[ok] &= valid[r[ok, 1], r[ok, 0]]
    return ok


def _visible(p0: np.ndarray, p1: np.ndarray, valid0, valid1, hw) -> np.ndarray:
    """Points whose rounded positions lie inside both views and on valid (in-image) pixels."""
    return _in_valid(p0, valid0, hw) & _in_valid(p1, valid1, hw)


def _keypoints(view0: torch.Tensor, H: np.ndarray, valid0, valid1, kconf: dict,
               rng: np.random.Generator, view1: Optional[torch.Tensor] = None,
               fconf: Optional[dict] = None, scale_factor: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """DoG keypoints of view 0 that stay visible in view 1 (+ random ones if too few).

    N×2 positions, or N×4 frames (x, y, size, angle°) when ``fconf["enable"]`` (patch backbones;
    view 1's frames from a DoG detection on ``view1``, see ``view1_frames``)."""
    if fconf is not None and fconf.get("enable"):
        return _frame_keypoints(view0, view1, H, valid0, valid1, kconf, fconf, rng, scale_factor)

    h, w = view0.shape[-2:]

    def visible(p0):
        p1 = warp_points(p0.astype(np.float64), H)
        return p1, _visible(p0, p1, valid0, valid1, (h, w))

    kp = dog_keypoints(cv2_gray(view0), 4 * int(kconf["max"]), float(kconf["contrast_threshold"]))
    kp1, ok = visible(kp.reshape(-1, 2))
    kp0, kp1 = kp.reshape(-1, 2)[ok][: int(kconf["max"])], kp1[ok][: int(kconf["max"])]
    if len(kp0) < int(kconf["min"]):  # flat crop: random visible points instead
        cand = rng.uniform([0, 0], [w - 1, h - 1], (4 * int(kconf["max"]), 2))
        c1, okc = visible(cand)
        need = int(kconf["min"]) - len(kp0)
        kp0 = np.concatenate([kp0, cand[okc][:need]])
        kp1 = np.concatenate([kp1, c1[okc][:need]])
    return kp0.astype(np.float32), kp1.astype(np.float32)


def _frame_keypoints(view0, view1, H, valid0, valid1, kconf, fconf, rng, scale_factor):
    h, w = view0.shape[-2:]
    n = int(kconf["max"])
    ct = float(kconf["contrast_threshold"])
    f0 = dog_frames(cv2_gray(view0), 4 * n, ct, unique=True).astype(np.float64)
    f0 = f0[scale_factor * f0[:, 2] <= float(fconf["max_extent"]) * min(h, w)]
    f1 = transfer_frames(f0, H)
    ok = _visible(f0[:, :2], f1[:, :2], valid0, valid1, (h, w))
    f0, f1 = f0[ok][:n], f1[ok][:n]
    det1 = (dog_frames(cv2_gray(view1), 8 * n, ct, unique=False) if view1 is not None and fconf.get("detect", True)
            else np.zeros((0, 4)))
    f1, _ = view1_frames(f1, det1, fconf, rng)
    return f0.astype(np.float32), f1.astype(np.float32)


def mutual_sets(view0: torch.Tensor, view1: torch.Tensor, H: np.ndarray, valid0, valid1, mconf: dict,
                contrast_threshold: float = 0.005) -> dict:
    """Every view's top DoG frames (one per location) and their ground truth, padded to
    ``mconf["keypoints"]``: frames0/1 n×4, valid0/1 n, matches n (index in view 1, -1: none),
    near n×n (view-1 frame within ``radius`` px of the true position of the view-0 frame)."""
    from .mutual import frame_correspondences

    n = int(mconf["keypoints"])
    hw = view0.shape[-2:]
    f = []
    for view, valid in ((view0, valid0), (view1, valid1)):
        fr = dog_frames(cv2_gray(view), 4 * n, contrast_threshold, unique=True).astype(np.float64)
        f.append(fr[_in_valid(fr, valid, hw)][:n])
    f0, f1 = f
    out = {"matches": -np.ones(n, np.int64), "near": np.zeros((n, n), bool)}
    m, near = frame_correspondences(f0, f1, H, mconf)
    out["matches"][: len(f0)] = m
    out["near"][: len(f0), : len(f1)] = near
    for v, fr in (("0", f0), ("1", f1)):
        pad = np.zeros((n, 4), np.float32)
        pad[: len(fr)] = fr
        out["frames" + v] = pad
        out["valid" + v] = np.arange(n) < len(fr)
    return out


def dog_frames(gray: np.ndarray, n: int, contrast_threshold: float = 0.005, unique: bool = False) -> np.ndarray:
    """OpenCV DoG keypoint frames N×4 (x, y, size, angle°), strongest first (the detector of the
    extractors: ``handcrafted.detect_sift``). ``unique`` keeps one orientation per location (the
    strongest) — for training anchors, whose duplicates would be false negatives of each other;
    extraction keeps them all, as SIFT does."""
    from hndesc_features.handcrafted import detect_sift, keypoint_frames

    f = keypoint_frames(detect_sift(gray, -1, contrast_threshold, compute=False))
    if unique:
        first: dict = {}
        for i, (x, y) in enumerate(f[:, :2].tolist()):
            first.setdefault((round(x, 2), round(y, 2)), i)
        f = f[sorted(first.values())]
    return f[:n]


def dog_keypoints(gray: np.ndarray, n: int, contrast_threshold: float = 0.005) -> np.ndarray:
    """OpenCV DoG (SIFT detector) locations, one per position (orientation duplicates merged),
    strongest first → N×2 float32. Duplicated locations would be false "negatives" of each other."""
    return np.ascontiguousarray(dog_frames(gray, n, contrast_threshold, unique=True)[:, :2])


def cv2_gray(t: torch.Tensor) -> np.ndarray:
    import cv2

    a = _u8(t)
    return cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)


def prepare(sample: dict, conf: dict) -> dict:
    """Dataset pair → HNDesc training sample (runs in the data workers).

    Adds stylization of view 1 (probability p), DoG keypoints of view 0 with their exact
    positions in view 1 (padded to ``keypoints.max`` with a mask) and HNDesc colour augmentation.
    """
    lc = _conf(conf.get("loss"))
    rng = np.random.default_rng([int(sample.get("seed", 0)) & 0xFFFFFFFF, 4242])
    H = np.asarray(sample["H_0to1"], np.float64)
    view1 = view1_raw = _stylize_view1(sample, lc["stylize"], rng)
    scale_factor = float((conf.get("model") or {}).get("scale_factor", 6.0))
    kp0, kp1 = _keypoints(sample["view0"], H, sample.get("valid0"), sample.get("valid1"), lc["keypoints"], rng,
                          view1=view1, fconf=lc["frames"], scale_factor=scale_factor)
    view0 = sample["view0"]
    if view0.shape[0] == 1:
        view0, view1 = view0.expand(3, -1, -1), view1.expand(3, -1, -1)
    if lc["augment"].get("enable", True):
        aug = _augmentation({k: v for k, v in lc["augment"].items() if k != "enable"})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**31)))
            view0, view1 = aug(view0[None])[0], aug(view1[None])[0]
    n, c = int(lc["keypoints"]["max"]), (4 if lc["frames"]["enable"] else 2)
    k0, k1 = np.zeros((n, c), np.float32), np.zeros((n, c), np.float32)
    mask = np.zeros(n, bool)
    m = min(n, len(kp0))
    k0[:m], k1[:m], mask[:m] = kp0[:m], kp1[:m], True
    out = {"view0": view0.contiguous(), "view1": view1.contiguous(), "kpts0": torch.from_numpy(k0),
           "kpts1": torch.from_numpy(k1), "kmask": torch.from_numpy(mask),
           "H_0to1": torch.as_tensor(H, dtype=torch.float32), "name": str(sample.get("name", "")),
           "seed": int(sample.get("seed", 0))}
    if float(lc["mutual"]["weight"]) > 0:  # frames found on the views before colour augmentation, as kp0/kp1
        ms = mutual_sets(sample["view0"], view1_raw, H, sample.get("valid0"), sample.get("valid1"), lc["mutual"],
                         float(lc["keypoints"]["contrast_threshold"]))
        out.update({"m_" + k: torch.from_numpy(v) for k, v in ms.items()})
    return out


def collate(samples: list) -> dict:
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


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
        return model(patches).view(B, N, -1)
    keypoints = keypoints[..., :2]
    dense = model(images)
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

        return [str(p) for p in source_paths(self.conf["gd"]["images"])]

    def _load_neighbour(self, path: str, size: int):
        """(H×W×3 uint8 image resized for cropping, its DoG keypoints), cached."""
        if path not in self._images:
            from ..datasets.base import read_image, resize_long_side

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
            self.index = KNNIndex(g["knn_file"], self._train_paths(), int(g["k"]), bool(g["allow_unknown"]))
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


@torch.no_grad()
def extract(model, image: torch.Tensor, conf: dict, max_keypoints: int = 1024) -> dict:
    """Validation features: DoG keypoints (as at extraction time) + HNDesc descriptors."""
    lc = _conf(conf.get("loss") if conf else None)
    img = image[0]
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    ct = float(lc["keypoints"]["contrast_threshold"])
    if getattr(_unwrap(model), "patch_based", False):  # as the extractor: all DoG orientations
        kp = dog_frames(cv2_gray(img.cpu()), max_keypoints, ct, unique=False)
    else:
        kp = dog_keypoints(cv2_gray(img.cpu()), max_keypoints, ct)
    kpt = torch.from_numpy(kp).to(image.device)
    if len(kpt) == 0:
        return {"keypoints": kpt[:, :2], "descriptors": torch.zeros(0, 128)}
    d = describe(model, img[None].to(image.device), kpt[None])[0]
    return {"keypoints": kpt[:, :2], "descriptors": d}
