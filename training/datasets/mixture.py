"""Concatenation of training datasets (e.g. photo homography pairs + webcam illumination pairs).

``data: {name: mixture, parts: [{name: homographies, ...}, {name: webcam, ...}]}``: item ``k`` is
item ``k - offset`` of the part it falls in (sizes in order), with the same ``(index, seed)`` key,
so samples stay pure functions of their key. Each part's ``epoch_repeats`` sets its share.
"""
from __future__ import annotations

import bisect

import numpy as np

from .base import BaseDataset


class Mixture(BaseDataset):
    default_conf = {"parts": []}

    def _init(self, conf):
        from . import build_dataset

        if not conf["parts"]:
            raise ValueError("data.parts: list the datasets to mix")
        self.parts = [build_dataset(dict(p), self.split) for p in conf["parts"]]
        self.offsets = list(np.cumsum([0] + [len(p) for p in self.parts]))

    def __len__(self):
        return int(self.offsets[-1])

    def part_of(self, index: int) -> tuple[int, int]:
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, index - int(self.offsets[k])

    def get(self, index, rng, seed):
        k, i = self.part_of(int(index) % len(self))
        out = self.parts[k].get(i, rng, seed)
        out.setdefault("name1", out.get("name", ""))
        out.setdefault("scene", "")
        return out
