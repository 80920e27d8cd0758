"""The HNDesc paper's pipeline as an hloc extractor (hloc name: hf_hndesc_sp): SuperPoint keypoints,
HNDesc CAPS / R2D2 descriptors, each image prepared as the released code prepares it
(hndesc_features/models/hndesc_sp.py). Confs ``hndesc_caps_sp`` and ``hndesc_r2d2_sp``.

The conf's ``preprocessing`` must not resize (``resize_max: null``): the model resizes itself
(``model.resize_max``, cv2 linear for the detector, PIL bicubic for the descriptor) and returns
keypoints in the original resolution.

The released code reads the file twice (gray with OpenCV, RGB with PIL). The extractor does the
same when it can name the file: our CLI passes ``image_path``; under hloc's
``extract_features.main`` the file is the one main() is processing (``dataset.root / name`` of
its frame), used only if its pixels are the image tensor received. Otherwise gray is rebuilt
from the RGB tensor (a bounded difference, see the README).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from hndesc_features import keypoint_source, weights as registry
from hndesc_features.base_model import BaseModel
from hndesc_features.config import check_keys
from hndesc_features.extractors import check_image, stack_batch

def file_pixels(path: Optional[Path], rgb_tensor) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(gray, rgb) read from ``path`` as the released code reads them, if the file decodes to
    exactly the pixels of ``rgb_tensor`` (1×3×H×W); else None."""
    if path is None or not Path(path).is_file():
        return None
    from hndesc_features.io import read_image
    from hndesc_features.models.hndesc_sp import read_official, rgb_u8

    try:
        if not np.array_equal(read_image(path), rgb_u8(rgb_tensor)):
            return None
        return read_official(path)
    except Exception:  # noqa: BLE001 - any read problem: fall back to the tensor
        return None


class HNDescSP(BaseModel):
    default_conf = {
        "backbone": "caps",  # caps | r2d2
        "weights": None,  # None → hndesc_<backbone> (the released checkpoint, user-installed)
        "detector_weights": None,  # None → superpoint (user-installed, or hloc's checkout)
        "resize_max": 1024,
        "max_keypoints": 4096,
        "nms_radius": 3,
        "keypoint_threshold": 0.005,
        "remove_borders": 4,
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        check_keys(conf, [*self.default_conf, "name"], "hf_hndesc_sp")  # a misspelt key is an error
        from hndesc_features.models.hndesc_sp import BACKBONES, HNDescSP as Pipeline

        if conf["backbone"] not in BACKBONES:
            raise ValueError(f"Unknown backbone '{conf['backbone']}' for hf_hndesc_sp; expected one of {list(BACKBONES)}")
        arch = f"hndesc_{conf['backbone']}"
        descriptor, _ = registry.load_model(conf["weights"], arch, arch)
        detector, _ = registry.load_model(conf["detector_weights"], "superpoint", "superpoint")
        self.net = Pipeline(detector, descriptor, {k: conf[k] for k in Pipeline.default_conf})

    def _forward(self, data):
        image = data["image"]
        check_image(image, "hf_hndesc_sp", channels=(3,))
        paths = data.get("image_path")
        if paths is None or isinstance(paths, (str, Path)):
            paths = [paths] * image.shape[0]
        outs = []
        for b in range(image.shape[0]):
            path = paths[b]
            if path is None and image.shape[0] == 1:
                path = keypoint_source.caller_context().get("image_path")
            read = file_pixels(path, image[b:b + 1])
            if read is not None:
                outs.append(self.net.extract(gray=read[0], rgb=read[1]))
            else:
                outs.append(self.net.extract(image[b:b + 1]))
        return stack_batch(outs)
