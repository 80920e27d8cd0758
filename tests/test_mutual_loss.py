"""The shared mutual-NN loss (training/losses/mutual.py) on real RootSIFT features of a real photo pair."""
from __future__ import annotations

import numpy as np
import torch

from conftest import skimage_photo
from hndesc_features.handcrafted import detect_sift
from hndesc_features.models.residual import to_gray_u8
from hndesc_features.training.geometry.homography import sample_pair, warp_points
from hndesc_features.training.losses.mutual import mutual_nn_loss
from hndesc_features.training.losses.residual import DEFAULT_CONF
from hndesc_features.training.pipelines.residual import gt_matches

torch.set_num_threads(1)


def _pair(name="astronaut.png", n=300, seed=0):
    img = torch.from_numpy(skimage_photo(name)).permute(2, 0, 1).float() / 255
    pair = sample_pair(img, {"mode": "full", "size": 256, "full": {"rotation": 25, "perspective": 0.1}},
                       np.random.default_rng(seed))
    f = [detect_sift(to_gray_u8(pair[f"view{v}"]), n, 0.005, root=True) for v in (0, 1)]
    H = pair["H_0to1"].astype(np.float64)
    m = gt_matches(f[0], f[1], H, DEFAULT_CONF, upright=False, ori_sign=1.0)
    near = np.linalg.norm(warp_points(f[0]["keypoints"].astype(np.float64), H)[:, None]
                          - f[1]["keypoints"][None], axis=-1) < 8
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return (t(f[0]["descriptors"])[None], t(f[1]["descriptors"])[None], t(m)[None], t(near)[None])


def _mnn_precision(d0, d1, m, near):
    s = d0[0] @ d1[0].T
    nn01, nn10 = s.argmax(1), s.argmax(0)
    i = torch.arange(len(nn01))
    mutual = nn10[nn01] == i
    right = near[0][i, nn01] | (m[0] == nn01)
    return (mutual & right).sum().item() / mutual.sum().item(), mutual.sum().item()


def test_logs_are_the_hard_mutual_nn_precision_of_the_pair():
    d0, d1, m, near = _pair()
    assert (m >= 0).sum() > 30 and (m < 0).sum() > 30  # real pair: both kinds of keypoints exist
    valid0, valid1 = torch.ones(d0.shape[:2], dtype=torch.bool), torch.ones(d1.shape[:2], dtype=torch.bool)
    loss, logs = mutual_nn_loss(d0, d1, m, valid0, valid1, near, 0.05)
    prec, n = _mnn_precision(d0, d1, m, near)
    assert abs(float(logs["mnn_precision"]) - prec) < 1e-6 and float(logs["mnn_matches"]) == n
    assert torch.isfinite(loss) and loss > 0
    # padding (invalid keypoints) changes nothing
    pad = lambda x, v: torch.cat([x, torch.full((1, 20) + x.shape[2:], v, dtype=x.dtype)], 1)  # noqa: E731
    d1p = pad(d1, 0.0)
    d1p[0, -20:, 0] = 1.0  # identical junk descriptors: they would be everyone's NN if not masked
    nearp = torch.cat([near, torch.zeros(1, near.shape[1], 20, dtype=torch.bool)], 2)
    loss_p, logs_p = mutual_nn_loss(d0, d1p, m, valid0, pad(valid1, False), nearp, 0.05)
    assert torch.allclose(loss, loss_p, atol=1e-5)
    assert float(logs_p["mnn_precision"]) == float(logs["mnn_precision"])


def test_unmatched_term_removes_spurious_mutual_matches():
    """A learned linear map on RootSIFT, trained on one real pair with the loss, raises the pair's
    mutual-NN precision; without the unmatched term (positives only) the same training *lowers* it:
    the effect seen in every short CPU training run of this package."""
    d0, d1, m, near = _pair("coffee.png", seed=2)
    valid0, valid1 = torch.ones(d0.shape[:2], dtype=torch.bool), torch.ones(d1.shape[:2], dtype=torch.bool)
    start, _ = _mnn_precision(d0, d1, m, near)

    def train(weight):
        torch.manual_seed(0)
        W = torch.nn.Parameter(torch.eye(128) + 0.01 * torch.randn(128, 128))
        opt = torch.optim.Adam([W], 3e-3)
        for _ in range(150):
            e0 = torch.nn.functional.normalize(d0 @ W, dim=-1)
            e1 = torch.nn.functional.normalize(d1 @ W, dim=-1)
            loss, _ = mutual_nn_loss(e0, e1, m, valid0, valid1, near, 0.05, weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return _mnn_precision(torch.nn.functional.normalize(d0 @ W, dim=-1),
                                  torch.nn.functional.normalize(d1 @ W, dim=-1), m, near)[0]

    with_term, without = train(4.0), train(0.0)
    assert with_term > start + 0.03
    assert without < start
    assert with_term > without + 0.05
