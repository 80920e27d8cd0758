"""The one homography-pair sampler of the trainer.

Two generators, both returning a pair of views of one source image with their exact homography:

- ``"hcrops"``: the HNDesc "H-crops" generator. Each view is a ``crop``×``crop`` crop of the
  image seen through its own random homography: the crop's square is zoomed by ``zoom`` ∈ [0.8, 1]
  (we only zoom in), one pair of opposite sides (top/bottom or left/right, 50/50) is shrunk by
  independent side factors ∈ [0.6, 1] (perspective), the square is rotated by ±15° and placed at a
  random centre. The second crop's centre is the first one's shifted by 0.1·crop along x and y,
  each with a random sign. ``H_0to1 = A1 · A0⁻¹`` with ``A_k`` the image→crop homographies.
- ``"full"``: SuperPoint-style. View 0 is a crop (or the whole image resized) of size ``size``;
  view 1 is view 0 warped by a random homography about the view centre: scale (log-uniform in
  ``scale``), rotation (uniform ±``rotation`` degrees), translation (±``translation``·size) and
  perspective (each corner moved by ±``perspective``·size). Both views are resampled from the
  source image, so view 1 has real content where the source has some.

Conventions: pixel centres at integer coordinates (hloc/OpenCV), a homography maps (x, y, 1)
column vectors, ``H_0to1`` maps view-0 pixels to view-1 pixels. Images are warped with
``kornia.geometry.transform.warp_perspective`` (``align_corners=True``: exactly this pixel
convention). ``valid0``/``valid1`` mark the view pixels that come from inside the source image.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import numpy as np
import torch

from hndesc_features.config import merge
from hndesc_features.geometry import warp_points  # noqa: F401 (one home, re-exported for the samplers)

DEFAULT_CONF = {
    "mode": "hcrops",  # "hcrops" | "full"
    "size": 256,  # output side (int) or [H, W]; for hcrops the crop side
    "hcrops": {
        "zoom": [0.8, 1.0],
        "max_rotation": 15.0,  # degrees
        "side_factors": [0.6, 1.0],
        "center_shift": 0.1,  # second centre = first ± center_shift·crop (random signs)
    },
    "full": {
        "scale": [0.7, 1.4],  # log-uniform
        "rotation": 30.0,  # uniform in ±rotation degrees
        "translation": 0.1,  # ±fraction of the view size
        "perspective": 0.1,  # each corner moved by ±fraction of the view size
        "crop_zoom": [0.8, 1.0],  # view 0: share of the largest box of the view's aspect that fits
        "native_scale": None,  # [lo, hi]: view 0 is instead a box of (view size × s) image pixels
    },
}


merge_conf = merge  # the one config merge (unknown keys are errors)


def _hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def corners(h: int, w: int) -> np.ndarray:
    """4×2 pixel-centre corners of an h×w image: TL, TR, BL, BR."""
    return np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3×3 H with H·src ~ dst, from 4 point pairs (DLT, exact for 4 points)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    a = []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.asarray(a))
    H = vt[-1].reshape(3, 3)
    return H / H[2, 2]


def homography_jacobian(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """N×2×2 Jacobians of x ↦ H(x) at the points (pixel coordinates)."""
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    ph = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ H.T
    w = ph[:, 2:3]
    q = ph[:, :2] / w
    J = H[None, :2, :2] - q[:, :, None] * H[None, 2:3, :2]
    return J / w[:, :, None]


def angle_diff(a, b) -> np.ndarray:
    """Absolute difference of angles in degrees, in [0, 180]."""
    d = np.abs(np.asarray(a) - np.asarray(b)) % 360.0
    return np.minimum(d, 360.0 - d)


def transfer_frames(frames: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Keypoint frames N×4 (x, y, size, angle°) seen through H: position warped, orientation
    turned and size scaled by the local affine part of H."""
    frames = np.asarray(frames, np.float64).reshape(-1, 4)
    xy = warp_points(frames[:, :2], H)
    J = homography_jacobian(H, frames[:, :2])
    th = np.deg2rad(frames[:, 3])
    u = np.einsum("nij,nj->ni", J, np.stack([np.cos(th), np.sin(th)], -1))
    ang = np.rad2deg(np.arctan2(u[:, 1], u[:, 0])) % 360.0
    size = frames[:, 2] * np.sqrt(np.abs(np.linalg.det(J)))
    return np.concatenate([xy, size[:, None], ang[:, None]], 1)


def inside(points, hw: Sequence[int], margin: float = 0.0):
    """Boolean mask of points within [margin, W-1-margin]×[margin, H-1-margin]."""
    h, w = hw
    x, y = points[..., 0], points[..., 1]
    return (x >= margin) & (x <= w - 1 - margin) & (y >= margin) & (y <= h - 1 - margin)


def visibility(points, H, hw: Sequence[int], margin: float = 0.0):
    """Mask of points (in view a) whose warp by H (a→b) lands inside view b of size hw."""
    return inside(warp_points(points, H), hw, margin)


def valid_mask(A_img_to_view: np.ndarray, image_hw: Sequence[int], view_hw: Sequence[int]) -> np.ndarray:
    """h×w bool: view pixels whose preimage lies inside the source image."""
    import cv2

    ones = np.ones(tuple(int(v) for v in image_hw), np.uint8)
    m = cv2.warpPerspective(ones, np.asarray(A_img_to_view, np.float64), (int(view_hw[1]), int(view_hw[0])),
                            flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return m > 0


# ----------------------------------------------------------------------------- H-crops (HNDesc)
def hcrop_homography(image_hw: Sequence[int], crop: int, rng: np.random.Generator,
                     zoom=(0.8, 1.0), max_rotation: float = 15.0, side_factors=(0.6, 1.0),
                     center: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One HNDesc crop: (A image→crop 3×3, crop centre in the image, sampled parameters)."""
    H_img, W_img = image_hw
    z = rng.uniform(zoom[0], zoom[1])
    vertical = bool(rng.random() < 0.5)  # False: top/bottom sides shrink; True: left/right sides
    f = rng.uniform(side_factors[0], side_factors[1], size=2)
    theta = math.radians(rng.uniform(-max_rotation, max_rotation))
    half = (crop - 1) / 2.0
    c = np.array([[-half, -half], [half, -half], [-half, half], [half, half]]) * z
    if not vertical:  # scale x of the top (TL, TR) and of the bottom (BL, BR) corners
        c[[0, 1], 0] *= f[0]
        c[[2, 3], 0] *= f[1]
    else:  # scale y of the left (TL, BL) and of the right (TR, BR) corners
        c[[0, 2], 1] *= f[0]
        c[[1, 3], 1] *= f[1]
    R = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    c = c @ R.T
    if center is None:
        r = 0.5 * math.sqrt(2.0) * z * crop  # radius of the zoomed square: any rotation fits
        lo = np.array([r, r])
        hi = np.array([W_img - 1 - r, H_img - 1 - r])
        hi = np.maximum(hi, lo)
        center = lo + rng.random(2) * (hi - lo)
    img_pts = c + np.asarray(center, np.float64)
    A = homography_from_points(img_pts, corners(crop, crop))
    params = {"zoom": z, "vertical": vertical, "side_factors": f, "rotation": math.degrees(theta),
              "center": np.asarray(center, np.float64)}
    return A, np.asarray(center, np.float64), params


def sample_hcrops(image_hw: Sequence[int], conf: dict, rng: np.random.Generator) -> dict:
    """Two HNDesc crops of one image: A0, A1 (image→crop) and H_0to1."""
    crop = _hw(conf["size"])[0]
    hc = conf["hcrops"]
    shift = hc["center_shift"] * crop
    z = hc["zoom"][1]
    r = 0.5 * math.sqrt(2.0) * z * crop + shift  # both crops fit for any rotation / sign
    H_img, W_img = image_hw
    lo = np.array([r, r])
    hi = np.maximum(np.array([W_img - 1 - r, H_img - 1 - r]), lo)
    c0 = lo + rng.random(2) * (hi - lo)
    kw = dict(zoom=hc["zoom"], max_rotation=hc["max_rotation"], side_factors=hc["side_factors"])
    A0, _, p0 = hcrop_homography(image_hw, crop, rng, center=c0, **kw)
    signs = np.where(rng.random(2) < 0.5, -1.0, 1.0)
    c1 = c0 + shift * signs
    A1, _, p1 = hcrop_homography(image_hw, crop, rng, center=c1, **kw)
    H = A1 @ np.linalg.inv(A0)
    return {"A0": A0, "A1": A1, "H_0to1": H / H[2, 2], "size": (crop, crop),
            "params": [p0, p1]}


def min_image_side(conf: dict) -> int:
    """Smallest image side the sampler needs (images are upscaled to it if smaller)."""
    conf = merge_conf(DEFAULT_CONF, conf)
    h, w = _hw(conf["size"])
    if conf["mode"] == "hcrops":
        hc = conf["hcrops"]
        return int(math.ceil(math.sqrt(2.0) * hc["zoom"][1] * h + 2 * hc["center_shift"] * h + 2))
    if conf["full"].get("native_scale"):
        return int(math.ceil(max(h, w) * conf["full"]["native_scale"][1]) + 1)
    return int(max(h, w) + 1)


# ----------------------------------------------------------------------------- SuperPoint-style
def sample_homography(hw: Sequence[int], rng: np.random.Generator, scale=(0.7, 1.4),
                      rotation: float = 30.0, translation: float = 0.1,
                      perspective: float = 0.1) -> np.ndarray:
    """Random H (view 0 → view 1, both of size hw) about the view centre.

    H = T(c + t) · R(θ) · S(s) · T(-c) · P, with P moving the four corners by up to
    ±perspective·size, s log-uniform in ``scale``, θ uniform in ±``rotation`` degrees.
    """
    h, w = hw
    size = np.array([w, h], np.float64)
    cr = corners(h, w)
    P = homography_from_points(cr, cr + rng.uniform(-perspective, perspective, (4, 2)) * size)
    s = math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1])))
    th = math.radians(rng.uniform(-rotation, rotation))
    t = rng.uniform(-translation, translation, 2) * size
    c = (size - 1) / 2.0
    T0 = np.array([[1, 0, -c[0]], [0, 1, -c[1]], [0, 0, 1]], np.float64)
    RS = np.array([[s * math.cos(th), -s * math.sin(th), 0], [s * math.sin(th), s * math.cos(th), 0],
                   [0, 0, 1]], np.float64)
    T1 = np.array([[1, 0, c[0] + t[0]], [0, 1, c[1] + t[1]], [0, 0, 1]], np.float64)
    H = T1 @ RS @ T0 @ P
    return H / H[2, 2]


def sample_full(image_hw: Sequence[int], conf: dict, rng: np.random.Generator) -> dict:
    """View 0: an axis-aligned crop of the image resized to `size` (the largest box that fits times
    ``crop_zoom``, or a box of ``native_scale`` image pixels per view pixel); view 1: view 0 warped by H."""
    vh, vw = _hw(conf["size"])
    fc = conf["full"]
    H_img, W_img = image_hw
    # view 0 covers a (zoom · fitting box) region of the image with the view's aspect ratio
    fit = min(W_img / vw, H_img / vh)
    if fc.get("native_scale"):
        z = min(math.exp(rng.uniform(math.log(fc["native_scale"][0]), math.log(fc["native_scale"][1]))), fit)
    else:
        z = fit * rng.uniform(fc["crop_zoom"][0], fc["crop_zoom"][1])
    bw, bh = vw * z, vh * z
    x0 = rng.random() * max(W_img - bw, 0.0)
    y0 = rng.random() * max(H_img - bh, 0.0)
    src = np.array([[x0, y0], [x0 + bw - 1, y0], [x0, y0 + bh - 1], [x0 + bw - 1, y0 + bh - 1]])
    A0 = homography_from_points(src, corners(vh, vw))
    H = sample_homography((vh, vw), rng, fc["scale"], fc["rotation"], fc["translation"],
                          fc["perspective"])
    return {"A0": A0, "A1": H @ A0, "H_0to1": H, "size": (vh, vw), "params": [{}, {}]}


def sample_pair_geometry(image_hw: Sequence[int], conf: dict, rng: np.random.Generator) -> dict:
    conf = merge_conf(DEFAULT_CONF, conf)
    if conf["mode"] == "hcrops":
        return sample_hcrops(image_hw, conf, rng)
    if conf["mode"] == "full":
        return sample_full(image_hw, conf, rng)
    raise ValueError(f"Unknown homography mode '{conf['mode']}', expected 'hcrops' or 'full'")


# ----------------------------------------------------------------------------- warping
def warp_image(image: torch.Tensor, H, out_hw: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """C×H×W or B×C×H×W image warped by H (source pixels → output pixels) with kornia."""
    from kornia.geometry.transform import warp_perspective

    squeeze = image.dim() == 3
    x = image[None] if squeeze else image
    M = torch.as_tensor(np.asarray(H, np.float64), dtype=torch.float64)
    M = M.expand(x.shape[0], 3, 3) if M.dim() == 2 else M
    out = warp_perspective(x, M.to(x.dtype), dsize=(int(out_hw[0]), int(out_hw[1])), mode=mode, padding_mode="zeros",
                           align_corners=True)
    return out[0] if squeeze else out


def sample_pair(image: torch.Tensor, conf: dict, rng: np.random.Generator,
                image1: Optional[torch.Tensor] = None) -> dict:
    """A homography pair from one C×H×W float image: views, H_0to1 and validity masks.

    ``image1`` (optional, same C×H×W as ``image``): view 1 is resampled from it instead — a second
    image *registered* to the first one (identity ground truth, e.g. two frames of a static webcam
    under other lighting), so the pair has real appearance change and the sampler's exact geometry.

    Returns ``view0``, ``view1`` (C×h×w), ``H_0to1`` (3×3 float64 numpy), ``A0``, ``A1``
    (image→view), ``valid0``, ``valid1`` (h×w bool: pixel comes from inside the image).
    """
    conf = merge_conf(DEFAULT_CONF, conf)
    image_hw = tuple(image.shape[-2:])
    if image1 is not None and tuple(image1.shape) != tuple(image.shape):
        raise ValueError(f"sample_pair: image1 {tuple(image1.shape)} must be registered to image "
                         f"{tuple(image.shape)} (same size)")
    geo = sample_pair_geometry(image_hw, conf, rng)
    hw = geo["size"]
    view0 = warp_image(image, geo["A0"], hw)
    view1 = warp_image(image if image1 is None else image1, geo["A1"], hw)
    return {
        "view0": view0, "view1": view1, "H_0to1": geo["H_0to1"], "A0": geo["A0"], "A1": geo["A1"],
        "valid0": valid_mask(geo["A0"], image_hw, hw), "valid1": valid_mask(geo["A1"], image_hw, hw),
        "params": geo["params"],
    }


# ----------------------------------------------------------------------------- correspondences
def reprojection_matches(kp0: np.ndarray, kp1: np.ndarray, H_0to1: np.ndarray, threshold: float = 3.0,
                         symmetric: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """GT correspondences between keypoint sets: mutual nearest neighbours in reprojection error.

    Returns (M×2 index pairs, M errors). The error of (i, j) is ``|H kp0_i - kp1_j|`` or, with
    ``symmetric``, the mean of that and ``|H⁻¹ kp1_j - kp0_i|``.
    """
    kp0 = np.asarray(kp0, np.float64).reshape(-1, 2)
    kp1 = np.asarray(kp1, np.float64).reshape(-1, 2)
    if len(kp0) == 0 or len(kp1) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    d = np.linalg.norm(warp_points(kp0, H_0to1)[:, None] - kp1[None], axis=-1)
    if symmetric:
        d1 = np.linalg.norm(kp0[:, None] - warp_points(kp1, np.linalg.inv(H_0to1))[None], axis=-1)
        d = 0.5 * (d + d1)
    nn01 = d.argmin(1)
    nn10 = d.argmin(0)
    i = np.arange(len(kp0))
    ok = (nn10[nn01] == i) & (d[i, nn01] < threshold)
    m = np.stack([i[ok], nn01[ok]], -1)
    return m, d[m[:, 0], m[:, 1]]
