"""Markuš KCC ("wlrn") descriptor: network, patch extraction, KCC loss, weak datasets, extractor."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hndesc_features.models.kcc import KCC_KEYS, KCCNet, load_kcc_state_dict
from hndesc_features.patches import extract_patches
from hndesc_features.training.losses.kcc import SLOPE, THRESHOLD, kcc_loss, mine_hard_negatives, soft_match

torch.set_num_threads(1)


def _photo(name: str = "camera") -> np.ndarray:
    skd = pytest.importorskip("skimage.data", reason="scikit-image provides the real test photos")
    img = getattr(skd, name)()
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(img)


def _orb(img: np.ndarray, n: int = 300):
    kps = cv2.ORB_create(nfeatures=n).detect(img, None)
    return (np.array([k.pt for k in kps], np.float32), np.array([k.size for k in kps], np.float32),
            np.array([k.angle for k in kps], np.float32))


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """A random model saved exactly like the released checkpoints: a bare state dict."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wlrn") / "random_wlrn.pth"
    torch.save(KCCNet().state_dict(), path)
    return path


# ----------------------------------------------------------------------------- network
def test_network_architecture_and_output():
    net = KCCNet().eval()
    assert tuple(net.state_dict()) == KCC_KEYS
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["conv1.weight"] == (32, 3, 3, 3)
    assert shapes["conv2.weight"] == (64, 32, 4, 4)
    assert shapes["conv3.weight"] == (128, 64, 3, 3)
    assert shapes["conv4.weight"] == (32, 128, 1, 1)
    assert shapes["conv5.weight"] == (128, 32, 6, 6)
    x = torch.rand(5, 1, 32, 32) * 255
    with torch.no_grad():
        d = net(x)
        d3 = net(x.expand(-1, 3, -1, -1).contiguous())
    assert d.shape == (5, 128)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(d, d3)  # grayscale = the gray value repeated in 3 channels
    with pytest.raises(ValueError, match="32"):
        net(torch.rand(2, 1, 64, 64))


def test_released_format_loads(random_weights, tmp_path):
    ref = KCCNet()
    ref.load_state_dict(torch.load(random_weights, weights_only=True))
    net = load_kcc_state_dict(KCCNet(), random_weights)
    x = torch.rand(4, 3, 32, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x))
    # DataParallel-saved (module.) and our training checkpoints ({"model": ...}) load too
    sd = torch.load(random_weights, weights_only=True)
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pth")
    torch.save({"model": sd, "step": 3}, tmp_path / "ckpt.pt")
    for p in ("dp.pth", "ckpt.pt"):
        with torch.no_grad():
            torch.testing.assert_close(load_kcc_state_dict(KCCNet(), tmp_path / p)(x), ref(x))
    torch.save({"conv1.weight": sd["conv1.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys"):
        load_kcc_state_dict(KCCNet(), tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_kcc_state_dict(KCCNet(), tmp_path / "nope.pth")


def test_center_outputs_spreads_descriptors_on_real_patches():
    img = _photo("camera")
    kp, size, ang = _orb(img, 300)
    p = extract_patches(torch.from_numpy(img)[None].float(), kp, size, ang)
    torch.manual_seed(0)
    net = KCCNet()  # PyTorch's default init, as the reference
    with torch.no_grad():
        before = net(p)
        net.center_outputs(p)
        after = net(p)
        f = net.features(p)
        assert f.mean(0).abs().max() < 1e-3 and abs(f.std().item() - 1) < 0.05
    off = ~torch.eye(len(p), dtype=torch.bool)
    assert (before @ before.t())[off].median() > 0.9  # all descriptors alike: KCC's plateau
    assert (after @ after.t())[off].median() < 0.5
    # the nearest neighbours of most descriptors are unchanged
    nn_b = (before @ before.t()).masked_fill(~off, -2).argmax(1)
    nn_a = (after @ after.t()).masked_fill(~off, -2).argmax(1)
    assert (nn_a == nn_b).float().mean() > 0.5


# ----------------------------------------------------------------------------- patches
def test_patches_match_opencv_warp_on_a_real_photo():
    img = _photo("camera")
    kp, size, ang = _orb(img)
    p = extract_patches(torch.from_numpy(img)[None].float(), kp, size, ang, pyramid=False)
    assert p.shape == (len(kp), 1, 32, 32)
    for i in range(0, len(kp), 17):
        s, a = 1.5 * size[i] / 32, math.radians(ang[i])
        c, si, o = s * math.cos(a), s * math.sin(a), 15.5
        M = np.array([[c, -si, kp[i, 0] - (c - si) * o], [si, c, kp[i, 1] - (si + c) * o]])
        ref = cv2.warpAffine(img.astype(np.float32), M, (32, 32),
                             flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
        np.testing.assert_allclose(p[i, 0, 1:-1, 1:-1].numpy(), ref[1:-1, 1:-1], atol=0.05)


def test_patches_follow_image_rotation():
    """Rotating the image by 90° and the keypoint angles by 90° gives the same patches."""
    img = _photo("camera")
    kp, size, ang = _orb(img, 200)
    h, w = img.shape
    rot = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)  # (x, y) → (h-1-y, x)
    kp_r = np.stack([h - 1 - kp[:, 1], kp[:, 0]], 1)
    for pyramid in (False, True):
        a = extract_patches(torch.from_numpy(img)[None].float(), kp, size, ang, pyramid=pyramid)
        b = extract_patches(torch.from_numpy(rot)[None].float(), kp_r, size, ang + 90, pyramid=pyramid)
        inside = ((kp[:, 0] > 40) & (kp[:, 0] < w - 40) & (kp[:, 1] > 40) & (kp[:, 1] < h - 40))
        inside = torch.from_numpy(inside)
        err = (a - b).abs()[inside][..., 2:-2, 2:-2].mean()
        assert err < (0.5 if not pyramid else 3.0), (pyramid, err)


def test_pyramid_patches_are_antialiased():
    """A large keypoint's patch ≈ the patch of the same region in a 4× smaller image."""
    img = _photo("camera").astype(np.float32)
    small = cv2.resize(cv2.GaussianBlur(img, (0, 0), 1.5), (128, 128), interpolation=cv2.INTER_AREA)
    kp = np.array([[255.5, 255.5], [300.0, 200.0]], np.float32)
    size = np.array([200.0, 160.0], np.float32)
    ang = np.array([30.0, -70.0], np.float32)
    big = extract_patches(torch.from_numpy(img)[None], kp, size, ang, pyramid=True)
    naive = extract_patches(torch.from_numpy(img)[None], kp, size, ang, pyramid=False)
    kp_s = (kp + 0.5) / 4 - 0.5
    ref = extract_patches(torch.from_numpy(small)[None], kp_s, size / 4, ang, pyramid=False)
    assert (big - ref).abs().mean() < (naive - ref).abs().mean()
    assert (big - ref).abs().mean() < 12


# ----------------------------------------------------------------------------- loss
def test_kcc_constants_and_loss():
    assert THRESHOLD == 0.8 and math.isclose(SLOPE, math.log(99) / 0.2)
    # soft match: 0.5 at the threshold ((s+1)/2 = 0.8 ⇔ s = 0.6), 0.99 at s = 1
    torch.testing.assert_close(soft_match(torch.tensor([0.6, 1.0])), torch.tensor([0.5, 0.99]))
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=1)
    p = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    n = torch.nn.functional.normalize(torch.randn(25, 16, generator=g), dim=1)
    best_p = torch.stack([soft_match(a[i] @ p.t()).max() for i in range(20)])
    best_n = torch.stack([soft_match(a[i] @ n.t()).max() for i in range(20)])
    torch.testing.assert_close(kcc_loss(a, p, n), (1 + best_n.sum()) / (1 + best_p.sum()))
    # identical positive bag → ~all anchors matched; loss ≈ (1 + Σneg) / (1 + 0.99·20)
    assert kcc_loss(a, a, n) < kcc_loss(a, p, n)
    idx = mine_hard_negatives(a, n)
    assert torch.equal(idx, (a @ n.t()).argmax(1))


# ----------------------------------------------------------------------------- weak datasets
def test_weak_group_layouts(tmp_path):
    from hndesc_features.training.datasets.weak import folder_groups, generate_triplets, ukbench_groups

    img = _photo("camera")
    (tmp_path / "ukb").mkdir()
    for i in range(8):
        cv2.imwrite(str(tmp_path / "ukb" / f"ukbench{i:05d}.jpg"), img)
        d = tmp_path / "folders" / f"obj{i // 3}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i}.png"), img)
    ukb = ukbench_groups(tmp_path / "ukb")
    assert [len(g.images) for g in ukb] == [4, 4]
    assert [p.name for p in ukb[1].images] == [f"ukbench{i:05d}.jpg" for i in range(4, 8)]
    fg = folder_groups(tmp_path / "folders")  # obj2 has 2 images, all kept
    assert [g.name for g in fg] == ["obj0", "obj1", "obj2"] and [len(g.images) for g in fg] == [3, 3, 2]
    labels = [0, 0, 0, 1, 1, 2]
    trip = generate_triplets(labels, 12, np.random.default_rng(0))
    assert len(trip) == 3 + 1  # same-label pairs
    for i, j, negs in trip:
        assert labels[i] == labels[j] and i < j and len(negs) == 12
        assert all(labels[q] != labels[i] for q in negs)


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """Three real photos (scikit-image wheel), grayscale PNGs."""
    sk = pytest.importorskip("skimage.data", reason="scikit-image provides the real test photos")
    root = Path(sk.__file__).parent
    d = tmp_path / "photos"
    d.mkdir()
    for n in ("camera", "brick", "coins"):
        cv2.imwrite(str(d / f"{n}.png"), cv2.imread(str(root / f"{n}.png"), cv2.IMREAD_GRAYSCALE))
    return d


def test_weak_bags_dataset_on_real_photos(photo_dir):
    from hndesc_features.training.datasets.weak import WeakBags, collate_triplets

    conf = {"layout": "synthetic", "root": str(photo_dir), "n_orb": 64, "n_sift": 32, "views": 2,
            "rounds": 2, "num_negatives": 3, "max_negative_bag": 20, "resize_max": 320}
    ds = WeakBags(conf)
    assert len(ds) == 3  # one positive pair (view 0, view 1) per group
    item = ds[(0, 5)]
    assert item["anchor"].dtype == torch.uint8 and item["anchor"].shape[1:] == (1, 32, 32)
    assert 64 < item["anchor"].shape[0] <= 64 + 32  # ORB + SIFT keypoints, as the reference mixes
    assert item["negative_sizes"].tolist() == [20, 20, 20] and item["negatives"].shape[0] == 60
    # a sample is a pure function of its key
    again = ds[(0, 5)]
    assert all(torch.equal(item[k], again[k]) for k in item)
    # anchor and positive are two views of one photo: its bags, never another group's
    g = ds.pairs[0][0]
    own = [ds.bag(g, v, r) for v in range(2) for r in range(2)]
    assert any(torch.equal(item["anchor"], b) for b in own) and any(torch.equal(item["positive"], b) for b in own)
    assert not torch.equal(ds.bag(g, 0, 0), ds.bag(g, 0, 1))  # rounds hold different views
    batch = collate_triplets([ds[0], ds[1]])
    assert batch["anchor"].shape[0] == batch["anchor_sizes"].sum()


def test_weak_bags_correspondences_and_mutual_term(photo_dir):
    """data.correspondences: the bags' keypoint frames and the anchor→positive homography of a
    synthetic group; ORB keypoints of the anchor, moved by it, land on the positive's keypoints;
    loss.mutual uses them (and asks for them when they are missing)."""
    from hndesc_features.training.datasets.weak import WeakBags, collate_triplets
    from hndesc_features.training.losses.kcc import Loss

    conf = {"layout": "synthetic", "root": str(photo_dir), "n_orb": 64, "n_sift": 0, "views": 2, "rounds": 1,
            "num_negatives": 2, "max_negative_bag": 16, "resize_max": 320, "correspondences": True,
            "homography": {"max_angle": 20, "scale": [0.8, 1.0], "perspective": 0.05}}
    ds = WeakBags(conf)
    item = ds[(0, 0)]
    assert item["anchor_frames"].shape == (item["anchor"].shape[0], 4)
    assert item["positive_frames"].shape == (item["positive"].shape[0], 4)
    H = item["H_ap"].numpy()
    fa, fp = item["anchor_frames"].numpy(), item["positive_frames"].numpy()
    p = np.concatenate([fa[:, :2], np.ones((len(fa), 1))], 1) @ H.T
    d = np.linalg.norm(p[:, None, :2] / p[:, None, 2:] - fp[None, :, :2], axis=-1).min(1)
    assert (d < 2).mean() > 0.3  # repeatable ORB keypoints (a wrong H would give ~0)
    batch = collate_triplets([ds[(i, 0)] for i in range(len(ds))])
    torch.manual_seed(0)
    net = KCCNet({"init": "he"})
    loss, logs = Loss({"mutual": {"weight": 1.0}})(net, batch)
    assert logs["mutual"] > 0 and 0 <= logs["mnn_precision"] <= 1 and logs["n_pos"] > 5
    base, _ = Loss({})(net, batch)
    assert loss.item() == pytest.approx(base.item() + logs["mutual"], rel=1e-4)
    plain = collate_triplets([WeakBags({**conf, "correspondences": False})[(0, 0)]])
    with pytest.raises(ValueError, match="correspondences"):
        Loss({"mutual": {"weight": 1.0}})(net, plain)


def test_tile_groups_and_sibling_negatives(tmp_path):
    """2×2 tiles of each photo are separate groups; `sibling_negatives` bags come from the photo's
    other tiles; the views of a tile only show that tile."""
    from hndesc_features.training.datasets.weak import WeakBags

    sk = pytest.importorskip("skimage.data")
    root = Path(sk.__file__).parent
    for n in ("camera", "brick"):
        cv2.imwrite(str(tmp_path / f"{n}.png"), cv2.imread(str(root / f"{n}.png"), cv2.IMREAD_GRAYSCALE))
    ds = WeakBags({"layout": "synthetic", "root": str(tmp_path), "tiles": 2, "n_orb": 32, "views": 2,
                   "rounds": 1, "num_negatives": 2, "sibling_negatives": 2, "resize_max": 256})
    assert len(ds.groups) == 8 and ds.groups[0].region == (0, 0, 0.5, 0.5)
    assert ds.groups[3].region == (0.5, 0.5, 1, 1)
    assert ds.siblings[0] == [1, 2, 3] and ds.siblings[4] == [5, 6, 7]
    img = cv2.resize(cv2.imread(str(tmp_path / "brick.png"), cv2.IMREAD_GRAYSCALE), (256, 256),
                     interpolation=cv2.INTER_AREA)
    ds.bag(0, 0, 0)
    np.testing.assert_array_equal(ds._sources[0], img[:128, :128])  # brick.png sorts first
    for index in range(len(ds)):
        item = ds[(index, 7)]
        g = ds.pairs[index][0]
        sib_bags = [ds.bag(q, v, 0) for q in ds.siblings[g] for v in range(2)]
        for neg in item["negatives"].split(item["negative_sizes"].tolist()):
            assert any(neg.shape == b.shape and torch.equal(neg, b) for b in sib_bags)


def test_loss_method_batches_mining_and_empty_bags():
    """The trainer's Loss on a collated batch: mining picks each anchor's most similar negative;
    without mining the first negative bag is used; an image without keypoints is skipped."""
    from hndesc_features.training.datasets.weak import bag_from_image, collate_triplets
    from hndesc_features.training.losses.kcc import Loss

    bags = [bag_from_image(_photo(n), 40) for n in ("camera", "coins", "brick", "grass")]
    empty = bags[0][:0]
    items = [
        {"anchor": bags[0], "positive": bags[0].flip(-1), "negatives": torch.cat([bags[1], bags[2]]),
         "negative_sizes": torch.tensor([len(bags[1]), len(bags[2])])},
        {"anchor": empty, "positive": bags[3], "negatives": bags[1],
         "negative_sizes": torch.tensor([len(bags[1])])},
    ]
    batch = collate_triplets(items)
    torch.manual_seed(0)
    net = KCCNet({"init": "he"})
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    for mining, n_neg in ((True, len(bags[0])), (False, len(bags[1]))):
        seen.clear()
        loss, logs = Loss({"name": "wlrn", "mining": mining})(net, batch)
        assert torch.isfinite(loss) and loss.requires_grad and 0 <= logs["match_pos"] <= 1
        # the graph forward: anchors + positives + (one mined negative per anchor | bag 1)
        assert seen[-1] == len(bags[0]) + len(bags[0]) + len(bags[3]) + n_neg
        loss.backward()
    with torch.no_grad():
        a, p = net(bags[0].float()), net(bags[0].flip(-1).float())
        n = net(torch.cat([bags[1], bags[2]]).float())
        expected = kcc_loss(a, p, n[mine_hard_negatives(a, n)])
        got, _ = Loss({"mining": True})(net, batch)
    torch.testing.assert_close(got, expected)  # the empty-anchor triplet does not count
    # data-dependent init: once, at the first call
    net2 = KCCNet()
    loss_fn = Loss({"center_init": True})
    b0 = net2.conv5.bias.detach().clone()
    loss_fn(net2, batch)
    b1 = net2.conv5.bias.detach().clone()
    loss_fn(net2, batch)
    assert not torch.equal(b0, b1) and torch.equal(b1, net2.conv5.bias) and bool(loss_fn.centered)
    assert "centered" in loss_fn.state_dict()  # resumed runs do not re-initialise
    only_empty = collate_triplets([items[1]])
    loss, _ = Loss({})(net, only_empty)
    loss.backward()  # still a graph (no crash when a whole batch has no keypoints)


def test_kcc_training_steps_reduce_the_loss_on_real_patches(photo_dir):
    """A few RMSprop steps of the trainer's Loss (hard-negative mining) on real bag triplets lower
    their KCC loss."""
    from hndesc_features.training.datasets.weak import WeakBags, collate_triplets
    from hndesc_features.training.losses.kcc import Loss

    ds = WeakBags({"layout": "synthetic", "root": str(photo_dir), "n_orb": 32, "n_sift": 0, "views": 2,
                   "rounds": 1,
                   "num_negatives": 2, "max_negative_bag": 16, "resize_max": 256,
                   "homography": {"max_angle": 10, "scale": [0.8, 1.0], "perspective": 0.05}})
    batch = collate_triplets([ds[(i, 0)] for i in range(len(ds))])
    torch.manual_seed(0)
    net = KCCNet({"init": "he"})
    loss_fn = Loss({"mining": True})
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-4)
    with torch.no_grad():
        before = loss_fn(net, batch)[0].item()
    for _ in range(10):
        opt.zero_grad()
        loss_fn(net, batch)[0].backward()
        opt.step()
    with torch.no_grad():
        after = loss_fn(net, batch)[0].item()
    assert after < 0.9 * before, (before, after)


# ----------------------------------------------------------------------------- extractor
def test_extractor_on_real_photo(random_weights):
    from hndesc_features.extractors.kcc import KCC as WLRN
    from hndesc_features.handcrafted import detect_orb

    img = _photo("astronaut")
    model = WLRN({"weights": str(random_weights), "max_keypoints": 500}).eval()
    x = torch.from_numpy(img).float()[None, None] / 255
    out = model({"image": x})
    n = out["keypoints"].shape[1]
    assert 100 < n <= 500
    assert out["scores"].shape == (1, n) and out["descriptors"].shape == (1, 128, n)
    torch.testing.assert_close(out["descriptors"].norm(dim=1), torch.ones(1, n))
    orb = detect_orb(img, 500)  # the very same ORB keypoints as the hf_orb extractor
    np.testing.assert_allclose(out["keypoints"][0].numpy(), orb["keypoints"])
    assert torch.all(out["scores"][0, :-1] >= out["scores"][0, 1:])
    # RGB input = its grayscale
    rgb = torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)).permute(2, 0, 1).float()[None] / 255
    torch.testing.assert_close(model({"image": rgb})["descriptors"], out["descriptors"])


def test_extractor_missing_weights_message(tmp_path):
    from hndesc_features.extractors.kcc import KCC as WLRN

    with pytest.raises(FileNotFoundError, match="weights file .*missing.pt' not found"):
        WLRN({"weights": str(tmp_path / "missing.pt")})
    # a name that is nowhere: the message names the user weights directory and the install command
    with pytest.raises(FileNotFoundError, match="hndesc_features.weights install kcc_mine FILE"):
        WLRN({"weights": "kcc_mine"})


# ----------------------------------------------------------------------------- trainer + hloc
def test_trainer_trains_and_exports_wlrn(tmp_path):
    """Two steps of the shared trainer (RMSprop, KCC with mining) on synthetic-view groups of three
    real photos; the exported file loads into the extractor."""
    from hndesc_features.training.config import load_config
    from hndesc_features.training.trainer import run

    sk = pytest.importorskip("skimage.data")
    root = Path(sk.__file__).parent
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in ("camera", "brick", "coins"):
        cv2.imwrite(str(photos / f"{n}.png"), cv2.imread(str(root / f"{n}.png")))
    conf = load_config("kcc_orb", [
        "data.layout=synthetic", f"data.root={photos}", "data.n_orb=24", "data.views=2", "data.rounds=1",
        "data.num_negatives=2", "data.resize_max=256", "train.steps=2", "train.batch_size=2",
        "train.num_workers=0", "train.val_every=0", "train.log_every=1", "train.checkpoint_every=1",
        "train.plot=false"])
    assert conf["train"]["optimizer"] == "rmsprop" and conf["loss"]["mining"] is True
    summary = run(conf, tmp_path / "run")
    assert summary["finished"] and summary["step"] == 2
    from hndesc_features.extractors.kcc import KCC as WLRN

    model = WLRN({"weights": summary["export"], "max_keypoints": 200})
    out = model({"image": torch.from_numpy(_photo("camera")).float()[None, None] / 255})
    assert out["descriptors"].shape[:2] == (1, 128) and out["keypoints"].shape[1] > 50


def test_hloc_loads_hf_kcc(random_weights):
    from conftest import hloc_available, run_py

    if not hloc_available():
        pytest.skip("hloc is not installed")
    code = ("import hloc.extract_features as e, hndesc_features.hloc as h, hloc.extractors, torch\n"
            "h.register()\n"
            "from hloc.utils.base_model import dynamic_load\n"
            "conf = e.confs['kcc_orb']\n"
            "M = dynamic_load(hloc.extractors, conf['model']['name'])\n"
            f"m = M({{**conf['model'], 'weights': {str(random_weights)!r}, 'max_keypoints': 100}})\n"
            "import skimage.data as d, cv2\n"
            "g = cv2.cvtColor(d.astronaut(), cv2.COLOR_RGB2GRAY)\n"
            "o = m({'image': torch.from_numpy(g).float()[None, None] / 255})\n"
            "print('OK', M.__module__, M.__name__, tuple(o['descriptors'].shape))\n"
            # aliases work: the conf wlrn_orb and the hloc model name hf_wlrn
            "assert e.confs['wlrn_orb']['model'] == conf['model']\n"
            "O = dynamic_load(hloc.extractors, 'hf_wlrn')\n"
            f"o2 = O({{'weights': {str(random_weights)!r}, 'max_keypoints': 100}})({{'image': torch.from_numpy(g).float()[None, None] / 255}})\n"
            "print('ALIAS', O.__module__, torch.equal(o2['descriptors'], o['descriptors']))\n")
    p = run_py(["-c", code], env_extra={"HNDESC_NO_HLOC_HOOK": "1"})
    assert "OK hloc.extractors.hf_kcc KCC (1, 128, 100)" in p.stdout
    assert "ALIAS hloc.extractors.hf_wlrn True" in p.stdout


def test_shipped_weights_load_and_describe():
    from hndesc_features.extractors.kcc import KCC as WLRN
    from hndesc_features.weights import PACKAGE_DIR

    DEFAULT_WEIGHTS = PACKAGE_DIR / "kcc_orb.pt"

    assert DEFAULT_WEIGHTS.is_file(), f"shipped weights missing: {DEFAULT_WEIGHTS}"
    assert DEFAULT_WEIGHTS.stat().st_size < 5_000_000
    obj = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj)
    assert set(KCC_KEYS) <= set(state)  # the released key names
    model = WLRN({"max_keypoints": 300}).eval()  # default conf → shipped weights
    out = model({"image": torch.from_numpy(_photo("camera")).float()[None, None] / 255})
    n = out["keypoints"].shape[1]
    assert n > 100 and out["descriptors"].shape == (1, 128, n)
    torch.testing.assert_close(out["descriptors"].norm(dim=1), torch.ones(1, n))
