"""Tokyo 24/7 place recognition: NetVLAD shortlist re-ranked by local-feature inliers.

    python -m benchmarks.tokyo247 --dataset datasets/tokyo247 --outputs outputs/tokyo247 --conf rootsift \
        [--pairs SHORTLIST.txt]
    python -m benchmarks.tokyo247 --download datasets/tokyo247   # needs network

hloc has no Tokyo pipeline; this runner uses its steps: NetVLAD global descriptors of the
database and query images → top-100 shortlist per query (or --pairs FILE, one `query db` line
per shortlist entry in rank order, which skips retrieval) → local features (any conf) → matching
of each query with its shortlist → re-ranking by the number of RANSAC inliers of a fundamental
matrix (OpenCV MAGSAC, keypoints rescaled to a 640 px frame, 3 px) → recall@1/5/10: share of
queries with a database image within 25 m (UTM) among the first N.
Layout (as released): tokyo247.mat (dbStruct from netvlad_v100_datasets.tar.gz; also found as
datasets/tokyo247.mat), database_gsv_vga/<tile>/.../*.png (the 16 tars; dbStruct names say
.jpg), 247query_subset_v2/*.jpg.
R.json: {"recall": [r@1, r@5, r@10] (re-ranked, %), "recall_shortlist": [...], ...}.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from .common import (BenchmarkError, extract, logger, match, read_pairs, require_hloc, run_cli, runner_main,
                     runner_parser, slug, write_json, write_pairs)
from .retrieval import prepare_run, runner_retrieval_pairs

DB_TILES = [f"038{i:02d}" for i in range(14, 30)]
BASE = "https://data.ciirc.cvut.cz/public/projects/2015netVLAD"
DB_URL = BASE + "/Tokyo247/database_gsv_vga/{}.tar"
QUERY_URL = BASE + "/Tokyo247/queries/247query_subset_v2.zip"
STRUCT_URL = BASE + "/Pittsburgh250k/netvlad_v100_datasets.tar.gz"
MANUAL = (f"Get Tokyo 24/7 (https://www.di.ens.fr/willow/research/netvlad/): tokyo247.mat from "
          f"{STRUCT_URL}, the database tars {DB_URL.format('038XX')} (03814…03829) unpacked in "
          f"database_gsv_vga/, and {QUERY_URL} unpacked — or run "
          "`python -m benchmarks.tokyo247 --download DATASET`.")
RECALL_NS = (1, 5, 10)


def _cellstr(a) -> list[str]:
    return [str(np.asarray(x).squeeze()) if not isinstance(x, str) else x for x in np.asarray(a).ravel()]


def load_db_struct(path: Path) -> dict:
    """dbStruct of the NetVLAD release: image names and UTM coordinates (easting, northing)."""
    from scipy.io import loadmat

    try:
        m = loadmat(str(path), squeeze_me=True, struct_as_record=False)["dbStruct"]
    except Exception as e:
        raise BenchmarkError(f"Cannot read dbStruct from {path}: {e}") from None
    utm_db, utm_q = np.asarray(m.utmDb, float), np.asarray(m.utmQ, float)
    db, q = _cellstr(m.dbImageFns), _cellstr(m.qImageFns)
    utm_db = utm_db.reshape(2, -1).T if utm_db.shape[0] == 2 else utm_db.reshape(-1, 2)
    utm_q = utm_q.reshape(2, -1).T if utm_q.shape[0] == 2 else utm_q.reshape(-1, 2)
    if len(db) != len(utm_db) or len(q) != len(utm_q):
        raise BenchmarkError(f"{path}: names and UTM coordinates disagree in length.")
    thr = float(getattr(m, "posDistThr", 25) or 25)
    return {"db": db, "utm_db": utm_db, "queries": q, "utm_q": utm_q, "pos_dist_thr": thr}


def _resolve(dataset: Path, fn: str, roots) -> str | None:
    for r in roots:
        for cand in (fn, fn.replace(".jpg", ".png"), Path(fn).name):
            p = dataset / r / cand
            if p.exists():
                return p.relative_to(dataset).as_posix()
    return None


def find_layout(dataset: Path) -> dict:
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise BenchmarkError(f"Tokyo 24/7 folder {dataset} does not exist. {MANUAL}")
    struct = next((p for p in (dataset / "tokyo247.mat", dataset / "datasets" / "tokyo247.mat") if p.exists()), None)
    if struct is None:
        raise BenchmarkError(f"{dataset} lacks tokyo247.mat (dbStruct). {MANUAL}")
    s = load_db_struct(struct)
    db = [_resolve(dataset, n, ("database_gsv_vga", "")) for n in s["db"]]
    q = [_resolve(dataset, n, ("247query_subset_v2", "")) for n in s["queries"]]
    miss_db = [n for n, r in zip(s["db"], db) if r is None]
    miss_q = [n for n, r in zip(s["queries"], q) if r is None]
    if miss_db or miss_q:
        parts = []
        if miss_db:
            parts.append(f"{len(miss_db)}/{len(db)} database images (e.g. database_gsv_vga/{miss_db[0]}, "
                         "stored as .png)")
        if miss_q:
            parts.append(f"{len(miss_q)}/{len(q)} queries (e.g. 247query_subset_v2/{Path(miss_q[0]).name})")
        raise BenchmarkError(f"{dataset} lacks " + " and ".join(parts) + f". {MANUAL}")
    return {**s, "db_names": db, "q_names": q, "struct": struct}


def download(dataset: Path) -> Path:
    from .download import download_file, move_contents, unpack

    dataset = Path(dataset)
    hint = f". {MANUAL}"
    arch = download_file(STRUCT_URL, dataset / "raw" / "netvlad_v100_datasets.tar.gz", manual_hint=hint)
    unpack(arch, dataset / "raw" / "netvlad")
    found = list((dataset / "raw" / "netvlad").rglob("tokyo247.mat"))
    if not found:
        raise BenchmarkError(f"{arch} holds no tokyo247.mat.")
    (dataset / "tokyo247.mat").write_bytes(found[0].read_bytes())
    for tile in DB_TILES:
        t = download_file(DB_URL.format(tile), dataset / "raw" / f"{tile}.tar", manual_hint=hint)
        unpack(t, dataset / "database_gsv_vga")
    z = download_file(QUERY_URL, dataset / "raw" / "247query_subset_v2.zip", manual_hint=hint)
    unpack(z, dataset / "raw" / "queries")
    move_contents(dataset / "raw" / "queries", dataset)
    find_layout(dataset)
    return dataset


def count_inliers(kp0: np.ndarray, kp1: np.ndarray, size0, size1, thresh: float = 3.0) -> int:
    """Inliers of a fundamental matrix (MAGSAC), keypoints rescaled so the long side is 640 px."""
    if len(kp0) < 8:
        return 0
    s0, s1 = 640.0 / max(size0), 640.0 / max(size1)
    cv2.setRNGSeed(0)
    F, mask = cv2.findFundamentalMat((kp0 * s0).astype(np.float64), (kp1 * s1).astype(np.float64),
                                     cv2.USAC_MAGSAC, thresh, 0.999, 10000)
    if F is None or mask is None:
        return 0
    return int(mask.sum())


def rerank(pairs, features: Path, matches: Path, thresh: float = 3.0) -> dict[str, list[tuple[str, int]]]:
    """query → [(db, inliers)] sorted by decreasing inliers (shortlist order breaks ties)."""
    from .common import read_features

    short = defaultdict(list)
    for q, d in pairs:
        short[q].append(d)
    out = {}
    with h5py.File(str(features), "r") as ff, h5py.File(str(matches), "r") as fm:
        for q, dbs in tqdm(short.items(), desc="re-rank"):
            fq = read_features(features, q, ff)
            scored = []
            for rank, d in enumerate(dbs):
                fd = read_features(features, d, ff)
                m = _matches(fm, q, d)
                n = count_inliers(fq["keypoints"][m[:, 0]], fd["keypoints"][m[:, 1]],
                                  fq["image_size"], fd["image_size"], thresh)
                scored.append((-n, rank, d, n))
            out[q] = [(d, n) for _, _, d, n in sorted(scored)]
    return out


def _matches(fm: h5py.File, a: str, b: str) -> np.ndarray:
    def key(x, y):
        return x.replace("/", "-") + "/" + y.replace("/", "-")
    if key(a, b) in fm:
        m = fm[key(a, b)]["matches0"][()]
        idx = np.where(m != -1)[0]
        return np.stack([idx, m[idx]], -1)
    if key(b, a) in fm:
        m = fm[key(b, a)]["matches0"][()]
        idx = np.where(m != -1)[0]
        return np.stack([m[idx], idx], -1)
    raise BenchmarkError(f"Pair {a} {b} is missing from {fm.filename}.")


def recall_at(ranked: dict[str, list[str]], positives: dict[str, set[str]], ns=RECALL_NS) -> list[float]:
    qs = list(positives)
    if not qs:
        return [0.0 for _ in ns]
    return [float(100.0 * np.mean([bool(set(ranked.get(q, [])[:n]) & positives[q]) for q in qs])) for n in ns]


def run(args) -> dict:
    require_hloc("the Tokyo 24/7 runner")
    dataset = Path(args.dataset)
    lay, conf, mconf, out, tag = prepare_run(args, find_layout)
    db_utm = dict(zip(lay["db_names"], lay["utm_db"]))
    q_utm = dict(zip(lay["q_names"], lay["utm_q"]))
    thr = args.pos_dist or lay["pos_dist_thr"]
    positives = {q: {d for d, u in db_utm.items() if np.linalg.norm(u - uq) <= thr} for q, uq in q_utm.items()}

    if args.pairs:
        pairs = read_pairs(Path(args.pairs))
        unknown = sorted({n for p in pairs for n in p} - set(db_utm) - set(q_utm))
        if unknown:
            raise BenchmarkError(f"{args.pairs} names {len(unknown)} images that are not in the dataset, "
                                 f"e.g. {unknown[0]}.")
        shortlist_file = Path(args.pairs)
    else:
        shortlist_file, _ = runner_retrieval_pairs(args, out, dataset, lay["db_names"] + lay["q_names"],
                                                   lay["q_names"], db_names=lay["db_names"])
        pairs = read_pairs(shortlist_file)
    pairs = [(q, d) for q, d in pairs if q in q_utm]
    shortlist = defaultdict(list)
    for q, d in pairs:
        if len(shortlist[q]) < args.num_loc:
            shortlist[q].append(d)
    pairs = [(q, d) for q, ds in shortlist.items() for d in ds]
    pairs_file = write_pairs(out / f"pairs-shortlist-{shortlist_file.stem}.txt", pairs)
    names = sorted({n for p in pairs for n in p})
    features = extract(conf, dataset, out / f"feats-{slug(args.conf)}.h5", names, as_half=args.as_half,
                       overwrite=args.overwrite)
    matches = match(mconf, pairs_file, features, out / f"matches-{tag}_{pairs_file.stem}.h5")
    reranked = rerank(pairs, features, matches, args.ransac_thresh)
    ranked = {q: [d for d, _ in v] for q, v in reranked.items()}
    res = {
        "dataset": str(dataset), "conf": args.conf, "matcher": args.matcher,
        "retrieval": None if args.pairs else args.retrieval, "shortlist": str(shortlist_file),
        "num_loc": args.num_loc, "pos_dist_m": thr, "N": list(RECALL_NS),
        "recall": recall_at(ranked, positives), "recall_shortlist": recall_at(dict(shortlist), positives),
        "num_queries": len(positives),
        "num_queries_without_positive": sum(1 for v in positives.values() if not v),
        "per_query": {q: {"top": ranked.get(q, [])[:10], "inliers": [n for _, n in reranked.get(q, [])][:10],
                          "positive_ranks": [i + 1 for i, d in enumerate(ranked.get(q, [])) if d in positives[q]][:5]}
                      for q in positives},
    }
    logger.info(f"recall@{list(RECALL_NS)}: re-ranked {res['recall']}, shortlist {res['recall_shortlist']}")
    return res


def main(argv=None):
    parser = runner_parser(__doc__, "tokyo247", "shortlist pairs in rank order; skips retrieval",
                           output_help="results JSON (default: <outputs>/results_<conf>.json)")
    parser.add_argument("--num_loc", type=int, default=100, help="shortlist length")
    parser.add_argument("--pos_dist", type=float, help="positive radius in m (default: dbStruct's, 25)")
    parser.add_argument("--ransac_thresh", type=float, default=3.0, help='fundamental-matrix RANSAC threshold (px) of the re-ranking')
    return runner_main(parser, argv, run_and_save, download)


def run_and_save(args) -> dict:
    """run, then write its results to --output (default: <outputs>/results_<conf>_<matcher>.json)."""
    res = run(args)
    write_json(args.output or Path(args.outputs) / f"results_{slug(args.conf)}_{slug(args.matcher)}.json", res)
    return res


if __name__ == "__main__":
    run_cli(main)
