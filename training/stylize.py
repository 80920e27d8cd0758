"""Photorealistic stylization of training images (HNDesc's illumination augmentation).

HNDesc (Melekhov et al., 3DV 2021) pre-generates stylized copies of every training image with a
photorealistic style-transfer network and, while training, takes the second crop of a pair from a
stylized copy (probability 0.7 in the reference code), so descriptors learn day/dusk/night
invariance. The geometry must not change: the homography ground truth of the pair still holds.

Two stylizers:

(a) ``StatsStylizer`` (default, weight-free, offline): a *pixel-wise colour mapping* toward a real
    style photo, so edges stay exactly where they were:
      - lightness (CIELAB L): monotone tone curve = average of quantile (histogram) matching and
        mean/std matching to the style photo's L (strictly increasing, so no edge is flattened);
      - chroma (a, b): per-channel mean/std transfer, optionally rotated by a small hue angle;
      - blended with the original by a random strength; the statistics are taken from a random
        window of the style photo (sky, ground, lights...), so versions differ.
    Styles are groups of real photos; the defaults are ``dusk`` (sunset / evening-glow photos) and
    ``night`` (blue-hour photo, darkened with a random exposure factor), taken from the training
    split of ``../shared/data/photos``. Following the paper's protocol of several pre-generated
    versions per image, ``--per-style 6`` × 2 styles = 12 versions per image.
(b) ``NeuralStylizer``: loads a user-provided style network (``torch.export`` .pt2 or
    TorchScript) ``net(content B×3×H×W, style B×3×h×w) -> B×3×H×W`` (RGB in [0, 1]), e.g. an
    export of a photorealistic WCT2/PhotoWCT model. No weights are shipped; a missing file is a
    clear error.

CLI: ``python -m hndesc_features.training.stylize --help``. Output layout: ``OUT/<relative path without
extension>/<style>_<k>.jpg`` (``stylized_versions(OUT, rel)`` lists them for a dataset).
``python -m hndesc_features.training.stylize CONFIG`` stylizes exactly the training images of a config
(``data.source``) into the folders its ``loss.stylize.root`` names (one beside each dataset root,
``loss.stylize.rel_to``); a re-run only writes what is missing (resumable), with a progress bar.
Grayscale images get a lightness-only transfer plus the style's mean tint (with a warning);
images smaller than ``--min-size`` px are skipped with a warning.
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

logger = logging.getLogger("hndesc_features")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")

# Default style photos (training split of ../shared/data/photos; never held-out images).
DEFAULT_STYLE_PHOTOS = {
    "dusk": ["photos/13_sunset_by_Aitzol_Berasategi.jpg", "photos/40_EveningGlow.jpg"],
    "night": ["photos/38_DarkestHour.jpg"],
}
# Per-style random ranges: blend strength, hue rotation (deg), exposure factor (linear light).
STYLE_RANGES = {
    "dusk": {"strength": (0.7, 1.0), "hue": (-8.0, 8.0), "exposure": (0.8, 1.05)},
    "night": {"strength": (0.8, 1.0), "hue": (-8.0, 8.0), "exposure": (0.35, 0.7)},
}
DEFAULT_RANGES = {"strength": (0.7, 1.0), "hue": (-8.0, 8.0), "exposure": (0.8, 1.05)}


class StylizationWarning(UserWarning):
    pass


# ------------------------------------------------------------------------------ helpers
def read_rgb(path) -> np.ndarray:
    """Image file → H×W×3 uint8 RGB (the package's one reader, via datasets.base.read_image)."""
    from .datasets.base import read_image

    img = read_image(path, warn=False)
    if img is None:
        raise OSError(f"cannot read image {path}")
    return img


def is_grayscale(img: np.ndarray, tol: int = 2) -> bool:
    if img.ndim == 2 or img.shape[2] == 1:
        return True
    a = img.astype(np.int16)
    return bool((np.abs(a[..., 0] - a[..., 1]) <= tol).mean() > 0.99
                and (np.abs(a[..., 1] - a[..., 2]) <= tol).mean() > 0.99)


def to_lab(rgb_u8: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb_u8.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def from_lab(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return (rgb.clip(0, 1) * 255.0 + 0.5).astype(np.uint8)


def tone_curve(src: np.ndarray, ref: np.ndarray, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Strictly increasing piecewise-linear map of values ``src`` toward the distribution ``ref``:
    the mean of quantile matching and mean/std matching. Returns (xp, fp) for ``np.interp``."""
    q = np.linspace(0, 1, n)
    xs = np.quantile(src, q)
    ys = np.quantile(ref, q)
    # strictly increasing abscissae for np.interp
    xs = np.maximum.accumulate(xs + np.arange(n) * 1e-6)
    lin = (xs - src.mean()) / (src.std() + 1e-6) * ref.std() + ref.mean()
    return xs, 0.5 * ys + 0.5 * lin


@dataclass
class StyleStats:
    """Statistics of a style photo window: lightness samples, chroma mean/std."""

    L: np.ndarray
    ab_mean: np.ndarray
    ab_std: np.ndarray

    @classmethod
    def from_rgb(cls, rgb: np.ndarray, max_samples: int = 200_000, rng=None) -> "StyleStats":
        lab = to_lab(rgb).reshape(-1, 3)
        if len(lab) > max_samples:
            rng = rng or np.random.default_rng(0)
            lab = lab[rng.choice(len(lab), max_samples, replace=False)]
        return cls(lab[:, 0].copy(), lab[:, 1:].mean(0), lab[:, 1:].std(0))


# ------------------------------------------------------------------------------ (a) statistics
class StatsStylizer:
    """Pixel-wise colour/tone transfer toward real style photos (no weights, no geometry change)."""

    def __init__(self, style_photos: dict[str, Sequence], seed: int = 0, min_size: int = 32,
                 ranges: Optional[dict] = None):
        self.styles: dict[str, list[np.ndarray]] = {}
        for name, items in style_photos.items():
            imgs = [read_rgb(p) if not isinstance(p, np.ndarray) else p for p in items]
            imgs = [cv2.cvtColor(i, cv2.COLOR_GRAY2RGB) if i.ndim == 2 else i for i in imgs]
            if not imgs:
                raise ValueError(f"style '{name}' has no photos")
            self.styles[name] = [self._downscale(i) for i in imgs]
        self.labs = {k: [to_lab(i) for i in v] for k, v in self.styles.items()}
        self.rng = np.random.default_rng(seed)
        self.min_size = min_size
        self.ranges = {**STYLE_RANGES, **(ranges or {})}

    @staticmethod
    def _downscale(img: np.ndarray, max_side: int = 512) -> np.ndarray:
        s = max_side / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        return img

    def sample_params(self, style: str, rng: Optional[np.random.Generator] = None) -> dict:
        rng = self.rng if rng is None else rng
        r = self.ranges.get(style, DEFAULT_RANGES)
        labs = self.labs[style]
        lab = labs[rng.integers(len(labs))]
        H, W = lab.shape[:2]
        f = rng.uniform(0.5, 1.0)  # window of the style photo the statistics come from
        h, w = max(8, int(H * f)), max(8, int(W * f))
        y0, x0 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
        win = lab[y0:y0 + h, x0:x0 + w]
        step = max(1, int(np.sqrt(h * w / 50_000)))
        ab = win[..., 1:].reshape(-1, 2)
        stats = StyleStats(win[::step, ::step, 0].ravel().copy(), ab.mean(0), ab.std(0))
        return {"stats": stats,
                "strength": rng.uniform(*r["strength"]),
                "hue": rng.uniform(*r["hue"]),
                "exposure": rng.uniform(*r["exposure"])}

    def transfer(self, rgb: np.ndarray, stats: StyleStats, strength: float = 1.0, hue: float = 0.0,
                 exposure: float = 1.0) -> np.ndarray:
        """The colour map itself: H×W×3 uint8 → H×W×3 uint8 (same pixel grid)."""
        gray = is_grayscale(rgb)
        if rgb.ndim == 2:
            rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
        lab = to_lab(rgb)
        L, ab = lab[..., 0], lab[..., 1:]
        xs, ys = tone_curve(L.ravel()[:: max(1, L.size // 200_000)], stats.L)
        L2 = np.interp(L, xs, ys).astype(np.float32)
        # extrapolate linearly outside the sampled range (keeps the map strictly monotone)
        lo, hi = L < xs[0], L > xs[-1]
        if lo.any() or hi.any():
            s0 = (ys[1] - ys[0]) / max(xs[1] - xs[0], 1e-6)
            s1 = (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-6)
            L2[lo] = ys[0] + (L[lo] - xs[0]) * s0
            L2[hi] = ys[-1] + (L[hi] - xs[-1]) * s1
        if gray:
            ab2 = np.broadcast_to(stats.ab_mean, ab.shape).astype(np.float32)
        else:
            mu, sd = ab.reshape(-1, 2).mean(0), ab.reshape(-1, 2).std(0) + 1e-6
            ab2 = (ab - mu) / sd * stats.ab_std + stats.ab_mean
        if hue:
            t = np.deg2rad(hue)
            c, s = np.cos(t), np.sin(t)
            ab2 = np.stack([c * ab2[..., 0] - s * ab2[..., 1], s * ab2[..., 0] + c * ab2[..., 1]], -1)
        out = np.concatenate([L[..., None] + strength * (L2 - L)[..., None],
                              ab + strength * (ab2 - ab)], -1)
        rgb_f = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_LAB2RGB).clip(0, 1)
        if exposure != 1.0:  # in linear light
            lin = np.where(rgb_f <= 0.04045, rgb_f / 12.92, ((rgb_f + 0.055) / 1.055) ** 2.4) * exposure
            rgb_f = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.power(lin.clip(0), 1 / 2.4) - 0.055)
        return (rgb_f.clip(0, 1) * 255.0 + 0.5).astype(np.uint8)

    def __call__(self, rgb: np.ndarray, style: str, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        if style not in self.styles:
            raise KeyError(f"unknown style '{style}'; have {sorted(self.styles)}")
        p = self.sample_params(style, rng)
        return self.transfer(rgb, p["stats"], p["strength"], p["hue"], p["exposure"])


# ------------------------------------------------------------------------------ (b) neural
class NeuralStylizer:
    """A user-provided photorealistic style network, applied at full resolution.

    ``weights``: a ``torch.export`` archive (``.pt2``, preferred) or a TorchScript file whose
    module maps ``(content B×3×H×W, style B×3×h×w)`` RGB float tensors in [0, 1] to the
    stylized content B×3×H×W (e.g. an export of WCT2 / PhotoWCT with their released weights).
    Nothing is shipped or downloaded.
    """

    def __init__(self, weights, style_photos: dict[str, Sequence], device: str = "cpu", seed: int = 0):
        import torch

        path = Path(weights) if weights else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"Neural stylization needs style-network weights, not found at {weights}. None are "
                "shipped: export a photorealistic style-transfer model (e.g. WCT2 / PhotoWCT) with "
                "torch.export (.pt2) or TorchScript, signature net(content, style) -> stylized "
                "(RGB in [0,1]), and pass its path; or use the weight-free default (--method stats).")
        try:
            if path.suffix == ".pt2":
                self.net = torch.export.load(str(path)).module()
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.net = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:  # not an exported / scripted network
            raise RuntimeError(f"{path} is not a torch.export or TorchScript style network "
                               f"({type(e).__name__}: {e})") from e
        self.net = self.net.to(device)
        self.device = device
        self.styles = {k: [read_rgb(p) if not isinstance(p, np.ndarray) else p for p in v]
                       for k, v in style_photos.items()}
        self.rng = np.random.default_rng(seed)

    def transfer(self, rgb: np.ndarray, style_rgb: np.ndarray) -> np.ndarray:
        import torch

        def t(a):
            a = cv2.cvtColor(a, cv2.COLOR_GRAY2RGB) if a.ndim == 2 else a
            return torch.from_numpy(a).permute(2, 0, 1)[None].float().div(255).to(self.device)

        with torch.no_grad():
            out = self.net(t(rgb), t(style_rgb))
        if out.shape[-2:] != rgb.shape[:2]:
            raise RuntimeError(f"style network changed the image size {rgb.shape[:2]} → {tuple(out.shape[-2:])}")
        return (out[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)

    def __call__(self, rgb: np.ndarray, style: str) -> np.ndarray:
        photos = self.styles[style]
        return self.transfer(rgb, photos[self.rng.integers(len(photos))])


# ------------------------------------------------------------------------------ batch / CLI
def stylized_versions(out_dir, rel_path) -> list[Path]:
    """The pre-generated stylized copies of one image (``rel_path`` relative to the image root)."""
    d = Path(out_dir) / Path(rel_path).with_suffix("")
    return sorted(d.glob("*.jpg")) if d.is_dir() else []


def stylized_roots(sconf: dict) -> list[tuple[Path, Path]]:
    """(image root, stylized root) pairs of ``loss.stylize`` (``rel_to`` / ``root``, lists or single)."""
    from .datasets.base import expand

    roots, rels = sconf.get("root"), sconf.get("rel_to")
    roots = roots if isinstance(roots, (list, tuple)) else [roots]
    rels = rels if isinstance(rels, (list, tuple)) else [rels] * len(roots)
    if len(rels) != len(roots):
        raise ValueError(f"loss.stylize.root ({len(roots)}) and loss.stylize.rel_to ({len(rels)}) must "
                         "list as many folders")
    return [(expand(r) if r is not None else None, expand(s)) for r, s in zip(rels, roots)]


def default_style_photos(data_dir: Optional[Path] = None) -> dict[str, list[Path]]:
    if data_dir is None:
        from .datasets.dev_images import shared_data_dir

        data_dir = shared_data_dir()
    if data_dir is None:
        raise FileNotFoundError("no ../shared/data: pass style photos with --style NAME=photo1,photo2")
    return {k: [Path(data_dir) / p for p in v] for k, v in DEFAULT_STYLE_PHOTOS.items()}


def webcam_style_photos(scenes: Optional[Sequence[str]] = None, dark_below: float = 100.0,
                        root: Optional[str] = None) -> dict[str, list[Path]]:
    """Style sources from the *training* images of the static-webcam training scenes (the held-aside
    validation images and the benchmark scene ``chamonix`` are never used): ``webcam_dark`` (mean
    gray level below ``dark_below``: nights, dusks) and ``webcam_light`` (the others)."""
    from .datasets.webcam import DEFAULT_ROOT, TRAIN_SCENES, mean_brightness, webcam_images

    paths = webcam_images(root or DEFAULT_ROOT, list(scenes or TRAIN_SCENES), "train")
    br = mean_brightness(paths)
    out = {"webcam_dark": [p for p, b in zip(paths, br) if b < dark_below],
           "webcam_light": [p for p, b in zip(paths, br) if b >= dark_below]}
    return {k: v for k, v in out.items() if v}


def list_images(inputs: Sequence[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to its root) for image files and folders (recursive)."""
    out = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            out += [(f, f.relative_to(p)) for f in sorted(p.rglob("*")) if f.suffix.lower() in IMAGE_EXTS]
        elif p.is_file():
            out.append((p, Path(p.name)))
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    return out


def stylize_images(images: Sequence[tuple[Path, Path]], out_dir, stylizer, styles: Sequence[str],
                   per_style: int = 6, min_size: int = 32, overwrite: bool = False,
                   quality: int = 95) -> dict:
    """Write ``per_style`` versions per style of every image; returns counts."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    n_written = n_skipped = 0
    for path, rel in tqdm(images, desc="stylize", unit="img"):
        done = out_dir / Path(rel).with_suffix("")
        if not overwrite and all((done / f"{st}_{k:02d}.jpg").exists() for st in styles for k in range(per_style)):
            continue  # resumed run: this image is complete
        try:
            rgb = read_rgb(path)
        except OSError as e:
            warnings.warn(f"skipping unreadable image {path}: {e}", StylizationWarning)
            n_skipped += 1
            continue
        if min(rgb.shape[:2]) < min_size:
            warnings.warn(f"skipping {path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than {min_size} px",
                          StylizationWarning)
            n_skipped += 1
            continue
        if is_grayscale(rgb):
            warnings.warn(f"{path} is grayscale: lightness-only transfer plus the style's mean tint",
                          StylizationWarning)
        d = out_dir / rel.with_suffix("")
        d.mkdir(parents=True, exist_ok=True)
        for style in styles:
            for k in range(per_style):
                f = d / f"{style}_{k:02d}.jpg"
                if f.exists() and not overwrite:
                    continue
                out = stylizer(rgb, style)
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
                tmp = f.with_suffix(".partial")  # atomic: an interrupted run leaves no truncated copy
                tmp.write_bytes(buf.tobytes())
                tmp.replace(f)
                n_written += 1
    return {"written": n_written, "skipped": n_skipped}


def config_jobs(config: str, overrides: Sequence[str] = ()) -> list[tuple[list[tuple[Path, Path]], Path]]:
    """(images with their paths relative to a dataset root, stylized folder) per dataset root of a
    training config whose ``loss.stylize.mode`` is ``pregenerated``."""
    from .config import load_config
    from .datasets.image_folder import source_paths

    conf = load_config(config, overrides)
    sc = {"mode": "online", "root": None, "rel_to": None, **((conf.get("loss") or {}).get("stylize") or {})}
    if sc["mode"] != "pregenerated" or sc.get("root") is None:
        raise ValueError(f"config {config}: loss.stylize.mode is {sc['mode']!r} (with root {sc.get('root')}); "
                         "only a config that reads pre-generated copies (mode: pregenerated, root) has any to write")
    paths = [Path(p) for p in source_paths(conf["data"].get("source"))]
    jobs = []
    for rel_to, root in stylized_roots(sc):
        if rel_to is None:
            imgs = [(p, Path(p.name)) for p in paths]
        else:
            imgs = [(p, p.relative_to(rel_to)) for p in paths if p.is_relative_to(rel_to)]
        jobs.append((imgs, root))
    return jobs


def _is_config(arg: str) -> bool:
    if Path(arg).exists() and not arg.endswith((".yaml", ".yml")):
        return False
    from .config import ConfigError, resolve_config_path

    try:
        resolve_config_path(arg)
        return True
    except ConfigError:
        return False


def parse_styles(items: Optional[Sequence[str]]) -> Optional[dict[str, list[Path]]]:
    if not items:
        return None
    out = {}
    for it in items:
        if "=" not in it:
            raise SystemExit(f"--style expects NAME=photo1[,photo2...], got '{it}'")
        name, files = it.split("=", 1)
        out[name] = [Path(f) for f in files.split(",") if f]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hndesc_features.training.stylize",
        description="Pre-generate photorealistic stylized copies of training images (HNDesc). "
                    "Pixel-wise colour/tone transfer toward real dusk/night photos (default) or a "
                    "user-provided style network (torch.export/TorchScript); geometry is never changed.")
    ap.add_argument("inputs", nargs="+",
                    help="a training config (name under confs/train/ or .yaml path, then optional key=value "
                         "overrides): its training images into its loss.stylize.root folders; or image files "
                         "and/or folders (searched recursively) with --output")
    ap.add_argument("-o", "--output", help="output folder (OUT/<rel path>/<style>_<k>.jpg); not with a config")
    ap.add_argument("--style", action="append", metavar="NAME=PHOTO[,PHOTO...]",
                    help="a style and its real style photos (repeatable); default: dusk and night "
                         "photos from the training split of ../shared/data/photos")
    ap.add_argument("--per-style", type=int, default=6, help="versions per style (default 6: 2 styles x 6 = 12)")
    ap.add_argument("--method", choices=["stats", "neural"], default="stats")
    ap.add_argument("--net", help="style network (.pt2 torch.export or TorchScript) for --method neural")
    ap.add_argument("--min-size", type=int, default=32, help="skip images whose short side is smaller")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        if _is_config(args.inputs[0]):
            if args.output:
                raise ValueError("--output is not used with a training config (its loss.stylize.root is)")
            jobs = config_jobs(args.inputs[0], args.inputs[1:])
        else:
            if not args.output:
                raise ValueError("give --output for image files / folders (or a training config)")
            jobs = [(list_images(args.inputs), Path(args.output))]
        photos = parse_styles(args.style) or default_style_photos()
        if args.method == "stats":
            stylizer = StatsStylizer(photos, seed=args.seed, min_size=args.min_size)
        else:
            stylizer = NeuralStylizer(args.net, photos, seed=args.seed)
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    random.seed(args.seed)
    for images, out in jobs:
        res = stylize_images(images, out, stylizer, list(photos), args.per_style, args.min_size, args.overwrite)
        print(f"{res['written']} stylized images written to {out} ({len(images)} inputs, "
              f"{res['skipped']} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
