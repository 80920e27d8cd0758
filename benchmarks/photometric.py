"""Deterministic photometric changes on uint8 images (H×W×3, BGR as cv2 reads them).

Used by make_dev_hpatches (i_* sequences) and localization_gt --night. Every function takes a
numpy Generator so that a (seed, image name) pair always gives the same pixels.
"""
from __future__ import annotations

import zlib

import cv2
import numpy as np


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A Generator that depends only on the seed and the names (stable across runs/platforms)."""
    return np.random.default_rng([int(seed)] + [zlib.crc32(n.encode()) for n in names])


def _f(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def gamma(img: np.ndarray, g: float) -> np.ndarray:
    """out = in ** g (g > 1 darkens the mid-tones)."""
    return _u8(np.power(_f(img), g))


def brightness_contrast(img: np.ndarray, gain: float, bias: float) -> np.ndarray:
    return _u8(_f(img) * gain + bias)


def colour_cast(img: np.ndarray, gains_bgr) -> np.ndarray:
    return _u8(_f(img) * np.asarray(gains_bgr, np.float32)[None, None])


def sensor_noise(img: np.ndarray, rng: np.random.Generator, shot: float, read: float) -> np.ndarray:
    """Signal-dependent (shot, std ∝ sqrt(signal)) plus constant (read) Gaussian noise."""
    x = _f(img)
    std = np.sqrt(np.maximum(x, 0) * shot ** 2 + read ** 2)
    return _u8(x + rng.standard_normal(x.shape).astype(np.float32) * std)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img.copy()
    return cv2.GaussianBlur(img, (0, 0), sigma)


def low_light(img: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    """Under-exposure: exposure × (1 - 0.85 level), gamma up, then amplified sensor noise."""
    x = np.power(_f(img), 1.0 + 0.6 * level) * (1.0 - 0.85 * level)
    return sensor_noise(_u8(x), rng, shot=0.02 + 0.08 * level, read=0.004 + 0.02 * level)


def render_night(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A low-light photo of the same view: darkening + gamma, sodium-lamp colour cast,
    slight defocus/shake blur, shot + read noise and a JPEG-like re-quantisation."""
    s = float(np.clip(strength, 0.0, 1.0))
    x = _f(img)
    exposure = (0.22 + 0.08 * rng.random()) ** s
    x = np.power(x, 1.0 + 0.8 * s) * exposure
    cast = np.array([0.55 + 0.15 * rng.random(), 0.85 + 0.1 * rng.random(), 1.15 + 0.1 * rng.random()])
    x = x * (1.0 + (cast[None, None] - 1.0) * s)  # BGR: less blue, more red
    out = blur(_u8(x), 0.6 + 0.8 * s * rng.random())
    out = sensor_noise(out, rng, shot=0.03 + 0.07 * s, read=0.005 + 0.015 * s)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else out


PHOTOMETRIC_TYPES = ("gamma", "brightness", "low_light", "colour_cast", "noise")


def apply_change(img: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """One named photometric change at severity in (0, 1]; a mild sensor noise is always added."""
    t = float(np.clip(severity, 0.0, 1.0))
    if kind == "gamma":
        g = 1.0 + 1.6 * t if rng.random() < 0.5 else 1.0 / (1.0 + 1.2 * t)
        out = gamma(img, g)
    elif kind == "brightness":
        if rng.random() < 0.5:
            out = brightness_contrast(img, 1.0 - 0.7 * t, 0.0)
        else:
            out = brightness_contrast(img, 1.0 + 0.5 * t, 0.15 * t)
    elif kind == "low_light":
        out = low_light(img, rng, 0.35 + 0.6 * t)
    elif kind == "colour_cast":
        d = 0.7 * t
        gains = 1.0 + rng.uniform(-d, d, size=3)
        gains = gains / max(gains.max(), 1e-6) * (1.0 + 0.2 * t)
        out = colour_cast(img, gains)
    elif kind == "noise":
        out = sensor_noise(blur(img, 0.5 + 1.5 * t), rng, shot=0.04 + 0.12 * t, read=0.01 + 0.04 * t)
    else:
        raise ValueError(f"Unknown photometric change {kind}; one of {PHOTOMETRIC_TYPES}.")
    return sensor_noise(out, rng, shot=0.01, read=0.003)
