"""All image pairs of a list or feature file (hloc's pairs_from_exhaustive).

    python -m hndesc_features.pairs_from_exhaustive --output pairs.txt --features feats.h5
"""
from __future__ import annotations

import argparse
import collections.abc as collections
from pathlib import Path
from typing import List, Optional, Union

from . import logger
from .extract_features import parse_image_list
from .io import list_h5_names


def _names(lst, features):
    if lst is not None:
        if isinstance(lst, (str, Path)):
            return parse_image_list(Path(lst))
        if isinstance(lst, collections.Iterable):
            return list(lst)
        raise ValueError(f"Unknown type for image list: {lst}")
    if features is not None:
        return list_h5_names(features)
    return None


def main(output: Path, image_list: Optional[Union[Path, List[str]]] = None,
         features: Optional[Path] = None, ref_list: Optional[Union[Path, List[str]]] = None,
         ref_features: Optional[Path] = None) -> Path:
    names_q = _names(image_list, features)
    if names_q is None:
        raise ValueError("Provide either a list of images or a feature file.")
    names_ref = _names(ref_list, ref_features)
    self_matching = names_ref is None
    names_ref = names_q if self_matching else names_ref
    pairs = [(a, b) for i, a in enumerate(names_q) for j, b in enumerate(names_ref)
             if not (self_matching and j <= i)]
    logger.info(f"Found {len(pairs)} pairs.")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text("\n".join(" ".join(p) for p in pairs))
    return Path(output)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, type=Path, help="output pairs file (one 'name0 name1' per line)")
    p.add_argument("--image_list", type=Path, help='text file of image names to pair (else --features)')
    p.add_argument("--features", type=Path, help='features .h5 whose image names are paired')
    p.add_argument("--ref_list", type=Path, help='reference image names: pair every query with these only')
    p.add_argument("--ref_features", type=Path, help='features .h5 of the reference images')
    main(**p.parse_args().__dict__)
