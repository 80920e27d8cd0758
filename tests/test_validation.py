"""training.validation: the RANSAC-verified correct-match count that selects the exported weights
(real photos, fixed homographies, RootSIFT and a degraded copy of it)."""
from __future__ import annotations

import numpy as np
import pytest
import torch


def _rootsift(img):
    from hndesc_features.handcrafted import detect_sift, tensor_to_gray_u8

    f = detect_sift(tensor_to_gray_u8(img), 500)
    return {"keypoints": torch.from_numpy(f["keypoints"]), "descriptors": torch.from_numpy(f["descriptors"])}


def test_ransac_correct_counts_verified_correct_matches(val_pairs):
    from hndesc_features.training.validation import evaluate_pairs

    r = evaluate_pairs(_rootsift, val_pairs)
    assert 0 < r["ransac_correct@3"] <= r["correct@3"] <= r["matches"]
    assert r["ransac_correct@3"] > 0.9 * r["correct@3"]  # clean homography pairs: RANSAC keeps them
    assert r["correct@3"] == pytest.approx(r["mma@3"] * r["matches"], rel=0.2)

    rng = np.random.default_rng(0)

    def noisy(img):  # a worse descriptor: RootSIFT + strong noise → fewer verified correct matches
        f = _rootsift(img)
        d = f["descriptors"].numpy() + rng.normal(scale=0.12, size=f["descriptors"].shape).astype(np.float32)
        return {"keypoints": f["keypoints"], "descriptors": torch.from_numpy(d / np.linalg.norm(d, axis=1, keepdims=True))}

    n = evaluate_pairs(noisy, val_pairs)
    assert n["ransac_correct@3"] < 0.8 * r["ransac_correct@3"]


def test_selection_value_geomean():
    from hndesc_features.training.validation import selection_value

    res = {"a": 400.0, "b": 40.0, "c": 0.5}
    assert selection_value(res, ["a", "b"]) == 220.0
    assert selection_value(res, ["a", "b"], "geomean") == pytest.approx(np.sqrt(400 * 40))
    # geomean: +10 % on the small count weighs as much as +10 % on the large one
    assert selection_value({"a": 440.0, "b": 40.0}, ["a", "b"], "geomean") == pytest.approx(
        selection_value({"a": 400.0, "b": 44.0}, ["a", "b"], "geomean"))
    with pytest.raises(ValueError, match="select_mode"):
        selection_value(res, ["a"], "median")
    with pytest.raises(KeyError, match="val.select"):
        selection_value(res, ["z"])
