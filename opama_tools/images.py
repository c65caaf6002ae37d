"""One reader for 8/16-bit PNG/JPEG panoramas, shared by ``prepare``, ``caption`` and ``crop``.

:func:`read_ldr` returns ``(H, W, 3)`` RGB as ``uint8`` or ``uint16`` whatever the file's
mode: grey (8 or 16 bit) is replicated to RGB, alpha is dropped, palette / CMYK / YCbCr are
converted, 1-bit becomes 0/255. 16-bit grey stays ``uint16`` (scale by 65535). Pillow decodes
16-bit RGB(A) PNGs at 8-bit precision (their high byte): those come back as ``uint8``.
Anything else (a broken, truncated, empty or non-image file, float or 32-bit images) raises
``ValueError`` with a one-line reason (the caller adds the file name).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["read_ldr", "to_unit_float", "to_uint8_rgb"]

_GREY16 = ("I;16", "I;16B", "I;16L", "I;16N")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_ldr(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/JPEG as ``(H, W, 3)`` ``uint8`` or ``uint16`` RGB (see the module doc)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                if mode in _GREY16 or mode == "I":
                    a = np.array(im)
                    if mode == "I":
                        if a.size and (a.min() < 0 or a.max() > 65535):
                            raise ValueError(f"unsupported 32-bit integer image (values {a.min()}..{a.max()})")
                    a = a.astype(np.uint16)
                elif mode == "F":
                    raise ValueError("unsupported floating-point image (8- or 16-bit PNG/JPEG expected)")
                else:
                    a = np.array(im if mode == "RGB" else im.convert("RGB"))
    except ValueError:
        raise
    except UnidentifiedImageError:
        raise ValueError("not a readable PNG/JPEG image (unknown or empty file)") from None
    except MemoryError:
        raise ValueError("out of memory decoding the image") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, struct.error ... for broken files
        raise ValueError(f"cannot decode image ({_first_line(e)})") from None
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"unsupported image shape {a.shape}")
    return np.ascontiguousarray(a)


def to_unit_float(a: np.ndarray) -> np.ndarray:
    """Integer image → float32 in ``[0, 1]`` (divided by 255 or 65535)."""
    return a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)


def to_uint8_rgb(a: np.ndarray) -> np.ndarray:
    """``uint8`` as is; ``uint16`` → ``round(v * 255 / 65535)`` as ``uint8``."""
    if a.dtype == np.uint8:
        return a
    return np.ascontiguousarray(((a.astype(np.float32) * np.float32(255.0 / 65535.0)) + 0.5).astype(np.uint8))
