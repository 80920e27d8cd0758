"""InLoc (indoor localization against RGB-D scans) with hloc's steps, for any feature conf.

    python -m benchmarks.inloc --dataset datasets/inloc --outputs outputs/inloc --conf rootsift \
        [--matcher NN-mutual] [--pairs hloc/pairs/inloc/pairs-query-netvlad40.txt]
    python -m benchmarks.inloc --download datasets/inloc   # needs network (~100 GB unpacked)

Steps (as hloc's pipeline_InLoc notebook): extract local features of the database cutouts and
the iPhone 7 queries → NetVLAD top-40 retrieval of cutouts per query (or --pairs FILE, which
skips retrieval; hloc ships pairs/inloc/pairs-query-netvlad40.txt) → match → hloc.localize_inloc
(2D–3D from the cutouts' XYZcut depth, PnP with hloc's fixed iPhone 7 intrinsics, db images with
fewer than --skip_matches matches skipped) → submission file
`InLoc_hloc_<conf>_<matcher>_<retrieval>40.txt` for https://www.visuallocalization.net/submission/
(paste the returned DUC1/DUC2 numbers into benchmarks.report). Resumable.
Layout: database/cutouts/<floor>/<scan>/*.jpg (+ .jpg.mat with XYZcut),
database/alignments/<floor>/transformations/<bld>_trans_<scan>.txt, query/iphone7/*.JPG.
--gt FILE (results format) evaluates locally at InLoc's (0.25 m, 10°), (0.5 m, 10°), (1 m, 10°).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import (BenchmarkError, extract, logger, match, read_pairs, require_hloc, run_cli, runner_main,
                     runner_parser, slug, write_json)
from .loc_utils import GTCamera, pose_error, read_poses, recalls
from .retrieval import prepare_run, runner_retrieval_pairs

INLOC_THRESHOLDS = ((0.25, 10.0), (0.5, 10.0), (1.0, 10.0))
QUERY_URL = "http://www.ok.sc.e.titech.ac.jp/INLOC/materials/iphone7.tar.gz"
CUTOUT_URLS = {  # from github.com/HajimeTaira/InLoc_dataset (extract_db_all_mirror.sh); DUC1/DUC2 only
    "DUC1.tar.bz2": "https://www.dropbox.com/s/i19j9mnrrvbpywp/DUC1.tar.bz2?dl=1",
    "DUC2_1.tar.gz": "https://www.dropbox.com/s/7mqziqedmwtsiec/DUC2_1.tar.gz?dl=1",
    "DUC2_2.tar.gz": "https://www.dropbox.com/s/eu5bn4fgxr2kl97/DUC2_2.tar.gz?dl=1",
}
ALIGNMENT_URLS = {
    "DUC1.zip": "https://www.dropbox.com/s/djf0lvetc9nnx25/DUC1.zip?dl=1",
    "DUC2.zip": "https://www.dropbox.com/s/ywvyg0zldghyzkf/DUC2.zip?dl=1",
}
MANUAL = ("Get InLoc from https://www.visuallocalization.net/datasets/ (tools: "
          "https://github.com/HajimeTaira/InLoc_dataset): database/cutouts/{DUC1,DUC2} with the .mat "
          "files, database/alignments/{DUC1,DUC2}, query/iphone7/ — or run "
          "`python -m benchmarks.inloc --download DATASET`.")


def find_layout(dataset: Path) -> dict:
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise BenchmarkError(f"InLoc dataset folder {dataset} does not exist. {MANUAL}")
    missing = []
    cutouts = dataset / "database" / "cutouts"
    db = sorted(p.relative_to(dataset).as_posix() for p in cutouts.rglob("*.jpg")) if cutouts.is_dir() else []
    if not db:
        missing.append("database/cutouts/<floor>/<scan>/*.jpg")
    else:
        no_mat = [n for n in db if not (dataset / (n + ".mat")).exists()]
        if no_mat:
            missing.append(f"{len(no_mat)} cutout depth files (.jpg.mat), e.g. {no_mat[0]}.mat")
        for floor in sorted({n.split("/")[2] for n in db}):
            if not (dataset / "database" / "alignments" / floor / "transformations").is_dir():
                missing.append(f"database/alignments/{floor}/transformations/")
    qdir = dataset / "query" / "iphone7"
    queries = sorted(p.relative_to(dataset).as_posix() for p in qdir.glob("*.JPG")) if qdir.is_dir() else []
    if not queries:
        missing.append("query/iphone7/*.JPG")
    if missing:
        raise BenchmarkError(f"{dataset} lacks: " + "; ".join(missing) + f". {MANUAL}")
    return {"db": db, "queries": queries}


def download(dataset: Path) -> Path:
    from .download import download_file, unpack

    dataset = Path(dataset)
    hint = f". {MANUAL}"
    unpack(download_file(QUERY_URL, dataset / "query" / "iphone7.tar.gz", manual_hint=hint), dataset / "query")
    for name, url in CUTOUT_URLS.items():
        unpack(download_file(url, dataset / "database" / "cutouts" / name, manual_hint=hint),
               dataset / "database" / "cutouts")
    for name, url in ALIGNMENT_URLS.items():
        floor = name.split(".")[0]
        unpack(download_file(url, dataset / "database" / "alignments" / "zips" / name, manual_hint=hint),
               dataset / "database" / "alignments" / floor)
    find_layout(dataset)
    return dataset


def run(args) -> dict:
    require_hloc("the InLoc runner")
    from hloc import localize_inloc

    dataset = Path(args.dataset)
    lay, conf, mconf, out, tag = prepare_run(args, find_layout)
    if args.pairs:
        loc_pairs = Path(args.pairs)
        pairs = read_pairs(loc_pairs)
        names = sorted({n for p in pairs for n in p})
        absent = [n for n in names if not (dataset / n).exists()]
        if absent:
            raise BenchmarkError(f"{len(absent)} images named in {loc_pairs} are not in {dataset}, "
                                 f"e.g. {absent[0]}.")
        ret_tag = loc_pairs.stem
    else:
        names = lay["db"] + lay["queries"]
        loc_pairs, ret_tag = runner_retrieval_pairs(args, out, dataset, names, lay["queries"], db_names=lay["db"])
    features = extract(conf, dataset, out / f"feats-{slug(args.conf)}.h5", names, as_half=args.as_half,
                       overwrite=args.overwrite)
    matches = match(mconf, loc_pairs, features, out / f"matches-{tag}_{loc_pairs.stem}.h5")
    results = out / f"InLoc_hloc_{tag}_{ret_tag}.txt"
    try:
        localize_inloc.main(dataset, loc_pairs, features, matches, results, skip_matches=args.skip_matches)
    except ValueError as e:
        if "concatenate" in str(e):
            raise BenchmarkError(f"localize_inloc found no retrieved cutout with ≥ {args.skip_matches} "
                                 "matches for some query; lower --skip_matches or check the conf.") from None
        raise
    summary = {"dataset": str(dataset), "conf": args.conf, "matcher": args.matcher,
               "retrieval": None if args.pairs else args.retrieval, "pairs": str(loc_pairs),
               "submission_file": str(results), "num_queries": len({q for q, _ in read_pairs(loc_pairs)})}
    if args.gt:
        est, gt = read_poses(results), read_poses(Path(args.gt))
        errors = {}
        for q in est:
            if q in gt:
                Rg, tg = gt[q]
                errors[q] = pose_error(*est[q], GTCamera(np.eye(3), Rg.T, -Rg.T @ tg, 0, 0))
        summary["local_evaluation"] = {"recall": recalls(errors, sorted(gt), INLOC_THRESHOLDS),
                                       "thresholds": [list(t) for t in INLOC_THRESHOLDS],
                                       "errors": {q: list(e) for q, e in errors.items()}}
    write_json(out / f"summary_{tag}.json", summary)
    logger.info(f"Submission file: {results} — upload it to https://www.visuallocalization.net/submission/ "
                "(InLoc) and paste the returned numbers into benchmarks.report.")
    return summary


def main(argv=None):
    parser = runner_parser(__doc__, "inloc", "query→cutout pairs; skips retrieval (offline)")
    parser.add_argument("--num_loc", type=int, default=40, help='retrieved database images per query')
    parser.add_argument("--skip_matches", type=int, default=20, help='localize_inloc: skip database images with fewer matches')
    return runner_main(parser, argv, run, download, gt=True)


if __name__ == "__main__":
    run_cli(main)
