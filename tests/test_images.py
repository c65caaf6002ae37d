"""The one image reader (:mod:`opama_model.image_file`, re-exported by :mod:`opama_tools.images`), the
H×W size parser and the device resolver: every mode, 16-bit precision, alpha, EXIF orientation."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from test_bad_input import png16 as write_png16

from opama_tools.devices import check_device_name, resolve_device
from opama_tools.images import image_hw, orient, parse_size, read_image, read_ldr, read_photo, to_uint8

RNG = np.random.default_rng(0)


def png16(path: Path, a: np.ndarray, orientation: int | None = None) -> None:
    """A 16-bit PNG written by hand (:func:`test_bad_input.png16`), with an eXIf orientation if given."""
    write_png16(path, a)
    if orientation is not None:
        e = Image.Exif()
        e[0x0112] = orientation
        d = e.tobytes()
        d = d[6:] if d.startswith(b"Exif\x00\x00") else d
        chunk = struct.pack(">I", len(d)) + b"eXIf" + d + struct.pack(">I", zlib.crc32(b"eXIf" + d) & 0xFFFFFFFF)
        data = path.read_bytes()
        path.write_bytes(data[:33] + chunk + data[33:])  # after the signature and IHDR


def test_16_bit_colour_is_read_at_full_precision(tmp_path):
    a = RNG.integers(0, 65536, (6, 12, 3), dtype=np.uint16)  # not multiples of 257: the low byte matters
    png16(tmp_path / "rgb16.png", a)
    got = read_ldr(tmp_path / "rgb16.png")
    assert got.dtype == np.uint16 and np.array_equal(got, a)
    np.testing.assert_array_equal(to_uint8(got), np.floor(a / 65535 * 255 + 0.5).astype(np.uint8))  # rounded
    g = RNG.integers(0, 65536, (6, 12), dtype=np.uint16)
    png16(tmp_path / "grey16.png", g)
    assert np.array_equal(read_ldr(tmp_path / "grey16.png"), np.repeat(g[..., None], 3, axis=2))
    # 16-bit grey + alpha and RGBA: colour and alpha at full precision
    ga = np.stack([g, np.where(np.arange(12) < 6, 65535, 0).astype(np.uint16)[None].repeat(6, 0)], -1)
    png16(tmp_path / "ga16.png", ga)
    img = read_image(tmp_path / "ga16.png")
    assert np.array_equal(img.rgb[..., 1], g) and np.array_equal(img.opaque, ga[..., 1] == 65535)
    rgba = np.concatenate([a, np.full((6, 12, 1), 65535, np.uint16)], -1)
    png16(tmp_path / "rgba16.png", rgba)
    img = read_image(tmp_path / "rgba16.png")
    assert np.array_equal(img.rgb, a) and img.alpha is None  # fully opaque: no alpha


def test_modes_grey_palette_cmyk_alpha(tmp_path):
    rgb = RNG.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    assert np.array_equal(read_ldr(tmp_path / "grey.png"), np.repeat(rgb[..., :1], 3, axis=2))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert read_ldr(tmp_path / "cmyk.jpg").shape == (8, 16, 3)
    Image.fromarray(rgb[..., 0] > 127).save(tmp_path / "bits.png")
    assert set(np.unique(read_ldr(tmp_path / "bits.png"))) <= {0, 255}
    pal = Image.fromarray(rgb).quantize(8)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    img = read_image(tmp_path / "pal.png")
    idx = np.asarray(Image.open(tmp_path / "pal.png"))
    assert img.opaque is not None and np.array_equal(img.opaque, idx != 0)
    a = np.concatenate([rgb, np.full((8, 16, 1), 255, np.uint8)], -1)
    a[2:5, 3:9, 3] = 0
    a[0, 0, 3] = 128  # half transparent: not opaque
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    img = read_image(tmp_path / "rgba.png")
    assert np.array_equal(img.rgb, rgb) and np.array_equal(img.alpha, a[..., 3])
    assert img.opaque.sum() == 8 * 16 - 18 - 1
    photo = read_photo(tmp_path / "rgba.png")
    assert photo.shape == (8, 16, 4) and np.array_equal(photo, a)
    assert read_ldr(tmp_path / "rgba.png").shape == (8, 16, 3)  # panoramas: alpha dropped
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_photo(tmp_path / "rgb.png").shape == (8, 16, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pillow_shows_it(tmp_path, orientation):
    stored = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    im = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as f:
        want = np.asarray(ImageOps.exif_transpose(f).convert("RGB"))
    assert np.array_equal(read_ldr(tmp_path / "o.png"), want)
    assert image_hw(tmp_path / "o.png") == want.shape[:2]
    assert np.array_equal(orient(stored, orientation), want)
    # the 16-bit path (decoded by torchvision) is oriented the same way
    png16(tmp_path / "o16.png", stored.astype(np.uint16) * 257, orientation)
    assert np.array_equal(read_ldr(tmp_path / "o16.png"), want.astype(np.uint16) * 257)


def test_broken_files_one_line(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    full = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 2])
    for name, word in (("empty.png", "not a readable"), ("text.jpg", "not a readable"), ("cut.png", "cannot decode"),
                       ("missing.png", "no such file")):
        with pytest.raises(ValueError, match=word) as e:
            read_image(tmp_path / name)
        assert "\n" not in str(e.value)
    Image.fromarray(np.zeros((4, 4), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="floating-point"):
        read_image(tmp_path / "f.tif")


def test_every_ldr_reader_decodes_the_same_pixels(tmp_path):
    """eval, training, prepare, crop and caption read a 16-bit, oriented, transparent file alike."""
    from opama_model.training.data import load_panorama
    from opama_tools.data import caption, crop, prepare
    from opama_tools.eval.evaluate import load_image

    a = RNG.integers(0, 65536, (16, 8, 4), dtype=np.uint16)  # stored 16x8; orientation 6 shows it 8x16
    png16(tmp_path / "p.png", a, orientation=6)
    upright = read_ldr(tmp_path / "p.png")
    assert upright.shape == (8, 16, 3) and np.array_equal(upright, orient(a[..., :3], 6))
    u8 = to_uint8(upright)
    assert np.array_equal(load_image(tmp_path / "p.png"), u8)
    assert np.array_equal(caption.read_panorama(tmp_path / "p.png"), u8)
    assert np.array_equal(crop.read_panorama(tmp_path / "p.png"), upright)
    assert np.array_equal(prepare._load_ldr(tmp_path / "p.png"), upright.astype(np.float32) / np.float32(65535))
    x = load_panorama(tmp_path / "p.png", (8, 16))
    assert torch.equal(x, torch.from_numpy(u8).permute(2, 0, 1).float() / 127.5 - 1)


def test_parse_size_height_first():
    assert parse_size("32x64") == (32, 64) and parse_size(" 32 × 64 ") == (32, 64) and parse_size("32X64") == (32, 64)
    assert parse_size(None) is None and parse_size("") is None
    assert parse_size("native", native=("native",)) is None
    assert parse_size("30x40", equirect=False) == (30, 40)
    with pytest.raises(ValueError, match=r"--size 32x60: a panorama must be 2:1"):
        parse_size("32x60")
    with pytest.raises(ValueError, match=r"--canvas 'big': expected HxW"):
        parse_size("big", option="--canvas")
    with pytest.raises(ValueError, match="at least 1"):
        parse_size("0x0", equirect=False)


def test_device_names():
    for name in ("auto", "cpu", "cuda", "cuda:1", "mps", "CPU"):
        assert check_device_name(name) == name.lower()
    for bad in ("gpu", "cuda:", "cuda:x", "tpu", ""):
        with pytest.raises(ValueError, match="not a device"):
            check_device_name(bad)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        with pytest.raises(ValueError, match="MPS is not available"):
            resolve_device("mps")


def test_check_equirect_one_line_hxw():
    from opama_tools.images import check_equirect

    check_equirect(8, 16)
    for h, w in [(16, 8), (8, 15), (1, 2), (0, 0)]:
        with pytest.raises(ValueError, match=rf"not a 2:1 equirectangular panorama \({h}x{w} pixels, HxW"):
            check_equirect(h, w)
