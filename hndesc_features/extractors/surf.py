"""SURF, our own implementation (OpenCV wheels exclude it). hloc name: hf_surf."""
import torch

from hndesc_features.base_model import BaseModel, batch_features
from hndesc_features.config import check_keys
from hndesc_features.handcrafted import to_gray_u8
from hndesc_features.surf import detect_and_describe


class SURF(BaseModel):
    default_conf = {
        "hessian_threshold": 30.0,
        "extended": False,
        "upright": False,
        "max_keypoints": 4096,
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        check_keys(conf, [*self.default_conf, "name"], "hf_surf")  # a misspelt key is an error
        self.dummy = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def _forward(self, data):
        image = data["image"]
        assert image.shape[0] == 1, "one image at a time"
        img = image[0].permute(1, 2, 0).cpu().numpy()
        img = to_gray_u8(img[..., 0] if img.shape[-1] == 1 else img)
        c = self.conf
        feats = detect_and_describe(img, hessian_threshold=c["hessian_threshold"],
                                    extended=c["extended"], upright=c["upright"],
                                    max_keypoints=c["max_keypoints"])
        feats = {k: feats[k] for k in ("keypoints", "scores", "scales", "oris", "descriptors")}
        return batch_features(feats, image.device)
