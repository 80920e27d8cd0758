"""Handcrafted detectors/descriptors through OpenCV: SIFT / RootSIFT (upright or not), ORB.

All functions take an H×W uint8 grayscale image and return numpy arrays in OpenCV's keypoint
convention (pixel centres at integer coordinates, as hloc expects), sorted by decreasing score:
`keypoints` N×2 float32, `scores` N, `scales` N (OpenCV keypoint size, i.e. diameter),
`oris` N (degrees), `descriptors` N×D.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

EPS = 1e-6


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """H×W or H×W×3 float in [0,1] (or uint8) → H×W uint8."""
    if image.ndim == 3:
        if image.dtype != np.uint8:
            image = (image * 255.0).round().clip(0, 255).astype(np.uint8)
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    elif image.dtype != np.uint8:
        image = (image * 255.0).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def tensor_to_gray_u8(image: torch.Tensor) -> np.ndarray:
    """C×H×W (or 1×C×H×W) float image in [0, 1] → H×W uint8: the pixels every detector sees, exactly
    as the hf_sift / hf_surf extractors convert their input."""
    img = image[0] if image.dim() == 4 else image
    x = img.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return to_gray_u8(x[..., 0] if x.shape[-1] == 1 else x)


def sift_to_rootsift(desc: np.ndarray) -> np.ndarray:
    desc = desc / (np.abs(desc).sum(-1, keepdims=True) + EPS)
    desc = np.sqrt(desc.clip(min=0))
    return desc / (np.linalg.norm(desc, axis=-1, keepdims=True) + EPS)


def _kp_arrays(kps) -> dict:
    n = len(kps)
    pts = cv2.KeyPoint_convert(kps) if n else np.zeros((0, 2), np.float32)
    return {
        "keypoints": np.asarray(pts, np.float32).reshape(n, 2),
        "scores": np.array([k.response for k in kps], np.float32).reshape(n),
        "scales": np.array([k.size for k in kps], np.float32).reshape(n),
        "oris": np.array([k.angle for k in kps], np.float32).reshape(n),
    }


def keypoint_frames(feats: dict) -> np.ndarray:
    """N×4 float32 keypoint frames (x, y, size, angle°) of a detection dict (keypoints, scales, oris)."""
    return np.concatenate([feats["keypoints"], feats["scales"][:, None], feats["oris"][:, None]], 1).astype(np.float32)


def _top_k(kps, max_keypoints: int):
    """Keypoints by decreasing response, ties in OpenCV's detection order (x, y ascending, size
    descending, angle ascending: the order of cv2's removeDuplicatedSorted), first `max_keypoints`."""
    if not kps:
        return [], np.zeros(0, np.int64)
    n = len(kps)
    resp = np.fromiter((k.response for k in kps), np.float64, n)
    size = np.fromiter((k.size for k in kps), np.float64, n)
    ang = np.fromiter((k.angle for k in kps), np.float64, n)
    pts = cv2.KeyPoint_convert(kps).astype(np.float64)
    order = np.lexsort((ang, -size, pts[:, 1], pts[:, 0], -resp))
    if max_keypoints is not None and max_keypoints > 0:
        order = order[:max_keypoints]
    return [kps[i] for i in order], order


def detect_sift(gray: np.ndarray, max_keypoints: int = 4096, contrast_threshold: float = 0.005,
                root: bool = True, upright: bool = False, n_octave_layers: int = 3,
                edge_threshold: float = 10.0, sigma: float = 1.6, compute: bool = True,
                return_cv: bool = False) -> dict:
    """DoG keypoints + SIFT/RootSIFT descriptors, top `max_keypoints` by DoG response.

    upright: every keypoint gets orientation 0; keypoints that only differed by orientation
    are merged (the strongest is kept) before the top-k selection.
    compute: False returns the detections only (keypoints, scores, scales, oris).
    return_cv: also return the selected cv2.KeyPoint list under ``cv_keypoints``.

    Non-upright descriptors come from one ``detectAndCompute`` call (one Gaussian pyramid, OpenCV
    keeps the `max_keypoints` best responses and their ties before describing): the keypoints,
    their order and the descriptors are bit-identical to ``detect`` + top-k + ``compute``, which
    builds the pyramid twice (tests/test_residual.py::test_detect_sift_single_pyramid_is_exact).
    """
    gray = to_gray_u8(gray)
    single = compute and not upright
    sift = cv2.SIFT_create(nfeatures=max(int(max_keypoints or 0), 0) if single else 0,
                           nOctaveLayers=n_octave_layers, contrastThreshold=contrast_threshold,
                           edgeThreshold=edge_threshold, sigma=sigma)
    desc = None
    if single:
        kps, desc = sift.detectAndCompute(gray, None)
        kps = list(kps)
    else:
        kps = list(sift.detect(gray, None))
    if upright:
        best = {}
        for k in kps:
            key = (round(k.pt[0], 3), round(k.pt[1], 3), round(k.size, 3))
            if key not in best or k.response > best[key].response:
                best[key] = k
        kps = list(best.values())
        for k in kps:
            k.angle = 0.0
    if kps:
        kps, order = _top_k(kps, max_keypoints)
        if desc is not None:
            desc = desc[order]
    if not compute:  # detection only (no `descriptors` entry)
        out = _kp_arrays(kps)
        if return_cv:
            out["cv_keypoints"] = kps
        return out
    if kps and desc is None:
        kps, desc = sift.compute(gray, kps)
    if desc is None or len(kps) == 0:
        out = _kp_arrays([])
        out["descriptors"] = np.zeros((0, 128), np.float32)
        if return_cv:
            out["cv_keypoints"] = []
        return out
    out = _kp_arrays(kps)
    desc = desc.astype(np.float32)
    if root:
        desc = sift_to_rootsift(desc)
    else:
        desc = desc / (np.linalg.norm(desc, axis=-1, keepdims=True) + EPS)
    out["descriptors"] = desc.astype(np.float32)
    if return_cv:
        out["cv_keypoints"] = list(kps)
    return out


def detect_orb(gray: np.ndarray, max_keypoints: int = 4096, scale_factor: float = 1.2,
               n_levels: int = 8, fast_threshold: int = 20) -> dict:
    """ORB (Harris-scored oFAST + rBRIEF); `descriptors` N×32 uint8 (raw bits)."""
    gray = to_gray_u8(gray)
    n = max_keypoints if max_keypoints and max_keypoints > 0 else 1_000_000
    orb = cv2.ORB_create(nfeatures=n, scaleFactor=scale_factor, nlevels=n_levels,
                         fastThreshold=fast_threshold)
    kps, desc = orb.detectAndCompute(gray, None)
    if desc is None or len(kps) == 0:
        out = _kp_arrays([])
        out["descriptors"] = np.zeros((0, 32), np.uint8)
        return out
    order = np.argsort([-k.response for k in kps], kind="stable")
    if max_keypoints and max_keypoints > 0:
        order = order[:max_keypoints]
    kps = [kps[i] for i in order]
    out = _kp_arrays(kps)
    out["descriptors"] = desc[order]
    return out


def binary_to_unit_float(desc: np.ndarray) -> np.ndarray:
    """N×B uint8 binary descriptors → N×(8B) float32 ±1/sqrt(8B) (unit norm).

    For two such vectors, dot = 1 - 2·Hamming/(8B): L2 nearest neighbours are Hamming ones.
    """
    bits = np.unpackbits(desc, axis=1).astype(np.float32)
    d = bits.shape[1]
    return ((2.0 * bits - 1.0) / np.sqrt(max(d, 1))).astype(np.float32).reshape(len(desc), d)


# ---------------------------------------------------------------- DoG frames of torch images (training)
def rgb_u8(t: torch.Tensor) -> np.ndarray:
    """C×H×W float [0,1] → H×W×3 uint8."""
    a = (t.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(a, 3, -1) if a.shape[-1] == 1 else np.ascontiguousarray(a)


def dog_frames(gray: np.ndarray, n: int, contrast_threshold: float = 0.005, unique: bool = False) -> np.ndarray:
    """OpenCV DoG keypoint frames N×4 (x, y, size, angle°), strongest first (the detector of the
    extractors: ``handcrafted.detect_sift``). ``unique`` keeps one orientation per location (the
    strongest) — for training anchors, whose duplicates would be false negatives of each other;
    extraction keeps them all, as SIFT does."""
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
    """Training's tensor → gray (via rgb_u8's rounding; kept as is for the training pipelines)."""
    a = rgb_u8(t)
    return cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
