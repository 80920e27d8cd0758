"""Sharded feature extraction over torch.distributed ranks (torchrun), merged into one hloc .h5.

    torchrun --nproc_per_node 2 -m hndesc_features.extract_features --conf rootsift \
        --image_dir D --export_dir E

Every rank lists the same images (minus those already in the final file unless --overwrite),
takes every world_size-th of them and extracts them into its own shard
`<features>.h5.shard<rank>-of-<world>.h5` with the ordinary single-process `main` (so the shard
is resumable and crash-safe exactly like a normal run). After a barrier, rank 0 merges every
shard it finds into the final file atomically (copy → append → os.replace, under the writer
lock) and deletes the shards; a second barrier makes every rank return only once the merged
file exists. A run killed at any point leaves the final file intact and the finished work in
the shards: rerunning the same command (any world size) resumes and merges. On CUDA each rank
uses the GPU of its LOCAL_RANK. The result equals a single-process extraction: same groups,
same arrays (bit-identical for deterministic extractors).
"""
from __future__ import annotations

import datetime
import inspect
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence

import h5py

from . import logger
from .io import list_h5_names

SHARD_RE = re.compile(r"\.shard(\d+)-of-(\d+)\.h5$")


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def shard_path(feature_path: Path, rank: int, world: int) -> Path:
    feature_path = Path(feature_path)
    return feature_path.with_name(f"{feature_path.name}.shard{rank}-of-{world}.h5")


def find_shards(feature_path: Path) -> list[Path]:
    """Every shard of this feature file left by any run (any world size), in a stable order."""
    feature_path = Path(feature_path)
    if not feature_path.parent.exists():
        return []
    out = [p for p in feature_path.parent.glob(feature_path.name + ".shard*-of-*.h5") if SHARD_RE.search(p.name)]
    return sorted(out, key=lambda p: tuple(int(v) for v in SHARD_RE.search(p.name).groups())[::-1])




def _remove_shard(p: Path) -> None:
    p.unlink(missing_ok=True)
    Path(str(p) + ".lock").unlink(missing_ok=True)
    shutil.rmtree(str(p) + ".partial", ignore_errors=True)


def merge_shards(feature_path: Path, shards: Optional[Sequence[Path]] = None, remove: bool = True) -> int:
    """Copy every image group of the shards into feature_path (replacing groups of the same name),
    atomically; returns the number of images merged. Shards are deleted afterwards if remove."""
    from .io import exclusive_lock

    feature_path = Path(feature_path)
    shards = [Path(s) for s in (find_shards(feature_path) if shards is None else shards) if Path(s).exists()]
    if not shards:
        return 0
    n = 0
    with exclusive_lock(feature_path):
        tmp = feature_path.with_name(f".{feature_path.name}.{os.getpid()}.merge.tmp")
        if feature_path.exists():
            shutil.copyfile(feature_path, tmp)
        try:
            with h5py.File(str(tmp), "a", libver="latest") as dst:
                for s in shards:
                    with h5py.File(str(s), "r", libver="latest") as src:
                        for name in list_h5_names(s):
                            if name in dst:
                                del dst[name]
                            parent, _, base = name.rpartition("/")
                            target = dst.require_group(parent) if parent else dst
                            src.copy(src[name], target, name=base)
                            n += 1
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, feature_path)
        finally:
            if tmp.exists():
                tmp.unlink()
    if remove:
        for s in shards:
            _remove_shard(s)
    logger.info(f"Merged {n} images from {len(shards)} shard(s) into {feature_path}.")
    return n


def _init_group():
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build.")
    if dist.is_initialized():
        return dist, False
    # long timeout: the barrier waits for the slowest rank's whole shard
    dist.init_process_group(backend="gloo", timeout=datetime.timedelta(days=7))
    return dist, True


def sharded_main(conf: dict, image_dir: Path, export_dir: Optional[Path] = None, as_half: bool = True,
                 image_list=None, feature_path: Optional[Path] = None, overwrite: bool = False,
                 strict: bool = False, *, main_fn: Callable, list_names: Callable) -> Path:
    """extract_features.main's arguments; call it in every rank of a torchrun job.

    main_fn: the single-process extraction (extract_features.main); list_names(conf, image_dir,
    image_list): the image names it would extract (both passed by the caller, so this module
    does not depend on extract_features)."""
    import torch

    rank, world = dist_info()
    if feature_path is None:
        if export_dir is None:
            raise ValueError("Provide export_dir or feature_path.")
        feature_path = Path(export_dir, conf["output"] + ".h5")
    feature_path = Path(feature_path)
    feature_path.parent.mkdir(parents=True, exist_ok=True)

    own = [shard_path(feature_path, r, world) for r in range(world)]
    stale = [p for p in find_shards(feature_path) if p not in own]  # left by a run of another size
    names = list(list_names(conf, Path(image_dir), image_list))
    done = set()
    if not overwrite:
        if feature_path.exists():
            done |= set(list_h5_names(feature_path))
        for p in stale:
            done |= set(list_h5_names(p))
    todo = [n for n in names if n not in done]
    mine = todo[rank::world]
    shard = own[rank]
    if torch.cuda.is_available() and torch.cuda.device_count() > local_rank():
        torch.cuda.set_device(local_rank())

    dist, created = _init_group() if world > 1 else (None, False)
    try:
        if dist is not None:
            dist.barrier()  # every rank has listed the work before any shard changes
        if overwrite and shard.exists():
            _remove_shard(shard)  # a stale shard of an earlier run must not survive --overwrite
        logger.info(f"rank {rank}/{world}: {len(mine)} of {len(todo)} images → {shard.name}")
        if mine:
            kw = dict(as_half=as_half, image_list=mine, feature_path=shard)
            params = inspect.signature(main_fn).parameters
            if "strict" in params:
                kw["strict"] = strict
            main_fn(conf, Path(image_dir), **kw)
        if dist is not None:
            dist.barrier()
        if rank == 0:
            if overwrite:
                for p in stale:
                    _remove_shard(p)
                stale = []
            merge_shards(feature_path, stale + own)  # older shards first: the newest copy wins
        if dist is not None:
            dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()
    return feature_path
