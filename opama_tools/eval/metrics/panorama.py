"""Weight-free 360° metrics on equirectangular panoramas.

All functions take float tensors ``(B, 3, H, W)`` with display values in ``[0, 1]``
(``W == 2 H``, conventions of :mod:`opama_model.spherical`) and return one value per
image, ``(B,)`` float64 tensors.

* :func:`seam_score`: discontinuity across the ±180° edge, relative to the interior.
* :func:`pole_variance`: variance along the top and bottom rows (one direction each).
* :func:`input_coverage_mask`: equirect pixels seen by the input NFoV view.
* :func:`masked_psnr` / :func:`masked_ssim`: fidelity on that known region.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from opama_model.spherical import equirect_directions, rotation_matrix

__all__ = [
    "PSNR_CAP_DB",
    "seam_score",
    "pole_variance",
    "input_coverage_mask",
    "masked_psnr",
    "masked_ssim",
    "ssim_means",
]

PSNR_CAP_DB = 100.0
"""PSNR reported for (near-)identical inputs: ``min(PSNR, 100 dB)`` keeps means finite."""


def seam_score(x: torch.Tensor, band: int = 4, eps: float = 1e-6) -> torch.Tensor:
    """Discontinuity across the ±180° seam, ``(B,)``.

    ``mean |x[..., 0] - x[..., W-1]|`` divided by the mean absolute difference of
    adjacent columns inside, taken over the ``band`` column pairs nearest each edge
    (``j, j+1`` for ``j < band`` and ``j >= W-1-band``). Means run over rows and
    channels. 1.0 = the seam is as smooth as the image next to it; a visible seam
    gives values well above 1. ``eps`` keeps a flat image at 1.0.
    """
    x = x.double()
    w = x.shape[-1]
    if w < 2 * band + 2:
        raise ValueError(f"image too narrow for a seam band of {band}: width {w}")
    seam = (x[..., 0] - x[..., -1]).abs().mean(dim=(1, 2))
    inner = torch.cat((x[..., : band + 1].diff(dim=-1), x[..., w - band - 1 :].diff(dim=-1)), dim=-1)
    ref = inner.abs().mean(dim=(1, 2, 3))
    return (seam + eps) / (ref + eps)


def pole_variance(x: torch.Tensor) -> torch.Tensor:
    """Mean of the variances along the top row and the bottom row, ``(B,)``.

    Each of those rows looks (almost) at a single direction, the zenith or the nadir,
    so a consistent panorama keeps them nearly constant: 0 is ideal. Variance over the
    W pixels per channel (population variance), averaged over channels and the two rows;
    units: squared display values in [0, 1].
    """
    x = x.double()
    top = x[..., 0, :].var(dim=-1, unbiased=False).mean(dim=1)
    bottom = x[..., -1, :].var(dim=-1, unbiased=False).mean(dim=1)
    return (top + bottom) / 2


def input_coverage_mask(
    height: int,
    width: int,
    yaw: float = 0.0,
    pitch: float = 0.0,
    fov: float = 90.0,
    view_hw: tuple[int, int] = (512, 512),
) -> torch.Tensor:
    """Boolean ``(H, W)`` mask of the equirect pixels inside the input view's frustum.

    The view at ``yaw``/``pitch`` (degrees) with horizontal ``fov`` spanning the centres
    of its edge columns (README convention) and ``view_hw`` pixels covers
    ``|x/z| <= tan(fov/2)`` and ``|y/z| <= tan(fov/2) (h-1)/(w-1)`` in camera coordinates
    (square pixels). A pixel centre is in the mask when its direction falls in there.
    """
    h, w = view_hw
    half_x = math.tan(math.radians(fov) / 2)
    half_y = half_x * (h - 1) / max(w - 1, 1)
    d = equirect_directions(height, width, dtype=torch.float64)
    cam = d @ rotation_matrix(yaw, pitch)  # world -> camera: R^T d, written as d R
    z = cam[..., 2]
    front = z > 1e-9
    zs = torch.where(front, z, torch.ones_like(z))
    return front & ((cam[..., 0] / zs).abs() <= half_x + 1e-12) & ((cam[..., 1] / zs).abs() <= half_y + 1e-12)


def _check_pair(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    if mask.shape != a.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match images {tuple(a.shape[-2:])}")
    if not bool(mask.any()):
        raise ValueError("empty mask")


def masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, cap_db: float = PSNR_CAP_DB) -> torch.Tensor:
    """PSNR in dB (peak 1.0) over the pixels where ``mask`` (``(H, W)`` bool) is true, ``(B,)``.

    Capped at ``cap_db`` (identical inputs give exactly ``cap_db``).
    """
    _check_pair(a, b, mask)
    m = mask.to(a.device)
    diff = (a.double() - b.double())[..., m]  # (B, C, N)
    mse = diff.pow(2).mean(dim=(1, 2))
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-300))
    return psnr.clamp(max=cap_db)


def masked_ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, margin: int = 8) -> torch.Tensor:
    """Mean SSIM (torchmetrics, Gaussian 11x11, sigma 1.5, data range 1) over ``mask``, ``(B,)``.

    The SSIM map is computed in float32 on the mask's bounding box grown by ``margin``
    pixels (more than the 5 px reach of the window, so the masked values equal those of
    the full-image map), then averaged over the masked pixels and the channels.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(a, b, mask)
    m = mask.to(a.device)
    rows = torch.nonzero(m.any(dim=1)).flatten()
    cols = torch.nonzero(m.any(dim=0)).flatten()
    r0, r1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, m.shape[0])
    c0, c1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, m.shape[1])
    _, ssim_map = structural_similarity_index_measure(
        a[..., r0:r1, c0:c1].float(), b[..., r0:r1, c0:c1].float(), data_range=1.0, reduction="none",
        return_full_image=True,
    )
    return ssim_map[..., m[r0:r1, c0:c1]].double().mean(dim=(1, 2))


def ssim_means(a: torch.Tensor, b: torch.Tensor, masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Mean SSIM over each of several ``(H, W)`` masks from one full-image map, each ``(B,)``.

    Same values as :func:`masked_ssim` per mask (which crops to the mask's bounding box); this
    computes the map once when the masks together cover the image (e.g. input and generated region).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    _, smap = structural_similarity_index_measure(a.float(), b.float(), data_range=1.0, reduction="none",
                                                  return_full_image=True)
    out = []
    for m in masks:
        if m.shape != a.shape[-2:] or not bool(m.any()):
            raise ValueError(f"mask {tuple(m.shape)} empty or not matching images {tuple(a.shape[-2:])}")
        out.append(smap[..., m.to(a.device)].double().mean(dim=(1, 2)))
    return out


def resize_like(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of ``(B, C, H, W)`` to ``hw``; identity when equal."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
