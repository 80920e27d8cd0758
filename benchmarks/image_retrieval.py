"""Image retrieval on the revisited Oxford / Paris (ROxford5k, RParis6k): a global shortlist
re-ranked by local-feature inliers, mAP and mP@1/5/10 for the Easy / Medium / Hard protocols.

    python -m benchmarks.image_retrieval --dataset roxford5k --data datasets/revisitop --conf hndesc \
        --outputs outputs/retrieval [--global netvlad | --global_features G.h5 | --shortlist S.txt]
    python -m benchmarks.image_retrieval --dataset rparis6k --download datasets/revisitop   # network

Protocol (Radenović et al., CVPR 2018, as the revisitop code): the database is `imlist` of
gnd_<dataset>.pkl (images jpg/<name>.jpg), the queries are the `qimlist` images cropped to their
`bbx` (x1, y1, x2, y2; written losslessly to <outputs>/query_crops/query/<name>.png). Per query and
setup: Easy = positives `easy`, junk `junk`+`hard`; Medium = `easy`+`hard`, junk `junk`; Hard =
`hard`, junk `junk`+`easy`. Junk images are removed from the ranking before scoring; AP is the
trapezoidal revisitop AP; mP@k uses k' = min(k, rank of the last retrieved positive) as revisitop.
Pipeline: global descriptors of the database and the query crops (--global conf, default netvlad:
hloc's, or our torchvision-free hf_netvlad when hloc's cannot import; or --global_features, a
global-descriptor .h5 in hloc's layout whose names are `<name>.jpg` for the database and
`query/<name>.png` for the queries) → top --num_rerank (100) by cosine similarity (or --shortlist
FILE: `query db` lines in rank order, names with or without extension/`query/`) → local features of
the query crops and their shortlists (--conf: any conf of ours or hloc's) → --matcher (NN-mutual) →
re-ranking by the inliers of a fundamental matrix (OpenCV MAGSAC, 640 px frame, --ransac_thresh 3 px;
shortlist order breaks ties) → the re-ranked shortlist followed by the rest of the global ranking
(with --shortlist alone the ranking is the shortlist only: positives outside it count as missed).
Without --conf only the global ranking is evaluated. Resumable: every step skips what exists.
Layout: --data DIR holding <dataset>/ (or datasets/<dataset>/, or DIR itself) with jpg/ and
gnd_<dataset>.pkl, as revisitop's download.py writes it. R.json: {"map": {"easy", "medium", "hard"}
(%), "mp": {setup: [mP@1, mP@5, mP@10]} (%), "global": the same before re-ranking, ...}.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Optional, Sequence

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from .common import (BenchmarkError, extract, logger, match, read_pairs, resolve_feature_conf,
                     resolve_matcher_conf, run_cli, slug, write_json, write_pairs)

DATASETS = ("roxford5k", "rparis6k")
SETUPS = ("easy", "medium", "hard")
KAPPAS = (1, 5, 10)
GND_URL = "http://cmp.felk.cvut.cz/revisitop/data/datasets/{0}/gnd_{0}.pkl"
#: image archives (each a list of alternatives: the current names on the VGG site first)
IMAGE_URLS = {
    "roxford5k": [["https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz",
                   "http://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images.tgz"]],
    "rparis6k": [["https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1-v1.tgz",
                  "http://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1.tgz"],
                 ["https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2-v1.tgz",
                  "http://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2.tgz"]],
}
QUERY_PREFIX = "query/"


def manual(dataset: str) -> str:
    urls = " ".join(alts[0] for alts in IMAGE_URLS[dataset])
    return (f"Get {dataset} (http://cmp.felk.cvut.cz/revisitop/): unpack {urls} into DATA/{dataset}/jpg/ "
            f"(all images flat in jpg/) and put {GND_URL.format(dataset)} at DATA/{dataset}/; or run "
            f"`python -m benchmarks.image_retrieval --dataset {dataset} --download DATA`.")


# ----------------------------------------------------------------------------------------------
# the revisited protocol
def setup_gnd(gnd: Sequence[dict], setup: str) -> list[dict]:
    """Per query {"ok": positives, "junk": ignored} for the Easy / Medium / Hard setup."""
    out = []
    for g in gnd:
        easy, hard, junk = (list(np.atleast_1d(g.get(k, [])).astype(int)) for k in ("easy", "hard", "junk"))
        if setup == "easy":
            out.append({"ok": easy, "junk": junk + hard})
        elif setup == "medium":
            out.append({"ok": easy + hard, "junk": junk})
        elif setup == "hard":
            out.append({"ok": hard, "junk": junk + easy})
        else:
            raise ValueError(setup)
    return out


def compute_ap(pos: np.ndarray, nres: int) -> float:
    """Revisitop AP: `pos` the sorted 0-based ranks of the retrieved positives (junk removed), `nres`
    the number of positives; trapezoidal interpolation of precision over recall steps 1/nres."""
    ap = 0.0
    step = 1.0 / nres
    for j, rank in enumerate(pos):
        p0 = 1.0 if rank == 0 else j / rank
        p1 = (j + 1) / (rank + 1)
        ap += (p0 + p1) * step / 2.0
    return ap


def compute_map(ranks: Sequence[Sequence[int]], gnd: Sequence[dict], kappas=KAPPAS):
    """mAP, mP@kappas, per-query AP and P@k (revisitop's compute_map). ranks[i]: database indices of
    query i, best first (may be partial: positives it lacks count as missed). Queries without
    positives are skipped (NaN)."""
    nq = len(gnd)
    aps = np.full(nq, np.nan)
    prs = np.full((nq, len(kappas)), np.nan)
    for i in range(nq):
        ok = np.asarray(gnd[i]["ok"], int)
        if ok.size == 0:
            continue
        junk = np.asarray(gnd[i].get("junk", []), int)
        r = np.asarray(ranks[i], int)
        pos = np.flatnonzero(np.isin(r, ok))
        jpos = np.flatnonzero(np.isin(r, junk))
        pos = pos - np.searchsorted(jpos, pos)  # ranks once the junk before them is removed
        aps[i] = compute_ap(pos, len(ok))
        pos1 = pos + 1
        for j, k in enumerate(kappas):
            if pos1.size == 0:
                prs[i, j] = 0.0
            else:
                kq = min(int(pos1.max()), k)
                prs[i, j] = float((pos1 <= kq).sum()) / kq
    valid = ~np.isnan(aps)
    if not valid.any():
        return float("nan"), [float("nan")] * len(kappas), aps, prs
    return float(aps[valid].mean()), prs[valid].mean(0).tolist(), aps, prs


def evaluate(ranks: Sequence[Sequence[int]], gnd: Sequence[dict], kappas=KAPPAS) -> dict:
    """{"map": {setup: %}, "mp": {setup: [%...]}, "ap": {setup: per-query %}} for the three setups."""
    out = {"map": {}, "mp": {}, "ap": {}}
    for s in SETUPS:
        m, mp, aps, _ = compute_map(ranks, setup_gnd(gnd, s), kappas)
        out["map"][s] = 100.0 * m
        out["mp"][s] = [100.0 * v for v in mp]
        out["ap"][s] = [None if np.isnan(a) else 100.0 * a for a in aps]
    return out


# ----------------------------------------------------------------------------------------------
# dataset
def find_layout(data: Path, dataset: str) -> dict:
    """gnd (imlist, qimlist, gnd), image folder and file names; BenchmarkError naming what is missing."""
    if dataset not in DATASETS:
        raise BenchmarkError(f"Unknown dataset '{dataset}': one of {', '.join(DATASETS)}.")
    data = Path(data)
    if not data.is_dir():
        raise BenchmarkError(f"Data folder {data} does not exist. {manual(dataset)}")
    gname = f"gnd_{dataset}.pkl"
    root = next((d for d in (data / dataset, data / "datasets" / dataset, data) if (d / gname).is_file()), None)
    if root is None:
        jpg = next((d / "jpg" for d in (data / dataset, data / "datasets" / dataset, data) if (d / "jpg").is_dir()),
                   None)
        missing = [f"{dataset}/{gname}"] + ([] if jpg else [f"{dataset}/jpg/"])
        raise BenchmarkError(f"{data} lacks " + " and ".join(missing) + f". {manual(dataset)}")
    try:
        with open(root / gname, "rb") as f:
            cfg = pickle.load(f)
        imlist, qimlist, gnd = list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"])
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as e:
        raise BenchmarkError(f"{root / gname} is not a revisitop ground-truth file ({type(e).__name__}: {e}).") from None
    if len(gnd) != len(qimlist):
        raise BenchmarkError(f"{root / gname}: {len(qimlist)} queries but {len(gnd)} ground-truth entries.")
    images = root / "jpg"
    if not images.is_dir():
        raise BenchmarkError(f"{root} lacks jpg/ (the images). {manual(dataset)}")
    db = [f"{n}.jpg" for n in imlist]
    qsrc = [f"{n}.jpg" for n in qimlist]
    absent = sorted({n for n in db + qsrc if not (images / n).is_file()})
    if absent:
        raise BenchmarkError(f"{len(absent)} images of {gname} are missing from {images}, e.g. {absent[0]}. "
                             f"{manual(dataset)}")
    for i, g in enumerate(gnd):
        bad = [int(j) for k in ("easy", "hard", "junk") for j in np.atleast_1d(g.get(k, [])) if not 0 <= int(j) < len(db)]
        if bad or len(np.atleast_1d(g.get("bbx", []))) != 4:
            raise BenchmarkError(f"{root / gname}: query {qimlist[i]} has a bad bbx or indices {bad[:3]}.")
    return {"root": root, "images": images, "db": db, "queries": list(qimlist), "gnd": gnd}


def crop_queries(lay: dict, out: Path) -> tuple[Path, list[str]]:
    """Query images cropped to their bbx (PIL's rounding), PNG under <out>/query/; (root, names)."""
    names = []
    for q, g in zip(lay["queries"], lay["gnd"]):
        name = f"{QUERY_PREFIX}{q}.png"
        names.append(name)
        dst = out / name
        if dst.exists():
            continue
        img = cv2.imread(str(lay["images"] / f"{q}.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            raise BenchmarkError(f"Cannot read query image {lay['images'] / f'{q}.jpg'}.")
        h, w = img.shape[:2]
        x1, y1, x2, y2 = (int(round(float(v))) for v in np.atleast_1d(g["bbx"]))
        x1, x2 = max(0, min(w, x1)), max(0, min(w, x2))
        y1, y2 = max(0, min(h, y1)), max(0, min(h, y2))
        if x2 - x1 < 8 or y2 - y1 < 8:
            raise BenchmarkError(f"Query {q}: bbx {list(np.atleast_1d(g['bbx']))} is empty in a {w}×{h} image.")
        dst.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst), img[y1:y2, x1:x2])
    return out, names


def download(data: Path, dataset: str, image_urls: Optional[list] = None, gnd_url: Optional[str] = None) -> Path:
    """Fetch the images and gnd_<dataset>.pkl into data/<dataset>/{jpg/, gnd_<dataset>.pkl}."""
    from .download import download_file, unpack

    if dataset not in DATASETS:
        raise BenchmarkError(f"Unknown dataset '{dataset}': one of {', '.join(DATASETS)}.")
    root = Path(data) / dataset
    hint = f" ({manual(dataset)})"
    download_file(gnd_url or GND_URL.format(dataset), root / f"gnd_{dataset}.pkl", manual_hint=hint)
    for alts in image_urls or IMAGE_URLS[dataset]:
        arch, err = None, None
        for url in alts:
            try:
                arch = download_file(url, root / "raw" / url.rsplit("/", 1)[-1], manual_hint=hint)
                break
            except BenchmarkError as e:
                err = e
        if arch is None:
            raise err
        unpacked = unpack(arch, root / "raw" / (arch.name.split(".")[0]))
        (root / "jpg").mkdir(parents=True, exist_ok=True)
        for p in sorted(unpacked.rglob("*.jpg")):  # the Paris archives nest paris/<landmark>/: flatten
            t = root / "jpg" / p.name
            if not t.exists():
                p.replace(t)
    find_layout(Path(data), dataset)
    return root


# ----------------------------------------------------------------------------------------------
# pipeline
def _read_global(path: Path, names: Sequence[str]) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"Global-descriptor file {path} does not exist.")
    with h5py.File(str(path), "r") as f:
        missing = [n for n in names if n not in f or "global_descriptor" not in f[n]]
        if missing:
            raise BenchmarkError(f"{path} has no global_descriptor for {len(missing)} images, e.g. {missing[0]} "
                                 f"(database names are <name>.jpg, queries {QUERY_PREFIX}<name>.png).")
        d = np.stack([f[n]["global_descriptor"][()].astype(np.float32).reshape(-1) for n in names])
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


def global_ranks(qd: np.ndarray, dbd: np.ndarray) -> np.ndarray:
    """nq × ndb database indices by decreasing cosine similarity (stable: ties keep database order)."""
    return np.argsort(-(qd @ dbd.T), axis=1, kind="stable")


def _canonical(name: str, known: dict) -> Optional[str]:
    for cand in (name, name + ".jpg", name + ".png", QUERY_PREFIX + name, QUERY_PREFIX + name + ".png",
                 QUERY_PREFIX + Path(name).stem + ".png", Path(name).stem + ".jpg"):
        if cand in known:
            return cand
    return None


def read_shortlist(path: Path, q_names: Sequence[str], db: Sequence[str]) -> list[list[int]]:
    """Per query, database indices in the order of the `query db` lines of a shortlist file."""
    qidx = {n: i for i, n in enumerate(q_names)}
    didx = {n: i for i, n in enumerate(db)}
    out = [[] for _ in q_names]
    bad = []
    for q, d in read_pairs(Path(path)):
        cq = _canonical(q, qidx)
        cd = _canonical(d, didx)
        if cq is None or cd is None:
            bad.append(f"{q} {d}")
            continue
        if didx[cd] not in out[qidx[cq]]:
            out[qidx[cq]].append(didx[cd])
    if bad:
        raise BenchmarkError(f"{path}: {len(bad)} lines name images that are not queries/database images of "
                             f"the dataset, e.g. `{bad[0]}`.")
    return out


def label(name: Optional[str]) -> Optional[str]:
    """A conf's short name: the file stem for a YAML/JSON conf path, else the name itself."""
    if name is None:
        return None
    p = Path(str(name))
    return p.stem if p.suffix in (".yaml", ".yml", ".json") else str(name)


def run(args) -> dict:
    lay = find_layout(Path(args.data), args.dataset)
    out = Path(args.outputs)
    out.mkdir(parents=True, exist_ok=True)
    db, gnd = lay["db"], lay["gnd"]
    q_root, q_names = crop_queries(lay, out / "query_crops")
    logger.info(f"{args.dataset}: {len(db)} database images, {len(q_names)} queries.")

    conf = resolve_feature_conf(args.conf) if args.conf else None
    mconf = resolve_matcher_conf(args.matcher) if args.conf else None
    g_ranks, g_label = None, None
    if args.shortlist:
        short = read_shortlist(Path(args.shortlist), q_names, db)
        g_label = str(args.shortlist)
        if args.global_features:
            g_ranks = global_ranks(_read_global(args.global_features, q_names), _read_global(args.global_features, db))
    else:
        if args.global_features:
            gpath, g_label = Path(args.global_features), str(args.global_features)
        else:
            from .retrieval import check_global_model, select_retrieval

            g_label = select_retrieval(args.global_conf)
            gconf = resolve_feature_conf(g_label)
            check_global_model(gconf)
            gpath = out / f"global-feats-{slug(g_label)}.h5"
            extract(gconf, lay["images"], gpath, db, overwrite=args.overwrite)
            extract(gconf, q_root, gpath, q_names, overwrite=args.overwrite)
        g_ranks = global_ranks(_read_global(gpath, q_names), _read_global(gpath, db))
        short = [list(r[: args.num_rerank]) for r in g_ranks]
    short = [s[: args.num_rerank] for s in short]

    def full(i: int, head: list[int]) -> list[int]:
        """head, then the rest of the global ranking (head alone without global descriptors)."""
        if g_ranks is None:
            return list(head)
        seen = set(head)
        return list(head) + [j for j in g_ranks[i] if j not in seen]

    before = evaluate([full(i, s) for i, s in enumerate(short)], gnd)
    res = {"dataset": args.dataset, "data": str(lay["root"]), "conf": args.conf, "method": label(args.conf or g_label),
           "matcher": args.matcher if args.conf else None, "global": g_label, "num_rerank": args.num_rerank,
           "num_queries": len(q_names), "num_db": len(db), "ransac_thresh": args.ransac_thresh,
           "kappas": list(KAPPAS), "global_results": {"map": before["map"], "mp": before["mp"]}}
    if conf is None:
        final = before
        per = {q: {"top": [db[j] for j in full(i, s)[:10]]} for i, (q, s) in enumerate(zip(lay["queries"], short))}
    else:
        from .tokyo247 import rerank

        pairs = [(q_names[i], db[j]) for i, s in enumerate(short) for j in s]
        tag = f"{slug(label(args.conf))}_{slug(args.matcher)}"
        pairs_file = write_pairs(out / f"pairs-shortlist-{slug(Path(g_label).stem)}{args.num_rerank}.txt", pairs)
        features = out / f"feats-{slug(label(args.conf))}.h5"
        extract(conf, lay["images"], features, sorted({db[j] for s in short for j in s}), as_half=args.as_half,
                overwrite=args.overwrite)
        extract(conf, q_root, features, q_names, as_half=args.as_half, overwrite=args.overwrite)
        matches = match(mconf, pairs_file, features, out / f"matches-{tag}_{pairs_file.stem}.h5",
                        overwrite=args.overwrite)
        reranked = rerank(pairs, features, matches, args.ransac_thresh)
        didx = {n: j for j, n in enumerate(db)}
        heads = [[didx[d] for d, _ in reranked.get(q, [])] for q in q_names]
        final = evaluate([full(i, h) for i, h in enumerate(heads)], gnd)
        per = {q: {"top": [d for d, _ in reranked.get(qn, [])][:10],
                   "inliers": [n for _, n in reranked.get(qn, [])][:10]}
               for q, qn in zip(lay["queries"], q_names)}
    for i, q in enumerate(lay["queries"]):
        per[q]["ap"] = {s: final["ap"][s][i] for s in SETUPS}
    res.update({"map": final["map"], "mp": final["mp"], "reranked": conf is not None, "per_query": per})
    def fmt(r):
        return " / ".join(f"{r['map'][s]:.2f}" for s in SETUPS)

    logger.info(f"{args.dataset} mAP E/M/H {fmt(final)} (global ranking: {fmt(before)})")
    return res


def main(argv=None):
    doc = __doc__
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default="roxford5k", help='revisited dataset')
    parser.add_argument("--data", type=Path, default=Path("datasets/revisitop"),
                        help="folder holding <dataset>/{jpg/,gnd_<dataset>.pkl}")
    parser.add_argument("--conf", help="local feature conf for the re-ranking (ours or hloc's); "
                                       "omit it to evaluate the global ranking only")
    parser.add_argument("--matcher", default="NN-mutual", help='matcher conf for the re-ranking (default NN-mutual)')
    parser.add_argument("--outputs", type=Path, help="work folder (default outputs/<dataset>)")
    parser.add_argument("--output", type=Path, help="results JSON (default <outputs>/results_<conf>_<matcher>.json)")
    parser.add_argument("--global", dest="global_conf", default="netvlad",
                        help="global conf for the shortlist (default netvlad: hloc's, else our hf_netvlad)")
    parser.add_argument("--global_features", type=Path, help="precomputed global-descriptor .h5 (hloc layout)")
    parser.add_argument("--shortlist", type=Path, help="precomputed shortlist: `query db` lines in rank order")
    parser.add_argument("--num_rerank", type=int, default=100, help="shortlist length re-ranked")
    parser.add_argument("--ransac_thresh", type=float, default=3.0, help='fundamental-matrix RANSAC threshold (px) of the re-ranking')
    parser.add_argument("--as_half", action="store_true", help='store features as float16')
    parser.add_argument("--overwrite", action="store_true", help='recompute features/matches already in --outputs')
    parser.add_argument("--download", type=Path, metavar="DIR", help="fetch + unpack the dataset into DIR and exit")
    args = parser.parse_args(argv)
    if args.download:
        return download(args.download, args.dataset)
    if args.num_rerank < 1:
        parser.error("--num_rerank must be ≥ 1")
    args.outputs = args.outputs or Path("outputs") / args.dataset
    res = run(args)
    name = (f"results_{slug(label(args.conf))}_{slug(args.matcher)}.json" if args.conf
            else f"results_global_{slug(Path(res['global']).stem)}.json")
    write_json(args.output or Path(args.outputs) / name, res)
    return res


if __name__ == "__main__":
    run_cli(main)
