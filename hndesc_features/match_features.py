"""Match features of image pairs into an hloc matches file (hloc's layout and flags).

    python -m hndesc_features.match_features --conf NN-mutual --pairs P --features F --export_dir E

`--features` is a feature-file path or a conf output name inside --export_dir, as in hloc.
Group `names_to_pair(a, b)`, `matches0` int16 (-1: unmatched), `matching_scores0` float16.
"""
from __future__ import annotations

import argparse
import pprint
import sys
from pathlib import Path
from typing import Dict, Optional, Union

import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import logger
from .confs import DEFAULT_FEATURE_CONF, feature_confs, matcher_confs
from .io import exclusive_lock
from .matching import nearest_neighbor


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    return names_to_pair(name0, name1, separator="_")


def parse_pairs(path: Path) -> list[tuple[str, str]]:
    if not Path(path).exists():
        raise FileNotFoundError(f"Pairs file {path} does not exist.")
    pairs = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            q, r = line.split()[:2]
            pairs.append((q, r))
    return pairs


def find_unique_new_pairs(pairs_all, match_path: Optional[Path] = None):
    pairs, seen = [], set()
    for i, j in pairs_all:
        if (j, i) not in seen and (i, j) not in seen:
            seen.add((i, j))
            pairs.append((i, j))
    if match_path is not None and Path(match_path).exists():
        with h5py.File(str(match_path), "r", libver="latest") as fd:
            pairs = [(i, j) for i, j in pairs
                     if not any(p in fd for p in (names_to_pair(i, j), names_to_pair(j, i),
                                                  names_to_pair_old(i, j), names_to_pair_old(j, i)))]
    return pairs


def _read(fd: h5py.File, name: str) -> torch.Tensor:
    if name not in fd:
        raise KeyError(f"Image {name} is not in feature file {fd.filename}.")
    return torch.from_numpy(fd[name]["descriptors"][()].astype(np.float32))[None]


@torch.no_grad()
def match_from_paths(conf: Dict, pairs_path: Path, match_path: Path, feature_path_q: Path,
                     feature_path_ref: Path, overwrite: bool = False) -> Path:
    logger.info(f"Matching local features with configuration:\n{pprint.pformat(conf)}")
    for p, what in ((feature_path_q, "Query"), (feature_path_ref, "Reference")):
        if not Path(p).exists():
            raise FileNotFoundError(f"{what} feature file {p} does not exist.")
    model_conf = dict(conf["model"])
    if model_conf.pop("name") != "nearest_neighbor":
        raise ValueError("Our matcher implements hloc's nearest_neighbor confs only; use hloc for others.")
    match_path = Path(match_path)
    match_path.parent.mkdir(exist_ok=True, parents=True)
    pairs = find_unique_new_pairs(parse_pairs(pairs_path), None if overwrite else match_path)
    if not pairs:
        logger.info("Skipping the matching.")
        return match_path
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with exclusive_lock(match_path), h5py.File(str(feature_path_q), "r") as fq, \
            h5py.File(str(feature_path_ref), "r") as fr, \
            h5py.File(str(match_path), "a", libver="latest") as fm:
        for n0, n1 in tqdm(pairs, desc="match", smoothing=0.1):
            d0, d1 = _read(fq, n0).to(device), _read(fr, n1).to(device)
            m0, s0 = nearest_neighbor(d0, d1, **model_conf)
            pair = names_to_pair(n0, n1)
            if pair in fm:
                del fm[pair]
            grp = fm.create_group(pair)
            grp.create_dataset("matches0", data=m0[0].cpu().short().numpy())
            grp.create_dataset("matching_scores0", data=s0[0].cpu().half().numpy())
    logger.info("Finished exporting matches.")
    return match_path


def main(conf: Dict, pairs: Path, features: Union[Path, str], export_dir: Optional[Path] = None,
         matches: Optional[Path] = None, features_ref: Optional[Path] = None,
         overwrite: bool = False) -> Path:
    """hloc.match_features.main's semantics."""
    if isinstance(features, Path) or Path(features).exists():
        features_q = Path(features)
        if matches is None:
            raise ValueError("Either provide both features and matches as Path or both as names.")
    else:
        if export_dir is None:
            raise ValueError(f"Provide an export_dir if features is not a file path: {features}.")
        features_q = Path(export_dir, features + ".h5")
        if matches is None:
            matches = Path(export_dir, f'{features}_{conf["output"]}_{Path(pairs).stem}.h5')
    features_ref = features_q if features_ref is None else Path(features_ref)
    return match_from_paths(conf, Path(pairs), Path(matches), features_q, features_ref, overwrite)


def cli(argv=None):
    from .confs import help_epilog

    confs = matcher_confs()
    parser = argparse.ArgumentParser(prog="python -m hndesc_features.match_features",
                                     description=__doc__.split("\n\n")[0], epilog=help_epilog("matchers"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, required=True, help="pairs file (one 'name0 name1' per line)")
    parser.add_argument("--export_dir", type=Path, help="folder holding <features>.h5; matches are written there")
    default_features = feature_confs()[DEFAULT_FEATURE_CONF]["output"]
    parser.add_argument("--features", type=str, default=default_features,
                        help="features name in export_dir (a feature conf's output) or a path to an .h5 "
                             f"(default: {default_features}, the output of the default conf {DEFAULT_FEATURE_CONF})")
    parser.add_argument("--matches", type=Path, help="explicit output matches .h5 path")
    parser.add_argument("--conf", type=str, default="NN-mutual", choices=list(confs.keys()), metavar="CONF",
                        help="matcher conf (listed below; default: NN-mutual)")
    parser.add_argument("--overwrite", action="store_true", help="recompute pairs already in the matches .h5")
    args = parser.parse_args(argv)
    try:
        main(confs[args.conf], args.pairs, args.features, args.export_dir, args.matches,
             overwrite=args.overwrite)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        logger.error(str(e))
        sys.exit(1)


if __name__ == "__main__":
    cli()
