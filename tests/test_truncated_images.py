"""A JPEG cut short (an interrupted copy or download) is reported: warned and skipped, or an error
with --strict. libjpeg alone decodes its first part and fills the rest with grey."""
from __future__ import annotations

import logging
import shutil

import cv2
import pytest

from hndesc_features import extract_features
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


@pytest.fixture
def log(caplog):
    """Records of the package logger (it does not propagate to the root logger)."""
    logger = logging.getLogger("hndesc_features")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def test_extraction_skips_a_truncated_jpeg_with_a_warning(folder, tmp_path, log):
    conf = get_feature_conf("orb")  # fast; the check is in the shared image reader, the same for every conf
    path = extract_features.main(conf, folder, tmp_path / "o", progress=False)
    assert list_h5_names(path) == ["good.jpg", "trailing.jpg"]
    warnings = [r.getMessage() for r in log.records if r.levelno == logging.WARNING]
    assert any("cut.jpg: truncated JPEG" in w for w in warnings)
    assert any(w.startswith("Skipped 1 unreadable image(s)") for w in warnings)


def test_strict_extraction_fails_on_a_truncated_jpeg(folder, tmp_path, log):
    with pytest.raises(SystemExit) as e:
        extract_features.cli(["--conf", "orb", "--image_dir", str(folder), "--export_dir", str(tmp_path / "o"),
                              "--strict"])
    assert e.value.code == 1
    (error,) = [r.getMessage() for r in log.records if r.levelno == logging.ERROR]
    assert "cut.jpg: truncated JPEG" in error and "\n" not in error
