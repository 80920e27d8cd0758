"""benchmarks.speed (one tiny run, no timing assertions) and sharded extraction with torchrun on
2 CPU processes: the merged file equals a single-process extraction."""
from __future__ import annotations

import json
import socket

import h5py
import numpy as np
import pytest

from benchmarks.common import available_confs, shared_data_dir
from conftest import ROOT, read_h5, run_py

DATA = shared_data_dir()


def _our_sift_conf():
    if "rootsift" not in available_confs("feature"):
        pytest.skip("our rootsift conf is not available")
    return "rootsift"


@pytest.mark.heavy(10)
def test_speed_tiny_run(tmp_path):
    from benchmarks import speed
    from benchmarks.make_dev_hpatches import heldout_sources

    conf = _our_sift_conf()
    srcs = heldout_sources()
    if not srcs:
        pytest.skip("no held-out photo available")
    out = tmp_path / "speed.json"
    res = speed.main(["--conf", conf, "--sizes", "200", "--devices", "cpu,cuda", "--iters", "1",
                      "--warmup", "0", "--threads", "1", "--image", str(srcs[0]), "--output", str(out),
                      "--rounds", "2"])
    data = json.loads(out.read_text())
    rows = {(r["conf"], r["device"], r["size"]): r for r in data["results"]}
    assert ("opencv-sift", "cpu", 200) in rows and (conf, "cpu", 200) in rows
    for r in data["results"]:
        assert "error" not in r, r
        assert r["images_per_s"] > 0 and r["peak_rss_mib"] > 0 and r["threads"] == 1
        assert max(r["image_size"]) == r["size"]
        assert r["speed_vs_sift"] == pytest.approx(r["images_per_s"] / rows[("opencv-sift", "cpu", r["size"])]["images_per_s"])
        assert r["cpu_ms_per_image"] > 0
    # times relative to the reference conf (rootsift): 1 for itself
    assert data["reference"] == conf and data["rounds"] == 2 and len(data["results"]) == len(rows)
    assert rows[(conf, "cpu", 200)]["time_vs_ref"] == rows[(conf, "cpu", 200)]["cpu_time_vs_ref"] == 1.0
    if not data["machine"]["cuda"]:
        assert not any(r["device"] == "cuda" for r in data["results"])
    md = out.with_suffix(".md").read_text()
    assert "×SIFT" in md and f"CPU time ×{conf}" in md and "best of 2 interleaved rounds" in md


def test_speed_whole_hloc_cli_processes(tmp_path):
    """--image_dir: one whole `python -m hloc.extract_features` process per conf and round, CPU and peak RSS
    from the child's rusage, ratios to the reference per round (no timing assertion)."""
    pytest.importorskip("hloc", reason="--image_dir times hloc's CLI")
    from benchmarks import speed
    from benchmarks.make_dev_hpatches import heldout_sources

    srcs = heldout_sources()
    if not srcs:
        pytest.skip("no held-out photo available")
    import cv2

    d = tmp_path / "imgs"
    d.mkdir()
    for i, p in enumerate(srcs[:2]):
        img = cv2.imread(str(p))
        cv2.imwrite(str(d / f"{i}.jpg"), cv2.resize(img, (320, round(320 * img.shape[0] / img.shape[1]))))
    out = tmp_path / "speed.json"
    res = speed.main(["--conf", "rootsift", "--image_dir", str(d), "--rounds", "2", "--output", str(out)])
    assert res["mode"] == "cli" and res["images"] == 2 and res["reference"] == "rootsift"
    (row,) = res["results"]
    assert row["conf"] == "rootsift" and len(row["rounds"]) == 2
    assert all(r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_mib"] > 100 for r in row["rounds"])  # torch is loaded
    assert row["time_vs_ref"] == row["cpu_time_vs_ref"] == 1.0 and 0 < row["mean_keypoints"] <= 4096
    assert "wall ×rootsift" in out.with_suffix(".md").read_text()
    with pytest.raises(speed.BenchmarkError, match="not among hloc"):
        speed.main(["--conf", "no_such_conf", "--image_dir", str(d), "--output", str(out)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    if DATA is None or not (DATA / "sacre_coeur" / "mapping").is_dir():
        pytest.skip("../shared/data/sacre_coeur is missing")
    d = tmp_path_factory.mktemp("dist") / "img"
    import cv2

    files = sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg"))[:5]
    for i, f in enumerate(files):
        img = cv2.imread(str(f))
        img = cv2.resize(img, (img.shape[1] // 3, img.shape[0] // 3), interpolation=cv2.INTER_AREA)
        sub = d / ("nested/deeper" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sub / f.name), img)
    return d


def _torchrun(args, nproc=2, timeout=300):
    cmd = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "hndesc_features.extract_features", *map(str, args)]
    return run_py(cmd, env_extra={"OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=timeout, check=False)


def test_sharded_extraction_equals_single_process(images, tmp_path):
    conf = _our_sift_conf()
    p = _torchrun(["--conf", conf, "--image_dir", images, "--export_dir", tmp_path / "sharded"])
    assert p.returncode == 0, p.stderr[-3000:]
    from hndesc_features.extract_features import cli

    cli(["--conf", conf, "--image_dir", str(images), "--export_dir", str(tmp_path / "single")])  # one process
    a = list((tmp_path / "sharded").glob("*.h5"))
    b = list((tmp_path / "single").glob("*.h5"))
    assert len(a) == 1 and len(b) == 1 and a[0].name == b[0].name  # shards merged and removed
    ga, gb = read_h5(a[0]), read_h5(b[0])
    assert sorted(ga) == sorted(gb) and any(k.startswith("nested/deeper/") for k in ga)
    for k in ga:
        assert ga[k][0].dtype == gb[k][0].dtype and np.array_equal(ga[k][0], gb[k][0]), k
        assert ga[k][1].keys() == gb[k][1].keys()


def test_sharded_resume_and_merge_of_leftover_shards(images, tmp_path):
    """A killed earlier run (other world size) left a shard: the next run merges it and only
    extracts the rest."""
    from hndesc_features.distributed import find_shards, merge_shards, shard_path
    from hndesc_features.extract_features import main as extract_main
    from benchmarks.common import resolve_feature_conf

    conf_name = _our_sift_conf()
    conf = resolve_feature_conf(conf_name)
    out = tmp_path / "out"
    final = out / (conf["output"] + ".h5")
    names = sorted(str(p.relative_to(images)) for p in images.rglob("*.jpg"))
    leftover = shard_path(final, 2, 3)
    extract_main(conf, images, image_list=names[:2], feature_path=leftover, as_half=False)
    assert find_shards(final) == [leftover]
    p = _torchrun(["--conf", conf_name, "--image_dir", images, "--export_dir", out])
    assert p.returncode == 0, p.stderr[-3000:]
    assert find_shards(final) == [] and final.exists()
    with h5py.File(final, "r") as fd:
        for n in names:
            assert n in fd and "keypoints" in fd[n]
    # merge_shards replaces groups of the same name, keeps the others
    extra = shard_path(final, 0, 1)
    extract_main(conf, images, image_list=names[:1], feature_path=extra, as_half=True)
    assert merge_shards(final) == 1
    with h5py.File(final, "r") as fd:
        assert fd[names[0]]["descriptors"].dtype == np.float16
        assert fd[names[1]]["descriptors"].dtype != np.float16
        assert len([1 for n in names if n in fd]) == len(names)
