"""Image reading and feature-file writing, hloc-compatible and robust.

Pixels are read exactly as hloc reads them (cv2, IMREAD_IGNORE_ORIENTATION, BGR→RGB, 8-bit), so
our .h5 equals hloc's: 16-bit images are reduced to 8 bits, alpha is dropped, grayscale files
are replicated to RGB, and the EXIF orientation tag is ignored, as COLMAP also ignores it (the
keypoints live in the stored pixel frame, the one pycolmap reconstructs in).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import cv2
import h5py
import numpy as np

MIN_IMAGE_SIDE = 8  # smaller images cannot hold a single descriptor support region
# Above this many pixels (and when the conf downsizes anyway) JPEGs are decoded at a reduced
# resolution by libjpeg (1/2, 1/4, 1/8), so memory stays bounded for giant images.
LARGE_IMAGE_PIXELS = int(os.environ.get("HNDESC_LARGE_IMAGE_PIXELS", 48_000_000))


class ImageReadError(ValueError):
    """An image that cannot be used: the message names the file and the reason."""


def image_size_from_header(path: Path):
    """(W, H) without decoding the pixels, or None if the header cannot be parsed."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:
        return None


JPEG_EOI = b"\xff\xd9"


def jpeg_truncation(path: Path) -> str | None:
    """Why a JPEG file is truncated (libjpeg would decode only its first part and fill the rest with
    grey, with a warning only on stderr), or None when it is complete or not a JPEG.

    A complete JPEG ends with the end-of-image marker FF D9. Files without it at the end (some
    cameras append data after it) are decoded by Pillow, which raises on missing image data.
    """
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
        f.seek(max(0, path.stat().st_size - 64))
        tail = f.read().rstrip(b"\x00\r\n\t ")
    if tail.endswith(JPEG_EOI):
        return None
    from PIL import Image  # a matplotlib dependency

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:
        return f"truncated JPEG, only partly decodable ({type(e).__name__}: {e})"
    return None


def read_image(path, grayscale: bool = False, target_max: int | None = None) -> np.ndarray:
    """Read like hloc.utils.io.read_image; raises ImageReadError with a clear reason.

    target_max: the long side the caller will resize to; for images over LARGE_IMAGE_PIXELS this
    allows a reduced-resolution JPEG decode (never below target_max).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    truncated = jpeg_truncation(path)
    if truncated:
        raise ImageReadError(f"{path}: {truncated}")
    mode = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    size = image_size_from_header(path)
    if size is not None and target_max and size[0] * size[1] > LARGE_IMAGE_PIXELS:
        factor = 1
        while factor < 8 and max(size) / (factor * 2) >= target_max:
            factor *= 2
        if factor > 1:
            reduced = {
                2: (cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_COLOR_2),
                4: (cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_COLOR_4),
                8: (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_COLOR_8),
            }[factor]
            mode = reduced[0] if grayscale else reduced[1]
    try:
        image = cv2.imread(str(path), mode | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as e:  # e.g. over OpenCV's pixel limit
        raise ImageReadError(f"{path}: OpenCV cannot decode it ({e.err})") from None
    if image is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt, truncated or not an image format)")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise ImageReadError(f"{path}: image too small ({image.shape[1]}×{image.shape[0]} px, "
                             f"need at least {MIN_IMAGE_SIDE} px per side)")
    if not grayscale and image.ndim == 3:
        image = image[:, :, ::-1]
    return image


def original_size(path: Path, image: np.ndarray) -> np.ndarray:
    """(W, H) of the file as stored (not of a reduced decode)."""
    size = image_size_from_header(path)
    h, w = image.shape[:2]
    if size is not None and (size[0] * size[1] > LARGE_IMAGE_PIXELS):
        return np.array(size)
    return np.array((w, h))


def list_h5_names(path) -> list[str]:
    """Names of the image groups in an hloc feature file (groups that hold datasets)."""
    names = []
    with h5py.File(str(path), "r", libver="latest") as fd:
        def visit(_, obj):
            if isinstance(obj, h5py.Dataset):
                names.append(obj.parent.name.strip("/"))
        fd.visititems(visit)
    return sorted(set(names))


class FileLockedError(RuntimeError):
    pass


_HELD_LOCKS: set[str] = set()


@contextmanager
def exclusive_lock(target: Path):
    """Hold an exclusive lock next to `target`; a second writer gets a clear error.

    POSIX record locks (lockf) belong to the process and are not inherited by forked children
    (e.g. DataLoader workers), so a killed writer never leaves a lock held behind it. The lock
    file is removed on release (success or failure), while still locked; a process that opened
    it just before cannot be fooled: after locking, the path must still name the file it locked.
    """
    lock_path = Path(str(target) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock_path.resolve())
    msg = (f"{target} is being written by another process (lock {lock_path} is held). "
           "Wait for it to finish or write to another --feature_path.")
    if key in _HELD_LOCKS:
        raise FileLockedError(msg.replace("another process", "this process already"))
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise FileLockedError(msg) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed it between our open and our lock: take the new one
    _HELD_LOCKS.add(key)
    try:
        yield
    finally:
        _HELD_LOCKS.discard(key)
        try:
            os.unlink(lock_path)  # still locked: no other process holds this inode
        except FileNotFoundError:
            pass
        os.close(fd)


def write_group(fd: h5py.File, name: str, pred: dict, attrs: dict | None = None):
    """Write one image's arrays as hloc does (replacing an existing group)."""
    if name in fd:
        del fd[name]
    grp = fd.create_group(name)
    for k, v in pred.items():
        grp.create_dataset(k, data=v)
    for (ds, key), val in (attrs or {}).items():
        grp[ds].attrs[key] = val


class FeatureJournal:
    """Crash-safe staging of per-image results before they enter the .h5.

    Each finished image is written atomically to `<h5>.partial/<hash>.npz`; `commit()` copies the
    .h5 to a temporary file, appends the staged images and atomically replaces the .h5. A process
    killed at any moment therefore leaves the previous .h5 intact plus the finished images of the
    killed run, which the next run commits and skips.
    """

    def __init__(self, h5_path: Path):
        self.h5_path = Path(h5_path)
        self.dir = Path(str(self.h5_path) + ".partial")

    @staticmethod
    def _key(name: str) -> str:
        return hashlib.sha1(name.encode()).hexdigest()

    def _files(self) -> list[Path]:
        """Finished entries (temporary files being written are dot-files without .npz)."""
        if not self.dir.exists():
            return []
        return sorted(p for p in self.dir.glob("*.npz") if not p.name.startswith("."))

    def names(self) -> list[str]:
        out = []
        for p in self._files():
            try:
                with np.load(p, allow_pickle=False) as z:
                    out.append(str(z["__name__"]))
            except Exception:
                p.unlink(missing_ok=True)  # unreadable leftover: recompute that image
        return out

    def add(self, name: str, pred: dict, uncertainty: float | None):
        self.dir.mkdir(parents=True, exist_ok=True)
        arrays = {f"d_{k}": v for k, v in pred.items()}
        arrays["__name__"] = np.array(name)
        arrays["__keys__"] = np.array(list(pred.keys()))
        if uncertainty is not None:
            arrays["__uncertainty__"] = np.array(uncertainty)
        final = self.dir / f"{self._key(name)}.npz"
        tmp = self.dir / f".{final.stem}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, final)

    def commit(self) -> int:
        """Move staged images into the .h5 atomically; returns how many were committed."""
        files = self._files()
        if not files:
            if self.dir.exists():
                shutil.rmtree(self.dir, ignore_errors=True)
            return 0
        tmp = self.h5_path.with_name(f".{self.h5_path.name}.{os.getpid()}.tmp")
        if self.h5_path.exists():
            shutil.copyfile(self.h5_path, tmp)
        n = 0
        with h5py.File(str(tmp), "a", libver="latest") as fd:
            for p in files:
                try:
                    z = np.load(p, allow_pickle=False)
                except Exception:
                    continue
                with z:
                    keys = [str(k) for k in z["__keys__"]]
                    pred = {k: z[f"d_{k}"] for k in keys}
                    attrs = {}
                    if "__uncertainty__" in z.files and "keypoints" in pred:
                        attrs[("keypoints", "uncertainty")] = z["__uncertainty__"][()]
                    write_group(fd, str(z["__name__"]), pred, attrs)
                n += 1
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.h5_path)
        shutil.rmtree(self.dir, ignore_errors=True)
        return n
