"""NetVLAD (VGG16 conv5_3 + NetVLAD + whitening) in plain torch: no torchvision.

Loads the MatConvNet struct files hloc uses (`VGG16-NetVLAD-Pitts30K.mat` = hloc's
`Pitts30K_struct.mat`, exported with netvlad_tf_open's net_class2struct.m) and computes exactly what
`hloc.extractors.netvlad` computes:
- backbone: torchvision's `vgg16().features` layout (13 3×3 convs with padding 1, ReLUs, 2×2 max
  pools) without its last ReLU and max pool, i.e. up to conv5_3 (29 modules); the conv weights come
  from `net.layers[i]` for the conv modules i (S×S×IN×OUT → OUT×IN×S×S);
- input: RGB in [0, 1] → ×255, clamp to [0, 255], minus `net.meta.normalization.averageImage[0, 0]`;
- per-location L2 normalisation of the conv5_3 features, NetVLAD (`net.layers[30]`: weights[0] the
  D×K 1×1 assignment conv, no bias; weights[1] minus the D×K centres), soft-assignment, residual
  aggregation, intra-normalisation, L2;
- whitening (`net.layers[33]`, WPCA: 1×1×(D·K)×OUT weights + OUT bias) then L2. OUT is read from the
  file (4096 in the released files).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: torchvision's VGG16 "D" configuration (numbers: conv output channels, "M": 2×2 max pool)
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
#: hloc's model names → the URLs it downloads them from (hloc.extractors.netvlad.NetVLAD.checkpoint_urls)
CHECKPOINT_URLS = {
    "VGG16-NetVLAD-Pitts30K": "https://cvg-data.inf.ethz.ch/hloc/netvlad/Pitts30K_struct.mat",
    "VGG16-NetVLAD-TokyoTM": "https://cvg-data.inf.ethz.ch/hloc/netvlad/TokyoTM_struct.mat",
}
NETVLAD_LAYER = 30
WHITEN_LAYER = 33
EPS = 1e-6


def vgg16_features() -> nn.Sequential:
    """torchvision's `vgg16().features` (same module order and shapes; default torch init)."""
    layers, cin = [], 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """The convolutional part of torchvision's VGG16: `list(VGG16().children())[0]` is `features`,
    as in `torchvision.models.vgg16()` (the classifier is not needed by NetVLAD and is omitted)."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features()

    def forward(self, x):
        return self.features(x)


def default_weights_path(model_name: str = "VGG16-NetVLAD-Pitts30K") -> Path:
    """Where hloc caches the weights: torch.hub.get_dir()/netvlad/<model_name>.mat."""
    return Path(torch.hub.get_dir(), "netvlad", model_name + ".mat")


def missing_weights_message(path: Path, model_name: str) -> str:
    url = CHECKPOINT_URLS.get(model_name, CHECKPOINT_URLS["VGG16-NetVLAD-Pitts30K"])
    return (f"NetVLAD weights not found: {path}. Download {url} (the file hloc uses) and put it at "
            f"{default_weights_path(model_name)} (hloc's cache, torch.hub.get_dir()/netvlad/), or set the "
            f"conf key model.weights to its path (model.download: true fetches it there).")


class NetVLADLayer(nn.Module):
    """Soft-assignment VLAD with intra-normalisation (hloc's NetVLADLayer maths)."""

    def __init__(self, input_dim: int = 512, K: int = 64, intranorm: bool = True):
        super().__init__()
        self.score_proj = nn.Conv1d(input_dim, K, kernel_size=1, bias=False)
        self.centers = nn.Parameter(torch.zeros(input_dim, K))
        self.intranorm = intranorm
        self.output_dim = input_dim * K

    def forward(self, x):  # x: B×D×N (L2-normalised along D)
        b = x.size(0)
        scores = F.softmax(self.score_proj(x), dim=1)  # B×K×N
        diff = x.unsqueeze(2) - self.centers.unsqueeze(0).unsqueeze(-1)  # B×D×K×N
        desc = (scores.unsqueeze(1) * diff).sum(dim=-1)  # B×D×K
        if self.intranorm:
            desc = F.normalize(desc, dim=1)
        return F.normalize(desc.reshape(b, -1), dim=1)


def _mean_rgb(average_image) -> np.ndarray:
    """averageImage[0, 0] for the released H×W×3 array (a plain 3-vector is accepted too)."""
    a = np.asarray(average_image, dtype=np.float32)
    return a.reshape(-1, a.shape[-1])[0] if a.ndim > 1 else a.reshape(3)


class NetVLAD(nn.Module):
    """VGG16-NetVLAD(-WPCA). forward(image B×3×H×W RGB in [0, 1]) → B×OUT L2-normalised."""

    def __init__(self, weights: Union[str, Path], whiten: bool = True):
        super().__init__()
        from scipy.io import loadmat

        weights = Path(weights)
        mat = loadmat(str(weights), struct_as_record=False, squeeze_me=True)
        try:
            layers = mat["net"].layers
            mean = _mean_rgb(mat["net"].meta.normalization.averageImage)
        except (KeyError, AttributeError) as e:
            raise ValueError(f"{weights} is not a NetVLAD struct file (net.layers / net.meta missing: {e}).") from None
        self.backbone = nn.Sequential(*list(vgg16_features().children())[:-2])  # no last ReLU + MaxPool
        for module, mat_layer in zip(self.backbone.children(), layers):
            if isinstance(module, nn.Conv2d):
                w, b = mat_layer.weights[0], mat_layer.weights[1]  # S×S×IN×OUT, OUT
                module.weight = nn.Parameter(torch.tensor(w).float().permute(3, 2, 0, 1))
                module.bias = nn.Parameter(torch.tensor(b).float())
        score_w = torch.tensor(layers[NETVLAD_LAYER].weights[0]).float()  # D×K
        centers = -torch.tensor(layers[NETVLAD_LAYER].weights[1]).float()  # stored negated (MATLAB)
        self.netvlad = NetVLADLayer(score_w.shape[0], score_w.shape[1])
        self.netvlad.score_proj.weight = nn.Parameter(score_w.permute(1, 0).unsqueeze(-1))
        self.netvlad.centers = nn.Parameter(centers)
        self.whiten: Optional[nn.Linear] = None
        if whiten:
            w = torch.tensor(layers[WHITEN_LAYER].weights[0]).float().squeeze().permute(1, 0)  # OUT×IN
            b = torch.tensor(np.asarray(layers[WHITEN_LAYER].weights[1]).squeeze()).float()
            self.whiten = nn.Linear(w.shape[1], w.shape[0])
            self.whiten.weight = nn.Parameter(w)
            self.whiten.bias = nn.Parameter(b)
        self.register_buffer("mean", torch.from_numpy(mean.copy()).view(1, 3, 1, 1), persistent=False)
        self.output_dim = self.whiten.out_features if self.whiten is not None else self.netvlad.output_dim

    @classmethod
    def from_conf(cls, conf: dict) -> "NetVLAD":
        """conf keys: model_name, weights (path, else hloc's cache), whiten, download (False)."""
        name = conf.get("model_name", "VGG16-NetVLAD-Pitts30K")
        if conf.get("weights"):
            path = Path(conf["weights"]).expanduser()
        else:
            if name not in CHECKPOINT_URLS:
                raise ValueError(f"Unknown NetVLAD model '{name}'; one of {sorted(CHECKPOINT_URLS)} "
                                 "(or give model.weights).")
            path = default_weights_path(name)
        if not path.is_file():
            if conf.get("download") and not conf.get("weights"):
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(CHECKPOINT_URLS[name], str(path))
            else:
                raise FileNotFoundError(missing_weights_message(path, name))
        return cls(path, whiten=conf.get("whiten", True))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        assert image.shape[1] == 3, "NetVLAD needs RGB images (preprocessing.grayscale: false)"
        assert image.min() >= -EPS and image.max() <= 1 + EPS, "images must be in [0, 1]"
        x = torch.clamp(image * 255, 0.0, 255.0)
        x = x - self.mean.to(x)
        x = self.backbone(x)
        b, c = x.shape[:2]
        x = F.normalize(x.view(b, c, -1), dim=1)
        desc = self.netvlad(x)
        if self.whiten is not None:
            desc = F.normalize(self.whiten(desc), dim=1)
        return desc


def write_random_struct(path: Union[str, Path], whiten_dim: int = 4096, seed: int = 0, K: int = 64) -> Path:
    """A randomly initialised NetVLAD struct file in the released layout (for tests and dry runs).

    `net.layers` holds 35 layers as the released files do (conv/ReLU/pool of VGG16 up to conv5_3 at
    0..28, with the 3×3×IN×OUT conv weights and OUT biases; the NetVLAD layer at 30 with D×K
    assignment weights and negated centres; the WPCA layer at 33 with 1×1×(D·K)×whiten_dim weights
    and its bias); `net.meta.normalization.averageImage` is a 224×224×3 image of the RGB mean.
    whiten_dim < 4096 keeps the file small: hloc's loader and ours both take the size from the file.
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)

    def cell(*arrays):
        c = np.empty(len(arrays), dtype=object)
        for i, a in enumerate(arrays):
            c[i] = a
        return c

    layers = np.empty(35, dtype=object)
    cin, i = 3, 0
    for v in VGG16_CFG[:-1]:  # up to conv5_3 (the last pool is not part of the net)
        if v == "M":
            layers[i] = {"name": f"pool{i}", "type": "pool", "weights": cell()}
            i += 1
            continue
        w = (rng.standard_normal((3, 3, cin, v)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
        b = (rng.standard_normal(v) * 0.01).astype(np.float32)
        layers[i] = {"name": f"conv{i}", "type": "conv", "weights": cell(w, b)}
        layers[i + 1] = {"name": f"relu{i + 1}", "type": "relu", "weights": cell()}
        cin, i = v, i + 2
    assert i == 30, i  # conv5_3 at 28 and its ReLU at 29
    layers[29] = {"name": "preL2", "type": "normalize", "weights": cell()}
    D = cin
    centers = rng.standard_normal((D, K)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=0, keepdims=True)
    score = (centers * 20.0).astype(np.float32)  # assignment ~ cosine to the centres, as trained
    layers[30] = {"name": "vlad:core", "type": "custom", "weights": cell(score, -centers)}
    layers[31] = {"name": "vlad:intranorm", "type": "normalize", "weights": cell()}
    layers[32] = {"name": "vlad:L2", "type": "normalize", "weights": cell()}
    wp = (rng.standard_normal((1, 1, D * K, whiten_dim)) / np.sqrt(D * K)).astype(np.float32)
    bp = (rng.standard_normal((whiten_dim, 1)) * 0.01).astype(np.float32)
    layers[33] = {"name": "WPCA", "type": "conv", "weights": cell(wp, bp)}
    layers[34] = {"name": "L2", "type": "normalize", "weights": cell()}
    mean = np.array([122.7, 114.7, 101.4], np.float32) + rng.standard_normal(3).astype(np.float32)
    average = np.broadcast_to(mean, (224, 224, 3)).astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"net": {"layers": layers, "meta": {"normalization": {"averageImage": average}}}},
            do_compression=False)
    return path
