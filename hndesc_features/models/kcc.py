"""The Markuš et al. keypoint-correspondence (KCC / "wlrn") patch descriptor network.

Architecture of the released model `models/3x32x32_to_128.py` of nenadmarkus/wlrn (MIT), from
"Learning Local Descriptors by Optimizing the Keypoint-Correspondence Criterion"
(Markuš, Pandžić, Ahlberg, IEEE TIP 2019):

    3×32×32 patch in [0, 255] → /255
    conv1 3→32 k3 + ReLU           → 32×30×30
    conv2 32→64 k4 s2 + ReLU       → 64×14×14
    conv3 64→128 k3 (no ReLU)      → 128×12×12
    max-pool 2                     → 128×6×6
    conv4 1×1 128→32 (linear)      → 32×6×6
    conv5 32→128 k6 (linear)       → 128×1×1
    L2 normalisation               → 128-d unit vector

Parameter names (`conv1..conv5.{weight,bias}`) are those of the released state dicts, so a released
checkpoint loads with `load_kcc_state_dict`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hndesc_features.config import merge

PATCH_SIZE = 32
DESCRIPTOR_DIM = 128
KCC_KEYS = tuple(f"conv{i}.{p}" for i in range(1, 6) for p in ("weight", "bias"))


class KCCNet(nn.Module):
    """Patches B×C×32×32 (C = 1 or 3, values in [0, 255]) → descriptors B×128 (unit L2 norm).

    Grayscale patches (C = 1) are repeated to 3 channels, as in the reference.

    conf `init` (training only; weights files override it): "torch" = PyTorch's default layer
    initialisation (the reference's); "he" = He-normal weights, zero biases and zero-mean conv1
    filters. With "torch" the descriptors of all patches start almost identical (median cosine
    ≈ 0.98: every pair "matches" at the KCC threshold 0.8 ⇔ cosine 0.6) and the KCC loss sits on
    its plateau (= 1): use `center_outputs` (the trainer's `loss.center_init`) before training.
    """

    default_conf: dict = {"init": "torch"}

    def __init__(self, conf: dict | None = None) -> None:
        super().__init__()
        self.conf = merge(self.default_conf, conf, "model")
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 0)
        self.conv2 = nn.Conv2d(32, 64, 4, 2, 0)
        self.conv3 = nn.Conv2d(64, 128, 3, 1, 0)
        self.conv4 = nn.Conv2d(128, 32, 1, 1, 0)
        self.conv5 = nn.Conv2d(32, 128, 6, 1, 0)
        if self.conf["init"] == "he":
            with torch.no_grad():
                for m in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    m.bias.zero_()
                self.conv1.weight -= self.conv1.weight.mean(dim=(1, 2, 3), keepdim=True)
        elif self.conf["init"] != "torch":
            raise ValueError(f"KCCNet: unknown init '{self.conf['init']}' (torch | he)")

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(patches), p=2, dim=1)

    def features(self, patches: torch.Tensor) -> torch.Tensor:
        """The 128-d output before L2 normalisation."""
        if patches.dim() != 4 or patches.shape[-2:] != (PATCH_SIZE, PATCH_SIZE):
            raise ValueError(f"KCCNet expects B×C×{PATCH_SIZE}×{PATCH_SIZE} patches, got {tuple(patches.shape)}")
        if patches.shape[1] == 1:
            patches = patches.expand(-1, 3, -1, -1)
        elif patches.shape[1] != 3:
            raise ValueError(f"KCCNet expects 1 or 3 channels, got {patches.shape[1]}")
        x = patches.float() / 255.0
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(self.conv3(x), 2, 2)
        x = self.conv4(x)
        return self.conv5(x).flatten(1)

    @torch.no_grad()
    def extract(self, image: torch.Tensor, max_keypoints: int = 4096, scale_factor: float = 1.5,
                pyramid: bool = True, batch_size: int = 1024) -> dict:
        """1×C×H×W image in [0, 1] → ORB keypoints N×2, scores, scales, oris, descriptors N×128."""
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
            raise ValueError(f"extract expects one 1×C×H×W image (C = 1 or 3), got {tuple(image.shape)}")
        if image.shape[1] == 3:
            image = (image * image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        gray = (image[0].clamp(0, 1) * 255).round()  # the pixels ORB sees, in [0, 255]
        return describe_orb(self, gray, max_keypoints, scale_factor, pyramid, batch_size)

    def convert_state_dict(self, state: dict) -> dict:
        """A released state dict may hold more than the network (e.g. optimiser entries)."""
        return {k: state[k] for k in KCC_KEYS} if all(k in state for k in KCC_KEYS) else state

    @torch.no_grad()
    def center_outputs(self, patches: torch.Tensor, unit_variance: bool = True) -> torch.Tensor:
        """Data-dependent initialisation of conv5 (LSUV-like, Mishkin & Matas 2016): shift its bias
        so that the mean pre-normalisation output over `patches` is 0 and, with unit_variance,
        scale its weight and bias so that the outputs have unit variance (statistics averaged
        over DDP processes). Returns the removed mean. The descriptors' directions only depend
        on the shift (normalisation ignores the scale).

        With PyTorch's default initialisation all descriptors share one dominant direction
        (cosines ≈ 0.98, pre-normalisation norm ≈ 0.45 of which ≈ 0.09 is patch-specific).
        Removing it spreads them (median cosine ≈ 0.2) and keeps their nearest neighbours; the
        scale keeps RMSprop's first steps (≈ 10 × lr per weight) on conv5's bias from pushing
        all descriptors back into one direction.
        """
        def reduce(x):
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(x)
                x /= torch.distributed.get_world_size()
            return x

        f = self.features(patches)
        mean = reduce(f.mean(0))
        self.conv5.bias -= mean
        if unit_variance:
            var = reduce(((f - mean) ** 2).mean())
            scale = 1.0 / var.clamp(min=1e-12).sqrt()
            self.conv5.weight *= scale
            self.conv5.bias *= scale
        return mean


Model = KCCNet
KCCNet = KCCNet  # the released code's name


@torch.no_grad()
def describe_orb(net: KCCNet, gray: torch.Tensor, max_keypoints: int = 4096, scale_factor: float = 1.5,
                 pyramid: bool = True, batch_size: int = 1024) -> dict:
    """ORB keypoints of one grayscale image + KCC descriptors.

    gray: 1×H×W (or H×W) tensor with values in [0, 255] (uint8 or float).
    Returns torch tensors on gray's device: keypoints N×2, scores N, scales N (keypoint size),
    oris N (deg), descriptors N×128, sorted by decreasing ORB score.
    """
    from hndesc_features.handcrafted import detect_orb
    from hndesc_features.patches import extract_patches

    g = gray.reshape(1, *gray.shape[-2:]).float().round().clamp(0, 255)
    det = detect_orb(g[0].to(torch.uint8).cpu().numpy(), max_keypoints)
    dev = g.device
    out = {k: torch.from_numpy(np.asarray(det[k], np.float32)).to(dev)
           for k in ("keypoints", "scores", "scales", "oris")}
    out["keypoints"] = out["keypoints"].reshape(-1, 2)
    patches = extract_patches(g, out["keypoints"], out["scales"], out["oris"], patch_size=PATCH_SIZE,
                              scale_factor=scale_factor, pyramid=pyramid)
    param = next(net.parameters())
    descs = [net(patches[i:i + batch_size].to(param)) for i in range(0, patches.shape[0], batch_size)]
    out["descriptors"] = torch.cat(descs, 0).to(dev) if descs else g.new_zeros((0, DESCRIPTOR_DIM))
    return out


def _unwrap_state_dict(obj) -> dict:
    """Accept a released state dict, a DataParallel/DDP one (`module.` prefix), or our training
    checkpoint ({"model": state_dict, ...})."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"not a state dict: {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "model.", "net."):
            if k.startswith(prefix) and k[len(prefix):] in KCC_KEYS:
                k = k[len(prefix):]
        out[k] = v
    return out


def load_kcc_state_dict(model: KCCNet, path: str | Path) -> KCCNet:
    """Load weights saved in the released format (keys `conv1..conv5.{weight,bias}`)."""
    from hndesc_features.models.checkpoints import safe_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KCC weights not found at '{path}'")
    state = _unwrap_state_dict(safe_load(path, "KCC weights"))
    missing = [k for k in KCC_KEYS if k not in state]
    if missing:
        raise ValueError(f"'{path}' is not a KCC (wlrn) checkpoint: missing keys {missing}; "
                         f"found {sorted(state)[:8]}...")
    state = {k: state[k] for k in KCC_KEYS}
    model.load_state_dict(state, strict=True)
    return model
