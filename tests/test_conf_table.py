"""benchmarks.conf_table: every conf gets a row; figures come from the runners' JSON files."""
from __future__ import annotations

import json

import pytest

from benchmarks.common import BenchmarkError
from benchmarks.conf_table import main, rewrite_readme
from hndesc_features.confs import ALIASES, feature_confs


def test_table_has_every_conf_and_the_measured_figures(tmp_path):
    th = [1, 2, 3, 4, 5]
    (tmp_path / "speed.json").write_text(json.dumps({"results": [
        {"conf": "rootsift", "device": "cpu", "size": 1024, "cpu_ms_per_image": 300.0, "cpu_time_vs_ref": 1.0},
        {"conf": "residual_sift", "device": "cpu", "size": 1024, "cpu_ms_per_image": 420.0, "cpu_time_vs_ref": 1.4},
        {"conf": "residual_sift", "device": "cpu", "size": 640, "cpu_ms_per_image": 1.0, "cpu_time_vs_ref": 9.0}]}))
    (tmp_path / "webcam.json").write_text(json.dumps({"meta": {"thresholds": th}, "results": {
        "residual_sift": {"summary": {"dev": {"mma": [0.1, 0.2, 0.587, 0.6, 0.7]}}}}}))
    (tmp_path / "hp.json").write_text(json.dumps({"rootsift": {"mma_details": {"thresholds": th},
                                                                "mma": {"v": [0.5, 0.6, 0.70, 0.71, 0.72]}}}))
    (tmp_path / "st.json").write_text(json.dumps({"rootsift": {"summary": {"epi_mma@3": 0.678}}}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- conftable:begin -->\nold\n<!-- conftable:end -->\nrest\n")
    block = main(["--speed", str(tmp_path / "speed.json"), "--webcam", str(tmp_path / "webcam.json"),
                  "--hpatches", str(tmp_path / "hp.json"), "--strecha", str(tmp_path / "st.json"),
                  "--readme", str(readme)])
    rows = {r.split("|")[1].strip(" `"): r for r in block.splitlines()[2:]}
    assert set(rows) == set(feature_confs()) - set(ALIASES["features"])  # every conf, aliases once
    assert "| 0.587 |" in rows["residual_sift"] and "420 (1.40×)" in rows["residual_sift"]
    assert "| 256 |" in rows["residual_sift"]  # read from the shipped weights
    assert "| 0.700 | 0.678 | 300 (1.00×) |" in rows["rootsift"]
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text and block in text
    with pytest.raises(BenchmarkError):
        rewrite_readme(tmp_path / "st.json", block)
