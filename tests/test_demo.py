"""The README's main job (`python -m hndesc_features.demo`) and what it leaves behind."""
from __future__ import annotations

import json

from conftest import run_py


def test_demo_counts_every_match_and_draws_a_readable_sample(tmp_path):
    out = tmp_path / "demo"
    p = run_py(["-m", "hndesc_features.demo", "--conf", "rootsift", "--output", str(out), "--draw", "50"])
    report = json.loads((out / "report.json").read_text())
    assert json.loads(p.stdout[p.stdout.index("{"):]) == report
    assert report["matches"] > 200 and report["drawn"] == 50  # all counted, 50 drawn
    assert report["precision@3px"] > 0.5  # the default pair's ground-truth homography is right
    import cv2

    img = cv2.imread(str(out / "matches.png"))
    assert img is not None and img.shape[1] > 600
    # no stray lock files next to the feature and match files
    assert not list(out.rglob("*.lock")), list(out.rglob("*.lock"))


def test_no_lock_file_left_after_a_failed_extraction(tmp_path, two_photos):
    from hndesc_features.confs import get_feature_conf
    from hndesc_features.extract_features import main as extract
    from hndesc_features.io import FileLockedError, exclusive_lock

    out = tmp_path / "feats.h5"
    conf = get_feature_conf("rootsift")
    conf["model"]["weights_typo"] = 1  # the extractor refuses it after the lock is taken
    import pytest

    from hndesc_features.config import ConfigError

    with pytest.raises(ConfigError):
        extract(conf, two_photos, feature_path=out)
    assert not list(tmp_path.glob("*.lock"))
    # while held, a second writer is refused; afterwards the lock file is gone
    with exclusive_lock(out):
        assert (tmp_path / "feats.h5.lock").exists()
        with pytest.raises(FileLockedError):
            with exclusive_lock(out):
                pass
    assert not list(tmp_path.glob("*.lock"))
