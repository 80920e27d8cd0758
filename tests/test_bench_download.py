"""Dataset download code: the real mirroring/unpacking path against a local HTTP server, and
clean failures when the network is unreachable (proxies pointed at a closed local port, so no
test ever reaches the internet)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from benchmarks.common import BenchmarkError
from conftest import run_py

ROOT = Path(__file__).resolve().parents[1]
DEAD = "http://127.0.0.1:9"
OFFLINE_ENV = {"http_proxy": DEAD, "https_proxy": DEAD, "HTTP_PROXY": DEAD, "HTTPS_PROXY": DEAD,
               "no_proxy": "", "NO_PROXY": ""}


def _zip(path: Path, files: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def test_aachen_download_mirrors_and_unpacks(server, tmp_path):
    from benchmarks import aachen_v1_1

    www, url = server
    site = www / "Aachen-Day-Night"
    _zip(site / "images" / "database_and_query_images.zip",
         {"images_upright/db/1.jpg": b"x", "images_upright/query/day/nexus4/2.jpg": b"y"})
    _zip(site / "aachen_v1_1.zip", {"3D-models/aachen_v_1_1/cameras.bin": b"c",
                                    "3D-models/aachen_v_1_1/images.bin": b"i",
                                    "3D-models/aachen_v_1_1/points3D.bin": b"p",
                                    "images_upright/db/3.jpg": b"z"})
    (site / "queries").mkdir()
    (site / "queries" / "night_time_queries_with_intrinsics.txt").write_text("query/night/a.jpg SIMPLE_RADIAL 1 1 1 0 0 0\n")
    out = aachen_v1_1.download(tmp_path / "ds", base_url=f"{url}/Aachen-Day-Night/")
    assert (out / "images_upright" / "db" / "1.jpg").read_bytes() == b"x"
    assert (out / "images_upright" / "db" / "3.jpg").exists()
    assert (out / "3D-models" / "aachen_v_1_1" / "points3D.bin").exists()
    assert (out / "aachen_v1_1.zip.sha256").exists()
    lay = aachen_v1_1.find_layout(out)
    assert lay["queries"] == [out / "queries" / "night_time_queries_with_intrinsics.txt"]
    assert not list(out.rglob("*.part"))


def test_download_file_checksum_and_zip_slip(server, tmp_path):
    from benchmarks.download import download_file, sha256sum, unpack

    www, url = server
    (www / "a.bin").write_bytes(b"hello")
    p = download_file(f"{url}/a.bin", tmp_path / "a.bin")
    assert p.read_bytes() == b"hello"
    with pytest.raises(BenchmarkError, match="sha256"):
        download_file(f"{url}/a.bin", tmp_path / "b.bin", sha256="0" * 64)
    assert download_file(f"{url}/a.bin", tmp_path / "c.bin", sha256=sha256sum(p)).exists()
    with pytest.raises(BenchmarkError, match="Could not download"):
        download_file(f"{url}/missing.bin", tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists() and not (tmp_path / "m.bin.part").exists()
    _zip(tmp_path / "evil.zip", {"../evil.txt": b"no"})
    with pytest.raises(BenchmarkError, match="outside"):
        unpack(tmp_path / "evil.zip", tmp_path / "x")
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("module", ["aachen_v1_1", "inloc", "tokyo247"])
def test_download_offline_fails_cleanly(module, tmp_path):
    p = run_py(["-m", f"benchmarks.{module}", "--download", str(tmp_path / "ds")], env_extra=OFFLINE_ENV, cwd=ROOT,
               timeout=180, check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert "Could not" in p.stderr and ("elsewhere" in p.stderr or "mirror" in p.stderr)
    assert not list((tmp_path / "ds").rglob("*.part"))
