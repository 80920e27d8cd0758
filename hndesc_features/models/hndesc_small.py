"""HNDesc-small: a compact dense descriptor network we can train on 2 CPU cores in about an hour.

Not an architecture from the paper. It exists because the paper's backbones (CAPS ResNet-50
U-Net, ~20 M parameters; R2D2 dilated L2-Net at full resolution) cannot be trained here in
reasonable time; it is trained with the paper's recipe (H-crops, colour augmentation,
stylization, AP loss with in-batch hard negatives) and shipped as
``hndesc_features/weights/hndesc_small.pt``.

    RGB in [0,1], ImageNet mean/std normalised
    3×3/2  3→16      BN ReLU                    H/2
    3×3/2  16→32     BN ReLU                    H/4
    3×3    32→64     BN ReLU
    3×3    64→64     BN ReLU   (dilation 2)     = s4 features
    3×3/2  64→128    BN ReLU                    H/8
    3×3    128→128   BN ReLU   (dilation 2)     = s8 features
    fusion: 1×1 (s4 features → 128) + the s8 features resampled bilinearly at s4 centres, ReLU
    1×1    128→128                              128 @ H/4 (ceil), L2-normalised
    receptive field ~71 px, ~0.31 M parameters, ~7 GMAC at 1024×768

Keypoint descriptors are read bilinearly from the stride-4 map, cell i being centred on input
pixel 4·i (``sampling`` convention ``"centers"``), and re-normalised.

Built from a conf dict (``default_conf``: ``dim``, ``width``), as the trainer's model registry
(``hndesc_features.models.checkpoints``) expects; exported weights carry that conf.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hndesc_features.config import merge

from hndesc_features.models.sampling import DenseExtract

from hndesc_features.models.hndesc_caps import IMAGENET_MEAN, IMAGENET_STD

SAMPLING = "centers"
STRIDE = 4


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class HNDescSmall(DenseExtract, nn.Module):
    """Image B×3×H×W in [0,1] → dense L2-normalised descriptors B×dim×ceil(H/4)×ceil(W/4)."""

    default_conf = {"dim": 128, "width": 16}
    stride = STRIDE
    sampling = SAMPLING

    def __init__(self, conf: dict | None = None, **kwargs):
        super().__init__()
        self.conf = merge(self.default_conf, {**(conf or {}), **kwargs}, "model")
        dim, w = int(self.conf["dim"]), int(self.conf["width"])
        self.descriptor_dim = dim
        self.stage4 = nn.Sequential(
            _block(3, w, stride=2),
            _block(w, 2 * w, stride=2),
            _block(2 * w, 4 * w),
            _block(4 * w, 4 * w, dilation=2),
        )
        self.stage8 = nn.Sequential(
            _block(4 * w, 8 * w, stride=2),
            _block(8 * w, 8 * w, dilation=2),
        )
        self.skip = nn.Conv2d(4 * w, 8 * w, 1)
        self.head = nn.Conv2d(8 * w, dim, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        x4 = self.stage4((image - self.mean) / self.std)
        x8 = self.stage8(x4)
        # s8 cell j is centred on input pixel 8j = s4 cell 2j: resample exactly there
        up = _upsample2(x8, x4.shape[-2:])
        return F.normalize(self.head(F.relu(self.skip(x4) + up)), p=2, dim=1)


def _upsample2(x: torch.Tensor, hw) -> torch.Tensor:
    """Bilinear resampling of a stride-8 map at stride-4 cell centres (s4 cell i ↔ s8 coord i/2)."""
    h, w = hw
    H, W = x.shape[-2:]
    up = F.interpolate(x, size=(2 * H - 1, 2 * W - 1), mode="bilinear", align_corners=True)
    if h > up.shape[-2] or w > up.shape[-1]:
        up = F.pad(up, (0, max(0, w - up.shape[-1]), 0, max(0, h - up.shape[-2])), mode="replicate")
    return up[..., :h, :w]
