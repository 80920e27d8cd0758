"""One config merge: unknown keys are errors naming the key; every shipped config passes it."""
from __future__ import annotations

import pytest

from conftest import SHARED
from hndesc_features.config import ConfigError, merge, overlay
from hndesc_features.training.config import list_configs, load_config


def test_merge_rejects_unknown_keys_with_their_dotted_name():
    default = {"a": 1, "sub": {"lr": 0.1, "steps": 10}, "free": {}, "opt": None}
    out = merge(default, {"sub": {"lr": 0.2}, "free": {"anything": 3}, "opt": {"x": 1}, "name": "n"})
    assert out == {"a": 1, "sub": {"lr": 0.2, "steps": 10}, "free": {"anything": 3}, "opt": {"x": 1}, "name": "n"}
    assert default["sub"]["lr"] == 0.1  # defaults untouched
    with pytest.raises(ConfigError, match=r"unknown config key 'train.sub.stpes' \(did you mean 'steps'\?\)"):
        merge(default, {"sub": {"stpes": 5}}, "train")
    assert overlay({"sub": {"lr": 1}}, {"sub": {"new": 2}}) == {"sub": {"lr": 1, "new": 2}}


def test_misspelt_keys_fail_in_training_configs_models_and_extractors():
    from hndesc_features.extractors import load_model
    from hndesc_features.models.checkpoints import build_model
    from hndesc_features.training.trainer import load_method

    with pytest.raises(ConfigError, match="'model.chanels'"):
        build_model("residual", {"chanels": [8, 16, 32, 64]})
    with pytest.raises(ConfigError, match="'loss.unmatched_wieght'"):
        load_method("residual").Loss({"unmatched_wieght": 3})
    with pytest.raises(ConfigError, match="hf_sift: unknown conf key 'max_keypiont'"):
        load_model({"name": "hf_sift", "max_keypiont": 10})


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real training photos not found at {SHARED}")
@pytest.mark.parametrize("name", sorted(list_configs()))
def test_every_shipped_training_config_builds(name, monkeypatch):
    """Dataset, model, loss, train and val sections of each shipped config pass the key check."""
    from hndesc_features.models.checkpoints import build_model
    from hndesc_features.training.datasets import build_dataset
    from hndesc_features.training.trainer import DEFAULT_TRAIN, _strip, load_method
    from hndesc_features.training.validation import DEFAULT_CONF as VAL

    monkeypatch.setenv("HNDESC_WALLPAPERS", str(SHARED / "photos"))
    conf = load_config(name)
    merge(DEFAULT_TRAIN, conf.get("train"), "train")
    merge(VAL, conf.get("val") or {}, "val")
    build_model(conf["model"]["name"], _strip(conf["model"]))
    load_method(conf["loss"]["name"]).Loss(conf["loss"])
    if "HNDESC_MEGADEPTH" in str(conf["data"]):  # the paper's rows: their data is a user's dataset folder
        monkeypatch.delenv("HNDESC_MEGADEPTH", raising=False)  # (built and trained in test_hndesc_paper.py)
        with pytest.raises(FileNotFoundError, match="set the environment variable HNDESC_MEGADEPTH"):
            build_dataset(conf["data"], "train")
        return
    build_dataset(conf["data"], "train")
