"""NetVLAD without torchvision (hf_netvlad): equal to hloc's own NetVLAD code on the same weights
file, through `python -m hloc.extract_features` and our CLI, and a clear missing-weights message.

The weights are a randomly initialised struct file in the released layout (the real one is a
download; hndesc_features.models.netvlad.write_random_struct). hloc's module needs torchvision only
for `torchvision.models.vgg16()`: a stand-in module returning our plain-torch VGG16 (same module
layout) lets hloc's own loader and forward pass run here."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import read_h5, requires_hloc, run_py

ROOT = Path(__file__).resolve().parents[1]
MODEL = "VGG16-NetVLAD-Pitts30K"
WHITEN_DIM = 128


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a random NetVLAD struct file where hloc looks for it."""
    from hndesc_features.models.netvlad import write_random_struct

    home = tmp_path_factory.mktemp("torch_home")
    write_random_struct(home / "hub" / "netvlad" / f"{MODEL}.mat", whiten_dim=WHITEN_DIM, seed=3)
    return home


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three real Sacré-Cœur photos at ≤ 240 px (VGG16 on CPU stays fast)."""
    src = (ROOT / ".." / "shared" / "data" / "sacre_coeur" / "mapping").resolve()
    if not src.is_dir():
        pytest.skip(f"real test data not found at {src}")
    d = tmp_path_factory.mktemp("photos")
    for f in sorted(src.glob("*.jpg"))[:3]:
        img = cv2.imread(str(f))
        s = 240 / max(img.shape[:2])
        cv2.imwrite(str(d / f.name), cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA))
    return d


def _images(folder: Path) -> list[tuple[str, torch.Tensor]]:
    from hndesc_features.extract_features import ImageDataset

    ds = ImageDataset(folder, {"resize_max": 1024})
    return [(n, torch.from_numpy(ds[i]["image"])[None]) for i, n in enumerate(ds.names)]


def _torchvision_stub() -> dict:
    from hndesc_features.models.netvlad import VGG16

    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.vgg16 = lambda *a, **k: VGG16()
    tv.models = models
    return {"torchvision": tv, "torchvision.models": models}


def test_vgg16_layout_matches_hlocs_use():
    """hloc keeps `list(vgg16().children())[0]` minus its last 2 modules: 29 modules ending at conv5_3."""
    from hndesc_features.models.netvlad import VGG16

    feats = list(VGG16().children())[0]
    kept = list(feats.children())[:-2]
    convs = [m for m in kept if isinstance(m, torch.nn.Conv2d)]
    assert len(feats) == 31 and len(kept) == 29 and len(convs) == 13
    assert isinstance(kept[-1], torch.nn.Conv2d) and kept[-1].out_channels == 512
    assert sum(p.numel() for p in feats.parameters()) == 14714688  # torchvision's vgg16().features


@requires_hloc
def test_equal_to_hlocs_netvlad_on_real_photos(torch_home, photos, monkeypatch):
    from hndesc_features.extractors import load_model

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    for k, v in _torchvision_stub().items():
        monkeypatch.setitem(sys.modules, k, v)
    monkeypatch.delitem(sys.modules, "hloc.extractors.netvlad", raising=False)
    try:
        hloc_netvlad = importlib.import_module("hloc.extractors.netvlad")
        theirs = hloc_netvlad.NetVLAD({}).eval()
    finally:
        sys.modules.pop("hloc.extractors.netvlad", None)
    # ours: once from hloc's cache location (default lookup), once from an explicit conf path
    ours = load_model({"name": "hf_netvlad"}).eval()
    ours_path = load_model({"name": "hf_netvlad",
                            "weights": str(torch_home / "hub" / "netvlad" / f"{MODEL}.mat")}).eval()
    descs = []
    with torch.no_grad():
        for name, image in _images(photos):
            a = theirs({"image": image})["global_descriptor"]
            b = ours({"image": image})["global_descriptor"]
            c = ours_path({"image": image})["global_descriptor"]
            assert a.shape == b.shape == (1, WHITEN_DIM)
            assert torch.allclose(a, b, atol=1e-5, rtol=0), (name, (a - b).abs().max())
            assert torch.equal(b, c)
            assert abs(float(b.norm()) - 1) < 1e-5
            descs.append(b[0])
    d = torch.stack(descs)
    sim = d @ d.T
    assert float(sim[~torch.eye(len(d), dtype=bool)].max()) < 0.9999  # distinct images, distinct descriptors


@requires_hloc
def test_hloc_cli_and_our_cli_without_torchvision(torch_home, photos, tmp_path, monkeypatch):
    """`python -m hloc.extract_features --conf hf_netvlad` with torchvision made unimportable,
    then our CLI: hloc's global-descriptor .h5 layout, identical values."""
    blocker = tmp_path / "block" / "torchvision"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torchvision is blocked in this test')\n")
    import os

    from hndesc_features import extract_features

    env = {"TORCH_HOME": str(torch_home),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run_py(["-m", "hloc.extract_features", "--conf", "hf_netvlad", "--image_dir", str(photos),
            "--export_dir", str(tmp_path / "h")], env_extra=env)
    # our CLI in this process, torchvision unimportable here too
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setitem(sys.modules, "torchvision", None)
    extract_features.cli(["--conf", "hf_netvlad", "--image_dir", str(photos), "--export_dir", str(tmp_path / "o")])
    h = read_h5(tmp_path / "h" / "global-feats-netvlad.h5")
    o = read_h5(tmp_path / "o" / "global-feats-netvlad.h5")
    names = sorted(p.name for p in photos.glob("*.jpg"))
    assert sorted(h) == sorted(o) == sorted([f"{n}/global_descriptor" for n in names] +
                                            [f"{n}/image_size" for n in names])
    for n in names:
        img = cv2.imread(str(photos / n))
        assert list(h[f"{n}/image_size"][0]) == [img.shape[1], img.shape[0]]
        g = h[f"{n}/global_descriptor"][0]
        assert g.shape == (WHITEN_DIM,) and g.dtype == np.float32
        np.testing.assert_allclose(o[f"{n}/global_descriptor"][0], g, atol=1e-6)
        assert abs(np.linalg.norm(g) - 1) < 1e-5


def test_missing_weights_is_one_clear_message(tmp_path, monkeypatch):
    from hndesc_features.extractors import load_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as e:
        load_model({"name": "hf_netvlad"})
    msg = str(e.value)
    expected = tmp_path / "empty" / "hub" / "netvlad" / f"{MODEL}.mat"
    assert str(expected) in msg and "https://cvg-data.inf.ethz.ch/hloc/netvlad/Pitts30K_struct.mat" in msg
    assert "model.weights" in msg
    with pytest.raises(FileNotFoundError, match="nowhere.mat"):
        load_model({"name": "hf_netvlad", "weights": str(tmp_path / "nowhere.mat")})
    # our CLI: the message, no traceback, non-zero exit
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "a.jpg"), np.full((32, 32, 3), 128, np.uint8))
    p = run_py(["-m", "hndesc_features.extract_features", "--conf", "hf_netvlad", "--image_dir", str(d),
                "--export_dir", str(tmp_path / "o")], env_extra={"TORCH_HOME": str(tmp_path / "empty")},
               check=False)
    assert p.returncode != 0 and str(expected) in p.stderr and "Traceback" not in p.stderr
