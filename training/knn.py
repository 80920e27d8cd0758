"""Neighbour images for HNDesc's ``gd`` mining (``loss.gd.knn_file``), from a global image descriptor.

One command per training config writes exactly the file the config reads, beside the dataset::

    python -m hndesc_features.training.knn hndesc_paper/caps_ca_st_gd_megadepth [--netvlad-weights FILE.mat]

- ``loss.gd.descriptor: netvlad`` — the paper's: hloc's VGG16-NetVLAD (``hf_netvlad``, plain torch, no
  torchvision) from hloc's released ``VGG16-NetVLAD-Pitts30K.mat`` (hloc's cache or ``--netvlad-weights``);
- ``loss.gd.descriptor: self`` (selfgd) — the backbone's own pooled features (``global_descriptor``: the
  L2-normalised mean of its descriptors) with the config's initialisation or ``--weights`` (an exported
  file or a run folder: re-run with a later checkpoint to refresh the neighbours).

The global descriptors are cached in ``<knn_file>.h5`` (hloc's global-features layout, one group per
image path relative to the images' common folder; an interrupted run resumes) and the ``k`` nearest
neighbours of every image are written to ``knn_file`` (pairs .txt, ``query neighbour`` lines, best first),
computed in blocks so that a MegaDepth-sized set fits in memory.

Without a config (older form), ``--output X.h5`` writes the global descriptors of ``--images`` with a
shipped HNDesc backbone (``KNNIndex`` reads both files).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from hndesc_features.handcrafted import cv2_gray, dog_frames

logger = logging.getLogger("hndesc_features")


#: ``loss.gd`` of the HNDesc method: neighbour crops (the size of the training crops) for gd / selfgd mining.
#: knn_file: an hloc global-features .h5 or a pairs .txt of neighbours; `python -m hndesc_features.training.knn
#: CONFIG` writes it from the global ``descriptor`` (netvlad: hloc's VGG16-NetVLAD from ``netvlad_weights`` or
#: hloc's cache; self: the backbone's own pooled features = selfgd) over ``images`` (an image source, None: the
#: dev training photos). ``k`` neighbours per image, ``pick`` first | random, the neighbour resized to
#: ``resize`` px, at most ``max_kpts`` of its keypoints.
GD_DEFAULT = {"knn_file": None, "k": 5, "pick": "first", "resize": 800, "max_kpts": 200, "allow_unknown": False,
              "images": None, "descriptor": "netvlad", "netvlad_weights": None}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def image_key(path: Path) -> str:
    """Group name of an image: its folder and file name (``KNNIndex`` matches names as path suffixes)."""
    return f"{path.parent.name}/{path.name}"


def write_global_descriptors(paths, model, output: Path, size: int = 384) -> Path:
    from .datasets.base import read_image, resize_long_side

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".partial")
    n = 0
    with h5py.File(tmp, "w") as f:
        for p in tqdm(list(paths), desc="global descriptors"):
            img = read_image(str(p))
            if img is None:
                continue
            img = resize_long_side(img, size)
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
            g = global_descriptor(model, x).numpy().astype(np.float32)
            f.create_group(image_key(Path(p))).create_dataset("global_descriptor", data=g[None])
            n += 1
    if n == 0:
        tmp.unlink(missing_ok=True)
        raise ValueError("no readable training image")
    tmp.replace(output)
    return output


def parse_sources(text: str) -> list[dict]:
    """``dev_images:train,webcam:train,folder:~/photos`` → image source dicts (datasets.image_folder)."""
    out = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        name, _, arg = item.partition(":")
        out.append({"name": "folder", "root": arg} if name == "folder" else {"name": name, "split": arg or "train"})
    return out


def relative_names(paths) -> list[str]:
    """Image paths relative to their common folder (the names of the cache and the pairs file)."""
    import os

    paths = [str(Path(p).resolve()) for p in paths]
    if not paths:
        return []
    root = os.path.commonpath(paths) if len(paths) > 1 else str(Path(paths[0]).parent)
    if Path(root) in [Path(p) for p in paths]:
        root = str(Path(root).parent)
    return [Path(p).relative_to(root).as_posix() for p in paths]


def cache_global_descriptors(paths, names, describe: Callable[[torch.Tensor], torch.Tensor], cache: Path,
                             size: int) -> np.ndarray:
    """N×D global descriptors of ``paths`` (``describe``: 1×3×H×W in [0, 1] → D), cached in ``cache``
    under ``names`` — images already there are not recomputed (resumable). Unreadable images get zeros."""
    from .datasets.base import read_image, resize_long_side

    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(cache, "a") as f:
        todo = [(p, n) for p, n in zip(paths, names) if n not in f]
        for p, n in tqdm(todo, desc=f"global descriptors → {cache.name}", unit="img",
                         initial=len(paths) - len(todo), total=len(paths)):
            img = read_image(str(p))
            if img is None:
                continue
            img = resize_long_side(img, size) if max(img.shape[:2]) > size else img
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
            g = describe(x).detach().float().cpu().numpy().reshape(-1).astype(np.float32)
            f.require_group(n).create_dataset("global_descriptor", data=g[None])
            f.flush()
        dims = {f[n]["global_descriptor"].shape[-1] for n in names if n in f}
        if len(dims) > 1:
            raise ValueError(f"{cache} mixes global descriptors of sizes {sorted(dims)}: delete it and re-run")
        d = dims.pop() if dims else 0
        return np.stack([np.asarray(f[n]["global_descriptor"][()], np.float32).reshape(-1) if n in f
                         else np.zeros(d, np.float32) for n in names])


def write_neighbour_pairs(names, descs: np.ndarray, k: int, output: Path, block: int = 256) -> Path:
    """The ``k`` most similar images (cosine) of every image as ``query neighbour`` lines, best first."""
    d = descs / (np.linalg.norm(descs, axis=1, keepdims=True) + 1e-12)
    k = min(int(k), len(names) - 1)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    with open(tmp, "w") as f:
        for s in range(0, len(names), block):
            sim = d[s:s + block] @ d.T
            sim[np.arange(sim.shape[0]), np.arange(s, s + sim.shape[0])] = -np.inf
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(sim), 0), int)
            for r in range(sim.shape[0]):
                for j in top[r][np.argsort(-sim[r, top[r]], kind="stable")]:
                    f.write(f"{names[s + r]} {names[j]}\n")
    tmp.replace(output)
    return output


def neighbours_for_config(conf: dict, descriptor: Optional[str] = None, weights: Optional[str] = None,
                          netvlad_weights: Optional[str] = None, size: int = 512, k: Optional[int] = None,
                          device: Optional[str] = None) -> Path:
    """Write the ``loss.gd.knn_file`` of a training config (see the module doc); returns its path."""
    from hndesc_features.config import merge

    from .datasets.base import expand
    from .datasets.image_folder import source_paths

    g = merge(GD_DEFAULT, (conf.get("loss") or {}).get("gd"), "loss.gd")
    if not g["knn_file"]:
        raise ValueError("the config has no loss.gd.knn_file: nothing to write (only gd / selfgd rows need one)")
    descriptor = descriptor or g["descriptor"]
    out = expand(g["knn_file"])
    paths = [Path(p) for p in source_paths(g["images"] or {"name": "dev_images", "split": "train"})]
    names = relative_names(paths)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with torch.no_grad():
        descs = _global_descriptors(paths, names, descriptor, conf, g, weights, netvlad_weights, dev, size,
                                    out.with_name(out.stem + f".{descriptor}.h5"))
    return write_neighbour_pairs(names, descs, int(k or g["k"]), out)


def _global_descriptors(paths, names, descriptor, conf, g, weights, netvlad_weights, dev, size, cache):
    if descriptor == "netvlad":
        from hndesc_features.models.netvlad import NetVLAD

        net = NetVLAD.from_conf({"weights": netvlad_weights or g["netvlad_weights"]}).eval().to(dev)

        def describe(x):
            return net(x.to(dev))[0]
    elif descriptor == "self":
        net = self_descriptor_model(conf, weights).to(dev)

        def describe(x):
            return global_descriptor(net, x.to(dev))
    else:
        raise ValueError(f"loss.gd.descriptor must be 'netvlad' or 'self', got {descriptor!r}")
    return cache_global_descriptors(paths, names, describe, cache, size)


def self_descriptor_model(conf: dict, weights: Optional[str] = None) -> nn.Module:
    """The config's backbone for selfgd: ``weights`` (an exported file, or a run folder → its exported
    ``<name>.pt``, else its last checkpoint), else ``train.init_weights``, else the initialisation seeded
    with ``train.seed`` (what the trainer starts from)."""
    from hndesc_features import weights as registry
    from hndesc_features.models.checkpoints import FORMAT, build_model, load_weights, safe_load

    arch = conf["model"]["name"]
    if weights and Path(weights).is_dir():
        run = Path(weights)
        exported = run / f"{conf.get('name', '')}.pt"
        if not exported.is_file():
            model = build_model(arch, {k: v for k, v in conf["model"].items() if k != "name"})
            model.load_state_dict(safe_load(run / "checkpoint_last.pt", "checkpoint")["model"])
            return model.eval()
        weights = exported
    if weights:
        return load_weights(weights, arch)[0].eval()
    torch.manual_seed(int((conf.get("train") or {}).get("seed", 0)))
    model = build_model(arch, {k: v for k, v in conf["model"].items() if k != "name"})
    init = (conf.get("train") or {}).get("init_weights")
    if init:
        path = registry.resolve(init, what="train.init_weights")
        obj = safe_load(path, "train.init_weights")
        if obj.get("format") != FORMAT and hasattr(model, "load_pretrained"):
            model.load_pretrained(obj, str(path))
        else:
            model.load_state_dict(load_weights(path, arch, obj=obj)[1]["state_dict"])
    return model.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hndesc_features.training.knn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", help="training config (name under confs/train/ or path) whose "
                                              "loss.gd.knn_file to write")
    ap.add_argument("overrides", nargs="*", help="dotted key=value config overrides (as for train)")
    ap.add_argument("--descriptor", choices=["netvlad", "self"], default=None,
                    help="global descriptor (default: the config's loss.gd.descriptor)")
    ap.add_argument("--netvlad-weights", default=None,
                    help="hloc's VGG16-NetVLAD-Pitts30K.mat (default: loss.gd.netvlad_weights, else hloc's cache "
                         "torch.hub.get_dir()/netvlad/)")
    ap.add_argument("--weights", default=None,
                    help="selfgd: exported weights or a run folder (default: the config's initialisation); "
                         "without a config: the backbone's weights (default: its shipped file)")
    ap.add_argument("--k", type=int, default=None, help="neighbours per image (default: loss.gd.k)")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    ap.add_argument("--output", type=Path, default=None,
                    help="without a config: the global-features .h5 to write (older form)")
    ap.add_argument("--backbone", default="small", help="without a config: HNDesc backbone (small | patch | caps | r2d2)")
    ap.add_argument("--images", default="dev_images:train",
                    help="without a config: image source(s), comma-separated name:split (dev_images:train, "
                         "webcam:train) or folder:<root>")
    ap.add_argument("--exclude", default="", help="without a config: comma-separated path substrings to leave out")
    ap.add_argument("--size", type=int, default=None,
                    help="long side the images are resized to (default 512 with a config, else 384)")
    a = ap.parse_intermixed_args(argv)
    if a.config:
        from hndesc_features.models.checkpoints import CheckpointError

        from .config import ConfigError, load_config

        try:
            conf = load_config(a.config, a.overrides)
            out = neighbours_for_config(conf, a.descriptor, a.weights, a.netvlad_weights, a.size or 512, a.k,
                                        a.device)
        except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {out}")
        return 0
    if a.output is None:
        ap.error("give a training config, or --output for the older form")
    from hndesc_features import weights as registry

    from .datasets.image_folder import source_paths

    torch.set_grad_enabled(False)
    model = registry.load_model(a.weights, f"hndesc_{a.backbone}", f"hndesc_{a.backbone}")[0]
    excl = [e for e in a.exclude.split(",") if e]
    paths = [p for p in source_paths(parse_sources(a.images)) if not any(e in str(p) for e in excl)]
    out = write_global_descriptors(paths, model, a.output, a.size or 384)
    print(f"wrote {out}")
    return 0



# ---------------------------------------------------------------- neighbour indexes of the gd / selfgd mining
# ------------------------------------------------------------------ neighbour images (gd)
def _match_names(file_names: Sequence[str], train_names: Sequence[str]) -> dict:
    """Map names used in a kNN file onto training image names: exact, else the one training path that
    ends with the name (``a/b.jpg`` matches ``/data/x/a/b.jpg``), else the one name that ends with a
    training path. Indexed by path suffixes: linear in the number of images."""
    exact = set(train_names)
    by_suffix: dict[str, list[str]] = {}
    for t in train_names:
        parts = t.strip("/").split("/")
        for i in range(len(parts)):
            by_suffix.setdefault("/".join(parts[i:]), []).append(t)
    out = {}
    for n in file_names:
        if n in exact:
            out[n] = n
            continue
        cands = by_suffix.get(n.strip("/"), [])
        if not cands:  # the file's name is longer than the training path
            parts = n.strip("/").split("/")
            cands = [t for i in range(1, len(parts)) for t in [ "/".join(parts[i:])] if t in exact]
        if len(cands) == 1:
            out[n] = cands[0]
    return out


class KNNIndex:
    """Neighbour images of each training image, from a global-descriptor kNN file.

    ``path``: an hloc global-features .h5 (one group per image with ``global_descriptor``; the kNN
    is computed by cosine similarity) or a pairs .txt (``query neighbour`` per line, in order of
    preference, as written by hloc's pairs_from_retrieval). ``train_names``: the training images
    (paths as strings); file names are matched exactly or as path suffixes. A file naming images
    that are not training images raises a ``ValueError`` (``allow_unknown=True``: drop them).
    """

    def __init__(self, path, train_names: Sequence[str], k: int = 5, allow_unknown: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"kNN file not found: {self.path}")
        self.k = k
        self.train_names = [str(n) for n in train_names]
        if self.path.suffix in (".h5", ".hdf5"):
            raw = self._from_h5()
        else:
            raw = self._from_pairs()
        names = set(raw) | {m for v in raw.values() for m in v}
        mapping = _match_names(sorted(names), self.train_names)
        unknown = sorted(n for n in names if n not in mapping)
        if unknown and not allow_unknown:
            raise ValueError(
                f"kNN file {self.path} names {len(unknown)} image(s) that are not training images, "
                f"e.g. {', '.join(unknown[:3])}. Recompute it on the training images or pass "
                "allow_unknown=True to ignore them.")
        if unknown:
            logger.warning("kNN file %s: ignoring %d unknown image(s)", self.path, len(unknown))
        self.neighbours: dict[str, list[str]] = {}
        for q, nn_list in raw.items():
            if q not in mapping:
                continue
            nb = [mapping[m] for m in nn_list if m in mapping and mapping[m] != mapping[q]]
            self.neighbours[mapping[q]] = nb[:k]

    def _from_pairs(self) -> dict:
        raw: dict[str, list[str]] = {}
        for line in self.path.read_text().splitlines():
            parts = line.strip().split()
            if len(parts) < 2 or line.lstrip().startswith("#"):
                continue
            lst = raw.setdefault(parts[0], [])
            if parts[1] not in lst:
                lst.append(parts[1])
        if not raw:
            raise ValueError(f"{self.path}: no 'query neighbour' lines found")
        return raw

    def _from_h5(self) -> dict:
        import h5py

        names, descs = [], []
        with h5py.File(str(self.path), "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Group) and "global_descriptor" in obj:
                    names.append(name)
                    descs.append(np.asarray(obj["global_descriptor"][()], np.float32).reshape(-1))
            f.visititems(visit)
        if not names:
            raise ValueError(f"{self.path}: no 'global_descriptor' datasets (not an hloc global-features file?)")
        return knn_from_descriptors(names, np.stack(descs), self.k)

    def __call__(self, name: str) -> list[str]:
        return self.neighbours.get(str(name), [])


def knn_from_descriptors(names: Sequence[str], descs: np.ndarray, k: int) -> dict:
    d = descs / (np.linalg.norm(descs, axis=1, keepdims=True) + 1e-12)
    sim = d @ d.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return {names[i]: [names[j] for j in order[i]] for i in range(len(names))}


@torch.no_grad()
def global_descriptor(model: nn.Module, image: torch.Tensor, max_keypoints: int = 512) -> torch.Tensor:
    """1×3×H×W image in [0, 1] → the model's own global descriptor (D): the L2-normalised mean of
    its L2-normalised descriptors — dense ones, or for patch backbones those of the strongest
    ``max_keypoints`` DoG frames."""
    net = _unwrap(model)
    if getattr(net, "patch_based", False):
        frames = dog_frames(cv2_gray(image[0].cpu()), max_keypoints, 0.005, unique=True)
        if len(frames) == 0:
            return torch.zeros(net.descriptor_dim, device=image.device)
        d = net.describe(image[0], torch.from_numpy(frames).to(image.device))
        return F.normalize(d.mean(0), dim=0)
    dense = F.normalize(net(image), dim=1)
    return F.normalize(dense.mean((2, 3)), dim=1)[0]


class SelfGDIndex:
    """``selfgd``: neighbours from the model's own global descriptors, refreshed every K steps.

    The global descriptor of an image is ``global_descriptor``: the L2-normalised mean of its
    L2-normalised dense (or keypoint-patch) descriptors, image resized to ``size`` px on its long side. ``load_image(name)`` must
    return an H×W×3 float array in [0, 1].
    """

    def __init__(self, train_names: Sequence[str], load_image: Callable[[str], np.ndarray],
                 refresh_every: int = 1000, k: int = 5, size: int = 256):
        self.train_names = [str(n) for n in train_names]
        self.load_image = load_image
        self.refresh_every, self.k, self.size = refresh_every, k, size
        self.neighbours: dict[str, list[str]] = {}
        self.last_refresh: Optional[int] = None

    @torch.no_grad()
    def global_descriptors(self, model: nn.Module) -> np.ndarray:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        for n in self.train_names:
            img = torch.from_numpy(np.ascontiguousarray(self.load_image(n))).float().permute(2, 0, 1)[None]
            s = self.size / max(img.shape[-2:])
            if s < 1:
                img = F.interpolate(img, scale_factor=s, mode="area")
            out.append(global_descriptor(model, img.to(device)).cpu().numpy())
        model.train(was_training)
        return np.stack(out)

    def maybe_refresh(self, model: nn.Module, step: int) -> bool:
        if self.last_refresh is not None and step - self.last_refresh < self.refresh_every:
            return False
        self.neighbours = knn_from_descriptors(self.train_names, self.global_descriptors(model), self.k)
        self.last_refresh = step
        return True

    def __call__(self, name: str) -> list[str]:
        return self.neighbours.get(str(name), [])


if __name__ == "__main__":
    sys.exit(main())
