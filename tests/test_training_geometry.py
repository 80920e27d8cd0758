"""The homography-pair sampler: exact correspondences, H-crop parameter ranges, photometric aug."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hndesc_features.training.augment import PhotometricAugmentation
from hndesc_features.training.geometry.homography import (
    DEFAULT_CONF, corners, hcrop_homography, inside, reprojection_matches, sample_homography,
    sample_pair, valid_mask, visibility, warp_image, warp_points,
)

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)
try:  # oversubscribed BLAS threads spin on a shared CPU: 10x slower numpy
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
except ImportError:
    pass


def real_photo() -> np.ndarray:
    """A real RGB photo (shared data if present, else one inside the scikit-image wheel)."""
    shared = REPO.parent / "shared" / "data" / "sceaux_castle" / "images"
    if shared.is_dir():
        p = sorted(shared.glob("*.JPG"))[0]
        img = cv2.imread(str(p))[:, :, ::-1]
        return cv2.resize(img, (1024, 768), interpolation=cv2.INTER_AREA)
    skimage = pytest.importorskip("skimage.data", reason="no real photo: ../shared/data and scikit-image absent")
    return skimage.astronaut()


def to_t(img):
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0


def bilinear(img: torch.Tensor, pts: np.ndarray) -> np.ndarray:
    """Sample C×H×W at N×2 pixel coordinates (pixel centres at integers)."""
    h, w = img.shape[-2:]
    g = torch.from_numpy(pts).float()
    g = torch.stack([2 * g[:, 0] / (w - 1) - 1, 2 * g[:, 1] / (h - 1) - 1], -1)
    return F.grid_sample(img[None], g[None, None], align_corners=True)[0, :, 0].T.numpy()


@pytest.mark.parametrize("mode", ["hcrops", "full"])
def test_sampler_correspondences_match_warped_content(mode):
    img = cv2.GaussianBlur(real_photo(), (0, 0), 2.0)  # smooth: bilinear reads are then exact-ish
    rng = np.random.default_rng(3)
    for _ in range(4):
        out = sample_pair(to_t(img), {"mode": mode, "size": 200}, rng)
        h, w = out["view0"].shape[-2:]
        ys, xs = np.mgrid[5:h - 5:6, 5:w - 5:6]
        p0 = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
        p1 = warp_points(p0, out["H_0to1"])
        vis = visibility(p0, out["H_0to1"], (h, w), margin=2)
        # both points must come from inside the source image
        vis &= out["valid0"][p0[:, 1].astype(int), p0[:, 0].astype(int)]
        assert vis.sum() > 50
        a = bilinear(out["view0"], p0[vis])
        b = bilinear(out["view1"], p1[vis])
        err = np.abs(a - b).mean()
        # a one-pixel shift of the correspondences is clearly worse: the test is sensitive
        err_shift = np.abs(a - bilinear(out["view1"], p1[vis] + [1.5, 0])).mean()
        assert err < 0.01, err
        assert err_shift > 2 * err
        # the views are the source warped by A0, A1: compare with the source directly
        src = warp_points(p0[vis], np.linalg.inv(out["A0"]))
        assert np.abs(bilinear(to_t(img), src) - a).mean() < 0.01


def test_warp_image_is_kornia_and_matches_opencv():
    img = real_photo()[:240, :320]
    H = sample_homography((240, 320), np.random.default_rng(0), rotation=20, perspective=0.05)
    ours = warp_image(to_t(img), H, (240, 320)).permute(1, 2, 0).numpy() * 255
    ref = cv2.warpPerspective(img, H, (320, 240), flags=cv2.INTER_LINEAR).astype(np.float32)
    m = valid_mask(H, (240, 320), (240, 320))
    m = cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert np.abs(ours - ref)[m].mean() < 1.0  # same pixel convention (to rounding)


def test_hcrop_parameter_ranges():
    conf = DEFAULT_CONF["hcrops"]
    rng = np.random.default_rng(0)
    crop = 256
    seen = {"zoom": [], "rot": [], "f": [], "vertical": []}
    for _ in range(300):
        A, c, p = hcrop_homography((900, 1200), crop, rng, conf["zoom"], conf["max_rotation"],
                                   conf["side_factors"])
        assert 0.8 <= p["zoom"] <= 1.0
        assert -15.0 <= p["rotation"] <= 15.0
        assert np.all((0.6 <= p["side_factors"]) & (p["side_factors"] <= 1.0))
        seen["zoom"].append(p["zoom"])
        seen["rot"].append(p["rotation"])
        seen["f"] += list(p["side_factors"])
        seen["vertical"].append(p["vertical"])
        # the crop's corners come from inside the image, centred on c
        img_corners = warp_points(corners(crop, crop), np.linalg.inv(A))
        assert inside(img_corners, (900, 1200)).all()
        np.testing.assert_allclose(img_corners.mean(0), c, atol=1e-6)
        # zoom ≤ 1 and side factors ≤ 1: the region seen is never larger than the crop
        q = img_corners[[0, 1, 3, 2]]
        area = 0.5 * abs(np.dot(q[:, 0], np.roll(q[:, 1], 1)) - np.dot(q[:, 1], np.roll(q[:, 0], 1)))
        assert area <= (crop - 1) ** 2 * p["zoom"] ** 2 + 1e-6
    # the whole ranges are used
    assert min(seen["zoom"]) < 0.82 and max(seen["zoom"]) > 0.98
    assert min(seen["rot"]) < -13 and max(seen["rot"]) > 13
    assert min(seen["f"]) < 0.62 and max(seen["f"]) > 0.98
    assert 0.3 < np.mean(seen["vertical"]) < 0.7


def test_hcrop_pair_centre_shift():
    rng = np.random.default_rng(1)
    img = torch.zeros(3, 700, 900)
    shifts = []
    for _ in range(50):
        out = sample_pair(img, {"mode": "hcrops", "size": 256}, rng)
        c0, c1 = out["params"][0]["center"], out["params"][1]["center"]
        shifts.append(c1 - c0)
        # H_0to1 = A1 A0^-1: a crop-0 pixel goes where its image point lands in crop 1
        p0 = np.random.default_rng(0).uniform(0, 255, (20, 2))
        via_image = warp_points(warp_points(p0, np.linalg.inv(out["A0"])), out["A1"])
        np.testing.assert_allclose(warp_points(p0, out["H_0to1"]), via_image, atol=1e-6)
    shifts = np.array(shifts)
    np.testing.assert_allclose(np.abs(shifts), 0.1 * 256, atol=1e-9)
    assert set(np.sign(shifts[:, 0])) == {-1.0, 1.0} and set(np.sign(shifts[:, 1])) == {-1.0, 1.0}


def test_full_mode_bounds():
    rng = np.random.default_rng(2)
    for _ in range(100):
        H = sample_homography((480, 640), rng, scale=(0.8, 1.25), rotation=20, translation=0.0, perspective=0.0)
        # similarity about the centre: centre fixed, scale and angle within bounds
        c = np.array([[319.5, 239.5]])
        np.testing.assert_allclose(warp_points(c, H), c, atol=1e-6)
        s = math.sqrt(abs(np.linalg.det(H[:2, :2])))
        ang = math.degrees(math.atan2(H[1, 0], H[0, 0]))
        assert 0.8 - 1e-9 <= s <= 1.25 + 1e-9 and abs(ang) <= 20 + 1e-9


def test_reprojection_matches_exact_and_visibility():
    rng = np.random.default_rng(0)
    H = sample_homography((300, 400), rng, rotation=25)
    ys, xs = np.mgrid[4:300:15, 4:400:15]  # ≥ 15 px apart
    kp0 = np.stack([xs.ravel(), ys.ravel()], -1) + rng.uniform(-2, 2, (xs.size, 2))
    kp1 = warp_points(kp0, H)
    keep = inside(kp1, (300, 400))
    perm = rng.permutation(keep.sum())
    m, err = reprojection_matches(kp0, kp1[keep][perm], H, threshold=1.0)
    assert len(m) == keep.sum()
    assert err.max() < 1e-6
    np.testing.assert_array_equal(np.nonzero(keep)[0][perm][m[:, 1]], m[:, 0])
    # points shifted by 5 px are not matches at 3 px
    m2, _ = reprojection_matches(kp0, kp1 + 5.0, H, threshold=3.0)
    assert len(m2) == 0


def test_photometric_augmentation_is_seeded_and_bounded():
    img = to_t(real_photo()[:128, :128])
    aug = PhotometricAugmentation({"blur": {"p": 1.0}, "noise": {"p": 1.0}})
    with torch.random.fork_rng():
        torch.manual_seed(5)
        a = aug(img)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        b = aug(img)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and not torch.equal(a, img)
    off = PhotometricAugmentation({"enable": False})
    assert torch.equal(off(img), img)
    gray = aug(img[:1][None])
    assert gray.shape == (1, 1, 128, 128)
