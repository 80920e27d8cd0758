"""The paper's HNDesc rows (confs/train/hndesc_paper/): every config trains 2 steps on CPU on tiny
MegaDepth (CAPS release layout) and Phototourism (IMC 2021 layout) folders built from real photos of
../shared/data, with their pre-generated stylized copies and gd / selfgd neighbour files written by the
commands a user runs; the exported weights load through the `hndesc_caps` / `hndesc_r2d2` confs.

Kept fast: 64-px crops, batch 2, 16 keypoints per crop, no validation; the layouts, stylizations and
neighbours are built once per test run."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import SHARED, run_py

PAPER = "hndesc_paper"
SMOKE = ["train.steps=2", "train.batch_size=2", "train.num_workers=0", "train.threads=1", "train.val_every=0",
         "train.log_every=1", "train.checkpoint_every=2", "train.plot=false", "data.homography.size=64",
         "loss.keypoints.max=16", "loss.gd.max_kpts=16"]


def paper_configs() -> list[str]:
    from hndesc_features.training.config import list_configs

    return sorted(n for n in list_configs() if n.startswith(PAPER + "/"))


def _small(src: Path, dst: Path, long_side: int = 240) -> tuple[int, int]:
    img = cv2.imread(str(src))
    s = long_side / max(img.shape[:2])
    img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return img.shape[1], img.shape[0]


def build_megadepth(root: Path) -> list[Path]:
    """root/train/<scene>/dense0/aligned/{images/,img_cam.txt,pairs.txt}: two scenes of real photos."""
    scenes = {"0001": sorted((SHARED / "sceaux_castle" / "images").glob("*.[jJ][pP][gG]"))[:2],
              "0002": sorted((SHARED / "strecha" / "fountain-P11" / "images").glob("*.jpg"))[:2]}
    out = []
    for scene, files in scenes.items():
        folder = root / "train" / scene / "dense0" / "aligned"
        lines = []
        for f in files:
            w, h = _small(f, folder / "images" / (f.stem + ".jpg"))
            R, t = " ".join(map(str, np.eye(3).ravel())), "0 0 0"
            lines.append(f"{f.stem}.jpg {w} {h} {w} {w} {w / 2} {h / 2} {R} {t}")
            out.append(folder / "images" / (f.stem + ".jpg"))
        (folder / "img_cam.txt").write_text("\n".join(lines) + "\n")
        names = [f.stem + ".jpg" for f in files]
        (folder / "pairs.txt").write_text(f"{names[0]} {names[1]}\n")
    return out


def build_phototourism(root: Path) -> list[Path]:
    """root/<scene>/{images/,calibration.csv,pair_covisibility.csv} (IMC 2021) of real photos."""
    scene = root / "sacre_coeur"
    rows, out = [], []
    for f in sorted((SHARED / "sacre_coeur" / "mapping").glob("*.jpg"))[:2]:
        w, h = _small(f, scene / "images" / f.name)
        rows.append({"image_id": f.stem, "camera_intrinsics": f"{w} 0 {w / 2} 0 {w} {h / 2} 0 0 1",
                     "rotation_matrix": " ".join(map(str, np.eye(3).ravel())), "translation_vector": "0 0 0"})
        out.append(scene / "images" / f.name)
    with open(scene / "calibration.csv", "w", newline="") as fd:
        w = csv.DictWriter(fd, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(scene / "pair_covisibility.csv", "w", newline="") as fd:
        w = csv.writer(fd)
        w.writerow(["pair", "covisibility", "fundamental_matrix"])
        w.writerow([f"{rows[0]['image_id']}-{rows[1]['image_id']}", 0.5, " ".join(["0"] * 9)])
    return out


@pytest.fixture(scope="session")
def paper_data(tmp_path_factory):
    """Tiny MegaDepth + Phototourism layouts, their stylized copies and both neighbour files, written by
    the user-facing commands; HNDESC_MEGADEPTH / HNDESC_PHOTOTOURISM point at them for the test run."""
    if not (SHARED / "sceaux_castle").is_dir() or not (SHARED / "sacre_coeur").is_dir():
        pytest.skip(f"real test data not found at {SHARED}")
    from hndesc_features.models.netvlad import write_random_struct
    from hndesc_features.training import knn, stylize

    base = tmp_path_factory.mktemp("paper_data")
    md, pt = base / "megadepth", base / "phototourism"
    images = build_megadepth(md) + build_phototourism(pt)
    saved = {k: os.environ.get(k) for k in ("HNDESC_MEGADEPTH", "HNDESC_PHOTOTOURISM")}
    os.environ["HNDESC_MEGADEPTH"], os.environ["HNDESC_PHOTOTOURISM"] = str(md), str(pt)
    # NetVLAD: the released weights are a download; a random struct file in the released layout stands in
    mat = write_random_struct(base / "VGG16-NetVLAD-Pitts30K.mat", whiten_dim=64, seed=0)
    try:
        torch.set_num_threads(1)  # small inputs: one thread is the fastest on a busy CPU
        # the M+P config covers every image of both datasets (2 styles x 2 copies here; 6 by default)
        assert stylize.main([f"{PAPER}/r2d2_ca_st_megadepth_phototourism", "--per-style", "2"]) == 0
        assert knn.main([f"{PAPER}/caps_ca_st_gd_megadepth", "--netvlad-weights", str(mat), "--size", "128"]) == 0
        assert knn.main([f"{PAPER}/caps_ca_st_selfgd_megadepth", "--size", "128"]) == 0
        yield {"megadepth": md, "phototourism": pt, "images": images, "mat": mat}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_train_help_lists_the_paper_rows():
    from hndesc_features.training.train import main

    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["--help"])
    text = buf.getvalue()
    for name, row in [("caps_ca_st_gd_megadepth", "CAPS-(CA, ST)-gd on MegaDepth"),
                      ("r2d2_ca_st_megadepth_phototourism", "R2D2-(CA, ST) on MegaDepth + Phototourism")]:
        line = next(ln for ln in text.splitlines() if f"{PAPER}/{name} " in ln)
        assert row in line
    assert len(paper_configs()) >= 8


def test_paper_recipe_from_the_official_code():
    """The hyper-parameters the official code trains with (configs/main.yaml, pipeline.py, dataset.py)."""
    from hndesc_features.config import merge
    from hndesc_features.training.config import load_config
    from hndesc_features.training.pipelines.hndesc import DEFAULT_CONF

    c = load_config(f"{PAPER}/caps_ca_st_gd_megadepth")
    t = c["train"]
    assert (t["batch_size"], t["lr"], t["steps"], t["seed"]) == (16, 1e-4, 220000, 1984)
    assert t["lr_schedule"] == {"type": "step", "step_size": 50000, "gamma": 0.5} and t["optimizer"] == "adam"
    loss = merge(DEFAULT_CONF, c["loss"], "loss")
    assert (loss["loss"], loss["knn"], loss["nq"], loss["keypoints"]["max"]) == ("ap", 20, 20, 200)
    assert loss["stylize"]["mode"] == "pregenerated" and loss["stylize"]["p"] == 0.7
    assert (loss["augment"]["p_color"], loss["augment"]["p_blur"], loss["augment"]["p_noise"]) == (0.6, 0.3, 0.1)
    assert loss["mining"] == "gd" and not loss["in_batch_with_pair"]
    assert c["data"]["homography"] == {"mode": "hcrops", "size": 256}
    r = load_config(f"{PAPER}/r2d2_ca_st_megadepth_phototourism")
    assert r["model"]["name"] == "hndesc_r2d2" and [s["name"] for s in r["data"]["source"]] == ["megadepth",
                                                                                              "phototourism"]
    assert load_config(f"{PAPER}/caps_ca_megadepth")["loss"]["stylize"]["mode"] == "none"


def test_stylized_copies_beside_the_dataset(paper_data, tmp_path):
    """Copies of every training image in both styles, beside each dataset root; the default is the paper's
    12 (2 styles x 6); a re-run writes nothing."""
    from hndesc_features.training import stylize

    for img in paper_data["images"]:
        root = paper_data["megadepth"] if paper_data["megadepth"] in img.parents else paper_data["phototourism"]
        copies = stylize.stylized_versions(Path(f"{root}-stylized"), img.relative_to(root))
        assert len(copies) == 4 and {c.name.split("_")[0] for c in copies} == {"dusk", "night"}, img
        a, b = cv2.imread(str(img)), cv2.imread(str(copies[0]))
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 5  # restyled, same grid
    jobs = stylize.config_jobs(f"{PAPER}/r2d2_ca_st_megadepth_phototourism")
    assert sum(len(imgs) for imgs, _ in jobs) == len(paper_data["images"])
    res = stylize.stylize_images(jobs[0][0], jobs[0][1], None, ["dusk", "night"], 2)  # complete: no stylizer call
    assert res == {"written": 0, "skipped": 0}
    one = tmp_path / "one"
    assert stylize.main([str(paper_data["images"][0]), "--output", str(one)]) == 0
    assert len(stylize.stylized_versions(one, paper_data["images"][0].name)) == 12  # the paper's 2 x 6


def test_pregenerated_copy_is_warped_into_view1(paper_data):
    """The trainer reads a stylized copy through the sample's own image→view-1 homography: its edges
    stay where the unstylized view 1 has them."""
    from hndesc_features.training.config import load_config
    from hndesc_features.training.datasets import build_dataset
    from hndesc_features.training.pipelines.hndesc import _stylize_view1

    conf = load_config(f"{PAPER}/caps_ca_st_megadepth", ["data.homography.size=128"])
    ds = build_dataset(conf["data"])
    sample = ds[(0, 5)]
    sconf = {**conf["loss"]["stylize"], "p": 1.0, "styles": None}
    st = _stylize_view1(sample, sconf, np.random.default_rng(0))
    v1 = sample["view1"]
    assert not torch.allclose(st, v1)
    g = lambda t: cv2.Canny((t.mean(0).numpy() * 255).astype(np.uint8), 50, 150) > 0  # noqa: E731
    e0, e1 = g(v1), g(st)
    near = cv2.dilate(e0.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert (e1 & near).sum() > 0.6 * e1.sum()  # edges of the stylized crop lie on the crop's own edges


def test_neighbour_files(paper_data):
    """gd (NetVLAD) and selfgd (the backbone's pooled features) neighbours, beside MegaDepth, for every
    training image; KNNIndex maps them onto the training paths."""
    from hndesc_features.training.datasets.megadepth import megadepth_images
    from hndesc_features.training.knn import KNNIndex

    train = [str(p) for p in megadepth_images(paper_data["megadepth"])]
    for f in ("neighbours-netvlad.txt", "neighbours-self.txt"):
        path = paper_data["megadepth"] / f
        idx = KNNIndex(path, train, k=5)
        assert set(idx.neighbours) == set(train)
        assert all(len(v) == min(5, len(train) - 1) and q not in v for q, v in idx.neighbours.items())
    assert (paper_data["megadepth"] / "neighbours-netvlad.netvlad.h5").is_file()


@pytest.mark.parametrize("name", paper_configs())
def test_paper_config_trains_two_steps_and_exports(paper_data, name, tmp_path, monkeypatch):
    from hndesc_features.confs import get_feature_conf
    from hndesc_features.extractors import load_model
    from hndesc_features.training.config import load_config
    from hndesc_features.training.export import export_run
    from hndesc_features.training.trainer import run

    conf = load_config(f"{PAPER}/{name.split('/')[-1]}", SMOKE)
    out = tmp_path / "run"
    summary = run(conf, out)
    assert summary["finished"] and summary["step"] == 2
    logs = [ln for ln in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in ln]
    assert len(logs) == 2 and all("images_per_s" in ln for ln in logs)
    if conf["loss"].get("mining") == "gd":
        import json

        assert json.loads(logs[-1])["extra_negs"] > 0  # keypoints of neighbour crops joined the negatives
    backbone = conf["model"]["name"].split("_")[-1]
    monkeypatch.setenv("HNDESC_WEIGHTS_DIR", str(tmp_path / "weights"))
    exported = export_run(out, name=f"hndesc_{backbone}")
    assert exported == tmp_path / "weights" / f"hndesc_{backbone}.pt"
    model = load_model(get_feature_conf(f"hndesc_{backbone}")["model"]).eval()
    ck = torch.load(out / "checkpoint_last.pt", weights_only=True)
    key = next(k for k in ck["model"] if k.endswith("weight"))
    assert torch.equal(model.net.state_dict()[key], ck["model"][key])  # the conf runs the trained weights
    img = cv2.resize(cv2.imread(str(paper_data["images"][0])), (160, 120))[:, :, ::-1].copy()
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        pred = model({"image": x})
    assert pred["descriptors"].shape[1] == 128 and pred["keypoints"].shape[1] > 20


def test_caps_encoder_starts_from_a_torchvision_resnet50_file(paper_data, tmp_path):
    """train.init_weights = torchvision's ResNet-50 state dict (the paper's ImageNet start): conv1 / bn1 /
    layer1-3 fill the encoder, layer4 / fc are ignored, the decoder keeps its initialisation; another
    file is refused with a message naming what is missing."""
    from hndesc_features.models.hndesc_caps import HNDescCAPS
    from hndesc_features.training.config import load_config
    from hndesc_features.training.trainer import Trainer

    torch.manual_seed(7)
    ref = HNDescCAPS()
    names = {"firstconv.": "conv1.", "firstbn.": "bn1."}
    tv = {}
    for k, v in ref.state_dict().items():
        if k.split(".")[0] in ("firstconv", "firstbn", "layer1", "layer2", "layer3"):
            p = next((a for a in names if k.startswith(a)), "")
            tv[names.get(p, "") + k[len(p):]] = v.clone()
    tv["layer4.0.conv1.weight"], tv["fc.weight"] = torch.zeros(512, 1024, 1, 1), torch.zeros(1000, 2048)
    torch.save(tv, tmp_path / "resnet50.pth")
    conf = load_config(f"{PAPER}/caps_ca_st_megadepth", SMOKE + [f"train.init_weights={tmp_path / 'resnet50.pth'}"])
    tr = Trainer(conf, tmp_path / "run")
    assert torch.equal(tr.model.layer3[5].conv3.weight, ref.layer3[5].conv3.weight)
    assert torch.equal(tr.model.firstbn.running_var, ref.firstbn.running_var)
    assert not torch.equal(tr.model.iconv2.conv.weight, ref.iconv2.conv.weight)  # decoder: its own init
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "other.pth")
    bad = load_config(f"{PAPER}/caps_ca_st_megadepth", SMOKE + [f"train.init_weights={tmp_path / 'other.pth'}"])
    with pytest.raises(ValueError, match="not a torchvision ResNet-50 state dict"):
        Trainer(bad, tmp_path / "run2")


@pytest.mark.heavy(10)
def test_caps_row_under_torchrun_two_processes(paper_data, tmp_path):
    """DDP (gloo on CPU, NCCL on GPUs): the CAPS gd row with its unused conv_coarse
    (train.find_unused_parameters) trains 2 steps on 2 processes with identical weights."""
    import json

    cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "hndesc_features.training.train", f"{PAPER}/caps_ca_st_gd_megadepth", "--output", str(tmp_path / "ddp"),
           *SMOKE]
    r = run_py(cmd, env_extra={"OMP_NUM_THREADS": "1"}, cwd=Path(__file__).resolve().parents[1], check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    a, b = summary["param_checksums"]
    assert a == b and summary["last"]["extra_negs"] > 0


def test_r2d2_row_under_bf16_autocast_on_cpu(paper_data, tmp_path):
    """The AMP path of the HNDesc loss (dense map cast back to float32 before sampling and AP) runs under
    bf16 autocast, here on CPU: finite loss and AP, float32 exported weights."""
    import json

    from hndesc_features.training.config import load_config
    from hndesc_features.training.trainer import run

    s = run(load_config(f"{PAPER}/r2d2_ca_st_megadepth", SMOKE + ["train.amp=bf16"]), tmp_path / "bf16")
    assert s["finished"]
    recs = [json.loads(x) for x in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and 0 < r["ap"] <= 1 for r in recs if r["split"] == "train")
    obj = torch.load(tmp_path / "bf16" / "hndesc_r2d2_ca_st_megadepth.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in obj["state_dict"].values() if v.is_floating_point())
