"""The extractor base class: hloc's own `BaseModel` when hloc imports, else an identical copy.

Extractors subclass this, so they are genuine hloc models inside hloc (`dynamic_load` checks
`issubclass(cls, hloc.utils.base_model.BaseModel)`) and plain torch modules without it.
"""
from __future__ import annotations

import sys
from abc import ABCMeta, abstractmethod
from copy import copy

import numpy as np
import torch
from torch import nn

try:  # pragma: no branch
    from hloc.utils.base_model import BaseModel  # type: ignore  # noqa: F401

    HLOC_BASE = True
except Exception:  # hloc absent or broken: same contract, our own class
    HLOC_BASE = False

    class BaseModel(nn.Module, metaclass=ABCMeta):  # type: ignore[no-redef]
        default_conf: dict = {}
        required_inputs: list = []

        def __init__(self, conf):
            super().__init__()
            self.conf = conf = {**self.default_conf, **conf}
            self.required_inputs = copy(self.required_inputs)
            self._init(conf)
            sys.stdout.flush()

        def forward(self, data):
            for key in self.required_inputs:
                assert key in data, "Missing key {} in data".format(key)
            return self._forward(data)

        @abstractmethod
        def _init(self, conf):
            raise NotImplementedError

        @abstractmethod
        def _forward(self, data):
            raise NotImplementedError


def batch_features(feats: dict, device) -> dict:
    """numpy N×... features of one image → hloc's batched torch outputs (descriptors D×N)."""
    out = {}
    for k, v in feats.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if k == "descriptors":
            t = t.float().t()
        out[k] = t[None].to(device)
    return out
