"""benchmarks.experiments.val_curves on real (tiny) training runs of the shared trainer, mutual-NN loss included."""
from __future__ import annotations

import pytest

from benchmarks.common import BenchmarkError
from benchmarks.experiments.val_curves import main, val_series
from test_training_trainer import tiny_conf
from hndesc_features.training.trainer import run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("curves")
    folders = []
    for name, loss in (("triplet", {}), ("mutual", {"type": "mutual", "temperature": 0.05})):
        conf = tiny_conf(val_every=3, val_at_start=True)
        conf["loss"].update(loss)
        conf["val"] = {"source": conf["data"]["source"], "n_pairs": 2, "resize": 200, "max_keypoints": 100}
        summary = run(conf, out / name)
        assert summary["finished"]
        folders.append(out / name)
    return folders


def test_val_curves_plot_and_table(runs, tmp_path):
    steps, values = val_series(runs[1], "mma@3")
    assert steps == [0, 3, 6] and all(0 <= v <= 1 for v in values)
    png = tmp_path / "c.png"
    main([str(r) for r in runs] + ["--output", str(png), "--labels", "triplet,mutual"])
    assert png.stat().st_size > 5_000
    md = png.with_suffix(".md").read_text()
    assert "| mutual |" in md and "step 6" in md
    with pytest.raises(BenchmarkError, match="no validation 'nope'"):
        val_series(runs[0], "nope")


def test_mutual_loss_logs_its_precision(runs):
    import json

    rows = [json.loads(x) for x in (runs[1] / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(0 <= r["mnn_precision"] <= 1 and r["mnn_matches"] >= 0 for r in train)
