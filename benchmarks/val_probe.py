"""Quick probe of descriptor weights on the trainer's validation pairs (held-out photos, fixed
synthetic homographies), optionally with a photometric change on the second view — the check used
to compare training recipes against the handcrafted baseline and the untrained network.

    python -m benchmarks.val_probe --method hndesc_patch --weights untrained,runs/x/x.pt --photometric
    python -m benchmarks.val_probe --method wlrn --weights untrained,hndesc_features/weights/wlrn_orb.pt

``--method hndesc_patch``: DoG frames + the patch backbone vs RootSIFT on the same detector
(val conf of confs/train/hndesc_patch.yaml, RGB). ``--method wlrn``: ORB keypoints + the wlrn
network vs raw ORB (val conf of confs/train/wlrn_orb.yaml on the held-out photos, grayscale).
``untrained`` = the network initialised as its training config does (torch seed 0), not trained. Mutual-NN MMA@1/3, RANSAC
homography accuracy @3 px and the number of matches, per weights file; 1024 keypoints, 640 px.
Photometric changes (severity 0.8) cycle through benchmarks.photometric's types, one per pair.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

KEYS = ("mma@1", "mma@3", "homography@3", "matches")


def _pairs(method: str, n_pairs: int, photometric: bool) -> list:
    from training.config import load_config
    from training.validation import make_pairs

    from .photometric import PHOTOMETRIC_TYPES, apply_change, rng_for

    conf = load_config("hndesc_patch" if method == "hndesc_patch" else "wlrn_orb")["val"]
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
    from training.losses.hndesc import cv2_gray

    if method == "hndesc_patch":
        def rootsift(img):
            f = detect_sift(cv2_gray(img[0]), 1024, 0.005)
            return {"keypoints": torch.from_numpy(f["keypoints"]), "descriptors": torch.from_numpy(f["descriptors"])}
        return "rootsift", rootsift

    def orb(img):
        f = detect_orb((img[0, 0] * 255).round().numpy().astype(np.uint8), 1024)
        return {"keypoints": torch.from_numpy(f["keypoints"]),
                "descriptors": torch.from_numpy(binary_to_unit_float(f["descriptors"]))}
    return "orb", orb


def _extractor(method: str, weights: str):
    if method == "hndesc_patch":
        from hndesc_features.extractors.hndesc import load_hndesc
        from hndesc_features.models.checkpoints import build_model
        from training.config import load_config
        from training.losses.hndesc import extract

        conf = load_config("hndesc_patch")
        if weights == "untrained":
            torch.manual_seed(0)
            net = build_model("hndesc_patch", conf["model"]).eval()
        else:
            net = load_hndesc("patch", weights)
        return lambda img: extract(net, img, conf, 1024)

    from hndesc_features.models.wlrn import WLRNet, describe_orb, load_wlrn_state_dict
    from training.config import load_config

    torch.manual_seed(0)
    net = WLRNet(load_config("wlrn_orb")["model"])  # the training run's initialisation scheme
    if weights != "untrained":
        load_wlrn_state_dict(net, weights)
    net.eval()

    def run(img):
        f = describe_orb(net, (img[0] * 255).round(), 1024, 1.5, True, 1024)
        return {"keypoints": f["keypoints"], "descriptors": f["descriptors"]}
    return run


def main(argv=None) -> dict:
    from training.validation import evaluate_pairs

    ap = argparse.ArgumentParser(prog="python -m benchmarks.val_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["hndesc_patch", "wlrn"], required=True)
    ap.add_argument("--weights", required=True, help="comma-separated weights files and/or 'untrained'")
    ap.add_argument("--photometric", action="store_true", help="photometric change on the second view")
    ap.add_argument("--n_pairs", type=int, default=12)
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
        print(f"{n:60s} " + "  ".join(f"{k}={out[n][k]:.3f}" for k in KEYS), flush=True)
    if a.output:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(json.dumps({"method": a.method, "photometric": a.photometric,
                                        "n_pairs": len(pairs), "rows": out}, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
