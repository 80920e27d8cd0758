"""Residual descriptors: handcrafted g (SIFT / RootSIFT / upright RootSIFT / SURF) refined by a small
CNN, d = L2(concat(MLP(g), CNN sampled at g's keypoints)). hloc name: hf_residual.

The weights (`weights`, default hndesc_features/weights/residual_<descriptor>.pt) fix the
architecture and the handcrafted descriptor they were trained with; `descriptor` must agree.
"""
from pathlib import Path

import torch

from hndesc_features.base_model import BaseModel
from hndesc_features.models.checkpoints import WEIGHTS_DIR, load_weights


def resolve_weights(weights, descriptor: str) -> Path:
    if weights in (None, "", "default"):
        path = WEIGHTS_DIR / f"residual_{descriptor}.pt"
    else:
        path = Path(weights).expanduser()
        if not path.is_absolute() and not path.exists() and (WEIGHTS_DIR / path).exists():
            path = WEIGHTS_DIR / path
    if not path.is_file():
        shipped = sorted(p.name for p in WEIGHTS_DIR.glob("residual_*.pt"))
        raise FileNotFoundError(
            f"hf_residual: weights file '{path}' not found. Shipped: {shipped or 'none'}; pass "
            f"model.weights=<path> or train with `python -m training.train confs/train/residual_{descriptor}.yaml`.")
    return path


class Residual(BaseModel):
    default_conf = {
        "descriptor": "sift",  # sift | rootsift | rootsift_upright | surf | ... (must match the weights)
        "weights": None,  # None → hndesc_features/weights/residual_<descriptor>.pt
        "max_keypoints": 4096,  # top-k by detector response; -1 = all
        "contrast_threshold": 0.005,  # SIFT DoG threshold (OpenCV units)
        "hessian_threshold": 30.0,  # SURF
        # inference-only speed/quality trade-off: the CNN reads the image pooled by 1/cnn_scale
        # (None: the value the weights were trained with; 0.25 instead of 0.5 ≈ -5 % CPU time, see
        # NOTES_speed.md / benchmarks/results/residual_tradeoff.md)
        "cnn_scale": None,
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        path = resolve_weights(conf["weights"], conf["descriptor"])
        override = {k: conf[k] for k in ("max_keypoints", "contrast_threshold", "hessian_threshold")}
        if conf.get("cnn_scale") is not None:
            override["cnn_scale"] = float(conf["cnn_scale"])
        self.net, meta = load_weights(path, "residual", override)
        if self.net.conf["descriptor"] != conf["descriptor"]:
            raise ValueError(f"hf_residual: '{path}' was trained on '{self.net.conf['descriptor']}' "
                             f"descriptors, but the conf asks for descriptor='{conf['descriptor']}'")

    @torch.no_grad()
    def _forward(self, data):
        image = data["image"]
        if image.dim() != 4 or image.shape[1] not in (1, 3):
            raise ValueError(f"hf_residual expects a B×C×H×W image batch (C = 1 or 3), got {tuple(image.shape)}")
        outs = [self.net.extract(image[b:b + 1]) for b in range(image.shape[0])]
        n = min(len(o["keypoints"]) for o in outs)  # ragged batch: keep the common top-n
        return {
            "keypoints": torch.stack([o["keypoints"][:n] for o in outs]),
            "scores": torch.stack([o["scores"][:n] for o in outs]),
            "descriptors": torch.stack([o["descriptors"][:n].t().contiguous() for o in outs]),
            "scales": torch.stack([o["scales"][:n] for o in outs]),
            "oris": torch.stack([o["oris"][:n] for o in outs]),
        }
