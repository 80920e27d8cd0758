"""SuperPoint (DeTone, Malisiewicz, Rabinovich, CVPRW 2018) in plain torch: the keypoint detector
the HNDesc paper samples its descriptors at.

    gray image 1×1×H×W in [0, 1]
    VGG-style encoder: conv1a/b 64, pool, conv2a/b 64, pool, conv3a/b 128, pool, conv4a/b 128
      (3×3 convolutions with bias, ReLU; 2×2 max-pools)                         → 128 @ H/8
    detector head: convPa 3×3 256 · ReLU · convPb 1×1 65 → softmax over the 65 channels, the
      "no keypoint" channel dropped, the 64 others unfolded into the 8×8 pixels of their cell
    descriptor head: convDa 3×3 256 · ReLU · convDb 1×1 256, L2-normalised    → 256 @ H/8

Parameter names are those of Magic Leap's released ``superpoint_v1.pth`` (a bare state dict
``conv1a.weight`` … ``convDb.bias``), which loads as it is:
``python -m hndesc_features.weights install superpoint superpoint_v1.pth``.

Detection (``detect``): score map → non-maximum suppression (a score survives when it is the
maximum of its (2r+1)² window; then, twice, points outside the windows of the survivors that are
maxima of what is left join them) → scores above ``keypoint_threshold`` → points closer than
``remove_borders`` to the score map's border dropped → the ``max_keypoints`` highest scores.
Keypoints are integer pixel positions (x, y) of the input, pixel centres at integer coordinates.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hndesc_features.config import merge

CELL = 8


def _window_max(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Maximum over the (2r+1)×(2r+1) window of every pixel of a B×H×W map (borders ignored)."""
    return F.max_pool2d(x[:, None], kernel_size=2 * radius + 1, stride=1, padding=radius)[:, 0]


def suppress_non_maxima(scores: torch.Tensor, radius: int, rounds: int = 2) -> torch.Tensor:
    """B×H×W scores with every non-maximum set to zero (SuperPoint's max-pool NMS)."""
    if radius < 0:
        raise ValueError(f"nms_radius must be >= 0, got {radius}")
    keep = scores == _window_max(scores, radius)
    for _ in range(rounds):
        covered = _window_max(keep.float(), radius) > 0  # inside the window of a kept point
        rest = scores.masked_fill(covered, 0.0)
        keep = keep | ((rest == _window_max(rest, radius)) & ~covered)
    return torch.where(keep, scores, torch.zeros_like(scores))


class SuperPoint(nn.Module):
    """Gray image B×1×H×W in [0, 1] → dense keypoint scores B×(H/8·8)×(W/8·8) and descriptors."""

    default_conf = {
        "nms_radius": 4,
        "keypoint_threshold": 0.005,
        "remove_borders": 4,
        "max_keypoints": -1,  # -1: all
        "descriptor_dim": 256,
    }

    def __init__(self, conf: dict | None = None, **kwargs):
        super().__init__()
        self.conf = merge(self.default_conf, {**(conf or {}), **kwargs}, "model")
        mk = int(self.conf["max_keypoints"])
        if mk == 0 or mk < -1:
            raise ValueError(f"SuperPoint max_keypoints must be positive or -1 (all), got {mk}")
        widths = [(1, 64), (64, 64), (64, 64), (64, 64), (64, 128), (128, 128), (128, 128), (128, 128)]
        names = ["conv1a", "conv1b", "conv2a", "conv2b", "conv3a", "conv3b", "conv4a", "conv4b"]
        for name, (cin, cout) in zip(names, widths):
            setattr(self, name, nn.Conv2d(cin, cout, 3, padding=1))
        self.encoder_names = names
        self.convPa = nn.Conv2d(128, 256, 3, padding=1)
        self.convPb = nn.Conv2d(256, CELL * CELL + 1, 1)
        self.convDa = nn.Conv2d(128, 256, 3, padding=1)
        self.convDb = nn.Conv2d(256, int(self.conf["descriptor_dim"]), 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for i, name in enumerate(self.encoder_names):
            x = F.relu(getattr(self, name)(x))
            if i in (1, 3, 5):
                x = F.max_pool2d(x, 2, 2)
        return x

    def score_map(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features B×128×h×w → keypoint probabilities B×8h×8w."""
        logits = self.convPb(F.relu(self.convPa(features)))
        prob = logits.softmax(dim=1)[:, :-1]
        b, _, h, w = prob.shape
        return prob.reshape(b, CELL, CELL, h, w).permute(0, 3, 1, 4, 2).reshape(b, h * CELL, w * CELL)

    def descriptor_map(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features → L2-normalised dense descriptors B×D×h×w."""
        return F.normalize(self.convDb(F.relu(self.convDa(features))), p=2, dim=1)

    def forward(self, image: torch.Tensor) -> dict:
        features = self.encode(image)
        return {"scores": self.score_map(features), "descriptors": self.descriptor_map(features)}

    @torch.no_grad()
    def detect(self, image: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Gray image B×1×H×W in [0, 1] → per image (keypoints N×2 float (x, y), scores N), by
        decreasing score."""
        if image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(f"SuperPoint expects a B×1×H×W gray image, got {tuple(image.shape)}")
        c = self.conf
        scores = suppress_non_maxima(self.score_map(self.encode(image)), int(c["nms_radius"]))
        H, W = scores.shape[-2:]
        border = int(c["remove_borders"])
        out = []
        for s in scores:
            yx = torch.nonzero(s > float(c["keypoint_threshold"]))
            inside = ((yx[:, 0] >= border) & (yx[:, 0] < H - border)
                      & (yx[:, 1] >= border) & (yx[:, 1] < W - border))
            yx = yx[inside]
            sc = s[yx[:, 0], yx[:, 1]]
            k = int(c["max_keypoints"])
            if 0 < k < len(sc):
                sc, order = torch.topk(sc, k, dim=0)
            else:
                order = torch.argsort(sc, descending=True, stable=True)
                sc = sc[order]
            out.append((yx[order].flip(1).float(), sc))
        return out
