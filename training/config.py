"""Experiment configs: YAML files in confs/train/, dotted ``key=value`` overrides, ``_base_`` includes."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable, Optional

import yaml

from hndesc_features.config import ConfigError, overlay  # noqa: F401 (ConfigError re-exported)


def confs_dir() -> Path:
    """confs/train: the checkout's confs/ folder or the wheel's hndesc_features/_confs (one lookup,
    shared with the feature confs: hndesc_features.confs)."""
    from hndesc_features.confs import _confs_root

    return Path(str(_confs_root().joinpath("train")))


def list_configs() -> dict:
    """name → first comment line of every shipped training config (files starting with _ are bases)."""
    out = {}
    root = confs_dir()
    for f in sorted(root.rglob("*.yaml")):
        if f.name.startswith("_"):
            continue
        first = f.read_text().lstrip().splitlines()[:1]
        out[f.relative_to(root).with_suffix("").as_posix()] = first[0].lstrip("#").strip() if first and first[0].startswith("#") else ""
    return out


#: training config aliases (same config as their target)
CONFIG_ALIASES = {"wlrn_orb": "kcc_orb", "wlrn_orb_finetune": "kcc_orb_finetune"}


def resolve_config_path(path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    p = Path(CONFIG_ALIASES.get(str(path), str(path)))
    for cand in (confs_dir() / p, confs_dir() / f"{p}.yaml", confs_dir() / p.name):
        if cand.is_file():
            return cand
    raise ConfigError(f"Config '{path}' not found (also looked in {confs_dir()})")


def load_yaml(path) -> dict:
    path = resolve_config_path(path)
    try:
        conf = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Config '{path}' is not valid YAML: {e}") from None
    if not isinstance(conf, dict):
        raise ConfigError(f"Config '{path}' must be a mapping, got {type(conf).__name__}")
    base = conf.pop("_base_", None)
    if base:
        bases = base if isinstance(base, list) else [base]
        merged = {}
        for b in bases:
            bp = Path(b)
            if not bp.is_absolute():
                bp = path.parent / bp
            merged = overlay(merged, load_yaml(bp))
        conf = overlay(merged, conf)
    return conf


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"Override '{text}' must look like key.sub=value")
    key, value = text.split("=", 1)
    if not key:
        raise ConfigError(f"Override '{text}' has an empty key")
    try:
        val = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        val = value
    if isinstance(val, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            val = float(val)
        except ValueError:
            pass
    return key.split("."), val


def apply_overrides(conf: dict, overrides: Iterable[str]) -> dict:
    conf = copy.deepcopy(conf)
    for o in overrides or []:
        keys, val = parse_override(o)
        d = conf
        for k in keys[:-1]:
            if not isinstance(d.get(k), dict):
                d[k] = {}
            d = d[k]
        d[keys[-1]] = val
    return conf


def load_config(path, overrides: Optional[Iterable[str]] = None) -> dict:
    conf = apply_overrides(load_yaml(path), overrides or [])
    for section in ("data", "model", "loss"):
        if section not in conf or not isinstance(conf[section], dict) or "name" not in conf[section]:
            raise ConfigError(f"Config '{path}': section '{section}' with a 'name' is required")
    conf.setdefault("name", Path(str(path)).stem)
    return conf
