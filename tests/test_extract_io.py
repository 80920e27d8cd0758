"""Robust I/O of our extraction CLI on real photos and on every kind of bad input."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from conftest import ROOT, read_h5, run_py, skimage_photo
from hndesc_features import extract_features
from hndesc_features.confs import get_feature_conf
from hndesc_features.io import FeatureJournal, FileLockedError, exclusive_lock, list_h5_names


def conf(name="rootsift", **model):
    c = get_feature_conf(name)
    c["model"].update(model)
    return c


def test_extract_real_photos_layout(two_photos, tmp_path):
    out = extract_features.main(conf(), two_photos, tmp_path / "o", as_half=False)
    data = read_h5(out)
    names = list_h5_names(out)
    assert names == ["motorcycle_left.jpg", "motorcycle_right.jpg"]
    kp = data["motorcycle_left.jpg/keypoints"][0]
    desc = data["motorcycle_left.jpg/descriptors"][0]
    w, h = data["motorcycle_left.jpg/image_size"][0]
    assert (w, h) == (741, 500)
    assert kp.ndim == 2 and kp.shape[1] == 2 and 1000 < len(kp) <= 4096
    assert desc.shape == (128, len(kp)) and desc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc, axis=0), 1, atol=1e-4)
    assert kp[:, 0].min() >= -0.5 and kp[:, 0].max() <= w - 0.5 and kp[:, 1].max() <= h - 0.5
    assert "uncertainty" in data["motorcycle_left.jpg/keypoints"][1]
    scores = data["motorcycle_left.jpg/scores"][0]
    assert np.all(np.diff(scores) <= 0), "keypoints sorted by decreasing score"


def test_resize_rescales_keypoints_to_original(two_photos, tmp_path):
    full = read_h5(extract_features.main(conf(), two_photos, tmp_path / "a", as_half=False))
    c = conf()
    c["preprocessing"]["resize_max"] = 370  # half size
    half = read_h5(extract_features.main(c, two_photos, tmp_path / "b", as_half=False))
    k_full = full["motorcycle_left.jpg/keypoints"][0]
    k_half = half["motorcycle_left.jpg/keypoints"][0]
    # the strongest half-resolution keypoints are found again at full resolution, same place
    d = np.linalg.norm(k_half[:200, None] - k_full[None], axis=-1).min(1)
    assert np.median(d) < 1.0, np.median(d)
    assert half["motorcycle_left.jpg/image_size"][0].tolist() == [741, 500]


def test_as_half(two_photos, tmp_path):
    out = read_h5(extract_features.main(conf(), two_photos, tmp_path / "o", as_half=True))
    assert out["motorcycle_left.jpg/descriptors"][0].dtype == np.float16
    assert out["motorcycle_left.jpg/keypoints"][0].dtype == np.float16


def test_blank_image_gives_valid_empty_arrays(tmp_path):
    d = tmp_path / "i"
    d.mkdir()
    cv2.imwrite(str(d / "blank.png"), np.full((200, 300), 128, np.uint8))
    for name in ("rootsift", "orb", "surf"):
        out = read_h5(extract_features.main(get_feature_conf(name), d, tmp_path / name, as_half=False))
        kp, desc = out["blank.png/keypoints"][0], out["blank.png/descriptors"][0]
        assert kp.shape == (0, 2), (name, kp.shape)
        assert desc.shape[1] == 0 and desc.shape[0] in (64, 128, 256), (name, desc.shape)


def make_bad_folder(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    good = skimage_photo("coffee.png")
    cv2.imwrite(str(d / "good.jpg"), good[:, :, ::-1])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[:200])
    cv2.imwrite(str(d / "tiny.png"), np.zeros((1, 1, 3), np.uint8))


def test_bad_images_are_named_skipped_and_summarised(tmp_path, caplog):
    d = tmp_path / "bad"
    make_bad_folder(d)
    p = run_py(["-m", "hndesc_features.extract_features", "--conf", "rootsift", "--image_dir", str(d),
                "--export_dir", str(tmp_path / "o")])
    log = p.stderr
    for bad, why in (("empty.jpg", "empty"), ("text.jpg", "not a readable image"),
                     ("truncated.jpg", ""), ("tiny.png", "too small")):
        assert bad in log and why in log, (bad, log[-2000:])
    assert "Skipped 4 unreadable image(s)" in log
    names = list_h5_names(tmp_path / "o" / (get_feature_conf("rootsift")["output"] + ".h5"))
    assert names == ["good.jpg"]


def test_strict_fails_on_first_bad_image(tmp_path):
    d = tmp_path / "bad"
    make_bad_folder(d)
    p = run_py(["-m", "hndesc_features.extract_features", "--conf", "rootsift", "--image_dir", str(d),
                "--export_dir", str(tmp_path / "o"), "--strict"], check=False)
    assert p.returncode == 1
    assert "empty.jpg: file is empty" in p.stderr
    assert "Traceback" not in p.stderr


def test_16bit_rgba_gray_read_like_8bit(tmp_path):
    rgb = skimage_photo("astronaut.png")
    d = tmp_path / "fmt"
    d.mkdir()
    cv2.imwrite(str(d / "a_rgb8.png"), rgb[:, :, ::-1])
    cv2.imwrite(str(d / "b_rgb16.png"), rgb[:, :, ::-1].astype(np.uint16) * 257)
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    alpha[:50] = 0  # alpha is ignored (hloc drops it): same pixels
    cv2.imwrite(str(d / "c_rgba.png"), np.concatenate([rgb[:, :, ::-1], alpha], -1))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(d / "d_gray.png"), gray)
    cv2.imwrite(str(d / "e_gray16.png"), gray.astype(np.uint16) * 257)
    from hndesc_features.io import read_image

    for grayscale in (False, True):
        ref = read_image(d / "a_rgb8.png", grayscale).astype(int)
        for n in ("b_rgb16.png", "c_rgba.png"):
            img = read_image(d / n, grayscale)
            assert img.dtype == np.uint8 and img.shape == ref.shape
            # colour: exact; grayscale: OpenCV converts before reducing depth (±1 level)
            assert np.abs(img.astype(int) - ref).max() <= (1 if grayscale else 0), (n, grayscale)
    g16 = read_image(d / "e_gray16.png", False)
    assert g16.shape == rgb.shape and np.abs(g16[..., 0].astype(int) - gray).max() == 0
    out = read_h5(extract_features.main(conf(), d, tmp_path / "o", as_half=False))
    k_ref = out["a_rgb8.png/keypoints"][0]
    for n in ("b_rgb16.png", "c_rgba.png", "d_gray.png", "e_gray16.png"):
        k = out[f"{n}/keypoints"][0]
        assert len(k) > 1000
        d_nn = np.linalg.norm(k[:500, None] - k_ref[None], axis=-1).min(1)
        assert np.mean(d_nn < 0.5) > 0.9, n


def test_exif_rotated_jpeg_uses_stored_pixel_frame(tmp_path):
    """EXIF orientation is ignored like hloc and COLMAP do: keypoints are in the stored frame."""
    PIL = pytest.importorskip("PIL.Image")
    rgb = skimage_photo("chelsea.png")
    d = tmp_path / "exif"
    d.mkdir()
    im = PIL.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° CW on display
    im.save(d / "rotated.jpg", quality=95, exif=exif.tobytes())
    im.save(d / "plain.jpg", quality=95)
    out = read_h5(extract_features.main(conf(), d, tmp_path / "o", as_half=False))
    assert out["rotated.jpg/image_size"][0].tolist() == [rgb.shape[1], rgb.shape[0]]
    np.testing.assert_array_equal(out["rotated.jpg/keypoints"][0], out["plain.jpg/keypoints"][0])


@pytest.mark.heavy(10)
def test_resume_after_kill(tmp_path, sacre_coeur):
    """SIGKILL mid-run leaves a readable .h5 (or none); the rerun recovers finished images."""
    out = tmp_path / "o"
    fp = out / (get_feature_conf("rootsift")["output"] + ".h5")
    cmd = [sys.executable, "-m", "hndesc_features.extract_features", "--conf", "rootsift",
           "--image_dir", str(sacre_coeur), "--export_dir", str(out)]
    # first a complete run on 2 images, so a .h5 exists when the next run is killed
    lst = tmp_path / "two.txt"
    lst.write_text("\n".join(sorted(p.name for p in sacre_coeur.glob("*.jpg"))[:2]))
    run_py(cmd[1:] + ["--image_list", str(lst)])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    journal = FeatureJournal(fp)
    t0 = time.time()
    while len(journal.names()) < 2 and time.time() - t0 < 240:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: main process and its loader worker
    proc.wait()
    done = journal.names()
    assert len(done) >= 2, "the killed run had staged finished images"
    assert list_h5_names(fp) == sorted(lst.read_text().split()), "the .h5 is intact and readable"
    p = run_py(cmd[1:])
    assert f"Recovered {len(done)} images" in p.stderr
    assert len(list_h5_names(fp)) == 10
    assert not journal.dir.exists()


def test_second_writer_gets_clear_error(tmp_path, two_photos):
    fp = tmp_path / "o" / "f.h5"
    with exclusive_lock(fp):
        p = run_py(["-m", "hndesc_features.extract_features", "--conf", "rootsift", "--image_dir",
                    str(two_photos), "--export_dir", str(tmp_path / "o"), "--feature_path", str(fp)],
                   check=False)
    assert p.returncode == 1
    assert "being written by another process" in p.stderr and "Traceback" not in p.stderr
    with pytest.raises(FileLockedError):
        with exclusive_lock(fp):
            with exclusive_lock(fp):
                pass


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    """A folder with one 100-megapixel JPEG (written once for both parametrizations), its raw size in MB."""
    d = tmp_path_factory.mktemp("big")
    tile = skimage_photo("astronaut.png")[:, :, ::-1]
    big = np.tile(tile, (16, 24, 1))  # 8192×12288×3 = 302 MB raw
    cv2.imwrite(str(d / "big.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return d, big.nbytes / 2**20


@pytest.mark.parametrize("reduced", [True, False])
def test_very_large_jpeg_bounded_memory(tmp_path, reduced, big_jpeg):
    """A 100-megapixel JPEG is decoded at reduced resolution: peak RSS far below its raw size."""
    d, raw_mb = big_jpeg
    # the image is loaded the way the extraction loader does it, in a fresh process
    # (peak RSS is reset through /proc/self/clear_refs after the imports, read back as VmHWM)
    code = (
        "import re\n"
        "from hndesc_features.extract_features import ImageDataset\n"
        "from hndesc_features.confs import get_feature_conf\n"
        "def kb(k): return int(re.search(k + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        f"ds = ImageDataset({str(d)!r}, get_feature_conf('rootsift')['preprocessing'])\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = kb('VmRSS') / 1024\n"
        "out = ds.load('big.jpg')\n"
        "print('SHAPE', out['image'].shape, 'SIZE', out['original_size'].tolist())\n"
        "print('BASE_MB', base)\n"
        "print('MAXRSS_MB', kb('VmHWM') / 1024)\n")
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure peak memory")
    p = run_py(["-c", code], env_extra={} if reduced else {"HNDESC_LARGE_IMAGE_PIXELS": str(10**12)})
    assert "SHAPE (1, 683, 1024) SIZE [12288, 8192]" in p.stdout, p.stdout
    base = float(p.stdout.split("BASE_MB")[1].split()[0])
    rss = float(p.stdout.split("MAXRSS_MB")[1])
    if reduced:
        assert rss - base < raw_mb / 2, f"peak RSS grew {rss - base:.0f} MB vs raw image {raw_mb:.0f} MB"
    else:  # the control: without the reduced decode the same image costs more than its raw size
        assert rss - base > raw_mb, f"peak RSS grew only {rss - base:.0f} MB"
        return
    extract_features.main(get_feature_conf("rootsift"), d, tmp_path / "o")
    fp = tmp_path / "o" / (get_feature_conf("rootsift")["output"] + ".h5")
    with h5py.File(fp) as f:
        assert f["big.jpg/image_size"][()].tolist() == [12288, 8192]
        kp = f["big.jpg/keypoints"][()]
        assert len(kp) > 100 and kp[:, 0].max() > 6000  # in original-resolution coordinates
