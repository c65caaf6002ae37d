"""Images and sizes for every stage: the one image reader and the one H×W size parser.

The reader lives in :mod:`opama_model.image_file` (training reads panoramas with it too, and
``opama_model`` never imports ``opama_tools``); it is re-exported here: :func:`read_image`,
:func:`read_ldr` (RGB, alpha dropped), :func:`read_photo` (RGB or RGBA ``uint8``),
:func:`image_hw`, :func:`to_unit_float`, :func:`to_uint8`. See that module for what it accepts.

:func:`parse_size` parses every ``HxW`` option (height first, as every message prints sizes);
:func:`check_equirect` is the one 2:1 check of a panorama's pixel size.
"""

from __future__ import annotations

import re

from opama_model import image_file as _image_file
from opama_model.image_file import (  # noqa: F401 (re-exported)
    DecodedImage,
    image_hw,
    orient,
    read_image,
    read_ldr,
    read_photo,
    to_uint8,
    to_uint8_rgb,
    to_unit_float,
)

__all__ = [*_image_file.__all__, "parse_size", "format_hw", "check_equirect"]

_HW = re.compile(r"^\s*(\d+)\s*[x×*]\s*(\d+)\s*$")


def format_hw(h: int, w: int) -> str:
    """``"HxW"``: how every message prints a size (height first, as the options take it)."""
    return f"{int(h)}x{int(w)}"


def check_equirect(h: int, w: int) -> None:
    """``ValueError`` (one line, size printed HxW) unless ``(h, w)`` is a 2:1 equirect size (W = 2 H, H >= 2)."""
    if w != 2 * h or h < 2:
        raise ValueError(f"not a 2:1 equirectangular panorama ({format_hw(h, w)} pixels, HxW; "
                         "the width must be twice the height)")


def parse_size(text: str | None, *, option: str = "--size", equirect: bool = True,
               native: tuple[str, ...] = ()) -> tuple[int, int] | None:
    """Parse an ``HxW`` size in pixels, height first (``x``, ``X`` or ``×``) -> ``(H, W)``.

    None or ``""`` -> None (the caller's default); so does any word in ``native`` (e.g.
    ``("native",)`` for "keep the source size"). ``equirect``: the size must be 2:1 (W = 2 H).

    Raises:
        ValueError: one line naming ``option``, the text and the expected form.
    """
    if text is None or not str(text).strip():
        return None
    t = str(text).strip().lower()
    if t in native:
        return None
    m = _HW.match(t)
    if m is None:
        alt = f" or {' / '.join(repr(n) for n in native)}" if native else ""
        raise ValueError(f"{option} {text!r}: expected HxW in pixels, height first (e.g. 1024x2048){alt}")
    h, w = int(m.group(1)), int(m.group(2))
    if h < 1 or w < 1:
        raise ValueError(f"{option} {format_hw(h, w)}: height and width must be at least 1 pixel")
    if equirect and (h < 2 or w != 2 * h):
        raise ValueError(f"{option} {format_hw(h, w)}: a panorama must be 2:1 (width = 2 x height, HxW), "
                         f"e.g. {format_hw(max(h, 2), 2 * max(h, 2))}")
    return h, w
