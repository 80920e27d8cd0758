"""Quick probe of descriptor weights on the trainer's validation pairs (held-out photos, fixed
synthetic homographies), optionally with a photometric change on the second view — the check used
to compare training recipes against the handcrafted baseline and the untrained network.

    python -m benchmarks.experiments.val_probe --method hndesc_patch --weights untrained,runs/x/x.pt --photometric
    python -m benchmarks.experiments.val_probe --method kcc --weights untrained,hndesc_features/weights/kcc_orb.pt
    python -m benchmarks.experiments.val_probe --method residual --weights untrained,hndesc_features/weights/residual_sift.pt --diagnose

``--method hndesc_patch``: DoG frames + the patch backbone vs RootSIFT on the same detector
(val conf of confs/train/hndesc_patch.yaml, RGB). ``--method kcc`` (alias ``wlrn``): ORB keypoints + the KCC
network vs raw ORB (val conf of confs/train/kcc_orb.yaml on the held-out photos, grayscale).
``--method residual``: the residual model on its own handcrafted keypoints vs RootSIFT on the same
DoG detector (val conf of confs/train/residual_sift.yaml: scale 0.5–2, rotation ±45°, RGB).
``untrained`` = the network initialised as its training config does (torch seed 0), not trained. Mutual-NN MMA@1/3, RANSAC
homography accuracy @3 px and the number of matches, per weights file; 1024 keypoints, 640 px.
Photometric changes (severity 0.8) cycle through benchmarks.photometric's types, one per pair.

``--diagnose`` separates the descriptor from the detector, the two things MMA mixes:
- ``gt_nn@σ`` (hndesc_patch only: it needs a descriptor of arbitrary DoG frames): nearest-neighbour accuracy when view 1 gets the exact transfer of view 0's DoG frames
  (one per location) with the orientation jittered by N(0, σ°) — every keypoint has its correspondence;
- ``mnn_corr`` / ``mnn_nocorr``: with independently detected keypoints (the MMA protocol), the share of
  view-0 keypoints *with* a correspondence (a view-1 keypoint within 3 px of its true position) that are
  correctly mutual-NN matched, and the share of those *without* one that still get a (necessarily wrong)
  mutual match. MMA = correct / (correct + wrong), so it falls when ``mnn_nocorr`` rises even if the
  descriptor matches better (docs/hndesc.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..common import BenchmarkError, run_cli

KEYS = ("mma@1", "mma@3", "homography@3", "matches")
TRAIN_CONF = {"hndesc_patch": "hndesc_patch", "kcc": "kcc_orb", "wlrn": "kcc_orb", "residual": "residual_sift"}  # wlrn: alias of kcc
JITTERS = (0.0, 5.0, 10.0)


def _pairs(method: str, n_pairs: int, photometric: bool) -> list:
    from hndesc_features.training.config import load_config
    from hndesc_features.training.validation import make_pairs

    from ..photometric import PHOTOMETRIC_TYPES, apply_change, rng_for

    conf = load_config(TRAIN_CONF[method])["val"]
    conf = dict(conf, source={"name": "dev_images", "split": "heldout"}, n_pairs=n_pairs)
    pairs = make_pairs(conf)
    if photometric:
        for k, p in enumerate(pairs):
            v1 = (p["view1"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            gray = v1.shape[-1] == 1
            bgr = np.repeat(v1, 3, -1) if gray else np.ascontiguousarray(v1[..., ::-1])
            out = apply_change(bgr, PHOTOMETRIC_TYPES[k % len(PHOTOMETRIC_TYPES)], 0.8, rng_for(0, str(k)))
            out = out.mean(-1, keepdims=True) if gray else out[..., ::-1]
            p["view1"] = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float() / 255
    return pairs


def _baseline(method: str):
    from hndesc_features.handcrafted import binary_to_unit_float, detect_orb, detect_sift
    from hndesc_features.handcrafted import cv2_gray

    if method in ("hndesc_patch", "residual"):
        def rootsift(img):
            f = detect_sift(cv2_gray(img[0]), 1024, 0.005)
            return {"keypoints": torch.from_numpy(f["keypoints"]), "descriptors": torch.from_numpy(f["descriptors"])}
        return "rootsift", rootsift

    def orb(img):
        f = detect_orb((img[0, 0] * 255).round().numpy().astype(np.uint8), 1024)
        return {"keypoints": torch.from_numpy(f["keypoints"]),
                "descriptors": torch.from_numpy(binary_to_unit_float(f["descriptors"]))}
    return "orb", orb


def rootsift_at(image: torch.Tensor, frames: np.ndarray) -> np.ndarray:
    """RootSIFT computed by OpenCV at given frames (x, y, size, angle°) → N×128 unit vectors."""
    import cv2

    from hndesc_features.handcrafted import sift_to_rootsift
    from hndesc_features.handcrafted import cv2_gray

    kps = [cv2.KeyPoint(float(x), float(y), float(s), float(a)) for x, y, s, a in frames]
    _, d = cv2.SIFT_create().compute(cv2_gray(image), kps)
    if d is None or len(d) != len(frames):
        raise BenchmarkError("OpenCV SIFT dropped keypoints it was given")
    return sift_to_rootsift(d.astype(np.float32))


def _patch_net(weights: str):
    from hndesc_features import weights as registry
    from hndesc_features.models.checkpoints import build_model
    from hndesc_features.training.config import load_config

    if weights == "untrained":
        torch.manual_seed(0)
        return build_model("hndesc_patch", load_config("hndesc_patch")["model"]).eval()
    return registry.load_model(weights, "hndesc_patch")[0]


def _describer(weights: str):
    """hndesc_patch (or RootSIFT): (image 3×H×W, frames N×4) → N×D unit descriptors, for the exact-frame
    probe of --diagnose."""
    if weights == "rootsift":
        return rootsift_at
    net = _patch_net(weights)
    return lambda img, fr: net.describe(img, torch.from_numpy(np.asarray(fr, np.float32))).numpy()


def frame_probe(describe, pairs: list, jitters=JITTERS, max_keypoints: int = 1024, seed: int = 0) -> dict:
    """``gt_nn@σ``: NN accuracy of the descriptor given exact view-1 frames (orientation ± N(0, σ°))."""
    from hndesc_features.training.geometry.homography import transfer_frames
    from hndesc_features.handcrafted import cv2_gray, dog_frames
    from hndesc_features.training.pipelines.hndesc import in_valid

    rng = np.random.default_rng(seed)
    out = {}
    for sigma in jitters:
        acc = []
        for p in pairs:
            f0 = dog_frames(cv2_gray(p["view0"]), max_keypoints, 0.005, unique=True).astype(np.float64)
            f1 = transfer_frames(f0, np.asarray(p["H_0to1"], np.float64))
            ok = in_valid(f1, None, tuple(p["view1"].shape[-2:]))
            f0, f1 = f0[ok], f1[ok].copy()
            if len(f0) == 0:
                continue
            f1[:, 3] = (f1[:, 3] + rng.normal(0.0, float(sigma), len(f1))) % 360.0
            d0, d1 = describe(p["view0"], f0), describe(p["view1"], f1)
            acc.append(float(((d0 @ d1.T).argmax(1) == np.arange(len(f0))).mean()))
        out[f"gt_nn@{sigma:g}"] = float(np.mean(acc)) if acc else 0.0
    return out


def mutual_rates(extract, pairs: list, threshold: float = 3.0) -> dict:
    """``mnn_corr``: share of view-0 keypoints with a correspondence (a view-1 keypoint within
    ``threshold`` px of the true position) that are correctly mutual-NN matched; ``mnn_nocorr``: share
    of keypoints without one that get a mutual match anyway (all wrong). Counts from
    ``benchmarks.experiments.match_errors.pair_errors``, the HPatches protocol's own binning."""
    from .match_errors import pair_errors

    corr, nocorr = [], []
    for p in pairs:
        f0, f1 = ({"keypoints": f["keypoints"].double().numpy().reshape(-1, 2),
                   "descriptors": f["descriptors"].float().numpy()}
                  for f in (extract(p["view0"][None]), extract(p["view1"][None])))
        n0 = len(f0["keypoints"])
        if n0 == 0 or len(f1["keypoints"]) == 0:
            continue
        _, correct, wrong_no_corr, _, with_corr = pair_errors(f0, f1, np.asarray(p["H_0to1"], np.float64), threshold)
        if with_corr:
            corr.append(float(correct / with_corr))
        if n0 > with_corr:
            nocorr.append(float(wrong_no_corr / (n0 - with_corr)))
    return {"mnn_corr": float(np.mean(corr)) if corr else 0.0, "mnn_nocorr": float(np.mean(nocorr)) if nocorr else 0.0}


def _residual_net(weights: str):
    from hndesc_features.models.checkpoints import build_model, load_weights
    from hndesc_features.training.config import load_config

    if weights == "untrained":  # the residual initialisation of the training run (seed 0)
        torch.manual_seed(0)
        conf = {k: v for k, v in load_config("residual_sift")["model"].items() if k != "name"}
        return build_model("residual", conf).eval()
    return load_weights(weights, "residual")[0]


def _extractor(method: str, weights: str):
    if method == "residual":
        net = _residual_net(weights)

        def run_residual(img):
            f = net.extract(img, 1024)
            return {"keypoints": f["keypoints"], "descriptors": f["descriptors"]}
        return run_residual

    if method == "hndesc_patch":
        net = _patch_net(weights)
        return lambda img: net.extract(img, 1024)

    from hndesc_features import weights as registry
    from hndesc_features.models.kcc import KCCNet
    from hndesc_features.training.config import load_config

    torch.manual_seed(0)
    net = KCCNet(load_config("kcc_orb")["model"])  # the training run's initialisation scheme
    if weights != "untrained":
        net = registry.load_model(weights, "kcc")[0]
    net.eval()

    def run(img):
        f = net.extract(img, 1024)
        return {"keypoints": f["keypoints"], "descriptors": f["descriptors"]}
    return run


def main(argv=None) -> dict:
    from hndesc_features.training.validation import evaluate_pairs

    ap = argparse.ArgumentParser(prog="python -m benchmarks.experiments.val_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=sorted(TRAIN_CONF), required=True,
                    help="which model family to probe (kcc: the Markus KCC network; wlrn: alias of kcc)")
    ap.add_argument("--weights", required=True, help="comma-separated weights files and/or 'untrained'")
    ap.add_argument("--photometric", action="store_true", help="photometric change on the second view")
    ap.add_argument("--n_pairs", type=int, default=12, help='validation pairs to probe')
    ap.add_argument("--diagnose", action="store_true",
                    help="also mutual-NN rates of keypoints with/without a correspondence (and, for hndesc_patch, "
                         "NN accuracy given exact frames)")
    ap.add_argument("--output", type=Path, help="results JSON")
    a = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    pairs = _pairs(a.method, a.n_pairs, a.photometric)
    name, base = _baseline(a.method)
    rows = {name: base}
    rows.update({w: _extractor(a.method, w) for w in a.weights.split(",") if w.strip()})
    out = {}
    for n, fn in rows.items():
        r = evaluate_pairs(fn, pairs)
        out[n] = {k: round(float(r[k]), 4) for k in KEYS}
        if a.diagnose:
            r = mutual_rates(fn, pairs)
            if a.method == "hndesc_patch":
                r.update(frame_probe(_describer(n), pairs))
            out[n].update({k: round(v, 4) for k, v in r.items()})
        print(f"{n:60s} " + "  ".join(f"{k}={v:.3f}" for k, v in out[n].items()), flush=True)
    if a.output:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(json.dumps({"method": a.method, "photometric": a.photometric,
                                        "n_pairs": len(pairs), "rows": out}, indent=1))
    return out


if __name__ == "__main__":
    run_cli(main)
