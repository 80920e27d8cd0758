"""The weights registry: which weights exist, where they are looked up, and the one loader.

Weights files are looked up in this order for a weights *name*:

1. the user weights directory, ``$HNDESC_WEIGHTS_DIR`` (default ``~/.cache/hndesc_features/weights``):
   checkpoints a user installs with ``python -m hndesc_features.weights install NAME FILE`` —
   the released HNDesc CAPS / R2D2 checkpoints, or their own trained weights (a file installed
   under a shipped name replaces the shipped one);
2. the package folder (this one): the small weights trained by our own code (``SHIPPED``);
3. for ``superpoint`` only: an hloc checkout's ``third_party/SuperGluePretrainedNetwork/models/weights/
   superpoint_v1.pth``, when the installed hloc is a checkout that has it (``HLOC_CHECKOUT_FILES``).

A conf's ``model.weights`` is ``null`` (the conf's default name), a name (``residual_sift`` or
``residual_sift.pt``) or a path to a file. Every file is read by ``models.checkpoints.safe_load``
(``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

PACKAGE_DIR = Path(__file__).resolve().parent
ENV_VAR = "HNDESC_WEIGHTS_DIR"
INSTALL_CMD = "python -m hndesc_features.weights install"
HNDESC_RELEASE = "https://github.com/imelekhov/HNDesc (README: 'The pretrained models are available here')"
SUPERPOINT_RELEASE = "https://github.com/magicleap/SuperGluePretrainedNetwork (models/weights/)"
#: weights files of an hloc checkout (``pip install -e`` of its git repository), found without install
HLOC_CHECKOUT_FILES = {"superpoint": "third_party/SuperGluePretrainedNetwork/models/weights/superpoint_v1.pth"}


@dataclass(frozen=True)
class Entry:
    arch: str  # module of hndesc_features.models that the weights fit
    description: str
    source: str  # how to get the file: the training command, or where the released file is
    shipped: bool = True  # False: the user installs it (not in the package)


#: the registry: weights name -> Entry (shipped ones are files in this folder)
REGISTRY = {
    "hndesc": Entry("residual", "HNDesc recipe on the residual RootSIFT backbone (conf hndesc)",
                    "python -m hndesc_features.training.train hndesc"),
    "hndesc_patch": Entry("hndesc_patch", "HNDesc patch CNN on DoG frames (stage-2 fine-tune)",
                          "python -m hndesc_features.training.train hndesc_patch_finetune"),
    "hndesc_patch_stage1": Entry("hndesc_patch", "HNDesc patch CNN, stage 1 (start of the fine-tune)",
                                 "python -m hndesc_features.training.train hndesc_patch"),
    "hndesc_small": Entry("hndesc_small", "HNDesc small dense CNN (stride 4)",
                          "python -m hndesc_features.training.train hndesc_small"),
    "residual_sift": Entry("residual", "residual descriptor on SIFT",
                           "python -m hndesc_features.training.train residual_sift"),
    "residual_rootsift_upright": Entry("residual", "residual descriptor on upright RootSIFT",
                                       "python -m hndesc_features.training.train residual_rootsift_upright"),
    "residual_surf": Entry("residual", "residual descriptor on our SURF",
                           "python -m hndesc_features.training.train residual_surf"),
    "kcc_orb": Entry("kcc", "Markus KCC patch CNN on ORB keypoints (stage-2 fine-tune)",
                     "python -m hndesc_features.training.train kcc_orb_finetune"),
    "kcc_orb_stage1": Entry("kcc", "Markus KCC patch CNN, stage 1 (start of the fine-tune)",
                            "python -m hndesc_features.training.train kcc_orb"),
    "hndesc_caps": Entry("hndesc_caps", "the paper's HNDesc-CAPS (ResNet-50 U-Net) released checkpoint",
                         f"download it from {HNDESC_RELEASE} (or train a CAPS row of confs/train/hndesc_paper/ "
                         "and `python -m hndesc_features.training.export RUN --name hndesc_caps`)", shipped=False),
    "hndesc_r2d2": Entry("hndesc_r2d2", "the paper's HNDesc-R2D2 released checkpoint",
                         f"download it from {HNDESC_RELEASE} (or train an R2D2 row of confs/train/hndesc_paper/ "
                         "and `python -m hndesc_features.training.export RUN --name hndesc_r2d2`)", shipped=False),
    "superpoint": Entry("superpoint", "Magic Leap's SuperPoint (superpoint_v1.pth), the keypoints of the *_sp confs",
                        f"take superpoint_v1.pth from {SUPERPOINT_RELEASE}", shipped=False),
}
SHIPPED = {k: v for k, v in REGISTRY.items() if v.shipped}
#: aliases of registry names
ALIASES = {"wlrn_orb": "kcc_orb", "wlrn_orb_stage1": "kcc_orb_stage1"}


class WeightsNotFoundError(FileNotFoundError):
    """No weights file for a name or path (the message says where it looked and what to do)."""


def user_dir() -> Path:
    """The user weights directory: $HNDESC_WEIGHTS_DIR, else ~/.cache/hndesc_features/weights."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hndesc_features" / "weights"


def canonical(name: str) -> str:
    name = name[:-3] if name.endswith(".pt") else name
    return ALIASES.get(name, name)


def hloc_checkout_file(name: str) -> Optional[Path]:
    """Where an hloc checkout keeps the weights ``name`` (None: hloc not importable, or no such file
    for that name). hloc's own extractors find them there relative to the ``hloc`` package."""
    rel = HLOC_CHECKOUT_FILES.get(canonical(name))
    if rel is None:
        return None
    import importlib.util

    try:
        spec = importlib.util.find_spec("hloc")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent.parent / rel


def _candidates(name: str) -> list[Path]:
    name = canonical(name)
    found = [user_dir() / f"{name}.pt", PACKAGE_DIR / f"{name}.pt"]
    hloc_file = hloc_checkout_file(name)
    return found + ([hloc_file] if hloc_file is not None else [])


def not_found_message(name: str, what: str = "") -> str:
    name = canonical(name)
    entry = REGISTRY.get(name)
    how = f"{entry.source}, then " if entry else ""
    hloc_file = hloc_checkout_file(name) if name in HLOC_CHECKOUT_FILES else None
    where = f"the package ({PACKAGE_DIR})" + (f" and hloc's checkout ({hloc_file})" if hloc_file else "")
    return (f"{what + ': ' if what else ''}no weights '{name}': looked in the user weights directory "
            f"{user_dir()} (${ENV_VAR}) and in {where}. "
            f"To use a checkpoint, {how}install it: `{INSTALL_CMD} {name} FILE` "
            f"(or set model.weights to the file's path).")


def resolve(weights: Union[None, str, Path], default: Optional[str] = None, what: str = "") -> Path:
    """The file for a conf's ``model.weights``: None/'default' → ``default`` (a name), an existing
    path → itself, otherwise a name looked up in ``user_dir()`` then the package folder."""
    if weights in (None, "", "default"):
        if default is None:
            raise WeightsNotFoundError(f"{what + ': ' if what else ''}model.weights is not set and there is no default")
        weights = default
    path = Path(str(weights)).expanduser()
    if path.is_file():
        return path
    if path.suffix in ("", ".pt") and len(path.parts) == 1:  # a bare name
        for cand in _candidates(path.name):
            if cand.is_file():
                return cand
        raise WeightsNotFoundError(not_found_message(path.name, what))
    raise WeightsNotFoundError(f"{what + ': ' if what else ''}weights file '{path}' not found (no such file)")


def load_model(weights: Union[None, str, Path], arch: str, default: Optional[str] = None,
               conf_override: Optional[dict] = None):
    """(nn.Module in eval mode, path) for weights of architecture ``arch``.

    Our exported files (``hndesc_features.weights/1``) and, for the HNDesc backbones, the released
    checkpoints (``{"state_dict": ...}`` or a bare state dict) are accepted.
    """
    from ..models.checkpoints import (FORMAT, CheckpointError, build_model, load_foreign_state, load_weights,
                                      safe_load)

    path = resolve(weights, default, what=arch)
    obj = safe_load(path, "weights file")
    if obj.get("format") == FORMAT:
        model, _ = load_weights(path, arch, conf_override, obj=obj)
        return model, path
    model = build_model(arch, conf_override or {})
    try:
        load_foreign_state(model, obj, str(path))
    except (ValueError, CheckpointError) as e:
        raise CheckpointError(f"'{path}' does not fit architecture '{arch}': {e}") from None
    return model.eval(), path


def installed() -> list[tuple[str, Path, bool]]:
    """(name, path, in user dir) of every weights file found: user dir, package, hloc's checkout."""
    out = []
    for folder, user in ((user_dir(), True), (PACKAGE_DIR, False)):
        if folder.is_dir():
            out += [(p.stem, p, user) for p in sorted(folder.glob("*.pt"))]
    for name in HLOC_CHECKOUT_FILES:  # hloc's checkout (found after the two folders)
        path = hloc_checkout_file(name)
        if path is not None and path.is_file():
            out.append((name, path, False))
    return out


def install(name: str, file: Union[str, Path], force: bool = False) -> Path:
    """Check that ``file`` loads as weights for ``name`` and copy it to ``user_dir()/<name>.pt``."""
    from ..models.checkpoints import CheckpointError

    name = canonical(name)
    src = Path(file).expanduser()
    if not src.is_file():
        raise WeightsNotFoundError(f"'{src}' does not exist")
    entry = REGISTRY.get(name)
    if entry is not None:  # known name: the file must fit its architecture
        load_model(src, entry.arch)
    else:  # a user's own name: it must be one of our exported files
        from ..models.checkpoints import load_weights

        load_weights(src)
    dst = user_dir() / f"{name}.pt"
    if dst.exists() and not force:
        raise CheckpointError(f"'{dst}' exists; pass --force to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst
