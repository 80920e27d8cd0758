"""benchmarks.report: tables from results JSON + server numbers, published figures kept apart,
README block regeneration."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.common import BenchmarkError, write_json


def _hpatches_json(path: Path):
    mma = [0.3 + 0.05 * i for i in range(10)]
    write_json(path, {"mine": {
        "dataset": "/data/hpatches-sequences-release",
        "mma": {"all": mma, "i": [v + 0.01 for v in mma], "v": [v - 0.01 for v in mma]},
        "mma_details": {"thresholds": list(range(1, 11)), "mean_num_features": 1234.4,
                        "mean_num_matches": {"all": 456.0, "i": 500.0, "v": 400.0}},
        "homography": {k: {"size": s, "max_keypoints": n, "all": {"cor1": 0.41, "cor3": 0.72, "cor5": 0.81,
                                                                   "matching_score": 0.49}}
                       for k, s, n in (("240x320", [240, 320], 300), ("480x640", [480, 640], 1000))}}})
    return path


def _loc_json(path: Path, night: bool):
    write_json(path, {"scene": "/x/fountain-P11", "conf": "mine", "matcher": "NN-mutual", "night": night,
                      "recall": [60.0, 80.0, 100.0] if night else [100.0, 100.0, 100.0],
                      "median_error_m": 0.01, "median_error_deg": 0.1,
                      "sfm": {"num_points3D": 2000, "num_reg_images": 6, "mean_track_length": 3.2,
                              "mean_reprojection_error": 0.33, "mean_observations_per_image": 1000.0}})
    return path


def test_parse_server_numbers_formats():
    p = report.parse_server_numbers("day: 88.6 / 95.8 / 99.0\tnight: 72.3 / 90.6 / 98.4", ("day", "night"))
    assert p == {"day": [88.6, 95.8, 99.0], "night": [72.3, 90.6, 98.4]}
    p = report.parse_server_numbers("DUC1 40.4 58.1 69.7 | DUC2 42.7, 61.8, 71", ("duc1", "duc2"))
    assert p == {"duc1": [40.4, 58.1, 69.7], "duc2": [42.7, 61.8, 71.0]}


def test_full_report_and_readme_block(tmp_path):
    hpj = _hpatches_json(tmp_path / "hp.json")
    day, night = _loc_json(tmp_path / "d.json", False), _loc_json(tmp_path / "n.json", True)
    (tmp_path / "aachen.txt").write_text("# pasted from the server\nmine: day 88.6 / 95.8 / 99.0 night 72.3 / 90.6 / 98.4\n")
    (tmp_path / "inloc.json").write_text(json.dumps({"mine": "DUC1: 40.4 / 58.1 / 69.7 DUC2: 42.7 / 61.8 / 71.0"}))
    figs = tmp_path / "figs.yaml"
    figs.write_text("t1:\n  title: HPatches homography\n  source: Some paper, Table 1\n"
                    "  columns: [Cor-1, Cor-3]\n  rows:\n    SuperPoint: [0.44, 0.77]\n"
                    "empty:\n  title: nothing\n  source: x\n  columns: [a]\n  rows: {}\n")
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n\n<!-- results:begin -->\nstale\n<!-- results:end -->\n\nfooter\n")
    body = report.main(list(map(str, ["--hpatches", hpj, "--localization", day, night, "--aachen_server",
                                      tmp_path / "aachen.txt", "--inloc_server", tmp_path / "inloc.json",
                                      "--paper_figures", figs, "--output", tmp_path / "R.md",
                                      "--readme", readme])))
    assert (tmp_path / "R.md").read_text() == body
    assert "| mine | 88.6 | 95.8 | 99.0 | 72.3 | 90.6 | 98.4 |" in body  # HNDesc Aachen table
    assert "| mine (hpatches-sequences-release) | 0.300 | 0.400 | 0.500 | 0.750 |" in body  # sparse matching
    assert "0.410 | 0.720 | 0.810 | 0.490" in body  # residual Table 1
    assert "40.4 | 58.1 | 69.7 | 42.7 | 61.8 | 71.0" in body  # residual Table 2 (InLoc)
    assert "| mine | fountain-P11 | 6 | 2000 | 3.20 |" in body  # residual Table 3
    assert "100.0 | 100.0 | 100.0 | 60.0 | 80.0 | 100.0" in body  # offline day/night
    # published figures only after our tables, in their own labelled table
    pub = body.index("## Published figures")
    assert body.index("| SuperPoint | 0.44 | 0.77 |") > pub
    assert "copied from Some paper, Table 1 (not measured here)" in body
    assert "nothing" not in body
    assert body.index("| mine | 88.6") < pub
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n<!-- results:begin -->\n## Results")
    assert text.endswith("<!-- results:end -->\n\nfooter\n") and "stale" not in text
    # idempotent
    report.update_readme(readme, body)
    assert readme.read_text() == text


def test_pasted_server_text():
    got = report.read_server_file("mine: day 1 / 2 / 3 night 4 / 5 / 6\nother: day 7 8 9 night 1 2 3",
                                  ("day", "night"))
    assert got == {"mine": {"day": [1.0, 2.0, 3.0], "night": [4.0, 5.0, 6.0]},
                   "other": {"day": [7.0, 8.0, 9.0], "night": [1.0, 2.0, 3.0]}}


def test_errors(tmp_path):
    (tmp_path / "a.txt").write_text("mine: day 1 / 2\n")
    with pytest.raises(BenchmarkError, match="night"):
        report.read_server_file(tmp_path / "a.txt", ("day", "night"))
    (tmp_path / "R.md").write_text("no markers\n")
    with pytest.raises(BenchmarkError, match="results:begin"):
        report.update_readme(tmp_path / "R.md", "x")


def test_shipped_paper_figures_template_is_valid():
    import yaml

    figs = yaml.safe_load((Path(report.__file__).parent / "paper_figures.yaml").read_text())
    for key, spec in figs.items():
        assert {"title", "source", "columns", "rows"} <= set(spec), key
        for method, vals in (spec["rows"] or {}).items():
            assert len(vals) == len(spec["columns"]), (key, method)


def _retrieval_json(path: Path, dataset: str, conf, medium: float, hard: float, reranked: bool = True):
    write_json(path, {"dataset": dataset, "conf": conf, "method": conf, "matcher": "NN-mutual" if conf else None,
                      "global": "hf_netvlad", "num_rerank": 100, "reranked": reranked,
                      "map": {"easy": 90.0, "medium": medium, "hard": hard},
                      "mp": {"easy": [1, 2, 3], "medium": [1, 2, 3], "hard": [1, 2, 3]}})
    return path


def test_retrieval_table(tmp_path):
    files = [_retrieval_json(tmp_path / "a.json", "roxford5k", "hndesc", 61.23, 38.04),
             _retrieval_json(tmp_path / "b.json", "rparis6k", "hndesc", 75.5, 52.25),
             _retrieval_json(tmp_path / "c.json", "roxford5k", None, 40.0, 12.0, reranked=False)]
    body = report.main(list(map(str, ["--retrieval", *files, "--output", tmp_path / "R.md"])))
    assert "| Method | ROxf Medium | ROxf Hard | RPar Medium | RPar Hard |" in body
    assert "| hndesc (top 100 of hf_netvlad) | 61.2 | 38.0 | 75.5 | 52.2 |" in body
    assert "| hf_netvlad (global only) | 40.0 | 12.0 | – | – |" in body
    (tmp_path / "bad.json").write_text(json.dumps({"recall": [1, 2, 3]}))
    with pytest.raises(BenchmarkError, match="image_retrieval"):
        report.main(list(map(str, ["--retrieval", tmp_path / "bad.json"])))
