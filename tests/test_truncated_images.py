"""A JPEG cut short (an interrupted copy or download) is reported: warned and skipped, or an error
with --strict. libjpeg alone decodes its first part and fills the rest with grey."""
from __future__ import annotations

import shutil

import cv2
import pytest

from conftest import run_py
from hndesc_features.confs import get_feature_conf
from hndesc_features.io import ImageReadError, list_h5_names, read_image

PHOTO = "02928139_3448003521.jpg"


@pytest.fixture
def folder(tmp_path, sacre_coeur):
    d = tmp_path / "images"
    d.mkdir()
    shutil.copy(sacre_coeur / PHOTO, d / "good.jpg")
    data = (sacre_coeur / PHOTO).read_bytes()
    (d / "cut.jpg").write_bytes(data[: int(len(data) * 0.6)])  # 60 % of the file
    (d / "trailing.jpg").write_bytes(data + b"\x00extra bytes some cameras append" * 8)
    return d


def test_truncated_jpeg_is_detected_though_opencv_decodes_it(folder):
    partial = cv2.imread(str(folder / "cut.jpg"))
    assert partial is not None and partial.shape == cv2.imread(str(folder / "good.jpg")).shape
    with pytest.raises(ImageReadError, match="cut.jpg: truncated JPEG"):
        read_image(folder / "cut.jpg")
    # complete files pass, also with data appended after the end-of-image marker
    assert (read_image(folder / "trailing.jpg") == read_image(folder / "good.jpg")).all()


def test_cli_skips_a_truncated_jpeg_with_a_warning(folder, tmp_path):
    conf = "orb"  # fast; the check is in the shared image reader, the same for every conf
    p = run_py(["-m", "hndesc_features.extract_features", "--conf", conf, "--image_dir", str(folder),
                "--export_dir", str(tmp_path / "o")])
    assert "cut.jpg: truncated JPEG" in p.stderr and "Skipped 1 unreadable image(s)" in p.stderr
    names = list_h5_names(tmp_path / "o" / (get_feature_conf(conf)["output"] + ".h5"))
    assert names == ["good.jpg", "trailing.jpg"]


def test_cli_strict_fails_on_a_truncated_jpeg(folder, tmp_path):
    p = run_py(["-m", "hndesc_features.extract_features", "--conf", "orb", "--image_dir", str(folder),
                "--export_dir", str(tmp_path / "o"), "--strict"], check=False)
    assert p.returncode == 1
    assert "cut.jpg: truncated JPEG" in p.stderr and "Traceback" not in p.stderr
