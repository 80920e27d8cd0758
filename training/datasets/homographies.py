"""Self-supervised homography pairs from an image source (the default training data).

Each sample: one image of the source, rescaled so that its long side is uniform in
``resize`` (and at least what the sampler needs), two views from the homography sampler
(``geometry.homography``), then independent photometric augmentation of each view.

Sample keys: ``view0``, ``view1`` (C×h×w float in [0, 1]), ``H_0to1`` (3×3 float32),
``valid0``, ``valid1`` (h×w bool), ``name``, ``seed``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..augment import DEFAULT_CONF as PHOTOMETRIC_DEFAULT
from ..augment import PhotometricAugmentation
from ..geometry.homography import DEFAULT_CONF as H_DEFAULT
from ..geometry.homography import merge_conf, min_image_side, sample_pair
from .base import BaseDataset, resize_long_side, to_tensor
from .image_folder import ImageLoader, source_paths


class HomographyPairs(BaseDataset):
    default_conf = {
        "source": None,  # an image source spec (sources.py); None → {name: dev_images, split: train}
        "resize": [640, 1024],  # long side of the source image, uniform in this range (null: as loaded)
        "load_max_side": 1600,  # images are downscaled to this once at load (and cached)
        "cache": True,
        "grayscale": False,
        "homography": H_DEFAULT,
        "photometric": PHOTOMETRIC_DEFAULT,
        "epoch_repeats": 1,  # samples per image per epoch
    }

    def _init(self, conf):
        self.paths = source_paths(conf["source"] or {"name": "dev_images", "split": "train"})
        self.loader = ImageLoader(self.paths, conf["grayscale"], conf["load_max_side"], conf["cache"])
        self.hconf = merge_conf(H_DEFAULT, conf["homography"])
        self.min_side = min_image_side(self.hconf)
        self.photo = PhotometricAugmentation(conf["photometric"])

    def __len__(self):
        return len(self.paths) * int(self.conf["epoch_repeats"])

    def get(self, index, rng, seed):
        i, img = self.loader.load(index % len(self.paths))
        if self.conf["resize"] is None:  # the stored resolution (capped at load_max_side), as the reference crops
            img = resize_long_side(img, max(img.shape[:2]), min_side=self.min_side)
        else:
            lo, hi = self.conf["resize"]
            img = resize_long_side(img, rng.uniform(lo, hi), min_side=self.min_side)
        return self.pair_sample(img, rng, seed, str(self.paths[i]))

    def pair_sample(self, img, rng, seed, name: str, image1=None, extra: dict | None = None) -> dict:
        """One training sample from an image (and, for real pairs, a registered second image that
        view 1 is cut from): the one homography-pair sampler, then the photometric augmentation."""
        pair = sample_pair(to_tensor(img), self.hconf, rng, image1=None if image1 is None else to_tensor(image1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**31)))
            v0 = self.photo(pair["view0"])
            v1 = self.photo(pair["view1"])
        return {
            "view0": v0.contiguous(), "view1": v1.contiguous(),
            "H_0to1": torch.from_numpy(pair["H_0to1"].astype(np.float32)),
            "valid0": torch.from_numpy(pair["valid0"]), "valid1": torch.from_numpy(pair["valid1"]),
            "name": name, "seed": int(seed), **(extra or {}),
            # image→view-1 homography and the (resized) image size: a pre-generated stylized copy of
            # the image is warped into view 1 with them (loss.stylize.mode: pregenerated)
            **({"A1": torch.from_numpy(np.asarray(pair["A1"], np.float64)),
                "source_hw": torch.tensor(img.shape[:2])} if image1 is None else {}),
        }
