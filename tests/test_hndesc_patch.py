"""HNDesc on keypoint-frame patches: frame transfer through homographies, patch-backbone invariance
to rotation/scale (given the frames), training samples with detected view-1 frames, extractor."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hndesc_features.models.hndesc_patch import HNDescPatch
from hndesc_features.training.geometry.homography import angle_diff, homography_jacobian, transfer_frames
from hndesc_features.training.losses import hndesc as L
from hndesc_features.training.pipelines import hndesc as P

torch.set_num_threads(1)


def _similarity(angle_deg: float, scale: float, centre, shift=(0.0, 0.0)) -> np.ndarray:
    M = cv2.getRotationMatrix2D(tuple(map(float, centre)), angle_deg, scale)
    M[:, 2] += shift
    return np.vstack([M, [0, 0, 1.0]])


@pytest.fixture(scope="module")
def astronaut():
    skd = pytest.importorskip("skimage.data")
    return skd.astronaut()  # 512×512 RGB photo shipped in the scikit-image wheel


def test_homography_jacobian_matches_finite_differences():
    H = np.array([[1.1, 0.2, 5.0], [-0.1, 0.9, 3.0], [1e-4, -2e-4, 1.0]])
    p = np.array([[100.0, 50.0], [300.0, 220.0]])
    J = homography_jacobian(H, p)
    from hndesc_features.training.geometry.homography import warp_points

    eps = 1e-3
    for i, e in enumerate(np.eye(2)):
        num = (warp_points(p + eps * e, H) - warp_points(p - eps * e, H)) / (2 * eps)
        np.testing.assert_allclose(J[:, :, i], num, rtol=1e-5, atol=1e-7)


def test_transfer_frames_similarity():
    # OpenCV angles are measured in image axes (y down): a counter-clockwise rotation on screen
    # (cv2.getRotationMatrix2D with +30°) decreases the keypoint angle by 30°
    H = _similarity(30.0, 1.5, (200, 100))
    f = np.array([[200.0, 100.0, 4.0, 10.0], [50.0, 60.0, 8.0, 350.0]])
    t = transfer_frames(f, H)
    np.testing.assert_allclose(t[:, 2], f[:, 2] * 1.5, rtol=1e-9)
    np.testing.assert_allclose(angle_diff(t[:, 3], (f[:, 3] - 30.0) % 360), 0.0, atol=1e-9)
    np.testing.assert_allclose(t[0, :2], [200.0, 100.0], atol=1e-9)


def test_transferred_frames_agree_with_dog_on_real_rotation(astronaut):
    """The frames a detector finds on a rotated+scaled photo are the transferred frames: most
    anchors find a detection (real detector noise), and their angles agree to a few degrees."""
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    H = _similarity(40.0, 0.8, (256, 256))
    warped = cv2.warpPerspective(gray, H, (512, 512), flags=cv2.INTER_LINEAR)
    f0 = P.dog_frames(gray, 300, 0.005, unique=True)
    t1 = transfer_frames(f0, H)
    inside = (t1[:, 0] > 20) & (t1[:, 0] < 492) & (t1[:, 1] > 20) & (t1[:, 1] < 492)
    det1 = P.dog_frames(warped, 3000, 0.005, unique=False)
    frames, matched = P.view1_frames(t1[inside], det1, dict(P.DEFAULT_CONF["frames"]), np.random.default_rng(0))
    assert matched.mean() > 0.5
    err = angle_diff(frames[matched, 3], t1[inside][matched, 3])
    assert np.median(err) < 5.0
    np.testing.assert_allclose(frames[~matched, :2], t1[inside][~matched, :2], atol=1e-3)


def test_patch_backbone_invariant_to_rotation_and_scale_given_frames(astronaut):
    """Descriptors of a photo and of its rotated/scaled copy at the transferred frames are the
    nearest neighbours of each other (a random network: the invariance comes from the frames)."""
    torch.manual_seed(0)
    net = HNDescPatch().eval()
    H = _similarity(75.0, 1.3, (256, 256), shift=(40.0, -20.0))
    warped = cv2.warpPerspective(astronaut, H, (700, 700), flags=cv2.INTER_LINEAR)
    f0 = P.dog_frames(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY), 200, 0.01, unique=True)
    t1 = transfer_frames(f0, H).astype(np.float32)
    ok = (t1[:, :2] > 40).all(1) & (t1[:, :2] < 660).all(1) & (f0[:, :2] > 30).all(1) & (f0[:, :2] < 482).all(1)
    f0, t1 = f0[ok], t1[ok]
    im0 = torch.from_numpy(astronaut).permute(2, 0, 1).float() / 255
    im1 = torch.from_numpy(warped).permute(2, 0, 1).float() / 255
    d0, d1 = net.describe(im0, torch.from_numpy(f0)), net.describe(im1, torch.from_numpy(t1))
    assert d0.shape == (len(f0), 128) and torch.allclose(d0.norm(dim=1), torch.ones(len(f0)), atol=1e-5)
    nn_acc = ((d0 @ d1.t()).argmax(1) == torch.arange(len(f0))).float().mean()
    assert nn_acc > 0.8
    # without the frames' orientation the same network fails: the frames do the work
    up = t1.copy()
    up[:, 3] = f0[:, 3]
    d1u = net.describe(im1, torch.from_numpy(up))
    assert ((d0 @ d1u.t()).argmax(1) == torch.arange(len(f0))).float().mean() < nn_acc - 0.3


def test_patch_backbone_shapes_and_errors():
    net = HNDescPatch(width=8).eval()
    assert net(torch.rand(5, 1, 32, 32)).shape == (5, 128)
    assert net(torch.rand(0, 3, 32, 32)).shape == (0, 128)
    with pytest.raises(ValueError, match="32×32"):
        net(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of 4"):
        HNDescPatch(patch_size=30)


def test_patch_backbone_without_batch_norm(astronaut, tmp_path):
    """batch_norm: false has no BN layer, so a patch's descriptor does not depend on the batch it
    is in (train mode = eval mode), and the option survives export → extractor."""
    from hndesc_features.extractors.hndesc import HNDesc
    from hndesc_features.models.checkpoints import export_weights

    torch.manual_seed(0)
    net = HNDescPatch(batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in HNDescPatch().modules())
    im = torch.from_numpy(astronaut).permute(2, 0, 1).float() / 255
    frames = torch.from_numpy(P.dog_frames(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY), 64, 0.01, unique=True))
    patches = net.patches(im, frames)
    with torch.no_grad():
        alone = net.train()(patches[:8])
        in_batch = net.train()(patches)[:8]
        evaluated = net.eval()(patches[:8])
    assert torch.allclose(alone, in_batch, atol=1e-5) and torch.allclose(alone, evaluated, atol=1e-5)
    path = export_weights(tmp_path / "nobn.pt", "hndesc_patch", dict(net.conf), net.state_dict())
    out = HNDesc({"backbone": "patch", "weights": str(path), "max_keypoints": 64})({"image": im[None]})
    frames_out = torch.cat([out["keypoints"][0], out["scales"][0, :, None], out["oris"][0, :, None]], 1)
    assert out["descriptors"].shape[1] == 128 and out["keypoints"].shape[1] > 32
    assert torch.allclose(net.describe(im, frames_out).t(), out["descriptors"][0], atol=1e-4)


def _conf():
    return {"name": "t", "model": {"name": "hndesc_patch", "width": 8},
            "loss": {"name": "hndesc", "mining": "in_batch", "keypoints": {"max": 48, "min": 8},
                     "frames": {"enable": True}},
            "data": {"name": "homographies", "source": {"name": "dev_images", "split": "train"},
                     "resize": [320, 400], "homography": {"mode": "hcrops", "size": 128,
                                                          "hcrops": {"zoom": [0.5, 1.0], "max_rotation": 45.0}},
                     "photometric": {"enable": False}}}


@pytest.fixture(scope="module")
def pairs():
    from conftest import training_pairs

    return training_pairs(_conf()["data"], [(i, 200 + i) for i in (1, 6, 13)])


def test_prepare_frames_follow_the_homography(pairs):
    from hndesc_features.training.geometry.homography import warp_points

    conf = _conf()
    out = P.prepare(pairs[0], conf)
    m = out["kmask"].numpy()
    assert out["kpts0"].shape == (48, 4) and m.sum() >= 8
    k0, k1 = out["kpts0"].numpy()[m], out["kpts1"].numpy()[m]
    err = np.linalg.norm(warp_points(k0[:, :2].astype(np.float64), out["H_0to1"].numpy()) - k1[:, :2], axis=1)
    assert (err <= conf["loss"].get("frames", {}).get("match_px", 2.0) + 1e-3).all()
    true = transfer_frames(k0, out["H_0to1"].numpy().astype(np.float64))
    # real DoG detections on a perspective-warped, stylized crop: orientations follow the
    # homography up to detector noise (a random orientation would give a median of 90°)
    err = angle_diff(true[:, 3], k1[:, 3])
    assert np.median(err) < 25.0 and (err < 45.0).mean() > 0.7
    assert np.median(np.abs(np.log(k1[:, 2] / true[:, 2]))) < 0.2
    assert (6.0 * k0[:, 2] <= 0.5 * 128 + 1e-3).all()  # patches no larger than half the crop


def test_loss_trains_patch_backbone_and_rejects_positions_only(pairs):
    from hndesc_features.models.checkpoints import build_model

    torch.manual_seed(0)
    conf = _conf()
    batch = P.collate([P.prepare(p, conf) for p in pairs])
    model = build_model("hndesc_patch", conf["model"])
    loss, logs = L.Loss(conf["loss"])(model, batch)
    assert torch.isfinite(loss) and 0 <= loss.item() <= 1
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    feats = model.eval().extract(batch["view0"][:1], 100)
    assert feats["keypoints"].shape[1] == 2 and feats["descriptors"].shape == (len(feats["keypoints"]), 128)
    batch2 = dict(batch, kpts0=batch["kpts0"][..., :2], kpts1=batch["kpts1"][..., :2])
    with pytest.raises(ValueError, match="frames.enable"):
        L.Loss(conf["loss"])(model, batch2)


def test_extractor_patch_backbone(astronaut, tmp_path):
    from hndesc_features.extractors.hndesc import HNDesc
    from hndesc_features.models.checkpoints import build_model, export_weights

    torch.manual_seed(0)
    net = build_model("hndesc_patch", {"width": 8})
    path = export_weights(tmp_path / "hndesc_patch.pt", "hndesc_patch", dict(net.conf), net.state_dict())
    model = HNDesc({"backbone": "patch", "weights": str(path), "max_keypoints": 300})
    img = torch.from_numpy(astronaut).permute(2, 0, 1).float()[None] / 255
    out = model({"image": img})
    n = out["keypoints"].shape[1]
    assert 200 <= n <= 300 and out["descriptors"].shape == (1, 128, n)
    assert out["scales"].shape == (1, n) and (out["scales"] > 0).all()
    # orientation duplicates are kept (SIFT-like), and they get different descriptors
    kp = out["keypoints"][0].numpy().round(2)
    _, inv, counts = np.unique(kp, axis=0, return_inverse=True, return_counts=True)
    dup = np.flatnonzero(counts[inv.reshape(-1)] > 1)
    assert len(dup) >= 2
    d = out["descriptors"][0].t()
    i = dup[0]
    j = next(k for k in dup[1:] if inv.reshape(-1)[k] == inv.reshape(-1)[i])
    assert float(d[i] @ d[j]) < 0.999
    with pytest.raises(ValueError, match="must be 'dog'"):
        HNDesc({"backbone": "patch", "weights": str(path), "keypoints": str(path)})


def test_knn_file_from_our_model_drives_gd_mining(tmp_path):
    """training.knn writes an hloc-layout global-features file that KNNIndex reads; images of the
    same scene are each other's neighbours (real photos, shipped dense model)."""
    skd = pytest.importorskip("skimage.data")
    from hndesc_features import weights as registry
    from hndesc_features.training.knn import write_global_descriptors
    from hndesc_features.training.knn import KNNIndex

    folder = tmp_path / "imgs"
    folder.mkdir()
    base = {"astro": skd.astronaut(), "coffee": skd.coffee(), "chelsea": skd.chelsea()}
    paths = []
    for name, img in base.items():
        for k, (y, x) in enumerate([(0, 0), (40, 60)]):  # two overlapping views of each photo
            p = folder / f"{name}_{k}.png"
            cv2.imwrite(str(p), cv2.cvtColor(img[y:y + 280, x:x + 280], cv2.COLOR_RGB2BGR))
            paths.append(p)
    out = write_global_descriptors(paths, registry.load_model(None, "hndesc_small", "hndesc_small")[0], tmp_path / "knn.h5", size=256)
    idx = KNNIndex(out, [str(p) for p in paths], k=1)
    for p in paths:
        stem = p.stem.rsplit("_", 1)[0]
        assert Path(idx(str(p))[0]).stem.rsplit("_", 1)[0] == stem


def test_gd_and_selfgd_mining_with_frames(pairs, tmp_path):
    """Neighbour crops carry keypoint frames for patch backbones (gd from a pairs file, selfgd from
    the model's own global descriptors)."""
    from hndesc_features.models.checkpoints import build_model
    from hndesc_features.training.datasets.dev_images import train_images

    names = [str(p) for p in train_images()]
    knn = tmp_path / "pairs.txt"
    knn.write_text("\n".join(f"{Path(p['name']).name} {Path(names[(7 * j) % len(names)]).name}"
                              for p in pairs for j in (1, 2)) + "\n")
    torch.manual_seed(0)
    base = _conf()
    model = build_model("hndesc_patch", base["model"])
    for mining, extra in [("gd", {"gd": {"knn_file": str(knn), "resize": 320, "max_kpts": 24}}),
                          ("selfgd", {"gd": {"resize": 320, "max_kpts": 24},
                                      "selfgd": {"refresh_every": 100, "k": 2, "size": 96}})]:
        conf = dict(base, loss={**base["loss"], "mining": mining, **extra})
        batch = P.collate([P.prepare(p, conf) for p in pairs])
        loss, logs = L.Loss(conf["loss"])(model, batch)
        assert torch.isfinite(loss) and logs["extra_negs"] > 0, mining


def test_mutual_term_sets_and_loss(pairs):
    """loss.mutual: each view's own DoG frames with their ground truth; the term joins the AP loss."""
    from hndesc_features.models.checkpoints import build_model

    conf = _conf()
    conf["loss"]["mutual"] = {"weight": 1.0, "keypoints": 64}
    out = P.prepare(pairs[2], conf)
    H = out["H_0to1"].numpy().astype(np.float64)
    v0, v1, m = out["m_valid0"].numpy(), out["m_valid1"].numpy(), out["m_matches"].numpy()
    f0, f1 = out["m_frames0"].numpy(), out["m_frames1"].numpy()
    assert v0.sum() > 20 and v1.sum() > 20
    has = m >= 0
    assert 5 <= has.sum() < v0.sum()  # real pair: keypoints with and without a correspondence
    t0 = transfer_frames(f0[has].astype(np.float64), H)
    assert (np.linalg.norm(t0[:, :2] - f1[m[has], :2], axis=1) <= 3.0 + 1e-3).all()
    assert (angle_diff(t0[:, 3], f1[m[has], 3]) <= 30.0 + 1e-3).all()
    assert len(set(m[has].tolist())) == has.sum()  # one-to-one
    near = out["m_near"].numpy()
    assert near[has, m[has]].all() and not near[~v0].any() and not near[:, ~v1].any()
    # view 1's frames are its own detections: some lie nowhere near a view-0 keypoint's true position
    assert (~near.any(0) & v1).sum() > 0
    plain = dict(conf, loss={k: v for k, v in conf["loss"].items() if k != "mutual"})
    assert "m_frames0" not in P.prepare(pairs[2], plain)

    torch.manual_seed(0)
    batch = P.collate([P.prepare(p, conf) for p in pairs])
    model = build_model("hndesc_patch", conf["model"])
    loss, logs = L.Loss(conf["loss"])(model, batch)
    assert {"mutual", "mnn_precision", "mnn_matches"} <= set(logs) and 0 <= float(logs["mnn_precision"]) <= 1
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # the term is added to the AP loss (eval mode: batch-norm statistics do not mix the two sets)
    model.eval()
    with torch.no_grad():
        total, logs = L.Loss(conf["loss"])(model, batch)
        base, _ = L.Loss(plain["loss"])(model, {k: v for k, v in batch.items() if not k.startswith("m_")})
    assert total.item() == pytest.approx(base.item() + float(logs["mutual"]), rel=1e-4, abs=1e-4)
