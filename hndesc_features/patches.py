"""Batched extraction of oriented, scale-normalised square patches around keypoints.

Geometry (as in nenadmarkus/wlrn's `extract_patches`): a patch of `patch_size` pixels covers a square
of side `scale_factor × size` image pixels centred on the keypoint (`size` = OpenCV `KeyPoint.size`,
the diameter of the keypoint's neighbourhood), rotated by the keypoint angle (degrees, OpenCV
convention: image axes, y down). Patch pixel (u, v), u, v ∈ [0, P), samples the image at

    x = x_k + d (cos θ · a − sin θ · b),   y = y_k + d (sin θ · a + cos θ · b),
    a = u − (P − 1) / 2,  b = v − (P − 1) / 2,  d = scale_factor · size / P.

Pixels outside the image are 0 (the reference fills outliers with 0). Sampling is one
`grid_sample` call per pyramid level: with `pyramid=True` each keypoint is sampled from the level
of a Gaussian pyramid whose pixel step is in [1, 2), so large keypoints are not aliased.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["extract_patches", "patch_sampling_grid", "gaussian_pyramid"]


def _as_tensor(x, device, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x, device=device).to(dtype)


def patch_sampling_grid(keypoints: torch.Tensor, sizes: torch.Tensor, angles_deg: torch.Tensor,
                        patch_size: int = 32, scale_factor: float = 1.5) -> torch.Tensor:
    """Image pixel coordinates (x, y) sampled by each patch pixel: N×P×P×2 (pixel centres at integers)."""
    p = patch_size
    r = torch.arange(p, device=keypoints.device, dtype=keypoints.dtype) - (p - 1) / 2.0
    b, a = torch.meshgrid(r, r, indexing="ij")  # a: along x (columns), b: along y (rows)
    step = (scale_factor * sizes / p)[:, None, None]
    th = torch.deg2rad(angles_deg)[:, None, None]
    c, s = torch.cos(th), torch.sin(th)
    x = keypoints[:, 0, None, None] + step * (c * a - s * b)
    y = keypoints[:, 1, None, None] + step * (s * a + c * b)
    return torch.stack([x, y], dim=-1)


def gaussian_pyramid(image: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """[1×C×H×W, …] halving the resolution each level (kornia's 5×5 Gaussian pyrdown)."""
    from kornia.geometry.transform import pyrdown

    levels = [image]
    for _ in range(1, num_levels):
        h, w = levels[-1].shape[-2:]
        if min(h, w) < 16:
            break
        levels.append(pyrdown(levels[-1]))
    return levels


def extract_patches(image: torch.Tensor, keypoints, sizes, angles_deg=None, patch_size: int = 32,
                    scale_factor: float = 1.5, pyramid: bool = True, mode: str = "bilinear",
                    max_levels: int = 8) -> torch.Tensor:
    """Rotated, scale-normalised patches around keypoints.

    Args:
        image: C×H×W or 1×C×H×W tensor (any value range; patches keep it).
        keypoints: N×2 (x, y) pixel coordinates, pixel centres at integers.
        sizes: N keypoint sizes (OpenCV `KeyPoint.size`, pixels).
        angles_deg: N orientations in degrees (OpenCV convention); None → upright.
        patch_size: output side P.
        scale_factor: patch side in the image = scale_factor × size.
        pyramid: sample large keypoints from a Gaussian pyramid level (anti-aliasing).
        mode: `grid_sample` interpolation ("bilinear" or "bicubic").
    Returns:
        N×C×P×P float tensor on the image's device.
    """
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"extract_patches expects one image C×H×W or 1×C×H×W, got {tuple(image.shape)}")
    image = image.float()
    device = image.device
    kpts = _as_tensor(keypoints, device).reshape(-1, 2)
    n = kpts.shape[0]
    sizes = _as_tensor(sizes, device).reshape(-1)
    angles = (torch.zeros(n, device=device) if angles_deg is None
              else _as_tensor(angles_deg, device).reshape(-1))
    if sizes.shape[0] != n or angles.shape[0] != n:
        raise ValueError(f"keypoints ({n}), sizes ({sizes.shape[0]}) and angles ({angles.shape[0]}) differ in length")
    c, h, w = image.shape[1:]
    out = image.new_zeros((n, c, patch_size, patch_size))
    if n == 0:
        return out
    grid = patch_sampling_grid(kpts, sizes, angles, patch_size, scale_factor)  # N×P×P×2, level-0 pixels
    step = scale_factor * sizes / patch_size
    if pyramid:
        want = torch.floor(torch.log2(step.clamp(min=1.0))).long()
        num_levels = int(min(max_levels, int(want.max().item()) + 1))
        levels = gaussian_pyramid(image, num_levels)
        level_of = want.clamp(0, len(levels) - 1)
    else:
        levels = [image]
        level_of = torch.zeros(n, dtype=torch.long, device=device)
    for li, img in enumerate(levels):
        idx = torch.nonzero(level_of == li).flatten()
        if idx.numel() == 0:
            continue
        hl, wl = img.shape[-2:]
        g = grid[idx]
        # level-0 pixel → level-li pixel (align_corners=False resampling), then → [-1, 1]
        gx = (g[..., 0] + 0.5) * (wl / w) - 0.5
        gy = (g[..., 1] + 0.5) * (hl / h) - 0.5
        norm = torch.stack([(2 * gx + 1) / wl - 1, (2 * gy + 1) / hl - 1], dim=-1)
        m = idx.numel()
        norm = norm.reshape(1, m * patch_size, patch_size, 2)
        sampled = F.grid_sample(img, norm, mode=mode, padding_mode="zeros", align_corners=False)
        out[idx] = sampled.reshape(c, m, patch_size, patch_size).permute(1, 0, 2, 3)
    return out


def level_for_step(step: float) -> int:
    """Pyramid level used for a sampling step (level-0 pixels per patch pixel)."""
    return max(0, int(math.floor(math.log2(max(step, 1.0)))))
