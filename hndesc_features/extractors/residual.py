"""Residual descriptors as an hloc extractor (hloc name: hf_residual).

d = L2(concat(f(g), h)): a handcrafted g (SIFT / RootSIFT / upright RootSIFT / SURF) refined by
a small CNN; the model and its inference live in hndesc_features/models/residual.py. The weights
(``weights``: a name from hndesc_features.weights or a path; default ``residual_<descriptor>``)
fix the architecture and the handcrafted descriptor they were trained with; ``descriptor`` must agree.
"""
import torch

from hndesc_features import weights as registry
from hndesc_features.base_model import BaseModel
from hndesc_features.config import check_keys
from hndesc_features.extractors import check_image, stack_batch, torch_threads


class Residual(BaseModel):
    default_conf = {
        "descriptor": "sift",  # sift | rootsift | rootsift_upright | surf | ... (must match the weights)
        "weights": None,  # None → residual_<descriptor>
        "max_keypoints": 4096,  # top-k by detector response; -1 = all
        "contrast_threshold": 0.005,  # SIFT DoG threshold (OpenCV units)
        "hessian_threshold": 30.0,  # SURF
        # inference-only speed/quality trade-off: the CNN reads the image pooled by 1/cnn_scale
        # (None: the value the weights were trained with; 0.25 instead of 0.5 ≈ -5 % CPU time, see
        # docs/speed.md / benchmarks/results/residual_tradeoff.md)
        "cnn_scale": None,
        # inference-only: describe the context on the image area-averaged by this factor (None: as trained;
        # docs/speed.md). Changes g_ctx slightly (k = 2: cosine 0.997 to k = 1), so prefer weights trained with it.
        "context_downsample": None,
        # torch threads while extracting (None: the process's setting). 1: the small CNN/MLP run on one thread
        # and no idle OpenMP worker spins against OpenCV's detection threads (whole process 1.6x less CPU)
        "torch_threads": 1,
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        check_keys(conf, [*self.default_conf, "name"], "hf_residual")  # a misspelt key is an error
        override = {k: conf[k] for k in ("max_keypoints", "contrast_threshold", "hessian_threshold")}
        if conf.get("cnn_scale") is not None:
            override["cnn_scale"] = float(conf["cnn_scale"])
        if conf.get("context_downsample") is not None:
            override["context_downsample"] = int(conf["context_downsample"])
        self.net, path = registry.load_model(conf["weights"], "residual", f"residual_{conf['descriptor']}", override)
        if self.net.conf["descriptor"] != conf["descriptor"]:
            raise ValueError(f"hf_residual: '{path}' was trained on '{self.net.conf['descriptor']}' "
                             f"descriptors, but the conf asks for descriptor='{conf['descriptor']}'")

    @torch.no_grad()
    def _forward(self, data):
        image = data["image"]
        check_image(image, "hf_residual")
        with torch_threads(self.conf["torch_threads"]):
            return stack_batch([self.net.extract(image[b:b + 1]) for b in range(image.shape[0])])
