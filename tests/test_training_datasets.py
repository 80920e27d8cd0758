"""Training datasets on tiny folders of the real layouts, built here from real photos."""
from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hndesc_features.training.datasets import build_dataset, get_dataset
from hndesc_features.training.datasets.base import CorruptImageWarning
from hndesc_features.training.datasets.coco import coco_images
from hndesc_features.training.datasets.homographies import HomographyPairs
from hndesc_features.training.datasets.image_folder import ImageFolder, list_images, source_paths
from hndesc_features.training.datasets.megadepth import MegaDepthPairs, megadepth_images
from hndesc_features.training.datasets.phototourism import PhotoTourismPairs, phototourism_images

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(1)
try:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
except ImportError:
    pass


def photos(n: int) -> list[Path]:
    d = DATA / "photos"
    if not d.is_dir():
        pytest.skip(f"real photos not found at {d}")
    return sorted(d.glob("*.jpg"))[:n]


def strecha_views(n: int = 3):
    """(image path, K, R_w2c, t_w2c) of the first Strecha fountain views (metric GT cameras)."""
    d = DATA / "strecha" / "fountain-P11"
    if not d.is_dir():
        pytest.skip(f"Strecha data not found at {d}")
    out = []
    for img in sorted((d / "images").glob("*.jpg"))[:n]:
        v = np.loadtxt(d / "gt_dense_cameras" / f"{img.name}.camera", max_rows=8)
        K, R_c2w, C = v[:3], v[4:7], v[7]
        out.append((img, K, R_c2w.T, -R_c2w.T @ C))
    return out


def small_copy(src: Path, dst: Path, long_side: int = 768) -> tuple[float, float]:
    """Downscaled copy (keeps the test fast); returns the scale factors (sx, sy)."""
    img = cv2.imread(str(src))
    h, w = img.shape[:2]
    s = long_side / max(h, w)
    img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), img)
    return img.shape[1] / w, img.shape[0] / h


def scale_K(K, sx, sy):
    S = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    return S @ K


def epipolar_error(sample) -> float:
    """Median Sampson error (px) of SIFT ratio-test matches under the sample's F_0to1."""
    def gray(t):
        return (t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)[..., ::-1].copy()

    sift = cv2.SIFT_create(2000)
    k0, d0 = sift.detectAndCompute(cv2.cvtColor(gray(sample["image0"]), cv2.COLOR_BGR2GRAY), None)
    k1, d1 = sift.detectAndCompute(cv2.cvtColor(gray(sample["image1"]), cv2.COLOR_BGR2GRAY), None)
    m = [a for a, b in cv2.BFMatcher().knnMatch(d0, d1, k=2) if a.distance < 0.7 * b.distance]
    assert len(m) > 30
    x0 = np.array([k0[a.queryIdx].pt for a in m] + [[0, 0]])[:-1]
    x1 = np.array([k1[a.trainIdx].pt for a in m] + [[0, 0]])[:-1]
    F = sample["F_0to1"].astype(np.float64)
    h0 = np.c_[x0, np.ones(len(x0))]
    h1 = np.c_[x1, np.ones(len(x1))]
    l1 = h0 @ F.T
    l0 = h1 @ F
    num = np.sum(h1 * l1, 1) ** 2
    den = l1[:, 0] ** 2 + l1[:, 1] ** 2 + l0[:, 0] ** 2 + l0[:, 1] ** 2
    return float(np.median(np.sqrt(num / den)))


# ----------------------------------------------------------------------------- image folders
def test_image_folder_recursive_and_corrupt_skipped(tmp_path):
    p = photos(3)
    shutil.copy(p[0], tmp_path / "a.jpg")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(p[1], tmp_path / "sub" / "b.JPG")
    cv2.imwrite(str(tmp_path / "sub" / "deeper" / "c.png"), cv2.imread(str(p[2]))[:200, :300])
    (tmp_path / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    paths = list_images(tmp_path)
    assert [q.name for q in paths] == ["a.jpg", "b.JPG", "broken.jpg", "c.png"]
    assert len(list_images(tmp_path, recursive=False)) == 1

    ds = ImageFolder({"source": {"name": "folder", "root": str(tmp_path)}, "resize_max": 256})
    assert len(ds) == 4
    with pytest.warns(CorruptImageWarning, match="broken.jpg"):
        item = ds[2]  # the corrupt file: the next readable image is returned instead
    assert Path(item["name"]).name == "c.png"
    assert item["image"].shape == (3, 171, 256)  # 200×300 resized to a long side of 256
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known-bad file: no second warning, no retry
        assert Path(ds[2]["name"]).name == "c.png"
    assert 0.0 <= float(ds[0]["image"].min()) and float(ds[0]["image"].max()) <= 1.0


def test_homography_pairs_on_a_folder_with_a_corrupt_image(tmp_path):
    p = photos(2)
    for q in p:
        shutil.copy(q, tmp_path / q.name)
    (tmp_path / "zz_truncated.jpg").write_bytes(p[0].read_bytes()[:200])
    ds = build_dataset({"name": "homographies", "source": {"name": "folder", "root": str(tmp_path)},
                        "resize": [400, 500], "homography": {"size": 128}})
    assert isinstance(ds, HomographyPairs) and len(ds) == 3
    with pytest.warns(CorruptImageWarning, match="zz_truncated.jpg"):
        s = ds[(2, 11)]
    assert s["view0"].shape == s["view1"].shape == (3, 128, 128)
    # a sample is a pure function of its (index, seed) key
    a, b = ds[(1, 5)], ds[(1, 5)]
    assert torch.equal(a["view0"], b["view0"]) and torch.equal(a["H_0to1"], b["H_0to1"])
    assert not torch.equal(ds[(1, 6)]["view0"], a["view0"])


def test_coco_layout(tmp_path):
    p = photos(3)
    root = tmp_path / "coco"
    for i, q in enumerate(p[:2]):
        small_copy(q, root / "train2017" / f"{i:012d}.jpg", 400)
    small_copy(p[2], root / "val2017" / "000000000139.jpg", 400)
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text("{}")
    assert [q.name for q in coco_images(root, "train")] == ["000000000000.jpg", "000000000001.jpg"]
    assert len(coco_images(root, "val")) == 1
    with pytest.raises(FileNotFoundError, match="test2017"):
        coco_images(root, "test")
    ds = build_dataset({"name": "coco", "source": {"name": "coco", "root": str(root), "split": "val"}})
    assert ds[0]["image"].shape[0] == 3
    pairs = HomographyPairs({"source": {"name": "coco", "root": str(root)}, "resize": [400, 400],
                             "homography": {"mode": "full", "size": [120, 160]}})
    assert pairs[0]["view1"].shape == (3, 120, 160)


# ----------------------------------------------------------------------------- posed pairs
def make_caps_megadepth(root: Path) -> None:
    views = strecha_views(3)
    folder = root / "train" / "0015" / "dense0" / "aligned"
    lines = ["# name w h fx fy cx cy R t"]
    for img, K, R, t in views:
        sx, sy = small_copy(img, folder / "images" / img.name)
        Ks = scale_K(K, sx, sy)
        w, h = round(3072 * sx), round(2048 * sy)
        lines.append(" ".join([img.name, str(w), str(h)] + [f"{v:.10g}" for v in
                               (Ks[0, 0], Ks[1, 1], Ks[0, 2], Ks[1, 2], *R.ravel(), *t)]))
    (folder / "img_cam.txt").write_text("\n".join(lines) + "\n")
    n = [v[0].name for v in views]
    (folder / "pairs.txt").write_text(f"{n[0]} {n[1]}\n{n[1]} {n[2]}\n")
    # a second scene whose only pair has a relative rotation > 80°: dropped like CAPS does
    other = root / "train" / "0016" / "dense0" / "aligned"
    img, K, R, t = views[0]
    small_copy(img, other / "images" / "x.jpg", 200)
    small_copy(img, other / "images" / "y.jpg", 200)
    Rz = cv2.Rodrigues(np.array([0, 0, np.deg2rad(120.0)]))[0]
    rows = [f"x.jpg 200 133 100 100 100 66 {' '.join(map(str, np.eye(3).ravel()))} 0 0 0",
            f"y.jpg 200 133 100 100 100 66 {' '.join(map(str, Rz.ravel()))} 0 0 1"]
    (other / "img_cam.txt").write_text("\n".join(rows) + "\n")
    (other / "pairs.txt").write_text("x.jpg y.jpg\n")


def test_megadepth_caps_layout(tmp_path):
    make_caps_megadepth(tmp_path)
    assert len(megadepth_images(tmp_path, "train")) == 5
    ds = MegaDepthPairs({"root": str(tmp_path), "resize_max": 640})
    assert len(ds) == 2  # the 120° pair is dropped
    s = ds[0]
    assert s["image0"].shape[0] == 3 and max(s["image0"].shape[-2:]) == 640
    assert epipolar_error(s) < 2.0  # GT poses and intrinsics are consistent with the pixels
    batch = MegaDepthPairs.collate([ds[0], ds[1]])
    assert batch["T_0to1"].shape == (2, 4, 4)
    with pytest.raises(FileNotFoundError, match="img_cam.txt"):
        MegaDepthPairs({"root": str(tmp_path / "nothing")})
    src = source_paths({"name": "megadepth", "root": str(tmp_path), "scenes": ["0015"]})
    assert len(src) == 3


def test_phototourism_imc2021_layout(tmp_path):
    views = strecha_views(3)
    scene = tmp_path / "fountain"
    rows = []
    for img, K, R, t in views:
        sx, sy = small_copy(img, scene / "images" / f"{img.stem}.jpg")
        rows.append({"image_id": img.stem, "camera_intrinsics": " ".join(map(str, scale_K(K, sx, sy).ravel())),
                     "rotation_matrix": " ".join(map(str, R.ravel())), "translation_vector": " ".join(map(str, t))})
    with open(scene / "calibration.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ids = [r["image_id"] for r in rows]
    with open(scene / "pair_covisibility.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pair", "covisibility", "fundamental_matrix"])
        w.writerow([f"{ids[0]}-{ids[1]}", 0.6, " ".join(["0"] * 9)])
        w.writerow([f"{ids[0]}-{ids[2]}", 0.05, " ".join(["0"] * 9)])
    assert len(phototourism_images(tmp_path)) == 3
    ds = PhotoTourismPairs({"root": str(tmp_path), "resize_max": 640})
    assert len(ds) == 1  # covisibility 0.05 < 0.1
    assert epipolar_error(ds[0]) < 2.0
    assert get_dataset("phototourism") is PhotoTourismPairs


def test_phototourism_imc2020_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    views = strecha_views(2)
    sub = tmp_path / "fountain" / "set_100"
    for img, K, R, t in views:
        sx, sy = small_copy(img, sub / "images" / f"{img.stem}.jpg")
        (sub / "calibration").mkdir(parents=True, exist_ok=True)
        with h5py.File(sub / "calibration" / f"calibration_{img.stem}.h5", "w") as f:
            f["K"] = scale_K(K, sx, sy)
            f["R"] = R
            f["T"] = t
    ds = PhotoTourismPairs({"root": str(tmp_path), "resize_max": 640})
    assert len(ds) == 1  # no pair list: all pairs
    assert epipolar_error(ds[0]) < 2.0
