"""Training data checks: the 2:1 check sees an image as the reader returns it (EXIF orientation applied)."""

import numpy as np
import pytest
from PIL import Image

from opama_tools.data.train_data import TrainDataError, _check_aspect


def _save(path, h, w, orientation=None):
    im = Image.fromarray(np.zeros((h, w, 3), np.uint8))
    if orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, exif=exif)


def test_aspect_check_applies_exif_orientation(tmp_path):
    # stored 16x8 (HxW) but EXIF 6 turns it into an 8x16 panorama: accepted
    _save(tmp_path / "turned.jpg", 16, 8, orientation=6)
    _check_aspect(tmp_path / "turned.jpg")
    # stored 8x16 but EXIF 6 turns it into 16x8: refused, size printed HxW as read
    _save(tmp_path / "sideways.jpg", 8, 16, orientation=6)
    with pytest.raises(TrainDataError, match=r"sideways\.jpg: not a 2:1 equirectangular panorama \(16x8 pixels, HxW"):
        _check_aspect(tmp_path / "sideways.jpg")


def test_aspect_check_prints_hxw_and_names_unreadable_files(tmp_path):
    _save(tmp_path / "tall.png", 10, 30)
    with pytest.raises(TrainDataError, match=r"tall\.png: not a 2:1 .*\(10x30 pixels, HxW"):
        _check_aspect(tmp_path / "tall.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(TrainDataError, match=r"bad\.png: cannot read image"):
        _check_aspect(tmp_path / "bad.png")
    _save(tmp_path / "ok.png", 8, 16)
    _check_aspect(tmp_path / "ok.png")
