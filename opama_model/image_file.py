"""The one reader of LDR images (PNG/JPEG photos and panoramas), shared by every stage and by training.

:func:`read_image` decodes a file into a :class:`DecodedImage`: ``rgb`` ``(H, W, 3)`` ``uint8``
or ``uint16`` and ``alpha`` ``(H, W)`` of the same dtype (None when the file has no alpha or it
is fully opaque). Whatever the file's mode:

* 8-bit stays ``uint8``; 16-bit stays ``uint16`` (full scale 65535, never guessed from the
  values). 16-bit colour and grey+alpha PNGs, which Pillow decodes at 8-bit precision, are
  decoded by ``torchvision.io.decode_png`` at full precision;
* grey is replicated to RGB; palette, CMYK, YCbCr and 1-bit (0/255) are converted to RGB;
  palette or RGB/grey transparency (``tRNS``) becomes ``alpha``;
* the EXIF orientation tag is applied (the pixels come back upright, as
  ``PIL.ImageOps.exif_transpose`` shows them), so ``H x W`` is the displayed size.

:func:`read_ldr` is the RGB alone (alpha dropped: panoramas); :func:`read_photo` is ``uint8``
RGB or RGBA (16-bit rounded as :func:`to_uint8`) for photos whose transparent pixels are unknown.
Anything else (a broken, truncated, empty or non-image file, a float or 32-bit image) raises
``ValueError`` with a one-line reason (the caller adds the file name).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DecodedImage",
    "read_image",
    "read_ldr",
    "read_photo",
    "image_hw",
    "orient",
    "to_unit_float",
    "to_uint8",
    "to_uint8_rgb",
]

_GREY16 = ("I;16", "I;16B", "I;16L", "I;16N")
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    """Pixels of an image file, upright: ``rgb`` ``(H, W, 3)`` and ``alpha`` ``(H, W)`` or None.

    Both are ``uint8`` (full scale 255) or both ``uint16`` (full scale 65535).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None

    @property
    def opaque(self) -> np.ndarray | None:
        """``(H, W)`` bool, True where alpha is at full scale (None: no alpha, all opaque)."""
        if self.alpha is None:
            return None
        return self.alpha == np.iinfo(self.alpha.dtype).max


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _reason(e: BaseException) -> str:
    """One line saying why a file could not be decoded."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not a readable PNG/JPEG image (unknown or empty file)"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "a folder, not an image file"
    if isinstance(e, PermissionError):
        return "cannot read the file (permission denied)"
    if isinstance(e, MemoryError):
        return "out of memory decoding the image"
    if isinstance(e, Image.DecompressionBombError):
        return f"too many pixels ({_first_line(e)})"
    return f"cannot decode image ({_first_line(e)})"


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to ``(H, W, ...)`` pixels, as ``PIL.ImageOps.exif_transpose``."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return a.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:
        return a.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return a.swapaxes(0, 1)[::-1]
    return a


def _orientation(im) -> int:
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as viewers do
        return 1
    return value if 1 <= value <= 8 else 1


def _png_depth_and_colour(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` from a PNG's IHDR, or None."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _decode_png16(path: str | os.PathLike) -> np.ndarray | None:
    """``(H, W, C)`` uint16 of a 16-bit PNG at full precision (torchvision's libpng), or None without
    torchvision (then Pillow's 8-bit decoding is used)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to torchcodec
        try:
            import torch
            from torchvision.io import ImageReadMode, decode_png
        except ImportError:  # pragma: no cover - torchvision comes with open_clip_torch
            return None
        with open(path, "rb") as f:
            data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        t = decode_png(data, mode=ImageReadMode.UNCHANGED)
    if t.dtype != torch.uint16:
        return None
    return t.permute(1, 2, 0).numpy().astype(np.uint16)


def _decode(path: str | os.PathLike) -> np.ndarray:
    """Pixels as stored, oriented: ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``, uint8 or uint16."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            orientation = _orientation(im)
            a = None
            if im.format == "PNG":
                hdr = _png_depth_and_colour(path)
                if hdr is not None and hdr[0] == 16 and hdr[1] in (2, 4, 6):
                    a = _decode_png16(path)
                    if a is not None and a.shape[2] == 2:  # grey + alpha
                        a = np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], axis=2)
            if a is None:
                im.load()
                mode = im.mode
                if mode in _GREY16 or mode == "I":
                    a = np.array(im)
                    if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
                        raise ValueError(f"unsupported 32-bit integer image (values {a.min()}..{a.max()})")
                    a = a.astype(np.uint16)
                elif mode == "F":
                    raise ValueError("unsupported floating-point image (8- or 16-bit PNG/JPEG expected)")
                elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
                    a = np.array(im.convert("RGBA"))
                else:
                    a = np.array(im if mode == "RGB" else im.convert("RGB"))
    return orient(a, orientation)


def read_image(path: str | os.PathLike) -> DecodedImage:
    """Decode an image file (see the module doc); ``ValueError`` with a one-line reason."""
    try:
        a = _decode(path)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, struct.error ... for broken files
        raise ValueError(_reason(e)) from None
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"unsupported image shape {a.shape}")
    rgb = np.ascontiguousarray(a[..., :3])
    alpha = None
    if a.shape[2] == 4:
        alpha = np.ascontiguousarray(a[..., 3])
        if (alpha == np.iinfo(alpha.dtype).max).all():
            alpha = None
    return DecodedImage(rgb, alpha)


def read_ldr(path: str | os.PathLike) -> np.ndarray:
    """``(H, W, 3)`` ``uint8`` or ``uint16`` RGB of an image file, upright, alpha dropped."""
    return read_image(path).rgb


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """``uint8`` ``(H, W, 3)`` RGB, or ``(H, W, 4)`` RGBA when the file has transparent pixels."""
    img = read_image(path)
    rgb = to_uint8(img.rgb)
    if img.alpha is None:
        return rgb
    return np.ascontiguousarray(np.concatenate([rgb, to_uint8(img.alpha)[..., None]], axis=2))


def image_hw(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image file as :func:`read_image` returns it (EXIF orientation applied), from
    its header; ``ValueError`` when it is not a readable image."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                orientation = _orientation(im)
    except Exception as e:  # noqa: BLE001
        raise ValueError(_reason(e)) from None
    return (w, h) if orientation >= 5 else (h, w)


def to_unit_float(a: np.ndarray) -> np.ndarray:
    """Integer image → float32 in ``[0, 1]`` (divided by 255 or 65535)."""
    return a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)


def to_uint8(a: np.ndarray) -> np.ndarray:
    """``uint8`` as is; ``uint16`` → ``round(v * 255 / 65535)`` as ``uint8`` (any shape)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype != np.uint16:
        raise ValueError(f"expected uint8 or uint16 pixels, got {a.dtype}")
    return np.ascontiguousarray(((a.astype(np.float32) * np.float32(255.0 / 65535.0)) + 0.5).astype(np.uint8))


to_uint8_rgb = to_uint8
