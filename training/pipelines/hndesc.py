"""HNDesc's data pipeline: a homography crop pair → a training sample (runs in the data workers).

``prepare(sample, conf)``: stylization of view 1 (probability p, ``training/stylize.py``), DoG
keypoints of view 0 with their exact positions (or frames) in view 1, padded to
``keypoints.max`` with a mask, HNDesc's colour augmentation (``training/augment_hndesc.py``) and,
with the auxiliary mutual term, every view's own DoG frames and their ground truth; ``collate``
stacks them. ``DEFAULT_CONF`` is the method's config section (``loss:`` in the YAML files): the
loss itself (training/losses/hndesc.py) reads the same section.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hndesc_features.config import merge
from hndesc_features.handcrafted import cv2_gray, dog_frames, dog_keypoints, rgb_u8

from ..geometry.homography import angle_diff, transfer_frames, warp_image, warp_points
from ..knn import GD_DEFAULT


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
    # mode online: StatsStylizer colour map on the crop; pregenerated: one of the copies written by
    # `python -m hndesc_features.training.stylize` (needs samples with A1/source_hw: the homographies
    # dataset) — the copies of image ``rel_to/<rel>.jpg`` live in ``root/<rel>/<style>_<k>.jpg``; root and
    # rel_to may be lists of the same length (one stylized folder per dataset root); an image without
    # copies keeps its unstylized second crop, as the reference does; none.
    # styles: None (default dusk/night photos), {name: [photos]}, or "webcam" (training webcam scenes)
    "stylize": {"mode": "online", "p": 0.7, "root": None, "styles": None, "rel_to": None},
    # gd / selfgd neighbour crops (training/knn.py GD_DEFAULT documents the keys)
    "gd": GD_DEFAULT,
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
    return merge(DEFAULT_CONF, conf, "loss")


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


def _stylize_view1(sample: dict, sconf: dict, rng: np.random.Generator) -> torch.Tensor:
    view1 = sample["view1"]
    if sconf["mode"] == "none" or rng.uniform() >= float(sconf["p"]):
        return view1
    if sconf["mode"] == "online":
        st = _stylizer(sconf)
        out = st(rgb_u8(view1), list(st.styles)[rng.integers(len(st.styles))], rng=rng)
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


_MISSING_WARNED: set = set()


def _pregenerated_view1(sample: dict, sconf: dict, rng: np.random.Generator):
    from ..stylize import read_rgb, stylized_versions

    if sconf.get("root") is None:
        raise ValueError("loss.stylize.mode=pregenerated needs loss.stylize.root "
                         "(the output folder of `python -m hndesc_features.training.stylize`)")
    if "A1" not in sample or "source_hw" not in sample:
        raise ValueError("loss.stylize.mode=pregenerated needs samples with 'A1' (image→view1 "
                         "homography) and 'source_hw' (size of the resized source image); this "
                         "dataset does not provide them: use mode=online")
    key = ("roots", repr(sconf.get("root")), repr(sconf.get("rel_to")))
    if key not in _CACHE:
        from ..stylize import stylized_roots

        _CACHE[key] = stylized_roots(sconf)
    name = Path(sample["name"])
    versions = []
    for rel_to, root in _CACHE[key]:
        if rel_to is None:
            versions = stylized_versions(root, Path(name.name))
        elif name.is_relative_to(rel_to):
            versions = stylized_versions(root, name.relative_to(rel_to))
        else:
            continue
        break
    if not versions:
        if len(_MISSING_WARNED) < 1:  # once per process: the run goes on with unstylized crops
            _MISSING_WARNED.add(str(name))
            import logging

            logging.getLogger("hndesc_features").warning(
                "no pre-generated stylized copies of %s (loss.stylize.root=%s): its second crop stays "
                "unstylized; write them with `python -m hndesc_features.training.stylize CONFIG`",
                name, sconf.get("root"))
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


def in_valid(points: np.ndarray, valid, hw) -> np.ndarray:
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
    return in_valid(p0, valid0, hw) & in_valid(p1, valid1, hw)


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
    from ..losses.mutual import frame_correspondences

    n = int(mconf["keypoints"])
    hw = view0.shape[-2:]
    f = []
    for view, valid in ((view0, valid0), (view1, valid1)):
        fr = dog_frames(cv2_gray(view), 4 * n, contrast_threshold, unique=True).astype(np.float64)
        f.append(fr[in_valid(fr, valid, hw)][:n])
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


def knn_index(g: dict):
    """The ``loss.gd`` neighbour index of this process (built once per data worker)."""
    from ..datasets.base import expand
    from ..datasets.image_folder import source_paths
    from ..knn import KNNIndex

    key = ("knn", str(g["knn_file"]), repr(g["images"]), int(g["k"]))
    if key not in _CACHE:
        path = expand(g["knn_file"])
        if not path.is_file():
            raise FileNotFoundError(f"loss.gd.knn_file {path} not found: write it with `python -m "
                                    "hndesc_features.training.knn CONFIG` (the neighbours of the training images)")
        train = [str(p) for p in source_paths(g["images"] or {"name": "dev_images", "split": "train"})]
        _CACHE[key] = KNNIndex(path, train, int(g["k"]), bool(g["allow_unknown"]))
    return _CACHE[key]


def neighbour_crop(name: str, lc: dict, rng: np.random.Generator, hw: tuple[int, int]) -> dict:
    """gd mining's hard-negative crop for a training image (as the reference's dataset does): a kNN
    neighbour image (``loss.gd``), its window of the views' size richest in DoG keypoints, those
    keypoints (padded to ``gd.max_kpts``) and the colour augmentation. ``nb_valid`` False: no neighbour."""
    from ..datasets.base import read_image, resize_long_side

    g, (h, w) = lc["gd"], hw
    n, c = int(g["max_kpts"]), (4 if lc["frames"]["enable"] else 2)
    out = {"nb_image": torch.zeros(3, h, w), "nb_kpts": torch.zeros(n, c), "nb_mask": torch.zeros(n, dtype=torch.bool),
           "nb_valid": torch.tensor(False)}
    nbs = knn_index(g)(name)
    if not nbs:
        return out
    nb = nbs[0] if g["pick"] == "first" else nbs[int(rng.integers(len(nbs)))]
    img = read_image(nb)
    if img is None:
        return out
    img = resize_long_side(img, float(g["resize"]), min_side=max(h, w))
    import cv2

    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    ct = float(lc["keypoints"]["contrast_threshold"])
    kp = dog_frames(gray, 5000, ct, unique=True) if c == 4 else dog_keypoints(gray, 5000, ct)
    y0, x0 = pick_negative_window(img.shape[:2], kp, (h, w), 5, random.Random(int(rng.integers(2**31))))
    sel = (kp[:, 0] >= x0) & (kp[:, 0] < x0 + w) & (kp[:, 1] >= y0) & (kp[:, 1] < y0 + h)
    k = kp[sel][:n].astype(np.float32).copy()
    if len(k) == 0:
        return out
    k[:, :2] -= np.array([x0, y0], np.float32)
    crop = torch.from_numpy(np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w])).permute(2, 0, 1).float() / 255
    if lc["augment"].get("enable", True):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**31)))
            crop = _augmentation({a: v for a, v in lc["augment"].items() if a != "enable"})(crop[None])[0]
    out["nb_image"] = crop.contiguous()
    out["nb_kpts"][: len(k)], out["nb_mask"][: len(k)], out["nb_valid"] = torch.from_numpy(k), True, torch.tensor(True)
    return out


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
    if lc["mining"] == "gd" and lc["gd"]["knn_file"]:  # the neighbour crop, read here in the data workers
        out.update(neighbour_crop(out["name"], lc, rng, tuple(view0.shape[-2:])))
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
