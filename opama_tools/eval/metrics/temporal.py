"""Weight-free temporal metrics of 360° videos (``opama eval`` on video outputs).

Frames are uint8 ``(H, W, 3)`` RGB equirects (``W == 2 H``); masks are bool ``(H, W)``;
values are in [0, 1] display units (8-bit levels / 255). Each function returns a float, NaN
when it has no pixel to measure.

* :func:`flicker`: mean absolute change from frame ``t-1`` to frame ``t`` over a region
  (the generated region: outside both frames' input masks), over pixels and channels.
* :func:`warp_error`: warping error under the known camera motion (Lai et al., "Learning
  Blind Video Temporal Consistency", ECCV 2018): frame ``t-1`` warped into frame ``t``,
  mean over pixels and channels of the squared difference, on the pixels of the region that are
  *static* in the reference video (its warped change at most :data:`STATIC_THRESHOLD` in every
  channel; the paper uses flow occlusion masks, which a reference video with known camera
  motion replaces). For the reference itself the value is bounded by the threshold squared.
* :func:`border_continuity`: mean absolute difference across the input mask's border (each
  4-neighbour pair, longitude wrapping, with one pixel inside and one outside the mask), divided
  by the same on the reference frame with the same mask (each plus one 8-bit level, 1/255, so
  flat borders do not divide by 0): 1.0 = the generated content continues
  the input as the reference's does; > 1 a visible edge; < 1 smoother than the reference.

Camera motion: panoramas are world-fixed by default (the warp is the identity). A per-frame
panorama rotation ``(yaw, pitch, roll)`` in degrees says frame ``t`` is the world as seen by a
camera turned by it (:func:`opama_model.spherical.rotate_equi`: ``frame_t(d) = world(R_t d)``), so
frame ``t-1`` warps into frame ``t`` by ``prev(R_{t-1}^T R_t d)``. A yaw of ``-k · 360 / W``
per frame is content moving ``k`` columns to the right per frame.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["STATIC_THRESHOLD", "flicker", "warp_frame", "warp_error", "border_difference", "border_continuity"]

STATIC_THRESHOLD = 0.05
"""A reference pixel is static between two frames when its warped change is at most this in
every channel ([0, 1] units, about 13 levels of 255)."""

Rotation = Sequence[float]  # (yaw, pitch) or (yaw, pitch, roll), degrees


def _f(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64) / 255.0


def flicker(prev: np.ndarray, cur: np.ndarray, region: np.ndarray) -> float:
    """Mean ``|cur - prev|`` over the ``region`` pixels and the channels, in [0, 1] units (NaN if empty)."""
    if not region.any():
        return float("nan")
    return float(np.abs(_f(cur[region]) - _f(prev[region])).mean())


def _angles(rot: Rotation | None) -> tuple[float, float, float]:
    if rot is None:
        return 0.0, 0.0, 0.0
    r = [float(x) for x in rot]
    return (r[0], r[1], r[2] if len(r) > 2 else 0.0)


def warp_frame(prev: np.ndarray, rot_prev: Rotation | None, rot_cur: Rotation | None,
               mode: str = "bilinear") -> np.ndarray:
    """Frame ``prev`` (``(H, W, C)``, any numeric or bool dtype) warped into the camera of the next
    frame: ``out(d) = prev(R_prev^T R_cur d)`` (module docstring). Identity when both rotations are
    equal; a pure yaw difference that is a whole number of columns is an exact circular roll;
    otherwise resampled (``mode``: ``bilinear`` or ``nearest``, e.g. for masks). A warped frame comes
    back as float64 in the input's units (bool input: bool)."""
    from opama_model.spherical import rotate_equi

    a0, a1 = _angles(rot_prev), _angles(rot_cur)
    if a0 == a1:
        return prev
    is_bool = prev.dtype == bool
    x = torch.from_numpy(np.ascontiguousarray(prev, dtype=np.float64 if not is_bool else np.float32))
    x = x.reshape(prev.shape[0], prev.shape[1], -1).permute(2, 0, 1)[None]
    if a0[1:] == (0.0, 0.0) and a1[1:] == (0.0, 0.0):  # R_yaw(a)^T R_yaw(b) = R_yaw(b - a)
        y = rotate_equi(x, a1[0] - a0[0], mode=mode)
    else:
        y = _remap(x, a0, a1, mode)
    out = y[0].permute(1, 2, 0).reshape(prev.shape).numpy()
    return out > 0.5 if is_bool else out


def _remap(x: torch.Tensor, a0: tuple, a1: tuple, mode: str) -> torch.Tensor:
    """``out(d) = x(R0^T R1 d)`` for ``(1, C, H, W)`` float ``x`` (grid_sample on the seam/pole-padded image)."""
    import torch.nn.functional as F

    from opama_model.spherical import (
        dir_to_lonlat, equirect_directions, lonlat_to_padded_grid, pad_equirect, rotation_matrix,
    )

    h, w = x.shape[-2:]
    r = rotation_matrix(*a0).T @ rotation_matrix(*a1)
    lon, lat = dir_to_lonlat(equirect_directions(h, w, dtype=torch.float64) @ r.T)
    grid = lonlat_to_padded_grid(lon, lat, h, w, 1).to(x.dtype)[None]
    return F.grid_sample(pad_equirect(x, 1), grid, mode=mode, padding_mode="border", align_corners=False)


def warp_error(prev: np.ndarray, cur: np.ndarray, ref_prev: np.ndarray, ref_cur: np.ndarray, region: np.ndarray,
               rot_prev: Rotation | None = None, rot_cur: Rotation | None = None,
               threshold: float = STATIC_THRESHOLD) -> tuple[float, float, int]:
    """``(generated, reference, pixels)``: the warping error of the generated frames and of the reference
    frames on the ``region`` pixels (already in frame ``t``'s camera) that are static in the reference,
    and how many pixels that is. Squared differences in [0, 1]² units, mean over pixels and channels."""
    ref_w = _f(warp_frame(ref_prev, rot_prev, rot_cur))
    d_ref = _f(ref_cur) - ref_w
    static = region & (np.abs(d_ref).max(axis=-1) <= threshold)
    n = int(static.sum())
    if n == 0:
        return float("nan"), float("nan"), 0
    d_gen = _f(cur) - _f(warp_frame(prev, rot_prev, rot_cur))
    return float((d_gen[static] ** 2).mean()), float((d_ref[static] ** 2).mean()), n


def border_difference(frame: np.ndarray, mask: np.ndarray) -> float:
    """Mean ``|inside - outside|`` over the 4-neighbour pixel pairs that cross the border of ``mask``
    (horizontal pairs wrap across the ±180° seam), over the pairs and channels, in [0, 1] units (NaN
    when the mask has no border)."""
    x = _f(frame)
    diffs = []
    right = np.roll(mask, -1, axis=1)
    cross = mask != right
    if cross.any():
        diffs.append(np.abs(x - np.roll(x, -1, axis=1))[cross])
    cross = mask[:-1] != mask[1:]
    if cross.any():
        diffs.append(np.abs(x[:-1] - x[1:])[cross])
    if not diffs:
        return float("nan")
    return float(np.concatenate(diffs).mean())


def border_continuity(gen: np.ndarray, ref: np.ndarray, mask: np.ndarray, eps: float = 1 / 255) -> float:
    """``(border_difference(gen) + eps) / (border_difference(ref) + eps)`` with the same input ``mask``
    (module docstring); NaN when the mask has no border. ``eps`` (one 8-bit level, as DS's ``c``)
    keeps two flat borders at 1.0 and a nearly flat reference border from blowing the ratio up."""
    dg = border_difference(gen, mask)
    if math.isnan(dg):
        return dg
    return (dg + eps) / (border_difference(ref, mask) + eps)
