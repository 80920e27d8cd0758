"""The README's hloc block runs verbatim, and the test command in the README is the one CI runs."""
from __future__ import annotations

import re
import shlex

import h5py

from conftest import ROOT, requires_hloc, run_py


def _block(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {name}:begin -->\s*```bash\n(.*?)```\s*<!-- {name}:end -->", text, re.S)
    assert m, f"README has no {name} block"
    return m.group(1)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme and "pytest" in ci and "hloc-1.5-py3-none-any.whl" in ci
    assert len(readme.splitlines()) <= 250


@requires_hloc
def test_readme_hloc_block_runs_verbatim(tmp_path, two_photos):
    import shutil

    shutil.copytree(two_photos, tmp_path / "images")
    lines = [ln for ln in _block("hloc-usage").splitlines() if ln.strip()]
    assert len(lines) == 3
    for line in lines:
        args = shlex.split(line)
        assert args[:2] == ["python", "-m"], line
        run_py(args[1:], cwd=tmp_path)
    pairs = (tmp_path / "outputs" / "pairs.txt").read_text().split()
    assert sorted(pairs) == ["motorcycle_left.jpg", "motorcycle_right.jpg"]
    matches = next((tmp_path / "outputs").glob("*NN-mutual*pairs.h5"))
    with h5py.File(matches) as f:
        grp = f[next(iter(f))]
        m0 = grp[next(iter(grp))]["matches0"][()]
    assert (m0 > -1).sum() > 100  # the two motorcycle photos share a lot


#: the paper's confs and the ones this test runs in their place (same descriptors on DoG keypoints)
PAPER_CONFS = {"hndesc_caps_sp,hndesc_r2d2_sp": "hndesc_caps", "hndesc_caps_sp": "hndesc_caps",
               "hndesc_r2d2_sp": "hndesc_r2d2"}


def _released_weights(name: str, path):
    """Random weights saved in the released layout of `name` (HNDesc: {"state_dict"} with CAPS's
    `net.` prefix for caps; SuperPoint: magicleap's bare state dict)."""
    import torch

    from hndesc_features import weights as registry
    from hndesc_features.models.checkpoints import build_model

    torch.manual_seed(0)
    net = build_model(registry.REGISTRY[name].arch)
    sd = net.state_dict()
    if name == "hndesc_caps":
        sd = {f"net.{k}": v for k, v in sd.items()}
    torch.save(sd if name == "superpoint" else {"state_dict": sd}, path)


@requires_hloc
def test_readme_reproduce_the_paper_block_runs(tmp_path, shared_data):
    """The "Reproduce the paper" commands, verbatim but for: the tiny dataset layouts in their
    datasets/ folders, random weights in the released layouts, no download, the paper's confs run
    as their DoG twins until they exist, and --pairs instead of NetVLAD retrieval (offline)."""
    import json

    from benchmarks.make_dev_hpatches import heldout_sources, make_dev_hpatches
    from benchmarks.tiny_datasets import make_tiny_aachen, make_tiny_inloc, make_tiny_tokyo, small_conf_yaml
    from benchmarks.common import write_pairs
    from benchmarks.tokyo247 import find_layout as find_tokyo_layout
    from hndesc_features import weights as registry
    from hndesc_features.confs import feature_confs

    scene = shared_data / "strecha" / "Herz-Jesus-P8"
    ds = tmp_path / "datasets"
    sift = small_conf_yaml(tmp_path / "sift1k.yaml", 1024)
    make_dev_hpatches(ds / "hpatches-sequences-release", images=sorted(heldout_sources(), key=lambda p: p.name)[:1],
                      seed=3, max_size=320)
    pairs = {"aachen_v1_1": make_tiny_aachen(ds / "aachen_v1.1", scene, day=("0002.jpg",), night=("0003.jpg",),
                                             max_size=320, map_conf=str(sift))["pairs"],
             "inloc": make_tiny_inloc(ds / "inloc", scene, queries=("0002.jpg",), max_size=320,
                                      map_conf=str(sift))["pairs"]}
    make_tiny_tokyo(ds / "tokyo247", shared_data, max_size=320, per_place_db=2)
    lay = find_tokyo_layout(ds / "tokyo247")
    pairs["tokyo247"] = write_pairs(tmp_path / "shortlist.txt", [(q, d) for q in lay["q_names"] for d in lay["db_names"]])

    env = {registry.ENV_VAR: str(tmp_path / "weights"), "PYTHONPATH": str(ROOT)}
    confs = feature_confs()
    ran = []
    for line in [ln for ln in _block("paper").splitlines() if ln.strip()]:
        args = shlex.split(line)
        assert args[:2] == ["python", "-m"], line
        if "--download" in args:
            continue  # network
        if args[2:4] == ["hndesc_features.weights", "install"]:
            if args[4] not in registry.REGISTRY:
                continue  # a weights name this checkout does not define yet
            _released_weights(args[4], tmp_path / args[5])
        if "--conf" in args:
            i = args.index("--conf") + 1
            if not all(c in confs for c in args[i].split(",")):
                args[i] = PAPER_CONFS[args[i]]
        if args[2].startswith("benchmarks.") and args[2] != "benchmarks.hpatches":
            args += ["--pairs", str(pairs[args[2].split(".")[1]])]
        run_py(args[1:], env_extra=env, cwd=tmp_path)
        ran.append(args[2])
    assert ran.count("hndesc_features.weights") >= 2 and {"benchmarks.hpatches", "benchmarks.aachen_v1_1",
                                                          "benchmarks.inloc", "benchmarks.tokyo247"} <= set(ran)
    # the files the README tells users to read or upload (conf, retrieval tag as in this run)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Reproduce the paper"):readme.index("## More")]
    named = sorted(set(re.findall(r"`(outputs/[^`]+)`", section)))
    assert len(named) == 4, named
    conf = "hndesc_caps_sp" if "hndesc_caps_sp" in confs else PAPER_CONFS["hndesc_caps_sp"]
    for name in named:
        path = name.replace("hndesc_caps_sp", conf).replace("netvlad50", pairs["aachen_v1_1"].stem) \
            .replace("netvlad40", pairs["inloc"].stem)
        assert (tmp_path / path).is_file(), path
    md = (tmp_path / "outputs" / "hpatches_paper.md").read_text()
    assert "HNDesc paper's protocol" in md and f"| {conf} | all |" in md
    sub = tmp_path / "outputs/aachen_v1.1" / f"Aachen-v1.1_hloc_{conf}_NN-mutual_{pairs['aachen_v1_1'].stem}.txt"
    assert [len(ln.split()) for ln in sub.read_text().splitlines()] == [8, 8]  # both queries, server format
    tk = json.loads((tmp_path / f"outputs/tokyo247/results_{conf}_NN-mutual.json").read_text())
    assert tk["N"] == [1, 5, 10] and len(tk["recall"]) == 3
