"""HNDesc ablations (the paper's Tables: mining in_pair / in_batch / gd / selfgd; colour
augmentation vs stylization vs both), trained with the short schedule of
``confs/train/hndesc_ablation/`` and measured with the HPatches MMA protocol.

    python -m benchmarks.experiments.hndesc_ablation --dataset_dir datasets/dev-hpatches \\
        --output benchmarks/results/hndesc_ablation.json [--only in_pair,gd] [--max_keypoints 1024]

For every ablation: ``python -m hndesc_features.training.train hndesc_ablation/<name> --output <runs>/<name> --resume``
(a finished run is reused, an interrupted one resumed), then its exported weights are evaluated
through the same extraction + mutual-NN MMA code as ``benchmarks.hpatches`` (DoG keypoints, top
``--max_keypoints``). ``gd`` needs the kNN file named in its config; it is written first with
``python -m hndesc_features.training.knn`` when missing. Writes the JSON, a Markdown table and an MMA plot.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from ..common import BenchmarkError, logger, run_cli, write_json
from ..hpatches import D2NET_EXCLUDED, dataset_root, list_sequences, plot_mma, run_conf

REPO = Path(__file__).resolve().parents[2]
ABLATIONS = {  # name → (group, what changes)
    "in_pair": ("mining", "negatives from the anchor's pair only"),
    "in_batch": ("mining", "negatives from the other pairs of the batch"),
    "in_batch_pair": ("mining", "the whole batch, own pair included (shipped recipe)"),
    "gd": ("mining", "+ neighbour images from a global-descriptor kNN file"),
    "selfgd": ("mining", "+ neighbour images from the model's own pooled descriptors"),
    "color_only": ("photometric", "colour augmentation, no stylization"),
    "style_only": ("photometric", "stylization, no colour augmentation"),
}


def train(name: str, runs: Path) -> Path:
    """Train (or resume / reuse) one ablation; returns its exported weights."""
    from hndesc_features.training.config import load_config

    conf = load_config(f"hndesc_ablation/{name}")
    out = runs / name
    knn = (conf["loss"].get("gd") or {}).get("knn_file")
    if conf["loss"]["mining"] == "gd" and knn and not (REPO / knn).is_file():
        logger.info(f"{name}: writing the kNN file {knn}")
        subprocess.run([sys.executable, "-m", "hndesc_features.training.knn", "--output", knn], cwd=REPO, check=True)
    summary = out / "summary.json"
    if not (summary.is_file() and json.loads(summary.read_text()).get("finished")):
        cmd = [sys.executable, "-m", "hndesc_features.training.train", f"hndesc_ablation/{name}", "--output", str(out)]
        if (out / "checkpoint_last.pt").is_file():
            cmd.append("--resume")
        logger.info("$ " + " ".join(cmd))
        subprocess.run(cmd, cwd=REPO, check=True)
    weights = out / f"{conf['name']}.pt"
    if not weights.is_file():
        raise BenchmarkError(f"{name}: training finished without exporting {weights}")
    return weights


def feature_conf(name: str, weights: Path, max_keypoints: int, folder: Path) -> Path:
    path = folder / f"hndesc_abl_{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "output": f"feats-hndesc-abl-{name}-n{max_keypoints}",
        "model": {"name": "hf_hndesc", "backbone": "patch", "weights": str(weights.resolve()),
                  "max_keypoints": max_keypoints},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    }))
    return path


def untrained_weights(folder: Path, seed: int = 0) -> Path:
    """The patch backbone at its initialisation (torch seed 0): the reference every ablation
    starts from — a random CNN on frame-normalised patches is already a usable descriptor."""
    import torch

    from hndesc_features.models.checkpoints import build_model, export_weights
    from hndesc_features.training.config import load_config

    path = folder / "hndesc_patch_untrained.pt"
    if not path.is_file():
        torch.manual_seed(seed)
        net = build_model("hndesc_patch", load_config("hndesc_ablation/in_batch_pair")["model"])
        path.parent.mkdir(parents=True, exist_ok=True)
        export_weights(path, "hndesc_patch", dict(net.conf), net.state_dict(), {"note": f"untrained, torch seed {seed}"})
    return path


def rootsift_conf(max_keypoints: int, folder: Path) -> Path:
    from ..common import resolve_feature_conf

    conf = resolve_feature_conf("rootsift")
    conf["model"]["max_keypoints"] = max_keypoints
    conf["output"] = f"feats-rootsift-n{max_keypoints}"
    path = folder / "rootsift.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(conf))
    return path


def markdown(rows: list[dict], dataset: str, max_keypoints: int) -> str:
    lines = [f"# HNDesc ablations ({dataset}; {max_keypoints} DoG keypoints, mutual NN, MMA)", "",
             "Short runs (confs/train/hndesc_ablation/, 100 steps on 2 CPU cores): compare rows with "
             "each other, not with the shipped model.", "",
             "| group | ablation | what | MMA@1 | MMA@3 | MMA@3 illum. | MMA@3 view. | #matches |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["mma"]
        lines.append(f"| {r['group']} | {r['name']} | {r['what']} | {m['all'][0]:.3f} | {m['all'][2]:.3f} | "
                     f"{m['i'][2]:.3f} | {m['v'][2]:.3f} | {r['matches']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.experiments.hndesc_ablation", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--dataset_dir", type=Path, required=True, help="folder in HPatches layout")
    p.add_argument("--output", type=Path, required=True, help="results JSON (.md and _mma.png beside it)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "hndesc_ablation")
    p.add_argument("--only", help="comma-separated subset of " + ",".join(ABLATIONS))
    p.add_argument("--max_keypoints", type=int, default=1024)
    p.add_argument("--no_baselines", action="store_true",
                   help="skip the reference rows (RootSIFT and the untrained patch network)")
    a = p.parse_args(argv)
    names = list(ABLATIONS) if not a.only else [n.strip() for n in a.only.split(",") if n.strip()]
    bad = [n for n in names if n not in ABLATIONS]
    if bad:
        raise BenchmarkError(f"Unknown ablation(s) {bad}; choose from {', '.join(ABLATIONS)}.")
    root = dataset_root(a.dataset_dir)
    seqs = list_sequences(root, exclude=D2NET_EXCLUDED)
    work = a.output.with_name(a.output.stem + "_work")
    results, rows = {}, []

    def summary() -> dict:
        return {"dataset": str(root), "sequences": len(seqs), "max_keypoints": a.max_keypoints, "rows": rows}

    jobs = [] if a.no_baselines else [
        ("rootsift", "reference", "RootSIFT on the same DoG keypoints", lambda: rootsift_conf(a.max_keypoints, work / "confs")),
        ("untrained", "reference", "the patch network at initialisation (no training)",
         lambda: feature_conf("untrained", untrained_weights(work), a.max_keypoints, work / "confs"))]
    jobs += [(n, *ABLATIONS[n], (lambda n=n: feature_conf(n, train(n, a.runs), a.max_keypoints, work / "confs")))
             for n in names]
    for name, group, what, make_conf in jobs:
        conf = make_conf()
        res = run_conf(str(conf), root, seqs, work, ["mma"])
        results[name] = res
        weights = yaml.safe_load(Path(conf).read_text())["model"].get("weights")
        rows.append({"name": name, "group": group, "what": what, "mma": res["mma"],
                     "matches": res["mma_details"]["mean_num_matches"]["all"],
                     "weights": str(weights)})
        write_json(a.output, dict(summary(), partial=True))  # a cut-off run keeps what it measured
    out = summary()
    write_json(a.output, out)
    md = markdown(rows, str(root), a.max_keypoints)
    a.output.with_suffix(".md").write_text(md)
    plot_mma(results, a.output.with_name(a.output.stem + "_mma.png"))
    print(md)
    return out


if __name__ == "__main__":
    run_cli(main)
