"""Global-local Mamba Adapter (GMA) of OPa-Ma, as the reference code builds it.

Input: 7 images, the 6 cube faces of the current panorama (``spherical.CUBE_FACES`` order:
F, R, B, L, U, D) then the current view, each with 5 channels: RGB in [-1, 1], latitude and
longitude of the pixel centre in radians (:func:`build_gma_input`).

Structure (reference defaults; SD-2 sizes in brackets):

* stem: ``len(stem_channels)`` stride-2 3x3 convs with channel LayerNorm + SiLU between them
  [5 -> 80 -> 160 -> 320, x8: 512 px -> 64x64], then a learned per-image embedding;
* stages ``k = 0..S-1`` with ``channels[k]`` (the UNet's down-block channels) [320, 640, 1280,
  1280 at 64, 32, 16, 8]: between stages avg-pool x2 and a 1x1 conv; in each stage
  ``local_depth`` bidirectional Mamba layers over each image's ``h*w`` raster-ordered tokens
  (forward and flipped scans, separate weights, summed; pre-norm residual), and in the
  ``global_stages`` (default: all but the first) ``global_depth`` Mamba layers across the 7
  images at every spatial position (sequence length 7, view last, so the view's token has
  seen all faces);
* output: the view's slice of every stage ``(B, channels[k], h_k, w_k)``, added to the UNet's
  down blocks as ``down_intrablock_additional_residuals`` (no zero-conv).

Beyond the reference (off by default): ``ring_scan=True`` adds, in every stage, a circular
Mamba layer along the horizon ring: each row of the 4 side faces F -> R -> B -> L -> (F) is
one sequence of ``4 w`` tokens scanned with ``circular=True``, so neighbouring faces, and the
+-180 degree seam inside face B, are connected and no face edge is a scan boundary.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
from torch import nn

from .mamba import Mamba
from .spherical import CUBE_YAW_PITCH, dir_to_lonlat, perspective_directions

__all__ = ["GMA", "gma_coordinates", "build_gma_input", "NUM_IMAGES", "VIEW_INDEX"]

NUM_IMAGES = 7
VIEW_INDEX = 6
SIDE_FACES = (0, 1, 2, 3)  # F, R, B, L: yaw 0, 90, 180, -90, a ring turning right


@lru_cache(maxsize=8)
def _face_latlon(size: int) -> torch.Tensor:
    dirs = perspective_directions([yp[0] for yp in CUBE_YAW_PITCH], [yp[1] for yp in CUBE_YAW_PITCH], 90.0,
                                  (size, size), dtype=torch.float64)
    lon, lat = dir_to_lonlat(dirs)
    return torch.stack((lat, lon), dim=1).float()  # (6, 2, s, s)


def gma_coordinates(yaw, pitch, fov, size: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Latitude and longitude (radians) of every pixel centre of the 7 GMA images.

    Args:
        yaw, pitch, fov: the view's angles in degrees, scalars or sequences of length B.
        size: side of each (square) image in pixels.

    Returns:
        ``(B, 7, 2, size, size)``: channel 0 latitude (up positive), channel 1 longitude (right
        positive, in (-pi, pi]); images 0-5 are the cube faces, image 6 the view.
    """
    view = perspective_directions(yaw, pitch, fov, (size, size), dtype=torch.float64)
    lon, lat = dir_to_lonlat(view)
    view_ll = torch.stack((lat, lon), dim=1).float()  # (B, 2, s, s)
    faces = _face_latlon(size).unsqueeze(0).expand(view_ll.shape[0], -1, -1, -1, -1)
    return torch.cat((faces, view_ll.unsqueeze(1)), dim=1).to(device=device, dtype=dtype)


def build_gma_input(faces: torch.Tensor, view: torch.Tensor, yaw, pitch, fov) -> torch.Tensor:
    """Stack RGB and coordinates: ``faces (B, 6, 3, S, S)``, ``view (B, 3, S, S)`` in [-1, 1] and
    the view's angles (degrees) -> ``(B, 7, 5, S, S)`` (faces, then the view)."""
    b, s = view.shape[0], view.shape[-1]
    rgb = torch.cat((faces, view.unsqueeze(1)), dim=1)
    ll = gma_coordinates(yaw, pitch, fov, s, device=view.device, dtype=view.dtype)
    if ll.shape[0] != b:
        ll = ll.expand(b, -1, -1, -1, -1)
    return torch.cat((rgb, ll), dim=2)


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``(N, C, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _MambaLayer(nn.Module):
    """Pre-norm residual Mamba layer ``x + Mamba(LN(x)) [+ flip(Mamba_b(flip(LN(x))))]`` on ``(N, L, C)``."""

    def __init__(self, dim: int, *, bidirectional: bool = False, circular: bool = False, **mamba_kw):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fwd = Mamba(dim, circular=circular, **mamba_kw)
        self.bwd = Mamba(dim, circular=circular, **mamba_kw) if bidirectional else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        out = self.fwd(y)
        if self.bwd is not None:
            out = out + self.bwd(y.flip(1)).flip(1)
        return x + out


class _Stage(nn.Module):
    def __init__(self, in_ch: int, ch: int, *, first: bool, local_depth: int, global_depth: int,
                 ring: bool, mamba_kw: dict):
        super().__init__()
        self.down = None if first else nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(in_ch, ch, 1))
        self.local_layers = nn.ModuleList(
            _MambaLayer(ch, bidirectional=True, **mamba_kw) for _ in range(local_depth))
        self.ring_layer = _MambaLayer(ch, circular=True, **mamba_kw) if ring else None
        self.global_layers = nn.ModuleList(_MambaLayer(ch, **mamba_kw) for _ in range(global_depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 7, C_in, h, w)`` -> ``(B, 7, C, h', w')``."""
        b, n = x.shape[:2]
        if self.down is not None:
            x = self.down(x.flatten(0, 1)).unflatten(0, (b, n))
        c, h, w = x.shape[2:]
        t = x.permute(0, 1, 3, 4, 2)  # (B, 7, h, w, C)
        if self.local_layers:
            s = t.reshape(b * n, h * w, c)
            for layer in self.local_layers:
                s = layer(s)
            t = s.view(b, n, h, w, c)
        if self.ring_layer is not None:
            side = t[:, list(SIDE_FACES)]  # (B, 4, h, w, C)
            r = side.permute(0, 2, 1, 3, 4).reshape(b * h, len(SIDE_FACES) * w, c)
            r = self.ring_layer(r).view(b, h, len(SIDE_FACES), w, c).permute(0, 2, 1, 3, 4)
            t = torch.cat((r, t[:, len(SIDE_FACES):]), dim=1)
        if self.global_layers:
            g = t.permute(0, 2, 3, 1, 4).reshape(b * h * w, n, c)
            for layer in self.global_layers:
                g = layer(g)
            t = g.view(b, h, w, n, c).permute(0, 3, 1, 2, 4)
        return t.permute(0, 1, 4, 2, 3)


class GMA(nn.Module):
    """Global-local Mamba Adapter.

    Args:
        channels: channels per stage (the UNet's down-block channels, e.g. 320, 640, 1280, 1280).
        stem_channels: channels after each stride-2 stem conv; the last equals ``channels[0]``;
            the stem down-samples by ``2 ** len(stem_channels)`` (the VAE factor).
        in_channels: 5 (RGB + latitude + longitude).
        num_images: 7 (6 cube faces then the view).
        local_depth: bidirectional per-image Mamba layers per stage (2).
        global_depth: cross-image Mamba layers per global stage (2).
        global_stages: stage indices with the global step (default: all but the first).
        d_state, d_conv, expand: Mamba sizes (16, 4, 2).
        ring_scan: add a circular scan along the horizon ring of side faces (beyond the reference).
    """

    def __init__(self, channels: Sequence[int] = (320, 640, 1280, 1280), stem_channels: Sequence[int] = (80, 160, 320),
                 *, in_channels: int = 5, num_images: int = NUM_IMAGES, local_depth: int = 2,
                 global_depth: int = 2, global_stages: Sequence[int] | None = None, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, ring_scan: bool = False):
        super().__init__()
        channels = [int(c) for c in channels]
        stem_channels = [int(c) for c in stem_channels]
        if not stem_channels or stem_channels[-1] != channels[0]:
            raise ValueError(f"the stem must end at channels[0]={channels[0]}, got {stem_channels}")
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(stem_channels):
            layers.append(nn.Conv2d(prev, c, 3, stride=2, padding=1))
            if i < len(stem_channels) - 1:
                layers += [_ChannelNorm(c), nn.SiLU()]
            prev = c
        self.stem = nn.Sequential(*layers)
        self.image_embed = nn.Parameter(torch.randn(num_images, channels[0]) * 0.02)
        if global_stages is None:
            global_stages = range(1, len(channels))
        global_stages = set(int(k) for k in global_stages)
        mamba_kw = dict(d_state=d_state, d_conv=d_conv, expand=expand)
        self.stages = nn.ModuleList(
            _Stage(channels[k - 1] if k else channels[0], c, first=k == 0, local_depth=local_depth,
                   global_depth=global_depth if k in global_stages else 0, ring=ring_scan, mamba_kw=mamba_kw)
            for k, c in enumerate(channels)
        )
        self.num_images = num_images
        self.downscale_factor = 2 ** len(stem_channels)

    def forward_all(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Features of all 7 images per stage, ``[(B, 7, C_k, h_k, w_k)]``."""
        if images.ndim != 5 or images.shape[1] != self.num_images:
            raise ValueError(f"images must be (B, {self.num_images}, C, H, W), got {tuple(images.shape)}")
        b, n = images.shape[:2]
        x = self.stem(images.flatten(0, 1)).unflatten(0, (b, n))
        x = x + self.image_embed[None, :, :, None, None]
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images (B, 7, 5, H, W)`` -> the view's features ``[(B, C_k, H/(f 2^k), W/(f 2^k))]``
        (``f`` = stem factor), one per UNet down block."""
        return [f[:, VIEW_INDEX].contiguous() for f in self.forward_all(images)]
