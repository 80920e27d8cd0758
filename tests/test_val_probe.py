"""benchmarks.experiments.val_probe --diagnose: the descriptor measured apart from the detector (exact frames),
and mutual-NN rates of keypoints with / without a correspondence, on real photos."""
from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def test_frame_probe_measures_the_descriptor_given_exact_frames(val_pairs):
    from benchmarks.experiments.val_probe import frame_probe, rootsift_at

    r = frame_probe(rootsift_at, val_pairs, jitters=(0.0, 10.0, 30.0), max_keypoints=300)
    assert set(r) == {"gt_nn@0", "gt_nn@10", "gt_nn@30"}
    # RootSIFT at the exact transferred frames finds its correspondence almost always, and loses it
    # as the view-1 orientation drifts away from the true one
    assert r["gt_nn@0"] > 0.8
    assert r["gt_nn@0"] > r["gt_nn@10"] > r["gt_nn@30"] + 0.1

    # a describer that does not look at the image content cannot find them (chance: 1 / 300)
    rng = np.random.default_rng(0)
    noise = frame_probe(lambda img, fr: _unit(rng.normal(size=(len(fr), 32))), val_pairs, jitters=(0.0,),
                        max_keypoints=300)
    assert noise["gt_nn@0"] < 0.05


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mutual_rates_split_keypoints_by_correspondence(val_pairs):
    from benchmarks.experiments.val_probe import _baseline, mutual_rates
    from hndesc_features.training.validation import evaluate_pairs

    _, rootsift = _baseline("hndesc_patch")
    r = mutual_rates(rootsift, val_pairs)
    assert 0.5 < r["mnn_corr"] <= 1.0 and 0.0 <= r["mnn_nocorr"] < r["mnn_corr"]
    # shuffled descriptors: nothing is matched correctly any more
    def shuffled(img):
        f = rootsift(img)
        g = torch.Generator().manual_seed(int(img.sum() * 1000) % 2**31)
        return {"keypoints": f["keypoints"], "descriptors": f["descriptors"][torch.randperm(len(f["descriptors"]), generator=g)]}
    s = mutual_rates(shuffled, val_pairs)
    assert s["mnn_corr"] < 0.05
    # the same protocol as the MMA of training.validation: more correct matches, higher MMA
    assert evaluate_pairs(rootsift, val_pairs)["mma@3"] > evaluate_pairs(shuffled, val_pairs)["mma@3"] + 0.5


def test_residual_probe_shipped_weights_have_fewer_spurious_mutual_matches(val_pairs):
    """--method residual: the shipped residual_sift weights against their own initialisation
    ('untrained': the training run's step 0, SIFT + SIFT-context) on real photo pairs. Training
    removed mutual matches of keypoints that have no correspondence and kept the correct ones."""
    from benchmarks.experiments.val_probe import _extractor, mutual_rates
    from hndesc_features.weights import PACKAGE_DIR as WEIGHTS_DIR

    shipped = WEIGHTS_DIR / "residual_sift.pt"
    init = mutual_rates(_extractor("residual", "untrained"), val_pairs)
    trained = mutual_rates(_extractor("residual", str(shipped)), val_pairs)
    assert 0.5 < init["mnn_corr"] <= 1.0
    assert trained["mnn_nocorr"] < init["mnn_nocorr"] - 0.02, (init, trained)
    assert trained["mnn_corr"] > init["mnn_corr"] - 0.05, (init, trained)


def test_val_probe_cli_refuses_unknown_method(capsys):
    from benchmarks.experiments.val_probe import main

    with pytest.raises(SystemExit):
        main(["--method", "superpoint", "--weights", "untrained"])
    assert "invalid choice" in capsys.readouterr().err
