"""HNDesc descriptor backbones as an hloc extractor (hloc name: hf_hndesc).

HNDesc is a descriptor only; keypoints come from
- ``keypoints: "dog"`` (default): OpenCV DoG (SIFT detector), top ``max_keypoints`` by response,
  contrast threshold ``contrast_threshold``;
- ``keypoints: <path to an hloc features .h5>`` (dense backbones): the keypoints another extractor
  stored for the same image (e.g. SuperPoint, as in the paper), looked up by image name — hloc's
  own ``extract_features`` does not pass names to models, so use
  ``python -m hndesc_features.extract_features`` for this option.

Backbones (``backbone``; models and their ``extract`` in hndesc_features/models/hndesc_<backbone>.py):
``patch`` (our CPU-trainable network on DoG-frame patches, conf ``hndesc_patch``), ``small`` (our
dense network), ``caps`` / ``r2d2`` (the paper's; install the released checkpoints with
``python -m hndesc_features.weights install hndesc_caps FILE``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hndesc_features import weights as registry
from hndesc_features.base_model import BaseModel
from hndesc_features.config import check_keys
from hndesc_features.extractors import check_image, stack_batch

BACKBONES = ("patch", "small", "caps", "r2d2")


def read_h5_keypoints(path: Path, name: str, hw: tuple[int, int], max_keypoints: int):
    """Keypoints (in network-input pixels) and scores another extractor stored for `name`."""
    import h5py

    with h5py.File(str(path), "r", libver="latest") as f:
        if name not in f:
            raise KeyError(f"Image '{name}' has no features in {path}")
        grp = f[name]
        kpts = grp["keypoints"][()].astype(np.float32)
        sc = next((grp[k][()] for k in ("scores", "keypoint_scores") if k in grp), None)
        scores = np.ones(len(kpts), np.float32) if sc is None else sc.astype(np.float32)
        size = grp["image_size"][()] if "image_size" in grp else None
    if size is not None:  # stored in original resolution: back to the network input's
        H, W = hw
        sx, sy = float(size[0]) / W, float(size[1]) / H
        kpts = np.stack([(kpts[:, 0] + 0.5) / sx - 0.5, (kpts[:, 1] + 0.5) / sy - 0.5], -1)
    order = np.argsort(-scores, kind="stable")
    if max_keypoints and max_keypoints > 0:
        order = order[:max_keypoints]
    return torch.from_numpy(kpts[order].astype(np.float32)), torch.from_numpy(scores[order])


class HNDesc(BaseModel):
    default_conf = {
        "backbone": "small",  # patch | small | caps | r2d2
        "weights": None,  # None → hndesc_<backbone> (caps / r2d2: installed by the user)
        "max_keypoints": 4096,
        "keypoints": "dog",  # "dog" or a path to an hloc features .h5
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
        self.kp_h5 = None
        if conf["keypoints"] != "dog":
            if conf["backbone"] == "patch":
                raise ValueError("HNDesc backbone 'patch' describes DoG keypoint frames (size, orientation); "
                                 "model.keypoints must be 'dog' (keypoints from an .h5 have no frames)")
            self.kp_h5 = Path(conf["keypoints"]).expanduser()
            if not self.kp_h5.is_file():
                raise FileNotFoundError(
                    f"model.keypoints must be 'dog' or an existing hloc features .h5; got {conf['keypoints']}")

    def _forward(self, data):
        image = data["image"]
        check_image(image, "hf_hndesc")
        c = self.conf
        if self.kp_h5 is None:
            kw = {} if c["backbone"] == "patch" else {"sampling": c["sampling"]}
            return stack_batch([self.net.extract(image[b:b + 1], c["max_keypoints"], c["contrast_threshold"], **kw)
                                for b in range(image.shape[0])])
        names = data.get("name")
        if names is None:
            raise ValueError(
                "model.keypoints is an .h5 file: keypoints are looked up by image name, which "
                "hloc's extract_features does not pass; run `python -m hndesc_features.extract_features` instead.")
        names = [names] if isinstance(names, str) else list(names)
        outs = []
        for b in range(image.shape[0]):
            kpts, scores = read_h5_keypoints(self.kp_h5, names[b], tuple(image.shape[-2:]), c["max_keypoints"])
            outs.append(self.net.extract(image[b:b + 1], keypoints=kpts, scores=scores, sampling=c["sampling"]))
        return stack_batch(outs)
