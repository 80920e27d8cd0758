"""Photometric augmentation through kornia.augmentation, configured by a plain dict.

Each transform has a probability ``p``; set ``enable: false`` (or p: 0) to switch one off.
Images are B×C×H×W float in [0, 1] (C = 1 or 3; colour transforms are skipped for C = 1).
Randomness comes from torch's global RNG: call inside ``torch.random.fork_rng()`` after seeding
for a reproducible sample (the datasets do).
"""
from __future__ import annotations

import torch

from .geometry.homography import merge_conf

DEFAULT_CONF = {
    "enable": True,
    "brightness": {"p": 0.8, "range": 0.25},  # additive shift in ±range
    "contrast": {"p": 0.8, "range": 0.3},  # factor in [1-r, 1+r]
    "saturation": {"p": 0.5, "range": 0.3},
    "hue": {"p": 0.3, "range": 0.05},
    "gamma": {"p": 0.5, "range": [0.7, 1.4]},
    "noise": {"p": 0.5, "std": 0.03},
    "blur": {"p": 0.3, "sigma": [0.2, 1.5], "kernel": 5},
}


class PhotometricAugmentation(torch.nn.Module):
    def __init__(self, conf: dict | None = None):
        super().__init__()
        import kornia.augmentation as KA

        self.conf = c = merge_conf(DEFAULT_CONF, conf)
        self.color, self.gray = [], []
        if not c["enable"]:
            return

        def on(k):
            return c.get(k) and c[k].get("p", 0) > 0

        # brightness (additive shift in ±r) and contrast (factor in [1-r, 1+r]) work on any C
        if on("brightness"):
            r = c["brightness"]["range"]
            self.gray.append(KA.ColorJiggle(brightness=(max(0.0, 1 - r), 1 + r), p=c["brightness"]["p"]))
        if on("contrast"):
            r = c["contrast"]["range"]
            self.gray.append(KA.ColorJiggle(contrast=(max(0.0, 1 - r), 1 + r), p=c["contrast"]["p"]))
        if on("saturation") or on("hue"):
            sat = c["saturation"]["range"] if on("saturation") else 0.0
            hue = c["hue"]["range"] if on("hue") else 0.0
            p = max(c["saturation"]["p"] if on("saturation") else 0, c["hue"]["p"] if on("hue") else 0)
            self.color.append(KA.ColorJiggle(saturation=sat, hue=hue, p=p))
        if on("gamma"):
            self.gray.append(KA.RandomGamma(gamma=tuple(c["gamma"]["range"]), p=c["gamma"]["p"]))
        if on("blur"):
            k = int(c["blur"]["kernel"]) | 1
            self.gray.append(KA.RandomGaussianBlur((k, k), tuple(c["blur"]["sigma"]), p=c["blur"]["p"]))
        if on("noise"):
            self.gray.append(KA.RandomGaussianNoise(std=c["noise"]["std"], p=c["noise"]["p"]))

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        squeeze = image.dim() == 3
        x = image[None] if squeeze else image
        ops = (self.color + self.gray) if x.shape[1] == 3 else self.gray
        for op in ops:
            x = op(x)
        x = x.clamp(0, 1)
        return x[0] if squeeze else x
