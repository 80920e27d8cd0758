"""Every benchmark runner has a working `python -m benchmarks.<name> --help`, and user errors end
with a one-paragraph message (exit status 2), not a traceback."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from conftest import run_py

ROOT = Path(__file__).resolve().parents[1]
RUNNERS = ["hpatches", "make_dev_hpatches", "localization_gt", "aachen_v1_1", "inloc", "tokyo247", "report", "speed",
           "image_retrieval"]


@pytest.mark.parametrize("name", RUNNERS)
def test_help(name, capsys):
    mod = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and len(out) > 300  # the docstring is the epilog


def test_help_as_module():
    p = run_py(["-m", "benchmarks.localization_gt", "--help"], cwd=ROOT, timeout=120, check=False)
    assert p.returncode == 0 and "--night" in p.stdout and "--scene" in p.stdout


def test_unknown_conf_is_a_clear_error(tmp_path, capsys):
    from functools import partial

    from benchmarks import hpatches
    from benchmarks.common import run_cli
    from conftest import run_main

    (tmp_path / "i_x").mkdir()
    # what `python -m benchmarks.hpatches` runs (run_cli(main)), in this process
    p = run_main(partial(run_cli, hpatches.main), ["--dataset_dir", tmp_path / "nope", "--conf", "no_such_conf",
                                                   "--output", tmp_path / "R.json"], capsys)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "Unknown feature conf 'no_such_conf'" in p.stderr


def test_conf_resolution_ours_hloc_and_yaml(tmp_path):
    from benchmarks.common import BenchmarkError, available_confs, hloc_available, resolve_feature_conf

    avail = available_confs("feature")
    if hloc_available():
        assert avail.get("superpoint_aachen") == "hloc" and avail.get("netvlad") == "hloc"
        assert resolve_feature_conf("superpoint_aachen")["model"]["name"] == "superpoint"
    ours = [n for n, src in avail.items() if src == "hndesc_features"]
    if ours:
        c = resolve_feature_conf(ours[0])
        assert c["model"]["name"].startswith("hf_")
        c["model"]["name"] = "changed"  # a copy: the registry is untouched
        assert resolve_feature_conf(ours[0])["model"]["name"].startswith("hf_")
    y = tmp_path / "mine.yaml"
    y.write_text("model: {name: dog}\npreprocessing: {grayscale: true}\n")
    assert resolve_feature_conf(str(y)) == {"model": {"name": "dog"}, "preprocessing": {"grayscale": True},
                                            "output": "mine"}
    with pytest.raises(BenchmarkError, match="Unknown feature conf"):
        resolve_feature_conf("no_such_conf")
