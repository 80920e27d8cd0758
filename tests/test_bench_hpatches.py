"""benchmarks.hpatches / make_dev_hpatches on real held-out photos.

The MMA of benchmarks.hpatches is checked against an independent computation (OpenCV brute-force
cross-check matcher + cv2.perspectiveTransform) on the very .h5 features the benchmark wrote."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from benchmarks import hpatches as hp
from hndesc_features.geometry import warp_points
from benchmarks.common import BenchmarkError, available_confs
from benchmarks.make_dev_hpatches import heldout_sources, make_dev_hpatches
from conftest import run_py

ROOT = Path(__file__).resolve().parents[1]


def _conf() -> str:
    avail = available_confs("feature")
    for name in ("rootsift", "sift"):
        if name in avail:
            return name
    pytest.skip("no SIFT conf (ours or hloc's) is available")


@pytest.fixture(scope="module")
def dev_set(tmp_path_factory):
    srcs = heldout_sources()
    if not srcs:
        pytest.skip("no held-out photos: ../shared/data and skimage are both missing")
    root = tmp_path_factory.mktemp("devhp")
    src = sorted(srcs, key=lambda p: p.name)[:1]
    seqs = make_dev_hpatches(root / "a", images=src, seed=3, max_size=320)
    return {"root": root / "a", "seqs": seqs, "src": src, "tmp": root}


@pytest.fixture(scope="module")
def bench(dev_set):
    conf = _conf()
    out = dev_set["tmp"] / "res" / "R.json"
    res = hp.main(["--dataset_dir", str(dev_set["root"]), "--conf", conf, "--output", str(out)])
    return {"conf": conf, "out": out, "res": res, **dev_set}


def test_dev_hpatches_layout_determinism_and_geometry(dev_set, tmp_path):
    root, seqs = dev_set["root"], dev_set["seqs"]
    assert sorted(seqs) == sorted(hp.list_sequences(root))
    assert {s[0] for s in seqs} == {"i", "v"}
    # same seed → same bytes; another seed → other homographies
    again = make_dev_hpatches(tmp_path / "b", images=dev_set["src"], seed=3, max_size=320)
    other = make_dev_hpatches(tmp_path / "c", images=dev_set["src"], seed=4, max_size=320)
    for s in seqs:
        for f in sorted(p.name for p in (root / s).iterdir()):
            assert (root / s / f).read_bytes() == (tmp_path / "b" / s / f).read_bytes(), (s, f)
    v = [s for s in seqs if s.startswith("v_")][0]
    assert (root / v / "H_1_6").read_text() != (tmp_path / "c" / v / "H_1_6").read_text()
    assert again == seqs and other == seqs
    for s in seqs:
        ref = cv2.imread(str(root / s / "1.ppm"))
        h, w = ref.shape[:2]
        strength = []
        for k in range(2, 7):
            img = cv2.imread(str(root / s / f"{k}.ppm"))
            assert img.shape == ref.shape
            H = hp.read_homography(root / s / f"H_1_{k}")
            corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], float)
            strength.append(np.abs(warp_points(corners, H) - corners).max())
            if s.startswith("v_"):
                # the GT homography explains the target: warp 1 into k and correlate (blurred)
                warped = cv2.warpPerspective(ref, H, (w, h))
                a = cv2.GaussianBlur(cv2.cvtColor(warped, cv2.COLOR_BGR2GRAY), (0, 0), 2).astype(float)
                b = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (0, 0), 2).astype(float)
                ncc = np.corrcoef(a[8:-8, 8:-8].ravel(), b[8:-8, 8:-8].ravel())[0, 1]
                assert ncc > 0.9, (s, k, ncc)
            else:
                assert strength[-1] < 3.0  # identity-ish
        if s.startswith("v_"):
            assert strength[-1] > strength[0]  # viewpoint change grows with the index


def test_mma_matches_independent_bfmatcher_computation(bench):
    res = bench["res"][bench["conf"]]
    root = bench["root"]
    fpath = Path(res["mma_details"]["features"])
    assert fpath.exists()
    bf = cv2.BFMatcher(cv2.NORM_L2, crossCheck=True)
    per_split = {"i": [], "v": []}
    nmatch = []
    with h5py.File(fpath, "r") as fd:
        def load(name):
            g = fd[name]
            return g["keypoints"][()].astype(np.float64), np.ascontiguousarray(g["descriptors"][()].T, np.float32)
        for s in bench["seqs"]:
            kp0, d0 = load(f"{s}/1.ppm")
            for k in range(2, 7):
                kp1, d1 = load(f"{s}/{k}.ppm")
                H = np.loadtxt(root / s / f"H_1_{k}")
                ms = bf.match(d0, d1)
                nmatch.append(len(ms))
                if not ms:
                    per_split[s[0]].append(np.zeros(10))
                    continue
                i0 = np.array([m.queryIdx for m in ms])
                i1 = np.array([m.trainIdx for m in ms])
                proj = cv2.perspectiveTransform(kp0[i0][None], H)[0]
                err = np.sqrt(((proj - kp1[i1]) ** 2).sum(1))
                per_split[s[0]].append(np.array([(err <= t).mean() for t in range(1, 11)]))
    indep = {"i": np.mean(per_split["i"], 0), "v": np.mean(per_split["v"], 0),
             "all": np.mean(per_split["i"] + per_split["v"], 0)}
    for split in ("i", "v", "all"):
        ours = np.array(res["mma"][split])
        assert ours.shape == (10,)
        np.testing.assert_allclose(ours, indep[split], atol=2e-3, err_msg=split)
        assert np.all(np.diff(ours) >= -1e-12)  # MMA grows with the threshold
    assert abs(res["mma_details"]["mean_num_matches"]["all"] - np.mean(nmatch)) <= 0.01 * np.mean(nmatch) + 1
    assert indep["all"][2] > 0.3  # real matching happened on these real photos


def test_outputs_json_markdown_png(bench):
    out = bench["out"]
    data = json.loads(out.read_text())  # strict JSON
    r = data[bench["conf"]]
    assert set(r["mma"]) == {"all", "i", "v"} and len(r["mma"]["all"]) == 10
    md = out.with_suffix(".md").read_text()
    assert "MMA@1" in md and "Cor-1" in md and bench["conf"] in md
    png = out.with_name(out.stem + "_mma.png")
    assert png.exists() and cv2.imread(str(png)) is not None


def test_homography_protocol(bench):
    h = bench["res"][bench["conf"]]["homography"]
    assert set(h) == {"240x320", "480x640"}
    for key, (size, k) in hp.SP_SETTINGS.items():
        r = h[key]
        assert r["size"] == list(size) and r["max_keypoints"] == k
        a = r["all"]
        assert 0 <= a["cor1"] <= a["cor3"] <= a["cor5"] <= 1
        assert 0 < a["matching_score"] <= 1
        assert 0 < a["mean_num_keypoints"] <= k
        assert a["num_pairs"] == 5 * len(bench["seqs"])
    # the resized copies carry consistent homographies: warp image 1 into k
    rdir = bench["out"].parent / "R_work" / "resized-240x320"
    v = [s for s in bench["seqs"] if s.startswith("v_")][0]
    ref = cv2.imread(str(rdir / v / "1.png"), cv2.IMREAD_GRAYSCALE)
    tgt = cv2.imread(str(rdir / v / "3.png"), cv2.IMREAD_GRAYSCALE)
    assert ref.shape == (240, 320) and tgt.shape == (240, 320)
    warped = cv2.warpPerspective(ref, hp.read_homography(rdir / v / "H_1_3"), (320, 240))
    a, b = (cv2.GaussianBlur(x, (0, 0), 1.5).astype(float)[6:-6, 6:-6].ravel() for x in (warped, tgt))
    assert np.corrcoef(a, b)[0, 1] > 0.85


def test_homography_pair_exact_correspondences():
    rng = np.random.default_rng(0)
    h, w = 240, 320
    H = np.array([[1.05, 0.05, -8], [-0.03, 0.98, 5], [1e-4, -5e-5, 1.0]])
    kp0 = rng.uniform([20, 20], [w - 20, h - 20], size=(200, 2))
    kp1 = warp_points(kp0, H)
    desc = rng.normal(size=(200, 64)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    f0 = {"keypoints": kp0, "descriptors": desc, "scores": rng.random(200)}
    f1 = {"keypoints": kp1, "descriptors": desc.copy(), "scores": rng.random(200)}
    r = hp.homography_pair(f0, f1, H, (h, w), k=300)
    assert r["corner_error"] < 1e-3 and r["matching_score"] == pytest.approx(1.0)
    # wrong descriptors pairing → the corner error explodes and the score drops
    f1_bad = {**f1, "descriptors": desc[rng.permutation(200)]}
    bad = hp.homography_pair(f0, f1_bad, H, (h, w), k=300)
    assert bad["matching_score"] < 0.2 and not bad["corner_error"] <= 5


def test_mma_pair_and_mutual_nn():
    d0 = np.eye(4, dtype=np.float32)
    d1 = np.eye(4, dtype=np.float32)[[2, 0, 1, 3]]
    m = hp.mutual_nn(d0, d1)
    assert sorted(map(tuple, m)) == [(0, 1), (1, 2), (2, 0), (3, 3)]
    kp0 = np.array([[10.0, 10], [20, 20], [30, 30], [40, 40]])
    kp1 = kp0[[2, 0, 1, 3]] + np.array([[0.5, 0], [0, 0], [2.5, 0], [0, 9]])
    mma = hp.mma_pair(kp0, kp1, m, np.eye(3), thresholds=(1, 3, 10))
    np.testing.assert_allclose(mma, [0.5, 0.75, 1.0])
    assert hp.mma_pair(kp0, kp1, np.zeros((0, 2), int), np.eye(3)).sum() == 0


def _tiny_release(tmp_path: Path, n_i=2, n_v=1) -> Path:
    src = tmp_path / "src" / hp.HPATCHES_DIRNAME
    img = np.full((40, 50, 3), 127, np.uint8)
    for name in [f"i_s{j}" for j in range(n_i)] + [f"v_s{j}" for j in range(n_v)]:
        (src / name).mkdir(parents=True)
        for k in range(1, 7):
            cv2.imwrite(str(src / name / f"{k}.ppm"), img)
        for k in range(2, 7):
            # HPatches files use irregular spacing
            (src / name / f"H_1_{k}").write_text("1  0 0\n0 1  0\n0 0 1\n")
    tar = tmp_path / "hpatches-sequences-release.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(src, arcname=hp.HPATCHES_DIRNAME)
    return tar


def test_download_from_local_tar_with_checksum(tmp_path):
    tar = _tiny_release(tmp_path)
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()
    url = tar.as_uri()
    out = hp.download_hpatches(tmp_path / "dl", url=url, sha256=digest, full_release=False)
    assert sorted(hp.list_sequences(out)) == ["i_s0", "i_s1", "v_s0"]
    assert (tmp_path / "dl" / (tar.name + ".sha256")).read_text().startswith(digest)
    np.testing.assert_allclose(hp.read_homography(out / "v_s0" / "H_1_2"), np.eye(3))
    # already there: no second download, layout re-checked
    assert hp.download_hpatches(tmp_path / "dl", url="http://127.0.0.1:9/none.tar.gz", full_release=False) == out
    with pytest.raises(BenchmarkError, match="sha256"):
        hp.download_hpatches(tmp_path / "dl2", url=url, sha256="0" * 64, full_release=False)
    with pytest.raises(BenchmarkError, match="57"):  # a full release has 57 i_ + 59 v_ sequences
        hp.download_hpatches(tmp_path / "dl3", url=url, sha256=digest, full_release=True)


def test_download_offline_fails_cleanly(tmp_path):
    proc = run_py(["-m", "benchmarks.hpatches", "--download", str(tmp_path / "d"),
                   "--url", "http://127.0.0.1:9/hpatches-sequences-release.tar.gz"], cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2
    assert "Could not download" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "d").glob("*.part"))


def test_not_hpatches_layout_is_a_clear_error(tmp_path):
    (tmp_path / "i_x").mkdir()
    with pytest.raises(BenchmarkError, match="H_1_2"):
        hp.list_sequences(tmp_path)
    with pytest.raises(BenchmarkError, match="does not exist"):
        hp.list_sequences(tmp_path / "nope")


def test_match_errors_bins_add_up_and_agree_with_mma(bench):
    """benchmarks.experiments.match_errors on the same dev set: every match is correct or wrong in exactly one
    bin, the pooled precision agrees with the MMA protocol's matches, and real wrong matches exist."""
    from benchmarks.experiments import match_errors as me

    out = bench["tmp"] / "errs" / "E.json"
    res = me.main(["--dataset_dir", str(bench["root"]), "--conf", bench["conf"], "--max_keypoints", "4096",
                   "--output", str(out)])[bench["conf"]]
    mma = bench["res"][bench["conf"]]["mma_details"]["mean_num_matches"]
    for split in ("i", "v"):
        s = res[split]
        assert s["matches"] == pytest.approx(s["correct"] + s["wrong_no_correspondence"]
                                             + s["wrong_with_correspondence"])
        assert s["matches"] == pytest.approx(mma[split], rel=1e-6)  # the same features, the same matcher
        assert 0 < s["keypoints_with_correspondence"] and 0 < s["mma_pooled"] <= 1
    assert sum(res[s]["wrong_no_correspondence"] for s in ("i", "v")) > 0
    assert out.with_suffix(".md").read_text().count("|") > 10
    # a pair of identical feature sets: every keypoint has a correspondence and every match is right
    f = {"keypoints": np.array([[10.0, 10.0], [50.0, 40.0], [80.0, 20.0]]),
         "descriptors": np.eye(3, dtype=np.float32)}
    np.testing.assert_array_equal(me.pair_errors(f, f, np.eye(3)), [3, 3, 0, 0, 3])


def test_paper_matching_score_and_homography_by_hand():
    """The paper's matching score: plain nearest neighbours (not mutual) both ways, denominator = the
    matches landing inside the other image; its H estimation fails below 4 mutual matches."""
    e = np.eye(4, dtype=np.float32)
    kp0 = np.array([[10.0, 10], [100, 50], [300, 200], [700, 10]])  # the last one maps outside 640×480
    f0 = {"keypoints": kp0, "descriptors": e, "scores": None}
    kp1 = kp0.copy()
    kp1[1] = [500, 400]  # far from its mate
    f1 = {"keypoints": kp1, "descriptors": e[[0, 0, 2, 3]], "scores": None}
    # 0→1: kp0_0 ok, kp0_1 (no similar descriptor) → kp1_0 wrong, kp0_2 ok, kp0_3 outside: 2/3
    # 1→0: kp1_0 ok, kp1_1 → kp0_0 wrong, kp1_2 ok, kp1_3 outside: 2/3
    assert hp.paper_matching_score(f0, f1, np.eye(3), hp.PAPER_SIZE) == pytest.approx(2 / 3)
    r = hp.paper_homography_pair(f0, f1, np.eye(3), hp.PAPER_SIZE)
    assert r["num_matches"] == 2 and r["corner_error"] == float("inf")  # kp_3 is outside, 2 mutual matches
    # exact correspondences under a real homography: corner error ~ 0, every match correct
    rng = np.random.default_rng(1)
    H = np.array([[0.9, 0.05, 20], [-0.04, 1.02, 10], [5e-5, -4e-5, 1.0]])
    a = rng.uniform([40, 40], [600, 440], size=(300, 2))
    d = rng.normal(size=(300, 32)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = hp.paper_homography_pair({"keypoints": a, "descriptors": d, "scores": None},
                                 {"keypoints": warp_points(a, H), "descriptors": d, "scores": None}, H, hp.PAPER_SIZE)
    assert r["corner_error"] < 1e-3 and r["matching_score"] == pytest.approx(1.0)


def test_paper_protocol_end_to_end(dev_set):
    conf = _conf()
    out = dev_set["tmp"] / "paper" / "R.json"
    res = hp.main(["--dataset_dir", str(dev_set["root"]), "--conf", conf, "--output", str(out),
                   "--protocols", "paper"])
    p = json.loads(out.read_text())[conf]["paper"]
    assert "mma" not in json.loads(out.read_text())[conf] and p == json.loads(json.dumps(res[conf]["paper"]))
    np.testing.assert_allclose(p["mma"]["avg"], 0.5 * (np.array(p["mma"]["i"]) + np.array(p["mma"]["v"])))
    assert all(0 <= x <= y <= 1 for x, y in zip(p["mma"]["avg"], p["mma"]["avg"][1:]))
    assert p["mma"]["v"][2] > 0.3  # real matches at full resolution
    h = p["homography_640x480"]
    for split in ("i", "v", "all"):
        assert 0 <= h[split]["cor1"] <= h[split]["cor3"] <= h[split]["cor5"] <= 1
        assert 0 < h[split]["matching_score"] <= 1
    assert h["all"]["num_pairs"] == 5 * len(dev_set["seqs"]) and h["v"]["cor5"] > 0
    assert p["settings"]["max_keypoints"] == 1000 and p["settings"]["mma_max_keypoints"] == -1
    # every keypoint at full resolution; at most 1000 on the 640×480 copies (PIL bicubic, exact size)
    work = out.parent / "R_work"
    with h5py.File(work / hp.slug(conf) / "features-paper-640x480.h5") as f:
        n = [len(f[s][k]["keypoints"]) for s in f for k in f[s]]
        assert max(n) <= 1000 and min(n) > 50
    img = cv2.imread(str(work / "resized-paper-640x480" / dev_set["seqs"][0] / "2.png"))
    assert img.shape == (480, 640, 3)
    md = out.with_suffix(".md").read_text()
    assert "HNDesc paper's protocol" in md and f"| {conf} | all |" in md
    with pytest.raises(BenchmarkError, match="paper"):
        hp.main(["--dataset_dir", str(dev_set["root"]), "--conf", conf, "--output", str(out), "--protocols", "papr"])
