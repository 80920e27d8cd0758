"""Shared helpers of the benchmark runners: conf resolution (ours + hloc's), extraction and
matching dispatch, feature-file reading, clear CLI errors.

Any runner accepts a conf name from `hndesc_features.confs` (ours, model names `hf_*`) or from
`hloc.extract_features.confs` / `hloc.match_features.confs` when hloc is importable, or a path to
a YAML file holding a conf. Our extractors run through `hndesc_features.extract_features.main`,
hloc's through `hloc.extract_features.main`; both write the same hloc .h5 layout.
"""
from __future__ import annotations

import argparse
import copy
import os
import importlib
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import h5py
import numpy as np

logger = logging.getLogger("benchmarks")
if not logger.handlers:
    _h = logging.StreamHandler()
    _h.setFormatter(logging.Formatter(fmt="[%(asctime)s benchmarks %(levelname)s] %(message)s",
                                      datefmt="%Y/%m/%d %H:%M:%S"))
    logger.addHandler(_h)
    logger.setLevel(logging.INFO)
    logger.propagate = False

REPO_ROOT = Path(__file__).resolve().parents[1]


class BenchmarkError(RuntimeError):
    """A user-facing error: the CLI prints its message (no traceback) and exits with status 2."""


def run_cli(main: Callable[[Optional[Sequence[str]]], object], argv=None) -> None:
    """Run a runner's `main(argv)`, turning BenchmarkError into a one-paragraph message."""
    try:
        main(argv)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted (rerun the same command to resume)", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------
# command lines of the dataset runners (Aachen v1.1, InLoc, Tokyo 24/7)
def runner_parser(doc: str, name: str, pairs_help: str, retrieval_help: Optional[str] = None,
                  output_help: Optional[str] = None) -> argparse.ArgumentParser:
    """Parser with the first arguments of a runner; `doc` is its module docstring (first paragraph:
    description, the rest: epilog), `name` its folder under datasets/ and outputs/; output_help
    adds --output (a results JSON)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc.split("\n\n", 1)[1])
    parser.add_argument("--dataset", type=Path, default=Path(f"datasets/{name}"), help='dataset root (default datasets/<benchmark>)')
    parser.add_argument("--outputs", type=Path, default=Path(f"outputs/{name}"), help='work and results folder (default outputs/<benchmark>)')
    if output_help is not None:
        parser.add_argument("--output", type=Path, help=output_help)
    parser.add_argument("--conf", help="feature conf (ours or hloc's)")
    parser.add_argument("--matcher", default="NN-mutual", help="matcher conf (ours or hloc's; default NN-mutual)")
    parser.add_argument("--retrieval", default="netvlad", help=retrieval_help or (
        "global conf (default netvlad: hloc's, or our torchvision-free hf_netvlad when hloc's cannot import)"))
    parser.add_argument("--pairs", type=Path, help=pairs_help)
    return parser


def runner_main(parser: argparse.ArgumentParser, argv, run: Callable, download: Callable,
                gt: bool = False, as_half_help: Optional[str] = None):
    """Add a runner's last arguments, parse argv, then `download(DIR)` (--download) or `run(args)`."""
    parser.add_argument("--as_half", action="store_true", help=as_half_help)
    if gt:
        parser.add_argument("--gt", type=Path, help="GT poses (results format) for a local evaluation")
    parser.add_argument("--overwrite", action="store_true", help='recompute features/matches already in the work folder')
    parser.add_argument("--download", type=Path, metavar="DIR", help="fetch + unpack the dataset and exit")
    args = parser.parse_args(argv)
    if args.download:
        return download(args.download)
    if not args.conf:
        parser.error("--conf is required")
    return run(args)


# ----------------------------------------------------------------------------------------------
# hloc
def hloc_available() -> bool:
    try:
        import hloc  # noqa: F401
    except Exception:
        return False
    return True


def require_hloc(what: str = "this benchmark"):
    """Import hloc or raise a BenchmarkError saying how to install it."""
    try:
        import hloc
    except Exception as e:  # ImportError, or a broken install raising anything else
        raise BenchmarkError(
            f"{what} needs hloc (Hierarchical-Localization), which cannot be imported ({e}). "
            "Install it from its git checkout: `git clone --recursive "
            "https://github.com/cvg/Hierarchical-Localization && pip install --no-deps -e "
            "Hierarchical-Localization` plus `pip install hndesc-features[hloc]`.") from None
    return hloc


# ----------------------------------------------------------------------------------------------
# confs
def _our_confs(kind: str) -> dict:
    try:
        mod = importlib.import_module("hndesc_features.confs")
    except Exception:
        return {}
    obj = getattr(mod, f"{kind}_confs", None)
    if obj is None:
        return {}
    return copy.deepcopy(obj() if callable(obj) else obj)


def _hloc_confs(kind: str) -> dict:
    if not hloc_available():
        return {}
    try:
        mod = importlib.import_module("hloc.extract_features" if kind == "feature"
                                      else "hloc.match_features")
    except Exception as e:  # hloc importable but this module broken (missing optional dep)
        logger.debug(f"hloc {kind} confs unavailable: {e}")
        return {}
    return copy.deepcopy(getattr(mod, "confs", {}))


def available_confs(kind: str = "feature") -> dict[str, str]:
    """name → 'hndesc_features' | 'hloc' (ours shadow hloc's on a name clash)."""
    out = {n: "hloc" for n in _hloc_confs(kind)}
    out.update({n: "hndesc_features" for n in _our_confs(kind)})
    return out


def _resolve(name: str, kind: str) -> dict:
    p = Path(name)
    if p.suffix in (".yaml", ".yml", ".json") and p.exists():
        import yaml

        conf = yaml.safe_load(p.read_text())
        conf.setdefault("output", p.stem)
        return conf
    ours = _our_confs(kind)
    if name in ours:
        return ours[name]
    theirs = _hloc_confs(kind)
    if name in theirs:
        return theirs[name]
    avail = sorted(set(ours) | set(theirs))
    hint = "" if hloc_available() else " (hloc is not importable, so its confs are not listed)"
    raise BenchmarkError(f"Unknown {kind} conf '{name}'. Available: {', '.join(avail)}{hint}.")


def resolve_feature_conf(name: str) -> dict:
    """A deep copy of the feature conf called `name` (ours first, then hloc's, or a YAML path)."""
    conf = _resolve(name, "feature")
    for key in ("output", "model"):
        if key not in conf:
            raise BenchmarkError(f"Feature conf '{name}' has no '{key}' entry.")
    conf.setdefault("preprocessing", {})
    return conf


def resolve_matcher_conf(name: str) -> dict:
    return _resolve(name, "matcher")


def split_names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def conf_with(conf: dict, preprocessing: Optional[dict] = None, model: Optional[dict] = None,
              output: Optional[str] = None) -> dict:
    """Copy of conf with some preprocessing / model keys replaced (None values delete a key)."""
    conf = copy.deepcopy(conf)
    for section, upd in (("preprocessing", preprocessing), ("model", model)):
        for k, v in (upd or {}).items():
            if v is None:
                conf.setdefault(section, {}).pop(k, None)
            else:
                conf.setdefault(section, {})[k] = v
    if output is not None:
        conf["output"] = output
    return conf


def is_ours(conf: dict) -> bool:
    return str(conf["model"]["name"]).startswith("hf_")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(name)).strip("_") or "x"


# ----------------------------------------------------------------------------------------------
# extraction / matching dispatch
def _extract_main(conf: dict):
    """Our extract_features.main for our confs, hloc's for hloc's.

    HNDESC_BENCH_EXTRACTOR=hloc routes our confs through the real `hloc.extract_features.main` too
    (hloc then loads our extractor through the plug-in hook): the "through the real hloc CLI" runs.
    """
    via = os.environ.get("HNDESC_BENCH_EXTRACTOR", "auto").strip().lower()
    if via not in ("auto", "hloc", "ours"):
        raise BenchmarkError(f"HNDESC_BENCH_EXTRACTOR must be 'auto', 'hloc' or 'ours', got '{via}'.")
    if is_ours(conf) and via != "hloc":
        try:
            from hndesc_features import extract_features
        except ImportError as e:
            raise BenchmarkError(f"hndesc_features.extract_features cannot be imported ({e}).") from None
        return extract_features.main
    require_hloc(f"conf model '{conf['model']['name']}' (an hloc extractor)")
    from hloc import extract_features

    return extract_features.main


def extract(conf: dict, image_dir: Path, feature_path: Path, image_list: Optional[Iterable[str]] = None,
            as_half: bool = False, overwrite: bool = False) -> Path:
    """Extract local (or global) features into `feature_path` with our or hloc's extractor.

    Images already in the file are skipped unless overwrite (resumable, as in hloc).
    as_half defaults to False here: float16 keypoints lose sub-pixel precision (spacing 0.5 px
    above 512, 1 px above 1024), which biases MMA@1.
    """
    fn = _extract_main(conf)
    feature_path = Path(feature_path)
    feature_path.parent.mkdir(parents=True, exist_ok=True)
    names = None if image_list is None else list(image_list)
    if names is not None and not names:
        return feature_path
    try:
        return fn(conf, Path(image_dir), as_half=as_half, image_list=names,
                  feature_path=feature_path, overwrite=overwrite)
    except ImportError as e:
        raise BenchmarkError(
            f"Extractor '{conf['model']['name']}' cannot be loaded ({type(e).__name__}: {e}). For hloc's "
            "extractors, clone hloc with its submodules (`git clone --recursive`) and install their "
            "dependencies; or use another conf.") from None
    except (OSError, RuntimeError) as e:
        text = f"{type(e).__name__}: {e}"
        if any(k in text for k in ("URL", "urlopen", "HTTP Error", "Name or service not known",
                                   "Failed to load weights", "Temporary failure in name resolution")):
            raise BenchmarkError(
                f"Extractor '{conf['model']['name']}' needs weights that are not cached and could not be "
                f"downloaded ({text}). Download them on a machine with network access into the cache "
                f"(torch.hub.get_dir() = {_hub_dir()}) or use another conf.") from None
        raise


def _hub_dir() -> str:
    try:
        import torch

        return torch.hub.get_dir()
    except Exception:
        return "~/.cache/torch/hub"


def match(conf: dict, pairs: Path, features: Path, matches: Path, features_ref: Optional[Path] = None,
          overwrite: bool = False) -> Path:
    """Match the pairs with our matcher (nearest_neighbor confs) or hloc's (any other)."""
    name = conf["model"]["name"]
    fn = None
    if name == "nearest_neighbor":
        try:
            from hndesc_features import match_features as mf

            fn = mf.main
        except ImportError:
            fn = None
    if fn is None:
        require_hloc(f"matcher '{name}'")
        from hloc import match_features as mf

        fn = mf.main
    matches = Path(matches)
    matches.parent.mkdir(parents=True, exist_ok=True)
    kw = dict(matches=matches, overwrite=overwrite)
    if features_ref is not None:
        kw["features_ref"] = Path(features_ref)
    return fn(conf, Path(pairs), Path(features), **kw)


# ----------------------------------------------------------------------------------------------
# files
def h5_names(path: Path) -> list[str]:
    """Names of the image groups of an hloc feature file (hndesc_features.io.list_h5_names)."""
    from hndesc_features.io import list_h5_names

    return list_h5_names(path)


def read_features(path: Path, name: str, fd: Optional[h5py.File] = None) -> dict:
    """keypoints N×2 (float64), descriptors N×D (float32), scores N or None, image_size (W, H)."""
    def _read(f):
        if name not in f:
            raise BenchmarkError(f"Image {name} is missing from feature file {path}.")
        g = f[name]
        kp = g["keypoints"][()].astype(np.float64).reshape(-1, 2)
        desc = g["descriptors"][()].astype(np.float32)
        if desc.ndim != 2:
            raise BenchmarkError(f"{path}:{name}/descriptors has shape {desc.shape}, expected D×N.")
        if desc.shape[1] != len(kp) and desc.shape[0] == len(kp):
            desc = desc.T  # tolerate N×D files
        desc = np.ascontiguousarray(desc.T)
        scores = None
        for key in ("scores", "keypoint_scores"):
            if key in g:
                scores = g[key][()].astype(np.float64).reshape(-1)
                break
        size = g["image_size"][()] if "image_size" in g else None
        return {"keypoints": kp, "descriptors": desc, "scores": scores, "image_size": size}

    if fd is not None:
        return _read(fd)
    with h5py.File(str(path), "r", libver="latest") as f:
        return _read(f)


def write_pairs(path: Path, pairs: Iterable[tuple[str, str]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    return path


def read_pairs(path: Path) -> list[tuple[str, str]]:
    if not Path(path).exists():
        raise BenchmarkError(f"Pairs file {path} does not exist.")
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            a, b = line.split()[:2]
            out.append((a, b))
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj) -> Path:
    """Write strict JSON (NaN/inf become null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    return path


def load_json(path: Path):
    path = Path(path)
    if not path.exists():
        raise BenchmarkError(f"{path} does not exist.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path} is not valid JSON: {e}") from None


def shared_data_dir() -> Optional[Path]:
    """`../shared/data` from the repository root (see training/datasets/dev_images.py)."""
    try:
        from hndesc_features.training.datasets.dev_images import shared_data_dir as f
    except ImportError:
        try:
            from hndesc_features.training.datasets.dev_images import shared_data_dir as f
        except ImportError:
            cand = REPO_ROOT.parent / "shared" / "data"
            return cand.resolve() if cand.is_dir() else None
    return f()
