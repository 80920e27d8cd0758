"""Sampling dense descriptor maps at keypoints (shared by the HNDesc backbones and training).

Two conventions map a keypoint (x, y), in pixels of the network *input* image with pixel centres
at integer coordinates (hloc's convention), onto a dense map of size h×w:

- ``"hndesc"``: the convention of the released HNDesc code (``extract_local_descs`` of its
  CAPS wrapper, used for both backbones at test time). The point is normalised with the image
  size as ``(x - (W-1)/2) / ((W-1)/2)`` and the map is read with ``F.grid_sample`` at torch's
  default ``align_corners=False`` (the reference pinned torch 1.10, whose default that is).
  Whatever the stride, this reads the map ``(x - (W-1)/2) / (W-1)`` input pixels away from the
  exact pixel centre (at most half a pixel: -1/2 at the left border, +1/2 at the right). The
  released checkpoints were trained and evaluated that way, so they are sampled the same way.
- ``"centers"``: exact alignment for a map at stride ``s`` made by 'same'-padded strided
  convolutions, whose cell ``i`` is centred on input pixel ``s·i``: ``u = x / s``, read with
  ``align_corners=False``. Used by our own (small) backbone, in training and at extraction.

Both read bilinearly with zero padding and L2-normalise the sampled vectors (dim D).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

CONVENTIONS = ("hndesc", "centers")


def normalize_keypoints(keypoints: torch.Tensor, image_hw: tuple[int, int],
                        feature_hw: tuple[int, int], convention: str = "centers",
                        stride: Optional[float] = None) -> torch.Tensor:
    """Pixel keypoints (..., 2) → grid_sample coordinates in [-1, 1] (align_corners=False)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"Unknown sampling convention '{convention}', expected one of {CONVENTIONS}")
    H, W = image_hw
    h, w = feature_hw
    kp = keypoints.float()
    if convention == "hndesc":
        c = kp.new_tensor([(W - 1) / 2.0, (H - 1) / 2.0])
        return (kp - c) / c
    if stride is None:
        sx, sy = W / w, H / h
    else:
        sx = sy = float(stride)
    u = kp[..., 0] / sx
    v = kp[..., 1] / sy
    return torch.stack([(2 * u + 1) / w - 1, (2 * v + 1) / h - 1], -1)


def sample_descriptors(dense: torch.Tensor, keypoints: torch.Tensor, image_hw: tuple[int, int],
                       convention: str = "centers", stride: Optional[float] = None,
                       normalize: bool = True) -> torch.Tensor:
    """dense B×D×h×w, keypoints B×N×2 (input-image pixels) → descriptors B×D×N."""
    if keypoints.shape[1] == 0:
        return dense.new_zeros(dense.shape[0], dense.shape[1], 0)
    grid = normalize_keypoints(keypoints.to(dense), image_hw, dense.shape[-2:], convention, stride)
    desc = F.grid_sample(dense, grid[:, :, None], mode="bilinear", padding_mode="zeros",
                         align_corners=False)[..., 0]
    if normalize:
        desc = F.normalize(desc, p=2, dim=1)
    return desc


def dog_detections(image: torch.Tensor, max_keypoints: int, contrast_threshold: float,
                   orientation_duplicates: bool) -> dict:
    """OpenCV DoG keypoints of one image as tensors on its device: keypoints N×2, scores, scales,
    oris. ``orientation_duplicates``: keep SIFT's one-keypoint-per-orientation (for descriptors
    that use the orientation); otherwise duplicates are merged (orientation-free descriptors)."""
    import numpy as np

    from hndesc_features.handcrafted import detect_sift, tensor_to_gray_u8

    det = detect_sift(tensor_to_gray_u8(image), max_keypoints, contrast_threshold,
                      upright=not orientation_duplicates, compute=False)
    return {k: torch.from_numpy(np.ascontiguousarray(det[k], dtype=np.float32)).to(image.device)
            for k in ("keypoints", "scores", "scales", "oris")}


class DenseExtract:
    """``extract`` of the dense HNDesc backbones (mixin): DoG keypoints (orientation duplicates
    merged) or given ones, descriptors read from the dense map with the backbone's convention."""

    @torch.no_grad()
    def extract(self, image: torch.Tensor, max_keypoints: int = 4096, contrast_threshold: float = 0.005,
                keypoints: Optional[torch.Tensor] = None, scores: Optional[torch.Tensor] = None,
                sampling: Optional[str] = None) -> dict:
        """1×C×H×W image in [0, 1] → keypoints N×2, scores N, descriptors N×D."""
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"extract expects one 1×C×H×W image, got {tuple(image.shape)}")
        if keypoints is None:
            det = dog_detections(image, max_keypoints, contrast_threshold, orientation_duplicates=False)
            keypoints, scores = det["keypoints"], det["scores"]
        keypoints = keypoints.to(image.device).float().reshape(-1, 2)
        scores = torch.ones(len(keypoints), device=image.device) if scores is None else scores.to(image.device).float()
        x = image.float().expand(-1, 3, -1, -1) if image.shape[1] == 1 else image.float()
        H, W = image.shape[-2:]
        desc = sample_descriptors(self(x), keypoints[None], (H, W), sampling or self.sampling, stride=self.stride)
        return {"keypoints": keypoints, "scores": scores, "descriptors": desc[0].t()}
