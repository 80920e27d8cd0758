"""Localization runners end-to-end on tiny datasets in the real layouts, built from the Strecha
Herz-Jesus-P8 photos with their metric GT cameras (so the poses can be checked), plus the clear
error paths: missing dataset parts, missing hloc, torchvision / NetVLAD weights unavailable."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.common import BenchmarkError, hloc_available, shared_data_dir
from conftest import run_py

ROOT = Path(__file__).resolve().parents[1]
DATA = shared_data_dir()
SCENE = DATA / "strecha" / "Herz-Jesus-P8" if DATA else None

pytestmark = [
    pytest.mark.skipif(not hloc_available(), reason="hloc is not importable (clone cvg/Hierarchical-Localization "
                                                    "and `pip install --no-deps -e` it)"),
    pytest.mark.skipif(SCENE is None or not SCENE.is_dir(), reason="../shared/data/strecha/Herz-Jesus-P8 is missing"),
]


def _cli(module: str, *args, env=None, timeout=300):
    return run_py(["-m", module, *map(str, args)], env_extra=env, cwd=ROOT, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def conf(tmp_path_factory):
    from benchmarks.tiny_datasets import small_conf_yaml

    return small_conf_yaml(tmp_path_factory.mktemp("conf") / "sift1k.yaml", max_keypoints=1024)


def test_localization_gt_day(conf, tmp_path):
    from benchmarks import localization_gt
    from benchmarks.loc_utils import read_poses, read_strecha_scene

    out = tmp_path / "R.json"
    res = localization_gt.main(list(map(str, ["--scene", SCENE, "--conf", conf, "--output", out, "--resize_max",
                                              "480", "--queries", "0002.jpg,0005.jpg"])))
    data = json.loads(out.read_text())
    assert data["recall"] == res["recall"] and len(data["recall"]) == 3
    assert data["num_queries"] == 2 and data["num_db"] == 6 and data["num_points3D"] > 100
    assert data["recall"][0] <= data["recall"][1] <= data["recall"][2]
    assert data["recall"][1] >= 50.0  # at least one of two day queries within (0.5 m, 5°)
    # independent check of the errors: camera centres from the poses file vs the GT files
    scene = read_strecha_scene(SCENE)
    poses = read_poses(Path(data["results_file"]))
    for q, e in data["per_query"].items():
        if e.get("failed"):
            continue
        R, t = poses[q.split("/")[-1]]
        gt = scene[q.split("/")[-1]][1]
        assert abs(np.linalg.norm(-R.T @ t - gt.C) - e["error_m"]) < 1e-6
        rvec = cv2.Rodrigues(R @ gt.R)[0]  # R_est · R_gt_c2w = R_est · (R_gt_cw)^T
        assert abs(np.rad2deg(np.linalg.norm(rvec)) - e["error_deg"]) < 1e-4
    assert data["sfm"]["mean_reprojection_error"] < 2.0


def test_night_rendering_is_deterministic_and_dark(tmp_path):
    from benchmarks.localization_gt import prepare_images, split_scene
    from benchmarks.loc_utils import read_strecha_scene

    scene = read_strecha_scene(SCENE)
    db, qs = split_scene(list(scene), queries=["0002.jpg"])
    day = prepare_images(scene, db[:1], qs, tmp_path / "day", 320, night=False)
    n1 = prepare_images(scene, db[:1], qs, tmp_path / "n1", 320, night=True, seed=0)
    prepare_images(scene, db[:1], qs, tmp_path / "n2", 320, night=True, seed=0)
    prepare_images(scene, db[:1], qs, tmp_path / "n3", 320, night=True, seed=1)
    a = cv2.imread(str(tmp_path / "day" / "query" / "0002.jpg")).astype(float)
    b = cv2.imread(str(tmp_path / "n1" / "query" / "0002.jpg")).astype(float)
    assert (tmp_path / "n1/query/0002.jpg").read_bytes() == (tmp_path / "n2/query/0002.jpg").read_bytes()
    assert (tmp_path / "n1/query/0002.jpg").read_bytes() != (tmp_path / "n3/query/0002.jpg").read_bytes()
    assert b.mean() < 0.5 * a.mean()  # low light
    assert b[..., 2].mean() > b[..., 0].mean()  # warm (sodium-lamp) cast: more red than blue
    assert (tmp_path / "n1/db/0000.jpg").read_bytes() == (tmp_path / "day/db/0000.jpg").read_bytes()
    assert day["query/0002.jpg"].width == 320 and n1["query/0002.jpg"].K[0, 0] == day["query/0002.jpg"].K[0, 0]


def test_tiny_map_images_are_checked(tmp_path):
    """A chosen map must be scene images that are not queries (checked before any file is written)."""
    from benchmarks.tiny_datasets import make_tiny_aachen, make_tiny_inloc

    with pytest.raises(BenchmarkError, match="0002.jpg"):
        make_tiny_aachen(tmp_path / "a", SCENE, day=("0002.jpg",), night=(), db=("0001.jpg", "0002.jpg"))
    with pytest.raises(BenchmarkError, match="9999.jpg"):
        make_tiny_inloc(tmp_path / "i", SCENE, queries=("0002.jpg",), db=("0001.jpg", "9999.jpg"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "i").exists()


@pytest.fixture(scope="module")
def aachen(conf, tmp_path_factory):
    from benchmarks.tiny_datasets import make_tiny_aachen

    d = tmp_path_factory.mktemp("aachen")
    return make_tiny_aachen(d / "ds", SCENE, day=("0002.jpg", "0005.jpg"), night=("0003.jpg",), max_size=360,
                            map_conf=str(conf))


def test_aachen_runner_end_to_end_with_pairs(aachen, conf, tmp_path):
    from benchmarks import aachen_v1_1

    out = tmp_path / "out"
    args = ["--dataset", aachen["dataset"], "--outputs", out, "--conf", conf, "--pairs", aachen["pairs"],
            "--gt", aachen["gt"]]
    summary = aachen_v1_1.main(list(map(str, args)))
    sub = Path(summary["submission_file"])
    lines = sub.read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        parts = line.split()
        assert len(parts) == 8 and "/" not in parts[0]  # basename + qvec + tvec, as the server expects
        assert abs(np.linalg.norm([float(v) for v in parts[1:5]]) - 1) < 1e-6
    ev = summary["local_evaluation"]
    assert set(ev) == {"day", "night"} and ev["day"]["num_queries"] == 2
    assert ev["day"]["recall"][1] >= 50.0
    assert (out / f"pairs-db-covis20.txt").exists()
    # resumable: a second run reuses every step and gives the same poses
    summary2 = aachen_v1_1.main(list(map(str, args)))
    assert Path(summary2["submission_file"]).read_text() == sub.read_text()


def _offline_no_torchvision_env(tmp_path, torch_home):
    """torchvision made unimportable (as on our CPU stacks), proxies to a closed port (no network)."""
    block = tmp_path / "block" / "torchvision"
    block.mkdir(parents=True, exist_ok=True)
    (block / "__init__.py").write_text("raise ImportError('torchvision is blocked in this test')\n")
    dead = "http://127.0.0.1:9"
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), os.environ.get("PYTHONPATH", "")]),
            "TORCH_HOME": str(torch_home), "https_proxy": dead, "http_proxy": dead, "HTTPS_PROXY": dead,
            "HTTP_PROXY": dead}


def test_aachen_offline_retrieval_and_missing_parts_are_clear_errors(aachen, conf, tmp_path):
    # no torchvision: the runner falls back to our hf_netvlad, whose weights are not cached and cannot
    # be downloaded: one message naming the fallback, where to put the weights, and --pairs
    p = _cli("benchmarks.aachen_v1_1", "--dataset", aachen["dataset"], "--outputs", tmp_path / "o",
             "--conf", conf, env=_offline_no_torchvision_env(tmp_path, tmp_path / "th"))
    assert p.returncode == 2, p.stderr[-2000:]
    assert "torchvision" in p.stderr and "hf_netvlad" in p.stderr and "--pairs" in p.stderr
    assert "NetVLAD weights" in p.stderr and "Could not download" in p.stderr and "Traceback" not in p.stderr
    assert str(tmp_path / "th" / "hub" / "netvlad" / "VGG16-NetVLAD-Pitts30K.mat") in p.stderr
    # a dataset without its SIFT model and queries
    bad = tmp_path / "bad"
    (bad / "images_upright" / "db").mkdir(parents=True)
    p = _cli("benchmarks.aachen_v1_1", "--dataset", bad, "--outputs", tmp_path / "o2", "--conf", conf)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "images_upright/query" in p.stderr and "3D-models/aachen_v_1_1" in p.stderr
    assert "queries/" in p.stderr and "visuallocalization.net" in p.stderr


def test_netvlad_weights_missing_offline_is_a_clear_error(aachen, conf, tmp_path):
    """torchvision cannot run here, so a stand-in package (import only) lets hloc's NetVLAD module
    import; the weights are not cached and the download fails (no network): clear message."""
    stub = tmp_path / "stub" / "torchvision"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("from . import models\n")
    (stub / "models.py").write_text("def vgg16(*a, **k):\n    raise RuntimeError('stand-in torchvision')\n")
    env = {"PYTHONPATH": f"{tmp_path / 'stub'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TORCH_HOME": str(tmp_path / "torch_home"), "https_proxy": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    p = _cli("benchmarks.aachen_v1_1", "--dataset", aachen["dataset"], "--outputs", tmp_path / "o", "--conf", conf,
             env=env)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "NetVLAD weights" in p.stderr and "Could not download" in p.stderr and "--pairs" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.heavy(10)
def test_aachen_without_torchvision_retrieves_with_our_netvlad(aachen, conf, tmp_path):
    """No torchvision, NetVLAD weights in hloc's cache (a random struct file in the released layout):
    retrieval runs with our hf_netvlad and the queries are localized."""
    from hndesc_features.models.netvlad import write_random_struct

    write_random_struct(tmp_path / "th" / "hub" / "netvlad" / "VGG16-NetVLAD-Pitts30K.mat", whiten_dim=64)
    out = tmp_path / "out"
    p = _cli("benchmarks.aachen_v1_1", "--dataset", aachen["dataset"], "--outputs", out, "--conf", conf,
             "--gt", aachen["gt"], env=_offline_no_torchvision_env(tmp_path, tmp_path / "th"), timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "using our NetVLAD conf 'hf_netvlad'" in p.stderr
    summary = json.loads(next(out.glob("summary_*.json")).read_text())
    assert summary["retrieval"] == "hf_netvlad" and Path(summary["pairs"]).name == "pairs-query-hf_netvlad50.txt"
    pairs = [l.split() for l in Path(summary["pairs"]).read_text().splitlines()]
    queries = {q for q, _ in pairs}
    assert len(queries) == 3 and len(pairs) == 3 * 5  # top-50 of the 5 map images
    import h5py

    with h5py.File(out / "global-feats-hf_netvlad.h5", "r") as f:
        assert all(f[q]["global_descriptor"].shape == (64,) for q in queries)
    assert len(Path(summary["submission_file"]).read_text().splitlines()) == 3
    assert summary["local_evaluation"]["day"]["recall"][2] >= 50.0


def test_inloc_runner_end_to_end_with_pairs(conf, tmp_path):
    from benchmarks import inloc
    from benchmarks.tiny_datasets import make_tiny_inloc
    from scipy.io import loadmat

    ds = make_tiny_inloc(tmp_path / "ds", SCENE, queries=("0002.jpg", "0005.jpg"), max_size=480,
                         map_conf=str(conf))
    m = loadmat(str(tmp_path / "ds" / (ds["db"][0] + ".mat")))["XYZcut"]
    img = cv2.imread(str(tmp_path / "ds" / ds["db"][0]))
    assert m.shape == img.shape and m.dtype == np.float64 and 0.2 < np.isfinite(m[..., 0]).mean() < 1
    summary = inloc.main(list(map(str, ["--dataset", tmp_path / "ds", "--outputs", tmp_path / "out", "--conf", conf,
                                        "--pairs", ds["pairs"], "--gt", ds["gt"]])))
    lines = Path(summary["submission_file"]).read_text().splitlines()
    assert sorted(l.split()[0] for l in lines) == ["IMG_0001.JPG", "IMG_0002.JPG"]
    assert summary["local_evaluation"]["recall"][2] >= 50.0  # (1 m, 10°)
    # missing depth files are named
    (tmp_path / "ds" / (ds["db"][0] + ".mat")).unlink()
    with pytest.raises(BenchmarkError, match=r"\.jpg\.mat"):
        inloc.find_layout(tmp_path / "ds")


def test_missing_hloc_is_a_clear_error(conf, tmp_path):
    code = ("import sys; sys.modules['hloc'] = None\n"
            "from benchmarks.common import run_cli\n"
            "from benchmarks import localization_gt\n"
            f"run_cli(localization_gt.main, ['--scene', {str(SCENE)!r}, '--conf', {str(conf)!r}, "
            f"'--output', {str(tmp_path / 'R.json')!r}])\n")
    p = run_py(["-c", code], cwd=ROOT, timeout=120, check=False)
    assert p.returncode == 2 and "needs hloc" in p.stderr and "Traceback" not in p.stderr
