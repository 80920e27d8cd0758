"""OpenCV ORB. hloc name: hf_orb.

Binary descriptors are stored as unit-norm ±1 float vectors (256-d) so that hloc's NN matchers
(dot products) rank neighbours exactly by Hamming distance.
"""
import torch

from hndesc_features.base_model import BaseModel, batch_features
from hndesc_features.config import check_keys
from hndesc_features.handcrafted import binary_to_unit_float, detect_orb


class ORB(BaseModel):
    default_conf = {"max_keypoints": 4096, "scale_factor": 1.2, "n_levels": 8, "fast_threshold": 20}
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        check_keys(conf, [*self.default_conf, "name"], "hf_orb")  # a misspelt key is an error
        self.dummy = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def _forward(self, data):
        image = data["image"]
        assert image.shape[0] == 1, "one image at a time"
        img = image[0].permute(1, 2, 0).cpu().numpy()
        img = img[..., 0] if img.shape[-1] == 1 else img
        c = self.conf
        feats = detect_orb(img, c["max_keypoints"], c["scale_factor"], c["n_levels"], c["fast_threshold"])
        feats["descriptors"] = binary_to_unit_float(feats["descriptors"])
        return batch_features(feats, image.device)
