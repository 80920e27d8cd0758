"""The fast inference path of SIFT and of the residual descriptor computes what the straightforward
path computes: the one-pyramid ``detect_sift`` against OpenCV detect + top-k + compute (two
pyramids), and ``ResidualDescriptor.extract`` (describe: pooled-then-normalised channels-last CNN,
einsum frame mixing) against the training ``forward`` on the same detections. Real photos at the
benchmark resolution (1024 px) with the shipped weights."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import skimage_photo
from hndesc_features.handcrafted import detect_sift, sift_to_rootsift, to_gray_u8
from hndesc_features.models.checkpoints import load_weights
from hndesc_features.weights import PACKAGE_DIR as WEIGHTS_DIR
from hndesc_features.models.residual import _sift_octave, context_descriptors

torch.set_num_threads(1)
cv2.setNumThreads(1)


def reference_sift(gray, max_keypoints, contrast_threshold=0.005, root=True, upright=False):
    """The straightforward detect_sift: detect, stable sort by response (ties: detection order), compute."""
    sift = cv2.SIFT_create(nfeatures=0, contrastThreshold=contrast_threshold)
    kps = sift.detect(gray, None)
    if upright:
        best = {}
        for k in kps:
            key = (round(k.pt[0], 3), round(k.pt[1], 3), round(k.size, 3))
            if key not in best or k.response > best[key].response:
                best[key] = k
        kps = list(best.values())
        for k in kps:
            k.angle = 0.0
    kps = sorted(kps, key=lambda k: -k.response)[:max_keypoints]
    kps, desc = sift.compute(gray, kps)
    desc = desc.astype(np.float32)
    desc = sift_to_rootsift(desc) if root else desc / (np.linalg.norm(desc, axis=-1, keepdims=True) + 1e-6)
    return {"keypoints": np.array([k.pt for k in kps], np.float32), "scores": np.array([k.response for k in kps], np.float32),
            "scales": np.array([k.size for k in kps], np.float32), "oris": np.array([k.angle for k in kps], np.float32),
            "descriptors": desc}


def reference_context(gray, det, scale):
    """The straightforward context_descriptors (one cv2.KeyPoint constructor call per keypoint)."""
    sizes = det["scales"].astype(np.float64) * scale
    octv = _sift_octave(sizes)
    kps = [cv2.KeyPoint(float(x), float(y), float(sz), float(a), 0.0, int((o & 255) | (1 << 8)))
           for (x, y), sz, a, o in zip(det["keypoints"], sizes, det["oris"], octv)]
    _, desc = cv2.SIFT_create(contrastThreshold=0.005).compute(gray, kps)
    desc = desc.astype(np.float32)
    return desc / (np.linalg.norm(desc, axis=-1, keepdims=True) + 1e-6)


def photo_1024(name: str) -> np.ndarray:
    img = skimage_photo(name)
    s = 1024 / max(img.shape[:2])
    return cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def photos():
    return [photo_1024(n) for n in ("astronaut.png", "coffee.png")]


@pytest.mark.parametrize("root,upright,k", [(True, False, 4096), (False, False, 4096), (True, False, 300),
                                            (True, True, 2048)])
def test_detect_sift_single_pyramid_is_exact(photos, root, upright, k):
    for img in photos:
        gray = to_gray_u8(img)
        ref = reference_sift(gray, k, root=root, upright=upright)
        out = detect_sift(gray, k, 0.005, root=root, upright=upright)
        assert len(ref["keypoints"]) > 200
        for key in ref:  # bit-identical: same keypoints, same order, same descriptors
            np.testing.assert_array_equal(out[key], ref[key], err_msg=key)


@pytest.mark.parametrize("upright,compute", [(False, True), (True, True), (False, False)])
def test_detect_sift_without_keypoints(upright, compute):
    out = detect_sift(np.full((256, 256), 3, np.uint8), 100, 0.005, upright=upright, compute=compute)
    assert out["keypoints"].shape == (0, 2) and out["scores"].shape == out["scales"].shape == (0,)
    if compute:
        assert out["descriptors"].shape == (0, 128)


def test_context_descriptors_are_unchanged(photos):
    gray = to_gray_u8(photos[0])
    det = detect_sift(gray, 4096, 0.005, root=False)
    np.testing.assert_array_equal(context_descriptors(gray, det, "sift", 4.0), reference_context(gray, det, 4.0))


def test_extract_matches_training_forward(photos):
    path = WEIGHTS_DIR / "residual_sift.pt"
    if not path.exists():
        pytest.skip("residual_sift.pt not shipped")
    net, _ = load_weights(path, "residual")
    net.eval()
    assert net.uses_context and net.pool == 2 and net.conf["sampling"] == "frame"  # the shipped design
    for img in photos:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
        out = net.extract(x)
        gray = to_gray_u8(img)
        det = reference_sift(gray, 4096, root=False)
        ctx = reference_context(gray, det, 4.0)
        np.testing.assert_array_equal(out["keypoints"].numpy(), det["keypoints"])
        with torch.no_grad():
            ref = net({"image": x, "keypoints": torch.from_numpy(det["keypoints"])[None],
                       "scales": torch.from_numpy(det["scales"])[None], "oris": torch.from_numpy(det["oris"])[None],
                       "handcrafted": torch.from_numpy(det["descriptors"])[None],
                       "context": torch.from_numpy(ctx)[None]})[0]
        assert out["descriptors"].shape == ref.shape == (len(det["keypoints"]), 256)
        torch.testing.assert_close(out["descriptors"], ref, atol=2e-6, rtol=0)


def test_cnn_scale_inference_override():
    from hndesc_features.extractors import load_model

    if not (WEIGHTS_DIR / "residual_sift.pt").exists():
        pytest.skip("residual_sift.pt not shipped")
    assert load_model({"name": "hf_residual", "descriptor": "sift"}).net.pool == 2  # as trained
    m = load_model({"name": "hf_residual", "descriptor": "sift", "cnn_scale": 0.25, "max_keypoints": 300})
    assert m.net.pool == 4
    x = torch.from_numpy(photo_1024("coffee.png")).permute(2, 0, 1)[None].float() / 255.0
    out = m({"image": x})
    ref = load_model({"name": "hf_residual", "descriptor": "sift", "max_keypoints": 300})({"image": x})
    torch.testing.assert_close(out["keypoints"], ref["keypoints"])
    cos = (out["descriptors"] * ref["descriptors"]).sum(1)
    assert 0.95 < cos.min() and (1 - cos).max() > 1e-4  # same g / g_ctx, a slightly different CNN term
    with pytest.raises(ValueError, match="cnn_scale"):
        load_model({"name": "hf_residual", "descriptor": "sift", "cnn_scale": 0.3})


def test_context_downsample_describes_the_same_surroundings(photos):
    """g_ctx on the image area-averaged by k: k = 1 is the exact previous context; k = 2 reads nearly the
    same pyramid levels (the 4x-size context lives at octave >= 1); k = 4 is coarser but still the same
    surroundings (closer to the k = 1 context of the same keypoint than to any other keypoint's)."""
    gray = to_gray_u8(photos[1])
    det = detect_sift(gray, 2048, 0.005, root=True)
    ref = context_descriptors(gray, det, "rootsift", 4.0)
    np.testing.assert_array_equal(context_descriptors(gray, det, "rootsift", 4.0, downsample=1), ref)
    c2 = context_descriptors(gray, det, "rootsift", 4.0, downsample=2)
    c4 = context_descriptors(gray, det, "rootsift", 4.0, downsample=4)
    for c in (c2, c4):
        assert c.shape == ref.shape
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, atol=1e-4)
    cos2, cos4 = (c2 * ref).sum(1), (c4 * ref).sum(1)
    assert np.median(cos2) > 0.99 and np.median(cos4) > 0.85 and np.median(cos4) < np.median(cos2)
    # the closest k = 1 context of each k = 4 context is its own keypoint's for most keypoints
    # (keypoints at the same position with another size / orientation are the rest)
    assert (np.argmax(c4 @ ref.T, 1) == np.arange(len(ref))).mean() > 0.7
    with pytest.raises(ValueError, match="downsample"):
        context_descriptors(gray, det, "rootsift", 4.0, downsample=1.5)


def test_context_downsample_inference_override():
    from hndesc_features.extractors import load_model

    if not (WEIGHTS_DIR / "residual_sift.pt").exists():
        pytest.skip("residual_sift.pt not shipped")
    m = load_model({"name": "hf_residual", "descriptor": "sift", "context_downsample": 2, "max_keypoints": 300})
    assert m.net.conf["context_downsample"] == 2
    x = torch.from_numpy(photo_1024("coffee.png")).permute(2, 0, 1)[None].float() / 255.0
    out = m({"image": x})
    ref = load_model({"name": "hf_residual", "descriptor": "sift", "max_keypoints": 300})({"image": x})
    torch.testing.assert_close(out["keypoints"], ref["keypoints"])
    cos = (out["descriptors"] * ref["descriptors"]).sum(1)  # hloc layout: 1×D×N
    assert cos.median() > 0.99 and (1 - cos).max() > 1e-5  # the same g, a slightly different g_ctx


def test_torch_threads_scoped_and_quality_neutral():
    """hf_residual runs its network on `torch_threads` threads (default 1) and gives the process its own
    thread count back; the descriptors equal those computed at the process's thread count."""
    from hndesc_features.extractors import load_model

    if not (WEIGHTS_DIR / "residual_sift.pt").exists():
        pytest.skip("residual_sift.pt not shipped")
    x = torch.from_numpy(photo_1024("coffee.png")).permute(2, 0, 1)[None].float() / 255.0
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        m = load_model({"name": "hf_residual", "descriptor": "sift", "max_keypoints": 500})
        assert m.conf["torch_threads"] == 1
        seen = []
        orig = m.net.describe
        m.net.describe = lambda *a, **k: (seen.append(torch.get_num_threads()), orig(*a, **k))[1]
        out = m({"image": x})
        assert seen == [1] and torch.get_num_threads() == 2
        ref = load_model({"name": "hf_residual", "descriptor": "sift", "max_keypoints": 500, "torch_threads": None})
        orig_ref = ref.net.describe
        ref.net.describe = lambda *a, **k: (seen.append(torch.get_num_threads()), orig_ref(*a, **k))[1]
        out2 = ref({"image": x})
        assert seen == [1, 2]
        torch.testing.assert_close(out["descriptors"], out2["descriptors"], atol=1e-5, rtol=0)
    finally:
        torch.set_num_threads(prev)
