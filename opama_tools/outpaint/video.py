"""Look-around videos (H.264 MP4, written by :class:`opama_tools.videos.VideoWriter`).

* :func:`write_video` (``pano.mp4`` of an image job): a perspective camera turning once around the
  horizon of one panorama.
* :func:`write_look_around_video` (``look.mp4`` of a video job): the same camera over a panorama
  *video*, output frame ``t`` cut from panorama frame ``t`` at yaw ``360 t / T`` degrees.

Both cut their views with :func:`perspective_views` (bilinear :func:`~opama_model.spherical.equi_to_pers`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from opama_model.spherical import equi_to_pers, pad_equirect

__all__ = ["look_around_frames", "perspective_views", "write_look_around_video", "write_video"]


def perspective_views(panorama: np.ndarray, yaws: Sequence[float], size: tuple[int, int] = (360, 640),
                      fov: float = 90.0, pitch: float = 0.0, chunk: int = 16) -> Iterator[np.ndarray]:
    """Yield one uint8 ``(h, w, 3)`` view of ``panorama`` (uint8 ``(H, W, 3)`` equirect) per yaw (degrees).

    Bilinear, ``size`` = ``(h, w)``, horizontal ``fov`` and ``pitch`` in degrees; ``chunk`` views are cut at once.
    """
    x = torch.from_numpy(np.ascontiguousarray(panorama[..., :3])).permute(2, 0, 1)[None].float()
    padded = pad_equirect(x, 1)
    yaws = [float(y) for y in yaws]
    for k in range(0, len(yaws), chunk):
        ys = yaws[k:k + chunk]
        views = equi_to_pers(padded, ys, [pitch] * len(ys), [fov] * len(ys), size, padded=True)[0]
        for v in views:
            yield v.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def look_around_frames(panorama: np.ndarray, n_frames: int = 120, size: tuple[int, int] = (360, 640),
                       fov: float = 90.0, pitch: float = 0.0, chunk: int = 16) -> Iterator[np.ndarray]:
    """Yield ``n_frames`` uint8 ``(h, w, 3)`` views at yaw ``360 k / n_frames`` (degrees), bilinear."""
    return perspective_views(panorama, [360.0 * k / n_frames for k in range(n_frames)], size, fov, pitch, chunk)


def _write_frames(path: str | Path, frames: Iterable[np.ndarray], fps: float, expected: int | None = None) -> int:
    """Encode uint8 ``(h, w, 3)`` RGB frames (even h and w) to a browser-playable H.264 MP4 at ``path``, atomically,
    with :class:`opama_tools.videos.VideoWriter`; returns the number of frames.

    Raises:
        RuntimeError: imageio-ffmpeg is not installed (``pip install imageio-ffmpeg``), or ffmpeg failed.
        ValueError: no frames, not ``expected`` of them, or an odd size (nothing is written).
    """
    from opama_tools.videos import VideoWriter

    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.append(frame)
        if expected is not None and writer.frames != expected:
            raise ValueError(f"{path}: got {writer.frames} frames, expected {expected}")
    return writer.frames


def write_video(path: str | Path, panorama: np.ndarray, *, seconds: float = 6.0, fps: int = 30,
                size: tuple[int, int] = (360, 640), fov: float = 90.0) -> Path:
    """Write an MP4 that turns once around the horizon (H.264, ``size`` = (h, w), atomically).

    Raises:
        RuntimeError: imageio-ffmpeg is not installed (``pip install imageio-ffmpeg``).
    """
    n = max(2, round(seconds * fps))
    _write_frames(path, look_around_frames(panorama, n, size, fov), fps)
    return Path(path)


def write_look_around_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, *,
                            n_frames: int | None = None, size: tuple[int, int] = (360, 640), fov: float = 90.0,
                            pitch: float = 0.0, turns: float = 1.0) -> Path:
    """Write a look-around of a panorama video: output frame ``t`` is panorama frame ``t`` at yaw ``360 turns t / T``.

    Args:
        path: the MP4 to write (H.264, yuv420p, atomically; nothing is left on error).
        frames: the panorama frames, uint8 ``(H, W, 3)`` equirect, read once (a generator is fine).
        fps: frames per second of the output (the clip's).
        n_frames: ``T``, the number of frames; defaults to ``len(frames)``, needed when ``frames`` has no length.
        size: ``(h, w)`` of the output; ``fov`` (horizontal) and ``pitch`` in degrees.
        turns: full turns over the clip (>= 1: the camera sees the whole horizon once).

    Raises:
        ValueError: no ``n_frames`` for an iterator, ``turns < 1``, or fewer/more frames than ``n_frames``.
        RuntimeError: imageio-ffmpeg is not installed.
    """
    if n_frames is None:
        if not hasattr(frames, "__len__"):
            raise ValueError("write_look_around_video: pass n_frames when frames has no len()")
        n_frames = len(frames)  # type: ignore[arg-type]
    if n_frames < 1:
        raise ValueError(f"write_look_around_video: n_frames must be >= 1, got {n_frames}")
    if turns < 1:
        raise ValueError(f"write_look_around_video: turns must be >= 1 (a full turn), got {turns}")

    def views() -> Iterator[np.ndarray]:
        for t, pano in enumerate(frames):
            if t >= n_frames:
                raise ValueError(f"{path}: more panorama frames than n_frames={n_frames}")
            yield from perspective_views(pano, [360.0 * turns * t / n_frames], size, fov, pitch)

    _write_frames(path, views(), fps, expected=n_frames)
    return Path(path)
