"""Reading and writing OpenEXR images with the ``OpenEXR`` package (never imageio).

Pitfalls handled here (see ``shared/verified-apis.md``): imageio has no EXR backend
and silently returns garbage, OpenEXR writes non-contiguous arrays as wrong data
(every array is made contiguous), float64 is rejected (cast to float32), and files
mixing HALF and FLOAT channels must be read with ``separate_channels=True``. The
library prints its own diagnostics of a damaged file (to the process's stdout and stderr,
from C); :func:`read_exr` silences them at the file-descriptor level, so a bad file gives
only the one-line :class:`ExrError`.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from opama_tools.io import atomic_path

__all__ = ["read_exr", "write_exr", "ExrError"]


class ExrError(ValueError):
    """An EXR file could not be read as an image; the message names the file and why."""


def write_exr(path: str | Path, img: np.ndarray, *, half: bool = False, compression: str = "zip", **attrs) -> Path:
    """Write ``img`` (H, W), (H, W, 3) or (H, W, 4) as a scanline EXR, atomically.

    ``half=True`` stores float16 (HALF) pixels, else float32 (FLOAT). Extra keyword
    arguments become header attributes (str, int or float). Equirect images are tagged
    ``envmap = latlong``. Returns the path.
    """
    import OpenEXR

    arr = np.asarray(img)
    if arr.ndim == 2:
        channels = {"Y": arr}
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        channels = {"RGB" if arr.shape[2] == 3 else "RGBA": arr}
    else:
        raise ValueError(f"{path}: cannot write an array of shape {arr.shape} as EXR")
    dtype = np.float16 if half else np.float32
    channels = {k: np.ascontiguousarray(v.astype(dtype, copy=False)) for k, v in channels.items()}
    comp = {"zip": OpenEXR.ZIP_COMPRESSION, "none": OpenEXR.NO_COMPRESSION, "piz": OpenEXR.PIZ_COMPRESSION}[compression]
    header = {"compression": comp, "type": OpenEXR.scanlineimage}
    h, w = arr.shape[:2]
    if w == 2 * h:
        header["envmap"] = OpenEXR.ENVMAP_LATLONG
    header.update(attrs)
    path = Path(path)
    with atomic_path(path) as tmp:
        with OpenEXR.File(header, channels) as f:
            f.write(str(tmp))
    return path


_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptors 1 and 2 (and to ``sys.stdout``/``sys.stderr``)
    to ``/dev/null`` for the duration.

    Python's own streams are flushed first, C stdio buffers before the descriptors are put
    back. Output of other threads of this process during the call is dropped too (e.g. a
    progress-bar redraw), so keep the block short.
    """
    import ctypes

    with _QUIET_LOCK:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved: list[tuple[int, int]] = []
        try:
            null = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            yield
            return
        try:
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    saved.append((fd, os.dup(fd)))
                    os.dup2(null, fd)
            # the extension also writes through sys.stdout / sys.stderr, which may not be fds 1 and 2
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            with contextlib.suppress(Exception):
                ctypes.CDLL(None).fflush(None)
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            os.close(null)


def read_exr(path: str | Path) -> np.ndarray:
    """Read an EXR as float32 ``(H, W, 3)`` linear RGB (``(H, W, 4)`` if it has alpha).

    Handles HALF/FLOAT/mixed channels, RGB(A) and single-channel luminance ``Y``
    (replicated to RGB). Raises :class:`ExrError` with the file name and reason for
    anything that is not a readable EXR image.
    """
    import OpenEXR

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ExrError(f"{path}: cannot open ({e.strerror or e})") from e
    if magic != b"\x76\x2f\x31\x01":
        raise ExrError(f"{path}: not an OpenEXR file (bad magic number)")
    # Fast path: OpenEXR interleaves plain RGB(A) itself (about 4x faster than reading
    # separate planes and stacking them). It refuses files mixing HALF and FLOAT
    # channels, and layered names come back grouped by layer: those take the general path.
    why = None
    with _native_output_silenced():  # OpenEXR prints its own diagnostics of a damaged file: not to the user
        try:
            with OpenEXR.File(str(path)) as f:
                grouped = f.channels()
                for key in ("RGBA", "RGB"):
                    if key in grouped:
                        px = np.asarray(grouped[key].pixels)
                        if px.ndim == 3 and px.shape[2] == len(key):
                            return np.ascontiguousarray(px, dtype=np.float32)
        except Exception:  # noqa: BLE001 - the general path below reports the reason
            pass
        try:
            with OpenEXR.File(str(path), separate_channels=True) as f:
                chans = {name: np.asarray(c.pixels) for name, c in f.channels().items()}
        except Exception as e:  # OpenEXR raises bare Exceptions/RuntimeErrors for truncated files
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
    if why is not None:
        raise ExrError(f"{path}: unreadable EXR, damaged or truncated ({why})")
    # Layer-less names first; fall back to the last path component ("diffuse.R" -> "R").
    simple = {}
    for name, px in chans.items():
        simple.setdefault(name.split(".")[-1], px)
    if all(c in simple for c in "RGB"):
        planes = [simple["R"], simple["G"], simple["B"]] + ([simple["A"]] if "A" in simple else [])
    elif "Y" in simple:
        planes = [simple["Y"]] * 3
    else:
        raise ExrError(f"{path}: no RGB or Y channels (found {', '.join(sorted(chans)) or 'none'})")
    return np.ascontiguousarray(np.stack([p.astype(np.float32) for p in planes], axis=-1))
