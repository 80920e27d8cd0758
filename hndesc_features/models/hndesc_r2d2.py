"""HNDesc with the R2D2 backbone: a dilated L2-Net giving 128-d descriptors at full resolution.

Architecture of the released HNDesc "r2d2" model (``HNDesc(PatchNet)`` in imelekhov/HNDesc, MIT),
i.e. R2D2's Quad-L2-Net descriptor trunk (Revaud et al., NeurIPS 2019) where every stride is
turned into a dilation so the output keeps the input resolution:

    RGB in [0,1], ImageNet mean/std normalised
    3×3  32  · BN · ReLU            (dilation 1)
    3×3  32  · BN · ReLU            (1)
    3×3  64  · BN · ReLU            (1; "stride 2" → later dilations ×2)
    3×3  64  · BN · ReLU            (2)
    3×3 128  · BN · ReLU            (2; "stride 2")
    3×3 128  · BN · ReLU            (4)
    2×2 128  · BN                   (4; "stride 2")
    2×2 128  · BN                   (8; "stride 2")
    2×2 128  · ReLU                 (16; no BN; HNDesc keeps a ReLU here, R2D2 does not)
    L2 normalisation over channels
    (BatchNorm without affine parameters, as in R2D2.)

The layers live in ``self.ops`` (a ModuleList with the reference's indices), so a released
checkpoint (``{"state_dict": {"ops.0.weight", ...}}``) loads with ``load_checkpoint``.
Keypoint descriptors are sampled with the reference convention (``convention="hndesc"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hndesc_features.config import merge

from hndesc_features.models.sampling import DenseExtract

from hndesc_features.models.hndesc_caps import IMAGENET_MEAN, IMAGENET_STD

SAMPLING = "hndesc"
STRIDE = 1


class HNDescR2D2(DenseExtract, nn.Module):
    """Image B×3×H×W in [0,1] → dense L2-normalised descriptors B×dim×H×W."""

    default_conf = {"dim": 128, "mchan": 4, "relu22": False}
    stride = STRIDE
    sampling = SAMPLING

    def __init__(self, conf: dict | None = None, **kwargs):
        super().__init__()
        self.conf = merge(self.default_conf, {**(conf or {}), **kwargs}, "model")
        dim, mchan, relu22 = int(self.conf["dim"]), int(self.conf["mchan"]), bool(self.conf["relu22"])
        self.descriptor_dim = dim
        self.ops = nn.ModuleList()
        self._cur = 3
        self._dilation = 1
        self._add(8 * mchan)
        self._add(8 * mchan)
        self._add(16 * mchan, stride=2)
        self._add(16 * mchan)
        self._add(32 * mchan, stride=2)
        self._add(32 * mchan)
        self._add(32 * mchan, k=2, stride=2, relu=relu22)
        self._add(32 * mchan, k=2, stride=2, relu=relu22)
        self._add(dim, k=2, stride=2, bn=False, relu=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _add(self, cout: int, k: int = 3, stride: int = 1, bn: bool = True, relu: bool = True):
        d = self._dilation
        self.ops.append(nn.Conv2d(self._cur, cout, k, padding=((k - 1) * d) // 2, dilation=d))
        self._dilation *= stride
        if bn:
            self.ops.append(nn.BatchNorm2d(cout, affine=False))
        if relu:
            self.ops.append(nn.ReLU(inplace=True))
        self._cur = cout

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        x = (image - self.mean) / self.std
        for op in self.ops:
            x = op(x)
        return F.normalize(x, p=2, dim=1)
