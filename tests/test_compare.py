"""`python -m hndesc_features.compare` on real photos: counts that agree with each other, a pair of
identical photos that RANSAC accepts almost entirely, the PNG, the errors; no hloc involved."""
from __future__ import annotations

import json
import logging
import shutil

import cv2
import numpy as np
import pytest

from conftest import run_py
from hndesc_features.compare import BAR_HEIGHT, FIG_DPI, FIG_WIDTH, PAIR_HEIGHT, cli

CONFS = ["hndesc", "rootsift", "orb"]
# two Sacré-Cœur photos of the same facade from different places, and a copy of the first
A, B = "02928139_3448003521.jpg", "03903474_1471484089.jpg"
BLOCK_HLOC = "import sys; sys.modules['hloc'] = None; from hndesc_features.compare import cli; cli()"


@pytest.fixture(scope="session")
def compared(tmp_path_factory, sacre_coeur):
    root = tmp_path_factory.mktemp("compare")
    images = root / "images"
    images.mkdir()
    for n in (A, B):
        shutil.copy(sacre_coeur / n, images / n)
    shutil.copy(sacre_coeur / A, images / "zz_copy.jpg")
    # hloc made unimportable: the command must not need it
    p = run_py(["-c", BLOCK_HLOC, "--images", str(images), "--confs", ",".join(CONFS), "--resize_max", "512",
                "--output", str(root / "out")], env_extra={"HNDESC_NO_HLOC_HOOK": "1"})
    return root, p, json.loads((root / "out" / "compare.json").read_text())


def test_counts_per_conf_and_pair(compared):
    _, _, report = compared
    assert [c["conf"] for c in report["confs"]] == CONFS
    assert report["model"] == "fundamental" and len(report["pairs"]) == 3  # exhaustive over 3 photos
    for c in report["confs"]:
        assert c["images"] == 3 and c["ms_per_image"] > 0
        for r in c["pairs"]:
            assert 0 <= r["inliers"] <= r["matches"] <= min(r["keypoints"]), (c["conf"], r)
            assert 0 <= r["inlier_ratio"] <= 1
            assert r["inlier_ratio"] == pytest.approx(r["inliers"] / max(r["matches"], 1))
        by_pair = {tuple(r["pair"]): r for r in c["pairs"]}
        same = by_pair[(A, "zz_copy.jpg")]
        assert same["inlier_ratio"] > 0.95 and same["inliers"] > 500, (c["conf"], same)
        # the two different views: far fewer matches survive, but the facade is found
        real = by_pair[(A, B)]
        assert 15 <= real["inliers"] < same["inliers"] and real["inlier_ratio"] < same["inlier_ratio"]
        assert c["inliers_per_pair"] == pytest.approx(np.mean([r["inliers"] for r in c["pairs"]]))


def test_table_and_picture(compared):
    root, p, report = compared
    head, rule, *rows = p.stdout.splitlines()[:2 + len(CONFS)]
    assert head.split()[:2] == ["conf", "keypoints/img"] and set(rule) <= {"-", " "}
    for row, c in zip(rows, report["confs"]):
        assert row.split()[0] == c["conf"] and row.split()[3] == f"{c['inliers_per_pair']:.0f}"
    png = cv2.imread(str(root / "out" / "compare.png"))
    assert png.shape[:2] == (round(FIG_DPI * (BAR_HEIGHT + PAIR_HEIGHT * len(CONFS))), FIG_DPI * FIG_WIDTH)
    assert report["drawn_pair"] == [A, B]  # the first pair in order: neighbours in sorted names
    assert png.std() > 20  # photos and bars, not a blank page


def test_homography_and_pairs_file(tmp_path, sacre_coeur, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sacre_coeur / A, images / "a.jpg")
    shutil.copy(sacre_coeur / A, images / "b.jpg")
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg\n")
    cli(["--images", str(images), "--pairs", str(tmp_path / "pairs.txt"), "--confs", "orb", "--homography",
         "--resize_max", "320", "--output", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert report["model"] == "homography" and "inliers/pair (homography)" in capsys.readouterr().out
    (r,) = report["confs"][0]["pairs"]
    assert r["inlier_ratio"] > 0.95 and r["inliers"] > 300


def test_errors_are_one_line(tmp_path, sacre_coeur, capsys, caplog):
    with pytest.raises(SystemExit) as e:
        cli(["--images", str(sacre_coeur), "--confs", "hndesc,nosuch"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown conf(s) nosuch" in err and "rootsift" in err
    (tmp_path / "one").mkdir()
    shutil.copy(sacre_coeur / A, tmp_path / "one" / A)
    logger = logging.getLogger("hndesc_features")  # it does not propagate to the root logger
    logger.addHandler(caplog.handler)
    try:
        with pytest.raises(SystemExit) as e:
            cli(["--images", str(tmp_path / "one"), "--confs", "orb", "--output", str(tmp_path / "out")])
    finally:
        logger.removeHandler(caplog.handler)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert e.value.code == 1 and "holds 1 image(s): need at least 2" in error
