"""Spherical geometry shared by the model and the toolkit.

Conventions (used everywhere in opama, stated in the README):

* Angles at the public API are in **degrees**: ``yaw``, ``pitch``, ``roll``, ``fov``.
  Internal helpers that say ``_rad`` take radians.
* World frame: ``x`` right, ``y`` up, ``z`` forward. A unit direction ``d`` has
  longitude ``lon = atan2(x, z)`` in ``(-pi, pi]`` (positive = to the right) and
  latitude ``lat = asin(y)`` in ``[-pi/2, pi/2]`` (positive = up).
* Equirectangular image ``(H, W)``, ``W == 2 H``: pixel *centre* of column ``j`` sits at
  ``lon = ((j + 0.5) / W - 0.5) * 2 pi``, so ``lon = 0`` is the continuous column
  ``W/2 - 0.5`` (the image centre, as in py360convert) and the left/right edges
  are the seam at ``lon = -pi / +pi``. Row ``i`` has ``lat = (0.5 - (i + 0.5) / H) * pi``
  (row 0 = top = looking up).
* A perspective (NFoV) view at ``(yaw, pitch, fov)`` looks along the direction with
  ``lon = yaw``, ``lat = pitch``; positive yaw turns right (towards higher columns),
  positive pitch looks up. ``fov`` is the **horizontal** field of view and, as in
  py360convert, spans the *centres* of the first and last pixel columns; pixels are
  square, so the vertical extent follows from the aspect ratio. ``roll`` turns the
  camera clockwise about its viewing axis (the image content turns anticlockwise).
* Image tensors are ``(B, C, H, W)``; values are whatever the caller stores
  (linear HDR, or [0, 1] display values).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = [
    "equirect_lonlat",
    "equirect_directions",
    "lonlat_to_dir",
    "dir_to_lonlat",
    "rotation_matrix",
    "perspective_directions",
    "lonlat_to_equirect_grid",
]


def equirect_lonlat(
    height: int, width: int, *, dtype: torch.dtype = torch.float32, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Longitude and latitude (radians) of every equirect pixel centre, each ``(H, W)``."""
    j = torch.arange(width, dtype=torch.float64, device=device)
    i = torch.arange(height, dtype=torch.float64, device=device)
    lon = ((j + 0.5) / width - 0.5) * (2 * math.pi)
    lat = (0.5 - (i + 0.5) / height) * math.pi
    lat_g, lon_g = torch.meshgrid(lat, lon, indexing="ij")
    return lon_g.to(dtype), lat_g.to(dtype)


def lonlat_to_dir(lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
    """Unit directions ``(..., 3)`` (x right, y up, z forward) from lon/lat in radians."""
    c = torch.cos(lat)
    return torch.stack((c * torch.sin(lon), torch.sin(lat), c * torch.cos(lon)), dim=-1)


def dir_to_lonlat(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Longitude in ``(-pi, pi]`` and latitude in ``[-pi/2, pi/2]`` (radians) of directions ``(..., 3)``.

    Directions need not be normalised.
    """
    x, y, z = d.unbind(-1)
    lon = torch.atan2(x, z)
    lat = torch.atan2(y, torch.sqrt(x * x + z * z))
    return lon, lat


def equirect_directions(
    height: int, width: int, *, dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """Unit direction of every equirect pixel centre, ``(H, W, 3)``."""
    lon, lat = equirect_lonlat(height, width, dtype=torch.float64, device=device)
    return lonlat_to_dir(lon, lat).to(dtype)


def rotation_matrix(
    yaw: float, pitch: float, roll: float = 0.0, *, dtype: torch.dtype = torch.float64, device=None
) -> torch.Tensor:
    """Camera-to-world rotation ``(3, 3)`` for a view at ``yaw``/``pitch``/``roll`` in degrees.

    The camera frame is x right, y up, z forward. The rotation applies roll about z,
    then pitch about x (positive tilts the forward axis up), then yaw about y
    (positive turns the forward axis right): ``R = R_yaw @ R_pitch @ R_roll``.
    """
    yw, pt, rl = (math.radians(float(a)) for a in (yaw, pitch, roll))
    cy, sy = math.cos(yw), math.sin(yw)
    cp, sp = math.cos(pt), math.sin(pt)
    cr, sr = math.cos(rl), math.sin(rl)
    r_yaw = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    r_pitch = torch.tensor([[1, 0, 0], [0, cp, sp], [0, -sp, cp]], dtype=torch.float64)
    # Positive roll turns the camera clockwise: its "right" axis tilts down.
    r_roll = torch.tensor([[cr, sr, 0], [-sr, cr, 0], [0, 0, 1]], dtype=torch.float64)
    return (r_yaw @ r_pitch @ r_roll).to(dtype=dtype, device=device)


def _as_list(v: float | Sequence[float] | torch.Tensor, n: int) -> list[float]:
    if isinstance(v, torch.Tensor):
        v = v.flatten().tolist()
    if isinstance(v, (int, float)):
        return [float(v)] * n
    v = [float(a) for a in v]
    if len(v) == 1:
        return v * n
    if len(v) != n:
        raise ValueError(f"expected {n} values, got {len(v)}")
    return v


def perspective_directions(
    yaw: float | Sequence[float],
    pitch: float | Sequence[float],
    fov: float | Sequence[float],
    out_hw: tuple[int, int],
    roll: float | Sequence[float] = 0.0,
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """World directions of every pixel centre of one or more perspective views.

    Args:
        yaw, pitch, roll: degrees, scalars or sequences of length V.
        fov: horizontal field of view in degrees (spans the centres of the edge columns).
        out_hw: ``(h, w)`` of each view in pixels.

    Returns:
        ``(V, h, w, 3)`` unit directions (V = 1 for scalar angles).
    """
    sizes = [len(a) for a in (yaw, pitch, fov, roll) if isinstance(a, (list, tuple, torch.Tensor))]
    n = max(sizes) if sizes else 1
    yaws, pitches, fovs, rolls = (_as_list(a, n) for a in (yaw, pitch, fov, roll))
    h, w = int(out_hw[0]), int(out_hw[1])
    out = []
    for yw, pt, fv, rl in zip(yaws, pitches, fovs, rolls):
        if not 0 < fv < 180:
            raise ValueError(f"fov must be in (0, 180) degrees, got {fv}")
        half = math.tan(math.radians(fv) / 2)
        # Square pixels: the pixel pitch is 2*half/(w-1) in both directions.
        step = 2 * half / max(w - 1, 1)
        xs = (torch.arange(w, dtype=torch.float64, device=device) - (w - 1) / 2) * step
        ys = ((h - 1) / 2 - torch.arange(h, dtype=torch.float64, device=device)) * step
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        cam = torch.stack((xx, yy, torch.ones_like(xx)), dim=-1)
        cam = cam / cam.norm(dim=-1, keepdim=True)
        r = rotation_matrix(yw, pt, rl, device=device)
        out.append(cam @ r.T)
    return torch.stack(out).to(dtype)


def lonlat_to_equirect_grid(lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` coordinates ``(..., 2)`` on an *unpadded* equirect, align_corners=False.

    ``x = lon / pi``, ``y = -lat / (pi / 2)``: the edges of the image are -1/+1.
    """
    return torch.stack((lon / math.pi, -lat / (math.pi / 2)), dim=-1)


def pad_equirect(equi: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` by ``pad`` pixels: columns wrap across the seam; rows past a pole
    continue on the other side of the pole (row mirrored and rolled by W/2).

    Pad once per panorama and reuse it for many views: it is the expensive part.
    """
    w = equi.shape[-1]
    x = torch.cat((equi[..., -pad:], equi, equi[..., :pad]), dim=-1)
    top = torch.roll(x[..., :pad, :].flip(-2), shifts=w // 2, dims=-1)
    bottom = torch.roll(x[..., -pad:, :].flip(-2), shifts=w // 2, dims=-1)
    return torch.cat((top, x, bottom), dim=-2)


def lonlat_to_padded_grid(lon: torch.Tensor, lat: torch.Tensor, height: int, width: int, pad: int = 1) -> torch.Tensor:
    """``grid_sample`` coordinates (align_corners=False) on an equirect padded by :func:`pad_equirect`."""
    col = (lon / (2 * math.pi) + 0.5) * width - 0.5 + pad
    row = (0.5 - lat / math.pi) * height - 0.5 + pad
    x = (col + 0.5) / (width + 2 * pad) * 2 - 1
    y = (row + 0.5) / (height + 2 * pad) * 2 - 1
    return torch.stack((x, y), dim=-1)


def equi_to_pers(
    equi: torch.Tensor,
    yaw: float | Sequence[float],
    pitch: float | Sequence[float],
    fov: float | Sequence[float],
    out_hw: tuple[int, int],
    roll: float | Sequence[float] = 0.0,
    *,
    mode: str = "bilinear",
    padded: bool = False,
) -> torch.Tensor:
    """Cut perspective views from equirect images, batched over images and views.

    Args:
        equi: ``(B, C, H, W)`` equirect images (any float dtype/device); or, with
            ``padded=True``, the output of :func:`pad_equirect` (pad 1).
        yaw, pitch, roll, fov: degrees; scalars or sequences of length V (see module doc).
        out_hw: ``(h, w)`` of each view.
        mode: ``grid_sample`` mode (``bilinear``, ``nearest``, ``bicubic``).

    Returns:
        ``(B, V, C, h, w)``. Differentiable with respect to ``equi``.
    """
    if equi.ndim != 4:
        raise ValueError(f"equi must be (B, C, H, W), got shape {tuple(equi.shape)}")
    x = equi if padded else pad_equirect(equi, 1)
    height, width = x.shape[-2] - 2, x.shape[-1] - 2
    dirs = perspective_directions(yaw, pitch, fov, out_hw, roll, dtype=torch.float64, device=equi.device)
    lon, lat = dir_to_lonlat(dirs)
    grid = lonlat_to_padded_grid(lon, lat, height, width, 1)  # (V, h, w, 2)
    v, h, w = grid.shape[:3]
    grid = grid.reshape(1, v * h, w, 2).expand(x.shape[0], -1, -1, -1).to(x.dtype if x.is_floating_point() else torch.float32)
    xf = x if x.is_floating_point() else x.float()
    out = torch.nn.functional.grid_sample(xf, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.reshape(x.shape[0], x.shape[1], v, h, w).permute(0, 2, 1, 3, 4)


CUBE_FACES = ("F", "R", "B", "L", "U", "D")
"""Cube face order. F: yaw 0; R: yaw 90; B: yaw 180; L: yaw -90; U: pitch 90 (image top =
backward, bottom edge meets F); D: pitch -90 (image top = forward, top edge meets F)."""

CUBE_YAW_PITCH = ((0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (-90.0, 0.0), (0.0, 90.0), (0.0, -90.0))


def equi_to_cube(equi: torch.Tensor, face_w: int, *, mode: str = "bilinear") -> torch.Tensor:
    """Six cube faces ``(B, 6, C, face_w, face_w)`` in :data:`CUBE_FACES` order (90° views)."""
    yaws = [yp[0] for yp in CUBE_YAW_PITCH]
    pitches = [yp[1] for yp in CUBE_YAW_PITCH]
    return equi_to_pers(equi, yaws, pitches, 90.0, (face_w, face_w), mode=mode)
