"""One config merge for the whole package: defaults + user conf, rejecting unknown keys.

``merge(default, conf)`` returns a new dict: ``conf`` wins, nested dicts merge recursively, and a
key that ``default`` does not know raises ``ConfigError`` naming the dotted key and the keys it
knows — a misspelt key never silently does nothing. Free-form places are an empty default dict
(``{}``: any keys) or a non-dict default (``None`` → a dict value replaces it). ``name`` (the
section's registry name, e.g. ``model.name``) is always allowed at the top level.
``overlay(base, conf)`` is the non-checking merge of two user confs (``_base_`` includes, overrides).
"""
from __future__ import annotations

import copy
import difflib
from typing import Iterable, Optional


class ConfigError(ValueError):
    """A config that cannot be used (the message names the key)."""


def merge(default: dict, conf: Optional[dict], where: str = "", allow: Iterable[str] = ("name",)) -> dict:
    out = copy.deepcopy(default)
    allow = set(allow)
    for k, v in (conf or {}).items():
        key = f"{where}.{k}" if where else str(k)
        if k not in out:
            if default and k not in allow:
                close = difflib.get_close_matches(str(k), [str(x) for x in default], n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"unknown config key '{key}'{hint}; known keys here: "
                                  f"{', '.join(sorted(map(str, default)))}")
            out[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = merge(out[k], v, key, allow=())
        else:
            out[k] = copy.deepcopy(v)
    return out


def overlay(base: dict, conf: Optional[dict]) -> dict:
    """Recursive merge of two user confs (``conf`` wins), no key checking."""
    out = copy.deepcopy(base)
    for k, v in (conf or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = overlay(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def check_keys(conf: dict, known: Iterable[str], who: str) -> None:
    """Raise ConfigError for top-level keys of ``conf`` that ``known`` does not hold."""
    known = set(known)
    bad = sorted(set(conf) - known)
    if bad:
        close = difflib.get_close_matches(bad[0], sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{who}: unknown conf key{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}"
                          f"{hint}; known: {', '.join(sorted(known))}")
