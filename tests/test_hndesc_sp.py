"""The paper's pipeline (confs hndesc_caps_sp / hndesc_r2d2_sp): equal to the released HNDesc code.

tests/fixtures/hndesc_sp_official.npz holds what the released code (imelekhov/HNDesc,
``LocalDetectorDescriptor.evaluate_img`` with its ``superpoint_orig`` detector at the Aachen
settings, keypoints rescaled as its Aachen importer does) computed on the two JPEG photos of
tests/fixtures/hndesc_sp_photos (strips of public-domain / CC0 photos from the scikit-image wheel,
long side over 1024, one landscape, one portrait: tests/fixtures/make_sp_photos.py) with the seeded
random weights of tests/fixtures/hndesc_sp_weights.py (every parameter and BatchNorm statistic
drawn), run with torch 2.14.1 / torchvision 0.29.1 / Pillow 13.0 / OpenCV 5.1: all keypoints, the
descriptors of every ``every``-th keypoint, and every descriptor's projection on one fixed unit
vector. Our extraction through our CLI and through hloc's CLI must give the same keypoints
(0.05 px) and descriptors (max abs difference 1e-5).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, read_h5, requires_hloc, run_py

FIXTURES = ROOT / "tests" / "fixtures"
OFFICIAL = FIXTURES / "hndesc_sp_official.npz"
PHOTOS = FIXTURES / "hndesc_sp_photos"
KP_TOL, DESC_TOL = 0.05, 1e-5


def _weights_recipe():
    spec = importlib.util.spec_from_file_location("hndesc_sp_weights", FIXTURES / "hndesc_sp_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def official():
    return dict(np.load(OFFICIAL))


@pytest.fixture(scope="session")
def random_weights(official, tmp_path_factory):
    """The recipe's files (checked against the fixture's checksums), installed in a user weights dir."""
    from hndesc_features import weights

    recipe = _weights_recipe()
    files = recipe.write(tmp_path_factory.mktemp("released_layouts"))
    for name, (_, cs) in files.items():
        assert cs == pytest.approx(float(official[f"checksum/{name}"]), rel=1e-12), \
            f"the seeded draw of {name} changed: the fixture no longer matches these weights"
    user = tmp_path_factory.mktemp("user_weights")
    mp = pytest.MonkeyPatch()
    mp.setenv(weights.ENV_VAR, str(user))
    for name, (path, _) in files.items():
        weights.install(name, path)
    mp.undo()
    return {"user_dir": user, "files": {n: p for n, (p, _) in files.items()}}


@pytest.fixture(scope="session")
def photo_dir(official):
    assert sorted(p.name for p in PHOTOS.iterdir()) == sorted(map(str, official["images"]))
    return PHOTOS


def _names(official):
    return [Path(str(r)).name for r in official["images"]]


def assert_equal_to_official(official, backbone: str, feats: dict):
    """feats: image name → (keypoints N×2, descriptors D×N) as stored in an hloc .h5."""
    from scipy.spatial import cKDTree

    every = int(official["every"])
    for i, name in enumerate(_names(official)):
        ref_k = official[f"keypoints/{i}"]
        k, d = feats[name]
        assert d.dtype == np.float32 and d.shape == (128, len(k))
        assert len(k) == len(ref_k), f"{name}: {len(k)} keypoints, the released code finds {len(ref_k)}"
        dist, idx = cKDTree(k).query(ref_k)
        assert dist.max() <= KP_TOL, f"{name}: a keypoint of the released code is {dist.max():.3f} px from ours"
        assert len(np.unique(idx)) == len(ref_k)
        ours = d.T[idx]  # ours in the released code's order
        sub = np.abs(ours[::every] - official[f"descriptors/{backbone}/{i}"]).max()
        proj = np.abs(ours @ official["projection"] - official[f"projected/{backbone}/{i}"]).max()
        assert sub <= DESC_TOL and proj <= DESC_TOL, f"{name}: descriptors differ by {sub:.2e} / {proj:.2e}"


def _read_feats(h5: Path, names) -> dict:
    data = read_h5(h5)
    return {n: (data[f"{n}/keypoints"][0], data[f"{n}/descriptors"][0]) for n in names}


def test_fixture_covers_the_resize_cases(official):
    """Both photos are larger than resize_max (one landscape, one portrait), so the resize of each
    input is part of the proof; the sizes are the released code's own."""
    from hndesc_features.models.hndesc_sp import official_size

    shapes = []
    for i in range(len(official["images"])):
        (w, h), new = official[f"sizes/{i}"]
        assert max(w, h) > 1024 and tuple(new) == official_size(int(w), int(h), 1024)
        shapes.append("portrait" if h > w else "landscape")
        assert len(official[f"keypoints/{i}"]) == 4096
    assert set(shapes) == {"portrait", "landscape"}
    assert official_size(1024, 576, 1024) == (1024, 576)  # not larger: kept


@pytest.mark.heavy(8)
@pytest.mark.parametrize("backbone", ["caps", "r2d2"])
def test_our_cli_equals_the_released_code(backbone, official, random_weights, photo_dir, tmp_path, monkeypatch):
    from hndesc_features import weights
    from hndesc_features.confs import get_feature_conf
    from hndesc_features.extract_features import main

    monkeypatch.setenv(weights.ENV_VAR, str(random_weights["user_dir"]))
    conf = get_feature_conf(f"hndesc_{backbone}_sp")
    h5 = main(conf, photo_dir, tmp_path, as_half=False, progress=False)
    assert_equal_to_official(official, backbone, _read_feats(h5, _names(official)))


@pytest.mark.heavy(8)
@requires_hloc
@pytest.mark.parametrize("backbone", ["caps", "r2d2"])
def test_hloc_cli_equals_the_released_code(backbone, official, random_weights, photo_dir, tmp_path):
    from hndesc_features.confs import get_feature_conf

    conf = f"hndesc_{backbone}_sp"
    run_py(["-m", "hloc.extract_features", "--conf", conf, "--image_dir", str(photo_dir),
            "--export_dir", str(tmp_path)], env_extra={"HNDESC_WEIGHTS_DIR": str(random_weights["user_dir"])})
    h5 = tmp_path / (get_feature_conf(conf)["output"] + ".h5")
    feats = _read_feats(h5, _names(official))
    assert_equal_to_official(official, backbone, feats)
    for name in _names(official):  # hloc stored the original size and rescaled nothing
        (w, h), _ = official[f"sizes/{_names(official).index(name)}"]
        assert tuple(read_h5(h5)[f"{name}/image_size"][0]) == (w, h)


def test_gray_rebuilt_from_rgb_is_bounded(official, random_weights, photo_dir):
    """Without the file (an image tensor only), gray comes from the RGB pixels instead of libjpeg's
    luma: at least 99 % of the released code's keypoints stay (measured: 99.95 % and 99.98 % on the two
    strips; 100 % and 99.5 % on a Sacré-Cœur photo and a 6-MP camera JPEG whose saturated colours
    clip). Descriptors at the kept keypoints are unchanged
    (test_extractor_without_a_file_uses_the_tensor)."""
    from hndesc_features import weights
    from hndesc_features.models.hndesc_sp import detector_input, official_size, read_official
    from hndesc_features.handcrafted import to_gray_u8

    detector, _ = weights.load_model(random_weights["files"]["superpoint"], "superpoint")
    detector.conf.update(nms_radius=3, keypoint_threshold=0.005, remove_borders=4, max_keypoints=4096)
    for i, name in enumerate(_names(official)):
        gray, rgb = read_official(photo_dir / name)
        rebuilt = to_gray_u8(rgb)
        size = official_size(gray.shape[1], gray.shape[0], 1024)
        # the released code's keypoints, back on the detector's pixel grid (SuperPoint's are whole pixels)
        scale = np.array([gray.shape[1], gray.shape[0]], np.float64) / np.array(size)
        a = np.rint((official[f"keypoints/{i}"].astype(np.float64) + 0.5) / scale - 0.5)
        b = detector.detect(detector_input(rebuilt, size))[0][0].numpy()
        assert np.array_equal(b, np.rint(b))
        same = len({tuple(p) for p in a.tolist()} & {tuple(p) for p in b.tolist()}) / len(a)
        assert same >= 0.99, f"{name}: only {same:.4f} of the keypoints stay with gray rebuilt from RGB"


def test_extractor_without_a_file_uses_the_tensor(random_weights, photo_dir, monkeypatch):
    """Called from Python with only the image tensor (no path), the model still runs: gray is
    rebuilt from the RGB; with the path, the file is read (the released code's pixels)."""
    from hndesc_features import weights
    from hndesc_features.extractors import load_model
    from hndesc_features.io import read_image

    monkeypatch.setenv(weights.ENV_VAR, str(random_weights["user_dir"]))
    model = load_model({"name": "hf_hndesc_sp", "backbone": "r2d2", "resize_max": 320, "max_keypoints": 300})
    name = sorted(p.name for p in photo_dir.iterdir())[0]
    image = torch.from_numpy(read_image(photo_dir / name).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    a = model({"image": image})
    b = model({"image": image, "image_path": str(photo_dir / name)})
    for out in (a, b):
        assert out["keypoints"].shape == (1, 300, 2) and out["descriptors"].shape == (1, 128, 300)
        H, W = image.shape[-2:]  # keypoints in the input's (original) resolution
        assert out["keypoints"][..., 0].max() > 320 and out["keypoints"][..., 0].max() < W
        assert torch.allclose(out["descriptors"].norm(dim=1), torch.ones(1, 300), atol=1e-5)
    ka, kb = a["keypoints"][0].tolist(), b["keypoints"][0].tolist()
    shared = set(map(tuple, ka)) & set(map(tuple, kb))
    assert len(shared) >= 0.95 * 300
    ia = [i for i, p in enumerate(ka) if tuple(p) in shared]
    ib = [kb.index(ka[i]) for i in ia]
    assert torch.equal(a["descriptors"][0][:, ia], b["descriptors"][0][:, ib])  # same RGB input: same descriptors


def test_superpoint_weights_install_hloc_checkout_and_errors(random_weights, tmp_path):
    """`weights install superpoint FILE` checks the layout; hloc's checkout is searched; a missing
    file gets the one-line install instruction."""
    files = random_weights["files"]
    env = {"HNDESC_WEIGHTS_DIR": str(tmp_path / "user"), "HNDESC_NO_HLOC_HOOK": "1"}
    p = run_py(["-m", "hndesc_features.weights", "install", "superpoint", str(files["hndesc_r2d2"])],
               env_extra=env, check=False)
    assert p.returncode == 2 and "does not fit architecture 'superpoint'" in p.stderr and "conv1a.weight" in p.stderr
    # an hloc checkout (pip install -e) keeps superpoint_v1.pth under third_party/
    fake = tmp_path / "checkout"
    (fake / "hloc").mkdir(parents=True)
    (fake / "hloc" / "__init__.py").write_text("")
    rel = fake / "third_party" / "SuperGluePretrainedNetwork" / "models" / "weights"
    rel.mkdir(parents=True)
    code = ("from hndesc_features.extractors import load_model\n"
            "m = load_model({'name': 'hf_hndesc_sp', 'backbone': 'r2d2', 'weights': %r})\n"
            "print('DETECTOR', type(m.net.detector).__name__)\n" % str(files["hndesc_r2d2"]))
    p = run_py(["-c", code], env_extra={**env, "PYTHONPATH": str(fake)}, check=False)
    assert p.returncode != 0
    msg = [line for line in p.stderr.splitlines() if "no weights 'superpoint'" in line]
    assert msg and "hloc's checkout" in msg[0] and "weights install superpoint FILE" in msg[0]
    (rel / "superpoint_v1.pth").write_bytes(files["superpoint"].read_bytes())
    p = run_py(["-c", code], env_extra={**env, "PYTHONPATH": str(fake)})
    assert "DETECTOR SuperPoint" in p.stdout
    p = run_py(["-m", "hndesc_features.weights", "list"], env_extra={**env, "PYTHONPATH": str(fake)})
    assert any("superpoint" in line and "hloc checkout" in line for line in p.stdout.splitlines())
    p = run_py(["-m", "hndesc_features.weights", "install", "superpoint", str(files["superpoint"])], env_extra=env)
    assert (tmp_path / "user" / "superpoint.pt").is_file()
