"""The weights registry: names, the user weights directory, `python -m hndesc_features.weights`,
and a user-installed checkpoint of the paper's CAPS backbone running through hloc's CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import read_h5, requires_hloc, run_py, skimage_photo
from hndesc_features import weights as registry
from hndesc_features.models.checkpoints import CheckpointError


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    d = tmp_path / "user_weights"
    monkeypatch.setenv(registry.ENV_VAR, str(d))
    return d


def test_every_shipped_name_is_a_file_that_loads_into_its_architecture():
    for name, entry in registry.SHIPPED.items():
        model, path = registry.load_model(name, entry.arch)
        assert path == registry.PACKAGE_DIR / f"{name}.pt" and path.stat().st_size < 5_000_000, name
        assert not model.training and sum(p.numel() for p in model.parameters()) > 1000, name
    # every shipped file is in the table (nothing ships unexplained)
    assert {p.stem for p in registry.PACKAGE_DIR.glob("*.pt")} == set(registry.SHIPPED)


def test_resolve_order_aliases_and_errors(user_dir, tmp_path):
    assert registry.resolve(None, "residual_sift") == registry.PACKAGE_DIR / "residual_sift.pt"
    assert registry.resolve("residual_sift.pt") == registry.PACKAGE_DIR / "residual_sift.pt"
    assert registry.resolve("wlrn_orb") == registry.PACKAGE_DIR / "kcc_orb.pt"  # alias
    # a file installed under a shipped name wins over the shipped one
    user_dir.mkdir()
    (user_dir / "residual_sift.pt").write_bytes((registry.PACKAGE_DIR / "residual_sift.pt").read_bytes())
    assert registry.resolve("residual_sift") == user_dir / "residual_sift.pt"
    with pytest.raises(FileNotFoundError) as e:
        registry.resolve(None, "hndesc_caps")
    msg = str(e.value)
    assert str(user_dir) in msg and "python -m hndesc_features.weights install hndesc_caps FILE" in msg
    with pytest.raises(FileNotFoundError, match="not found"):
        registry.resolve(tmp_path / "nope" / "x.pt")


@pytest.fixture(scope="module")
def caps_release(tmp_path_factory):
    """A checkpoint in the released HNDesc-CAPS layout ({"state_dict"}, keys prefixed by CAPS's
    `net.`), with random weights, written once for this module: (file, network)."""
    from hndesc_features.models.hndesc_caps import HNDescCAPS

    path = tmp_path_factory.mktemp("caps") / "caps_release.pth"
    torch.manual_seed(0)
    net = HNDescCAPS()
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, path)
    return path, net.eval()


def test_install_cli_checks_the_architecture(user_dir, tmp_path, capsys, caps_release):
    from hndesc_features.weights.__main__ import main as weights_cli

    ckpt = caps_release[0]
    # a checkpoint of another architecture is refused, nothing is written
    rc = weights_cli(["install", "hndesc_caps", str(registry.PACKAGE_DIR / "hndesc_small.pt")])
    assert rc == 2 and "error:" in capsys.readouterr().err and not (user_dir / "hndesc_caps.pt").exists()
    rc = weights_cli(["install", "hndesc_caps", str(ckpt)])
    assert rc == 0 and (user_dir / "hndesc_caps.pt").read_bytes() == ckpt.read_bytes(), capsys.readouterr().out
    rc = weights_cli(["install", "hndesc_caps", str(ckpt)])
    assert rc == 2 and "--force" in capsys.readouterr().err
    # the `python -m` entry point, in a fresh interpreter
    p = run_py(["-m", "hndesc_features.weights", "list"], env_extra={registry.ENV_VAR: str(user_dir)})
    assert "hndesc_caps" in p.stdout and "user" in p.stdout and "hndesc_r2d2" in p.stdout
    with pytest.raises(CheckpointError):
        registry.install("my_own", ckpt)  # unknown name: must be our format


@pytest.mark.heavy(10)
def test_install_refuses_bad_files_in_plain_words(caps_release, user_dir, tmp_path):
    """Another architecture: the message names both architectures (our format) or the mismatched
    keys (released layout). Not a torch file: a plain sentence saying what the file is instead."""
    from hndesc_features.models.hndesc_r2d2 import HNDescR2D2

    def install(path):
        p = run_py(["-m", "hndesc_features.weights", "install", "hndesc_caps", str(path)],
                   env_extra={registry.ENV_VAR: str(user_dir)}, check=False)
        assert p.returncode == 2 and not (user_dir / "hndesc_caps.pt").exists(), p.stderr
        return p.stderr.strip().splitlines()[-1]

    msg = install(registry.PACKAGE_DIR / "hndesc_small.pt")
    assert "architecture 'hndesc_small'" in msg and "'hndesc_caps' was requested" in msg
    torch.save({"state_dict": HNDescR2D2().state_dict()}, tmp_path / "r2d2_release.pth")
    msg = install(tmp_path / "r2d2_release.pth")
    assert "does not fit architecture 'hndesc_caps'" in msg and "missing [" in msg and "unexpected ['ops." in msg

    junk = {"junk.pth": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            "notes.pth": b"hello, these are not weights\n",
            "page.pth": b"<!DOCTYPE html><html><head><title>Drive</title></head></html>\n",
            "plain_pickle.pth": __import__("pickle").dumps({"state_dict": [1, 2]}, protocol=2)}
    expect = {"junk.pth": "binary data of another kind", "notes.pth": "a text file (it begins 'hello, these",
              "page.pth": "an HTML page", "plain_pickle.pth": "a Python pickle that torch.save did not write"}
    for name, data in junk.items():
        (tmp_path / name).write_bytes(data)
        msg = install(tmp_path / name)
        assert f"'{tmp_path / name}' is not a torch weights file: it is {expect[name]}" in msg, msg
        assert not any(tok.isdigit() and len(tok) > 4 for tok in msg.replace(":", " ").split()), msg
    # torch's legacy (non-zip) format is still a torch file
    legacy = tmp_path / "legacy.pth"
    _, net = caps_release
    torch.save({"state_dict": net.state_dict()}, legacy, _use_new_zipfile_serialization=False)
    assert registry.install("hndesc_caps", legacy) == user_dir / "hndesc_caps.pt"


@requires_hloc
def test_installed_caps_checkpoint_runs_through_hlocs_cli(user_dir, tmp_path, caps_release):
    ckpt, net = caps_release
    registry.install("hndesc_caps", ckpt)
    images = tmp_path / "images"
    images.mkdir()
    import cv2

    img = skimage_photo("astronaut.png")[::2, ::2]  # 256×256 RGB
    cv2.imwrite(str(images / "a.jpg"), img[:, :, ::-1])
    out = tmp_path / "out"
    run_py(["-m", "hloc.extract_features", "--conf", "hndesc_caps", "--image_dir", str(images),
            "--export_dir", str(out)], env_extra={registry.ENV_VAR: str(user_dir)})
    feats = read_h5(next(out.glob("feats-hf-hndesc-caps*.h5")))
    kp, desc = feats["a.jpg/keypoints"][0], feats["a.jpg/descriptors"][0]
    assert desc.shape == (128, len(kp)) and len(kp) > 50
    np.testing.assert_allclose(np.linalg.norm(desc.astype(np.float32), axis=0), 1, atol=1e-2)
    # the descriptors are those of the installed weights: recompute a few with the network itself
    from hndesc_features.models.sampling import sample_descriptors

    x = torch.from_numpy(cv2.imread(str(images / "a.jpg"))[:, :, ::-1].copy()).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        ref = sample_descriptors(net.eval()(x), torch.from_numpy(kp[:20].astype(np.float32))[None],
                                 x.shape[-2:], net.sampling, stride=net.stride)[0]
    np.testing.assert_allclose(desc[:, :20].astype(np.float32), ref.numpy(), atol=2e-2)
