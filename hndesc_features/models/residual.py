"""Residual descriptors: a handcrafted descriptor g refined by a small CNN (our reference design).

    d = L2( concat( f(g), h ) )

- g: a handcrafted descriptor at its own keypoints: SIFT, RootSIFT, upright RootSIFT (OpenCV, via
  ``hndesc_features.handcrafted.detect_sift``) or SURF (``hndesc_features.surf``);
- f: an MLP d_g → 256 → 256 → 128 (ReLU between layers); with ``skip`` (default) it is residual,
  f(g) = g + MLP(g) (g zero-padded to 128), its last layer starts at zero and h starts small
  (``h_init_scale``), so training starts from the handcrafted descriptor itself and learns what
  to add — a short CPU training cannot lose what g already matches;
- h: a trimmed SuperPoint VGG encoder (RGB input, 3 max-pools → stride 8, no detector head) and a
  1×1 descriptor head, read bilinearly at g's keypoints. With ``sampling: frame`` h is read on a
  small pattern in the keypoint's own frame (centre + ``frame_points`` points on a circle of radius
  ``frame_radius``·size, clamped to [``frame_min_radius``, ``frame_max_radius``] px, rotated by
  the keypoint orientation) and the samples are mixed by a linear layer, so the layout that h sees
  follows the keypoint's scale and orientation;
- ablations: ``use_handcrafted: false`` ("*": no g, a 256-d descriptor from the CNN alone at g's
  keypoints) and ``channels`` halved ("small").

Keypoints follow hloc: pixel centres at integer coordinates of the network input image.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hndesc_features.config import merge
from hndesc_features.handcrafted import tensor_to_gray_u8 as to_gray_u8  # noqa: F401 (used and re-exported)

from hndesc_features.models.sampling import normalize_keypoints

DESCRIPTORS = {
    # name: (dim, root, upright, family, orientation sign: keypoint frame angle = sign * ori)
    "sift": (128, False, False, "sift", 1.0),
    "rootsift": (128, True, False, "sift", 1.0),
    "sift_upright": (128, False, True, "sift", 1.0),
    "rootsift_upright": (128, True, True, "sift", 1.0),
    # our SURF reports angles as OpenCV SIFT does (image axes, y down)
    "surf": (64, False, False, "surf", 1.0),
    "surf_upright": (64, False, True, "surf", 1.0),
}
STRIDE = 8


def detect_handcrafted(gray_u8: np.ndarray, descriptor: str, max_keypoints: int,
                       contrast_threshold: float = 0.005, hessian_threshold: float = 30.0) -> dict:
    """g and its keypoints for one H×W uint8 image (numpy dict, sorted by decreasing score)."""
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"Unknown handcrafted descriptor '{descriptor}', expected one of {sorted(DESCRIPTORS)}")
    dim, root, upright, family, _ = DESCRIPTORS[descriptor]
    if family == "sift":
        from hndesc_features.handcrafted import detect_sift

        return detect_sift(gray_u8, max_keypoints, contrast_threshold, root=root, upright=upright)
    from hndesc_features.surf import detect_and_describe

    out = detect_and_describe(gray_u8, hessian_threshold=hessian_threshold, upright=upright,
                              max_keypoints=max_keypoints)
    return {k: out[k] for k in ("keypoints", "scores", "scales", "oris", "descriptors")}


def _sift_octave(size: np.ndarray) -> np.ndarray:
    """OpenCV SIFT octave of a keypoint of this size (its scale in the octave image is in [1.6, 3.2))."""
    return np.maximum(np.floor(np.log2(np.maximum(size, 1e-3) / 3.2)), -1).astype(int)


def context_descriptors(gray_u8: np.ndarray, det: dict, descriptor: str, scale: float,
                        contrast_threshold: float = 0.005, downsample: int = 1) -> np.ndarray:
    """The handcrafted descriptor g recomputed at each keypoint with its size × `scale` (same
    position and orientation): a rotation- and scale-covariant description of the keypoint's
    surroundings. SIFT is read from the pyramid octave that matches the enlarged size.

    downsample k > 1 (SIFT only): the context is described on the image area-averaged by k (positions
    and sizes divided by k, octaves clamped at 0 so that OpenCV never up-samples it): OpenCV builds a
    Gaussian pyramid k² times smaller and samples k² fewer pixels per descriptor — the same
    surroundings at a coarser sampling (k = 4: ~half the cost of the context at k = 1)."""
    import cv2

    dim, root, upright, family, _ = DESCRIPTORS[descriptor]
    k = int(downsample)
    if k < 1 or k != downsample:
        raise ValueError(f"context downsample must be an integer >= 1, got {downsample}")
    n = len(det["keypoints"])
    if n == 0:
        return np.zeros((0, dim), np.float32)
    sizes = det["scales"].astype(np.float64) * scale
    if family == "sift":
        from hndesc_features.handcrafted import EPS, sift_to_rootsift

        kp = np.asarray(det["keypoints"], np.float64)
        if k > 1:  # pixel centres at integers: input pixel x lies at (x + 0.5) / k - 0.5 of the k-pooled image
            h, w = gray_u8.shape[:2]
            gray_u8 = cv2.resize(gray_u8, (max(1, -(-w // k)), max(1, -(-h // k))), interpolation=cv2.INTER_AREA)
            kp = (kp + 0.5) / k - 0.5
            sizes = sizes / k
            octv = ((np.maximum(_sift_octave(sizes), 0) & 255) | (1 << 8)).tolist()  # octave >= 0, layer 1
        else:
            octv = ((_sift_octave(sizes) & 255) | (1 << 8)).tolist()  # octave, layer 1
        kps = list(map(cv2.KeyPoint, kp[:, 0].tolist(), kp[:, 1].tolist(), sizes.tolist(),
                       np.asarray(det["oris"], np.float64).tolist(), [0.0] * n, octv))
        sift = cv2.SIFT_create(contrastThreshold=contrast_threshold)
        out, desc = sift.compute(gray_u8, kps)
        if desc is None or len(out) != n:
            raise RuntimeError(f"context SIFT: OpenCV returned {0 if desc is None else len(out)} of {n} descriptors")
        desc = desc.astype(np.float32)
        if root:
            return sift_to_rootsift(desc)
        return desc / (np.linalg.norm(desc, axis=-1, keepdims=True) + EPS)
    if k != 1:
        raise ValueError("context downsample > 1 is implemented for SIFT descriptors only")
    from hndesc_features import surf

    integral = surf.integral_image(surf._to_gray255(gray_u8))
    theta = np.zeros(n) if upright else np.deg2rad(det["oris"].astype(np.float64))
    return surf.compute_descriptors(integral, det["keypoints"].astype(np.float64), sizes, theta)


class VGGEncoder(nn.Module):
    """SuperPoint's VGG encoder, trimmed: stages of 3×3 conv+ReLU with 2×2 max-pools in between."""

    def __init__(self, channels=(16, 32, 64, 128), convs_per_stage=(1, 2, 2, 2), in_channels: int = 3):
        super().__init__()
        layers, cin = [], in_channels
        for i, (c, n) in enumerate(zip(channels, convs_per_stage)):
            for _ in range(n):
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True)]
                cin = c
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2, 2))
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin
        self.stride = 2 ** (len(channels) - 1)

    def forward(self, x):
        return self.layers(x)


class ResidualDescriptor(nn.Module):
    default_conf = {
        "descriptor": "sift",  # g: sift | rootsift | sift_upright | rootsift_upright | surf | surf_upright
        "use_handcrafted": True,  # False: the "*" ablation (CNN only, at g's keypoints)
        "channels": [16, 32, 64, 128],  # VGG stage widths (halve for the "small" ablation)
        "convs_per_stage": [1, 2, 2, 2],
        "cnn_dim": 128,  # h dimension (256 when use_handcrafted is False)
        "cnn_scale": 1.0,  # the CNN reads the image average-pooled by 1/cnn_scale (1, 0.5, 0.25)
        "head_dim": 64,  # channels of the 1×1 head before sampling (the frame samples are concatenated)
        "mlp": [256, 256, 128],  # f: d_g → 256 → 256 → 128
        "skip": True,  # f(g) = g (zero-padded to 128) + MLP(g): training starts from g itself
        "context_scale": 4.0,  # h = w·g_ctx + CNN residual, g_ctx = g at size × context_scale (0: off)
        "context_weight": 1.0,
        "context_downsample": 1,  # g_ctx described on the image area-averaged by this factor (SIFT; 4: cheaper)
        "h_init_scale": 0.1,  # initial scale of h's last layer (with skip: d ≈ g at initialisation)
        "sampling": "frame",  # "point" (bilinear at the keypoint) | "frame" (pattern in the kp frame)
        "frame_points": 8,
        "frame_radius": 2.0,  # × keypoint size (OpenCV size, a diameter)
        "frame_min_radius": 8.0,  # px (of the input image)
        "frame_max_radius": 48.0,  # px
        # detection (inference and on-the-fly training features)
        "max_keypoints": 4096,
        "contrast_threshold": 0.005,  # SIFT
        "hessian_threshold": 30.0,  # SURF
    }

    def __init__(self, conf: Optional[dict] = None):
        super().__init__()
        self.conf = conf = merge(self.default_conf, conf, "model")
        if conf["descriptor"] not in DESCRIPTORS:
            raise ValueError(f"Unknown descriptor '{conf['descriptor']}', expected one of {sorted(DESCRIPTORS)}")
        if conf["sampling"] not in ("point", "frame"):
            raise ValueError(f"sampling must be 'point' or 'frame', got '{conf['sampling']}'")
        pool = 1.0 / float(conf["cnn_scale"])
        if abs(pool - round(pool)) > 1e-6 or round(pool) < 1:
            raise ValueError(f"cnn_scale must be 1/k for an integer k ≥ 1, got {conf['cnn_scale']}")
        self.pool = int(round(pool))
        self.g_dim = DESCRIPTORS[conf["descriptor"]][0]
        self.ori_sign = DESCRIPTORS[conf["descriptor"]][4]
        self.encoder = VGGEncoder(conf["channels"], conf["convs_per_stage"])
        assert self.encoder.stride == STRIDE, "the encoder must have 3 pooling stages (stride 8)"
        c = self.encoder.out_channels
        n_samples = 1 + int(conf["frame_points"]) if conf["sampling"] == "frame" else 1
        self.n_samples = n_samples
        out_dim = int(conf["cnn_dim"])
        # descriptor head: 1×1 conv on the map, then a linear map of the (frame) samples to cnn_dim
        hd = int(conf["head_dim"])
        self.head = nn.Conv2d(c, hd, 1)
        self.mix = nn.Linear(hd * n_samples, out_dim)
        if conf["use_handcrafted"]:
            dims = [self.g_dim] + list(conf["mlp"])
            mlp = []
            for i in range(len(dims) - 1):
                mlp.append(nn.Linear(dims[i], dims[i + 1]))
                if i < len(dims) - 2:
                    mlp.append(nn.ReLU(inplace=True))
            self.mlp = nn.Sequential(*mlp)
            if conf["skip"]:
                if self.g_dim > dims[-1]:
                    raise ValueError(f"skip needs mlp[-1] >= {self.g_dim} (the descriptor dimension)")
                nn.init.zeros_(self.mlp[-1].weight)
                nn.init.zeros_(self.mlp[-1].bias)
        with torch.no_grad():
            self.mix.weight.mul_(float(conf["h_init_scale"]))
            self.mix.bias.mul_(float(conf["h_init_scale"]))
        self.uses_context = bool(conf["context_scale"]) and conf["use_handcrafted"]
        if self.uses_context and self.g_dim > out_dim:
            raise ValueError(f"context needs cnn_dim >= {self.g_dim}")
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.conf["cnn_dim"]) + (int(self.conf["mlp"][-1]) if self.conf["use_handcrafted"] else 0)

    # ------------------------------------------------------------------ network
    def dense(self, image: torch.Tensor) -> torch.Tensor:
        """B×C×H×W image in [0, 1] (C = 1 or 3) → B×c×H/8×W/8 feature map."""
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        x = (image - self.mean) / self.std
        if self.pool > 1:  # cell j of the pooled image covers input pixels [k·j, k·j + k)
            x = F.avg_pool2d(x, self.pool, self.pool, ceil_mode=True)
        return self.head(self.encoder(x))

    def sample_points(self, keypoints: torch.Tensor, scales: torch.Tensor, oris: torch.Tensor) -> torch.Tensor:
        """B×N×2 keypoints → B×N×S×2 sampling positions (pixels)."""
        if self.n_samples == 1:
            return keypoints[:, :, None]
        c = self.conf
        n = int(c["frame_points"])
        r = (scales.float() * float(c["frame_radius"])).clamp(float(c["frame_min_radius"]),
                                                                 float(c["frame_max_radius"]))
        th = torch.deg2rad(oris.float() * self.ori_sign)
        a = torch.arange(n, device=keypoints.device, dtype=keypoints.dtype) * (2 * math.pi / n)
        ang = th[..., None] + a  # B×N×n
        off = torch.stack([torch.cos(ang), torch.sin(ang)], -1) * r[..., None, None]
        return torch.cat([keypoints[:, :, None], keypoints[:, :, None] + off], 2)

    def cnn_descriptors(self, dense: torch.Tensor, keypoints, scales, oris, image_hw) -> torch.Tensor:
        """B×N×cnn_dim (not normalised)."""
        B, N = keypoints.shape[:2]
        pts = self.sample_points(keypoints, scales, oris)  # B×N×S×2
        S = pts.shape[2]
        grid = normalize_keypoints(pts.reshape(B, N * S, 2), image_hw, dense.shape[-2:], "centers",
                                   STRIDE * self.pool)
        feat = F.grid_sample(dense, grid[:, :, None], mode="bilinear", padding_mode="border",
                             align_corners=False)[..., 0]  # B×c×(N·S)
        feat = feat.transpose(1, 2).reshape(B, N, S * dense.shape[1])
        return self.mix(feat)

    def forward(self, data: dict) -> torch.Tensor:
        """data: image B×C×H×W, keypoints B×N×2, scales B×N, oris B×N, handcrafted B×N×d_g
        → descriptors B×N×D (unit L2 norm)."""
        image = data["image"]
        dense = self.dense(image)
        h = self.cnn_descriptors(dense, data["keypoints"], data["scales"], data["oris"], image.shape[-2:])
        if self.uses_context:
            ctx = data["context"].float() * float(self.conf["context_weight"])
            h = h + F.pad(ctx, (0, h.shape[-1] - ctx.shape[-1]))
        if self.conf["use_handcrafted"]:
            g = data["handcrafted"].float()
            f = self.mlp(g * math.sqrt(self.g_dim))
            if self.conf["skip"]:
                f = f + F.pad(g, (0, f.shape[-1] - g.shape[-1]))
            d = torch.cat([f, h], -1)
        else:
            d = h
        d = F.normalize(d, p=2, dim=-1)
        if data.get("return_h"):  # training: the CNN part too (deep supervision)
            return {"descriptors": d, "h": h}
        return d

    # ------------------------------------------------------------------ inference
    # The inference path (extract → describe) computes what forward() computes, cheaper: the CNN
    # average-pools before normalising the image and runs channels-last, and the frame samples are
    # mixed without materialising the N×(S·c) matrix. Same weights, same descriptors up to float
    # rounding (tests/test_residual.py::test_extract_matches_training_forward).
    def _dense_inference(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        if self.pool > 1:  # pooling and the per-channel affine normalisation commute
            x = F.avg_pool2d(x, self.pool, self.pool, ceil_mode=True)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.head(self.encoder(x))

    def describe(self, image: torch.Tensor, keypoints, scales, oris, handcrafted=None, context=None) -> torch.Tensor:
        """forward() for inference: 1×C×H×W image, B×N×… detections → B×N×D unit descriptors."""
        dense = self._dense_inference(image)
        B, N = keypoints.shape[:2]
        pts = self.sample_points(keypoints, scales, oris)  # B×N×S×2
        S, c = pts.shape[2], dense.shape[1]
        grid = normalize_keypoints(pts, image.shape[-2:], dense.shape[-2:], "centers", STRIDE * self.pool)
        feat = F.grid_sample(dense, grid, mode="bilinear", padding_mode="border", align_corners=False)  # B×c×N×S
        h = torch.einsum("bcns,osc->bno", feat, self.mix.weight.view(-1, S, c)) + self.mix.bias
        if self.uses_context:
            ctx = context.float() * float(self.conf["context_weight"])
            h[..., :ctx.shape[-1]] += ctx
        if not self.conf["use_handcrafted"]:
            return F.normalize(h, p=2, dim=-1)
        g = handcrafted.float()
        f = self.mlp(g * math.sqrt(self.g_dim))
        if self.conf["skip"]:
            f[..., :g.shape[-1]] += g
        return F.normalize(torch.cat([f, h], -1), p=2, dim=-1)

    def detect(self, image: torch.Tensor, max_keypoints: Optional[int] = None) -> dict:
        """Handcrafted keypoints + g of one C×H×W image in [0, 1] (numpy dict)."""
        c = self.conf
        mk = c["max_keypoints"] if max_keypoints is None else max_keypoints
        gray = to_gray_u8(image)
        det = detect_handcrafted(gray, c["descriptor"], mk, c["contrast_threshold"], c["hessian_threshold"])
        if self.uses_context:
            det["context"] = context_descriptors(gray, det, c["descriptor"], float(c["context_scale"]),
                                                 c["contrast_threshold"], int(c["context_downsample"]))
        return det

    @torch.no_grad()
    def extract(self, image: torch.Tensor, max_keypoints: Optional[int] = None) -> dict:
        """1×C×H×W image in [0, 1] → keypoints N×2, scores N, scales N, oris N, descriptors N×D."""
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"extract expects one 1×C×H×W image, got {tuple(image.shape)}")
        det = self.detect(image[0], max_keypoints)
        dev = image.device
        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in det.items()}
        if len(t["keypoints"]) == 0:
            desc = image.new_zeros((0, self.dim))
        else:
            desc = self.describe(image, t["keypoints"][None].float(), t["scales"][None].float(),
                                 t["oris"][None].float(), t["descriptors"][None].float(),
                                 t["context"][None].float() if self.uses_context else None)[0]
        return {"keypoints": t["keypoints"].float(), "scores": t["scores"].float(),
                "scales": t["scales"].float(), "oris": t["oris"].float(), "descriptors": desc}


Model = ResidualDescriptor
