"""hloc integration: `register()` for Python users; the .pth hook does the same at start-up."""
from __future__ import annotations

import sys

from .hook import inject_confs, install, installed  # noqa: F401


def register() -> list[str]:
    """Make hloc (imported or not yet) find our extractors and confs.

    Returns the conf names added to an already-imported `hloc.extract_features.confs`.
    """
    install()
    mod = sys.modules.get("hloc.extract_features")
    if mod is not None and isinstance(getattr(mod, "confs", None), dict):
        return inject_confs(mod.confs)
    return []
