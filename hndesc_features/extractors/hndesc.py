"""HNDesc descriptor backbones as an hloc extractor (hloc name: hf_hndesc).

HNDesc is a descriptor only; keypoints come from
- ``keypoints: "dog"`` (default): OpenCV DoG (SIFT detector), top ``max_keypoints`` by response,
  contrast threshold ``contrast_threshold``;
- ``keypoints: <an hloc features .h5, or a feature conf name such as superpoint_aachen>`` (dense
  backbones): the keypoints another extractor stored for the same image, all of them in their
  order, through hloc's CLI too (``HNDESC_KEYPOINTS``; see hndesc_features/keypoint_source.py).

Backbones (``backbone``; models and their ``extract`` in hndesc_features/models/hndesc_<backbone>.py):
``patch`` (our CPU-trainable network on DoG-frame patches, conf ``hndesc_patch``), ``small`` (our
dense network), ``caps`` / ``r2d2`` (the paper's; install the released checkpoints with
``python -m hndesc_features.weights install hndesc_caps FILE``).
"""
from __future__ import annotations

import torch

from hndesc_features import keypoint_source
from hndesc_features import weights as registry
from hndesc_features.base_model import BaseModel
from hndesc_features.config import check_keys
from hndesc_features.extractors import check_image, stack_batch

BACKBONES = ("patch", "small", "caps", "r2d2")


class HNDesc(BaseModel):
    default_conf = {
        "backbone": "small",  # patch | small | caps | r2d2
        "weights": None,  # None → hndesc_<backbone> (caps / r2d2: installed by the user)
        "max_keypoints": 4096,
        "keypoints": "dog",  # "dog", an hloc features .h5 or a feature conf name (keypoints reused)
        "contrast_threshold": 0.005,
        "sampling": None,  # None → the backbone's convention ("hndesc" for caps/r2d2)
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        check_keys(conf, [*self.default_conf, "name"], "hf_hndesc")  # a misspelt key is an error
        if conf["backbone"] not in BACKBONES:
            raise ValueError(f"Unknown HNDesc backbone '{conf['backbone']}'; expected one of {list(BACKBONES)}")
        self.net, _ = registry.load_model(conf["weights"], f"hndesc_{conf['backbone']}", f"hndesc_{conf['backbone']}")
        self.kp_source, self._kp_files = None, {}
        if conf["keypoints"] != keypoint_source.DETECT:
            if conf["backbone"] == "patch":
                raise ValueError("HNDesc backbone 'patch' describes DoG keypoint frames (size, orientation); "
                                 "model.keypoints must be 'dog' (keypoints from an .h5 have no frames)")
            self.kp_source = str(conf["keypoints"])

    def _forward(self, data):
        image = data["image"]
        check_image(image, "hf_hndesc")
        c = self.conf
        if self.kp_source is None:
            kw = {} if c["backbone"] == "patch" else {"sampling": c["sampling"]}
            return stack_batch([self.net.extract(image[b:b + 1], c["max_keypoints"], c["contrast_threshold"], **kw)
                                for b in range(image.shape[0])])
        ctx = keypoint_source.caller_context()
        names = data.get("name", ctx.get("name"))
        if names is None:
            raise ValueError("model.keypoints reuses keypoints by image name: run the model through "
                             "extract_features.main (hloc's or ours) or pass data['name']")
        names = [names] if isinstance(names, str) else list(names)
        key = str(ctx.get("export_dir"))
        if key not in self._kp_files:
            self._kp_files[key] = keypoint_source.resolve_file(self.kp_source, ctx.get("export_dir"), ctx.get("confs"))
        outs = []
        for b in range(image.shape[0]):
            kpts, scores = keypoint_source.read_keypoints(self._kp_files[key], names[b], tuple(image.shape[-2:]))
            outs.append(self.net.extract(image[b:b + 1], keypoints=torch.from_numpy(kpts),
                                         scores=torch.from_numpy(scores), sampling=c["sampling"]))
        return stack_batch(outs)
