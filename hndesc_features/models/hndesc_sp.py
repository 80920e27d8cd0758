"""The HNDesc paper's extraction pipeline: SuperPoint keypoints, HNDesc (CAPS / R2D2) descriptors.

Each step as the released code (imelekhov/HNDesc, its ``superpoint_orig`` detector and Aachen
settings) runs it, on one image:

1. **Detector input**: the file read as grayscale (``cv2.imread(path, IMREAD_GRAYSCALE)``:
   for a JPEG, libjpeg's own luma), and when its long side is over ``resize_max`` resized with
   ``cv2.INTER_LINEAR`` as uint8 to ``(round(w·s), round(h·s))``, ``s = resize_max / max(w, h)``;
   then divided by 255.
2. **SuperPoint** (``models/superpoint.py``): NMS radius 3, threshold 0.005, borders 4, at most
   4096 keypoints (the paper's Aachen settings; ``default_conf`` below).
3. **Descriptor input**: the file read as RGB with PIL, resized with PIL's bicubic filter to the
   same size when larger than ``resize_max``, ImageNet-normalised.
4. **Descriptors**: the dense HNDesc map sampled at the keypoints (``sampling.sample_descriptors``,
   convention ``"hndesc"``, L2-normalised).
5. **Keypoints** back to the original resolution: ``(k + 0.5) · (W/w, H/h) - 0.5``.

The two readings of the file are exact when the caller knows the image's path (``extract(...,
path=...)``); otherwise both come from the RGB pixels: gray = OpenCV's RGB→gray of them, which
for a JPEG differs from libjpeg's luma by at most a few levels on a small share of pixels, so a
few keypoints in a thousand can move (bounded in tests/test_hndesc_sp.py, stated in the README).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
import torch
from torch import nn

from hndesc_features.config import merge
from hndesc_features.models.sampling import sample_descriptors

BACKBONES = ("caps", "r2d2")


def official_size(w: int, h: int, resize_max: Optional[int]) -> tuple[int, int]:
    """(w, h) after the released code's resize: only when the long side is over resize_max."""
    if resize_max and max(w, h) > resize_max:
        s = resize_max / max(h, w)
        return int(round(w * s)), int(round(h * s))
    return w, h


def rgb_u8(image: torch.Tensor) -> np.ndarray:
    """1×3×H×W (or 3×H×W) float image in [0, 1] (uint8 / 255, as hloc reads it) → H×W×3 uint8."""
    img = image[0] if image.dim() == 4 else image
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    x = (img.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def read_official(path: Union[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """(gray H×W uint8, RGB H×W×3 uint8) of a file, read as the released code reads it (EXIF
    orientation ignored, as hloc does)."""
    from PIL import Image

    from hndesc_features.io import read_image

    gray = read_image(path, grayscale=True)
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return gray, rgb


def detector_input(gray: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Gray uint8 → 1×1×h×w float in [0, 1]: cv2.INTER_LINEAR on uint8, then / 255 (in float64,
    rounded to float32 as the released code does)."""
    if (gray.shape[1], gray.shape[0]) != tuple(size):
        gray = cv2.resize(gray, tuple(size), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(gray / 255.0).float()[None, None]


def descriptor_input(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """RGB uint8 → 1×3×h×w float in [0, 1], resized with PIL's bicubic filter."""
    from PIL import Image

    if (rgb.shape[1], rgb.shape[0]) != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize(tuple(size), Image.Resampling.BICUBIC))
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().div(255.0)[None]


class HNDescSP(nn.Module):
    """SuperPoint detector + HNDesc descriptor network, the paper's pipeline (see module doc)."""

    default_conf = {
        "resize_max": 1024,  # both networks' input: long side at most this (None: full resolution)
        "nms_radius": 3,
        "keypoint_threshold": 0.005,
        "remove_borders": 4,
        "max_keypoints": 4096,
    }

    def __init__(self, detector: nn.Module, descriptor: nn.Module, conf: dict | None = None):
        super().__init__()
        self.conf = merge(self.default_conf, conf or {}, "model")
        self.detector = detector
        for k in ("nms_radius", "keypoint_threshold", "remove_borders", "max_keypoints"):
            self.detector.conf[k] = self.conf[k]
        self.descriptor = descriptor

    @torch.no_grad()
    def extract(self, image: Optional[torch.Tensor] = None, path: Union[None, str, Path] = None,
                gray: Optional[np.ndarray] = None, rgb: Optional[np.ndarray] = None) -> dict:
        """One image → keypoints N×2 (original resolution), scores N, descriptors N×D.

        Give ``path`` (the file, read exactly as the released code reads it), or ``image``
        (1×3×H×W in [0, 1]; gray rebuilt from it), or the decoded ``gray`` and ``rgb`` arrays.
        """
        if gray is None or rgb is None:
            if path is not None:
                gray, rgb = read_official(path)
            elif image is not None:
                from hndesc_features.handcrafted import to_gray_u8

                rgb = rgb_u8(image)
                gray = to_gray_u8(rgb)
            else:
                raise ValueError("HNDescSP.extract needs an image tensor, a path or gray + rgb arrays")
        if gray.shape[:2] != rgb.shape[:2]:
            raise ValueError(f"gray {gray.shape[:2]} and RGB {rgb.shape[:2]} images differ in size")
        device = next(self.descriptor.parameters()).device
        H, W = gray.shape[:2]
        size = official_size(W, H, self.conf["resize_max"])
        kpts, scores = self.detector.detect(detector_input(gray, size).to(device))[0]
        x = descriptor_input(rgb, size).to(device)
        desc = sample_descriptors(self.descriptor(x), kpts[None], (size[1], size[0]),
                                  convention="hndesc")[0].t()
        scale = torch.from_numpy((np.array([W, H]) / np.array(size)).astype(np.float32)).to(kpts)
        return {"keypoints": (kpts + 0.5) * scale - 0.5, "scores": scores, "descriptors": desc}
