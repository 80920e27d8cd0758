"""The trainer: exact resume, checkpoint errors, export, config overrides, DDP with 2 processes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from hndesc_features.models.checkpoints import CheckpointError, load_weights
from hndesc_features.training.config import ConfigError, apply_overrides, load_config
from hndesc_features.training.export import export_run
from hndesc_features.training.train import main as train_main
from hndesc_features.training.trainer import CKPT_NAME, load_checkpoint, run

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(1)
try:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
except ImportError:
    pass


def tiny_conf(**train) -> dict:
    photos = sorted((DATA / "photos").glob("*.jpg"))[:3] if (DATA / "photos").is_dir() else []
    if not photos:
        skimage = pytest.importorskip("skimage.data", reason="no real photos (../shared/data, scikit-image)")
        d = Path(skimage.__file__).parent
        photos = [d / "astronaut.png", d / "chelsea.png", d / "rocket.jpg"]
    return {
        "name": "tiny_residual",
        "data": {"name": "homographies", "source": {"name": "list", "paths": [str(p) for p in photos]},
                 "resize": [300, 400], "homography": {"size": 96}, "photometric": {"enable": False}},
        "model": {"name": "residual", "descriptor": "sift", "channels": [4, 8, 8, 16], "cnn_dim": 16,
                  "mlp": [32, 32, 16], "skip": False, "context_scale": 0},
        "loss": {"name": "residual", "train_keypoints": 48},
        "train": {"seed": 3, "steps": 6, "batch_size": 2, "num_workers": 0, "threads": 1, "log_every": 1,
                  "val_every": 0, "checkpoint_every": 100, "plot": False, "lr": 3e-3, **train},
    }


def losses(run_dir) -> list[tuple[int, float]]:
    recs = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if r["split"] == "train"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    summary = run(tiny_conf(), out)
    assert summary["finished"]
    return out


def test_resume_reproduces_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "interrupted"
    s = run(tiny_conf(stop_after=3), out)
    assert not s["finished"] and s["step"] == 3
    assert load_checkpoint(out / CKPT_NAME)["step"] == 3
    # resume with 1 data worker: samples are pure functions of their keys, so nothing changes
    s = run(tiny_conf(num_workers=1), out, resume=True)
    assert s["finished"] and s["step"] == 6
    ref = losses(uninterrupted)
    assert [st for st, _ in ref] == [1, 2, 3, 4, 5, 6]
    assert losses(out) == ref  # loss for loss, bit for bit
    a = torch.load(uninterrupted / "tiny_residual.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "tiny_residual.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a different seed gives different losses (the comparison above is not vacuous)
    other = run(tiny_conf(seed=4, steps=2), tmp_path / "seed4")
    assert losses(tmp_path / "seed4")[0][1] != ref[0][1] and other["finished"]


def test_export_loads_with_weights_only(uninterrupted, tmp_path):
    path = export_run(uninterrupted, to=tmp_path / "w.pt")
    obj = torch.load(path, weights_only=True)
    assert obj["arch"] == "residual" and obj["conf"]["channels"] == [4, 8, 8, 16]
    assert path.stat().st_size < 1_000_000
    model, _ = load_weights(path, "residual", {"max_keypoints": 100})
    assert model.conf["max_keypoints"] == 100
    img = torch.rand(1, 3, 120, 160)
    out = model.extract(img)
    assert out["descriptors"].shape[1] == 32
    torch.testing.assert_close(out["descriptors"].norm(dim=1), torch.ones(len(out["descriptors"])))


def test_bad_checkpoints_give_clear_errors(uninterrupted, tmp_path):
    ck = uninterrupted / CKPT_NAME
    data = ck.read_bytes()
    # truncated checkpoint
    run_dir = tmp_path / "trunc"
    run_dir.mkdir()
    (run_dir / CKPT_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        run(tiny_conf(), run_dir, resume=True)
    (run_dir / CKPT_NAME).write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        run(tiny_conf(), run_dir, resume=True)
    # a checkpoint of another architecture
    conf = tiny_conf()
    conf["model"] = {"name": "wlrn"}
    with pytest.raises(CheckpointError, match="architecture 'residual'.*'wlrn'"):
        run(conf, uninterrupted, resume=True)
    # same architecture, other model conf
    conf = tiny_conf()
    conf["model"]["channels"] = [8, 8, 16, 16]
    with pytest.raises(CheckpointError, match="model conf"):
        run(conf, uninterrupted, resume=True)
    # resume without checkpoint / new run over an existing one
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(tiny_conf(), tmp_path / "empty", resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        run(tiny_conf(), uninterrupted)
    # exported weights: wrong arch, truncated, or a training checkpoint instead
    w = export_run(uninterrupted, to=tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="architecture 'residual'.*'hndesc_caps' was requested"):
        load_weights(w, "hndesc_caps")
    (tmp_path / "w_trunc.pt").write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_weights(tmp_path / "w_trunc.pt", "residual")
    with pytest.raises(CheckpointError, match="training checkpoint"):
        load_weights(ck, "residual")


def test_cli_reports_errors_without_traceback(uninterrupted, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_conf()))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CKPT_NAME).write_bytes(b"PK\x03\x04garbage")
    assert train_main([str(cfg), "--output", str(bad), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert train_main([str(tmp_path / "missing.yaml"), "--output", str(bad)]) == 2


def test_config_overrides_and_base(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_conf()))
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nname: child\nmodel: {use_handcrafted: false, cnn_dim: 32}\n")
    conf = load_config(child, ["train.lr=1e-4", "model.channels=[2,4,4,8]", "data.homography.mode=full"])
    assert conf["name"] == "child" and conf["train"]["lr"] == 1e-4
    assert conf["model"] == {"name": "residual", "descriptor": "sift", "channels": [2, 4, 4, 8], "cnn_dim": 32,
                             "mlp": [32, 32, 16], "skip": False, "context_scale": 0,
                             "use_handcrafted": False}
    assert conf["data"]["homography"] == {"size": 96, "mode": "full"}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides(conf, ["train.lr"])
    (tmp_path / "nomodel.yaml").write_text("data: {name: homographies}\nloss: {name: residual}\n")
    with pytest.raises(ConfigError, match="'model'"):
        load_config(tmp_path / "nomodel.yaml")


def test_shipped_train_configs_parse():
    from hndesc_features.models.checkpoints import build_model
    from hndesc_features.training.losses.residual import Loss
    from hndesc_features.training.trainer import param_groups

    for cfg in sorted((REPO / "confs" / "train").glob("residual*.yaml")):
        conf = load_config(cfg)
        assert conf["model"]["name"] == "residual" and conf["loss"]["name"] == "residual"
        # the optimiser's parameter groups build for every config (the "*" model has no MLP:
        # its config drops the base's `mlp` group with null)
        model = build_model("residual", {k: v for k, v in conf["model"].items() if k != "name"})
        groups = param_groups(model, Loss(conf["loss"]), conf["train"]["lr"], conf["train"].get("lr_groups", {}))
        n = sum(p.numel() for g in groups for p in g["params"])
        assert n == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="no parameter name starts with 'mlp'"):
        param_groups(build_model("residual", {"use_handcrafted": False, "cnn_dim": 256}), Loss({}), 1e-3,
                     {"mlp": 1e-4})


def test_plot_puts_counts_on_their_own_axis(tmp_path):
    import json

    from hndesc_features.training.plot import count_keys, plot_run, read_metrics

    rows = [{"step": s, "split": "train", "loss": 1.0 / (1 + s), "ap": s / 100, "kpts": 180.0 + s % 7,
             "lr": 1e-3} for s in range(0, 100, 5)]
    rows += [{"step": 50, "split": "val", "mma@3": 0.6}, {"step": 100, "split": "val", "mma@3": 0.7}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    m = read_metrics(tmp_path)
    assert count_keys(m["train"], ["loss", "ap", "kpts"]) == ["kpts"]
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png" and out.stat().st_size > 10_000


def test_overwrite_starts_the_logs_over(tmp_path):
    out = tmp_path / "run"
    run(tiny_conf(steps=3), out)
    with pytest.raises(FileExistsError, match="--resume"):
        run(tiny_conf(steps=3), out)
    run(tiny_conf(steps=2), out, overwrite=True)
    assert [s for s, _ in losses(out)] == [1, 2]  # only the new run's records


def _tiny_patch_conf(**train) -> dict:
    """A BN model (hndesc_patch) on crops of real photos, validation on other real photos."""
    photos = sorted((DATA / "photos").glob("*.jpg")) if (DATA / "photos").is_dir() else []
    if len(photos) < 6:
        pytest.skip("needs the real photos in ../shared/data/photos")
    return {
        "name": "tiny_patch",
        "model": {"name": "hndesc_patch", "width": 4},
        "loss": {"name": "hndesc", "mining": "in_batch", "keypoints": {"max": 24, "min": 8},
                 "frames": {"enable": True}, "stylize": {"mode": "none"}},
        "data": {"name": "homographies", "source": {"name": "list", "paths": [str(p) for p in photos[:3]]},
                 "resize": [240, 320], "homography": {"mode": "hcrops", "size": 96},
                 "photometric": {"enable": False}},
        "val": {"source": {"name": "list", "paths": [str(p) for p in photos[3:5]]}, "n_pairs": 2,
                "resize": 240, "max_keypoints": 150},
        "train": {"seed": 1, "steps": 4, "batch_size": 2, "num_workers": 0, "threads": 1, "log_every": 1,
                  "val_every": 2, "val_at_start": True, "checkpoint_every": 100, "plot": False,
                  "lr": 0.0, **train},
    }


def _val_records(run_dir) -> list[dict]:
    recs = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["split"] == "val"]


def test_precise_bn_makes_validation_a_function_of_the_weights(tmp_path):
    # lr 0: the weights never change, only BN's running statistics do. With the default momentum
    # average those follow the last training batches, so the validation moves although the model
    # did not learn anything; with train.precise_bn every validation sees the same statistics.
    run(_tiny_patch_conf(), tmp_path / "momentum")
    run(_tiny_patch_conf(precise_bn=3), tmp_path / "precise")
    momentum, precise = _val_records(tmp_path / "momentum"), _val_records(tmp_path / "precise")
    assert [r["step"] for r in precise] == [0, 2, 4]
    keys = ("mma@1", "mma@3", "matches")
    assert all(r[k] == precise[0][k] for r in precise for k in keys)
    assert any(r[k] != momentum[0][k] for r in momentum[1:] for k in keys)
    # the exported weights carry the precise statistics, not the untouched initial ones (0 / 1)
    model, _ = load_weights(tmp_path / "precise" / "tiny_patch.pt")
    sd = model.state_dict()
    means = [v for k, v in sd.items() if k.endswith("running_mean")]
    assert means and all(torch.isfinite(m).all() for m in means) and any(m.abs().sum() > 0 for m in means)


def test_precise_batchnorm_is_the_plain_mean_over_batches():
    from hndesc_features.training.trainer import precise_batchnorm

    g = torch.Generator().manual_seed(0)
    bn = torch.nn.Sequential(torch.nn.BatchNorm1d(3))
    batches = [torch.randn(5, 3, generator=g) * (i + 1) + i for i in range(4)]
    assert precise_batchnorm(bn, lambda m, b: m(b), batches) == 1
    mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    var = torch.stack([b.var(0) for b in batches]).mean(0)  # unbiased per batch, as BN keeps it
    assert torch.allclose(bn[0].running_mean, mean, atol=1e-6)
    assert torch.allclose(bn[0].running_var, var, atol=1e-5)
    assert bn[0].momentum == 0.1 and bn.training
    assert precise_batchnorm(torch.nn.Linear(3, 3), lambda m, b: m(b), batches) == 0


def test_init_weights_starts_from_an_exported_file(uninterrupted, tmp_path):
    src = uninterrupted / "tiny_residual.pt"
    trained, _ = load_weights(src)
    # lr 0: the run keeps exactly the weights it started from (the residual model has no BN)
    run(tiny_conf(steps=2, lr=0.0, init_weights=str(src)), tmp_path / "ft")
    tuned, _ = load_weights(tmp_path / "ft" / "tiny_residual.pt")
    fresh = trained.state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in tuned.state_dict().items())
    # ...which is not what the configured initialisation gives
    run(tiny_conf(steps=2, lr=0.0), tmp_path / "scratch")
    scratch, _ = load_weights(tmp_path / "scratch" / "tiny_residual.pt")
    assert not all(torch.equal(fresh[k], v) for k, v in scratch.state_dict().items())

    other = tiny_conf(steps=1, init_weights=str(src))
    other["model"]["cnn_dim"] = 8  # another architecture than the file's
    with pytest.raises(CheckpointError, match="init_weights"):
        run(other, tmp_path / "bad")
    with pytest.raises(CheckpointError, match="weights file .*not found"):
        run(tiny_conf(steps=1, init_weights=str(tmp_path / "missing.pt")), tmp_path / "missing")


# ----------------------------------------------------------------------------- the GPU path, on CPU
def test_data_workers_never_exceed_the_cores():
    from hndesc_features.training.trainer import num_workers_for

    assert num_workers_for("auto", cpus=2) == 1  # one core stays with the training loop
    assert num_workers_for("auto", cpus=32) == 16 and num_workers_for("auto", cpus=8) == 7
    assert num_workers_for("auto", local_world=2, cpus=2) == 0  # two processes on two cores
    assert num_workers_for(5, cpus=2) == 2 and num_workers_for(1, cpus=2) == 1
    with pytest.raises(ValueError, match="num_workers"):
        num_workers_for(-1)


def test_amp_modes():
    from hndesc_features.training.trainer import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype(False, cpu) is None and amp_dtype("auto", cpu) is None  # auto: GPUs only
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    assert amp_dtype("fp16", cpu) is None  # fp16 autocast needs CUDA: full precision instead
    with pytest.raises(ValueError, match="train.amp"):
        amp_dtype("fp8", cpu)


def test_bf16_autocast_trains_on_cpu_without_pinned_memory(tmp_path):
    """train.amp=bf16 runs the forward under CPU autocast (finite loss, float32 weights and export), and
    a CPU run neither pins memory nor warns about it; 'auto' workers fit the cores the tests run on."""
    import warnings

    from hndesc_features.training.trainer import Trainer, cpus_available

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "pin_memory ... no accelerator is found"
        tr = Trainer(tiny_conf(steps=2, amp="bf16", num_workers="auto"), tmp_path / "bf16")
        assert tr.loader.pin_memory is False and tr.amp_dtype is torch.bfloat16
        assert tr.num_workers == max(0, min(16, cpus_available() - 1))
        s = tr.train()
    assert s["finished"] and all(torch.isfinite(torch.tensor(v)) for _, v in losses(tmp_path / "bf16"))
    obj = torch.load(tmp_path / "bf16" / "tiny_residual.pt", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in obj["state_dict"].values())


def test_cli_records_its_command_in_the_exported_weights(tmp_path):
    """The exported weights name the command that trained them (one recorded command per shipped file)."""
    conf = tiny_conf()
    conf["train"]["steps"] = 2
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(conf))
    out = tmp_path / "run"
    assert train_main([str(cfg), "--output", str(out), "train.steps=1"]) == 0
    (w,) = [p for p in out.glob("*.pt") if not p.name.startswith("checkpoint") and "_best" not in p.name]
    meta = torch.load(w, weights_only=True)["meta"]
    assert meta["command"] == f"python -m hndesc_features.training.train {cfg} --output {out} train.steps=1"
    assert meta["step"] == 1
