"""HNDesc dense descriptors (Melekhov et al., 3DV 2021) sampled at keypoints. hloc name: hf_hndesc.

HNDesc is a descriptor only; keypoints come from
- ``keypoints: "dog"`` (default): OpenCV DoG (SIFT detector), top ``max_keypoints`` by response,
  contrast threshold ``contrast_threshold`` (0.005), orientation duplicates merged;
- ``keypoints: <path to an hloc features .h5>``: the keypoints (and scores) another extractor
  stored for the same image (e.g. SuperPoint, as in the paper). They are looked up by image name,
  which hloc's own ``extract_features`` does not pass to models: use
  ``python -m hndesc_features.extract_features`` (it passes ``data["name"]``) for this option.

Backbones (``backbone``): ``patch`` (our CPU-trainable network on DoG-frame patches: rotation and
scale from the detector, the conf ``hndesc``), ``small`` (our CPU-trainable dense network), ``caps`` and
``r2d2`` (the paper's; load the released checkpoints from the HNDesc repository with ``weights``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hndesc_features.base_model import BaseModel
from hndesc_features.handcrafted import detect_sift, keypoint_frames, to_gray_u8
from hndesc_features.models.hndesc_caps import HNDescCAPS, load_state, state_dict_of
from hndesc_features.models.hndesc_patch import HNDescPatch
from hndesc_features.models.hndesc_r2d2 import HNDescR2D2
from hndesc_features.models.hndesc_small import HNDescSmall
from hndesc_features.models.sampling import sample_descriptors

BACKBONES = {"small": HNDescSmall, "patch": HNDescPatch, "caps": HNDescCAPS, "r2d2": HNDescR2D2}
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_WEIGHTS = {"small": WEIGHTS_DIR / "hndesc_small.pt", "patch": WEIGHTS_DIR / "hndesc_patch.pt"}
RELEASED = "https://github.com/imelekhov/HNDesc (README: 'The pretrained models are available here')"


def build_backbone(name: str) -> torch.nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"Unknown HNDesc backbone '{name}'; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]()


def resolve_weights(backbone: str, weights) -> Path:
    if weights is None:
        if backbone not in DEFAULT_WEIGHTS:
            raise FileNotFoundError(
                f"HNDesc backbone '{backbone}' has no shipped weights: download the released "
                f"checkpoint from {RELEASED} and pass its path as model.weights.")
        path = DEFAULT_WEIGHTS[backbone]
        if not path.is_file():
            raise FileNotFoundError(
                f"HNDesc weights not found at {path}. They are produced by training: "
                f"`python -m training.train {path.stem} --output runs/{path.stem}` "
                f"(from the repository root), then copy runs/{path.stem}/{path.name} "
                "there; or pass model.weights=<path to a checkpoint>.")
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"HNDesc weights not found at {path}. For backbone '{backbone}' use a checkpoint "
            f"trained with confs/train/hndesc_*.yaml or a released one from {RELEASED}.")
    return path


def load_hndesc(backbone: str, weights=None) -> torch.nn.Module:
    """Backbone with its weights, in eval mode.

    Accepts our exported weights (``hndesc_features.weights/1``: arch + conf + state_dict, as the
    trainer writes them) and the released HNDesc checkpoints (``{"state_dict": ...}``, possibly
    with ``module.`` / ``net.`` prefixes) or a bare state dict.
    """
    from hndesc_features.models.checkpoints import FORMAT, CheckpointError, build_model, safe_load

    path = resolve_weights(backbone, weights)
    obj = safe_load(path, "HNDesc weights")
    if obj.get("format") == FORMAT:
        arch = f"hndesc_{backbone}"
        if obj.get("arch") != arch:
            raise CheckpointError(f"'{path}' holds weights of architecture '{obj.get('arch')}', "
                                  f"but backbone '{backbone}' ({arch}) was requested")
        model = build_model(arch, obj.get("conf", {}))
        state = obj["state_dict"]
    else:
        model = build_backbone(backbone)
        state = state_dict_of(obj, str(path))
    return load_state(model, state, str(path)).eval()


class HNDesc(BaseModel):
    default_conf = {
        "backbone": "small",  # small | caps | r2d2
        "weights": None,  # None → hndesc_features/weights/hndesc_<backbone>.pt (small only)
        "max_keypoints": 4096,
        "keypoints": "dog",  # "dog" or a path to an hloc features .h5
        "contrast_threshold": 0.005,
        "sampling": None,  # None → the backbone's convention ("hndesc" for caps/r2d2)
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        self.net = load_hndesc(conf["backbone"], conf["weights"])
        self.sampling = conf["sampling"] or self.net.sampling
        self.patch_based = bool(getattr(self.net, "patch_based", False))
        kp = conf["keypoints"]
        if self.patch_based and kp != "dog":
            raise ValueError("HNDesc backbone 'patch' describes DoG keypoint frames (size, orientation); "
                             "model.keypoints must be 'dog' (keypoints from an .h5 have no frames)")
        self.kp_h5 = None
        if kp != "dog":
            self.kp_h5 = Path(kp).expanduser()
            if not self.kp_h5.is_file():
                raise FileNotFoundError(
                    f"model.keypoints must be 'dog' or an existing hloc features .h5; got {kp}")

    # ------------------------------------------------------------------ keypoints
    def _dog(self, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        img = image.permute(1, 2, 0).cpu().numpy()
        img = img[..., 0] if img.shape[-1] == 1 else img
        if self.patch_based:  # orientation duplicates kept: each gets its own rotated patch, as in SIFT
            feats = detect_sift(to_gray_u8(img), self.conf["max_keypoints"], self.conf["contrast_threshold"],
                                compute=False)
            return keypoint_frames(feats), feats["scores"]
        # upright=True merges the orientation duplicates of a DoG point: HNDesc descriptors do not
        # depend on orientation, so duplicates would be identical and break mutual matching
        feats = detect_sift(to_gray_u8(img), self.conf["max_keypoints"], self.conf["contrast_threshold"],
                            upright=True)
        return feats["keypoints"], feats["scores"]

    def _from_h5(self, name: str, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        import h5py

        with h5py.File(str(self.kp_h5), "r", libver="latest") as f:
            if name not in f:
                raise KeyError(f"Image '{name}' has no features in {self.kp_h5}")
            grp = f[name]
            kpts = grp["keypoints"][()].astype(np.float32)
            sc = next((grp[k][()] for k in ("scores", "keypoint_scores") if k in grp), None)
            scores = np.ones(len(kpts), np.float32) if sc is None else sc.astype(np.float32)
            size = grp["image_size"][()] if "image_size" in grp else None
        if size is not None:  # stored in original resolution: back to the network input's
            H, W = hw
            sx, sy = float(size[0]) / W, float(size[1]) / H
            kpts = np.stack([(kpts[:, 0] + 0.5) / sx - 0.5, (kpts[:, 1] + 0.5) / sy - 0.5], -1)
        order = np.argsort(-scores, kind="stable")
        if self.conf["max_keypoints"] and self.conf["max_keypoints"] > 0:
            order = order[: self.conf["max_keypoints"]]
        return kpts[order].astype(np.float32), scores[order]

    # ------------------------------------------------------------------ forward
    def _forward(self, data):
        image = data["image"]
        B, _, H, W = image.shape
        names = data.get("name")
        if self.kp_h5 is not None:
            if names is None:
                raise ValueError(
                    "model.keypoints is an .h5 file: keypoints are looked up by image name, which "
                    "hloc's extract_features does not pass; run `python -m "
                    "hndesc_features.extract_features` instead.")
            names = [names] if isinstance(names, str) else list(names)
        kps, scs = [], []
        for b in range(B):
            k, s = self._dog(image[b]) if self.kp_h5 is None else self._from_h5(names[b], (H, W))
            kps.append(k)
            scs.append(s)
        n = min(len(k) for k in kps)
        kpts = torch.from_numpy(np.stack([k[:n] for k in kps])).to(image.device).float()
        scores = torch.from_numpy(np.stack([s[:n] for s in scs])).to(image.device).float()
        x = image.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.patch_based:
            desc = torch.stack([self.net.describe(x[b], kpts[b]).t() for b in range(B)])
            return {"keypoints": kpts[..., :2].contiguous(), "scores": scores, "descriptors": desc,
                    "scales": kpts[..., 2], "oris": kpts[..., 3]}
        dense = self.net(x)
        desc = sample_descriptors(dense, kpts, (H, W), self.sampling, stride=self.net.stride)
        return {"keypoints": kpts, "scores": scores, "descriptors": desc}
