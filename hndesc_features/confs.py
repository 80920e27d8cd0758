"""Feature and matcher confs: one source of truth, the YAML files in `confs/`.

`confs/` is shipped inside the wheel as `hndesc_features._confs`; in a source checkout the same
folder is read directly. Both our CLIs and the hloc hook read these dicts.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

#: hloc's model names for our extractors are `hf_<module>` (module = hndesc_features/extractors/<module>.py)
HLOC_PREFIX = "hf_"


def _confs_root():
    try:
        root = resources.files("hndesc_features._confs")
        if root.joinpath("features").is_dir():
            return root
    except (ModuleNotFoundError, TypeError):
        pass
    here = Path(__file__).resolve().parent.parent / "confs"
    if here.is_dir():
        return here
    raise FileNotFoundError("hndesc_features: cannot find the confs/ folder (broken install?)")


@lru_cache(maxsize=None)
def _load(kind: str) -> dict:
    root = _confs_root().joinpath(kind)
    out = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            conf = yaml.safe_load(entry.read_text())
            out[entry.name[: -len(".yaml")]] = conf
    return out


def feature_confs() -> dict:
    """name → hloc-style feature conf {output, model, preprocessing} (a fresh copy)."""
    return copy.deepcopy(_load("features"))


def matcher_confs() -> dict:
    return copy.deepcopy(_load("matchers"))


def get_feature_conf(name: str) -> dict:
    confs = feature_confs()
    if name not in confs:
        raise KeyError(f"Unknown feature conf '{name}'. Available: {', '.join(sorted(confs))}")
    return confs[name]


def get_matcher_conf(name: str) -> dict:
    confs = matcher_confs()
    if name not in confs:
        raise KeyError(f"Unknown matcher conf '{name}'. Available: {', '.join(sorted(confs))}")
    return confs[name]
