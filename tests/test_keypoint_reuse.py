"""Descriptors at the keypoints of an existing features file (model.keypoints / $HNDESC_KEYPOINTS),
through hloc's own CLI and main: the keypoints come back identical, the descriptors are the
network's at those keypoints."""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch

from conftest import read_h5, requires_hloc, run_py
from hndesc_features.keypoint_source import output_with_source, to_input_pixels


def _forward_hloc(k: np.ndarray, original_wh, input_wh) -> np.ndarray:
    """hloc's own mapping of model keypoints back to the original image (extract_features.main)."""
    scales = (np.array(original_wh) / np.array(input_wh)).astype(np.float32)
    return (k + 0.5) * scales[None] - 0.5


@pytest.mark.parametrize("orig,inp", [((1500, 1000), (1024, 683)), ((900, 1300), (709, 1024)), ((640, 480), (640, 480))])
def test_original_pixels_map_back_exactly(orig, inp):
    rng = np.random.default_rng(0)
    # keypoints as hloc stores them: a detector's input-resolution keypoints mapped back by hloc
    k_in = (rng.random((5000, 2)) * np.array(inp)).astype(np.float32)
    stored = _forward_hloc(k_in, orig, inp)
    back = to_input_pixels(stored, orig, inp)
    assert np.array_equal(_forward_hloc(back, orig, inp), stored)  # bit for bit
    # any float32 keypoint: within a float32 rounding of the exact inverse
    anyk = (rng.random((5000, 2)) * np.array(orig)).astype(np.float32)
    exact = (anyk.astype(np.float64) + 0.5) * np.array(inp) / np.array(orig) - 0.5
    assert np.abs(to_input_pixels(anyk, orig, inp) - exact).max() < 1e-3


def test_output_names():
    assert output_with_source("feats-hf-hndesc-caps-dog-n4096-r1024", "superpoint_aachen") == \
        "feats-hf-hndesc-caps-kp-superpoint_aachen-r1024"
    assert output_with_source("feats-x", "out/feats-superpoint-n4096-r1024.h5") == \
        "feats-x-kp-superpoint-n4096-r1024"


@pytest.fixture(scope="module")
def large_images(tmp_path_factory):
    """Two real photos larger than resize_max 1024: a landscape and a portrait one."""
    from benchmarks.common import shared_data_dir

    data = shared_data_dir()
    if data is None or not (data / "strecha").is_dir():
        pytest.skip("../shared/data/strecha is missing")
    d = tmp_path_factory.mktemp("large")
    a = cv2.imread(str(data / "strecha" / "Herz-Jesus-P8" / "images" / "0002.jpg"))
    b = cv2.imread(str(data / "strecha" / "fountain-P11" / "images" / "0004.jpg"))
    cv2.imwrite(str(d / "land.jpg"), cv2.resize(a, (1500, 1000), interpolation=cv2.INTER_AREA))
    b = cv2.resize(b, (1950, 1300), interpolation=cv2.INTER_AREA)[:, 500:1400]  # 900×1300 portrait
    (d / "sub").mkdir()
    cv2.imwrite(str(d / "sub" / "portrait.jpg"), b)
    return d


@pytest.mark.heavy(10)
@requires_hloc
def test_hloc_cli_puts_descriptors_on_existing_keypoints(large_images, tmp_path):
    """rootsift keypoints extracted by hloc's CLI, described by hndesc_small through hloc's CLI
    with HNDESC_KEYPOINTS=rootsift: same keypoints bit for bit, same order, valid descriptors."""
    out = tmp_path / "outputs"
    base = ["-m", "hloc.extract_features", "--image_dir", str(large_images), "--export_dir", str(out)]
    run_py([*base, "--conf", "rootsift"])
    run_py([*base, "--conf", "hndesc_small"], env_extra={"HNDESC_KEYPOINTS": "rootsift"})
    src = read_h5(out / "feats-hf-rootsift-n4096-r1024.h5")
    dst = read_h5(out / "feats-hf-hndesc-small-kp-rootsift-r1024.h5")
    for name in ("land.jpg", "sub/portrait.jpg"):
        kp_src, kp = src[f"{name}/keypoints"][0], dst[f"{name}/keypoints"][0]
        assert len(kp) > 500 and kp.dtype == kp_src.dtype
        assert np.array_equal(kp, kp_src), np.abs(kp - kp_src).max()
        assert np.array_equal(dst[f"{name}/image_size"][0], src[f"{name}/image_size"][0])
        assert np.array_equal(dst[f"{name}/scores"][0], src[f"{name}/scores"][0])
        d = dst[f"{name}/descriptors"][0]
        assert d.shape == (128, len(kp)) and np.isfinite(d).all()
        np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0, atol=1e-4)
        assert len(np.unique(d.round(4), axis=1).T) > 0.5 * len(kp)  # not one constant vector
    # one of hloc's own conf names resolves through hloc's conf table to its file in the export dir
    import shutil

    from hloc.extract_features import confs as hloc_confs

    shutil.copy(out / "feats-hf-rootsift-n4096-r1024.h5", out / f"{hloc_confs['superpoint_aachen']['output']}.h5")
    run_py([*base, "--conf", "hndesc_small"], env_extra={"HNDESC_KEYPOINTS": "superpoint_aachen"})
    sp = read_h5(out / "feats-hf-hndesc-small-kp-superpoint_aachen-r1024.h5")
    assert np.array_equal(sp["land.jpg/keypoints"][0], src["land.jpg/keypoints"][0])
    np.testing.assert_array_equal(sp["land.jpg/descriptors"][0], dst["land.jpg/descriptors"][0])
    # a conf name whose file is missing: the error says what to run
    p = run_py([*base, "--conf", "hndesc_small"], env_extra={"HNDESC_KEYPOINTS": "orb"}, check=False)
    assert p.returncode != 0 and "hloc.extract_features --conf orb" in p.stderr


@requires_hloc
def test_hloc_main_with_an_h5_path_and_another_resize(large_images, tmp_path):
    """hloc's main from Python, model.keypoints = an .h5 path, network input at 640 px (not the
    source's 1024): keypoints equal to float32 rounding, descriptors those of the network at the mapped keypoints."""
    import hndesc_features.hloc
    from hloc import extract_features

    hndesc_features.hloc.register()
    src = extract_features.main(extract_features.confs["rootsift"], large_images, tmp_path, as_half=False)
    conf = copy.deepcopy(extract_features.confs["hndesc_small"])
    conf["model"]["keypoints"] = str(src)
    conf["preprocessing"]["resize_max"] = 640
    conf["output"] = "feats-hndesc-small-on-rootsift-r640"
    dst = extract_features.main(conf, large_images, tmp_path, as_half=False)
    a, b = read_h5(src), read_h5(dst)

    from hndesc_features.extract_features import ImageDataset
    from hndesc_features.extractors import load_model

    model = load_model(conf["model"]).eval()
    ds = ImageDataset(large_images, conf["preprocessing"])
    for name in ("land.jpg", "sub/portrait.jpg"):
        kp = a[f"{name}/keypoints"][0]
        # another input resolution: hloc's float32 map back cannot hit every value; ≤ 2 float32 ulps
        np.testing.assert_array_max_ulp(b[f"{name}/keypoints"][0], kp, maxulp=2)
        assert np.abs(b[f"{name}/keypoints"][0] - kp).max() < 5e-4
        image = torch.from_numpy(ds.load(name)["image"])[None]
        H, W = image.shape[-2:]
        assert max(H, W) == 640
        k_in = torch.from_numpy(to_input_pixels(kp, b[f"{name}/image_size"][0], (W, H)))
        with torch.no_grad():
            ref = model.net.extract(image, keypoints=k_in)["descriptors"].numpy().T
        np.testing.assert_allclose(b[f"{name}/descriptors"][0], ref, atol=1e-5)
        # the mapping is the plain rescale up to float rounding
        s = np.array([W, H]) / b[f"{name}/image_size"][0]
        np.testing.assert_allclose(k_in.numpy(), (kp + 0.5) * s - 0.5, atol=1e-3)


def test_our_cli_and_bad_sources(large_images, tmp_path):
    """Our own CLI honours HNDESC_KEYPOINTS too; the patch backbone refuses keypoints without frames."""
    from hndesc_features.extractors import load_model

    out = tmp_path / "o"
    base = ["-m", "hndesc_features.extract_features", "--image_dir", str(large_images), "--export_dir", str(out)]
    run_py([*base, "--conf", "rootsift"])
    run_py([*base, "--conf", "hndesc_small"], env_extra={"HNDESC_KEYPOINTS": str(out / "feats-hf-rootsift-n4096-r1024.h5")})
    a = read_h5(out / "feats-hf-rootsift-n4096-r1024.h5")
    b = read_h5(out / "feats-hf-hndesc-small-kp-hf-rootsift-n4096-r1024-r1024.h5")
    assert np.array_equal(a["land.jpg/keypoints"][0], b["land.jpg/keypoints"][0])
    with pytest.raises(ValueError, match="frames"):
        load_model({"name": "hf_hndesc", "backbone": "patch", "keypoints": "superpoint_aachen"})
    model = load_model({"name": "hf_hndesc", "keypoints": "no_such_conf"})
    with pytest.raises(ValueError, match="neither 'dog'"):
        model({"image": torch.rand(1, 3, 64, 64), "name": "land.jpg"})
