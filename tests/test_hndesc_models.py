"""HNDesc backbones, released-checkpoint loading, descriptor sampling and the hf_hndesc extractor."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hndesc_features.models.hndesc_caps import HNDescCAPS, load_caps_checkpoint, read_state_dict
from hndesc_features.models.hndesc_r2d2 import HNDescR2D2
from hndesc_features.models.hndesc_small import HNDescSmall
from hndesc_features.models.sampling import sample_descriptors

torch.set_num_threads(1)


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics/affine params, so a wrong key mapping cannot go unseen."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _photo_rgb(max_side: int = 160) -> np.ndarray:
    skd = pytest.importorskip("skimage.data", reason="scikit-image provides the real test photos")
    img = skd.astronaut()
    s = max_side / max(img.shape[:2])
    return cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0


# ------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("cls,stride,normalised", [(HNDescSmall, 4, True), (HNDescCAPS, 4, False),
                                                   (HNDescR2D2, 1, True)])
def test_backbone_shapes(cls, stride, normalised):
    torch.manual_seed(0)
    net = cls().eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 128, 64 // stride, 96 // stride)
    assert net.stride == stride and net.descriptor_dim == 128
    if normalised:
        assert torch.allclose(y.norm(dim=1), torch.ones(1), atol=1e-4)
    with torch.no_grad():  # grayscale input is accepted (replicated to RGB)
        assert net(x[:, :1]).shape == y.shape


def test_small_backbone_is_small():
    assert sum(p.numel() for p in HNDescSmall().parameters()) < 500_000


def test_caps_architecture_matches_release():
    net = HNDescCAPS()
    sd = net.state_dict()
    for k in ["firstconv.weight", "firstbn.running_var", "layer1.0.downsample.0.weight",
              "layer2.3.conv3.weight", "layer3.5.bn3.bias", "conv_coarse.conv.weight",
              "upconv3.conv.conv.weight", "iconv3.conv.weight", "upconv2.conv.bn.weight",
              "iconv2.conv.weight", "conv_fine.conv.weight"]:
        assert k in sd, k
    assert sd["upconv3.conv.conv.weight"].shape == (512, 1024, 3, 3)
    assert sd["iconv3.conv.weight"].shape == (512, 1024, 3, 3)
    assert sd["upconv2.conv.conv.weight"].shape == (256, 512, 3, 3)
    assert sd["iconv2.conv.weight"].shape == (256, 512, 3, 3)
    assert sd["conv_fine.conv.weight"].shape == (128, 256, 1, 1)
    assert sd["layer3.0.conv2.weight"].shape == (256, 256, 3, 3)
    assert net.layer3[0].conv2.stride == (2, 2)  # torchvision v1.5: stride on the 3x3 conv
    assert not any(k.startswith("firstrelu") or k.startswith("firstmaxpool") for k in sd)


def test_r2d2_architecture_matches_release():
    net = HNDescR2D2()
    convs = [m for m in net.ops if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 1, 2, 2, 4, 4, 8, 16]
    assert [c.kernel_size[0] for c in convs] == [3] * 6 + [2] * 3
    assert isinstance(net.ops[-1], torch.nn.ReLU)  # HNDesc keeps the final ReLU
    assert "ops.0.weight" in net.state_dict() and "ops.22.weight" in net.state_dict()


# ------------------------------------------------------------------------------ checkpoints
def test_caps_released_format_roundtrip(tmp_path):
    """Random model saved as the released checkpoints are (DataParallel prefix, optimizer…)."""
    torch.manual_seed(1)
    net = _randomize_bn(HNDescCAPS()).eval()
    ckpt = {"step": 220000, "val_loss": 0.25,
            "state_dict": {"module." + k: v for k, v in net.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "scheduler": {"step_size": 50000, "gamma": 0.5, "last_epoch": 3}}
    path = tmp_path / "hndesc_caps_MP_st.pth"
    torch.save(ckpt, path)
    loaded = load_caps_checkpoint(path)
    x = _tensor(_photo_rgb(96))
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    # CAPS's own wrapper prefix "net." is accepted too
    torch.save({"state_dict": {"net." + k: v for k, v in net.state_dict().items()}}, tmp_path / "caps.pth")
    with torch.no_grad():
        assert torch.equal(net(x), load_caps_checkpoint(tmp_path / "caps.pth")(x))


def test_r2d2_released_format_roundtrip(tmp_path):
    from hndesc_features.models.hndesc_caps import load_state

    torch.manual_seed(2)
    net = _randomize_bn(HNDescR2D2()).eval()
    torch.save({"step": 1, "state_dict": net.state_dict()}, tmp_path / "r2d2.pth")
    loaded = load_state(HNDescR2D2(), read_state_dict(tmp_path / "r2d2.pth")).eval()
    x = _tensor(_photo_rgb(64))
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_caps_checkpoint(tmp_path / "missing.pth")
    torch.save({"state_dict": HNDescSmall().state_dict()}, tmp_path / "small.pth")
    with pytest.raises(ValueError, match="missing keys: firstconv.weight"):
        load_caps_checkpoint(tmp_path / "small.pth")


# ------------------------------------------------------------------------------ sampling
def test_sampling_hndesc_convention_is_the_reference_formula():
    torch.manual_seed(0)
    dense = torch.randn(1, 8, 16, 24)
    H, W = 64, 96
    kp = torch.rand(1, 50, 2) * torch.tensor([W - 1, H - 1])
    c = torch.tensor([(W - 1) / 2, (H - 1) / 2])
    ref = F.normalize(F.grid_sample(dense, ((kp - c) / c)[:, :, None], align_corners=False)[..., 0], dim=1)
    assert torch.allclose(sample_descriptors(dense, kp, (H, W), "hndesc"), ref, atol=1e-6)


def test_sampling_centers_convention_hits_cells():
    """With cell i centred on pixel 4i, sampling at (4i, 4j) returns exactly cell (i, j)."""
    torch.manual_seed(0)
    dense = F.normalize(torch.randn(1, 16, 10, 12), dim=1)
    ij = torch.tensor([[0, 0], [11, 9], [5, 3], [7, 8]])
    kp = (ij * 4).float()[None]
    out = sample_descriptors(dense, kp, (40, 48), "centers", stride=4)
    expect = dense[0][:, ij[:, 1], ij[:, 0]]
    assert torch.allclose(out[0], expect, atol=1e-5)


# ------------------------------------------------------------------------------ extractor
@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("hndesc") / "hndesc_small_random.pt"
    torch.save({"state_dict": _randomize_bn(HNDescSmall()).state_dict(), "backbone": "small"}, path)
    return path


def test_extractor_dog(small_weights):
    from hndesc_features.extractors import load_model
    from hndesc_features.handcrafted import detect_sift, to_gray_u8

    img = _photo_rgb(256)
    model = load_model({"name": "hf_hndesc", "weights": str(small_weights), "max_keypoints": 300}).eval()
    with torch.no_grad():
        pred = model({"image": _tensor(img)})
    kp, sc, d = pred["keypoints"], pred["scores"], pred["descriptors"]
    assert kp.shape[0] == 1 and kp.shape[2] == 2 and 0 < kp.shape[1] <= 300
    assert sc.shape == kp.shape[:2] and d.shape == (1, 128, kp.shape[1])
    assert torch.allclose(d.norm(dim=1), torch.ones(1), atol=1e-4)
    assert bool((sc[0, :-1] >= sc[0, 1:]).all())
    ref = detect_sift(to_gray_u8(img / 255.0), 300, 0.005, upright=True)
    np.testing.assert_allclose(kp[0].numpy(), ref["keypoints"], atol=1e-4)
    # orientation duplicates merged: all locations distinct
    assert len(np.unique(kp[0].numpy().round(2), axis=0)) == kp.shape[1]


def test_extractor_keypoints_from_h5(small_weights, tmp_path):
    import h5py

    from hndesc_features.extractors import load_model

    img = _photo_rgb(128)
    H, W = img.shape[:2]
    orig = np.array([2 * W, 2 * H])  # stored at twice the resolution the model sees
    kps_orig = np.array([[10.5, 20.0], [100.0, 50.0], [200.0, 150.0]], np.float32)
    h5 = tmp_path / "feats-other.h5"
    with h5py.File(h5, "w") as f:
        g = f.create_group("sub/img.jpg")
        g["keypoints"] = kps_orig
        g["scores"] = np.array([0.1, 0.9, 0.5], np.float32)
        g["image_size"] = orig
    model = load_model({"name": "hf_hndesc", "weights": str(small_weights), "keypoints": str(h5)}).eval()
    with torch.no_grad():
        pred = model({"image": _tensor(img), "name": "sub/img.jpg"})
    expect = (kps_orig + 0.5) / 2 - 0.5  # in stored order (a map indexes them), in model-input pixels
    np.testing.assert_allclose(pred["keypoints"][0].numpy(), expect, atol=1e-5)
    np.testing.assert_array_equal(pred["scores"][0].numpy(), np.float32([0.1, 0.9, 0.5]))
    assert pred["descriptors"].shape == (1, 128, 3)
    with pytest.raises(ValueError, match="by image name"):  # called outside extract_features.main
        model({"image": _tensor(img)})


def test_extractor_missing_weights_message(tmp_path):
    from hndesc_features.extractors import load_model

    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_model({"name": "hf_hndesc", "weights": str(tmp_path / "nothing.pt")})
    # the paper's backbones have no shipped weights: the message says where they go and how
    with pytest.raises(FileNotFoundError, match=r"hndesc_caps.*user weights directory .*hndesc_features.weights "
                                                r"install hndesc_caps FILE"):
        load_model({"name": "hf_hndesc", "backbone": "caps"})


def test_feature_confs_present():
    from hndesc_features.confs import feature_confs

    confs = feature_confs()
    for name, backbone in [("hndesc_patch", "patch"), ("hndesc_small", "small"), ("hndesc_caps", "caps"),
                           ("hndesc_r2d2", "r2d2")]:
        assert confs[name]["model"]["name"] == "hf_hndesc"
        assert confs[name]["model"]["backbone"] == backbone
        assert confs[name]["preprocessing"]["grayscale"] is False
    # `hndesc` is the HNDesc recipe on the residual RootSIFT backbone (tests/test_hndesc_webcam.py)
    assert confs["hndesc"]["model"]["name"] == "hf_residual"


def test_extractor_loads_trainer_export(tmp_path):
    """Weights exported by the trainer (format hndesc_features.weights/1) load with their conf."""
    from hndesc_features.extractors import load_model
    from hndesc_features.models.checkpoints import CheckpointError, export_weights

    torch.manual_seed(4)
    net = _randomize_bn(HNDescSmall({"width": 8})).eval()
    path = export_weights(tmp_path / "hndesc_small.pt", "hndesc_small", net.conf, net.state_dict(), {"step": 1})
    model = load_model({"name": "hf_hndesc", "weights": str(path)}).eval()
    x = _tensor(_photo_rgb(96))
    with torch.no_grad():
        assert torch.equal(model.net(x), net(x))
    with pytest.raises(CheckpointError, match="hndesc_r2d2"):
        load_model({"name": "hf_hndesc", "backbone": "r2d2", "weights": str(path)})
