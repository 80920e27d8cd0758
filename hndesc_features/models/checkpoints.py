"""Small exported weights files and their loading (shared by the extractors and the trainer).

An exported file (``hndesc_features/weights/<name>.pt``) is a plain dict that loads with
``torch.load(path, weights_only=True)``::

    {"format": "hndesc_features.weights/1", "arch": "<module of hndesc_features.models>",
     "conf": {...model conf...}, "state_dict": {...}, "meta": {...}}

``load_weights`` checks all of it and raises ``CheckpointError`` naming the problem (missing,
truncated/corrupt, another architecture, mismatched tensors) instead of a bare traceback.
"""
from __future__ import annotations

import importlib
import inspect
import io
import os
from pathlib import Path
from typing import Optional

import torch

FORMAT = "hndesc_features.weights/1"
#: architecture-name aliases (weights files may store either name) -> the module that holds them
ARCH_ALIASES = {"wlrn": "kcc"}


class CheckpointError(RuntimeError):
    """A weights or checkpoint file that cannot be used (message says why)."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The weights or checkpoint file does not exist."""


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


#: how a file that torch.save wrote begins: a zip archive (torch >= 1.6), or the legacy format, a
#: protocol-2 pickle of torch's magic number 0x1950a86a20f9469cfc6c
TORCH_ZIP_MAGIC = b"PK\x03\x04"
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def describe_foreign_file(data: bytes) -> Optional[str]:
    """What a file that is not a torch weights file looks like (None when it starts like one)."""
    head = data[:64]
    if head.startswith(TORCH_ZIP_MAGIC) or head.startswith(TORCH_LEGACY_MAGIC):
        return None
    if head.startswith(b"\x80"):
        return "a Python pickle that torch.save did not write"
    kinds = [(b"\x89HDF", "an HDF5 file"), (b"\x93NUMPY", "a NumPy .npy array"), (b"\x1f\x8b", "a gzip archive"),
             (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"%PDF", "a PDF document")]
    for magic, kind in kinds:
        if head.startswith(magic):
            return kind
    if len(data) > 8 and data[8:10] == b'{"':
        return "a safetensors file (load it with the safetensors package, then torch.save its tensors)"
    try:
        text = data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        low = text.lstrip().lower()
        if low.startswith(("<!doctype html", "<html")) or "<html" in low[:512]:
            return "an HTML page, not the checkpoint (a download link that returned a web page?)"
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (it begins {first!r})"
    return f"binary data of another kind (it begins with the bytes {head[:8].hex(' ')})"


def safe_load(path, what: str = "checkpoint") -> dict:
    """torch.load(weights_only=True) with clear errors for missing / truncated / foreign files."""
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"{what} '{path}' not found (no such file)")
    data = path.read_bytes()
    if len(data) == 0:
        raise CheckpointError(f"{what} '{path}' is empty (0 bytes): truncated write?")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - turned into a clear message
        foreign = describe_foreign_file(data)
        if foreign is not None:
            raise CheckpointError(f"{what} '{path}' is not a torch weights file: it is {foreign}. A weights file "
                                  "is what torch.save writes (a .pt / .pth file).") from None
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, (EOFError, RuntimeError)) and any(
                s in msg for s in ("zip archive", "central directory", "Ran out of input", "EOF",
                                   "unexpected end", "failed finding", "file_size")):
            raise CheckpointError(f"{what} '{path}' is truncated or corrupt ({len(data)} bytes): {msg}") from None
        hint = ""
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            hint = (" — it holds Python objects that torch.load(weights_only=True) refuses; if you trust the "
                    "file, re-save its weights once: torch.save({'state_dict': torch.load(p, weights_only=False)"
                    "['state_dict']}, out)")
        raise CheckpointError(f"{what} '{path}' cannot be read as a torch weights file: {msg}{hint}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} '{path}' holds a {type(obj).__name__}, expected a dict")
    return obj


def model_class(arch: str):
    """The model class of hndesc_features/models/<arch>.py: its one nn.Module with a `default_conf`
    (or the module's `Model` attribute when it defines several)."""
    arch = ARCH_ALIASES.get(arch, arch)
    try:
        module = importlib.import_module(f"hndesc_features.models.{arch}")
    except ModuleNotFoundError as e:
        if e.name == f"hndesc_features.models.{arch}":
            raise ValueError(f"Unknown model architecture '{arch}': no hndesc_features/models/{arch}.py") from None
        raise
    if hasattr(module, "Model"):
        return module.Model
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if c.__module__ == module.__name__ and issubclass(c, torch.nn.Module)
               and "default_conf" in c.__dict__]
    if len(classes) != 1:
        raise ValueError(f"hndesc_features.models.{arch} must define one nn.Module with a "
                         f"`default_conf` (or a `Model` alias), found {[c.__name__ for c in classes]}")
    return classes[0]


def build_model(arch: str, conf: Optional[dict] = None) -> torch.nn.Module:
    return model_class(arch)(conf or {})


def export_weights(path, arch: str, conf: dict, state_dict: dict, meta: Optional[dict] = None) -> Path:
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    atomic_save({"format": FORMAT, "arch": arch, "conf": conf, "state_dict": state,
                 "meta": dict(meta or {})}, path)
    return Path(path)


def check_state_dict(model: torch.nn.Module, state: dict, source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if bad:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in bad[:5]))
        raise CheckpointError(f"{source} does not fit this model ({type(model).__name__}): " + "; ".join(parts))


def load_weights(path, arch: Optional[str] = None, conf_override: Optional[dict] = None,
                 obj: Optional[dict] = None):
    """(model in eval mode, file dict) from an exported weights file.

    arch: the expected architecture (error if the file holds another one).
    conf_override: inference-only conf keys to change (e.g. max_keypoints); the architecture keys
    stored in the file win for everything else. obj: the file's content when already loaded.
    """
    obj = safe_load(path, "weights file") if obj is None else obj
    if obj.get("format") != FORMAT or "state_dict" not in obj or "arch" not in obj:
        if "model" in obj and "optimizer" in obj:
            raise CheckpointError(f"'{path}' is a training checkpoint, not exported weights: "
                                  f"run `python -m hndesc_features.training.export <run dir>` first")
        raise CheckpointError(f"'{path}' is not an hndesc_features weights file "
                              f"(keys: {sorted(obj)[:8]}); expected format '{FORMAT}'")
    if arch is not None and ARCH_ALIASES.get(obj["arch"], obj["arch"]) != ARCH_ALIASES.get(arch, arch):
        raise CheckpointError(f"'{path}' holds weights of architecture '{obj['arch']}', "
                              f"but '{arch}' was requested")
    conf = {**obj.get("conf", {}), **(conf_override or {})}
    model = build_model(obj["arch"], conf)
    check_state_dict(model, obj["state_dict"], f"weights file '{path}'")
    model.load_state_dict(obj["state_dict"])
    return model.eval(), obj


def load_foreign_state(model: torch.nn.Module, obj: dict, source: str) -> torch.nn.Module:
    """Load a checkpoint that is not one of our exported files (a released checkpoint
    ``{"state_dict": ...}`` / ``{"model": ...}`` or a bare state dict, ``module.`` / ``net.`` /
    ``model.`` prefixes removed) into ``model``; the model may convert it (``convert_state_dict``)."""
    state = obj
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), dict):
            state = obj[key]
            break
    if not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{source} is neither our weights file nor a state dict")
    own = set(model.state_dict())
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "net.", "model."):
            if all(k.startswith(prefix) for k in state) and not all(k in own for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    if hasattr(model, "convert_state_dict"):
        state = model.convert_state_dict(state)
    check_state_dict(model, state, source)
    model.load_state_dict(state)
    return model
