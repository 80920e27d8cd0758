"""Geometry shared by training, validation and benchmarks: one home for point warps, mutual
nearest-neighbour matching, MMA, the homography corner error and RANSAC (homography or fundamental
matrix).

Conventions: points are N×2 (x, y) pixel coordinates with pixel centres at integer coordinates
(hloc's); homographies map view 0 to view 1 (``x1 ~ H x0``); descriptors are L2-normalised rows.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def warp_points(points, H):
    """Apply H to N×2 points (numpy or torch; also B×N×2 with B×3×3 H)."""
    if isinstance(points, torch.Tensor):
        H = torch.as_tensor(H, dtype=points.dtype, device=points.device)
        ph = torch.cat([points, torch.ones_like(points[..., :1])], -1)
        out = ph @ H.transpose(-1, -2)
        return out[..., :2] / out[..., 2:]
    points = np.asarray(points, np.float64)
    if points.size == 0:
        return np.zeros((*points.shape[:-1], 2)) if points.ndim > 1 else np.zeros((0, 2))
    ph = np.concatenate([points, np.ones_like(points[..., :1])], -1)
    out = ph @ np.asarray(H, np.float64).swapaxes(-1, -2)
    return out[..., :2] / out[..., 2:]


def mutual_nn(d0, d1) -> np.ndarray:
    """Mutual nearest neighbours of N×D and M×D L2-normalised descriptors (numpy or torch) by dot
    product (= L2 distance) → K×2 int64 index pairs (i in d0, j in d1)."""
    if len(d0) == 0 or len(d1) == 0:
        return np.zeros((0, 2), np.int64)
    d0 = torch.as_tensor(np.ascontiguousarray(d0, np.float32) if isinstance(d0, np.ndarray) else d0).float().cpu()
    d1 = torch.as_tensor(np.ascontiguousarray(d1, np.float32) if isinstance(d1, np.ndarray) else d1).float().cpu()
    sim = d0 @ d1.t()
    nn01, nn10 = sim.argmax(1), sim.argmax(0)
    i = torch.arange(len(d0))
    ok = nn10[nn01] == i
    return torch.stack([i[ok], nn01[ok]], -1).numpy().astype(np.int64)


def reprojection_errors(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray, H: np.ndarray) -> np.ndarray:
    """|H x0 - x1| of every match (K,)."""
    if len(matches) == 0:
        return np.zeros(0)
    kp0, kp1 = np.asarray(kp0, np.float64), np.asarray(kp1, np.float64)
    return np.linalg.norm(warp_points(kp0[matches[:, 0]], H) - kp1[matches[:, 1]], axis=-1)


def mma(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Share of matches whose error is <= each threshold (0 everywhere when there is no match)."""
    errors = np.asarray(errors)
    if len(errors) == 0:
        return np.zeros(len(thresholds))
    return np.array([float(np.mean(errors <= t)) for t in thresholds])


def corner_error(H_est, H_gt, hw: tuple[int, int]) -> float:
    """Mean distance between the image corners moved by an estimated and the true homography
    (SuperPoint's homography-estimation criterion); inf when there is no estimate."""
    if H_est is None:
        return float("inf")
    h, w = hw
    c = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
    return float(np.linalg.norm(warp_points(c, H_est) - warp_points(c, H_gt), axis=-1).mean())


def estimate_geometry(p0: np.ndarray, p1: np.ndarray, model: str = "homography", ransac_px: float = 3.0,
                      confidence: float = 0.999, seed=None):
    """OpenCV RANSAC of K×2 correspondences → (matrix, K-bool inlier mask); (None, all-False) with
    too few points (4 for a homography, 8 for a fundamental matrix) or on failure.

    model: "homography" (x1 ~ H x0: planar scenes, pure rotation) or "fundamental" (x1ᵀ F x0 = 0:
    any static 3D scene; ransac_px is then the distance to the epipolar line). seed: cv2.setRNGSeed
    first (repeatable benchmarks)."""
    import cv2

    p0, p1 = np.asarray(p0, np.float64).reshape(-1, 2), np.asarray(p1, np.float64).reshape(-1, 2)
    none = (None, np.zeros(len(p0), bool))
    if model not in ("homography", "fundamental"):
        raise ValueError(f"Unknown geometric model {model!r}: use 'homography' or 'fundamental'.")
    if len(p0) < (4 if model == "homography" else 8):
        return none
    if seed is not None:
        cv2.setRNGSeed(int(seed))
    if model == "homography":
        M, mask = cv2.findHomography(p0, p1, cv2.RANSAC, ransac_px, maxIters=2000, confidence=confidence)
    else:
        M, mask = cv2.findFundamentalMat(p0, p1, cv2.FM_RANSAC, ransac_px, confidence, 2000)
        if M is not None and M.shape != (3, 3):  # several solutions stacked: keep the first
            M = M[:3]
    if M is None or mask is None:
        return none
    return M, mask.ravel().astype(bool)


def estimate_homography(p0: np.ndarray, p1: np.ndarray, ransac_px: float = 3.0, confidence: float = 0.999,
                        seed=None):
    """OpenCV RANSAC homography of K×2 correspondences (None with fewer than 4 or on failure);
    ``seed``: cv2.setRNGSeed first (repeatable benchmarks)."""
    return estimate_geometry(p0, p1, "homography", ransac_px, confidence, seed)[0]


def homography_error(kp0, kp1, H_gt, hw, ransac_px: float = 3.0) -> float:
    """corner_error of the RANSAC homography of matched points kp0[k] ↔ kp1[k]."""
    return corner_error(estimate_homography(kp0, kp1, ransac_px), H_gt, hw)
