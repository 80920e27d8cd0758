"""Keypoints reused from an existing hloc features file (descriptors on the keypoints of a map).

A dense descriptor conf (``hf_hndesc`` with backbone ``small`` / ``caps`` / ``r2d2``) can describe
the keypoints another extractor stored instead of detecting its own: ``model.keypoints`` is

- ``dog`` (default): detect (OpenCV DoG);
- a path to an hloc features ``.h5`` (e.g. ``outputs/feats-superpoint-n4096-r1024.h5``);
- a feature conf name, hloc's (``superpoint_aachen``, ``disk``, …) or ours: its output file
  ``<export_dir>/<that conf's output>.h5`` in the folder the extraction writes to.

From hloc's CLI, which takes no extra flags, set it with the environment variable
``HNDESC_KEYPOINTS`` (a conf name or an ``.h5`` path): every conf that can reuse keypoints then
reads them from there, and its output file is renamed so it never mixes with a detecting run::

    HNDESC_KEYPOINTS=superpoint_aachen python -m hloc.extract_features --conf hndesc_caps \\
        --image_dir images/ --export_dir outputs/
    # -> outputs/feats-hf-hndesc-caps-kp-superpoint_aachen-r1024.h5

The keypoints are kept: all of them, in their stored order (an SfM model built on them indexes
keypoints by position, so ``max_keypoints`` does not apply), and the file written holds the same
keypoint coordinates (original-image pixels, as hloc stores them): they are mapped into the
resized network input with hloc's own scale so that hloc maps them back bit for bit when both
confs resize alike (same ``resize_max``); with another input size, hloc's float32 mapping back
cannot hit every value and they agree to 1-2 float32 ulps (< 0.001 px).

hloc's ``extract_features.main`` hands a model only the image tensor. The image's name, the export
folder and hloc's conf table are read from that call's frame (its locals ``name``, ``export_dir``,
``feature_path``; unchanged since hloc 1.0), so hloc stays unmodified; our own
``extract_features`` also passes ``data["name"]``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np

ENV_VAR = "HNDESC_KEYPOINTS"
DETECT = "dog"


def from_env() -> Optional[str]:
    value = os.environ.get(ENV_VAR, "").strip()
    return value or None


def source_label(spec: str) -> str:
    """Short name of a keypoint source for output file names: a conf name, or an .h5 file's stem
    without its `feats-` prefix."""
    p = Path(spec)
    if p.suffix == ".h5":
        stem = p.stem
        return stem[len("feats-"):] if stem.startswith("feats-") else stem
    return spec


def output_with_source(output: str, spec: str) -> str:
    """`feats-hf-hndesc-caps-dog-n4096-r1024` → `feats-hf-hndesc-caps-kp-<source>-r1024` (the
    detector and keypoint-count tokens name what is no longer used)."""
    parts = output.split("-")
    kp = f"kp-{source_label(spec)}"
    if "dog" in parts:
        parts[parts.index("dog")] = kp
    else:
        parts.append(kp)
    return "-".join(p for p in parts if not (p.startswith("n") and p[1:].isdigit()))


def reuses_keypoints(model_conf: dict) -> bool:
    """Confs whose extractor can describe keypoints from a file (dense HNDesc backbones)."""
    return (model_conf.get("name") == "hf_hndesc" and model_conf.get("backbone", "small") != "patch"
            and model_conf.get("keypoints", DETECT) == DETECT)


def apply_env(confs: dict) -> list[str]:
    """With $HNDESC_KEYPOINTS set: the confs that can reuse keypoints read them from there and get
    a renamed output. Returns the names changed."""
    spec = from_env()
    if spec is None:
        return []
    changed = []
    for name, conf in confs.items():
        model = conf.get("model", {})
        if reuses_keypoints(model) and name != spec:  # the source conf itself still detects
            model["keypoints"] = spec
            conf["output"] = output_with_source(conf["output"], spec)
            changed.append(name)
    sys.stderr.write(f"[hndesc_features] {ENV_VAR}={spec}: confs {', '.join(changed)} describe those keypoints "
                     "(the others detect their own)\n")
    return changed


# ----------------------------------------------------------------------------------------------
def caller_context(max_depth: int = 30) -> dict:
    """`name`, `export_dir`, `confs` and `image_path` (the file being read, None where the caller has
    no dataset root) of the extract_features.main call running the model (hloc's or ours), read from
    its frame; {} when the model runs outside one."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        frame = frame.f_back
        if frame is None:
            break
        loc = frame.f_locals
        if frame.f_code.co_name == "main" and "feature_path" in loc and isinstance(loc.get("name"), str):
            fpath = loc.get("feature_path")
            export_dir = loc.get("export_dir") or (Path(fpath).parent if fpath is not None else None)
            dataset = loc.get("dataset")
            image_path = Path(dataset.root) / loc["name"] if hasattr(dataset, "root") else None
            return {"name": loc["name"], "export_dir": export_dir, "confs": frame.f_globals.get("confs"),
                    "image_path": image_path}
    return {}


def known_feature_confs(table: Optional[dict]) -> dict:
    """Conf tables a keypoint conf name is looked up in: the caller's (hloc's, with ours injected),
    hloc's if it imports, ours."""
    from hndesc_features.confs import feature_confs

    out = dict(feature_confs())
    mod = sys.modules.get("hloc.extract_features")
    if mod is None:
        try:
            import hloc.extract_features as mod  # noqa: F811
        except Exception:  # hloc absent or broken: our confs only
            mod = None
    if mod is not None and isinstance(getattr(mod, "confs", None), dict):
        out.update(mod.confs)
    if isinstance(table, dict):
        out.update(table)
    return out


def resolve_file(spec: str, export_dir: Optional[Path], table: Optional[dict] = None) -> Path:
    """The .h5 a keypoint source names (see the module docstring); errors say what to run."""
    p = Path(spec).expanduser()
    if p.suffix == ".h5" or p.is_file():
        cands = [p] + ([Path(export_dir) / p] if export_dir is not None and not p.is_absolute() else [])
        for c in cands:
            if c.is_file():
                return c
        raise FileNotFoundError(f"model.keypoints: features file {p} does not exist")
    confs = known_feature_confs(table)
    if spec not in confs:
        raise ValueError(f"model.keypoints '{spec}' is neither 'dog', an existing .h5 file nor a feature conf "
                         f"name (hloc's or ours, e.g. superpoint_aachen)")
    if export_dir is None:
        raise ValueError(f"model.keypoints '{spec}' names a conf: its file is looked up in the export folder, "
                         "known only inside extract_features.main (hloc's or ours); pass an .h5 path instead")
    path = Path(export_dir) / f"{confs[spec]['output']}.h5"
    if not path.is_file():
        raise FileNotFoundError(
            f"model.keypoints '{spec}': {path} does not exist; extract those keypoints first: `python -m "
            f"hloc.extract_features --conf {spec} --image_dir <images> --export_dir {export_dir}`")
    return path


def to_input_pixels(kpts: np.ndarray, original_wh, input_wh) -> np.ndarray:
    """Keypoints in original-image pixels → network-input pixels, chosen so that hloc's mapping back,
    `(k + .5) * scale - .5` in float32 with scale = float32(original / input), returns them exactly
    (to the last bit wherever such a float32 exists, else to 1-2 ulps)."""
    target = np.asarray(kpts, np.float32)
    scale = (np.asarray(original_wh, np.float64) / np.asarray(input_wh, np.float64)).astype(np.float32)
    half = np.float32(0.5)

    def forward(k):
        return (k + half) * scale[None] - half

    k = ((target.astype(np.float64) + 0.5) / scale.astype(np.float64)[None] - 0.5).astype(np.float32)
    for _ in range(4):  # walk at most a few ulps towards the exact preimage
        err = forward(k) - target
        if not err.any():
            break
        k = np.where(err > 0, np.nextafter(k, np.float32(-np.inf)),
                     np.where(err < 0, np.nextafter(k, np.float32(np.inf)), k))
    return k


def read_keypoints(path: Path, name: str, input_hw: tuple[int, int]):
    """(keypoints N×2 in network-input pixels, scores N) stored for image `name`, in stored order."""
    import h5py

    with h5py.File(str(path), "r", libver="latest") as f:
        if name not in f or "keypoints" not in f[name]:
            raise KeyError(f"model.keypoints: image '{name}' has no keypoints in {path} (extract it with the "
                           "keypoints' conf first)")
        grp = f[name]
        kpts = grp["keypoints"][()].astype(np.float32).reshape(-1, 2)
        sc = next((grp[k][()] for k in ("scores", "keypoint_scores") if k in grp), None)
        if "image_size" not in grp:
            raise KeyError(f"model.keypoints: {path} has no image_size for '{name}' (not an hloc features file?)")
        size = grp["image_size"][()]
    scores = np.ones(len(kpts), np.float32) if sc is None else np.asarray(sc, np.float32).reshape(-1)
    H, W = input_hw
    return to_input_pixels(kpts, (float(size[0]), float(size[1])), (W, H)), scores
