"""KCC's data pipeline: the weakly-labelled keypoint bags of ``datasets/weak.py`` are ready to use
(no per-sample ``prepare``); ``collate`` stacks anchor / positive / negative bags into triplets."""
from __future__ import annotations

from ..datasets.weak import collate_triplets as collate  # noqa: F401
