"""HNDesc with the CAPS backbone: a ResNet-50 U-Net giving 128-d descriptors at stride 4.

Architecture of the released HNDesc "caps" model (``CapsDesc`` in imelekhov/HNDesc, MIT), itself
the ResUNet of CAPS (Wang et al., ECCV 2020), written here in plain torch (no torchvision):

    RGB in [0,1], ImageNet mean/std normalised
    firstconv 7×7/2 (3→64, no bias) · firstbn · firstrelu · firstmaxpool 3×3/2    → 64 @ H/4
    layer1  3 Bottlenecks (64→256)                                               → 256 @ H/4
    layer2  4 Bottlenecks (→512, stride 2 on the 3×3 conv, torchvision v1.5)      → 512 @ H/8
    layer3  6 Bottlenecks (→1024, stride 2)                                      → 1024 @ H/16
    conv_coarse 1×1 1024→128 (kept for checkpoint compatibility; unused by HNDesc)
    upconv3  bilinear ×2 (align_corners=True) + conv 3×3 1024→512                 → 512 @ H/8
    iconv3   concat(up, layer2) 1024→512 3×3
    upconv2  bilinear ×2 + conv 3×3 512→256                                       → 256 @ H/4
    iconv2   concat(up, layer1) 512→256 3×3
    conv_fine 1×1 256→128                                                        → 128 @ H/4
    ("conv" = Conv2d with bias + BatchNorm + ELU, as in the reference)

Module names follow the reference exactly, so a released checkpoint (``{"state_dict": ...}``
with keys ``firstconv.weight``, ``layer1.0.conv1.weight``, ``upconv3.conv.conv.weight``, …,
optionally prefixed by ``module.`` or CAPS's ``net.``) loads with ``load_caps_checkpoint``.
The dense map is *not* normalised; descriptors are sampled at keypoints with the reference
convention (``sampling.sample_descriptors(..., convention="hndesc")``) then L2-normalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hndesc_features.config import merge

from hndesc_features.models.sampling import DenseExtract

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAMPLING = "hndesc"  # descriptor-sampling convention of the released checkpoints
STRIDE = 4


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3×3 conv), same parameter names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: bool = False):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if downsample:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(inplanes, planes, stride, downsample=True)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ConvBNELU(nn.Module):
    """The reference's ``conv``: Conv2d (with bias) + BatchNorm + ELU; names ``conv``, ``bn``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=(kernel_size - 1) // 2)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.bn(self.conv(x)), inplace=True)


class UpConv(nn.Module):
    """The reference's ``upconv``: bilinear ×scale (align_corners=True) then ``conv``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, scale: int):
        super().__init__()
        self.scale = scale
        self.conv = ConvBNELU(cin, cout, kernel_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=True)
        return self.conv(x)


def skip_concat(skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Pad the skip map to the upsampled size (odd input sizes) and concat [up, skip]."""
    dy, dx = up.shape[2] - skip.shape[2], up.shape[3] - skip.shape[3]
    skip = F.pad(skip, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
    return torch.cat([up, skip], dim=1)


class HNDescCAPS(DenseExtract, nn.Module):
    """Image B×3×H×W in [0,1] → dense descriptors B×128×ceil(H/4)×ceil(W/4) (not normalised)."""

    default_conf = {"coarse_dim": 128, "fine_dim": 128}
    stride = STRIDE
    sampling = SAMPLING

    def __init__(self, conf: dict | None = None, **kwargs):
        super().__init__()
        self.conf = merge(self.default_conf, {**(conf or {}), **kwargs}, "model")
        coarse_dim, fine_dim = int(self.conf["coarse_dim"]), int(self.conf["fine_dim"])
        self.descriptor_dim = fine_dim
        filters = [256, 512, 1024]
        self.firstconv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.firstbn = nn.BatchNorm2d(64)
        self.firstrelu = nn.ReLU(inplace=True)
        self.firstmaxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_layer(64, 64, 3, 1)
        self.layer2 = make_layer(256, 128, 4, 2)
        self.layer3 = make_layer(512, 256, 6, 2)
        self.conv_coarse = ConvBNELU(filters[2], coarse_dim, 1, 1)
        self.upconv3 = UpConv(filters[2], 512, 3, 2)
        self.iconv3 = ConvBNELU(filters[1] + 512, 512, 3, 1)
        self.upconv2 = UpConv(512, 256, 3, 2)
        self.iconv2 = ConvBNELU(filters[0] + 256, 256, 3, 1)
        self.conv_fine = ConvBNELU(256, fine_dim, 1, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize_input(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        return (image - self.mean) / self.std

    def forward_features(self, x: torch.Tensor, with_coarse: bool = False):
        """Already normalised input → fine map (and the coarse one, if asked)."""
        x = self.firstmaxpool(self.firstrelu(self.firstbn(self.firstconv(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x = self.iconv3(skip_concat(x2, self.upconv3(x3)))
        x = self.iconv2(skip_concat(x1, self.upconv2(x)))
        fine = self.conv_fine(x)
        if with_coarse:
            return fine, self.conv_coarse(x3)
        return fine

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.normalize_input(image))

    #: torchvision ResNet-50 names → ours (the encoder the paper starts from ImageNet weights)
    RESNET_NAMES = {"conv1.": "firstconv.", "bn1.": "firstbn.", "layer1.": "layer1.", "layer2.": "layer2.",
                    "layer3.": "layer3."}

    def load_pretrained(self, obj: dict, source: str = "weights") -> int:
        """Start training from torchvision's ImageNet ResNet-50 state dict (``resnet50-*.pth``, as
        the reference's ``resnet50(pretrained=True)``): its conv1/bn1/layer1-3 tensors fill the
        encoder (layer4 and fc are not part of the network; the decoder keeps its initialisation).
        Returns the number of tensors loaded; a file that is not a ResNet-50 is an error."""
        state = state_dict_of(obj, source)
        own = self.state_dict()
        mapped = {}
        for k, v in state.items():
            prefix = next((p for p in self.RESNET_NAMES if k.startswith(p)), None)
            if prefix is not None:
                mapped[self.RESNET_NAMES[prefix] + k[len(prefix):]] = v
        encoder = [k for k in own if k.split(".")[0] in ("firstconv", "firstbn", "layer1", "layer2", "layer3")]
        missing = [k for k in encoder if k not in mapped]
        shape = [k for k in encoder if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)]
        if missing or shape:
            raise ValueError(f"{source} is not a torchvision ResNet-50 state dict: "
                             f"{len(missing)} encoder tensors missing (e.g. {missing[:2]}), "
                             f"{len(shape)} of another shape (e.g. {shape[:2]})")
        self.load_state_dict({k: mapped[k] for k in encoder}, strict=False)
        return len(encoder)


# --------------------------------------------------------------------------- checkpoints
STRIP_PREFIXES = ("module.", "net.")


def read_state_dict(path) -> dict:
    """A checkpoint file (released format ``{"state_dict": ...}`` or a bare state dict) → state dict.

    Loaded with ``weights_only=True``; ``module.`` (DataParallel) and ``net.`` (CAPS wrapper)
    prefixes are removed when every key carries them.
    """
    from hndesc_features.models.checkpoints import safe_load

    ckpt = safe_load(path, "HNDesc checkpoint")
    return state_dict_of(ckpt, str(path))


def state_dict_of(ckpt, source: str = "checkpoint") -> dict:
    """The state dict inside a loaded checkpoint object (``state_dict`` / ``model`` entry or bare)."""
    state = ckpt
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in ckpt and isinstance(ckpt[key], dict):
                state = ckpt[key]
                break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{source} is not a state dict nor a dict with a 'state_dict' entry")
    return strip_prefixes(state)


def strip_prefixes(state: dict) -> dict:
    changed = True
    while changed and state:
        changed = False
        for p in STRIP_PREFIXES:
            if all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
    return state


def load_state(model: nn.Module, state: dict, source: str = "checkpoint") -> nn.Module:
    """Strict load with a readable error naming missing / unexpected keys."""
    state = strip_prefixes(dict(state))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        msg = [f"{source} does not match {type(model).__name__}:"]
        if missing:
            msg.append(f"missing keys: {few(missing)}")
        if unexpected:
            msg.append(f"unexpected keys: {few(unexpected)}")
        if shape:
            msg.append("shape mismatch: " + few([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                 for k in shape]))
        raise ValueError("; ".join(msg))
    model.load_state_dict(state, strict=True)
    return model


def load_caps_checkpoint(path, model: HNDescCAPS | None = None) -> HNDescCAPS:
    """A released HNDesc-CAPS (or original CAPS) checkpoint → HNDescCAPS in eval mode."""
    model = HNDescCAPS() if model is None else model
    return load_state(model, read_state_dict(path), str(path)).eval()
