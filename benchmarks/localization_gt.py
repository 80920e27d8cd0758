"""Offline Aachen-style localization on a scene with metric GT cameras (Strecha format).

    python -m benchmarks.localization_gt --scene ../shared/data/strecha/fountain-P11 \
        --conf rootsift --output R.json [--night]

Steps (hloc's): the images are downscaled to the conf's resize_max (or --resize_max) with the
intrinsics scaled accordingly; the map images (all but every --query_every-th image, or
--queries) get a reference model from their GT poses; features are extracted and matched
(exhaustive map pairs) and hloc triangulates the map (hloc.triangulation); each query is matched
to every map image and localized with hloc.localize_sfm using its GT intrinsics. Reported: the
share of queries within (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°) and the median errors.
--night renders the queries as low-light photos (darkening + gamma, sodium-lamp colour cast,
blur, shot/read noise, JPEG; deterministic per --seed and image name).
R.json: {"recall": [r1, r2, r3] (%), "median_error_m", "median_error_deg", "per_query", ...}.
Needs hloc.
"""
from __future__ import annotations

import argparse
import zlib
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from .common import (BenchmarkError, extract, logger, match, require_hloc, resolve_feature_conf,
                     resolve_matcher_conf, run_cli, slug, split_names, write_json, write_pairs)
from .loc_utils import (AACHEN_THRESHOLDS, GTCamera, all_pairs, build_reference_model, exhaustive_pairs,
                        localize_sfm, localized_names, pose_error, read_poses, read_strecha_scene, recalls,
                        triangulate)
from .photometric import render_night, rng_for


def split_scene(names: Sequence[str], query_every: int = 2, queries: Optional[Sequence[str]] = None):
    names = sorted(names)
    if queries:
        missing = [q for q in queries if q not in names]
        if missing:
            raise BenchmarkError(f"Unknown query image(s) {missing}; the scene has {names}.")
        q = [n for n in names if n in set(queries)]
    else:
        if query_every < 2:
            raise BenchmarkError("--query_every must be ≥ 2 (some images must stay in the map).")
        q = names[1::query_every]
    db = [n for n in names if n not in set(q)]
    if len(db) < 2:
        raise BenchmarkError("The map needs at least 2 images.")
    return db, q


def prepare_images(scene: dict, db: Sequence[str], queries: Sequence[str], image_dir: Path,
                   max_size: int, night: bool, seed: int = 0) -> dict[str, GTCamera]:
    """Write downscaled copies as image_dir/{db,query}/<name>; returns name → scaled GT camera."""
    cams = {}
    for group, names in (("db", db), ("query", queries)):
        for n in names:
            src, cam = scene[n]
            out = image_dir / group / n
            img = None
            s = min(1.0, max_size / max(cam.width, cam.height))
            w, h = int(round(cam.width * s)), int(round(cam.height * s))
            if not out.exists():
                img = cv2.imread(str(src), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                if img is None:
                    raise BenchmarkError(f"Cannot read {src}.")
                if img.shape[1] != cam.width or img.shape[0] != cam.height:
                    raise BenchmarkError(f"{src} is {img.shape[1]}×{img.shape[0]} but its camera file "
                                         f"says {cam.width}×{cam.height}.")
                if s < 1:
                    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
                if group == "query" and night:
                    img = render_night(img, rng_for(seed, "night", n))
                out.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cams[f"{group}/{n}"] = cam.scaled(w / cam.width, h / cam.height)
    return cams


def run(scene_dir: Path, conf_name: str, matcher_name: str, work: Path, night: bool = False,
        query_every: int = 2, queries: Optional[Sequence[str]] = None, resize_max: Optional[int] = None,
        seed: int = 0, ransac_thresh: float = 12.0, overwrite: bool = False) -> dict:
    require_hloc("localization_gt")
    scene = read_strecha_scene(scene_dir)
    conf = resolve_feature_conf(conf_name)
    mconf = resolve_matcher_conf(matcher_name)
    db, qs = split_scene(list(scene), query_every, queries)
    max_size = resize_max or conf["preprocessing"].get("resize_max") or 1024
    split = zlib.crc32(" ".join(qs).encode())  # another query split → another map, not a stale one
    tag = f"{slug(Path(scene_dir).name)}-{max_size}px-q{split:08x}" + ("-night" if night else "") + f"-seed{seed}"
    image_dir = work / "images" / tag
    cams = prepare_images(scene, db, qs, image_dir, max_size, night, seed)
    db_names = [f"db/{n}" for n in db]
    q_names = [f"query/{n}" for n in qs]

    out = work / tag / slug(conf_name)
    out.mkdir(parents=True, exist_ok=True)
    ref = build_reference_model({n: cams[n] for n in db_names}, work / tag / "reference")
    features = extract(conf, image_dir, out / "features.h5", db_names + q_names, overwrite=overwrite)
    sfm_pairs = write_pairs(work / tag / "pairs-db-exhaustive.txt", all_pairs(db_names))
    sfm_matches = match(mconf, sfm_pairs, features, out / f"matches-{slug(matcher_name)}-db.h5",
                        overwrite=overwrite)
    sfm_dir = out / f"sfm-{slug(matcher_name)}"
    rec = triangulate(sfm_dir, work / tag / "reference", image_dir, sfm_pairs, features, sfm_matches,
                      overwrite=overwrite)
    loc_pairs = write_pairs(work / tag / "pairs-query-db.txt", exhaustive_pairs(q_names, db_names))
    loc_matches = match(mconf, loc_pairs, features, out / f"matches-{slug(matcher_name)}-query.h5",
                        overwrite=overwrite)
    qfile = work / tag / "queries_with_intrinsics.txt"
    qfile.write_text("".join(cams[n].intrinsics_line(n) + "\n" for n in q_names))
    results = out / f"poses-{slug(matcher_name)}.txt"
    localize_sfm(sfm_dir, qfile, loc_pairs, features, loc_matches, results, ransac_thresh=ransac_thresh)

    poses = read_poses(results)  # keyed by basename (hloc's write_poses)
    ok = localized_names(results)
    errors = {}
    for n in q_names:
        base = n.split("/")[-1]
        if base in poses and (ok is None or n in ok):
            errors[n] = pose_error(*poses[base], cams[n])
    dts = [errors[n][0] if n in errors else np.inf for n in q_names]
    dRs = [errors[n][1] if n in errors else np.inf for n in q_names]
    return {
        "scene": str(scene_dir), "conf": conf_name, "matcher": matcher_name, "night": night,
        "seed": seed, "resize_max": max_size,
        "thresholds": [list(t) for t in AACHEN_THRESHOLDS],
        "recall": recalls(errors, q_names),
        "median_error_m": float(np.median(dts)), "median_error_deg": float(np.median(dRs)),
        "num_queries": len(q_names), "num_localized": len(errors), "num_db": len(db_names),
        "num_points3D": int(rec.num_points3D()),
        "sfm": {"num_points3D": int(rec.num_points3D()), "num_reg_images": int(rec.num_reg_images()),
                "mean_track_length": float(rec.compute_mean_track_length()),
                "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
                "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image())},
        "per_query": {n: ({"error_m": errors[n][0], "error_deg": errors[n][1]} if n in errors
                          else {"error_m": None, "error_deg": None, "failed": True}) for n in q_names},
        "results_file": str(results), "reference": str(work / tag / "reference"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--scene", type=Path, required=True, help="Strecha-format scene folder")
    parser.add_argument("--conf", required=True, help="feature conf(s), comma-separated")
    parser.add_argument("--matcher", default="NN-mutual", help="matcher conf (default NN-mutual)")
    parser.add_argument("--output", type=Path, required=True, help="results JSON")
    parser.add_argument("--outputs", type=Path, help="work folder (default: <output>_work)")
    parser.add_argument("--night", action="store_true", help="render the queries as night photos")
    parser.add_argument("--query_every", type=int, default=2, help="every k-th image is a query")
    parser.add_argument("--queries", help="comma-separated query image names (overrides --query_every)")
    parser.add_argument("--resize_max", type=int, help="downscale to this long side (default: conf's)")
    parser.add_argument("--ransac_thresh", type=float, default=12.0, help='absolute-pose RANSAC threshold (px)')
    parser.add_argument("--seed", type=int, default=0, help='seed of the low-light rendering of the --night queries')
    parser.add_argument("--overwrite", action="store_true", help='recompute what the work folder holds')
    args = parser.parse_args(argv)
    work = args.outputs or args.output.with_name(args.output.stem + "_work")
    names = split_names(args.conf)
    res = {}
    for name in names:
        res[name] = run(args.scene, name, args.matcher, work, args.night, args.query_every,
                        split_names(args.queries) if args.queries else None, args.resize_max, args.seed,
                        args.ransac_thresh, args.overwrite)
        r = res[name]
        logger.info(f"{name}: recall {', '.join(f'{v:.1f}' for v in r['recall'])} % "
                    f"(median {r['median_error_m']:.3f} m, {r['median_error_deg']:.2f}°)")
    out = res[names[0]] if len(names) == 1 else res
    write_json(args.output, out)
    return out


if __name__ == "__main__":
    run_cli(main)
