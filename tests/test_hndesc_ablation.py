"""HNDesc ablation configs and runner plumbing (the trainings themselves are benchmarks)."""
from __future__ import annotations

import pytest

from benchmarks.common import BenchmarkError
from benchmarks.experiments.hndesc_ablation import ABLATIONS, feature_conf, main, markdown
from hndesc_features.training.config import load_config


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_each_ablation_changes_only_what_it_names():
    ref = _flat(load_config("hndesc_ablation/in_batch_pair"))
    expected = {
        "in_pair": {"loss.mining", "loss.in_batch_with_pair"},
        "in_batch": {"loss.in_batch_with_pair"},
        "gd": {"loss.mining", "loss.gd.knn_file", "loss.gd.pick", "loss.gd.max_kpts"},
        "selfgd": {"loss.mining", "loss.gd.pick", "loss.gd.max_kpts", "loss.selfgd.refresh_every",
                   "loss.selfgd.size"},
        "color_only": {"loss.stylize.p"},
        "style_only": {"loss.augment.enable"},
    }
    for name, keys in expected.items():
        conf = _flat(load_config(f"hndesc_ablation/{name}"))
        diff = {k for k in set(ref) | set(conf) if ref.get(k) != conf.get(k)} - {"name"}
        assert diff == keys, name
    assert set(expected) | {"in_batch_pair"} == set(ABLATIONS)
    base = load_config("hndesc_ablation/in_batch_pair")
    shipped = load_config("hndesc_patch")  # the shipped recipe is the in_batch_pair row
    assert {k: v for k, v in base.items() if k != "name"} == {k: v for k, v in shipped.items() if k != "name"}


def test_feature_conf_and_table(tmp_path):
    import yaml

    from benchmarks.common import resolve_feature_conf

    w = tmp_path / "w.pt"
    w.write_bytes(b"")
    path = feature_conf("gd", w, 512, tmp_path)
    conf = resolve_feature_conf(str(path))
    assert conf["model"] == yaml.safe_load(path.read_text())["model"]
    assert conf["model"]["backbone"] == "patch" and conf["model"]["max_keypoints"] == 512
    row = {"name": "gd", "group": "mining", "what": "x", "matches": 321.0,
           "mma": {"all": [0.5, 0.6, 0.7], "i": [0.6, 0.7, 0.8], "v": [0.4, 0.5, 0.6]}}
    md = markdown([row], "D", 512)
    assert "| mining | gd | x | 0.500 | 0.700 | 0.800 | 0.600 | 321 |" in md


def test_unknown_ablation_is_a_clear_error(tmp_path):
    with pytest.raises(BenchmarkError, match="Unknown ablation"):
        main(["--dataset_dir", str(tmp_path), "--output", str(tmp_path / "r.json"), "--only", "nope"])
