"""benchmarks.tokyo247 end-to-end on a tiny dataset in the Tokyo 24/7 layout: two real places
1 km apart (Sacré-Cœur, Sceaux castle photos) with fake UTM coordinates, a dbStruct .mat as in
the NetVLAD release, and the Sacré-Cœur night photo as a query."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import BenchmarkError, hloc_available, shared_data_dir, write_pairs
from conftest import run_py

ROOT = Path(__file__).resolve().parents[1]
DATA = shared_data_dir()
pytestmark = [
    pytest.mark.skipif(not hloc_available(), reason="hloc is not importable (clone cvg/Hierarchical-Localization "
                                                    "and `pip install --no-deps -e` it)"),
    pytest.mark.skipif(DATA is None or not (DATA / "sceaux_castle").is_dir() or not (DATA / "sacre_coeur").is_dir(),
                       reason="../shared/data (sacre_coeur, sceaux_castle) is missing"),
]


@pytest.fixture(scope="module")
def tokyo(tmp_path_factory):
    from benchmarks.tiny_datasets import make_tiny_tokyo, small_conf_yaml

    d = tmp_path_factory.mktemp("tokyo")
    info = make_tiny_tokyo(d / "ds", DATA, max_size=480, per_place_db=5)
    return {"d": d, "conf": small_conf_yaml(d / "sift1k.yaml", 1024), **info}


def test_db_struct_roundtrip(tokyo):
    from benchmarks.tokyo247 import find_layout

    lay = find_layout(tokyo["d"] / "ds")
    assert lay["db"] == tokyo["db"] and lay["queries"] == tokyo["queries"]
    np.testing.assert_allclose(lay["utm_db"], tokyo["utm_db"])
    np.testing.assert_allclose(lay["utm_q"], tokyo["utm_q"])
    assert all(n.startswith("database_gsv_vga/") and n.endswith(".png") for n in lay["db_names"])
    assert lay["pos_dist_thr"] == 25


def test_tokyo_rerank_end_to_end(tokyo):
    from benchmarks import tokyo247
    from benchmarks.tokyo247 import find_layout

    ds = tokyo["d"] / "ds"
    lay = find_layout(ds)
    # offline shortlist: every db image, in an order that puts the wrong place first
    pairs = []
    for q, uq in zip(lay["q_names"], lay["utm_q"]):
        far = [d for d, u in zip(lay["db_names"], lay["utm_db"]) if np.linalg.norm(u - uq) > 25]
        near = [d for d, u in zip(lay["db_names"], lay["utm_db"]) if np.linalg.norm(u - uq) <= 25]
        pairs += [(q, d) for d in far + near]
    pfile = write_pairs(tokyo["d"] / "shortlist.txt", pairs)
    out = tokyo["d"] / "R.json"
    res = tokyo247.main(list(map(str, ["--dataset", ds, "--outputs", tokyo["d"] / "out", "--conf", tokyo["conf"],
                                       "--pairs", pfile, "--output", out])))
    data = json.loads(out.read_text())
    assert data["recall"] == res["recall"] and data["N"] == [1, 5, 10]
    assert data["recall_shortlist"][0] == 0.0  # the given order is wrong on purpose
    assert data["recall"][0] >= 60.0  # inlier re-ranking recovers the right place for most queries
    for q, uq in zip(lay["q_names"][:2], lay["utm_q"][:2]):  # the day photos (the third query is at night)
        top = data["per_query"][q]["top"][0]
        assert np.linalg.norm(dict(zip(lay["db_names"], lay["utm_db"]))[top] - uq) <= 25, (q, top)
    for q, r in data["per_query"].items():
        assert r["inliers"] == sorted(r["inliers"], reverse=True)
    assert data["num_queries"] == len(tokyo["queries"])


def test_count_inliers_on_exact_epipolar_geometry():
    from benchmarks.tokyo247 import count_inliers

    rng = np.random.default_rng(0)
    X = rng.uniform([-2, -2, 4], [2, 2, 8], size=(80, 3))
    K = np.array([[500, 0, 320], [0, 500, 240], [0, 0, 1.0]])
    R = np.array([[np.cos(0.1), 0, np.sin(0.1)], [0, 1, 0], [-np.sin(0.1), 0, np.cos(0.1)]])
    x0 = (X @ K.T)[:, :2] / X[:, 2:]
    X1 = X @ R.T + np.array([0.5, 0, 0])
    x1 = (X1 @ K.T)[:, :2] / X1[:, 2:]
    outl = rng.uniform([0, 0], [640, 480], size=(20, 2))
    n = count_inliers(np.vstack([x0, outl]), np.vstack([x1, rng.permutation(outl)]), (640, 480), (640, 480))
    assert 80 <= n <= 90
    assert count_inliers(x0[:5], x1[:5], (640, 480), (640, 480)) == 0


def test_missing_images_are_named(tokyo, tmp_path):
    import shutil

    from benchmarks.tokyo247 import find_layout

    ds = tmp_path / "ds"
    shutil.copytree(tokyo["d"] / "ds", ds)
    shutil.rmtree(ds / "247query_subset_v2")
    with pytest.raises(BenchmarkError, match="247query_subset_v2"):
        find_layout(ds)
    p = run_py(["-m", "benchmarks.tokyo247", "--dataset", str(tmp_path / "none"), "--conf", str(tokyo["conf"])],
               cwd=ROOT, timeout=120, check=False)
    assert p.returncode == 2 and "tokyo247.mat" not in p.stdout and "does not exist" in p.stderr
    assert "Traceback" not in p.stderr
