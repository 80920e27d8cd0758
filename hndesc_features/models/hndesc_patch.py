"""HNDesc-patch: the HNDesc recipe on keypoint-frame patches — our CPU-trainable HNDesc backbone.

Not an architecture from the paper. The dense small backbone (``hndesc_small``) learned strong
illumination invariance on 2 CPU cores but no rotation/scale invariance (the paper's networks get
it from 220k steps on a GPU; we cannot). This backbone takes it from the keypoint detector
instead: every DoG keypoint (x, y, size, angle) is turned into a 32×32 RGB patch covering
``scale_factor × size`` pixels, rotated by the keypoint angle (``hndesc_features.patches``, the
same sampler as wlrn); the network only has to learn what the paper's training recipe teaches —
photometric (colour augmentation, stylization) and perspective invariance, and discriminative
power through hard-negative mining with the AP loss.

    per-patch normalisation: subtract each channel's mean, divide by the patch's std
    3×3    3→w      BN ReLU        32×32
    3×3/2  w→2w     BN ReLU        16×16
    3×3    2w→2w    BN ReLU
    3×3/2  2w→4w    BN ReLU         8×8
    3×3    4w→4w    BN ReLU
    8×8    4w→dim   (valid) BN (no affine)   → 1×1, L2-normalised
    w = 16: ~0.2 M parameters, ~8 MMAC per patch (~33 GMAC for 4096 keypoints)

``batch_norm: false`` drops every BN (convolutions get a bias, as in wlrn): the descriptor then no
longer depends on batch statistics, in training or at extraction.

``forward`` takes patches (N×3×32×32 in [0, 1]); ``describe`` does image + frames → descriptors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hndesc_features.config import merge

from hndesc_features.patches import extract_patches


def _block(cin: int, cout: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    if not norm:  # conv + ReLU with a bias (the wlrn layout)
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class HNDescPatch(nn.Module):
    """Patches N×3×P×P (or N×1×P×P) in [0, 1] → N×dim L2-normalised descriptors."""

    # norm_eps: added to the patch std before dividing (flat patches are not blown up)
    default_conf = {"dim": 128, "width": 16, "patch_size": 32, "scale_factor": 6.0, "norm_eps": 1e-2,
                    "batch_norm": True}
    patch_based = True
    stride = 1  # unused (no dense map); kept for the shared describe() helpers
    sampling = "patches"

    def __init__(self, conf: dict | None = None, **kwargs):
        super().__init__()
        self.conf = merge(self.default_conf, {**(conf or {}), **kwargs}, "model")
        dim, w, p = int(self.conf["dim"]), int(self.conf["width"]), int(self.conf["patch_size"])
        if p % 4:
            raise ValueError(f"hndesc_patch: patch_size must be a multiple of 4, got {p}")
        self.descriptor_dim = dim
        self.patch_size = p
        self.scale_factor = float(self.conf["scale_factor"])
        bn = bool(self.conf["batch_norm"])
        head = [nn.Conv2d(4 * w, dim, p // 4, bias=False)] + ([nn.BatchNorm2d(dim, affine=False)] if bn else [])
        self.features = nn.Sequential(
            _block(3, w, 1, bn), _block(w, 2 * w, 2, bn), _block(2 * w, 2 * w, 1, bn),
            _block(2 * w, 4 * w, 2, bn), _block(4 * w, 4 * w, 1, bn), *head,
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.dim() != 4 or patches.shape[-1] != self.patch_size or patches.shape[-2] != self.patch_size:
            raise ValueError(f"hndesc_patch expects N×C×{self.patch_size}×{self.patch_size} patches, "
                             f"got {tuple(patches.shape)}")
        if patches.shape[1] == 1:
            patches = patches.expand(-1, 3, -1, -1)
        if patches.shape[0] == 0:
            return patches.new_zeros((0, self.descriptor_dim))
        x = patches - patches.mean(dim=(2, 3), keepdim=True)
        x = x / (x.flatten(1).std(dim=1).view(-1, 1, 1, 1) + float(self.conf["norm_eps"]))
        # channels-last: ~1.5x faster convolutions (forward and backward) on CPU
        x = x.contiguous(memory_format=torch.channels_last)
        return F.normalize(self.features(x).flatten(1), p=2, dim=1)

    def patches(self, image: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """image 3×H×W (or 1×3×H×W) in [0, 1], frames N×4 (x, y, size, angle°) → N×3×P×P."""
        return extract_patches(image, frames[:, :2], frames[:, 2], frames[:, 3], self.patch_size,
                               self.scale_factor, pyramid=True)

    @torch.no_grad()
    def describe(self, image: torch.Tensor, frames: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """One image and its keypoint frames → N×dim descriptors (batched network forward)."""
        frames = torch.as_tensor(frames, dtype=torch.float32, device=image.device).reshape(-1, 4)
        image = image[0] if image.dim() == 4 else image
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        out = [self(self.patches(image, frames[i:i + batch_size]))
               for i in range(0, frames.shape[0], batch_size)]
        return torch.cat(out) if out else image.new_zeros((0, self.descriptor_dim))

    @torch.no_grad()
    def extract(self, image: torch.Tensor, max_keypoints: int = 4096, contrast_threshold: float = 0.005) -> dict:
        """1×C×H×W image in [0, 1] → DoG keypoints (orientation duplicates kept: each gets its own
        rotated patch, as in SIFT) N×2, scores, scales, oris, descriptors N×dim."""
        from hndesc_features.models.sampling import dog_detections

        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"extract expects one 1×C×H×W image, got {tuple(image.shape)}")
        det = dog_detections(image, max_keypoints, contrast_threshold, orientation_duplicates=True)
        frames = torch.cat([det["keypoints"], det["scales"][:, None], det["oris"][:, None]], 1)
        return {**det, "descriptors": self.describe(image.float(), frames)}
