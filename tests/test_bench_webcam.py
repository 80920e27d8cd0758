"""benchmarks.webcam on the real TILDE webcam images (../shared/data/webcam): pair sampling, the
identity / homography ground truth, outputs and clean errors. Small: 3 images at 352 px, 1024 kp."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from benchmarks import webcam as W
from conftest import run_py

ROOT = Path(__file__).resolve().parents[1]
# three chamonix images with different light (sun / overcast), hours 07:15, 12:15 and 17:46
NAMES = ("20130502_071500.png", "20130524_121500.png", "20130602_174600.png")


@pytest.fixture(scope="module")
def webcam(shared_data) -> Path:
    d = shared_data / "webcam"
    if not (d / "chamonix").is_dir():
        pytest.skip(f"webcam data not found at {d}")
    return d


def small_scene(src: Path, dst: Path, shift: int = 0) -> Path:
    """dst/chamonix: NAMES resized to 352 px wide; image k moved k·`shift` px right (GT broken)."""
    d = dst / "chamonix"
    d.mkdir(parents=True)
    for k, n in enumerate(NAMES):
        img = cv2.imread(str(src / "chamonix" / n))
        img = cv2.resize(img, (352, round(352 * img.shape[0] / img.shape[1])), interpolation=cv2.INTER_AREA)
        if k and shift:
            img = cv2.warpAffine(img, np.float32([[1, 0, k * shift], [0, 1, 0]]), img.shape[1::-1],
                                 borderMode=cv2.BORDER_REFLECT)
        cv2.imwrite(str(d / n), img)
    return dst


@pytest.fixture(scope="module")
def small_conf(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("conf") / "rootsift1k.yaml"
    p.write_text(yaml.safe_dump({"output": "feats-rootsift1k", "model": {
        "name": "hf_sift", "root": True, "max_keypoints": 1024, "contrast_threshold": 0.005},
        "preprocessing": {"grayscale": True, "resize_max": 1024}}))
    return p


def test_pairs_are_deterministic_stratified_and_split(webcam):
    a = W.scene_pairs(webcam, "chamonix", 30, seed=0)
    assert a == W.scene_pairs(webcam, "chamonix", 30, seed=0)
    assert a != W.scene_pairs(webcam, "chamonix", 30, seed=1)
    assert len(a) == 30 and len({(p["image0"], p["image1"]) for p in a}) == 30
    assert {p["bin"] for p in a} == {"0-2h", "2-5h", "5-12h"}
    assert all(sum(p["bin"] == b for p in a) == 10 for b in ("0-2h", "2-5h", "5-12h"))
    for p in a:
        assert p["split"] == "dev" and p["image0"] != p["image1"] and p["image0"].startswith("chamonix/")
        assert W.hour_bin(p["hour_gap"]) == p["bin"] and 0 <= p["hour_gap"] <= 12
    assert W.scene_split("courbevoie") == W.scene_split("frankfurt") == "train"
    # frankfurt has real nights (mean grey ~52 vs ~150): they are labelled
    f = W.scene_pairs(webcam, "frankfurt", 60, seed=0)
    assert {"day-day", "day-night"} <= {p["light"] for p in f}
    assert W.time_of_day("x/20130502_071500.png") == pytest.approx(7.25)
    assert W.hour_gap(23.5, 0.5) == pytest.approx(1.0)


def test_identity_gt_and_shift_breaks_it(webcam, small_conf, tmp_path):
    res = {}
    for shift in (0, 4):
        data = small_scene(webcam, tmp_path / f"d{shift}", shift)
        out = tmp_path / f"r{shift}.json"
        res[shift] = W.main(["--conf", str(small_conf), "--data", str(data), "--scenes", "chamonix",
                             "--pairs_per_scene", "3", "--output", str(out)])["results"][str(small_conf)]["summary"]
        if shift == 0:
            saved = json.loads(out.read_text())
            assert saved["meta"]["splits"] == {"chamonix": "dev"}
            assert len(saved["results"][str(small_conf)]["pairs"]) == 3
            assert out.with_suffix(".md").read_text().count("| dev |") == 1
            assert out.with_name("r0_mma.png").stat().st_size > 10_000
    ok, shifted = res[0]["dev"], res[4]["dev"]
    assert ok == res[0]["scenes"]["chamonix"] and ok["pairs"] == 3
    mma = np.array(ok["mma"])
    assert np.all(np.diff(mma) >= 0) and mma[0] > 0.2 and mma[2] > 0.25  # real day-to-day changes
    assert ok["correct"] > 100 and ok["matches"] > ok["correct"]
    # verified: the correct matches that survive RANSAC; on these day-to-day pairs most of them do
    assert 0.7 * ok["correct"] < ok["verified"] <= ok["correct"]
    # second images moved by 4 px: the identity GT is now wrong, MMA@1..3 collapse, MMA@5+ stays
    assert shifted["mma"][0] < 0.2 * mma[0] and shifted["mma"][2] < 0.2 * mma[2]
    assert shifted["matches"] > 0.7 * ok["matches"]  # the features still match, at the moved place
    assert shifted["verified"] <= shifted["correct"] < 0.2 * ok["correct"]


def test_the_right_homography_is_the_gt(webcam, small_conf, tmp_path):
    data = small_scene(webcam, tmp_path / "d")
    r = W.main(["--conf", str(small_conf), "--data", str(data), "--scenes", "chamonix", "--pairs_per_scene", "2",
                "--warp", "homography", "--warp_strength", "0.3", "--output", str(tmp_path / "r.json")])["results"][str(small_conf)]
    pairs = r["pairs"]
    assert all(p["image1_warped"].startswith("chamonix/") for p in pairs)
    mma_h = np.array(r["summary"]["dev"]["mma"])
    assert mma_h[2] > 0.08
    # the same features scored against the identity: almost nothing is correct
    feats = tmp_path / "r_work" / W.slug(str(small_conf))
    plain = [{k: v for k, v in p.items() if k != "H"} for p in pairs]
    rows = W.evaluate_pairs(plain, feats / "features.h5", feats / "features-warped.h5")
    assert np.mean([x["mma"][2] for x in rows]) < 0.25 * mma_h[2]
    # and the warped images are reproducible: same seed → same homographies
    again = W.scene_pairs(data, "chamonix", 2, 0)
    W.warp_pairs(data, again, tmp_path / "w2", 0, 0.3)
    W.warp_pairs(data, plain, tmp_path / "w3", 0, 0.3)
    assert [p["H"] for p in again] == [p["H"] for p in plain]


def run_cli(*args) -> subprocess.CompletedProcess:
    return run_py(["-m", "benchmarks.webcam", *map(str, args)], cwd=ROOT, timeout=120, check=False)


def test_clean_errors(tmp_path, capsys):
    from functools import partial

    from benchmarks.common import run_cli as runner
    from conftest import run_main

    (tmp_path / "empty" / "chamonix").mkdir(parents=True)
    p = run_cli("--conf", "rootsift", "--data", str(tmp_path / "empty"), "--output", str(tmp_path / "r.json"))
    assert p.returncode == 2 and "Traceback" not in p.stderr and "holds 0 image(s)" in p.stderr
    # the other two in this process, as `python -m benchmarks.webcam` runs them (run_cli(main))
    main = partial(runner, W.main)
    p = run_main(main, ["--conf", "rootsift", "--data", str(tmp_path / "empty"), "--scenes", "nowhere",
                        "--output", str(tmp_path / "r.json")], capsys)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "does not exist" in p.stderr
    p = run_main(main, ["--conf", "no_such_conf", "--data", str(tmp_path / "empty"), "--output",
                        str(tmp_path / "r.json")], capsys)
    assert p.returncode == 2 and "Unknown feature conf 'no_such_conf'" in p.stderr


def test_help_states_the_split(capsys):
    with pytest.raises(SystemExit) as e:
        W.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "`chamonix` is the dev benchmark scene" in out and "training scenes" in out
