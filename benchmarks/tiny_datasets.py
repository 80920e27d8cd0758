"""Tiny datasets in the real layouts of Aachen v1.1, InLoc and Tokyo 24/7, built from the real
photos in ../shared/data, to run the runners end-to-end offline (tests, smoke runs).

- Aachen v1.1 (`make_tiny_aachen`): from a Strecha scene (metric GT). The "SIFT reference model"
  3D-models/aachen_v_1_1 is built here: GT poses of the db images + points triangulated with
  hloc from SIFT matches. Queries (day: downscaled photos; night: low-light renderings) come with
  their GT intrinsics in queries/{day,night}_time_queries_with_intrinsics.txt; gt_poses.txt holds
  their GT poses in the results format for a local evaluation.
- InLoc (`make_tiny_inloc`): db images become cutouts database/cutouts/DUC1/<scan>/DUC_cutout_
  <scan>_0_0.jpg, each with a .jpg.mat holding XYZcut (H×W×3, scan coordinates, NaN = no depth)
  interpolated from a triangulated sparse model, and a scan-to-world transform in
  database/alignments/DUC1/transformations/DUC_trans_<scan>.txt (lines 7–10, as hloc reads).
  Queries query/iphone7/IMG_*.JPG are re-rendered with the intrinsics hloc's localize_inloc
  assumes for every query (f = 4032·28/36 px, principal point at the centre).
- Tokyo 24/7 (`make_tiny_tokyo`): two places 1 km apart (Sacré-Cœur, Sceaux castle photos),
  fake UTM coordinates; database_gsv_vga/<tile>/*.png, 247query_subset_v2/*.jpg and a
  tokyo247.mat dbStruct as in the NetVLAD release.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from .common import BenchmarkError, extract, match, resolve_feature_conf, resolve_matcher_conf, write_pairs
from .loc_utils import GTCamera, all_pairs, build_reference_model, read_strecha_scene, triangulate
from .photometric import render_night, rng_for

INLOC_FOCAL = 4032.0 * 28.0 / 36.0


def default_map_conf() -> str:
    from .common import available_confs

    avail = available_confs("feature")
    return "rootsift" if "rootsift" in avail else "sift"


def _downscale(src: Path, cam: GTCamera, max_size: int):
    img = cv2.imread(str(src), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise BenchmarkError(f"Cannot read {src}.")
    s = min(1.0, max_size / max(img.shape[:2]))
    w, h = int(round(img.shape[1] * s)), int(round(img.shape[0] * s))
    if s < 1:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return img, cam.scaled(w / cam.width, h / cam.height)


def triangulated_from_gt(image_dir: Path, cams: dict, work: Path, conf_name: Optional[str] = None,
                         matcher: str = "NN-mutual"):
    """Reference model with GT poses + points triangulated by hloc (exhaustive pairs)."""
    conf = resolve_feature_conf(conf_name or default_map_conf())
    names = sorted(cams)
    build_reference_model(cams, work / "reference")
    feats = extract(conf, image_dir, work / "features.h5", names)
    pairs = write_pairs(work / "pairs.txt", all_pairs(names))
    m = match(resolve_matcher_conf(matcher), pairs, feats, work / "matches.h5")
    return triangulate(work / "sfm", work / "reference", image_dir, pairs, feats, m)


def _write_results_format(path: Path, poses: dict) -> None:
    """name → GTCamera as `basename qw qx qy qz tx ty tz` (cam_from_world)."""
    import pycolmap

    lines = []
    for name, cam in poses.items():
        q = pycolmap.Rotation3d(cam.R_cw).quat  # x y z w
        t = cam.t_cw
        lines.append(f"{name.split('/')[-1]} {q[3]:.12g} {q[0]:.12g} {q[1]:.12g} {q[2]:.12g} "
                     f"{t[0]:.12g} {t[1]:.12g} {t[2]:.12g}\n")
    Path(path).write_text("".join(lines))


def _write_db_images(scene: dict, db: Sequence[str], images: Path, max_size: int) -> dict:
    """Downscaled scene images written as images/db/<name> (JPEG 95); `db/<name>` → GTCamera."""
    cams = {}
    for n in db:
        img, cam = _downscale(scene[n][0], scene[n][1], max_size)
        (images / "db").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(images / "db" / n), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cams[f"db/{n}"] = cam
    return cams


def _db_names(scene: dict, queries: set, db: Optional[Sequence[str]]) -> list:
    if db is None:
        return [n for n in sorted(scene) if n not in queries]
    bad = sorted(set(db) - set(scene)) + sorted(set(db) & queries)
    if bad:
        raise BenchmarkError(f"Map images {bad} are not in the scene or are queries.")
    return sorted(db)


def make_tiny_aachen(dest: Path, scene_dir: Path, day: Sequence[str] = ("0003.jpg", "0007.jpg"),
                     night: Sequence[str] = ("0005.jpg",), max_size: int = 640, seed: int = 0,
                     map_conf: Optional[str] = None, db: Optional[Sequence[str]] = None) -> dict:
    """db: the map's images (default: every image of the scene that is not a query)."""
    dest = Path(dest)
    scene = read_strecha_scene(scene_dir)
    qset = set(day) | set(night)
    db = _db_names(scene, qset, db)
    images = dest / "images_upright"
    cams = _write_db_images(scene, db, images, max_size)
    queries = {"day": {}, "night": {}}
    for cond, names in (("day", day), ("night", night)):
        for n in names:
            img, cam = _downscale(scene[n][0], scene[n][1], max_size)
            if cond == "night":
                img = render_night(img, rng_for(seed, "night", n))
            name = f"query/{cond}/{cond}_{n}"
            (images / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(images / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            queries[cond][name] = cam
    work = dest / "_build"
    rec = triangulated_from_gt(images, cams, work, map_conf)
    model = dest / "3D-models" / "aachen_v_1_1"
    model.mkdir(parents=True, exist_ok=True)
    rec.write(str(model))
    (dest / "queries").mkdir(exist_ok=True)
    for cond, qs in queries.items():
        (dest / "queries" / f"{cond}_time_queries_with_intrinsics.txt").write_text(
            "".join(c.intrinsics_line(n) + "\n" for n, c in qs.items()))
    _write_results_format(dest / "gt_poses.txt", {**queries["day"], **queries["night"]})
    q_names = list(queries["day"]) + list(queries["night"])
    write_pairs(dest / "pairs-query-exhaustive.txt", [(q, d) for q in q_names for d in cams])
    return {"dataset": dest, "gt": dest / "gt_poses.txt", "pairs": dest / "pairs-query-exhaustive.txt",
            "queries": queries, "db": sorted(cams), "num_points3D": rec.num_points3D()}


def _dense_xyz(xyz: dict, image, width: int, height: int) -> np.ndarray:
    """H×W×3 world points linearly interpolated (Delaunay triangles of the observations) from the
    image's triangulated points; NaN outside their convex hull. xyz: point3D_id → coordinates."""
    import matplotlib.tri as mtri

    pts2d, pts3d = [], []
    for p in image.points2D:
        if p.has_point3D():
            pts2d.append(p.xy - 0.5)  # COLMAP → pixel-centre coordinates
            pts3d.append(xyz[p.point3D_id])
    if len(pts2d) < 10:
        raise BenchmarkError(f"Only {len(pts2d)} triangulated points in {image.name}.")
    pts2d, pts3d = np.array(pts2d), np.array(pts3d)
    tri = mtri.Triangulation(pts2d[:, 0], pts2d[:, 1])
    X, Y = np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float))
    return np.stack([np.ma.filled(mtri.LinearTriInterpolator(tri, pts3d[:, k])(X, Y).astype(float), np.nan)
                     for k in range(3)], -1)


def _random_rigid(rng) -> np.ndarray:
    R = cv2.Rodrigues(rng.normal(size=3) * 0.5)[0]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, rng.uniform(-20, 20, size=3)
    return T


def make_tiny_inloc(dest: Path, scene_dir: Path, queries: Sequence[str] = ("0003.jpg", "0007.jpg"),
                    max_size: int = 640, query_size=(4032, 3024), seed: int = 0,
                    map_conf: Optional[str] = None, db: Optional[Sequence[str]] = None) -> dict:
    """db: the scans' images (default: every image of the scene that is not a query)."""
    from scipy.io import savemat

    dest = Path(dest)
    scene = read_strecha_scene(scene_dir)
    db = _db_names(scene, set(queries), db)
    work = dest / "_build"
    build_dir = work / "images"
    cams = _write_db_images(scene, db, build_dir, max_size)
    rec = triangulated_from_gt(build_dir, cams, work, map_conf)
    by_name = {img.name: img for img in rec.images.values()}
    xyz = {pid: p.xyz for pid, p in rec.points3D.items()}
    rng = np.random.default_rng(seed)
    db_names = []
    for i, n in enumerate(db):
        scan = f"{i:03d}"
        name = f"database/cutouts/DUC1/{scan}/DUC_cutout_{scan}_0_0.jpg"
        img = cv2.imread(str(build_dir / "db" / n))
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dest / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        xyz_world = _dense_xyz(xyz, by_name[f"db/{n}"], img.shape[1], img.shape[0])
        T = _random_rigid(rng)  # scan → world
        flat = xyz_world.reshape(-1, 3)
        xyz_scan = ((flat - T[:3, 3]) @ T[:3, :3]).reshape(xyz_world.shape)  # R^T (X - t)
        savemat(str(dest / (name + ".mat")), {"XYZcut": xyz_scan, "RGBcut": img[:, :, ::-1]})
        tdir = dest / "database" / "alignments" / "DUC1" / "transformations"
        tdir.mkdir(parents=True, exist_ok=True)
        header = [f"DUC_scan_{scan}.ptx", "", "Before GICP:", *["0 0 0 0"] * 3, "After GICP:"]
        (tdir / f"DUC_trans_{scan}.txt").write_text(
            "\n".join(header + [" ".join(f"{v:.12g}" for v in row) for row in T]) + "\n")
        db_names.append(name)
    qw, qh = query_size
    Kq = np.array([[INLOC_FOCAL, 0, 0.5 * qw], [0, INLOC_FOCAL, 0.5 * qh], [0, 0, 1.0]])
    gt = {}
    q_names = []
    for j, n in enumerate(queries):
        src, cam = scene[n]
        full = cv2.imread(str(src), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        Hq = Kq @ np.linalg.inv(cam.K)  # same rotation and centre, hloc's fixed intrinsics
        img = cv2.warpPerspective(full, Hq, (qw, qh), flags=cv2.INTER_LINEAR)
        name = f"query/iphone7/IMG_{j + 1:04d}.JPG"
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dest / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        gt[name] = GTCamera(Kq, cam.R, cam.C, qw, qh)
        q_names.append(name)
    _write_results_format(dest / "gt_poses.txt", gt)
    write_pairs(dest / "pairs-query-exhaustive.txt", [(q, d) for q in q_names for d in db_names])
    return {"dataset": dest, "gt": dest / "gt_poses.txt", "pairs": dest / "pairs-query-exhaustive.txt",
            "queries": q_names, "db": db_names}


def make_tiny_tokyo(dest: Path, data_dir: Path, max_size: int = 480, per_place_db: int = 5,
                    per_place_queries: int = 1, seed: int = 0) -> dict:
    """Place A: Sacré-Cœur photos (+ its night photo as a query); place B: Sceaux castle, 1 km east."""
    from scipy.io import savemat

    dest, data_dir = Path(dest), Path(data_dir)
    places = {
        "A": (sorted((data_dir / "sacre_coeur" / "mapping").glob("*.jpg")), np.array([381700.0, 3952500.0])),
        "B": (sorted((data_dir / "sceaux_castle" / "images").glob("*.JPG")), np.array([382700.0, 3952500.0])),
    }
    rng = np.random.default_rng(seed)
    db, db_utm, q, q_utm = [], [], [], []
    for key, (files, centre) in places.items():
        if len(files) < per_place_db + per_place_queries:
            raise BenchmarkError(f"Not enough photos for place {key} in {data_dir}.")
        chosen = files[: per_place_db + per_place_queries]
        for i, f in enumerate(chosen):
            img = cv2.imread(str(f), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            s = min(1.0, max_size / max(img.shape[:2]))
            img = cv2.resize(img, (int(round(img.shape[1] * s)), int(round(img.shape[0] * s))),
                             interpolation=cv2.INTER_AREA)
            utm = centre + rng.uniform(-8, 8, size=2)
            if i < per_place_db:
                fn = f"0381{key}/{utm[0]:.1f}_{utm[1]:.1f}/{key}{i:02d}_012_{30 * i:03d}.jpg"
                out = dest / "database_gsv_vga" / fn.replace(".jpg", ".png")  # stored as png
                out.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out), img)
                db.append(fn)
                db_utm.append(utm)
            else:
                fn = f"{len(q) + 1:05d}.jpg"
                out = dest / "247query_subset_v2" / fn
                out.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
                q.append(fn)
                q_utm.append(utm)
    night = data_dir / "sacre_coeur" / "query" / "night.jpg"
    if night.exists():
        img = cv2.imread(str(night))
        s = min(1.0, max_size / max(img.shape[:2]))
        img = cv2.resize(img, (int(round(img.shape[1] * s)), int(round(img.shape[0] * s))),
                         interpolation=cv2.INTER_AREA)
        fn = f"{len(q) + 1:05d}.jpg"
        cv2.imwrite(str(dest / "247query_subset_v2" / fn), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        q.append(fn)
        q_utm.append(places["A"][1] + rng.uniform(-8, 8, size=2))

    def cells(names):
        arr = np.empty((len(names), 1), dtype=object)
        for i, n in enumerate(names):
            arr[i, 0] = n
        return arr

    db_struct = {"whichSet": "test", "dbImageFns": cells(db), "utmDb": np.array(db_utm).T,
                 "qImageFns": cells(q), "utmQ": np.array(q_utm).T, "numImages": len(db),
                 "numQueries": len(q), "posDistThr": 25, "posDistSqThr": 625, "nonTrivPosDistSqThr": 100}
    savemat(str(dest / "tokyo247.mat"), {"dbStruct": db_struct})
    return {"dataset": dest, "db": db, "queries": q, "utm_db": np.array(db_utm), "utm_q": np.array(q_utm)}


def small_conf_yaml(path: Path, max_keypoints: int = 1024, base: Optional[str] = None) -> Path:
    """A YAML copy of a SIFT conf (ours if present, else hloc's) with fewer keypoints, for quick runs."""
    import yaml

    from .common import conf_with

    base = base or default_map_conf()
    conf = resolve_feature_conf(base)
    model = {"max_keypoints": max_keypoints}
    if not str(conf["model"]["name"]).startswith("hf_"):
        model["options"] = {**conf["model"].get("options", {}), "max_num_features": max_keypoints}
    conf = conf_with(conf, model=model, output=f"feats-{base}-n{max_keypoints}")
    Path(path).write_text(yaml.safe_dump(conf))
    return Path(path)
