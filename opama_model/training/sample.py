"""One training sample, as the OPa-Ma reference's ``dataset.py`` builds it.

For a panorama ``(3, H, W)`` in [-1, 1] (already at the canvas size):

1. rotate it by a random whole-degree yaw (an exact column roll when the angle is a whole
   number of columns, else bilinear resampling, then clamped to [-1, 1]);
2. draw the step ``k`` uniformly from ``0 .. AOG21_TRAIN_STEPS - 1`` (0..17);
3. known = the input view at (0, 0) (fov 90) plus the first ``k`` views of ``aog21``, as
   ground truth; the rest is unknown;
4. the target is view ``k`` of the schedule cut from the *true* (rotated) panorama; the model
   gets its unknown mask, the view of the masked canvas (unknown = -1, for CLIP and the GMA),
   the UNet's masked image (unknown = 0), the 6 cube faces of the masked canvas and the GMA's
   spherical channels (latitude/longitude in radians of the canvas frame, not rotated);
5. the caption is the global caption plus 0-4 random per-view captions joined with ", ".

Every view and face is sampled with ``nearest`` (:func:`opama_model.canvas.cut_view`).

Cost: :func:`make_sample` never builds the rotated or masked canvas. Nearest sampling picks one
canvas pixel per output pixel, and which one depends only on the canvas size, the view size and
the view (:func:`sample_index_maps`, computed once per process and cached); the rotation is then
evaluated at those pixels only, with the same arithmetic as :func:`opama_model.spherical.rotate_equi`
(bilinear ``grid_sample`` on the padded panorama). :func:`make_sample_reference` is the direct
full-canvas construction, for tests. At the sd2 canvas (2048 x 4096, 512 px views) the direct
construction resamples 8.4 M canvas pixels per sample, the index maps about 1.8 M.

Beyond the reference: with probability ``empty_canvas_prob`` (default 0) nothing is known (no
input view, ``k = 0``) and the target is the view at (0, 0), i.e. what a text-only outpainting
generates first from an empty canvas, before the usual schedule continues from it
(``k = -1`` marks such samples). The reference's textattack word swap is not offered (see
docs/training.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..canvas import UNKNOWN_VALUE, cut_view, cut_view_only, known_after_steps
from ..gma import build_gma_input
from ..spherical import (dir_to_lonlat, equi_to_cube, equi_to_pers, lonlat_to_dir, lonlat_to_padded_grid, pad_equirect,
                         rotate_equi, rotation_matrix)
from ..views import AOG21, AOG21_TRAIN_STEPS

__all__ = [
    "SampleSettings", "canvas_size", "known_masks", "compose_caption", "draw_sample_params", "make_sample",
    "make_sample_reference", "sample_index_maps", "warm_sample_caches", "EMPTY_VIEW", "seeded_rng",
]

EMPTY_VIEW = (0.0, 0.0)
"""Target view of an empty-canvas sample (where the input photo would be)."""

INPUT_VIEW = (0.0, 0.0, 90.0)
FOV = 90.0


def canvas_size(view_size: int) -> tuple[int, int]:
    """Default canvas ``(H, W)`` for a view size: the reference's ratio (512 px views on a
    2048 x 4096 canvas, i.e. ``W = 8 * view_size``). sd2: 2048 x 4096; tiny (64 px): 256 x 512."""
    return 4 * view_size, 8 * view_size


def seeded_rng(*keys: int) -> np.random.Generator:
    """A numpy generator determined by integer ``keys`` only (no global state): the same keys give
    the same draws in every process, worker and run."""
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))


@dataclass(frozen=True)
class SampleSettings:
    """How samples are drawn.

    Attributes:
        view_size: view and cube-face side in pixels (the preset's ``image_size``).
        canvas_hw: canvas ``(H, W)``, 2:1.
        schedule: the generated views ``(yaw, pitch)`` in degrees (aog21).
        train_steps: ``k`` is drawn from ``0 .. train_steps - 1`` (18: the last 3 views are never targets).
        max_view_captions: at most this many per-view captions are appended (4, as the reference's 5 - 1).
        empty_canvas_prob: fraction of samples with nothing known (0 = reference).
        rotate: random whole-degree yaw rotation (True = reference).
    """

    view_size: int
    canvas_hw: tuple[int, int]
    schedule: tuple[tuple[float, float], ...] = AOG21
    train_steps: int = AOG21_TRAIN_STEPS
    max_view_captions: int = 4
    empty_canvas_prob: float = 0.0
    rotate: bool = True


@lru_cache(maxsize=4)
def known_masks(canvas_hw: tuple[int, int], view_size: int, schedule: tuple = AOG21,
                train_steps: int = AOG21_TRAIN_STEPS) -> torch.Tensor:
    """``(train_steps, 1, H, W)`` bool: entry ``k`` = footprint of the input view (0, 0) and of the
    first ``k`` schedule views (the known region when view ``k`` is the target). Cached."""
    return known_after_steps(schedule[:train_steps], tuple(canvas_hw), view_size, FOV, inputs=(INPUT_VIEW,))[
        :train_steps].contiguous()


def compose_caption(caption: str | None, view_captions: Sequence[str], rng: np.random.Generator,
                    max_view_captions: int = 4) -> str:
    """Global caption plus ``n`` random view captions joined with ", ", ``n`` uniform in
    ``0 .. min(max_view_captions, len(view_captions) - 1)`` (the reference's
    ``random.choice(range(min(5, len(aug))))``)."""
    parts = [caption] if caption else []
    views = [v for v in view_captions if v]
    if views and max_view_captions > 0:
        n = int(rng.integers(0, min(max_view_captions + 1, len(views))))
        if n:
            picks = rng.choice(len(views), size=n, replace=False)
            parts += [views[int(i)] for i in picks]
    return ", ".join(parts)


def draw_sample_params(rng: np.random.Generator, settings: SampleSettings) -> tuple[int, int]:
    """``(k, yaw_degrees)``: the step (``-1`` = empty canvas) and the whole-degree rotation."""
    empty = settings.empty_canvas_prob > 0 and rng.random() < settings.empty_canvas_prob
    k = -1 if empty else int(rng.integers(0, settings.train_steps))
    yaw = int(rng.integers(0, 360)) if settings.rotate else 0
    return k, yaw


@lru_cache(maxsize=2)
def sample_index_maps(canvas_hw: tuple[int, int], view_size: int, views: tuple[tuple[float, float], ...]) -> dict:
    """Which canvas pixel nearest sampling picks for every output pixel (flat index ``row * W + col``,
    int64): ``"faces"`` ``(6, S, S)`` for the cube faces and ``(yaw, pitch)`` ``(S, S)`` for each of
    ``views`` (fov 90). Sampled with the very calls :func:`make_sample_reference` makes (an index
    image through :func:`~opama_model.spherical.equi_to_pers` / ``equi_to_cube``; indices are exact
    in float32 below 2**24 pixels). Depends on no draw: cached per process."""
    h, w = canvas_hw
    if h * w >= 1 << 24:
        raise ValueError(f"canvas {h}x{w} has too many pixels for float32 indices")
    idx = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    out = {"faces": equi_to_cube(idx, view_size, mode="nearest")[0, :, 0].round().long()}
    for yaw, pitch in views:
        out[(float(yaw), float(pitch))] = equi_to_pers(idx, yaw, pitch, FOV, (view_size, view_size),
                                                       mode="nearest")[0, 0, 0].round().long()
    return out


def _index_maps_for(settings: SampleSettings) -> dict:
    schedule = tuple((float(y), float(p)) for y, p in settings.schedule[:settings.train_steps])
    return sample_index_maps(tuple(settings.canvas_hw), settings.view_size,
                             tuple(dict.fromkeys(schedule + (EMPTY_VIEW,))))


def warm_sample_caches(settings: SampleSettings) -> None:
    """Compute what every sample of ``settings`` reuses (known masks, index maps) in this process, so
    data-loader workers forked afterwards inherit it instead of each computing it again."""
    known_masks(tuple(settings.canvas_hw), settings.view_size, tuple(settings.schedule), settings.train_steps)
    _index_maps_for(settings)


def _rotated_at(pano: torch.Tensor, yaw: float, flat: torch.Tensor) -> torch.Tensor:
    """``rotate_equi(pano, yaw).clamp(-1, 1)`` at the canvas pixels ``flat`` (flat indices, any shape)
    -> ``(3, *flat.shape)``, computed at those pixels only with ``rotate_equi``'s arithmetic."""
    c, h, w = pano.shape
    k = float(yaw) * w / 360.0
    if abs(k - round(k)) < 1e-6:  # a whole number of columns: rotate_equi's exact roll
        shift = int(round(k)) % w
        rows, cols = flat // w, flat % w
        src = rows * w + (cols + shift) % w
        return pano.reshape(c, -1)[:, src].clamp(-1, 1)
    i = (flat // w).to(torch.float64).reshape(-1)
    j = (flat % w).to(torch.float64).reshape(-1)
    lon = ((j + 0.5) / w - 0.5) * (2 * math.pi)  # equirect_lonlat's pixel centres
    lat = (0.5 - (i + 0.5) / h) * math.pi
    r = rotation_matrix(yaw, 0.0, 0.0, dtype=torch.float64)
    lon2, lat2 = dir_to_lonlat(lonlat_to_dir(lon, lat) @ r.T)
    grid = lonlat_to_padded_grid(lon2, lat2, h, w, 1).to(pano.dtype).reshape(1, 1, -1, 2)
    vals = F.grid_sample(pad_equirect(pano.unsqueeze(0), 1), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)
    return vals.reshape(c, *flat.shape).clamp(-1, 1)


def make_sample(pano: torch.Tensor, k: int, yaw: float, settings: SampleSettings, *,
                unet_only: bool = False) -> dict[str, torch.Tensor]:
    """Build one sample from a panorama ``(3, H, W)`` in [-1, 1] at the canvas size.

    Args:
        k: step index in ``0 .. train_steps - 1``, or ``-1`` for an empty canvas.
        yaw: rotation in degrees (the panorama's content turns; the canvas frame stays).
        unet_only: only ``target``, ``unknown``, ``masked_image`` and ``k`` (no CLIP / GMA
            images; the UNet warm-up of the tiny recipe).

    Returns:
        dict of tensors without batch dimension (``S`` = view size): ``target (3, S, S)`` in
        [-1, 1], ``unknown (1, S, S)`` float (1 = to generate), ``masked_image (3, S, S)``
        (unknown = 0), ``clip_images (7, 3, S, S)`` (view first, then F R B L U D; unknown = -1),
        ``gma_images (7, 5, S, S)`` (faces then view; RGB + lat/lon radians), ``k`` (long).

    Equals :func:`make_sample_reference` (the rotation's float64 direction arithmetic runs on fewer
    pixels, so a rare value may differ in the last float32 bit).
    """
    h, w = settings.canvas_hw
    if pano.shape != (3, h, w):
        raise ValueError(f"panorama must be (3, {h}, {w}) at the canvas size, got {tuple(pano.shape)}")
    maps = _index_maps_for(settings)
    if k < 0:
        known = torch.zeros(h * w, dtype=torch.bool)
        view_yaw, view_pitch = EMPTY_VIEW
    else:
        known = known_masks(tuple(settings.canvas_hw), settings.view_size, tuple(settings.schedule),
                            settings.train_steps)[k].reshape(-1)
        view_yaw, view_pitch = settings.schedule[k]
    x = pano.float()
    vmap = maps[(float(view_yaw), float(view_pitch))]
    sel = vmap if unet_only else torch.cat((vmap.reshape(1, -1), maps["faces"].reshape(1, -1)), dim=1)
    if yaw:
        vals = _rotated_at(x, float(yaw), sel.reshape(-1))
    else:
        vals = x.reshape(3, -1)[:, sel.reshape(-1)]
    s = settings.view_size
    target = vals[:, :s * s].reshape(3, s, s)
    known_view = known[vmap].reshape(1, s, s)
    unknown = (~known_view).to(x.dtype)
    view = torch.where(known_view, target, torch.full_like(target, UNKNOWN_VALUE))
    masked_image = view * (1 - unknown)
    out = dict(target=target, unknown=unknown, masked_image=masked_image)
    if not unet_only:
        fmap = maps["faces"].reshape(-1)
        fvals = vals[:, s * s:]
        faces = torch.where(known[fmap], fvals, torch.full_like(fvals, UNKNOWN_VALUE))
        faces = faces.reshape(3, 6, s, s).transpose(0, 1).contiguous()  # (6, 3, S, S)
        out["clip_images"] = torch.cat((view.unsqueeze(0), faces), dim=0)
        out["gma_images"] = build_gma_input(faces.unsqueeze(0), view.unsqueeze(0), view_yaw, view_pitch, FOV)[0]
    out["k"] = torch.tensor(k, dtype=torch.long)
    return out


def make_sample_reference(pano: torch.Tensor, k: int, yaw: float, settings: SampleSettings, *,
                unet_only: bool = False) -> dict[str, torch.Tensor]:
    """:func:`make_sample` built directly: rotate the whole canvas, mask it, cut the views and faces.

    Same arguments and result as :func:`make_sample`; kept as the independent construction the
    index-map path is tested against.
    """
    h, w = settings.canvas_hw
    if pano.shape != (3, h, w):
        raise ValueError(f"panorama must be (3, {h}, {w}) at the canvas size, got {tuple(pano.shape)}")
    x = pano.unsqueeze(0).float()
    if yaw:
        x = rotate_equi(x, yaw=float(yaw)).clamp(-1, 1)
    if k < 0:
        known = torch.zeros(1, 1, h, w, dtype=torch.bool)
        view_yaw, view_pitch = EMPTY_VIEW
    else:
        known = known_masks(tuple(settings.canvas_hw), settings.view_size, tuple(settings.schedule),
                            settings.train_steps)[k:k + 1]
        view_yaw, view_pitch = settings.schedule[k]
    s = settings.view_size
    target = equi_to_pers(x, view_yaw, view_pitch, FOV, (s, s), mode="nearest")[:, 0]
    if unet_only:
        _, unknown, masked_image = cut_view_only(x, known, view_yaw, view_pitch, FOV, s)
        return dict(target=target[0], unknown=unknown[0], masked_image=masked_image[0],
                    k=torch.tensor(k, dtype=torch.long))
    inp = cut_view(x, known, view_yaw, view_pitch, FOV, s)
    return dict(
        target=target[0],
        unknown=inp.unknown[0],
        masked_image=inp.masked_image[0],
        clip_images=inp.clip_images[0],
        gma_images=inp.gma_images[0],
        k=torch.tensor(k, dtype=torch.long),
    )
