"""benchmarks.epipolar on the real Strecha scenes (GT cameras): epipolar distances, relative-pose
error with both estimators, the AUC, and the CLI through hloc."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from benchmarks import epipolar as E
from benchmarks.common import BenchmarkError, shared_data_dir
from conftest import requires_hloc

DATA = shared_data_dir()
STRECHA = DATA / "strecha" if DATA is not None else None
needs_strecha = pytest.mark.skipif(STRECHA is None or not (STRECHA / "fountain-P11").is_dir(),
                                   reason="needs ../shared/data/strecha")


def _camera(scene: str, i: int):
    return E.read_camera(STRECHA / scene / "gt_dense_cameras" / f"{i:04d}.jpg.camera")


@pytest.fixture(scope="module")
def real_matches():
    """RootSIFT mutual-NN matches of fountain-P11 views 0 and 1 at 1024 px, with their GT geometry."""
    from hndesc_features.handcrafted import detect_sift
    from hndesc_features.geometry import mutual_nn

    imgs = []
    for i in (0, 1):
        img = cv2.imread(str(STRECHA / "fountain-P11" / "images" / f"{i:04d}.jpg"), cv2.IMREAD_GRAYSCALE)
        s = 1024 / max(img.shape)
        imgs.append(cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA))
    f0, f1 = (detect_sift(im, 2000, 0.005, root=True) for im in imgs)
    m = mutual_nn(torch.from_numpy(f0["descriptors"]), torch.from_numpy(f1["descriptors"]))
    x0, x1 = f0["keypoints"][m[:, 0]].astype(np.float64), f1["keypoints"][m[:, 1]].astype(np.float64)
    F, R, t, K0, K1 = E.pair_geometry(_camera("fountain-P11", 0), _camera("fountain-P11", 1), s)
    return x0, x1, F, R, t, K0, K1


@needs_strecha
def test_real_matches_follow_the_gt_epipolar_geometry(real_matches):
    x0, x1, F, *_ = real_matches
    assert len(x0) > 300
    d = E.symmetric_epipolar(F, x0, x1)
    assert np.mean(d < 3) > 0.7  # most RootSIFT matches of a narrow-baseline pair are right
    # the same matches against another pair's geometry are not
    F_other = E.pair_geometry(_camera("fountain-P11", 0), _camera("fountain-P11", 5), 1024 / 3072)[0]
    assert np.mean(E.symmetric_epipolar(F_other, x0, x1) < 3) < 0.3


@needs_strecha
@pytest.mark.parametrize("estimator", sorted(E.ESTIMATORS))
def test_pose_error_on_a_real_pair(real_matches, estimator):
    x0, x1, _, R, t, K0, K1 = real_matches
    assert E.pose_error(x0, x1, K0, K1, R, t, estimator) < 2.0
    # shuffled matches carry no geometry: the estimate is far off (or fails: 180)
    perm = np.random.default_rng(0).permutation(len(x1))
    assert E.pose_error(x0, x1[perm], K0, K1, R, t, estimator) > 5.0
    assert E.pose_error(x0[:5], x1[:5], K0, K1, R, t, estimator) == 180.0  # too few matches


def test_pose_error_rejects_unknown_estimator():
    x = np.zeros((10, 2))
    with pytest.raises(BenchmarkError, match="unknown pose estimator 'poselib'"):
        E.pose_error(x, x, np.eye(3), np.eye(3), np.eye(3), np.ones(3), "poselib")


def test_pose_auc_is_the_area_under_the_recall_curve():
    assert E.pose_auc([0.0, 0.0]) == {"pose_auc@5": 1.0, "pose_auc@10": 1.0, "pose_auc@20": 1.0}
    assert E.pose_auc([180.0, 90.0])["pose_auc@20"] == 0.0
    # one pair with error e: recall rises linearly from 0 to 1 on [0, e], then stays at 1
    r = E.pose_auc([2.0])
    assert r["pose_auc@5"] == pytest.approx((5 - 1.0) / 5) and r["pose_auc@10"] == pytest.approx(9 / 10)
    # half the pairs failed: the AUC is at most one half
    assert E.pose_auc([0.0, 180.0])["pose_auc@5"] == pytest.approx(0.5)


@pytest.mark.heavy(10)
@needs_strecha
@requires_hloc
def test_cli_through_hloc(tmp_path):
    out = tmp_path / "strecha"
    E.main(["--conf", "rootsift", "--scenes", "Herz-Jesus-P8", "--gaps", "3", "--estimator", "lo",
            "--output", str(out)])
    res = json.loads(out.with_suffix(".json").read_text())["rootsift"]
    assert res["summary"]["pairs"] == 5 and len(res["pairs"]) == 5  # 8 views, gap 3
    assert res["summary"]["epi_mma@3"] > 0.3 and res["summary"]["matches"] > 200
    assert res["summary"]["pose_auc@20"] > 0.5
    assert "pose estimator lo" in out.with_suffix(".md").read_text()
