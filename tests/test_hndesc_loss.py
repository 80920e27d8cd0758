"""HNDesc AP / triplet losses and hard-negative mining (in_pair, in_batch, gd, selfgd)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hndesc_features.training.knn import KNNIndex, SelfGDIndex
from hndesc_features.training.losses.hndesc import HNDescLoss, QuantizedAP, mine_hardest, negative_mask
from hndesc_features.training.pipelines.hndesc import pick_negative_window

torch.set_num_threads(1)


def _unit(*rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float), dim=1)


# ------------------------------------------------------------------------------ AP
def test_ap_perfect_and_worst():
    ap = QuantizedAP(20)
    sim = torch.tensor([[0.95, 0.1, 0.2, 0.0], [0.0, 0.9, 0.95, 1.0]])
    lab = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    out = ap(sim, lab)
    assert out[0].item() == pytest.approx(1.0, abs=1e-6)
    assert out[1].item() == pytest.approx(0.25, abs=0.02)  # ranked last of 4


def test_ap_loss_in_unit_range_and_decreases_when_positives_get_closer():
    g = torch.Generator().manual_seed(0)
    n, d = 60, 32
    anchors = F.normalize(torch.randn(n, d, generator=g), dim=1)
    noise = F.normalize(torch.randn(n, d, generator=g), dim=1)
    pair_ids = torch.arange(n) // 10
    loss = HNDescLoss("ap", "in_batch")
    values = []
    for t in [0.0, 0.15, 0.3, 0.45, 1.0]:
        positives = F.normalize(t * anchors + (1 - t) * noise, dim=1)
        out = loss(anchors, positives, pair_ids)
        assert 0.0 <= out["loss"].item() <= 1.0 and 0.0 <= out["ap"].item() <= 1.0
        values.append(out["loss"].item())
    assert all(a > b for a, b in zip(values[:4], values[1:4])), values
    assert values[-1] <= min(values) + 1e-6 and values[-1] < 0.05 and values[0] > 0.5


def test_ap_loss_gradient_pulls_positive_closer():
    g = torch.Generator().manual_seed(1)
    anchors = F.normalize(torch.randn(20, 16, generator=g), dim=1)
    positives = F.normalize(anchors + 0.8 * torch.randn(20, 16, generator=g), dim=1).requires_grad_(True)
    pair_ids = torch.arange(20) // 5
    loss = HNDescLoss("ap", "in_batch")
    before = loss(anchors, positives, pair_ids)["loss"]
    before.backward()
    with torch.no_grad():
        stepped = F.normalize(positives - 0.5 * positives.grad, dim=1)
    after = loss(anchors, stepped, pair_ids)["loss"]
    assert after.item() < before.item()


# ------------------------------------------------------------------------------ mining
@pytest.fixture()
def toy():
    """Two pairs of 3 keypoints. Anchor 0's most similar positives: 4 (other pair) > 1 (own pair)
    > 2 (own pair) > 3, 5 (other pair)."""
    anchors = _unit([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1], [0, 1, 0, 1])
    positives = _unit([1, 0.1, 0, 0], [0.6, 1, 0, 0], [0.3, 0, 1, 0], [0, 0, 0, 1], [0.9, 0.1, 0, 0.3],
                      [-1, 1, 0, 1])
    pair_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    return anchors, positives, pair_ids


def _hardest(loss, anchors, positives, pair_ids, extra=None):
    pos, neg, keep = loss.similarities(anchors, positives, pair_ids, extra)
    return pos, neg, keep


def test_in_pair_mining_picks_hardest_of_own_pair(toy):
    a, p, ids = toy
    loss = HNDescLoss("ap", "in_pair", knn=2)
    _, neg, keep = _hardest(loss, a, p, ids)
    sim = a @ p.t()
    assert keep.all()
    assert torch.allclose(neg[0], torch.stack([sim[0, 1], sim[0, 2]]))  # own pair, hardest first
    assert torch.allclose(neg[3], torch.sort(sim[3, [4, 5]], descending=True).values)


def test_in_batch_mining_uses_other_pairs(toy):
    a, p, ids = toy
    loss = HNDescLoss("ap", "in_batch", knn=2)
    _, neg, _ = _hardest(loss, a, p, ids)
    sim = a @ p.t()
    assert torch.allclose(neg[0], torch.sort(sim[0, [3, 4, 5]], descending=True).values[:2])
    assert neg[0, 0] == pytest.approx(sim[0, 4].item())  # the hardest is in the other pair
    # with the own pair included, anchor 0 sees positives 1..5
    loss_all = HNDescLoss("ap", "in_batch", knn=3, in_batch_with_pair=True)
    _, neg_all, _ = _hardest(loss_all, a, p, ids)
    assert torch.allclose(neg_all[0], torch.sort(sim[0, 1:], descending=True).values[:3])


def test_gd_mining_adds_neighbour_descriptors(toy):
    a, p, ids = toy
    extra = _unit([1, 0.05, 0, 0], [0, 0, 0, -1])  # a near-duplicate of anchor 0 from a neighbour image
    loss = HNDescLoss("ap", "gd", knn=2)
    _, neg, _ = _hardest(loss, a, p, ids, extra)
    sim_extra = a @ extra.t()
    assert neg[0, 0] == pytest.approx(sim_extra[0, 0].item())
    # without neighbour descriptors gd falls back to in_batch
    _, neg_nb, _ = _hardest(loss, a, p, ids, None)
    _, neg_ib, _ = _hardest(HNDescLoss("ap", "in_batch", knn=2), a, p, ids)
    assert torch.equal(neg_nb, neg_ib)
    # harder negatives → lower AP
    assert loss(a, p, ids, extra)["ap"] <= loss(a, p, ids)["ap"]


def test_padding_repeats_weakest_and_drops_rows_without_negatives():
    sim = torch.tensor([[0.9, 0.5, 0.2], [0.1, 0.8, 0.3]])
    mask = torch.tensor([[False, True, True], [False, False, False]])
    neg, keep = mine_hardest(sim, mask, 4)
    assert keep.tolist() == [True, False]
    assert neg[0].tolist() == pytest.approx([0.5, 0.2, 0.2, 0.2])
    one_pair = HNDescLoss("ap", "in_batch")(_unit([1, 0]), _unit([1, 0]), torch.tensor([0]))
    assert one_pair["n"] == 0 and one_pair["loss"].item() == 0.0


def test_negative_mask_shapes():
    ids = torch.tensor([0, 0, 1])
    m = negative_mask(ids, "selfgd", n_extra=2)
    assert m.shape == (3, 5) and m[:, 3:].all()
    assert m[:, :3].tolist() == [[False, False, True], [False, False, True], [True, True, False]]
    with pytest.raises(ValueError, match="Unknown mining mode"):
        negative_mask(ids, "nope")


def test_triplet_margin_one():
    a = _unit([1, 0], [0, 1])
    p = _unit([1, 0], [0, 1])
    ids = torch.tensor([0, 1])
    out = HNDescLoss("triplet", "in_batch")(a, p, ids)
    # d_pos = 0, d_neg = sqrt(2) > margin 1 → zero loss
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-5)
    p_bad = _unit([0, 1], [1, 0])
    out = HNDescLoss("triplet", "in_batch")(a, p_bad, ids)
    assert out["loss"].item() == pytest.approx(np.sqrt(2) - 0 + 1, abs=1e-3)


# ------------------------------------------------------------------------------ neighbours
def test_knn_from_pairs_and_h5(tmp_path):
    import h5py

    train = ["/data/imgs/a.jpg", "/data/imgs/b.jpg", "/data/imgs/c.jpg"]
    (tmp_path / "pairs.txt").write_text("a.jpg c.jpg\na.jpg b.jpg\nb.jpg a.jpg\n")
    idx = KNNIndex(tmp_path / "pairs.txt", train, k=5)
    assert idx("/data/imgs/a.jpg") == ["/data/imgs/c.jpg", "/data/imgs/b.jpg"]
    with h5py.File(tmp_path / "global.h5", "w") as f:
        for n, v in [("a.jpg", [1, 0, 0]), ("b.jpg", [0.9, 0.1, 0]), ("c.jpg", [0, 0, 1])]:
            f.create_group(n)["global_descriptor"] = np.array(v, np.float32)
    idx = KNNIndex(tmp_path / "global.h5", train, k=1)
    assert idx("/data/imgs/a.jpg") == ["/data/imgs/b.jpg"]
    assert idx("/data/imgs/c.jpg") in (["/data/imgs/a.jpg"], ["/data/imgs/b.jpg"])


def test_knn_unknown_images_error(tmp_path):
    (tmp_path / "pairs.txt").write_text("a.jpg zzz.jpg\n")
    with pytest.raises(ValueError, match="zzz.jpg"):
        KNNIndex(tmp_path / "pairs.txt", ["/d/a.jpg", "/d/b.jpg"])
    idx = KNNIndex(tmp_path / "pairs.txt", ["/d/a.jpg", "/d/b.jpg"], allow_unknown=True)
    assert idx("/d/a.jpg") == []
    with pytest.raises(FileNotFoundError):
        KNNIndex(tmp_path / "none.txt", ["/d/a.jpg"])


def test_selfgd_refreshes_and_finds_similar_images():
    """Neighbours from the model's own pooled features: a colour-shifted copy is the nearest."""
    from hndesc_features.models.hndesc_small import HNDescSmall

    skd = pytest.importorskip("skimage.data", reason="scikit-image provides the real test photos")
    imgs = {"astro": skd.astronaut(), "astro_dark": (skd.astronaut() * 0.8).astype(np.uint8),
            "coins": np.repeat(skd.coins()[..., None], 3, -1), "brick": np.repeat(skd.brick()[..., None], 3, -1)}
    torch.manual_seed(0)
    model = HNDescSmall()
    idx = SelfGDIndex(list(imgs), lambda n: imgs[n] / 255.0, refresh_every=10, k=1, size=96)
    assert idx.maybe_refresh(model, 0)
    assert idx("astro") == ["astro_dark"]
    assert not idx.maybe_refresh(model, 5) and idx.maybe_refresh(model, 10)
    assert model.training  # mode restored


def test_pick_negative_window_prefers_dense_keypoints():
    import random

    kp = np.concatenate([np.random.default_rng(0).uniform([300, 300], [340, 340], (50, 2)),
                         np.array([[10.0, 10.0], [20.0, 500.0]])])
    y0, x0 = pick_negative_window((600, 800), kp, 128, n_trials=5, rng=random.Random(0))
    assert 0 <= y0 <= 600 - 128 and 0 <= x0 <= 800 - 128
    inside = ((kp[:, 0] >= x0) & (kp[:, 0] < x0 + 128) & (kp[:, 1] >= y0) & (kp[:, 1] < y0 + 128)).sum()
    assert inside >= 50


# ------------------------------------------------------------------------------ trainer adapter
def _conf(mining="in_batch", **loss):
    return {"name": "t", "model": {"name": "hndesc_small"},
            "loss": {"name": "hndesc", "mining": mining, "keypoints": {"max": 64, "min": 8}, **loss},
            "data": {"name": "homographies", "source": {"name": "dev_images", "split": "train"},
                     "resize": [320, 400], "homography": {"mode": "hcrops", "size": 128},
                     "photometric": {"enable": False}}}


@pytest.fixture(scope="module")
def pairs():
    from conftest import training_pairs

    return training_pairs(_conf()["data"], [(i, 100 + i) for i in (0, 5, 12)])


def test_prepare_gives_exact_correspondences(pairs):
    from hndesc_features.training.geometry.homography import warp_points
    from hndesc_features.training.losses import hndesc as L
    from hndesc_features.training.pipelines import hndesc as P

    out = P.prepare(pairs[0], _conf())
    m = out["kmask"].numpy()
    assert out["view0"].shape == (3, 128, 128) and out["kpts0"].shape == (64, 2) and m.sum() >= 8
    k0, k1 = out["kpts0"].numpy()[m], out["kpts1"].numpy()[m]
    np.testing.assert_allclose(warp_points(k0.astype(np.float64), out["H_0to1"].numpy()), k1, atol=1e-3)
    assert ((k1 >= -0.5) & (k1 <= 127.5)).all()
    assert len(np.unique(k0.round(2), axis=0)) == len(k0)  # one keypoint per location
    again = P.prepare(pairs[0], _conf())  # a sample is a pure function of its seed
    assert torch.equal(out["view1"], again["view1"]) and torch.equal(out["kpts0"], again["kpts0"])


def test_loss_adapter_trains_in_batch(pairs):
    from hndesc_features.models.checkpoints import build_model
    from hndesc_features.training.losses import hndesc as L
    from hndesc_features.training.pipelines import hndesc as P

    torch.manual_seed(0)
    conf = _conf()
    batch = P.collate([P.prepare(p, conf) for p in pairs])
    model = build_model("hndesc_small", {})
    loss_fn = L.Loss(conf["loss"])
    loss, logs = loss_fn(model, batch)
    assert torch.isfinite(loss) and 0 <= loss.item() <= 1 and 0 <= float(logs["ap"]) <= 1
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    feats = model.eval().extract(batch["view0"][:1], 100)
    assert feats["descriptors"].shape == (len(feats["keypoints"]), 128)


def test_loss_adapter_gd_and_selfgd(pairs, tmp_path):
    from hndesc_features.models.checkpoints import build_model
    from hndesc_features.training.datasets.dev_images import train_images
    from hndesc_features.training.losses import hndesc as L
    from hndesc_features.training.pipelines import hndesc as P

    names = [str(p) for p in train_images()]
    lines = [f"{Path(pairs[i]['name']).name} {Path(names[(j * 7) % len(names)]).name}"
             for i in range(3) for j in range(1, 3)]
    knn = tmp_path / "pairs-netvlad.txt"
    knn.write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    model = build_model("hndesc_small", {})
    for mining, extra in [("gd", {"gd": {"knn_file": str(knn), "resize": 320, "max_kpts": 32}}),
                          ("selfgd", {"gd": {"resize": 320, "max_kpts": 32},
                                      "selfgd": {"refresh_every": 100, "k": 2, "size": 64}})]:
        conf = _conf(mining, **extra)
        batch = P.collate([P.prepare(p, conf) for p in pairs])
        loss, logs = L.Loss(conf["loss"])(model, batch)
        assert torch.isfinite(loss) and logs["extra_negs"] > 0, mining
    with pytest.raises(ValueError, match="knn_file"):
        L.Loss(_conf("gd")["loss"])(model, batch)


def test_dog_keypoints_unique_and_sorted():
    from hndesc_features.handcrafted import dog_keypoints

    skd = pytest.importorskip("skimage.data", reason="scikit-image provides the real test photos")
    kp = dog_keypoints(skd.camera(), 500, 0.005)
    assert 0 < len(kp) <= 500 and len(np.unique(kp.round(2), axis=0)) == len(kp)


def test_in_pair_negatives_exclude_close_keypoints():
    """A keypoint 3 px away in the same image is not a negative (neg_min_dist), a far one is."""
    a = _unit([1.0, 0, 0], [0.99, 0.14, 0], [0, 1.0, 0])
    pair_ids = torch.zeros(3, dtype=torch.long)
    loss = HNDescLoss("ap", "in_pair", knn=1)
    p1 = torch.tensor([[10.0, 10.0], [13.0, 10.0], [60.0, 60.0]])
    exclude = torch.cdist(p1, p1) < 8.0
    _, neg_all, _ = loss.similarities(a, a, pair_ids)
    _, neg_ex, keep = loss.similarities(a, a, pair_ids, exclude=exclude)
    assert neg_all[0, 0] == pytest.approx(float(a[0] @ a[1]))  # the close one is the hardest...
    assert neg_ex[0, 0] == pytest.approx(float(a[0] @ a[2]))   # ...unless excluded
    assert keep.all()
