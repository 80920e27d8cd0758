"""Dataset download helpers: single files (resumable, optional sha256), Apache directory
mirroring (`wget -r -np` equivalent) and safe unpacking. Every network or integrity failure
raises BenchmarkError with a message saying what to fetch by hand."""
from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable, Optional

from tqdm import tqdm

from .common import BenchmarkError, logger


def sha256sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: Path, sha256: Optional[str] = None, timeout: float = 60.0,
                  manual_hint: str = "") -> Path:
    """Download url to dest (skipped if dest exists), then check sha256 when given.

    The transfer goes to `dest.part` and is renamed at the end, so a broken transfer never
    leaves a truncated file under the final name. The sha256 is written to `dest.sha256`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        tmp = dest.with_name(dest.name + ".part")
        logger.info(f"Downloading {url} → {dest}")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                    for block in iter(lambda: r.read(1 << 20), b""):
                        f.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, ValueError) as e:
            tmp.unlink(missing_ok=True)
            raise BenchmarkError(
                f"Could not download {url} ({e}). Without network access, fetch it elsewhere and "
                f"put it at {dest}{manual_hint}.") from None
        tmp.replace(dest)
    digest = sha256sum(dest)
    if sha256 is not None and digest != sha256.lower():
        raise BenchmarkError(f"{dest} has sha256 {digest}, expected {sha256}: corrupt or different "
                             "file. Delete it and download again.")
    Path(str(dest) + ".sha256").write_text(f"{digest}  {dest.name}\n")
    if sha256 is None:
        logger.info(f"{dest.name}: sha256 {digest} (no reference checksum published; stored beside it).")
    return dest


_HREF = re.compile(r'href="([^"?#]+)"', re.IGNORECASE)


def mirror_directory(url: str, dest: Path, timeout: float = 60.0, skip: Iterable[str] = ()) -> list[Path]:
    """Fetch every file below an Apache-style index URL (like `wget -r -np -nH --cut-dirs`)."""
    if not url.endswith("/"):
        url += "/"
    skip = tuple(skip)
    files, todo, seen = [], [(url, Path(dest))], set()
    while todo:
        cur, out = todo.pop()
        if cur in seen:
            continue
        seen.add(cur)
        try:
            with urllib.request.urlopen(cur, timeout=timeout) as r:
                html = r.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise BenchmarkError(f"Could not list {cur} ({e}). Without network access, mirror it "
                                 f"elsewhere (`wget -r -np -nH -R 'index.html*' {url}`) and copy it "
                                 f"to {dest}.") from None
        for href in _HREF.findall(html):
            full = urllib.parse.urljoin(cur, href)
            if not full.startswith(cur) or full == cur or href.startswith(("/", "..")):
                continue  # parent / sort links / absolute paths outside the tree
            rel = urllib.parse.unquote(full[len(cur):])
            if any(s in rel for s in skip):
                continue
            if full.endswith("/"):
                todo.append((full, out / rel.rstrip("/")))
            else:
                files.append(download_file(full, out / rel, timeout=timeout))
    return files


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack a .zip / .tar(.gz|.bz2|.xz) into dest, refusing paths that leave dest."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for m in z.namelist():
                    if not (root / m).resolve().is_relative_to(root):
                        raise BenchmarkError(f"{archive} has an entry outside the target: {m}")
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                t.extractall(dest, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as e:
        raise BenchmarkError(f"Cannot unpack {archive}: {e}") from None
    return dest


def move_contents(src: Path, dst: Path) -> None:
    """Merge the tree src into dst (files already in dst are kept)."""
    for p in sorted(Path(src).rglob("*")):
        if p.is_file():
            t = Path(dst) / p.relative_to(src)
            if not t.exists():
                t.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(p), str(t))
