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
#: the conf every CLI, the demo and the README use when none is named
DEFAULT_FEATURE_CONF = "hndesc"
#: conf aliases (same conf as their target)
ALIASES = {"features": {"wlrn_orb": "kcc_orb"}, "matchers": {}}


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


def _summary(text: str) -> str:
    """The first comment line of a conf file: its one-line description."""
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    return first.lstrip("#").strip() if first.startswith("#") else ""


@lru_cache(maxsize=None)
def _load(kind: str) -> tuple[dict, dict]:
    root = _confs_root().joinpath(kind)
    out, summaries = {}, {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            text = entry.read_text()
            name = entry.name[: -len(".yaml")]
            out[name] = yaml.safe_load(text)
            summaries[name] = _summary(text)
    for alias, target in ALIASES[kind].items():
        if target in out and alias not in out:
            out[alias] = out[target]
            summaries[alias] = f"alias of {target}"
    return out, summaries


def feature_confs() -> dict:
    """name → hloc-style feature conf {output, model, preprocessing} (a fresh copy; aliases included)."""
    return copy.deepcopy(_load("features")[0])


def matcher_confs() -> dict:
    return copy.deepcopy(_load("matchers")[0])


def summaries(kind: str = "features") -> dict:
    """name → one-line description (the first comment line of its YAML file)."""
    return dict(_load(kind)[1])


def help_epilog(kind: str = "features") -> str:
    """A `--help` epilog listing every conf with its one-line description."""
    items = summaries(kind)
    width = max(map(len, items), default=0)
    return f"{kind[:-1]} confs:\n" + "\n".join(f"  {n:<{width}}  {d}" for n, d in items.items())


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
