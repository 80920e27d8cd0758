"""Global-descriptor retrieval (NetVLAD by default) for the localization runners, with the
failure modes of an offline machine turned into clear errors:
- torchvision cannot be imported (hloc's NetVLAD builds a VGG16 from it);
- the NetVLAD weights are not cached and cannot be downloaded (URLError at construction);
- any other global extractor that fails to load.
Each message says what is missing, how to get it, and that --pairs FILE skips retrieval.
When hloc's NetVLAD cannot be imported (no usable torchvision), the runners' default `netvlad`
falls back to our `hf_netvlad` (hndesc_features/models/netvlad.py: the same weights file and
descriptors, plain torch); the log says which one runs."""
from __future__ import annotations

import importlib
import urllib.error
from pathlib import Path
from typing import Callable, Optional, Sequence

from .common import (BenchmarkError, extract, logger, require_hloc, resolve_feature_conf, resolve_matcher_conf,
                     slug)

PAIRS_HINT = ("or pass --pairs FILE with precomputed retrieval pairs (one `query db` pair per line; "
              "hloc ships NetVLAD pairs for Aachen v1.1 and InLoc in its pairs/ folder)")
NEEDS_TORCHVISION = ("netvlad", "openibl", "megaloc")
#: our NetVLAD conf (no torchvision), the fallback of hloc's `netvlad`
OURS_NETVLAD = "hf_netvlad"


def hloc_netvlad_import_error() -> Optional[str]:
    """None when hloc's NetVLAD module imports, else why not (e.g. torchvision missing)."""
    try:
        importlib.import_module("hloc.extractors.netvlad")
    except Exception as e:  # ImportError, or a torchvision build that fails at import
        return f"{type(e).__name__}: {e}"
    return None


def select_retrieval(name: str) -> str:
    """The global conf the runners use for --retrieval `name`: hloc's `netvlad` when its module
    imports, else our `hf_netvlad` (same weights file, same descriptors, no torchvision)."""
    if name != "netvlad":
        return name
    why = hloc_netvlad_import_error()
    if why is None:
        logger.info("Retrieval: hloc's NetVLAD (conf netvlad).")
        return name
    logger.info(f"Retrieval: hloc's NetVLAD cannot be imported ({why}; it builds its VGG16 with torchvision), "
                f"using our NetVLAD conf '{OURS_NETVLAD}' (same weights file and descriptors, plain torch).")
    return OURS_NETVLAD


def _check_our_netvlad(conf: dict) -> None:
    """hf_netvlad: its weights file exists (conf model.weights, else hloc's cache, downloaded there)."""
    from hndesc_features.models.netvlad import CHECKPOINT_URLS, default_weights_path, missing_weights_message

    m = conf["model"]
    model_name = m.get("model_name", "VGG16-NetVLAD-Pitts30K")
    if m.get("weights"):
        path = Path(m["weights"]).expanduser()
        if not path.is_file():
            raise BenchmarkError(f"{missing_weights_message(path, model_name)} Or {PAIRS_HINT}.")
        return
    if model_name not in CHECKPOINT_URLS:
        raise BenchmarkError(f"Unknown NetVLAD model '{model_name}'; one of {sorted(CHECKPOINT_URLS)}.")
    _ensure_netvlad_weights(default_weights_path(model_name), CHECKPOINT_URLS[model_name], model_name,
                            f" (hloc's cache torch.hub.get_dir()/netvlad/, where {OURS_NETVLAD} looks too, "
                            f"or set model.weights in the conf); {PAIRS_HINT}")


def _ensure_netvlad_weights(path: Path, url: str, model_name: str, hint: str) -> None:
    """Download hloc's NetVLAD .mat to `path` unless it is there (one clear error when offline)."""
    if path.exists():
        return
    from .download import download_file

    try:
        download_file(url, path, manual_hint=hint)
    except BenchmarkError as e:
        raise BenchmarkError(f"The NetVLAD weights {model_name}.mat are not cached. {e}") from None


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__.split("+")[0]
    except Exception:
        return "?"


def check_global_model(conf: dict) -> None:
    """Raise BenchmarkError naming what is missing for this global (retrieval) conf."""
    name = conf["model"]["name"]
    if name == OURS_NETVLAD:  # needs neither hloc nor torchvision
        return _check_our_netvlad(conf)
    require_hloc("retrieval")
    if name in NEEDS_TORCHVISION:
        try:
            import torchvision  # noqa: F401
        except Exception as e:
            raise BenchmarkError(
                f"Retrieval with '{name}' needs torchvision (hloc builds its backbone from "
                f"torchvision.models), which cannot be imported here ({type(e).__name__}: {e}). "
                f"Install the torchvision release matching torch {_torch_version()} "
                f"(`pip install torchvision` from the same index as torch), {PAIRS_HINT}.") from None
    try:
        module = importlib.import_module(f"hloc.extractors.{name}")
    except Exception as e:
        raise BenchmarkError(f"hloc's global extractor '{name}' cannot be imported ({type(e).__name__}: "
                             f"{e}); install its dependencies, {PAIRS_HINT}.") from None
    if name == "netvlad":
        import torch

        model_name = {**module.NetVLAD.default_conf, **conf["model"]}["model_name"]
        urls = getattr(module.NetVLAD, "checkpoint_urls", {})
        if model_name not in urls:
            raise BenchmarkError(f"Unknown NetVLAD model '{model_name}'; one of {sorted(urls)}.")
        _ensure_netvlad_weights(Path(torch.hub.get_dir(), "netvlad", model_name + ".mat"), urls[model_name],
                                model_name, f" (hloc looks for it there: torch.hub.get_dir()/netvlad/); {PAIRS_HINT}")
    else:
        from hloc.utils.base_model import dynamic_load
        from hloc import extractors

        try:
            dynamic_load(extractors, name)(conf["model"])
        except (urllib.error.URLError, OSError, RuntimeError, ImportError) as e:
            raise BenchmarkError(f"hloc's global extractor '{name}' could not be built ({type(e).__name__}: "
                                 f"{e}); its weights are probably not cached and cannot be downloaded; "
                                 f"{PAIRS_HINT}.") from None


def retrieval_pairs(retrieval: str, image_dir: Path, names: Sequence[str], global_path: Path,
                    output: Path, num_matched: int, query_names: Sequence[str],
                    db_names: Optional[Sequence[str]] = None, db_model: Optional[Path] = None,
                    overwrite: bool = False) -> Path:
    """Extract global descriptors of `names` and write the top-k db images of each query."""
    require_hloc("retrieval")
    from hloc import pairs_from_retrieval

    output = Path(output)
    if output.exists() and not overwrite:
        logger.info(f"Reusing retrieval pairs {output}.")
        return output
    conf = resolve_feature_conf(retrieval)
    check_global_model(conf)
    extract(conf, image_dir, global_path, names, as_half=False, overwrite=overwrite)
    kw = {"db_model": Path(db_model)} if db_model is not None else {"db_list": list(db_names or [])}
    if db_model is not None:
        import pycolmap

        num_db = len(pycolmap.Reconstruction(str(db_model)).images)
    else:
        num_db = len(set(db_names or []))
    if 0 < num_db < num_matched:  # hloc's top-k fails when k exceeds the database
        logger.info(f"Retrieval: top-{num_matched} of {num_db} database images = all of them.")
        num_matched = num_db
    pairs_from_retrieval.main(Path(global_path), output, num_matched, query_list=list(query_names), **kw)
    return output


def prepare_run(args, find_layout: Callable[[Path], dict]) -> tuple[dict, dict, dict, Path, str]:
    """A runner's first steps (after its hloc imports): check the dataset layout and, unless --pairs
    skips retrieval, the global model (fail now, not after hours of extraction), resolve the feature
    and matcher confs, create --outputs. Returns (layout, conf, matcher conf, outputs, tag)."""
    lay = find_layout(Path(args.dataset))
    if not args.pairs:  # fail now, not after hours of extraction, if retrieval cannot run
        args.retrieval = select_retrieval(args.retrieval)  # hloc's netvlad, else our hf_netvlad
        check_global_model(resolve_feature_conf(args.retrieval))
    conf = resolve_feature_conf(args.conf)
    mconf = resolve_matcher_conf(args.matcher)
    out = Path(args.outputs)
    out.mkdir(parents=True, exist_ok=True)
    return lay, conf, mconf, out, f"{slug(args.conf)}_{slug(args.matcher)}"


def runner_retrieval_pairs(args, out: Path, image_dir: Path, names: Sequence[str], query_names: Sequence[str],
                           **kw) -> tuple[Path, str]:
    """retrieval_pairs with a runner's --retrieval/--num_loc/--overwrite into `out`; returns the pairs
    file and the retrieval tag of the results file name (`<retrieval><num_loc>`)."""
    loc_pairs = out / f"pairs-query-{slug(args.retrieval)}{args.num_loc}.txt"
    retrieval_pairs(args.retrieval, image_dir, names, out / f"global-feats-{slug(args.retrieval)}.h5",
                    loc_pairs, args.num_loc, query_names, overwrite=args.overwrite, **kw)
    return loc_pairs, f"{slug(args.retrieval)}{args.num_loc}"
