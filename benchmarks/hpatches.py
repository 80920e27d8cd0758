"""HPatches benchmarks on any folder in HPatches layout (`<seq>/1.ppm … 6.ppm`, `H_1_2 … H_1_6`;
`i_*` photometric, `v_*` viewpoint sequences).

    python -m benchmarks.hpatches --dataset_dir D --conf rootsift,superpoint_aachen --output R.json
    python -m benchmarks.hpatches --download datasets/  # the official release (needs network)

Protocols (`--protocols mma,homography`, both by default):
- mma (HNDesc / D2-Net): features at full resolution, mutual nearest neighbours on the
  L2-normalised descriptors, a match is correct if its reprojection error through the GT
  homography is ≤ t px; MMA@t is averaged over image pairs (a pair without matches scores 0),
  t = 1..10, split i / v / all. The 8 sequences with images over 1600×1200 excluded by D2-Net
  (i_contruction, i_crownnight, i_dc, i_pencils, i_whitebuilding, v_artisans, v_astronautis,
  v_talent) are skipped unless --all_sequences.
- homography (SuperPoint protocol, residual paper's Table 1): images resized to 240×320 (keep the
  300 best keypoints) and 480×640 (1000 best), keypoints restricted to the region seen in both
  images, mutual-NN matches, OpenCV RANSAC homography (3 px); Cor-ε = share of pairs whose mean
  corner error ≤ ε (1, 3, 5 px); matching score = correct matches (≤ 3 px) over keypoints in the
  shared region, averaged over both directions.
- paper (`--protocols paper`: the HNDesc paper's tables, as its official evaluation computes them):
  MMA@1..10 at full resolution with every keypoint the conf detects (max_keypoints -1), mutual
  NN, reported per split and as avg = (i + v) / 2; homography estimation and matching score at a
  fixed 640×480: every image resized to exactly 640×480 (PIL bicubic, the descriptor's
  preprocessing; GT homographies scaled by diag(sx, sy)), the 1000 best keypoints per image;
  Cor-ε (ε = 1, 3, 5 px, mean corner error) from mutual-NN matches of the keypoints seen in the
  other image, OpenCV RANSAC (3 px, 5000 iterations), fewer than 4 matches = failure; matching
  score = share of each image's nearest-neighbour matches (not mutual) within 3 px of the GT, over
  those that land inside the other image, averaged over both directions.
Writes R.json (`{conf: {"mma": {"all": [MMA@1..10], "i": …, "v": …}, "homography": {...}, "paper": {...}}}`),
R.md (tables) and R_mma.png (MMA curves). Features are cached in --export_dir (resumable).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import cv2
import h5py
import numpy as np
import torch
from tqdm import tqdm

from hndesc_features.geometry import corner_error, estimate_homography, mma, mutual_nn, reprojection_errors, warp_points

from .common import (BenchmarkError, conf_with, extract, logger, read_features, resolve_feature_conf,
                     run_cli, slug, split_names, write_json)

HPATCHES_URL = "http://icvl.ee.ic.ac.uk/vbalnt/hpatches/hpatches-sequences-release.tar.gz"
HPATCHES_DIRNAME = "hpatches-sequences-release"
# The release's sha256. No checksum is published with the archive; this is the one computed on
# the first verified download (see download_hpatches); pass --sha256 to check against your own.
HPATCHES_SHA256: Optional[str] = None
HPATCHES_NUM_SEQUENCES = {"i": 57, "v": 59}
D2NET_EXCLUDED = ("i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
                  "v_artisans", "v_astronautis", "v_talent")
IMAGE_EXTS = (".ppm", ".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff")
MMA_THRESHOLDS = tuple(range(1, 11))
SP_SETTINGS = {"240x320": ((240, 320), 300), "480x640": ((480, 640), 1000)}
COR_THRESHOLDS = (1, 3, 5)
#: the HNDesc paper's HPatches protocol: fixed size (h, w), keypoints per image there, RANSAC
PAPER_SIZE, PAPER_KEYPOINTS, PAPER_RANSAC = (480, 640), 1000, {"px": 3.0, "max_iters": 5000, "confidence": 0.995}
PROTOCOLS = ("mma", "homography", "paper")


# ----------------------------------------------------------------------------------------------
# dataset
def read_homography(path: Path) -> np.ndarray:
    try:
        H = np.array([[float(v) for v in line.split()] for line in Path(path).read_text().splitlines()
                      if line.strip()])
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"Cannot read homography {path}: {e}") from None
    if H.shape != (3, 3):
        raise BenchmarkError(f"Homography {path} has shape {H.shape}, expected 3×3.")
    return H


def image_file(seq_dir: Path, idx: int) -> Path:
    for ext in IMAGE_EXTS:
        p = seq_dir / f"{idx}{ext}"
        if p.exists():
            return p
    raise BenchmarkError(f"Sequence {seq_dir} has no image {idx}.* ({', '.join(IMAGE_EXTS)}).")


def list_sequences(root: Path, exclude: Sequence[str] = D2NET_EXCLUDED) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"HPatches folder {root} does not exist. Get the release with "
                             f"`python -m benchmarks.hpatches --download DIR` or build the dev set "
                             "with `python -m benchmarks.make_dev_hpatches --output DIR`.")
    if (root / HPATCHES_DIRNAME).is_dir() and not any(root.glob("[iv]_*")):
        root = root / HPATCHES_DIRNAME
    seqs = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[:2] in ("i_", "v_"))
    seqs = [s for s in seqs if s not in set(exclude)]
    if not seqs:
        raise BenchmarkError(f"No i_*/v_* sequence folders in {root}: not in HPatches layout.")
    for s in seqs:
        for k in range(2, 7):
            if not (root / s / f"H_1_{k}").exists():
                raise BenchmarkError(f"{root / s} lacks H_1_{k}: not in HPatches layout.")
        image_file(root / s, 1)
    return seqs


def dataset_root(root: Path) -> Path:
    root = Path(root)
    if (root / HPATCHES_DIRNAME).is_dir() and not any(root.glob("[iv]_*")):
        return root / HPATCHES_DIRNAME
    return root


def image_names(root: Path, seqs: Sequence[str]) -> list[str]:
    return [image_file(root / s, k).relative_to(root).as_posix() for s in seqs for k in range(1, 7)]


def check_release_layout(root: Path, full_release: bool = True) -> None:
    seqs = list_sequences(root, exclude=())
    n = {t: sum(s.startswith(t + "_") for s in seqs) for t in "iv"}
    for s in seqs:
        for k in range(1, 7):
            image_file(root / s, k)
    if full_release and n != HPATCHES_NUM_SEQUENCES:
        raise BenchmarkError(f"{root} has {n['i']} i_ and {n['v']} v_ sequences; the HPatches release "
                             f"has {HPATCHES_NUM_SEQUENCES['i']} and {HPATCHES_NUM_SEQUENCES['v']}: "
                             "incomplete download or extraction?")


def download_hpatches(dest: Path, url: str = HPATCHES_URL, sha256: Optional[str] = HPATCHES_SHA256,
                      full_release: bool = True, timeout: float = 60.0) -> Path:
    """Download and unpack the HPatches sequences release into dest/hpatches-sequences-release.

    The archive is checked against `sha256` when given (else its sha256 is logged and stored
    next to it so later copies can be compared), unpacked with tarfile's 'data' filter (no paths
    outside dest) and the result is checked: 57 i_ + 59 v_ sequences of 6 images and 5
    homographies. Network failures and mismatches raise BenchmarkError.
    """
    from .download import download_file, unpack

    dest = Path(dest)
    out = dest / HPATCHES_DIRNAME
    if out.is_dir() and any(out.glob("[iv]_*")):
        check_release_layout(out, full_release)
        logger.info(f"HPatches already in {out}.")
        return out
    archive = download_file(url, dest / url.rsplit("/", 1)[-1], sha256=sha256, timeout=timeout,
                            manual_hint=f" (official URL: {HPATCHES_URL}), or unpack it and pass --dataset_dir")
    with tempfile.TemporaryDirectory(dir=dest) as tmpdir:
        unpack(archive, Path(tmpdir))
        found = sorted(p for p in Path(tmpdir).rglob("*") if p.is_dir() and p.name[:2] in ("i_", "v_"))
        if not found:
            raise BenchmarkError(f"{archive} holds no i_*/v_* sequence folder.")
        src = found[0].parent
        check_release_layout(src, full_release)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(src), str(out))
    logger.info(f"HPatches ready in {out}.")
    return out


# ----------------------------------------------------------------------------------------------
# evaluation primitives (pure numpy / torch)
def mma_pair(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray, H: np.ndarray,
             thresholds: Sequence[float] = MMA_THRESHOLDS) -> np.ndarray:
    """Share of matches within each threshold (0 for every threshold if there is no match)."""
    return mma(reprojection_errors(kp0, kp1, matches, H), thresholds)


def top_k(feats: dict, k: Optional[int]) -> dict:
    if k is None or len(feats["keypoints"]) <= k:
        return feats
    if feats["scores"] is None:
        idx = np.arange(k)  # hloc files are sorted by decreasing score
    else:
        idx = np.sort(np.argsort(-feats["scores"], kind="stable")[:k])
    out = dict(feats)
    for key in ("keypoints", "descriptors", "scores"):
        if out[key] is not None:
            out[key] = out[key][idx]
    return out


def evaluate_mma(root: Path, seqs: Sequence[str], feature_path: Path,
                 thresholds: Sequence[float] = MMA_THRESHOLDS, max_keypoints: Optional[int] = None) -> dict:
    """D2-Net's HPatches sequences evaluation on an hloc feature file."""
    root = Path(root)
    acc = {"i": [], "v": []}
    n_matches = {"i": [], "v": []}
    n_feats = []
    with h5py.File(str(feature_path), "r") as fd:
        for seq in tqdm(seqs, desc="mma"):
            f0 = top_k(read_features(feature_path, image_file(root / seq, 1).relative_to(root).as_posix(), fd),
                       max_keypoints)
            n_feats.append(len(f0["keypoints"]))
            for k in range(2, 7):
                f1 = top_k(read_features(feature_path, image_file(root / seq, k).relative_to(root).as_posix(),
                                         fd), max_keypoints)
                n_feats.append(len(f1["keypoints"]))
                H = read_homography(root / seq / f"H_1_{k}")
                m = mutual_nn(f0["descriptors"], f1["descriptors"])
                acc[seq[0]].append(mma_pair(f0["keypoints"], f1["keypoints"], m, H, thresholds))
                n_matches[seq[0]].append(len(m))

    def curve(rows):
        return np.mean(rows, 0).tolist() if rows else None

    return {
        "thresholds": list(thresholds),
        "mma": {"all": curve(acc["i"] + acc["v"]), "i": curve(acc["i"]), "v": curve(acc["v"])},
        "num_pairs": {"i": len(acc["i"]), "v": len(acc["v"])},
        "num_sequences": {"i": sum(s[0] == "i" for s in seqs), "v": sum(s[0] == "v" for s in seqs)},
        "mean_num_features": float(np.mean(n_feats)) if n_feats else 0.0,
        "mean_num_matches": {
            "all": float(np.mean(n_matches["i"] + n_matches["v"])) if n_feats else 0.0,
            "i": float(np.mean(n_matches["i"])) if n_matches["i"] else None,
            "v": float(np.mean(n_matches["v"])) if n_matches["v"] else None},
        "max_keypoints": max_keypoints,
    }


def _shared(feats: dict, H: np.ndarray, shape_other) -> dict:
    """Keypoints whose warp by H lands inside the other image (h, w)."""
    h, w = shape_other
    q = warp_points(feats["keypoints"], H)
    keep = (q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1)
    out = dict(feats)
    for key in ("keypoints", "descriptors", "scores"):
        if out[key] is not None:
            out[key] = out[key][keep]
    return out


def homography_pair(f0: dict, f1: dict, H: np.ndarray, shape, k: int,
                    ransac_thresh: float = 3.0, correct_thresh: float = 3.0) -> dict:
    """SuperPoint-protocol metrics of one pair (both images of size shape = (h, w))."""
    h, w = shape
    f0 = top_k(_shared(f0, H, shape), k)
    f1 = top_k(_shared(f1, np.linalg.inv(H), shape), k)
    m = mutual_nn(f0["descriptors"], f1["descriptors"])
    kp0, kp1 = f0["keypoints"][m[:, 0]], f1["keypoints"][m[:, 1]]
    # matching score, both directions
    if len(m):
        c01 = np.sum(np.linalg.norm(warp_points(kp0, H) - kp1, axis=1) <= correct_thresh)
        c10 = np.sum(np.linalg.norm(warp_points(kp1, np.linalg.inv(H)) - kp0, axis=1) <= correct_thresh)
    else:
        c01 = c10 = 0
    ms = 0.5 * (c01 / max(len(f0["keypoints"]), 1) + c10 / max(len(f1["keypoints"]), 1))
    # homography estimation
    H_est = estimate_homography(kp0, kp1, ransac_thresh, confidence=0.995, seed=0)  # OpenCV's defaults
    err = corner_error(H_est, H, (h, w))
    return {"corner_error": err, "matching_score": float(ms), "num_matches": int(len(m)),
            "num_keypoints": (int(len(f0["keypoints"])), int(len(f1["keypoints"])))}


def _scale_matrix(sx: float, sy: float) -> np.ndarray:
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def prepare_resized(root: Path, seqs: Sequence[str], out: Path, size, paper: bool = False) -> Path:
    """Copy of the sequences resized to size = (h, w) as PNG, homographies adjusted.

    paper: as the HNDesc evaluation does it: PIL bicubic resize, H scaled by diag(sx, sy) (no
    half-pixel offset); else OpenCV area / linear and pixel-centre scaling."""
    from PIL import Image

    h, w = size
    out = Path(out)
    for seq in seqs:
        d = out / seq
        if all((d / f"{k}.png").exists() for k in range(1, 7)) and all(
                (d / f"H_1_{k}").exists() for k in range(2, 7)):
            continue
        d.mkdir(parents=True, exist_ok=True)
        S = {}
        for k in range(1, 7):
            img = cv2.imread(str(image_file(root / seq, k)), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if img is None:
                raise BenchmarkError(f"Cannot read {image_file(root / seq, k)}.")
            sx, sy = w / img.shape[1], h / img.shape[0]
            if paper:
                S[k] = np.diag([sx, sy, 1.0])
                rgb = Image.fromarray(img[:, :, ::-1]).resize((w, h), Image.BICUBIC)
                cv2.imwrite(str(d / f"{k}.png"), np.asarray(rgb)[:, :, ::-1])
                continue
            S[k] = _scale_matrix(sx, sy)
            interp = cv2.INTER_AREA if img.shape[1] > w else cv2.INTER_LINEAR
            cv2.imwrite(str(d / f"{k}.png"), cv2.resize(img, (w, h), interpolation=interp))
        for k in range(2, 7):
            H = S[k] @ read_homography(root / seq / f"H_1_{k}") @ np.linalg.inv(S[1])
            (d / f"H_1_{k}").write_text("".join(" ".join(f"{v:.12g}" for v in r) + "\n" for r in H))
    return out


def evaluate_homography(root: Path, seqs: Sequence[str], feature_path: Path, size, k: int,
                        thresholds: Sequence[float] = COR_THRESHOLDS) -> dict:
    rows = {"i": [], "v": []}
    with h5py.File(str(feature_path), "r") as fd:
        for seq in tqdm(seqs, desc=f"homography {size[0]}x{size[1]}"):
            f0 = read_features(feature_path, f"{seq}/1.png", fd)
            for j in range(2, 7):
                f1 = read_features(feature_path, f"{seq}/{j}.png", fd)
                H = read_homography(Path(root) / seq / f"H_1_{j}")
                rows[seq[0]].append(homography_pair(f0, f1, H, size, k))

    def summary(rs):
        if not rs:
            return None
        err = np.array([r["corner_error"] for r in rs])
        out = {f"cor{t}": float(np.mean(err <= t)) for t in thresholds}
        out["matching_score"] = float(np.mean([r["matching_score"] for r in rs]))
        out["mean_num_matches"] = float(np.mean([r["num_matches"] for r in rs]))
        out["mean_num_keypoints"] = float(np.mean([np.mean(r["num_keypoints"]) for r in rs]))
        out["num_pairs"] = len(rs)
        return out

    return {"size": list(size), "max_keypoints": k,
            "all": summary(rows["i"] + rows["v"]), "i": summary(rows["i"]), "v": summary(rows["v"])}


def _inside(kp: np.ndarray, H: np.ndarray, size) -> np.ndarray:
    """Keypoints whose warp by H falls in [0, w) × [0, h) (the paper's shared-region test)."""
    h, w = size
    q = warp_points(kp, H)
    return (q[:, 0] >= 0) & (q[:, 0] < w) & (q[:, 1] >= 0) & (q[:, 1] < h)


def nearest_neighbours(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """Index in d1 of the nearest neighbour of every row of d0 (L2-normalised: max dot product)."""
    if len(d1) == 0:
        return np.zeros(0, np.int64)
    return np.asarray(np.argmax(np.asarray(d0, np.float32) @ np.asarray(d1, np.float32).T, 1), np.int64)


def paper_matching_score(f0: dict, f1: dict, H: np.ndarray, size, thresh: float = 3.0) -> float:
    """The paper's matching score: every keypoint's nearest neighbour in the other image (both ways);
    correct within `thresh` px; denominator: matches that land inside the other image."""
    h, w = size

    def one_way(fa, fb, H_ba):  # matches a→b, b's point moved into a by H_ba
        if len(fa["keypoints"]) == 0 or len(fb["keypoints"]) == 0:
            return 0.0
        nn = nearest_neighbours(fa["descriptors"], fb["descriptors"])
        p = warp_points(fb["keypoints"][nn], H_ba)
        vis = (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
        ok = np.linalg.norm(p - fa["keypoints"], axis=1) < thresh
        return float(np.sum(ok & vis) / max(np.sum(vis), 1))

    return 0.5 * (one_way(f0, f1, np.linalg.inv(H)) + one_way(f1, f0, H))


def paper_homography_pair(f0: dict, f1: dict, H: np.ndarray, size) -> dict:
    """The paper's homography estimation on one pair (images of size (h, w)): mutual NN of the
    keypoints seen in the other image, RANSAC, mean corner error (inf when it fails)."""
    k0, k1 = _inside(f0["keypoints"], H, size), _inside(f1["keypoints"], np.linalg.inv(H), size)
    kp0, kp1 = f0["keypoints"][k0], f1["keypoints"][k1]
    m = mutual_nn(f0["descriptors"][k0], f1["descriptors"][k1])
    err = float("inf")
    if len(m) >= 4:
        cv2.setRNGSeed(0)
        H_est, _ = cv2.findHomography(kp0[m[:, 0]].astype(np.float64), kp1[m[:, 1]].astype(np.float64), cv2.RANSAC,
                                      PAPER_RANSAC["px"], maxIters=PAPER_RANSAC["max_iters"],
                                      confidence=PAPER_RANSAC["confidence"])
        err = corner_error(H_est, H, size)
    return {"corner_error": err, "num_matches": int(len(m)), "matching_score": paper_matching_score(f0, f1, H, size)}


def evaluate_paper_homography(root: Path, seqs: Sequence[str], feature_path: Path, size=PAPER_SIZE,
                              thresholds: Sequence[float] = COR_THRESHOLDS) -> dict:
    rows = {"i": [], "v": []}
    with h5py.File(str(feature_path), "r") as fd:
        for seq in tqdm(seqs, desc=f"paper homography {size[1]}x{size[0]}"):
            f0 = read_features(feature_path, f"{seq}/1.png", fd)
            for j in range(2, 7):
                f1 = read_features(feature_path, f"{seq}/{j}.png", fd)
                rows[seq[0]].append(paper_homography_pair(f0, f1, read_homography(Path(root) / seq / f"H_1_{j}"), size))

    def summary(rs):
        if not rs:
            return None
        err = np.array([r["corner_error"] for r in rs])
        out = {f"cor{t}": float(np.mean(err <= t)) for t in thresholds}
        out["matching_score"] = float(np.mean([r["matching_score"] for r in rs]))
        out["mean_num_matches"] = float(np.mean([r["num_matches"] for r in rs]))
        out["num_pairs"] = len(rs)
        return out

    return {"i": summary(rows["i"]), "v": summary(rows["v"]), "all": summary(rows["i"] + rows["v"])}


def run_paper(conf: dict, root: Path, seqs: Sequence[str], work: Path, resized_dir: Path, overwrite: bool) -> dict:
    """The HNDesc paper's protocol (module docstring) for one conf."""
    every = {"max_keypoints": -1} if "max_keypoints" in conf["model"] else {}
    c = conf_with(conf, preprocessing={"resize_max": None, "resize_force": None}, model=every)
    fpath = work / "features-paper-fullres.h5"
    extract(c, root, fpath, image_names(root, seqs), as_half=False, overwrite=overwrite)
    m = evaluate_mma(root, seqs, fpath)
    curves = m.pop("mma")
    avg = None if curves["i"] is None or curves["v"] is None else \
        (0.5 * (np.array(curves["i"]) + np.array(curves["v"]))).tolist()
    out = {"mma": {"i": curves["i"], "v": curves["v"], "avg": avg}, "mma_details": {**m, "features": str(fpath)}}
    rdir = prepare_resized(root, seqs, resized_dir, PAPER_SIZE, paper=True)
    top = {"max_keypoints": PAPER_KEYPOINTS} if "max_keypoints" in conf["model"] else {}
    c = conf_with(conf, preprocessing={"resize_max": None, "resize_force": None}, model=top)
    fpath = work / "features-paper-640x480.h5"
    extract(c, rdir, fpath, [f"{s}/{j}.png" for s in seqs for j in range(1, 7)], as_half=False, overwrite=overwrite)
    out["homography_640x480"] = evaluate_paper_homography(rdir, seqs, fpath)
    out["settings"] = {"mma_max_keypoints": -1 if every else None, "size_hw": list(PAPER_SIZE),
                       "max_keypoints": PAPER_KEYPOINTS if top else None, "ransac": PAPER_RANSAC}
    return out


# ----------------------------------------------------------------------------------------------
# runner
def _max_kp_override(conf: dict, k: int) -> dict:
    """Let the extractor propose more than k points (the protocol keeps the k best shared ones)."""
    model = conf["model"]
    if "max_keypoints" in model and model["max_keypoints"] not in (None, -1):
        return {"max_keypoints": max(int(model["max_keypoints"]), 4 * k)}
    return {}


def run_conf(name: str, root: Path, seqs: Sequence[str], export_dir: Path, protocols: Sequence[str],
             keep_resize: bool = False, max_keypoints: Optional[int] = None, overwrite: bool = False) -> dict:
    conf = resolve_feature_conf(name)
    res: dict = {"conf": conf}
    work = Path(export_dir) / slug(name)
    if "mma" in protocols:
        c = conf if keep_resize else conf_with(conf, preprocessing={"resize_max": None, "resize_force": None})
        fpath = work / ("features-conf-res.h5" if keep_resize else "features-fullres.h5")
        extract(c, root, fpath, image_names(root, seqs), as_half=False, overwrite=overwrite)
        res["mma_details"] = evaluate_mma(root, seqs, fpath, max_keypoints=max_keypoints)
        res["mma"] = res["mma_details"].pop("mma")
        res["mma_details"]["features"] = str(fpath)
    if "homography" in protocols:
        res["homography"] = {}
        for key, (size, k) in SP_SETTINGS.items():
            rdir = prepare_resized(root, seqs, Path(export_dir) / f"resized-{key}", size)
            c = conf_with(conf, preprocessing={"resize_max": None, "resize_force": None},
                          model=_max_kp_override(conf, k))
            fpath = work / f"features-{key}.h5"
            names = [f"{s}/{j}.png" for s in seqs for j in range(1, 7)]
            extract(c, rdir, fpath, names, as_half=False, overwrite=overwrite)
            res["homography"][key] = evaluate_homography(rdir, seqs, fpath, size, k)
    if "paper" in protocols:
        res["paper"] = run_paper(conf, root, seqs, work, Path(export_dir) / "resized-paper-640x480", overwrite)
    return res


def _fmt(v, pct=False, nd=3):
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.{nd}f}"


def markdown(results: dict, dataset: str) -> str:
    lines = [f"# HPatches results ({dataset})", ""]
    if any("mma" in r for r in results.values()):
        lines += ["## MMA (D2-Net protocol, mutual NN, full resolution)", "",
                  "| conf | split | MMA@1 | @2 | @3 | @5 | @10 | #feat | #matches |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in results.items():
            if "mma" not in r:
                continue
            d = r["mma_details"]
            for split in ("i", "v", "all"):
                c = r["mma"][split]
                if c is None:
                    continue
                vals = " | ".join(_fmt(c[t - 1]) for t in (1, 2, 3, 5, 10))
                lines.append(f"| {name} | {split} | {vals} | {d['mean_num_features']:.0f} | "
                             f"{_fmt(d['mean_num_matches'][split], nd=0)} |")
        lines.append("")
    if any("homography" in r for r in results.values()):
        lines += ["## Homography estimation and matching score (SuperPoint protocol)", "",
                  "| conf | resolution | #kp | Cor-1 | Cor-3 | Cor-5 | M. score |", "|---|---|---|---|---|---|---|"]
        for name, r in results.items():
            for key, h in r.get("homography", {}).items():
                a = h["all"]
                lines.append(f"| {name} | {key} | {h['max_keypoints']} | {_fmt(a['cor1'])} | "
                             f"{_fmt(a['cor3'])} | {_fmt(a['cor5'])} | {_fmt(a['matching_score'])} |")
        lines.append("")
    if any("paper" in r for r in results.values()):
        lines += ["## The HNDesc paper's protocol (MMA at full resolution; H and M. score at 640×480)", "",
                  "| conf | split | MMA@1 | @3 | @5 | @10 | Cor-1 | Cor-3 | Cor-5 | M. score |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in results.items():
            if "paper" not in r:
                continue
            p = r["paper"]
            for split, hsplit in (("i", "i"), ("v", "v"), ("avg", "all")):
                c, h = p["mma"][split], p["homography_640x480"][hsplit]
                if c is None or h is None:
                    continue
                lines.append(f"| {name} | {'all' if split == 'avg' else split} | "
                             + " | ".join(_fmt(c[t - 1]) for t in (1, 3, 5, 10)) + " | "
                             + " | ".join(_fmt(h[f"cor{t}"]) for t in COR_THRESHOLDS)
                             + f" | {_fmt(h['matching_score'])} |")
        lines += ["", "(all: MMA = mean of the i and v curves, Cor / M. score over all pairs, as the paper reports.)", ""]
    return "\n".join(lines)


def plot_mma(results: dict, path: Path) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}  # label -> {split: curve}; the paper's overall curve is its avg of i and v
    for n, r in results.items():
        if "mma" in r:
            curves[n] = r["mma"]
        if "paper" in r:
            m = r["paper"]["mma"]
            curves[f"{n} (paper protocol)"] = {"all": m["avg"], "i": m["i"], "v": m["v"]}
    if not curves:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, (split, title) in zip(axes, (("all", "Overall"), ("i", "Illumination"), ("v", "Viewpoint"))):
        for name, r in curves.items():
            c = r[split]
            if c is not None:
                ax.plot(list(MMA_THRESHOLDS), c, linewidth=2, label=name)
        ax.set_title(title)
        ax.set_xlabel("threshold [px]")
        ax.set_xlim(1, 10)
        ax.set_ylim(0, 1)
        ax.set_xticks(list(MMA_THRESHOLDS))
        ax.grid(True)
    axes[0].set_ylabel("MMA")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--dataset_dir", type=Path, help="folder in HPatches layout")
    parser.add_argument("--conf", help="feature conf name(s), comma-separated (ours or hloc's)")
    parser.add_argument("--output", type=Path, help="results JSON (R.md and R_mma.png beside it)")
    parser.add_argument("--protocols", default="mma,homography",
                        help="comma-separated: mma, homography (default both), paper (the HNDesc paper's tables)")
    parser.add_argument("--export_dir", type=Path, help="feature cache (default: <output>_work)")
    parser.add_argument("--all_sequences", action="store_true",
                        help="keep the 8 large sequences D2-Net excludes")
    parser.add_argument("--keep_resize", action="store_true",
                        help="mma: use the conf's resize_max instead of full resolution")
    parser.add_argument("--max_keypoints", type=int, help="mma: keep the k best keypoints per image")
    parser.add_argument("--overwrite", action="store_true", help="re-extract cached features")
    parser.add_argument("--download", type=Path, metavar="DIR",
                        help="download + verify + unpack the official release into DIR and exit")
    parser.add_argument("--url", default=HPATCHES_URL, help=argparse.SUPPRESS)
    parser.add_argument("--sha256", default=HPATCHES_SHA256, help="expected sha256 of the archive")
    args = parser.parse_args(argv)

    if args.download:
        download_hpatches(args.download, args.url, args.sha256)
        return None
    if not (args.dataset_dir and args.conf and args.output):
        parser.error("--dataset_dir, --conf and --output are required (or --download DIR)")
    protocols = split_names(args.protocols)
    bad = set(protocols) - set(PROTOCOLS)
    if bad:
        raise BenchmarkError(f"Unknown protocol(s) {sorted(bad)}; use any of {', '.join(PROTOCOLS)}.")
    for name in split_names(args.conf):
        resolve_feature_conf(name)  # unknown conf names fail before any work
    root = dataset_root(args.dataset_dir)
    seqs = list_sequences(root, exclude=() if args.all_sequences else D2NET_EXCLUDED)
    export_dir = args.export_dir or args.output.with_name(args.output.stem + "_work")
    logger.info(f"{len(seqs)} sequences in {root}; protocols {protocols}.")
    results = {}
    for name in split_names(args.conf):
        results[name] = run_conf(name, root, seqs, export_dir, protocols, args.keep_resize,
                                 args.max_keypoints, args.overwrite)
    out = {n: {k: v for k, v in r.items()} for n, r in results.items()}
    for r in out.values():
        r["dataset"] = str(root)
        r["sequences"] = len(seqs)
    write_json(args.output, out)
    md = markdown(results, str(root))
    args.output.with_suffix(".md").write_text(md)
    plot_mma(results, args.output.with_name(args.output.stem + "_mma.png"))
    print(md)
    return out


if __name__ == "__main__":
    run_cli(main)
