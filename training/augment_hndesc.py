"""HNDesc colour augmentation with kornia, matching the reference's albumentations pipeline.

The released HNDesc training (imelekhov/HNDesc, ``data/augmentations.py``, albumentations 1.1)
applies to each crop, independently:

    OneOf(p=0.6):  RandomBrightnessContrast(brightness ±0.3, contrast ±0.2)   weight 0.7
                   HueSaturationValue(hue ±10 (OpenCV's 0..180 scale, i.e. ±20°),
                                      saturation ±30/255, value 0)           weight 0.7
                   CLAHE(clip limit U(1, 4), 8×8 tiles, on the LAB lightness)   weight 0.5
                   ToGray                                                     weight 0.5
                   ChannelShuffle                                             weight 0.1
    OneOf(p=0.3):  GaussianBlur(odd kernel 3..7, OpenCV's sigma for it)       weight 0.5
                   Blur (box, odd kernel 3..7)                                weight 0.5
    OneOf(p=0.1):  GaussNoise(variance U(10, 50) on the 0..255 scale, per pixel and channel)
    then ImageNet normalisation (done here by the networks themselves, so not repeated).

``OneOf`` picks one member with probability proportional to its weight (albumentations' rule)
and applies it; every leaf is a kornia augmentation (built-in where kornia has the exact
operation, a small ``IntensityAugmentationBase2D`` subclass where the reference's parameter law
differs). Input/output: B×3×H×W float RGB in [0, 1].
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import kornia.augmentation as KA
import kornia.color as KC
import kornia.enhance as KE
import kornia.filters as KF
import torch
from kornia.augmentation import IntensityAugmentationBase2D
from torch import nn


class _Base(IntensityAugmentationBase2D):
    """Leaf with its own parameter law; always applied (``OneOf`` decides whether)."""

    def __init__(self) -> None:
        super().__init__(p=1.0, same_on_batch=False, keepdim=False)

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n) * (hi - lo) + lo


class BrightnessContrast(_Base):
    """albumentations RandomBrightnessContrast (brightness_by_max): ``x·α + β``, clipped."""

    def __init__(self, brightness: float = 0.3, contrast: float = 0.2) -> None:
        super().__init__()
        self.brightness, self.contrast = brightness, contrast

    def generate_parameters(self, batch_shape) -> Dict[str, torch.Tensor]:
        n = batch_shape[0]
        return {"alpha": 1 + self._uniform(n, -self.contrast, self.contrast),
                "beta": self._uniform(n, -self.brightness, self.brightness)}

    def apply_transform(self, input, params, flags, transform=None):
        a = params["alpha"].to(input).view(-1, 1, 1, 1)
        b = params["beta"].to(input).view(-1, 1, 1, 1)
        return (input * a + b).clamp(0, 1)


class HueSaturation(_Base):
    """albumentations HueSaturationValue: additive hue shift (degrees) and saturation shift."""

    def __init__(self, hue_deg: float = 20.0, saturation: float = 30 / 255) -> None:
        super().__init__()
        self.hue_deg, self.saturation = hue_deg, saturation

    def generate_parameters(self, batch_shape) -> Dict[str, torch.Tensor]:
        n = batch_shape[0]
        return {"hue": self._uniform(n, -self.hue_deg, self.hue_deg),
                "sat": self._uniform(n, -self.saturation, self.saturation)}

    def apply_transform(self, input, params, flags, transform=None):
        hsv = KC.rgb_to_hsv(input.clamp(0, 1))
        h = hsv[:, :1] + params["hue"].to(input).view(-1, 1, 1, 1) * math.pi / 180
        h = torch.remainder(h, 2 * math.pi)
        s = (hsv[:, 1:2] + params["sat"].to(input).view(-1, 1, 1, 1)).clamp(0, 1)
        return KC.hsv_to_rgb(torch.cat([h, s, hsv[:, 2:]], 1)).clamp(0, 1)


class ClaheLightness(_Base):
    """albumentations CLAHE on an RGB image: CLAHE of the LAB lightness, colour kept."""

    def __init__(self, clip_limit: Sequence[float] = (1.0, 4.0), grid_size=(8, 8)) -> None:
        super().__init__()
        self.clip_limit, self.grid_size = tuple(clip_limit), tuple(grid_size)

    def generate_parameters(self, batch_shape) -> Dict[str, torch.Tensor]:
        return {"clip": self._uniform(batch_shape[0], *self.clip_limit)}

    def apply_transform(self, input, params, flags, transform=None):
        lab = KC.rgb_to_lab(input.clamp(0, 1))
        out = []
        for i in range(input.shape[0]):
            L = (lab[i:i + 1, :1] / 100).clamp(0, 1)
            L = KE.equalize_clahe(L, float(params["clip"][i]), self.grid_size)
            out.append(torch.cat([L * 100, lab[i:i + 1, 1:]], 1))
        return KC.lab_to_rgb(torch.cat(out), clip=True)


class RandomKernelBlur(_Base):
    """Gaussian (sigma from the kernel size as OpenCV's sigma=0) or box blur, odd kernel in [3, 7]."""

    def __init__(self, kind: str = "gaussian", kernel_sizes: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__()
        self.kind, self.kernel_sizes = kind, tuple(kernel_sizes)

    def generate_parameters(self, batch_shape) -> Dict[str, torch.Tensor]:
        return {"ksize": torch.tensor(self.kernel_sizes)[torch.randint(len(self.kernel_sizes), (batch_shape[0],))]}

    def apply_transform(self, input, params, flags, transform=None):
        out = torch.empty_like(input)
        for k in params["ksize"].unique().tolist():
            sel = params["ksize"].to(input.device) == k
            x = input[sel]
            if self.kind == "gaussian":
                sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
                s = torch.full((x.shape[0], 2), sigma, device=x.device, dtype=x.dtype)
                out[sel] = KF.gaussian_blur2d(x, (k, k), s, border_type="reflect")
            else:
                out[sel] = KF.box_blur(x, (k, k), border_type="reflect")
        return out


class GaussNoise(_Base):
    """albumentations GaussNoise: per-pixel, per-channel N(0, var) with var ~ U(10, 50) / 255²."""

    def __init__(self, var_limit: Sequence[float] = (10.0, 50.0)) -> None:
        super().__init__()
        self.var_limit = tuple(var_limit)

    def generate_parameters(self, batch_shape) -> Dict[str, torch.Tensor]:
        return {"std": self._uniform(batch_shape[0], *self.var_limit).sqrt() / 255.0}

    def apply_transform(self, input, params, flags, transform=None):
        std = params["std"].to(input).view(-1, 1, 1, 1)
        return (input + torch.randn_like(input) * std).clamp(0, 1)


class OneOf(nn.Module):
    """albumentations ``OneOf``: with probability p per image, apply one member chosen with
    probability proportional to its weight."""

    def __init__(self, transforms: Sequence[nn.Module], weights: Sequence[float], p: float) -> None:
        super().__init__()
        assert len(transforms) == len(weights)
        self.transforms = nn.ModuleList(transforms)
        w = torch.tensor(weights, dtype=torch.float)
        self.register_buffer("weights", w / w.sum(), persistent=False)
        self.p = p

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b = x.shape[0]
        apply = torch.rand(b, generator=generator) < self.p
        choice = torch.multinomial(self.weights, b, replacement=True, generator=generator)
        out = x.clone()
        for i, t in enumerate(self.transforms):
            sel = (apply & (choice == i)).to(x.device)
            if sel.any():
                out[sel] = t(x[sel]).to(x.dtype)
        return out


class HNDescColorAugmentation(nn.Module):
    """The reference's photometric augmentation, for B×3×H×W float RGB crops in [0, 1].

    ``strength`` = 0 disables it (validation); 1 is the reference.
    """

    def __init__(self, p_color: float = 0.6, p_blur: float = 0.3, p_noise: float = 0.1) -> None:
        super().__init__()
        self.color = OneOf([BrightnessContrast(0.3, 0.2), HueSaturation(20.0, 30 / 255), ClaheLightness((1, 4)),
                            KA.RandomGrayscale(p=1.0), KA.RandomChannelShuffle(p=1.0)],
                           [0.7, 0.7, 0.5, 0.5, 0.1], p_color)
        self.blur = OneOf([RandomKernelBlur("gaussian"), RandomKernelBlur("box")], [0.5, 0.5], p_blur)
        self.noise = OneOf([GaussNoise((10, 50)), GaussNoise((10, 50))], [0.5, 0.5], p_noise)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            return self.forward(x[None])[0]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.noise(self.blur(self.color(x.float().clamp(0, 1))))


def build_augmentation(conf: Optional[Dict[str, Any]] = None) -> HNDescColorAugmentation:
    conf = dict(conf or {})
    return HNDescColorAugmentation(conf.get("p_color", 0.6), conf.get("p_blur", 0.3), conf.get("p_noise", 0.1))
