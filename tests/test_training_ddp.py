"""DDP: the trainer under torchrun with 2 CPU processes (gloo). Kept tiny: 2 steps of a tiny model."""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from conftest import run_py
from test_training_trainer import REPO, losses, tiny_conf


@pytest.mark.heavy(8)
def test_ddp_two_processes_gloo(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    conf = tiny_conf(steps=2, batch_size=2)
    cfg.write_text(yaml.safe_dump(conf))
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hndesc_features.training.train", str(cfg), "--output", str(tmp_path / "ddp")]
    r = run_py(cmd, env_extra=env, cwd=REPO, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    a, b = summary["param_checksums"]
    assert a == b  # DDP kept both ranks' weights identical
    assert [s for s, _ in losses(tmp_path / "ddp")] == [1, 2]
    obj = torch.load(tmp_path / "ddp" / "tiny_residual.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in obj["state_dict"])
