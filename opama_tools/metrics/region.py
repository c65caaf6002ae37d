"""Weight-free distribution distances of the generated region, per latitude band.

Inputs are ``(B, 3, H, W)`` equirects in [0, 1] and a boolean ``(H, W)`` mask of the
pixels to compare (the generated region: outside the input view's footprint). The
sphere is cut into ``bands`` equal latitude bands (30° each by default); in each band
the masked pixels of the generated and the reference panorama are summarised by
histograms weighted by ``cos(latitude)`` (the pixel's solid angle), and compared with
the 1-D Wasserstein-1 distance (area between the two cumulative histograms, in the
histogrammed quantity's units). Band distances are averaged with each band's masked
solid angle as weight. 0 = same distributions; larger = further apart.

* :func:`colour_distance`: per RGB channel, values in [0, 1] (``bins`` bins), mean over channels.
* :func:`gradient_distance`: gradient magnitude ``sqrt(dx² + dy²)`` of the BT.601 grey image
  (longitude wraps; forward differences), in [0, 1] units per pixel, histogram over
  [0, 0.25] (steeper gradients fall in the last bin).
"""

from __future__ import annotations

import torch

__all__ = ["latitudes", "colour_distance", "gradient_distance"]


def latitudes(height: int, dtype=torch.float64) -> torch.Tensor:
    """Latitude in radians of each row centre, ``(H,)``: +π/2 - π (i + 0.5) / H (row 0 = top)."""
    i = torch.arange(height, dtype=dtype)
    return torch.pi / 2 - torch.pi * (i + 0.5) / height


def _weighted_hist(v: torch.Tensor, w: torch.Tensor, bins: int) -> torch.Tensor:
    """Normalised histogram ``(B, bins)`` over [0, 1] of values ``(B, N)`` with weights ``(N,)``."""
    idx = (v.clamp(0, 1) * bins).long().clamp_max(bins - 1)
    h = torch.zeros(v.shape[0], bins, dtype=torch.float64, device=v.device)
    h.scatter_add_(1, idx, w.expand_as(v).to(torch.float64).contiguous())
    return h / h.sum(dim=1, keepdim=True).clamp_min(1e-300)


def _w1(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """Wasserstein-1 of two histograms over [0, 1] with equal bins, ``(B,)``."""
    return (h1.cumsum(dim=1) - h2.cumsum(dim=1)).abs().sum(dim=1) / h1.shape[1]


def _banded(fn_values, gen: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, bands: int, bins: int) -> torch.Tensor:
    """Band-weighted mean over latitude bands of the mean-over-channels W1 distance, ``(B,)``."""
    if gen.shape != ref.shape:
        raise ValueError(f"shape mismatch {tuple(gen.shape)} vs {tuple(ref.shape)}")
    h, w = gen.shape[-2:]
    if mask.shape != (h, w):
        raise ValueError(f"mask {tuple(mask.shape)} does not match images {(h, w)}")
    vg, vr = fn_values(gen.double()), fn_values(ref.double())  # (B, C, H, W)
    lat = latitudes(h).to(gen.device)
    cosw = torch.cos(lat).clamp_min(0)[:, None].expand(h, w)
    band_of_row = ((torch.pi / 2 - lat) / torch.pi * bands).long().clamp(0, bands - 1)
    total = torch.zeros(gen.shape[0], dtype=torch.float64, device=gen.device)
    weight_sum = 0.0
    m = mask.to(gen.device)
    for b in range(bands):
        sel = m & (band_of_row == b)[:, None]
        wts = cosw[sel]
        bw = float(wts.sum())
        if bw <= 0:
            continue
        d = torch.stack([_w1(_weighted_hist(vg[:, c][:, sel], wts, bins), _weighted_hist(vr[:, c][:, sel], wts, bins))
                         for c in range(vg.shape[1])], dim=1).mean(dim=1)
        total += bw * d
        weight_sum += bw
    if weight_sum == 0:
        raise ValueError("empty mask")
    return total / weight_sum


def colour_distance(gen: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, bands: int = 6, bins: int = 64) -> torch.Tensor:
    """Colour-histogram W1 distance per latitude band (module docstring), ``(B,)``, in [0, 1]."""
    return _banded(lambda x: x[:, :3], gen, ref, mask, bands, bins)


def _grad_mag(x: torch.Tensor) -> torch.Tensor:
    wts = torch.tensor((0.2989, 0.5870, 0.1140), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    g = (x[:, :3] * wts).sum(dim=1, keepdim=True)
    dx = torch.roll(g, -1, dims=-1) - g
    dy = torch.cat((g[..., 1:, :] - g[..., :-1, :], torch.zeros_like(g[..., :1, :])), dim=-2)
    return torch.sqrt(dx**2 + dy**2)


def gradient_distance(gen: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, bands: int = 6,
                      bins: int = 64) -> torch.Tensor:
    """Gradient-magnitude-histogram W1 distance per latitude band, ``(B,)`` (texture / sharpness)."""
    return 0.25 * _banded(lambda x: 4.0 * _grad_mag(x), gen, ref, mask, bands, bins)
