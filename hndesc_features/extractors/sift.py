"""SIFT / RootSIFT (optionally upright) with OpenCV, top-k DoG keypoints. hloc name: hf_sift."""
import torch

from hndesc_features.base_model import BaseModel, batch_features
from hndesc_features.config import check_keys
from hndesc_features.handcrafted import detect_sift


class SIFT(BaseModel):
    default_conf = {
        "root": True,
        "upright": False,
        "max_keypoints": 4096,
        "contrast_threshold": 0.005,
        "n_octave_layers": 3,
        "edge_threshold": 10.0,
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        check_keys(conf, [*self.default_conf, "name"], "hf_sift")  # a misspelt key is an error
        self.dummy = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def _forward(self, data):
        image = data["image"]
        assert image.shape[0] == 1, "one image at a time"
        img = image[0].permute(1, 2, 0).cpu().numpy().squeeze(-1) if image.shape[1] == 1 \
            else image[0].permute(1, 2, 0).cpu().numpy()
        c = self.conf
        feats = detect_sift(img, c["max_keypoints"], c["contrast_threshold"], root=c["root"],
                            upright=c["upright"], n_octave_layers=c["n_octave_layers"],
                            edge_threshold=c["edge_threshold"])
        return batch_features(feats, image.device)
