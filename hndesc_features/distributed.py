"""Sharded extraction over torch.distributed ranks (placeholder until the benchmarks work lands)."""
from __future__ import annotations

import os


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def sharded_main(*args, **kwargs):
    raise NotImplementedError("sharded extraction is not implemented yet")
