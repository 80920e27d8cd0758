"""A non-editable wheel ships the confs, the weights and the hloc hook (.pth at its root)."""
from __future__ import annotations

import subprocess
import sysconfig
import sys
import zipfile

import pytest

from conftest import ROOT, hloc_available, run_py


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    """The wheel built from this checkout (non-editable) and a `pip install --target` of it, made once
    for the tests of this module: (wheel file, install target)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    str(ROOT), "-w", str(tmp / "w")], check=True, capture_output=True)
    wheel = next((tmp / "w").glob("hndesc_features-*.whl"))
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    return wheel, target


def test_wheel_contents_and_hook(wheel_install, tmp_path):
    wheel, target = wheel_install
    names = zipfile.ZipFile(wheel).namelist()
    assert "hndesc_features_hloc.pth" in names and "hndesc_features_hloc.start" in names
    for conf in ("rootsift", "rootsift_upright", "surf", "orb"):
        assert f"hndesc_features/_confs/features/{conf}.yaml" in names
    assert "hndesc_features/training/trainer.py" in names or "hndesc_features/training/__init__.py" in names
    # a fresh interpreter that sees only the installed copy (not the source tree) for our package
    # (-S: no site processing, so the editable install's finder is absent; the dependencies come
    # from this environment's site-packages appended without running its .pth files)
    purelib = sysconfig.get_paths()["purelib"]
    code = ("import site, sys\n"
            f"site.addsitedir({str(target)!r})\n"
            f"sys.path.append({purelib!r})\n"
            "import hndesc_features.confs as c\n"
            "print('FROM', c.__file__)\n"
            "print('CONFS', sorted(c.feature_confs()))\n"
            "import hndesc_features.hloc.hook as h\n"
            "print('HOOK', h.installed())\n")
    p = run_py(["-S", "-c", code], cwd=tmp_path)
    assert f"FROM {target}" in p.stdout
    assert "'surf'" in p.stdout and "'rootsift_upright'" in p.stdout
    assert "HOOK True" in p.stdout  # the .pth ran when the site dir was added
    if hloc_available():
        import importlib.util
        from pathlib import Path

        hloc_root = Path(importlib.util.find_spec("hloc").origin).parents[1]
        code2 = code + (f"sys.path.append({str(hloc_root)!r})\n"
                        "print('HELP-START')\n"
                        "sys.argv = ['x', '--help']\n"
                        "import runpy\n"
                        "runpy.run_module('hloc.extract_features', run_name='__main__')\n")
        p = run_py(["-S", "-c", code2], cwd=tmp_path, check=False)
        help_text = p.stdout.split("HELP-START")[-1]
        assert "superpoint_aachen" in help_text and "rootsift_upright" in help_text, p.stdout + p.stderr

    # PEP 829 (Python >= 3.15): the .start file of the same name replaces the .pth import line.
    # Do what site.py does with it (resolve each entry point with pkgutil.resolve_name and call it)
    # on the installed copy, without running the .pth file.
    start = (target / "hndesc_features_hloc.start").read_text().split()
    assert start == ["hndesc_features.hloc.hook:startup"]
    pep829 = ("import pkgutil, sys\n"
              f"sys.path[:0] = [{str(target)!r}]\n"
              f"sys.path.append({purelib!r})\n"
              f"pkgutil.resolve_name({start[0]!r})()\n"
              "import hndesc_features.hloc.hook as h\n"
              "print('FROM', h.__file__)\n"
              "print('HOOK', h.installed())\n")
    p = run_py(["-S", "-c", pep829], cwd=tmp_path)
    assert f"FROM {target}" in p.stdout and "HOOK True" in p.stdout, p.stdout + p.stderr
    p = run_py(["-S", "-c", pep829], cwd=tmp_path, env_extra={"HNDESC_NO_HLOC_HOOK": "1"})
    assert "HOOK False" in p.stdout, p.stdout + p.stderr


@pytest.mark.heavy(8)
def test_wheel_install_trains_a_shipped_config_by_name(wheel_install, tmp_path):
    """Installed from a built wheel (not editable), `python -m hndesc_features.training.train NAME`
    finds the config inside the wheel, trains and exports."""
    from conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip(f"real training photos not found at {SHARED}")
    _, target = wheel_install
    purelib = sysconfig.get_paths()["purelib"]
    run_dir = tmp_path / "run"
    code = ("import site, sys, runpy\n"
            f"site.addsitedir({str(target)!r})\n"
            f"sys.path.append({purelib!r})\n"
            "import hndesc_features.training.config as c\n"
            "print('CONFS', c.confs_dir())\n"
            "sys.argv = ['train', 'residual_sift', '--output', " + repr(str(run_dir)) + ",\n"
            "            'train.steps=2', 'train.batch_size=2', 'train.num_workers=0', 'train.val_every=2',\n"
            "            'train.checkpoint_every=2', 'train.val_at_start=false', 'val.n_pairs=1', 'val.max_keypoints=128']\n"
            "runpy.run_module('hndesc_features.training.train', run_name='__main__')\n")
    env = {"HNDESC_SHARED_DATA": str(SHARED), "HNDESC_WALLPAPERS": str(SHARED / "photos")}
    p = run_py(["-S", "-c", code], cwd=tmp_path, env_extra=env, check=False)
    assert f"CONFS {target}" in p.stdout, p.stdout + p.stderr
    assert p.returncode == 0 and "residual_sift: finished" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]
    import torch

    exported = run_dir / "residual_sift.pt"
    obj = torch.load(exported, weights_only=True)
    assert obj["arch"] == "residual" and obj["meta"]["step"] == 2
