"""Localization helpers shared by the runners: GT cameras (Strecha format), reference models
with known poses (pycolmap ≥ 3.12 rigs/frames), hloc triangulation / localize_sfm with the
pycolmap-4 trap handled, pose files, pose errors and Aachen-style recalls."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from .common import BenchmarkError, logger, require_hloc

AACHEN_THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


@dataclass
class GTCamera:
    """Pinhole camera with metric pose. R: camera-to-world rotation, C: centre (Strecha)."""
    K: np.ndarray
    R: np.ndarray
    C: np.ndarray
    width: int
    height: int

    @property
    def R_cw(self) -> np.ndarray:
        return self.R.T

    @property
    def t_cw(self) -> np.ndarray:
        return -self.R.T @ self.C

    def scaled(self, sx: float, sy: float) -> "GTCamera":
        K = self.K.copy()
        K[0] *= sx
        K[1] *= sy
        return GTCamera(K, self.R, self.C, int(round(self.width * sx)), int(round(self.height * sy)))

    def colmap_params(self) -> list[float]:
        return [self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]]

    def intrinsics_line(self, name: str) -> str:
        p = " ".join(f"{v:.10g}" for v in self.colmap_params())
        return f"{name} PINHOLE {self.width} {self.height} {p}"


def read_strecha_camera(path: Path) -> GTCamera:
    """9 numeric lines: K (3 rows), distortion, R (3 rows, camera-to-world), C, width height."""
    try:
        rows = [[float(v) for v in line.split()] for line in Path(path).read_text().splitlines()
                if line.strip()]
        K = np.array(rows[0:3])
        R = np.array(rows[4:7])
        C = np.array(rows[7])
        w, h = int(rows[8][0]), int(rows[8][1])
    except (OSError, ValueError, IndexError) as e:
        raise BenchmarkError(f"{path} is not a Strecha camera file: {e}") from None
    if K.shape != (3, 3) or R.shape != (3, 3) or C.shape != (3,):
        raise BenchmarkError(f"{path} is not a Strecha camera file (bad shapes).")
    # the files hold 6 digits: project R onto SO(3) so that poses and errors are exact rotations
    return GTCamera(K, nearest_rotation(R), C, w, h)


def read_strecha_scene(scene: Path) -> dict[str, tuple[Path, GTCamera]]:
    """name → (image path, GT camera) for `images/NNNN.jpg` + `gt_dense_cameras/NNNN.jpg.camera`."""
    scene = Path(scene)
    cam_dir, img_dir = scene / "gt_dense_cameras", scene / "images"
    if not cam_dir.is_dir() or not img_dir.is_dir():
        raise BenchmarkError(f"{scene} is not a Strecha scene: it needs images/ and gt_dense_cameras/ "
                             "(see ../shared/data/README.md).")
    out = {}
    for cam in sorted(cam_dir.glob("*.camera")):
        img = img_dir / cam.name[: -len(".camera")]
        if img.exists():
            out[img.name] = (img, read_strecha_camera(cam))
    if len(out) < 3:
        raise BenchmarkError(f"{scene}: fewer than 3 images with GT cameras.")
    return out


def qvec_to_rotmat(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, float) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def read_poses(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """hloc results file `name qw qx qy qz tx ty tz` (cam_from_world) → name → (R_cw, t_cw)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) != 8:
            continue
        out[parts[0]] = (qvec_to_rotmat([float(v) for v in parts[1:5]]),
                         np.array([float(v) for v in parts[5:8]]))
    return out


def pose_error(R_cw: np.ndarray, t_cw: np.ndarray, gt: GTCamera) -> tuple[float, float]:
    """(camera-centre distance, rotation angle in degrees) to the GT pose."""
    C = -R_cw.T @ t_cw
    dt = float(np.linalg.norm(C - gt.C))
    return dt, rotation_angle_deg(R_cw @ gt.R_cw.T)


def nearest_rotation(R: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(R)
    M = U @ Vt
    if np.linalg.det(M) < 0:
        M = U @ np.diag([1, 1, -1]) @ Vt
    return M


def rotation_angle_deg(M: np.ndarray) -> float:
    """Angle of a rotation matrix, accurate for small angles (atan2 of sin and cos parts)."""
    s = 0.5 * np.linalg.norm([M[2, 1] - M[1, 2], M[0, 2] - M[2, 0], M[1, 0] - M[0, 1]])
    c = 0.5 * (np.trace(M) - 1.0)
    return float(np.rad2deg(np.arctan2(s, c)))


def recalls(errors: Mapping[str, tuple[float, float]], names: Sequence[str],
            thresholds=AACHEN_THRESHOLDS) -> list[float]:
    """% of `names` within each (metres, degrees) threshold; a missing name counts as a failure."""
    if not names:
        return [0.0 for _ in thresholds]
    out = []
    for tm, td in thresholds:
        ok = sum(1 for n in names if n in errors and errors[n][0] <= tm and errors[n][1] <= td)
        out.append(100.0 * ok / len(names))
    return out


def build_reference_model(cams: Mapping[str, GTCamera], path: Path):
    """A pycolmap reconstruction without points: one PINHOLE camera and one posed image per name."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    for i, (name, cam) in enumerate(sorted(cams.items()), start=1):
        camera = pycolmap.Camera(model="PINHOLE", width=cam.width, height=cam.height,
                                 params=cam.colmap_params(), camera_id=i)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(cam.R_cw), cam.t_cw)
        image = pycolmap.Image(name=name, camera_id=i, image_id=i)
        if hasattr(rec, "add_camera_with_trivial_rig"):  # pycolmap ≥ 3.12
            rec.add_camera_with_trivial_rig(camera)
            rec.add_image_with_trivial_frame(image, pose)
        else:  # older pycolmap
            rec.add_camera(camera)
            image.cam_from_world = pose
            image.registered = True
            rec.add_image(image)
    Path(path).mkdir(parents=True, exist_ok=True)
    rec.write(str(path))
    return rec


def _pycolmap_major() -> int:
    import pycolmap

    try:
        return int(str(pycolmap.__version__).split(".")[0])
    except ValueError:
        return 0


def triangulate(sfm_dir: Path, reference: Path, image_dir: Path, pairs: Path, features: Path,
                matches: Path, overwrite: bool = False):
    """hloc.triangulation.main with the pycolmap-4 trap handled: there, hloc's pose-based
    verification writes two-view geometries COLMAP ignores (0 points), so geometries are
    estimated instead (estimate_two_view_geometries=True)."""
    require_hloc("triangulation")
    import pycolmap
    from hloc import triangulation

    sfm_dir = Path(sfm_dir)
    if not overwrite and (sfm_dir / "images.bin").exists() and (sfm_dir / "points3D.bin").exists():
        rec = pycolmap.Reconstruction(str(sfm_dir))
        if rec.num_points3D() > 0:
            logger.info(f"Reusing triangulated model {sfm_dir} ({rec.num_points3D()} points).")
            return rec
    kw = {}
    if _pycolmap_major() >= 4:
        if "estimate_two_view_geometries" not in inspect.signature(triangulation.main).parameters:
            raise BenchmarkError("This hloc's triangulation cannot estimate two-view geometries, which "
                                 "pycolmap ≥ 4 needs; update hloc or install pycolmap < 4.")
        kw["estimate_two_view_geometries"] = True
    rec = triangulation.main(sfm_dir, Path(reference), Path(image_dir), Path(pairs), Path(features),
                             Path(matches), **kw)
    if rec.num_points3D() == 0:
        raise BenchmarkError(f"Triangulation of {reference} produced no 3D point: too few matches "
                             "between the map images (check the conf, the pairs and the images).")
    return rec


def localize_sfm(reference_sfm: Path, queries: Path, pairs: Path, features: Path, matches: Path,
                 results: Path, ransac_thresh: float = 12.0, covisibility_clustering: bool = False) -> Path:
    require_hloc("localization")
    from hloc import localize_sfm as loc

    loc.main(Path(reference_sfm), Path(queries), Path(pairs), Path(features), Path(matches),
             Path(results), ransac_thresh=ransac_thresh, covisibility_clustering=covisibility_clustering)
    return Path(results)


def localized_names(results: Path) -> Optional[set[str]]:
    """Queries whose PnP succeeded, from hloc's `<results>_logs.pkl` (None if unreadable)."""
    import pickle

    p = Path(f"{results}_logs.pkl")
    if not p.exists():
        return None
    try:
        with open(p, "rb") as f:
            logs = pickle.load(f)
    except Exception:
        return None
    out = set()
    for q, log in logs.get("loc", {}).items():
        if "PnP_ret" in log:
            ok = log["PnP_ret"] is not None
        else:
            ok = log.get("best_cluster") is not None
        if ok:
            out.add(q)
    return out


def exhaustive_pairs(queries: Iterable[str], refs: Iterable[str]) -> list[tuple[str, str]]:
    refs = list(refs)
    return [(q, r) for q in queries for r in refs if q != r]


def all_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    names = list(names)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
