"""NetVLAD global descriptor without torchvision. hloc name: hf_netvlad.

Same weights file and outputs as hloc's `netvlad` extractor (hndesc_features/models/netvlad.py
reimplements its VGG16 in plain torch), so it runs where torchvision cannot be imported. Weights:
conf `weights` (a path) or hloc's cache torch.hub.get_dir()/netvlad/<model_name>.mat; nothing is
downloaded unless `download: true`.
"""
from hndesc_features.base_model import BaseModel
from hndesc_features.config import check_keys
from hndesc_features.models.netvlad import NetVLAD as NetVLADNet


class NetVLAD(BaseModel):
    default_conf = {"model_name": "VGG16-NetVLAD-Pitts30K", "whiten": True, "weights": None, "download": False}
    required_inputs = ["image"]

    def _init(self, conf):
        check_keys(conf, [*self.default_conf, "name"], "hf_netvlad")  # a misspelt key is an error
        self.net = NetVLADNet.from_conf(conf)

    def _forward(self, data):
        return {"global_descriptor": self.net(data["image"])}
