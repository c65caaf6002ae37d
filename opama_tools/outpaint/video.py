"""``pano.mp4``: a look-around video of a panorama (yaw 0 -> 360 degrees at pitch 0), H.264 via imageio-ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from opama_model.spherical import equi_to_pers, pad_equirect
from opama_tools.io import atomic_path

__all__ = ["look_around_frames", "write_video"]


def look_around_frames(panorama: np.ndarray, n_frames: int = 120, size: tuple[int, int] = (360, 640),
                       fov: float = 90.0, pitch: float = 0.0, chunk: int = 16):
    """Yield ``n_frames`` uint8 ``(h, w, 3)`` views at yaw ``360 k / n_frames`` (degrees), bilinear."""
    x = torch.from_numpy(np.ascontiguousarray(panorama)).permute(2, 0, 1)[None].float()
    padded = pad_equirect(x, 1)
    yaws = [360.0 * k / n_frames for k in range(n_frames)]
    for k in range(0, n_frames, chunk):
        ys = yaws[k:k + chunk]
        views = equi_to_pers(padded, ys, [pitch] * len(ys), [fov] * len(ys), size, padded=True)[0]
        for v in views:
            yield v.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def write_video(path: str | Path, panorama: np.ndarray, *, seconds: float = 6.0, fps: int = 30,
                size: tuple[int, int] = (360, 640), fov: float = 90.0) -> Path:
    """Write an MP4 that turns once around the horizon (H.264, ``size`` = (h, w), atomically).

    Raises:
        RuntimeError: imageio-ffmpeg is not installed (``pip install imageio-ffmpeg``).
    """
    try:
        import imageio.v2 as iio
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise RuntimeError("--video needs imageio-ffmpeg (pip install imageio-ffmpeg)") from None
    n = max(2, round(seconds * fps))
    with atomic_path(path) as tmp:
        writer = iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=7,
                                macro_block_size=8, pixelformat="yuv420p", ffmpeg_log_level="error")
        try:
            for frame in look_around_frames(panorama, n, size, fov):
                writer.append_data(frame)
        finally:
            writer.close()
    return Path(path)
