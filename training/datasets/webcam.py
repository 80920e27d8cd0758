"""Real illumination pairs from static outdoor webcams (TILDE "Webcam" / AMOS), + synthetic viewpoint.

``../shared/data/webcam/<scene>/YYYYMMDD_HHMMSS.png``: each scene is one fixed camera over days,
nights and seasons, so two images of a scene are registered (ground-truth correspondence = the
identity). A sample takes two *different* images of one training scene, the same crop of both, and
then the one homography-pair sampler (``geometry.homography.sample_pair`` with ``image1``) puts
view 1 through a synthetic homography: real lighting change + exact viewpoint geometry.

Split (fixed, shared with the benchmarks): scene ``chamonix`` is the dev *benchmark* scene and can
never be used here (a ValueError names it); ``courbevoie`` and ``frankfurt`` are the training
scenes. Inside a training scene, every ``val_every``-th image by time stamp (offset ``val_offset``)
is held aside for validation (``split: val``), the others are ``split: train``; style sources for
stylization come from the ``train`` images only. Academic use only: never ship these images.

Pair choice: with probability ``p_contrast`` the second image is drawn from the ``contrast_share``
of the scene's other images whose mean brightness differs most from the first one's (night/day,
dusk/noon: the pairs that matter), else uniformly among the other images.

Sample keys: those of ``homographies`` (``view0``, ``view1``, ``H_0to1``, ``valid0``, ``valid1``,
``name``, ``seed``) + ``name1`` (the second image) and ``scene``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .base import resize_long_side
from .homographies import HomographyPairs

from .sources import DEFAULT_ROOT, FORBIDDEN_SCENES, TRAIN_SCENES, check_scenes, webcam_images  # noqa: F401


_BRIGHTNESS: dict = {}  # (path, size, mtime) -> mean grey level: each file is decoded once per process


def mean_brightness(paths: Sequence[Path]) -> np.ndarray:
    """Mean grey level of each image (every 4th pixel; 128 for an unreadable file)."""
    import cv2

    out = []
    for p in paths:
        try:
            st = Path(p).stat()
            key = (str(p), st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        if key is not None and key in _BRIGHTNESS:
            out.append(_BRIGHTNESS[key])
            continue
        g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        value = float(g[::4, ::4].mean()) if g is not None else 128.0
        if key is not None:
            _BRIGHTNESS[key] = value
        out.append(value)
    return np.asarray(out)


class WebcamPairs(HomographyPairs):
    default_conf = {
        **HomographyPairs.default_conf,
        "source": {"name": "webcam", "root": DEFAULT_ROOT, "scenes": list(TRAIN_SCENES), "split": "train"},
        "resize": [640, 1024],
        "p_contrast": 0.5,
        "contrast_share": 0.34,
    }

    def _init(self, conf):
        src = conf["source"]
        if src.get("name") != "webcam":
            raise ValueError("the webcam dataset needs source.name: webcam")
        super()._init(conf)
        self.scene = [p.parent.name for p in self.paths]
        self.brightness = mean_brightness(self.paths)
        self.others = {}
        for i in range(len(self.paths)):
            idx = np.array([j for j in range(len(self.paths)) if j != i and self.scene[j] == self.scene[i]])
            if len(idx) == 0:
                raise ValueError(f"webcam scene '{self.scene[i]}' needs at least two images")
            far = idx[np.argsort(-np.abs(self.brightness[idx] - self.brightness[i]), kind="stable")]
            self.others[i] = (idx, far[: max(1, int(round(float(conf["contrast_share"]) * len(idx))))])

    def get(self, index, rng, seed):
        i = index % len(self.paths)
        idx, far = self.others[i]
        j = int(rng.choice(far) if rng.random() < float(self.conf["p_contrast"]) else rng.choice(idx))
        _, a = self.loader.load(i)
        _, b = self.loader.load(j)
        if a.shape != b.shape:
            raise ValueError(f"webcam images {self.paths[i]} and {self.paths[j]} differ in size: not registered")
        lo, hi = self.conf["resize"]
        side = rng.uniform(lo, hi)
        a = resize_long_side(a, side, min_side=self.min_side)
        b = resize_long_side(b, side, min_side=self.min_side)
        return self.pair_sample(a, rng, seed, str(self.paths[i]), image1=b,
                                extra={"name1": str(self.paths[j]), "scene": self.scene[i]})
