"""Discontinuity Score (DS) of an equirectangular panorama's ±180° border.

From "Geometry Fidelity for Spherical Images" (Christensen et al., arXiv 2407.18207):
for each border ``i`` of length ``L`` pixels a strip ``a`` of 4 columns straddles it
(two columns before the border, two after; the border lies between strip columns 2
and 3), ``â`` is the strip's horizontal derivative and

    DS(a) = 1/(2L) · Σ_y [ |â(2,y)| / (|â(1,y)| + c) + |â(3,y)| / (|â(4,y)| + c) ],
    DS(I) = (L / H) · Σ_i DS(a_i).

An equirect has one border, the wrap between column ``W-1`` and column ``0``, of length
``L = H``, so ``DS(I) = DS(a)``: the mean over rows of the two ratios "derivative across
the border / derivative one column further inside". ≈ 1 where the border is as smooth as
the image next to it, ≫ 1 at a visible seam; flat rows (both derivatives ≪ c) contribute
≈ 0, so an image with large flat areas scores below 1.

Constants chosen here (the paper's text leaves them open):

* grey = 0.2989 R + 0.5870 G + 0.1140 B (ITU-R BT.601 luma, as ``rgb2gray`` and
  PanoEval), in **8-bit units** [0, 255];
* derivative kernel: Scharr ``[[-3,0,3],[-10,0,10],[-3,0,3]] / 16`` (x increasing to the
  right; on a linear ramp of slope s per pixel it gives 2 s), applied as a valid
  3x3 correlation to the 6 columns ``W-3 .. 2`` so each of the 4 strip derivatives
  sees real neighbours (the two at the border span it); rows are edge-replicated;
* ``c = 1.0`` grey level: one 8-bit quantisation step, so a ratio stays finite on flat
  rows while real texture gradients (tens of grey levels) dominate it;
* working resolution ``256 x 512`` (antialiased bilinear resize first), as PanoEval:
  pixel derivatives depend on resolution, so a fixed grid makes DS comparable across
  image sizes. ``size=None`` keeps the native resolution.

PanoEval (``abond19/PanoEval``, ``metrics/discontinuity_score.py``) differs: it slices
``image[:, :, :6]`` / ``[:, :, -6:]`` on a ``(B, 3, H, W)`` batch, i.e. the first and last
six **rows** (not columns), concatenates them along the row axis, and then reads columns
1-4 of that 12-row band's derivative (``L`` = 12, scaled by 6/256) with zero padding and
``c = 0.1`` on [0, 1] values; it therefore measures neither the ±180° border nor the
formula above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DS_C", "DS_SIZE", "LUMA", "SCHARR_X", "discontinuity_score", "border_derivatives"]

LUMA = (0.2989, 0.5870, 0.1140)
SCHARR_X = torch.tensor([[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]], dtype=torch.float64) / 16.0
DS_C = 1.0
"""Stability constant ``c`` in 8-bit grey levels."""
DS_SIZE = (256, 512)
"""Working resolution ``(H, W)`` (PanoEval's 512x256)."""


def _grey255(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    return (x.double()[:, :3] * w).sum(dim=1, keepdim=True) * 255.0


def border_derivatives(x: torch.Tensor, size: tuple[int, int] | None = DS_SIZE) -> torch.Tensor:
    """``â``: horizontal derivatives of the 4 strip columns ``W-2, W-1, 0, 1``, ``(B, H, 4)``.

    ``x``: ``(B, 3, H, W)`` in [0, 1]; grey in 8-bit units, optionally resized to ``size``.
    """
    if x.ndim != 4 or x.shape[1] < 3:
        raise ValueError(f"expected (B, 3, H, W) images, got {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x.double(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    g = _grey255(x)
    if g.shape[-1] < 6:
        raise ValueError(f"image too narrow for DS: width {g.shape[-1]}")
    strip = torch.cat((g[..., -3:], g[..., :3]), dim=-1)  # columns W-3, W-2, W-1, 0, 1, 2
    strip = F.pad(strip, (0, 0, 1, 1), mode="replicate")
    k = SCHARR_X.to(g.device).view(1, 1, 3, 3)
    return F.conv2d(strip, k)[:, 0]  # (B, H, 4)


def discontinuity_score(x: torch.Tensor, size: tuple[int, int] | None = DS_SIZE, c: float = DS_C) -> torch.Tensor:
    """DS of each panorama, ``(B,)`` float64 (see the module docstring; 1 ≈ seamless, ≫ 1 seam)."""
    a = border_derivatives(x, size).abs()
    per_row = a[..., 1] / (a[..., 0] + c) + a[..., 2] / (a[..., 3] + c)
    length = a.shape[1]  # L = H rows
    ds_strip = per_row.sum(dim=1) / (2 * length)
    return ds_strip * (length / a.shape[1])  # DS(I) = (L / H) · DS(a), one border
