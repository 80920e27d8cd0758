"""Our SURF (hndesc_features.surf) on real photos: format, threshold units, localisation,
invariance to rotation / scale through matching accuracy on synthetic warps."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from hndesc_features import surf
from hndesc_features.surf import detect_and_describe

skd = pytest.importorskip("skimage.data", reason="scikit-image provides the test photos")

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _gray(name: str) -> np.ndarray:
    img = getattr(skd, name)()
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return _gray("astronaut")


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return _gray("camera")


def _warp(img: np.ndarray, angle: float, scale: float):
    """Rotate (degrees, counter-clockwise on screen) and scale about the centre, on a canvas
    that holds the whole result. Returns the warped image and the 2×3 map (x, y) → (x', y')."""
    h, w = img.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(round(h * s + w * c)), int(round(h * c + w * s))
    m[0, 2] += (nw - 1) / 2 - (w - 1) / 2
    m[1, 2] += (nh - 1) / 2 - (h - 1) / 2
    return cv2.warpAffine(img, m, (nw, nh), flags=cv2.INTER_LINEAR), m


def _mma(f0: dict, f1: dict, m: np.ndarray, thr: float = 3.0):
    """Mutual-NN matches: share (and number) within `thr` px of the ground-truth warp."""
    sim = f0["descriptors"] @ f1["descriptors"].T
    nn01, nn10 = sim.argmax(1), sim.argmax(0)
    i = np.nonzero(nn10[nn01] == np.arange(len(nn01)))[0]
    j = nn01[i]
    gt = f0["keypoints"][i] @ m[:, :2].T + m[:, 2]
    ok = np.linalg.norm(gt - f1["keypoints"][j], axis=1) < thr
    return float(ok.mean()), int(ok.sum())


def _match_warp(img, angle, scale, n=1000, **kw):
    warped, m = _warp(img, angle, scale)
    return _mma(detect_and_describe(img, max_keypoints=n, **kw),
                detect_and_describe(warped, max_keypoints=n, **kw), m)


# ----------------------------------------------------------------------------- format
def test_output_format(astronaut):
    n = 500
    f = detect_and_describe(astronaut, max_keypoints=n)
    assert f["keypoints"].shape == (n, 2) and f["keypoints"].dtype == np.float32
    assert f["descriptors"].shape == (n, 64) and f["descriptors"].dtype == np.float32
    for k in ("scores", "scales", "oris", "laplacian"):
        assert f[k].shape == (n,)
    assert f["laplacian"].dtype == np.int8 and set(np.unique(f["laplacian"])) <= {-1, 1}
    assert np.all(np.diff(f["scores"]) <= 0) and np.all(f["scores"] > 30.0)
    np.testing.assert_allclose(np.linalg.norm(f["descriptors"], axis=1), 1.0, atol=1e-4)
    h, w = astronaut.shape
    assert np.all((f["keypoints"] >= 0) & (f["keypoints"] <= [w - 1, h - 1]))
    assert np.all((f["oris"] >= 0) & (f["oris"] < 360))
    assert f["scales"].min() >= 9.0          # OpenCV size: filter side, smallest detected ~12
    # float input in [0, 1] is the same image
    g = detect_and_describe(astronaut.astype(np.float32) / 255.0, max_keypoints=n)
    np.testing.assert_allclose(g["keypoints"], f["keypoints"], atol=1e-3)
    # the top-k is a prefix of the full, sorted list
    full = detect_and_describe(astronaut)
    assert len(full["scores"]) > n
    np.testing.assert_allclose(full["keypoints"][:n], f["keypoints"], atol=1e-5)


def test_extended_is_128d(camera):
    f = detect_and_describe(camera, extended=True, max_keypoints=200)
    assert f["descriptors"].shape == (200, 128)
    np.testing.assert_allclose(np.linalg.norm(f["descriptors"], axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("image", [np.zeros((240, 320), np.uint8),
                                   np.full((240, 320), 0.5, np.float32),
                                   np.zeros((8, 8), np.uint8)])
@pytest.mark.parametrize("extended", [False, True])
def test_blank_image_gives_empty_arrays(image, extended):
    f = detect_and_describe(image, extended=extended)
    d = 128 if extended else 64
    assert f["keypoints"].shape == (0, 2) and f["descriptors"].shape == (0, d)
    assert all(f[k].shape == (0,) for k in ("scores", "scales", "oris", "laplacian"))


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="grayscale"):
        detect_and_describe(np.zeros((4, 32, 32), np.uint8))


# ----------------------------------------------------------------------------- detector
def test_box_filters_match_direct_sums(camera):
    """det / trace of the 9×9 and 15×15 filters equal sums written out pixel by pixel:
    Dxx, Dyy lobes as means (OpenCV units), Dxy normalised like the Dxx lobes, weight 0.9."""
    img = camera.astype(np.float64)
    s = surf.integral_image(img)
    pad = 20
    sp = np.pad(s, pad, mode="edge")
    rng = np.random.default_rng(0)
    for size in (9, 15):
        det, tr = surf._hessian_layer(sp, pad, *img.shape, size, 1)
        lobe, half = size // 3, size // 2
        for y, x in rng.integers(half, 512 - half, (20, 2)):
            win = img[y - half:y + half + 1, x - half:x + half + 1]
            band = win[half - lobe + 1:half + lobe, :]                 # 2*lobe-1 rows
            dxx = (band[:, :lobe].mean() + band[:, -lobe:].mean()
                   - 2 * band[:, lobe:2 * lobe].mean())
            band = win[:, half - lobe + 1:half + lobe]
            dyy = (band[:lobe].mean() + band[-lobe:].mean() - 2 * band[lobe:2 * lobe].mean())
            c = half
            q = lambda r0, c0: win[r0:r0 + lobe, c0:c0 + lobe].sum()  # noqa: E731
            dxy = (q(c - lobe, c - lobe) + q(c + 1, c + 1) - q(c - lobe, c + 1)
                   - q(c + 1, c - lobe)) / (lobe * (2 * lobe - 1))
            assert tr[y, x] == pytest.approx(dxx + dyy, abs=1e-3)
            assert det[y, x] == pytest.approx(dxx * dyy - (0.9 * dxy) ** 2, rel=1e-4, abs=1e-2)


def test_threshold_30_gives_thousands_of_keypoints():
    photos = sorted((DATA / "photos").glob("*.jpg")) if (DATA / "photos").is_dir() else []
    if not photos:
        pytest.skip(f"shared photos not found at {DATA / 'photos'}")
    img = cv2.imread(str(photos[1]), cv2.IMREAD_GRAYSCALE)
    assert max(img.shape) == 1024
    scores = detect_and_describe(img, hessian_threshold=30.0)["scores"]
    assert len(scores) > 2000
    assert 0 < np.sum(scores > 300.0) < len(scores) / 2


def test_blob_localisation_is_subpixel():
    """Gaussian blobs at sub-pixel centres: located within 0.1 px, size grows with sigma."""
    yy, xx = np.mgrid[0:160, 0:160].astype(np.float64)
    rng = np.random.default_rng(1)
    sizes = []
    for sigma in (3.0, 6.0):
        for _ in range(3):
            c = 80 + rng.uniform(-2, 2, 2)
            img = 40 + 150 * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * sigma ** 2))
            f = detect_and_describe(img.astype(np.float32) / 255.0, max_keypoints=1)
            assert np.linalg.norm(f["keypoints"][0] - c) < 0.1
            assert f["laplacian"][0] == -1          # bright blob: negative second derivatives
            sizes.append(f["scales"][0])
    assert np.mean(sizes[3:]) / np.mean(sizes[:3]) == pytest.approx(2.0, rel=0.15)


def test_integer_shift_moves_keypoints_by_the_same(astronaut):
    """Cropping by (dx, dy) shifts keypoints by exactly (-dx, -dy) where every sampling grid
    is aligned (multiples of the coarsest step, 8), and descriptors do not change."""
    astronaut = np.ascontiguousarray(astronaut[64:448, 64:448])
    dx, dy = 16, 8
    f0 = detect_and_describe(astronaut)
    f1 = detect_and_describe(astronaut[dy:, dx:])
    p0 = f0["keypoints"] - [dx, dy]
    h, w = astronaut[dy:, dx:].shape
    far = ((p0 > 60) & (p0 < [w - 61, h - 61])).all(1)   # away from both images' borders
    assert far.sum() > 300
    d = np.linalg.norm(p0[far][:, None] - f1["keypoints"][None], axis=2)
    j = d.argmin(1)
    assert np.mean(d.min(1) < 1e-3) > 0.99
    sim = np.sum(f0["descriptors"][far] * f1["descriptors"][j], axis=1)
    assert np.median(sim) > 0.9999
    # an odd shift keeps the finest octave (step 1) exact, the others sub-pixel consistent
    f2 = detect_and_describe(astronaut[3:, 5:])
    p0 = f0["keypoints"] - [5, 3]
    far = ((p0 > 60) & (p0 < [w - 61, h - 61])).all(1)
    d = np.linalg.norm(p0[far][:, None] - f2["keypoints"][None], axis=2).min(1)
    fine = f0["scales"][far] < 21
    assert np.mean(d[fine] < 1e-3) > 0.95
    assert np.median(d[~fine]) < 0.5


def test_orientation_follows_opencv_convention(camera):
    """np.rot90 (counter-clockwise on screen) lowers OpenCV SIFT's angles by 90°: ours too."""
    camera = np.ascontiguousarray(camera[:505, :505])   # W-1 multiple of every grid step
    rot = np.ascontiguousarray(np.rot90(camera))
    h, w = camera.shape
    f0 = detect_and_describe(camera, max_keypoints=500)
    f1 = detect_and_describe(rot, max_keypoints=500)
    gt = np.stack([f0["keypoints"][:, 1], w - 1 - f0["keypoints"][:, 0]], -1)  # (x,y)->(y, W-1-x)
    d = np.linalg.norm(gt[:, None] - f1["keypoints"][None], axis=2)
    j, same = d.argmin(1), d.min(1) < 1e-3
    assert same.mean() > 0.9
    delta = (f0["oris"][same] - f1["oris"][j[same]]) % 360
    assert np.mean(np.abs(delta - 90) < 1.0) > 0.9
    sift = cv2.SIFT_create(300)
    k0, k1 = sift.detect(camera, None), sift.detect(rot, None)
    a0 = np.array([k.angle for k in k0])
    p0 = np.array([[k.pt[1], w - 1 - k.pt[0]] for k in k0])
    p1 = np.array([k.pt for k in k1])
    dd = np.linalg.norm(p0[:, None] - p1[None], axis=2)
    jj, ss = dd.argmin(1), dd.min(1) < 1.0     # OpenCV's SIFT is ~0.5 px off-equivariant
    sd = (a0[ss] - np.array([k1[i].angle for i in jj[ss]])) % 360
    assert ss.sum() > 50 and np.median(np.abs(sd - 90)) < 5.0


# ----------------------------------------------------------------------------- matching
@pytest.mark.parametrize("angle,scale,min_mma", [(90, 1.0, 0.9), (30, 1.0, 0.5), (0, 0.5, 0.6)])
def test_matching_survives_rotation_and_scale(astronaut, camera, angle, scale, min_mma):
    for img in (astronaut, camera):
        mma, n_ok = _match_warp(img, angle, scale)
        assert mma > min_mma and n_ok > 100, (angle, scale, mma, n_ok)


def test_extended_matches_under_rotation(astronaut):
    mma, n_ok = _match_warp(astronaut, 90, 1.0, extended=True)
    assert mma > 0.9 and n_ok > 500


def test_upright_fails_at_90_degrees_but_works_upright(astronaut):
    mma_u90, _ = _match_warp(astronaut, 90, 1.0, n=500, upright=True)
    mma_o90, _ = _match_warp(astronaut, 90, 1.0, n=500)
    assert mma_u90 < 0.2 < 0.9 < mma_o90
    mma_u0, n_u0 = _match_warp(astronaut, 0, 0.8, n=500, upright=True)
    assert mma_u0 > 0.8 and n_u0 > 150
    f = detect_and_describe(astronaut, upright=True, max_keypoints=50)
    assert np.all(f["oris"] == 0)
