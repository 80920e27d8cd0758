"""Markuš et al. KCC ("wlrn") CNN descriptors on OpenCV ORB keypoints, as an hloc extractor.

ORB keypoints (location, size, angle) → 32×32 patches of side 1.5 × size rotated by the keypoint
angle → the 3×32×32→128 wlrn network → L2-normalised 128-d descriptors.
"""
from __future__ import annotations

from pathlib import Path

import torch

import hndesc_features
from hndesc_features.base_model import BaseModel
from hndesc_features.models.wlrn import WLRNet, describe_orb, load_wlrn_state_dict

DEFAULT_WEIGHTS = Path(hndesc_features.__file__).resolve().parent / "weights" / "wlrn_orb.pt"


def resolve_weights(weights) -> Path:
    if weights in (None, "", "default"):
        path = DEFAULT_WEIGHTS
    else:
        path = Path(weights).expanduser()
        if not path.is_absolute() and not path.exists() and (DEFAULT_WEIGHTS.parent / path).exists():
            path = DEFAULT_WEIGHTS.parent / path
    if not path.is_file():
        raise FileNotFoundError(
            f"wlrn: weights file '{path}' not found. The package ships "
            f"'{DEFAULT_WEIGHTS.name}' in {DEFAULT_WEIGHTS.parent}; pass model.weights=<path to a .pt "
            "state dict with keys conv1..conv5> or train one with confs/train/wlrn_orb.yaml.")
    return path


class WLRN(BaseModel):
    default_conf = {
        "weights": None,         # None → hndesc_features/weights/wlrn_orb.pt; released wlrn state dicts load too
        "max_keypoints": 4096,   # ORB nfeatures (top by Harris score); -1 = all
        "scale_factor": 1.5,     # patch side = scale_factor × keypoint size
        "pyramid": True,         # sample large keypoints from a Gaussian pyramid level
        "batch_size": 1024,      # patches per network forward
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        self.net = WLRNet()
        load_wlrn_state_dict(self.net, resolve_weights(conf["weights"]))
        self.net.eval()

    @torch.no_grad()
    def _forward(self, data):
        image = data["image"]
        if image.dim() != 4:
            raise ValueError(f"wlrn expects a B×C×H×W image batch, got {tuple(image.shape)}")
        if image.shape[1] == 3:
            w = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            image = (image * w).sum(1, keepdim=True)
        elif image.shape[1] != 1:
            raise ValueError(f"wlrn expects 1 or 3 channels, got {image.shape[1]}")
        gray = (image.clamp(0, 1) * 255).round()  # the pixels ORB sees, in [0, 255]
        feats = [describe_orb(self.net, gray[b], self.conf["max_keypoints"], self.conf["scale_factor"],
                              self.conf["pyramid"], self.conf["batch_size"]) for b in range(gray.shape[0])]
        n = min(f["keypoints"].shape[0] for f in feats)  # ragged batch: keep the common top-n
        out = {k: torch.stack([f[k][:n] for f in feats]) for k in ("keypoints", "scores", "scales", "oris")}
        out["descriptors"] = torch.stack([f["descriptors"][:n].t() for f in feats]).contiguous()
        return out
