"""HNDesc photorealistic stylization (pixel-wise colour transfer) and colour augmentation."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hndesc_features.training.augment_hndesc import HNDescColorAugmentation, OneOf
from hndesc_features.training.stylize import (DEFAULT_STYLE_PHOTOS, NeuralStylizer, StatsStylizer, StyleStats,
                              StylizationWarning, main, stylize_images, stylized_versions, to_lab)

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _need_data():
    if not (DATA / "photos").is_dir():
        pytest.skip(f"real style photos not found at {DATA} (../shared/data)")


def _content(max_side: int = 320) -> np.ndarray:
    _need_data()
    img = cv2.imread(str(DATA / "sacre_coeur" / "mapping" / "02928139_3448003521.jpg"))[:, :, ::-1]
    s = max_side / max(img.shape[:2])
    return np.ascontiguousarray(cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA))


def _styles() -> dict:
    _need_data()
    return {k: [DATA / p for p in v] for k, v in DEFAULT_STYLE_PHOTOS.items()}


def _grad_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of the two images' luminance gradient fields (1 = same edges, same directions)."""
    def grad(x):
        g = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return np.stack([cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)], -1)
    ga, gb = grad(a), grad(b)
    return float((ga * gb).sum() / np.sqrt((ga ** 2).sum() * (gb ** 2).sum()))


def _lab_stats(img: np.ndarray) -> np.ndarray:
    lab = to_lab(img).reshape(-1, 3)
    return np.concatenate([lab.mean(0), lab.std(0)])


@pytest.mark.parametrize("style", ["dusk", "night"])
def test_stylization_keeps_edges_and_moves_colours_toward_style(style):
    content = _content()
    stylizer = StatsStylizer(_styles(), seed=0)
    style_img = cv2.imread(str(_styles()[style][0]))[:, :, ::-1].copy()
    target = _lab_stats(style_img)
    for k in range(3):
        out = stylizer(content, style)
        assert out.shape == content.shape and out.dtype == np.uint8
        assert _grad_corr(content, out) > 0.9
        d_before = np.linalg.norm(_lab_stats(content) - target)
        d_after = np.linalg.norm(_lab_stats(out) - target)
        assert d_after < 0.75 * d_before, (d_before, d_after)


def test_transfer_is_a_pixelwise_map():
    """Equal input colours give equal output colours wherever they are (no spatial operation)."""
    content = _content(200)
    stylizer = StatsStylizer(_styles(), seed=1)
    p = stylizer.sample_params("night")
    flat = content.reshape(-1, 3)
    perm = np.random.default_rng(0).permutation(len(flat))
    shuffled = flat[perm].reshape(content.shape)
    a = stylizer.transfer(content, p["stats"], p["strength"], p["hue"], p["exposure"]).reshape(-1, 3)
    b = stylizer.transfer(shuffled, p["stats"], p["strength"], p["hue"], p["exposure"]).reshape(-1, 3)
    assert np.abs(a[perm].astype(int) - b.astype(int)).max() <= 1


def test_night_style_is_darker():
    content = _content(200)
    stylizer = StatsStylizer(_styles(), seed=2)
    L0 = to_lab(content)[..., 0].mean()
    assert all(to_lab(stylizer(content, "night"))[..., 0].mean() < L0 - 10 for _ in range(3))


def test_grayscale_and_tiny_inputs_warn(tmp_path):
    content = _content(200)
    gray = cv2.cvtColor(content, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "tiny.png"), content[:20, :20, ::-1])
    stylizer = StatsStylizer(_styles(), seed=0)
    images = [(tmp_path / "gray.png", Path("gray.png")), (tmp_path / "tiny.png", Path("tiny.png"))]
    with pytest.warns(StylizationWarning) as rec:
        res = stylize_images(images, tmp_path / "out", stylizer, ["dusk", "night"], per_style=2)
    msgs = " ".join(str(w.message) for w in rec)
    assert "grayscale" in msgs and "smaller than" in msgs
    assert res == {"written": 4, "skipped": 1}
    outs = stylized_versions(tmp_path / "out", "gray.png")
    assert [p.name for p in outs] == ["dusk_00.jpg", "dusk_01.jpg", "night_00.jpg", "night_01.jpg"]
    out = cv2.imread(str(outs[0]))[:, :, ::-1]
    assert out.shape[:2] == gray.shape and _grad_corr(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), out) > 0.9
    assert stylized_versions(tmp_path / "out", "tiny.png") == []


def test_cli_writes_twelve_versions(tmp_path):
    content = _content(160)
    cv2.imwrite(str(tmp_path / "img.jpg"), content[:, :, ::-1])
    assert main([str(tmp_path / "img.jpg"), "-o", str(tmp_path / "st")]) == 0
    assert len(stylized_versions(tmp_path / "st", "img.jpg")) == 12


def test_neural_stylizer_requires_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="style-network weights"):
        NeuralStylizer(tmp_path / "wct2.pt", {"night": []})
    assert main([str(tmp_path), "-o", str(tmp_path / "o"), "--method", "neural",
                 "--net", str(tmp_path / "nope.pt"), "--style", "x=" + str(tmp_path / "none.jpg")]) == 2


def test_neural_stylizer_runs_an_exported_network(tmp_path):
    """A real exported network (per-channel mean/std transfer) through the neural path."""

    class MeanStd(torch.nn.Module):
        def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
            mc, sc = content.mean((2, 3), keepdim=True), content.std((2, 3), keepdim=True)
            ms, ss = style.mean((2, 3), keepdim=True), style.std((2, 3), keepdim=True)
            return ((content - mc) / (sc + 1e-6) * ss + ms).clamp(0, 1)

    path = tmp_path / "meanstd.pt2"
    dims = [torch.export.Dim(n, min=8, max=4096) for n in "HWhw"]
    ep = torch.export.export(MeanStd(), (torch.rand(1, 3, 64, 80), torch.rand(1, 3, 50, 60)),
                             dynamic_shapes=({2: dims[0], 3: dims[1]}, {2: dims[2], 3: dims[3]}))
    torch.export.save(ep, str(path))
    content = _content(160)
    st = NeuralStylizer(path, {"night": [_styles()["night"][0]]})
    out = st(content, "night")
    assert out.shape == content.shape and _grad_corr(content, out) > 0.9


def test_style_stats_subsampling_is_bounded():
    img = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    assert len(StyleStats.from_rgb(img, max_samples=1000).L) == 1000


# ------------------------------------------------------------------------------ augmentation
def test_color_augmentation_range_shape_and_probabilities():
    _need_data()
    torch.manual_seed(0)
    img = _content(64)
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None].repeat(300, 1, 1, 1) / 255
    aug = HNDescColorAugmentation()
    y = aug(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    changed = ((y - x).abs().flatten(1).max(1).values > 1e-3).float().mean().item()
    # P(changed) = 1 - (1-0.6)(1-0.3)(1-0.1) = 0.748 (minus identity channel shuffles)
    assert 0.62 < changed < 0.85, changed
    assert torch.equal(HNDescColorAugmentation(0, 0, 0)(x[:4]), x[:4])


def test_one_of_selects_by_weight():
    class Add(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, x):
            return x + self.v

    torch.manual_seed(0)
    one = OneOf([Add(1.0), Add(2.0)], [0.7, 0.1], p=1.0)
    y = one(torch.zeros(4000, 1, 1, 1)).flatten()
    assert set(y.unique().tolist()) <= {1.0, 2.0}
    assert (y == 1.0).float().mean().item() == pytest.approx(0.875, abs=0.03)
