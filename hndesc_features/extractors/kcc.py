"""Markuš et al. KCC descriptors on OpenCV ORB keypoints as an hloc extractor (hloc name: hf_kcc;
alias: hf_wlrn). The model and its inference (ORB keypoints → 32×32 patches of
side 1.5 × size rotated by the ORB angle → 128-d) live in hndesc_features/models/kcc.py.
"""
import torch

from hndesc_features import weights as registry
from hndesc_features.base_model import BaseModel
from hndesc_features.config import check_keys
from hndesc_features.extractors import check_image, stack_batch


class KCC(BaseModel):
    default_conf = {
        "weights": None,         # None → kcc_orb; released wlrn state dicts load too
        "max_keypoints": 4096,   # ORB nfeatures (top by Harris score); -1 = all
        "scale_factor": 1.5,     # patch side = scale_factor × keypoint size
        "pyramid": True,         # sample large keypoints from a Gaussian pyramid level
        "batch_size": 1024,      # patches per network forward
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        check_keys(conf, [*self.default_conf, "name"], "hf_kcc")  # a misspelt key is an error
        self.net, _ = registry.load_model(conf["weights"], "kcc", "kcc_orb")

    @torch.no_grad()
    def _forward(self, data):
        image = data["image"]
        check_image(image, "hf_kcc")
        c = self.conf
        return stack_batch([self.net.extract(image[b:b + 1], c["max_keypoints"], c["scale_factor"], c["pyramid"],
                                             c["batch_size"]) for b in range(image.shape[0])])
