"""Aachen Day-Night v1.1 with hloc's steps, for any feature conf (ours or hloc's).

    python -m benchmarks.aachen_v1_1 --dataset datasets/aachen_v1.1 --outputs outputs/aachen_v1.1 \
        --conf rootsift [--matcher NN-mutual] [--pairs PAIRS.txt]
    python -m benchmarks.aachen_v1_1 --download datasets/aachen_v1.1   # needs network

Steps (as hloc/pipelines/Aachen_v1_1): extract local features of the db images of the SIFT
reference model and of the queries → covisibility-20 pairs from the SIFT model → match →
triangulate a model with the poses of the SIFT model (hloc.triangulation) → NetVLAD top-50
retrieval against the triangulated model (or --pairs FILE, which skips retrieval) → match →
hloc.localize_sfm → the submission file `Aachen-v1.1_hloc_<conf>_<matcher>_<retrieval>50.txt`
(`name qw qx qy qz tx ty tz`), to upload to https://www.visuallocalization.net/submission/;
paste the numbers the server returns into benchmarks.report. Resumable: every step skips what
exists (features/matches per image/pair, pairs files, the triangulated model).
Dataset layout: images_upright/{db,query}/ (or images/images_upright/), 3D-models/aachen_v_1_1/
(cameras, images, points3D .bin/.txt), queries/*_time_queries_with_intrinsics.txt.
--gt FILE (results format) evaluates locally, for dev datasets that have GT poses.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import (BenchmarkError, extract, logger, match, read_pairs, require_hloc, run_cli, runner_main,
                     runner_parser, slug, write_json)
from .loc_utils import AACHEN_THRESHOLDS, localize_sfm, localized_names, read_poses, recalls, triangulate
from .retrieval import prepare_run, runner_retrieval_pairs

BASE_URL = "https://data.ciirc.cvut.cz/public/projects/2020VisualLocalization/Aachen-Day-Night/"
MANUAL = (f"Get the dataset from https://www.visuallocalization.net/datasets/: `wget -r -np -nH -R "
          f"'index.html*' --cut-dirs=4 {BASE_URL} -P DATASET`, then unzip "
          "DATASET/images/database_and_query_images.zip and DATASET/aachen_v1_1.zip into DATASET "
          "(or run `python -m benchmarks.aachen_v1_1 --download DATASET`).")
MODEL_FILES = ("cameras", "images", "points3D")


def find_layout(dataset: Path) -> dict:
    """Paths of the dataset parts; BenchmarkError listing every missing part."""
    dataset = Path(dataset)
    missing = []
    if not dataset.is_dir():
        raise BenchmarkError(f"Aachen v1.1 dataset folder {dataset} does not exist. {MANUAL}")
    images = next((p for p in (dataset / "images_upright", dataset / "images" / "images_upright")
                   if p.is_dir()), None)
    if images is None:
        missing.append("images_upright/ (from images/database_and_query_images.zip + aachen_v1_1.zip)")
    else:
        for sub in ("db", "query"):
            if not (images / sub).is_dir():
                missing.append(f"{images.relative_to(dataset)}/{sub}/")
    sift = dataset / "3D-models" / "aachen_v_1_1"
    if not all((sift / f"{f}.bin").exists() or (sift / f"{f}.txt").exists() for f in MODEL_FILES):
        missing.append("3D-models/aachen_v_1_1/{cameras,images,points3D}.bin (from aachen_v1_1.zip)")
    queries = sorted((dataset / "queries").glob("*_time_queries_with_intrinsics.txt"))
    if not queries:
        missing.append("queries/*_time_queries_with_intrinsics.txt")
    if missing:
        raise BenchmarkError(f"{dataset} lacks: " + "; ".join(missing) + f". {MANUAL}")
    return {"images": images, "sift": sift, "queries": queries}


def download(dataset: Path, base_url: str = BASE_URL) -> Path:
    """Mirror the dataset folder of the benchmark's server, unpack the archives, check the layout."""
    from .download import mirror_directory, unpack

    dataset = Path(dataset)
    mirror_directory(base_url, dataset)
    for z in (dataset / "images" / "database_and_query_images.zip", dataset / "aachen_v1_1.zip"):
        if z.exists():
            unpack(z, dataset)
    find_layout(dataset)
    return dataset


def read_query_list(path: Path) -> list[str]:
    return [line.split()[0] for line in Path(path).read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def run(args) -> dict:
    require_hloc("the Aachen v1.1 runner")
    import pycolmap
    from hloc import pairs_from_covisibility

    lay, conf, mconf, out, tag = prepare_run(args, find_layout)

    sift = pycolmap.Reconstruction(str(lay["sift"]))
    db_names = sorted(img.name for img in sift.images.values())
    queries = {p: read_query_list(p) for p in lay["queries"]}
    q_names = sorted({n for v in queries.values() for n in v})
    absent = [n for n in db_names + q_names if not (lay["images"] / n).exists()]
    if absent:
        raise BenchmarkError(f"{len(absent)} images of the model/query lists are missing from "
                             f"{lay['images']}, e.g. {absent[0]}. {MANUAL}")

    features = extract(conf, lay["images"], out / f"feats-{slug(args.conf)}.h5", db_names + q_names,
                       as_half=args.as_half, overwrite=args.overwrite)
    sfm_pairs = out / f"pairs-db-covis{args.num_covis}.txt"
    if not sfm_pairs.exists():
        pairs_from_covisibility.main(lay["sift"], sfm_pairs, num_matched=args.num_covis)
    sfm_matches = match(mconf, sfm_pairs, features, out / f"matches-{tag}_{sfm_pairs.stem}.h5")
    reference = out / f"sfm_{tag}"
    triangulate(reference, lay["sift"], lay["images"], sfm_pairs, features, sfm_matches,
                overwrite=args.overwrite)

    if args.pairs:
        loc_pairs = Path(args.pairs)
        pairs = read_pairs(loc_pairs)
        unknown = sorted({q for q, _ in pairs} - set(q_names))[:3]
        if unknown:
            logger.warning(f"--pairs has queries that are not in the query lists, e.g. {unknown}.")
        ret_tag = loc_pairs.stem
    else:
        loc_pairs, ret_tag = runner_retrieval_pairs(args, out, lay["images"], db_names + q_names, q_names,
                                                    db_model=reference)
    loc_matches = match(mconf, loc_pairs, features, out / f"matches-{tag}_{Path(loc_pairs).stem}.h5")
    results = out / f"Aachen-v1.1_hloc_{tag}_{ret_tag}.txt"
    localize_sfm(reference, Path(args.dataset) / "queries" / "*_time_queries_with_intrinsics.txt",
                 loc_pairs, features, loc_matches, results, covisibility_clustering=args.covisibility_clustering)

    ok = localized_names(results)
    summary = {"dataset": str(args.dataset), "conf": args.conf, "matcher": args.matcher,
               "retrieval": None if args.pairs else args.retrieval, "pairs": str(loc_pairs),
               "submission_file": str(results), "num_queries": len(q_names),
               "num_localized": None if ok is None else len(ok),
               "reference_model": str(reference)}
    if args.gt:
        summary["local_evaluation"] = evaluate_local(results, Path(args.gt), queries, ok)
    write_json(out / f"summary_{tag}.json", summary)
    logger.info(f"Submission file: {results} — upload it to https://www.visuallocalization.net/submission/ "
                "(Aachen Day-Night v1.1) and paste the returned numbers into benchmarks.report.")
    return summary


def evaluate_local(results: Path, gt_file: Path, queries: dict, ok) -> dict:
    """Recall per query list (day/night) against GT poses in the results format."""
    from .loc_utils import GTCamera, pose_error

    est = read_poses(results)
    gt = read_poses(gt_file)
    out = {}
    for qfile, names in queries.items():
        cond = Path(qfile).name.split("_time_queries")[0]
        errors = {}
        for n in names:
            b = n.split("/")[-1]
            if b in est and b in gt and (ok is None or n in ok):
                Rg, tg = gt[b]
                cam = GTCamera(np.eye(3), Rg.T, -Rg.T @ tg, 0, 0)
                errors[n] = pose_error(*est[b], cam)
        out[cond] = {"recall": recalls(errors, names), "thresholds": [list(t) for t in AACHEN_THRESHOLDS],
                     "num_queries": len(names)}
    return out


def main(argv=None):
    parser = runner_parser(__doc__, "aachen_v1.1", "query→db pairs; skips retrieval (offline)",
                           retrieval_help="global conf (hloc's netvlad by default; our torchvision-free "
                                          "hf_netvlad when hloc's cannot import)")
    parser.add_argument("--num_covis", type=int, default=20, help='covisible database images per database image (triangulation pairs)')
    parser.add_argument("--num_loc", type=int, default=50, help='retrieved database images per query')
    parser.add_argument("--covisibility_clustering", action="store_true", help="hloc's covisibility clustering in localize_sfm")
    return runner_main(parser, argv, run, download, gt=True, as_half_help="store features in float16 (as hloc)")


if __name__ == "__main__":
    run_cli(main)
