"""Our extractors: one hloc `BaseModel` subclass per file.

Each file is importable as `hndesc_features.extractors.<x>` and is served to hloc as
`hloc.extractors.hf_<x>` (see hndesc_features/hloc/hook.py), so the files use absolute imports.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from ..confs import HLOC_PREFIX
from ..hloc.hook import EXTRACTOR_ALIASES as ALIASES  # hloc model-name aliases (hf_wlrn → kcc.py)

EXTRACTORS_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Module names x of hndesc_features/extractors/x.py (hloc model name: hf_x)."""
    return sorted(p.stem for p in EXTRACTORS_DIR.glob("*.py") if not p.stem.startswith("_"))


def model_class(name: str):
    """The BaseModel subclass for conf["model"]["name"] (`hf_<x>` or `<x>`)."""
    from ..base_model import BaseModel

    mod = name[len(HLOC_PREFIX):] if name.startswith(HLOC_PREFIX) else name
    mod = ALIASES.get(mod, mod)
    if mod not in available():
        raise ValueError(f"Unknown extractor '{name}'. Ours: {', '.join(HLOC_PREFIX + a for a in available())}")
    module = importlib.import_module(f"{__name__}.{mod}")
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if c.__module__ == module.__name__ and issubclass(c, BaseModel)]
    assert len(classes) == 1, classes
    return classes[0]


def load_model(model_conf: dict):
    return model_class(model_conf["name"])(model_conf)


def stack_batch(outs: list[dict]) -> dict:
    """Per-image ``extract`` outputs (keypoints N×2, descriptors N×D, ...) → hloc's batched dict
    (descriptors B×D×N); a ragged batch keeps the common top-n."""
    import torch

    n = min(len(o["keypoints"]) for o in outs)
    out = {k: torch.stack([o[k][:n] for o in outs]) for k in outs[0] if k != "descriptors"}
    out["descriptors"] = torch.stack([o["descriptors"][:n].t() for o in outs]).contiguous()
    return out


def check_image(image, who: str, channels=(1, 3)) -> None:
    if image.dim() != 4 or image.shape[1] not in channels:
        raise ValueError(f"{who} expects a B×C×H×W image batch (C in {channels}), got {tuple(image.shape)}")


class torch_threads:
    """Run a block with torch limited to `n` intra-op threads (None: unchanged), then restore the count.

    Extractors whose OpenCV detection alternates with a small network per image use n = 1: with more
    torch (OpenMP) threads, the idle workers spin-wait after every network call while OpenCV's own
    threads detect the next image, and the process burns up to 1.6x the CPU time (docs/speed.md)."""

    def __init__(self, n):
        self.n = None if n is None else int(n)

    def __enter__(self):
        import torch

        self.prev = torch.get_num_threads()
        if self.n is not None and self.n != self.prev:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        import torch

        if self.n is not None and torch.get_num_threads() != self.prev:
            torch.set_num_threads(self.prev)
        return False
