"""Speed / quality of cheaper variants of the residual descriptor, with the SHIPPED weights (no
retraining), for the speed target (residual ≤ 1.5× RootSIFT at 1024 px, one thread).

    python -m benchmarks.experiments.residual_tradeoff_probe speed [ITERS]      # CPU ms, interleaved, vs rootsift
    python -m benchmarks.experiments.residual_tradeoff_probe webcam VARIANT -- <benchmarks.webcam arguments>

Variants (the inference path of hndesc_features/models/residual.py, patched in this process only):
- ``full``: the shipped residual_sift;
- ``cnn4``: the CNN reads the image pooled by 4 instead of 2 (= conf key ``cnn_scale: 0.25`` of
  hf_residual, benchmarks/confs/residual_sift_cnn025.yaml);
- ``nocnn``: no CNN, h = g_ctx (SIFT at 4× the keypoint size) only;
- ``noctx``: no context SIFT, h = the CNN only.
``nocnn`` / ``noctx`` drop a part the weights were trained with: they bound what a retrained model
without that part could reach, they are not a shippable model. Results: residual_tradeoff.md.
"""
from __future__ import annotations

import json
import math
import sys
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from hndesc_features.models import residual as R

VARIANTS = ("full", "cnn4", "nocnn", "noctx")
_describe, _init = R.ResidualDescriptor.describe, R.ResidualDescriptor.__init__
_state = {"variant": "full", "nets": []}


def _describe_nocnn(self, image, keypoints, scales, oris, handcrafted=None, context=None):
    h = F.pad(context.float() * float(self.conf["context_weight"]), (0, int(self.conf["cnn_dim"]) - context.shape[-1]))
    g = handcrafted.float()
    f = self.mlp(g * math.sqrt(self.g_dim))
    f[..., :g.shape[-1]] += g
    return F.normalize(torch.cat([f, h], -1), p=2, dim=-1)


def _apply(net):
    v = _state["variant"]
    net.uses_context = bool(net.conf["context_scale"]) and v != "noctx"
    net.pool = 4 if v == "cnn4" else net._trained_pool


def _patched_init(self, *a, **k):
    _init(self, *a, **k)
    self._trained_pool = self.pool
    _state["nets"].append(self)
    _apply(self)


R.ResidualDescriptor.__init__ = _patched_init


def use(variant: str):
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant}; one of {VARIANTS}")
    _state["variant"] = variant
    R.ResidualDescriptor.describe = _describe_nocnn if variant == "nocnn" else _describe
    for n in _state["nets"]:
        _apply(n)


def speed(iters: int) -> dict:
    from ..speed import _load_image, default_image
    from hndesc_features.confs import feature_confs
    from hndesc_features.extractors import load_model

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rgb = _load_image(str(default_image()), 1024, False)
    gray = _load_image(str(default_image()), 1024, True)
    x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    xg = torch.from_numpy(gray.astype(np.float32) / 255.0)[None, None]
    res_model = load_model(feature_confs()["residual_sift"]["model"]).eval()
    sift_model = load_model(feature_confs()["rootsift"]["model"]).eval()
    times = {k: [] for k in ("rootsift", *VARIANTS)}
    with torch.no_grad():
        for _ in range(iters):
            for k in times:  # interleaved: load bursts from other processes hit every variant alike
                if k == "rootsift":
                    def f():
                        return sift_model({"image": xg})
                else:
                    use(k)

                    def f():
                        return res_model({"image": x})
                f()
                c0 = time.process_time()
                f()
                times[k].append(1000 * (time.process_time() - c0))
    base = min(times["rootsift"])
    return {k: {"cpu_ms_min": min(v), "cpu_ms_median": float(np.median(v)), "x_rootsift": min(v) / base}
            for k, v in times.items()}


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
    elif len(sys.argv) >= 2 and sys.argv[1] == "speed":
        print(json.dumps(speed(int(sys.argv[2]) if len(sys.argv) > 2 else 7), indent=1))
    elif len(sys.argv) >= 3 and sys.argv[1] == "webcam":
        use(sys.argv[2])
        from .. import webcam

        webcam.main([a for a in sys.argv[3:] if a != "--"])
    else:
        raise SystemExit(__doc__)
