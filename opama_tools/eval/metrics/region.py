"""Weight-free distribution distances of the generated region, per latitude band.

Inputs are ``(B, 3, H, W)`` equirects in [0, 1] and a boolean ``(H, W)`` mask of the
pixels to compare (the generated region: outside the input view's footprint). The
sphere is cut into ``bands`` equal latitude bands (30° each by default); in each band
the masked pixels of the generated and the reference panorama are summarised by
histograms weighted by ``cos(latitude)`` (the pixel's solid angle), and compared with
the 1-D Wasserstein-1 distance (area between the two cumulative histograms, in the
histogrammed quantity's units). Band distances are averaged with each band's masked
solid angle as weight. 0 = same distributions; larger = further apart.

Both are computed at a working resolution of at most ``size`` = 128 x 256 (larger images
get an antialiased bilinear resize; the mask resampled by area, a pixel counts when more than half of
it is masked): ~30 000 pixels are plenty for 64-bin histograms, the cost no longer grows
with the image, and the gradient statistics do not depend on the input resolution.

* :func:`colour_distance`: per RGB channel, values in [0, 1] (``bins`` bins), mean over channels.
* :func:`gradient_distance`: gradient magnitude ``sqrt(dx² + dy²)`` of the BT.601 grey image
  (longitude wraps; forward differences), in [0, 1] units per pixel, histogram over
  [0, 0.25] (steeper gradients fall in the last bin).
"""

from __future__ import annotations

import torch

__all__ = ["REGION_SIZE", "latitudes", "colour_distance", "gradient_distance"]


def latitudes(height: int, dtype=torch.float64) -> torch.Tensor:
    """Latitude in radians of each row centre, ``(H,)``: +π/2 - π (i + 0.5) / H (row 0 = top)."""
    i = torch.arange(height, dtype=dtype)
    return torch.pi / 2 - torch.pi * (i + 0.5) / height


def _w1(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """Wasserstein-1 of histograms over [0, 1] with equal bins along the last axis."""
    return (h1.cumsum(dim=-1) - h2.cumsum(dim=-1)).abs().sum(dim=-1) / h1.shape[-1]


def _band_histograms(v: torch.Tensor, band: torch.Tensor, w: torch.Tensor, bands: int, bins: int) -> torch.Tensor:
    """Normalised weighted histograms ``(B, bands, C, bins)`` over [0, 1] of masked values ``v`` ``(B, C, N)``.

    ``band`` ``(N,)``: each value's latitude band; ``w`` ``(N,)``: its weight. One ``bincount`` per image.
    """
    b, c, n = v.shape
    idx = (v.clamp(0, 1) * bins).long().clamp_max(bins - 1)  # (B, C, N)
    key = (band.view(1, 1, n) * c + torch.arange(c, device=v.device).view(1, c, 1)) * bins + idx
    key = key + torch.arange(b, device=v.device).view(b, 1, 1) * (bands * c * bins)
    h = torch.bincount(key.reshape(-1), weights=w.to(torch.float64).repeat(b * c), minlength=b * bands * c * bins)
    h = h.view(b, bands, c, bins)
    return h / h.sum(dim=-1, keepdim=True).clamp_min(1e-300)


def _at(x: torch.Tensor, mask: torch.Tensor, size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None or x.shape[-2] <= size[0]:  # only ever downsampled
        return x, mask
    import torch.nn.functional as F

    x = F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    m = F.interpolate(mask.double()[None, None], size=tuple(size), mode="area")[0, 0] > 0.5
    return x, m


def _banded(fn_values, gen: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, bands: int, bins: int,
            size: tuple[int, int] | None = None) -> torch.Tensor:
    """Band-weighted mean over latitude bands of the mean-over-channels W1 distance, ``(B,)``."""
    if gen.shape != ref.shape:
        raise ValueError(f"shape mismatch {tuple(gen.shape)} vs {tuple(ref.shape)}")
    if mask.shape != gen.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match images {tuple(gen.shape[-2:])}")
    gen, mask_w = _at(gen, mask.to(gen.device), size)
    ref, _ = _at(ref, mask.to(ref.device), size)
    h, w = gen.shape[-2:]
    m = mask_w.reshape(-1)
    if not bool(m.any()):
        raise ValueError("empty mask")
    lat = latitudes(h).to(gen.device)
    wts = torch.cos(lat).clamp_min(0)[:, None].expand(h, w).reshape(-1)[m]
    band = ((torch.pi / 2 - lat) / torch.pi * bands).long().clamp(0, bands - 1)[:, None].expand(h, w).reshape(-1)[m]
    vg = fn_values(gen.double()).flatten(2)[..., m]  # (B, C, N)
    vr = fn_values(ref.double()).flatten(2)[..., m]
    d = _w1(_band_histograms(vg, band, wts, bands, bins), _band_histograms(vr, band, wts, bands, bins)).mean(dim=-1)
    bw = torch.bincount(band, weights=wts.to(torch.float64), minlength=bands)  # solid angle per band
    return (d * bw).sum(dim=-1) / bw.sum()


REGION_SIZE = (128, 256)


def colour_distance(gen: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, bands: int = 6, bins: int = 64,
                    size: tuple[int, int] | None = REGION_SIZE) -> torch.Tensor:
    """Colour-histogram W1 distance per latitude band (module docstring), ``(B,)``, in [0, 1]."""
    return _banded(lambda x: x[:, :3], gen, ref, mask, bands, bins, size)


def _grad_mag(x: torch.Tensor) -> torch.Tensor:
    wts = torch.tensor((0.2989, 0.5870, 0.1140), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    g = (x[:, :3] * wts).sum(dim=1, keepdim=True)
    dx = torch.roll(g, -1, dims=-1) - g
    dy = torch.cat((g[..., 1:, :] - g[..., :-1, :], torch.zeros_like(g[..., :1, :])), dim=-2)
    return torch.sqrt(dx**2 + dy**2)


def gradient_distance(gen: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, bands: int = 6,
                      bins: int = 64, size: tuple[int, int] | None = REGION_SIZE) -> torch.Tensor:
    """Gradient-magnitude-histogram W1 distance per latitude band, ``(B,)`` (texture / sharpness)."""
    return 0.25 * _banded(lambda x: 4.0 * _grad_mag(x), gen, ref, mask, bands, bins, size)
