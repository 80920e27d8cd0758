"""COCO 2017 as downloaded from cocodataset.org: ``root/train2017/*.jpg``, ``root/val2017``, ...

Only the images are used (self-supervised homography pairs); annotations are ignored.
"""
from __future__ import annotations

from .image_folder import ImageFolder
from .sources import SPLITS, coco_images  # noqa: F401 (re-exported)

class COCO(ImageFolder):
    default_conf = {**ImageFolder.default_conf, "root": None, "split": "train"}

    def _init(self, conf):
        super()._init({**conf, "source": conf["source"] or {"name": "coco", "root": conf["root"],
                                                             "split": conf["split"]}})
