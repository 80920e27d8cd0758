"""benchmarks.image_retrieval (revisited Oxford/Paris protocol): the mAP maths on hand-computed
rankings, then end-to-end on a tiny dataset in the real layout (jpg/ + gnd_roxford5k.pkl) built from
real photos of three scenes (Strecha fountain-P11 and Herz-Jesus-P8, Sacré-Cœur): queries are
cropped views, positives views of the same scene, negatives the other scenes."""
from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import image_retrieval as R
from conftest import run_py
from benchmarks.common import BenchmarkError, shared_data_dir, write_pairs

ROOT = Path(__file__).resolve().parents[1]
DATA = shared_data_dir()
DEAD = "http://127.0.0.1:9"


# ----------------------------------------------------------------------------------------------
# maths
def test_compute_ap_and_map_by_hand():
    # positives at 0-based ranks 2 and 3 of 2 positives: (0 + 1/3)/4 + (1/3 + 1/2)/4 = 7/24
    assert R.compute_ap(np.array([2, 3]), 2) == pytest.approx(7 / 24)
    assert R.compute_ap(np.array([0, 1]), 2) == pytest.approx(1.0)
    assert R.compute_ap(np.array([0]), 2) == pytest.approx(0.5)  # half the positives never retrieved
    gnd = [{"ok": [5, 7], "junk": [1]}, {"ok": [0], "junk": []}, {"ok": [], "junk": [3]}]
    ranks = [[1, 9, 5, 8, 7],  # junk 1 removed → positives at 1 and 3
             [4, 0],  # positive at 1
             [0, 1, 2]]  # no positive: skipped
    m, mp, aps, prs = R.compute_map(ranks, gnd, kappas=(1, 2, 5))
    ap0 = (0 + 1 / 2) / 4 + (1 / 3 + 2 / 4) / 4  # ranks 1, 3: precision j/rank before, (j+1)/(rank+1) after
    ap1 = (0 + 1 / 2) / 2
    assert aps[0] == pytest.approx(ap0) and aps[1] == pytest.approx(ap1) and np.isnan(aps[2])
    assert m == pytest.approx((ap0 + ap1) / 2)
    # revisitop's mP@k: k' = min(k, rank of the last retrieved positive) (1-based: q0 → 2, 4; q1 → 2)
    assert prs[0].tolist() == pytest.approx([0.0, 1 / 2, 2 / 4]) and prs[1].tolist() == pytest.approx([0.0, 1 / 2, 1 / 2])
    assert mp == pytest.approx([0.0, 0.5, 0.5])
    # a ranking without any positive: AP 0, P@k 0
    m, mp, aps, _ = R.compute_map([[3, 4]], [{"ok": [1], "junk": []}])
    assert m == 0.0 and mp == [0.0, 0.0, 0.0]


def test_setups_follow_the_revisited_protocol():
    g = [{"easy": [1, 2], "hard": [3], "junk": [4], "bbx": [0, 0, 1, 1]}]
    assert R.setup_gnd(g, "easy") == [{"ok": [1, 2], "junk": [4, 3]}]
    assert R.setup_gnd(g, "medium") == [{"ok": [1, 2, 3], "junk": [4]}]
    assert R.setup_gnd(g, "hard") == [{"ok": [3], "junk": [4, 1, 2]}]


# ----------------------------------------------------------------------------------------------
# tiny dataset in the real layout
DB = {"fountain": ("fountain-P11", ["0003", "0004", "0005", "0006", "0007"]),
      "herzjesu": ("Herz-Jesus-P8", ["0002", "0003", "0004", "0005"])}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if DATA is None or not (DATA / "strecha" / "fountain-P11").is_dir() or not (DATA / "sacre_coeur").is_dir():
        pytest.skip("../shared/data (strecha, sacre_coeur) is missing")
    root = tmp_path_factory.mktemp("revisitop")
    jpg = root / "roxford5k" / "jpg"
    jpg.mkdir(parents=True)

    def put(src: Path, name: str):
        img = cv2.imread(str(src))
        s = min(1.0, 360 / max(img.shape[:2]))
        cv2.imwrite(str(jpg / f"{name}.jpg"), cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])

    imlist = []
    for prefix, (scene, ids) in DB.items():
        for i in ids:
            put(DATA / "strecha" / scene / "images" / f"{i}.jpg", f"{prefix}_{i}")
            imlist.append(f"{prefix}_{i}")
    for k, f in enumerate(sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg"))[:3]):
        put(f, f"sacre_{k}")
        imlist.append(f"sacre_{k}")
    ix = {n: i for i, n in enumerate(imlist)}
    gnd = [{"bbx": [45.0, 30.4, 315.6, 210.0], "easy": [ix["fountain_0005"], ix["fountain_0004"]],
            "hard": [ix["fountain_0006"]], "junk": [ix["fountain_0003"], ix["fountain_0007"]]},
           {"bbx": [37.6, 22.5, 300.0, 225.0], "easy": [ix["herzjesu_0003"]], "hard": [ix["herzjesu_0004"]],
            "junk": [ix["herzjesu_0002"], ix["herzjesu_0005"]]}]
    with open(root / "roxford5k" / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": ["fountain_0005", "herzjesu_0003"], "gnd": gnd}, f)
    from benchmarks.tiny_datasets import small_conf_yaml

    conf = small_conf_yaml(root / "sift1k.yaml", max_keypoints=1024)
    return {"data": root, "conf": conf, "imlist": imlist}


def test_layout_and_query_crops(tiny, tmp_path):
    lay = R.find_layout(tiny["data"], "roxford5k")
    assert lay["db"] == [f"{n}.jpg" for n in tiny["imlist"]] and lay["queries"] == ["fountain_0005", "herzjesu_0003"]
    root, names = R.crop_queries(lay, tmp_path / "crops")
    assert names == ["query/fountain_0005.png", "query/herzjesu_0003.png"]
    full = cv2.imread(str(lay["images"] / "fountain_0005.jpg"))
    crop = cv2.imread(str(root / names[0]))
    # bbx [45, 30.4, 315.6, 210] rounded as PIL does: columns 45..316, rows 30..210, pixels unchanged (PNG)
    assert crop.shape == (180, 271, 3) and np.array_equal(crop, full[30:210, 45:316])
    with pytest.raises(BenchmarkError, match="Unknown dataset"):
        R.find_layout(tiny["data"], "oxford")
    with pytest.raises(BenchmarkError, match="gnd_rparis6k.pkl"):
        R.find_layout(tiny["data"], "rparis6k")


def test_precomputed_shortlist_reranked_by_inliers_hand_computed_map(tiny, tmp_path):
    """Shortlist in a bad order: negatives (other scenes) first. Its mAP is hand-computed; re-ranking
    by inliers must put the same-scene views first, which gives the second hand-computed mAP."""
    short = write_pairs(tmp_path / "short.txt", [
        ("fountain_0005", "herzjesu_0002"), ("fountain_0005", "sacre_0"), ("fountain_0005", "fountain_0004"),
        ("fountain_0005", "fountain_0003"), ("fountain_0005", "fountain_0006"),
        ("query/herzjesu_0003.png", "herzjesu_0003.jpg"), ("herzjesu_0003", "herzjesu_0004")])
    out = tmp_path / "out"
    res = R.main(list(map(str, ["--dataset", "roxford5k", "--data", tiny["data"], "--conf", tiny["conf"],
                                "--shortlist", short, "--outputs", out, "--output", tmp_path / "R.json"])))
    assert json.loads((tmp_path / "R.json").read_text())["map"] == pytest.approx(res["map"])
    # shortlist order. q0: Easy [h2 s0 f4] → AP 1/12; Medium [h2 s0 f4 f6] → 7/36; Hard [h2 s0 f6] → 1/6.
    # q1: positives first → 1 in every setup (f5 of q0 is not in its shortlist: missed).
    g = res["global_results"]
    assert g["map"]["easy"] == pytest.approx(100 * (1 / 12 + 1) / 2)
    assert g["map"]["medium"] == pytest.approx(100 * (7 / 36 + 1) / 2)
    assert g["map"]["hard"] == pytest.approx(100 * (1 / 6 + 1) / 2)
    assert g["mp"]["medium"] == pytest.approx([50.0, 75.0, 75.0])
    # re-ranked: q0 Easy [f4 …] → 1/2 (f5 missed); Medium f4, f6 first → 2/3; Hard → 1
    assert res["reranked"] and res["map"]["easy"] == pytest.approx(75.0)
    assert res["map"]["medium"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert res["map"]["hard"] == pytest.approx(100.0)
    q0 = res["per_query"]["fountain_0005"]
    inl = dict(zip(q0["top"], q0["inliers"]))
    assert min(inl["fountain_0004.jpg"], inl["fountain_0006.jpg"]) > 3 * max(inl["herzjesu_0002.jpg"], inl["sacre_0.jpg"], 5)
    # the runner's JSON feeds benchmarks.report's retrieval table
    from benchmarks import report

    body = report.main(["--retrieval", str(tmp_path / "R.json")])
    assert f"| sift1k (top 100 of short) | {res['map']['medium']:.1f} | 100.0 | – | – |" in body
    # resumable: a second run reuses features and matches and gives the same numbers
    res2 = R.main(list(map(str, ["--dataset", "roxford5k", "--data", tiny["data"], "--conf", tiny["conf"],
                                 "--shortlist", short, "--outputs", out, "--output", tmp_path / "R2.json"])))
    assert res2["map"] == res["map"]
    bad = write_pairs(tmp_path / "bad.txt", [("fountain_0005", "nowhere_1")])
    with pytest.raises(BenchmarkError, match="nowhere_1"):
        R.main(list(map(str, ["--data", tiny["data"], "--conf", tiny["conf"], "--shortlist", bad,
                              "--outputs", out])))


@pytest.mark.heavy(15)
def test_global_shortlist_with_our_netvlad_then_rerank(tiny, tmp_path, monkeypatch):
    """Global descriptors from hf_netvlad (a random struct file in hloc's cache): every database image
    is in the top 100, so re-ranking orders the whole database: every positive beats the other scenes."""
    from hndesc_features.models.netvlad import write_random_struct

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    write_random_struct(tmp_path / "th" / "hub" / "netvlad" / "VGG16-NetVLAD-Pitts30K.mat", whiten_dim=64)
    out = tmp_path / "out"
    res = R.main(list(map(str, ["--data", tiny["data"], "--conf", tiny["conf"], "--global", "hf_netvlad",
                                "--outputs", out])))
    assert res["global"] == "hf_netvlad" and res["num_db"] == 12 and res["num_queries"] == 2
    assert res["map"] == {"easy": pytest.approx(100.0), "medium": pytest.approx(100.0), "hard": pytest.approx(100.0)}
    assert res["mp"]["medium"][0] == pytest.approx(100.0)
    assert all(0.0 <= v <= 100.0 for v in res["global_results"]["map"].values())
    import h5py

    with h5py.File(out / "global-feats-hf_netvlad.h5", "r") as f:
        assert f["query"]["fountain_0005.png"]["global_descriptor"].shape == (64,)
        assert len([k for k in f.keys() if k != "query"]) == 12
    assert (out / "results_sift1k_NN-mutual.json").exists()
    # the global ranking alone (no --conf) from the same descriptor file
    g = R.main(list(map(str, ["--data", tiny["data"], "--global_features", out / "global-feats-hf_netvlad.h5",
                              "--outputs", out])))
    assert not g["reranked"] and g["map"] == pytest.approx(res["global_results"]["map"])


def _cli(*args, env=None):
    return run_py(["-m", "benchmarks.image_retrieval", *map(str, args)], env_extra=env, cwd=ROOT, timeout=300,
                  check=False)


def test_empty_folder_is_a_clean_error(tmp_path):
    (tmp_path / "empty").mkdir()
    p = _cli("--dataset", "roxford5k", "--data", tmp_path / "empty", "--conf", "rootsift", "--outputs", tmp_path / "o")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "gnd_roxford5k.pkl" in p.stderr and "jpg/" in p.stderr and "--download" in p.stderr
    assert "revisitop" in p.stderr


def test_download_flattens_the_paris_archives(server, tiny, tmp_path):
    """rparis6k's archives nest paris/<landmark>/*.jpg: the download flattens them into jpg/; a
    missing first URL falls back to the next alternative."""
    www, url = server
    src = tiny["data"] / "roxford5k" / "jpg"
    names = sorted(p.stem for p in src.glob("*.jpg"))
    for k, part in enumerate((names[:6], names[6:])):
        with tarfile.open(www / f"paris_{k + 1}.tgz", "w:gz") as t:
            for n in part:
                t.add(src / f"{n}.jpg", arcname=f"paris/{n.split('_')[0]}/{n}.jpg")
    gnd = pickle.loads((tiny["data"] / "roxford5k" / "gnd_roxford5k.pkl").read_bytes())
    (www / "gnd_rparis6k.pkl").write_bytes(pickle.dumps(gnd))
    urls = [[f"{url}/missing_{k + 1}.tgz", f"{url}/paris_{k + 1}.tgz"] for k in range(2)]
    root = R.download(tmp_path / "ds", "rparis6k", image_urls=urls, gnd_url=f"{url}/gnd_rparis6k.pkl")
    assert sorted(p.stem for p in (root / "jpg").glob("*.jpg")) == names
    lay = R.find_layout(tmp_path / "ds", "rparis6k")
    assert len(lay["db"]) == 12


def test_download_offline_is_a_clean_error(tmp_path):
    env = {"http_proxy": DEAD, "https_proxy": DEAD, "HTTP_PROXY": DEAD, "HTTPS_PROXY": DEAD, "no_proxy": "",
           "NO_PROXY": ""}
    p = _cli("--dataset", "rparis6k", "--download", tmp_path / "ds", env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "Could not download" in p.stderr and "gnd_rparis6k.pkl" in p.stderr
