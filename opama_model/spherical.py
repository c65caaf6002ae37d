"""Spherical geometry shared by the model and the toolkit.

Conventions (used everywhere in opama, stated in the README):

* Angles at the public API are in **degrees**: ``yaw``, ``pitch``, ``roll``, ``fov``.
  Internal helpers that say ``_rad`` take radians; the per-pixel coordinate maps
  (:func:`equirect_lonlat_map`, :func:`view_lonlat_map`, :func:`cube_lonlat_map`) are in radians.
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
  square, so the vertical extent follows from the aspect ratio. A view's *footprint*
  (its coverage on the sphere) is the area of its pixels, half a pixel beyond the
  edge-pixel centres.
* ``roll`` turns the camera clockwise about its viewing axis (its right-hand side tilts
  down), so the image content turns anticlockwise. This is the same sign as
  ``py360convert.e2p(..., in_rot_deg=roll)`` (checked in the tests).
* Camera-to-world rotation ``R = R_yaw @ R_pitch @ R_roll`` (:func:`rotation_matrix`); a
  camera-frame direction ``c`` (x right, y up, z forward) looks along ``R @ c``.
* Sampling wraps across the ±180° seam and continues over the poles (the row past a pole
  is the first row, mirrored and turned by 180° of longitude; :func:`pad_equirect`).
* Cube faces are 90° views in :data:`CUBE_FACES` order F R B L U D (py360convert's
  layout and orientation); the face's edge-pixel centres lie on the cube edges.
* Image tensors are ``(B, C, H, W)``; values are whatever the caller stores
  (linear HDR, or [0, 1] display values).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "CUBE_FACES",
    "CUBE_YAW_PITCH",
    "equirect_lonlat",
    "equirect_directions",
    "lonlat_to_dir",
    "dir_to_lonlat",
    "rotation_matrix",
    "perspective_directions",
    "lonlat_to_equirect_grid",
    "lonlat_to_padded_grid",
    "pad_equirect",
    "equi_to_pers",
    "pers_to_equi",
    "view_coverage_mask",
    "project_to_view",
    "equi_to_cube",
    "cube_to_equi",
    "rotate_equi",
    "equirect_lonlat_map",
    "view_lonlat_map",
    "cube_lonlat_map",
]

Angles = float | Sequence[float] | torch.Tensor


# --------------------------------------------------------------------------- basics
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

    Directions need not be normalised. At the poles (x = z = 0) the longitude is 0.
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
    Positive roll tilts the camera's right axis down (a clockwise turn of the camera,
    the content turns anticlockwise in the image), as py360convert's ``in_rot_deg``.
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


def _as_list(v: Angles, n: int) -> list[float]:
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


def _view_lists(yaw: Angles, pitch: Angles, fov: Angles, roll: Angles) -> tuple[tuple[float, ...], ...]:
    """Broadcast scalar/sequence angles to V views: ``(yaws, pitches, fovs, rolls)`` tuples."""
    sizes = [
        (a.numel() if isinstance(a, torch.Tensor) else len(a))
        for a in (yaw, pitch, fov, roll)
        if isinstance(a, (list, tuple, torch.Tensor)) and not (isinstance(a, torch.Tensor) and a.ndim == 0)
    ]
    n = max(sizes) if sizes else 1
    lists = tuple(tuple(_as_list(a, n)) for a in (yaw, pitch, fov, roll))
    for fv in lists[2]:
        if not 0 < fv < 180:
            raise ValueError(f"fov must be in (0, 180) degrees, got {fv}")
    return lists


def _pixel_step(fov: float, w: int) -> float:
    """Pixel pitch on the image plane at z = 1 (square pixels; fov spans edge-pixel centres)."""
    return 2 * math.tan(math.radians(fov) / 2) / max(w - 1, 1)


def _camera_rays(fov: float, h: int, w: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Unit camera-frame rays ``(h, w, 3)`` of a view's pixel centres."""
    step = _pixel_step(fov, w)
    xs = (torch.arange(w, dtype=dtype, device=device) - (w - 1) / 2) * step
    ys = ((h - 1) / 2 - torch.arange(h, dtype=dtype, device=device)) * step
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    cam = torch.stack((xx, yy, torch.ones_like(xx)), dim=-1)
    return cam / cam.norm(dim=-1, keepdim=True)


def perspective_directions(
    yaw: Angles,
    pitch: Angles,
    fov: Angles,
    out_hw: tuple[int, int],
    roll: Angles = 0.0,
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
    yaws, pitches, fovs, rolls = _view_lists(yaw, pitch, fov, roll)
    h, w = int(out_hw[0]), int(out_hw[1])
    out = []
    for yw, pt, fv, rl in zip(yaws, pitches, fovs, rolls):
        cam = _camera_rays(fv, h, w, torch.float64, device)
        r = rotation_matrix(yw, pt, rl, device=device)
        out.append(cam @ r.T)
    return torch.stack(out).to(dtype)


# --------------------------------------------------------------------- equirect sampling
def lonlat_to_equirect_grid(lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` coordinates ``(..., 2)`` on an *unpadded* equirect, align_corners=False.

    ``x = lon / pi``, ``y = -lat / (pi / 2)``: the edges of the image are -1/+1.
    """
    return torch.stack((lon / math.pi, -lat / (math.pi / 2)), dim=-1)


def pad_equirect(equi: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` by ``pad`` pixels: columns wrap across the seam; rows past a pole
    continue on the other side of the pole (row mirrored and turned by 180° of longitude,
    i.e. rolled by W/2).

    Pad once per panorama and reuse it for many views (``equi_to_pers(..., padded=True)``):
    it copies the whole image. ``W`` must be even.
    """
    b, c, h, w = equi.shape
    if pad < 1 or pad > h or pad > w:
        raise ValueError(f"pad must be in [1, min(H, W)], got {pad} for {h}x{w}")
    out = equi.new_empty((b, c, h + 2 * pad, w + 2 * pad))
    out[..., pad:-pad, pad:-pad] = equi
    half = w // 2
    # Past a pole: row k above the top is row k-1 mirrored, at longitude + 180°.
    top = equi[..., :pad, :].flip(-2)
    bottom = equi[..., -pad:, :].flip(-2)
    out[..., :pad, pad:-pad] = torch.roll(top, shifts=half, dims=-1)
    out[..., -pad:, pad:-pad] = torch.roll(bottom, shifts=half, dims=-1)
    # Across the seam (also fills the corners from the pole rows just written).
    out[..., :, :pad] = out[..., :, w : w + pad]
    out[..., :, -pad:] = out[..., :, pad : 2 * pad]
    return out


def lonlat_to_padded_grid(lon: torch.Tensor, lat: torch.Tensor, height: int, width: int, pad: int = 1) -> torch.Tensor:
    """``grid_sample`` coordinates (align_corners=False) on an equirect padded by :func:`pad_equirect`."""
    col = (lon / (2 * math.pi) + 0.5) * width - 0.5 + pad
    row = (0.5 - lat / math.pi) * height - 0.5 + pad
    x = (col + 0.5) / (width + 2 * pad) * 2 - 1
    y = (row + 0.5) / (height + 2 * pad) * 2 - 1
    return torch.stack((x, y), dim=-1)


@functools.lru_cache(maxsize=8)
def _pers_grid_cached(
    yaws: tuple[float, ...],
    pitches: tuple[float, ...],
    fovs: tuple[float, ...],
    rolls: tuple[float, ...],
    h: int,
    w: int,
    height: int,
    width: int,
    pad: int,
    device: str,
) -> torch.Tensor:
    """Sampling grid ``(V * h, w, 2)`` (float32) of V views on a padded ``height x width`` equirect."""
    dev = torch.device(device)
    # Few large ops over all views (not a loop of small ones): cheaper, and robust to a busy CPU.
    rays = {fv: _camera_rays(fv, h, w, torch.float32, dev).reshape(-1, 3) for fv in set(fovs)}
    cam = torch.stack([rays[fv] for fv in fovs])  # (V, h*w, 3)
    rot = torch.stack([rotation_matrix(*a, dtype=torch.float32, device=dev) for a in zip(yaws, pitches, rolls)])
    lon, lat = dir_to_lonlat(torch.bmm(cam, rot.transpose(1, 2)))
    return lonlat_to_padded_grid(lon, lat, height, width, pad).reshape(len(yaws) * h, w, 2)


def equi_to_pers(
    equi: torch.Tensor,
    yaw: Angles,
    pitch: Angles,
    fov: Angles,
    out_hw: tuple[int, int],
    roll: Angles = 0.0,
    *,
    mode: str = "bilinear",
    padded: bool = False,
) -> torch.Tensor:
    """Cut perspective views from equirect images, batched over images and views.

    Args:
        equi: ``(B, C, H, W)`` equirect images (any dtype/device; integer images are
            sampled as float32); or, with ``padded=True``, the output of
            :func:`pad_equirect` with pad 1 (pad 2 for ``mode="bicubic"``).
        yaw, pitch, roll, fov: degrees; scalars or sequences of length V (see module doc).
        out_hw: ``(h, w)`` of each view.
        mode: ``grid_sample`` mode (``bilinear``, ``nearest``, ``bicubic``).

    Returns:
        ``(B, V, C, h, w)``. Differentiable with respect to ``equi``. The sampling grid
        of the last few view sets is cached (float32), so repeated calls only pay the
        padding and the ``grid_sample``.
    """
    if equi.ndim != 4:
        raise ValueError(f"equi must be (B, C, H, W), got shape {tuple(equi.shape)}")
    pad = 2 if mode == "bicubic" else 1
    x = equi if padded else pad_equirect(equi, pad)
    height, width = x.shape[-2] - 2 * pad, x.shape[-1] - 2 * pad
    yaws, pitches, fovs, rolls = _view_lists(yaw, pitch, fov, roll)
    h, w = int(out_hw[0]), int(out_hw[1])
    grid = _pers_grid_cached(yaws, pitches, fovs, rolls, h, w, height, width, pad, str(x.device))
    v = len(yaws)
    xf = x if x.is_floating_point() else x.float()
    grid = grid.to(xf.dtype).unsqueeze(0).expand(x.shape[0], -1, -1, -1)
    out = F.grid_sample(xf, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.reshape(x.shape[0], x.shape[1], v, h, w).permute(0, 2, 1, 3, 4)


# ------------------------------------------------------------------ views -> equirect
def project_to_view(
    dirs: torch.Tensor, yaw: float, pitch: float, fov: float, view_hw: tuple[int, int], roll: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project world directions ``(..., 3)`` into one view's pixel-index coordinates.

    Returns ``(u, v, inside)``: column and row in pixel units (pixel centres at integers,
    ``u = 0`` is the left column's centre), and a bool mask of directions inside the
    view's footprint (in front of the camera and ``-0.5 <= u <= w - 0.5``,
    ``-0.5 <= v <= h - 0.5``).
    """
    h, w = int(view_hw[0]), int(view_hw[1])
    r = rotation_matrix(yaw, pitch, roll, dtype=dirs.dtype, device=dirs.device)
    cam = dirs @ r  # world -> camera: R^T d, as row vectors
    x, y, z = cam.unbind(-1)
    front = z > 1e-6
    zs = torch.where(front, z, torch.ones_like(z))
    step = _pixel_step(fov, w)
    u = x / zs / step + (w - 1) / 2
    v = (h - 1) / 2 - y / zs / step
    inside = front & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
    return u, v, inside


def _feather_weight(u: torch.Tensor, v: torch.Tensor, h: int, w: int, feather: float) -> torch.Tensor:
    """Blending weight in (0, 1]: linear ramp over ``feather * min(h, w)`` pixels from the footprint edge."""
    if feather <= 0:
        return torch.ones_like(u)
    ramp = feather * min(h, w)
    du = torch.minimum(u + 0.5, (w - 0.5) - u)
    dv = torch.minimum(v + 0.5, (h - 0.5) - v)
    return (du / ramp).clamp(1e-3, 1.0) * (dv / ramp).clamp(1e-3, 1.0)


def _footprint_window(
    yaw: float, pitch: float, fov: float, roll: float, view_hw: tuple[int, int], height: int, width: int
) -> tuple[int, int, torch.Tensor]:
    """Equirect rows ``[r0, r1)`` and column indices (wrapping) that contain a view's footprint.

    The footprint is bounded by its border (sampled every half view pixel and unwrapped in
    longitude along the loop) unless it holds a pole, which adds all columns up to that pole.
    Two pixels of margin on every side; verified against the full projection in the tests.
    """
    h, w = int(view_hw[0]), int(view_hw[1])
    n = 2 * max(h, w) + 1
    us = torch.linspace(-0.5, w - 0.5, n, dtype=torch.float64)
    vs = torch.linspace(-0.5, h - 0.5, n, dtype=torch.float64)
    lo_u, hi_u = torch.full_like(us, -0.5), torch.full_like(us, w - 0.5)
    lo_v, hi_v = torch.full_like(vs, -0.5), torch.full_like(vs, h - 0.5)
    # closed loop: top (left->right), right (top->bottom), bottom (right->left), left (bottom->top)
    u = torch.cat((us, hi_u, us.flip(0), lo_u))
    v = torch.cat((lo_v, vs, hi_v, vs.flip(0)))
    step = _pixel_step(fov, w)
    cam = torch.stack(((u - (w - 1) / 2) * step, ((h - 1) / 2 - v) * step, torch.ones_like(u)), dim=-1)
    lon, lat = dir_to_lonlat(cam @ rotation_matrix(yaw, pitch, roll).T)
    poles = torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    _, _, has_pole = project_to_view(poles, yaw, pitch, fov, (h, w), roll)
    lat_hi = math.pi / 2 if bool(has_pole[0]) else float(lat.max())
    lat_lo = -math.pi / 2 if bool(has_pole[1]) else float(lat.min())
    r0 = max(math.floor((0.5 - lat_hi / math.pi) * height - 0.5) - 2, 0)
    r1 = min(math.ceil((0.5 - lat_lo / math.pi) * height - 0.5) + 3, height)
    all_cols = torch.arange(width)
    if bool(has_pole.any()):
        return r0, r1, all_cols
    d = torch.diff(lon)
    d = torch.remainder(d + math.pi, 2 * math.pi) - math.pi
    unwrapped = lon[0] + torch.cat((torch.zeros(1, dtype=d.dtype), torch.cumsum(d, 0)))
    lon_lo, lon_hi = float(unwrapped.min()), float(unwrapped.max())
    c0 = math.floor((lon_lo / (2 * math.pi) + 0.5) * width - 0.5) - 2
    c1 = math.ceil((lon_hi / (2 * math.pi) + 0.5) * width - 0.5) + 3
    if c1 - c0 >= width:
        return r0, r1, all_cols
    return r0, r1, torch.arange(c0, c1) % width


def pers_to_equi(
    view: torch.Tensor,
    yaw: Angles,
    pitch: Angles,
    fov: Angles,
    equi_hw: tuple[int, int],
    roll: Angles = 0.0,
    *,
    mode: str = "bilinear",
    feather: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste perspective views onto an equirect canvas, blending overlaps with feathered weights.

    Args:
        view: ``(B, V, C, h, w)`` views (or ``(B, C, h, w)`` for one view).
        yaw, pitch, roll, fov: degrees, scalars or sequences of length V (as :func:`equi_to_pers`).
        equi_hw: ``(H, W)`` of the output equirect.
        mode: ``grid_sample`` mode used to read the views.
        feather: width of the blending ramp at each view's border, as a fraction of
            ``min(h, w)``; weights rise linearly from ~0 at the footprint edge to 1. Overlaps are
            the weighted mean of the views; ``0`` gives a plain mean.

    Returns:
        ``(equi, mask)``: ``(B, C, H, W)`` pasted image (0 where no view lands) and the
        coverage ``(B, 1, H, W)`` float in {0, 1}. Differentiable with respect to ``view``.
    """
    if view.ndim == 4:
        view = view.unsqueeze(1)
    if view.ndim != 5:
        raise ValueError(f"view must be (B, V, C, h, w) or (B, C, h, w), got {tuple(view.shape)}")
    b, nv, c, h, w = view.shape
    yaws, pitches, fovs, rolls = _view_lists(yaw, pitch, fov, roll)
    if len(yaws) != nv:
        raise ValueError(f"{nv} views but {len(yaws)} angle sets")
    height, width = int(equi_hw[0]), int(equi_hw[1])
    vf = view if view.is_floating_point() else view.float()
    lon_cols = (((torch.arange(width, dtype=torch.float64) + 0.5) / width - 0.5) * (2 * math.pi)).float()
    lat_rows = ((0.5 - (torch.arange(height, dtype=torch.float64) + 0.5) / height) * math.pi).float()
    lon_cols, lat_rows = lon_cols.to(view.device), lat_rows.to(view.device)
    num = vf.new_zeros((b, c, height, width))
    den = vf.new_zeros((1, 1, height, width))
    for k in range(nv):
        # Only the equirect window around the view's footprint is projected and sampled.
        r0, r1, cols = _footprint_window(yaws[k], pitches[k], fovs[k], rolls[k], (h, w), height, width)
        cols = cols.to(view.device)
        la, lo = torch.meshgrid(lat_rows[r0:r1], lon_cols[cols], indexing="ij")
        u, v, inside = project_to_view(lonlat_to_dir(lo, la), yaws[k], pitches[k], fovs[k], (h, w), rolls[k])
        wgt = (_feather_weight(u, v, h, w, feather) * inside).to(vf.dtype)[None, None]
        grid = torch.stack(((u + 0.5) / w * 2 - 1, (v + 0.5) / h * 2 - 1), dim=-1).to(vf.dtype)
        s = F.grid_sample(vf[:, k], grid.unsqueeze(0).expand(b, -1, -1, -1), mode=mode,
                          padding_mode="border", align_corners=False)
        num[:, :, r0:r1].index_add_(3, cols, s * wgt)
        den[:, :, r0:r1].index_add_(3, cols, wgt)
    covered = den > 0
    equi = num / torch.where(covered, den, torch.ones_like(den))
    mask = covered.to(vf.dtype).expand(b, 1, height, width)
    return equi, mask


def view_coverage_mask(
    yaw: Angles,
    pitch: Angles,
    fov: Angles,
    view_hw: tuple[int, int],
    equi_hw: tuple[int, int],
    roll: Angles = 0.0,
    *,
    device=None,
) -> torch.Tensor:
    """Footprint of each view on the equirect: ``(V, 1, H, W)`` float32 in {0, 1}.

    An equirect pixel is covered when its centre direction falls inside the view's pixel
    area (see :func:`project_to_view`).
    """
    yaws, pitches, fovs, rolls = _view_lists(yaw, pitch, fov, roll)
    dirs = equirect_directions(int(equi_hw[0]), int(equi_hw[1]), dtype=torch.float32, device=device)
    masks = [project_to_view(dirs, *a[:3], view_hw, a[3])[2] for a in zip(yaws, pitches, fovs, rolls)]
    return torch.stack(masks).unsqueeze(1).float()


# -------------------------------------------------------------------------- cube maps
CUBE_FACES = ("F", "R", "B", "L", "U", "D")
"""Cube face order. F: yaw 0; R: yaw 90; B: yaw 180; L: yaw -90; U: pitch 90 (image top =
backward, bottom edge meets F); D: pitch -90 (image top = forward, top edge meets F)."""

CUBE_YAW_PITCH = ((0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (-90.0, 0.0), (0.0, 90.0), (0.0, -90.0))
"""``(yaw, pitch)`` in degrees of each face of :data:`CUBE_FACES` (fov 90, roll 0)."""


def _cube_yaws_pitches() -> tuple[list[float], list[float]]:
    """Yaws and pitches (degrees) of the cube faces, :data:`CUBE_FACES` order, as two lists."""
    return [yp[0] for yp in CUBE_YAW_PITCH], [yp[1] for yp in CUBE_YAW_PITCH]


def equi_to_cube(equi: torch.Tensor, face_w: int, *, mode: str = "bilinear") -> torch.Tensor:
    """Six cube faces ``(B, 6, C, face_w, face_w)`` in :data:`CUBE_FACES` order (90° views)."""
    yaws, pitches = _cube_yaws_pitches()
    return equi_to_pers(equi, yaws, pitches, 90.0, (face_w, face_w), mode=mode)


def _cube_face_index(dirs: torch.Tensor) -> torch.Tensor:
    """Face index (:data:`CUBE_FACES` order) of the dominant axis of each direction ``(..., 3)``."""
    x, y, z = dirs.unbind(-1)
    ax, ay, az = x.abs(), y.abs(), z.abs()
    side_x = (ax >= az) & (ax >= ay)
    side_z = (az > ax) & (az >= ay)
    face = torch.where(y > 0, 4, 5)
    face = torch.where(side_z, torch.where(z > 0, 0, 2), face)
    face = torch.where(side_x, torch.where(x > 0, 1, 3), face)
    return face


def cube_to_equi(cube: torch.Tensor, equi_hw: tuple[int, int], *, mode: str = "bilinear") -> torch.Tensor:
    """Equirect ``(B, C, H, W)`` from cube faces ``(B, 6, C, f, f)`` in :data:`CUBE_FACES` order.

    Exact inverse geometry of :func:`equi_to_cube`: each equirect pixel reads the face of its
    dominant axis; the cube edges lie on the faces' edge-pixel centres, so bilinear reads
    never leave a face. Differentiable with respect to ``cube``.

    py360convert's ``c2e`` differs by design in two sub-pixel ways: it samples the equirect
    at ``linspace(-pi, pi, W)`` (not pixel centres) and scales faces by ``f`` instead of
    ``f - 1``; on smooth images the two agree to interpolation error.
    """
    if cube.ndim != 5 or cube.shape[1] != 6 or cube.shape[-1] != cube.shape[-2]:
        raise ValueError(f"cube must be (B, 6, C, f, f), got {tuple(cube.shape)}")
    b, _, c, f, _ = cube.shape
    height, width = int(equi_hw[0]), int(equi_hw[1])
    cf = cube if cube.is_floating_point() else cube.float()
    dirs = equirect_directions(height, width, dtype=torch.float32, device=cube.device).reshape(-1, 3)
    face = _cube_face_index(dirs)
    out = cf.new_zeros((b, c, height * width))
    for k, (yw, pt) in enumerate(CUBE_YAW_PITCH):
        idx = torch.nonzero(face == k).squeeze(1)
        if idx.numel() == 0:
            continue
        u, v, _ = project_to_view(dirs[idx], yw, pt, 90.0, (f, f))
        u, v = u.clamp(0, f - 1), v.clamp(0, f - 1)
        grid = torch.stack(((u + 0.5) / f * 2 - 1, (v + 0.5) / f * 2 - 1), dim=-1).to(cf.dtype)
        grid = grid.reshape(1, 1, -1, 2).expand(b, -1, -1, -1)
        s = F.grid_sample(cf[:, k], grid, mode=mode, padding_mode="border", align_corners=False)
        out = out.index_copy(2, idx, s.reshape(b, c, -1))
    return out.reshape(b, c, height, width)


# --------------------------------------------------------------------------- rotation
def rotate_equi(
    equi: torch.Tensor,
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    *,
    mode: str = "bilinear",
    inverse: bool = False,
) -> torch.Tensor:
    """Rotate equirect images ``(B, C, H, W)`` as seen by a camera turned by ``yaw``/``pitch``/``roll`` (degrees).

    ``out(d) = equi(R @ d)`` with ``R = rotation_matrix(yaw, pitch, roll)``: the output's centre
    shows what was at ``(yaw, pitch)``, and ``equi_to_pers(rotate_equi(e, y, p, r), 0, 0, fov, hw)``
    equals ``equi_to_pers(e, y, p, fov, hw, r)``. ``inverse=True`` applies ``R^T`` (undoes the
    rotation). A pure yaw that is a multiple of the column step ``360 / W`` is a circular roll of
    the columns (exact, any dtype); anything else resamples (``grid_sample`` on the padded image).
    """
    if equi.ndim != 4:
        raise ValueError(f"equi must be (B, C, H, W), got shape {tuple(equi.shape)}")
    height, width = equi.shape[-2:]
    if float(pitch) == 0.0 and float(roll) == 0.0:
        k = float(yaw) * width / 360.0
        if abs(k - round(k)) < 1e-6:
            shift = int(round(k)) % width
            return torch.roll(equi, shifts=shift if inverse else -shift, dims=-1)
    r = rotation_matrix(yaw, pitch, roll, dtype=torch.float64, device=equi.device)
    if inverse:
        r = r.T
    dirs = equirect_directions(height, width, dtype=torch.float64, device=equi.device)
    lon, lat = dir_to_lonlat(dirs @ r.T)
    pad = 2 if mode == "bicubic" else 1
    xf = equi if equi.is_floating_point() else equi.float()
    grid = lonlat_to_padded_grid(lon, lat, height, width, pad).to(xf.dtype)
    grid = grid.unsqueeze(0).expand(equi.shape[0], -1, -1, -1)
    return F.grid_sample(pad_equirect(xf, pad), grid, mode=mode, padding_mode="border", align_corners=False)


# ------------------------------------------------------------- per-pixel lon/lat maps
def equirect_lonlat_map(height: int, width: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``(2, H, W)``: channel 0 longitude (phi, ``(-pi, pi)``), channel 1 latitude (theta), radians.

    The longitude jumps from +pi to -pi across the seam (left/right edges).
    """
    lon, lat = equirect_lonlat(height, width, dtype=dtype, device=device)
    return torch.stack((lon, lat))


def view_lonlat_map(
    yaw: Angles,
    pitch: Angles,
    fov: Angles,
    out_hw: tuple[int, int],
    roll: Angles = 0.0,
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """``(V, 2, h, w)`` longitude / latitude (radians) of every pixel centre of V perspective views.

    Matches the pixels of :func:`equi_to_pers` with the same arguments, so it can be fed as two
    extra channels next to the RGB view (AOG-Net / OPa-Ma adapters).
    """
    lon, lat = dir_to_lonlat(perspective_directions(yaw, pitch, fov, out_hw, roll, dtype=torch.float64, device=device))
    return torch.stack((lon, lat), dim=1).to(dtype)


def cube_lonlat_map(face_w: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``(6, 2, f, f)`` longitude / latitude (radians) of every cube-face pixel (:data:`CUBE_FACES` order)."""
    yaws, pitches = _cube_yaws_pitches()
    return view_lonlat_map(yaws, pitches, 90.0, (face_w, face_w), dtype=dtype, device=device)
