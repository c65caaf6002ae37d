"""Global-local Mamba Adapter (GMA) of OPa-Ma, as the reference code (``MambaAdapter``) builds it.

Input: 7 images, the 6 cube faces of the current panorama (``spherical.CUBE_FACES`` order:
F, R, B, L, U, D) then the current view, each with 5 channels: RGB in [-1, 1], latitude and
longitude of the pixel centre in radians (:func:`build_gma_input`).

Structure (reference defaults; SD-2 sizes in brackets):

* stem: ``len(stem_channels)`` stride-2 3x3 convs [5 -> 80 -> 160 -> 320, x8: 512 px -> 64x64]
  with :class:`ImageNorm` + SiLU between them, then a learned per-image embedding
  ``image_embed (7, C0)`` (truncated normal, std 0.02) added to every pixel;
* stages ``k = 0..S-1`` with ``channels[k]`` (the UNet's down-block channels) [320, 640, 1280,
  1280 at 64, 32, 16, 8]: from the second stage on avg-pool x2 (``ceil_mode``), and a 1x1 conv
  ``in_conv`` only where the channel count changes [before stages 2 and 3]. Then ``local_depth``
  *pairs* of mamba-ssm ``Block``\\ s (add residual -> LayerNorm -> Mamba; :class:`MambaBlock`)
  over each image's ``h*w`` raster-ordered tokens: ``layers[2i]`` scans forward and
  ``layers[2i+1]`` scans the flipped sequence, both on the same input. In the global stages
  (default all but the first) the first ``global_depth`` pairs get a third parallel block
  ``cross[i]`` that scans across the 7 images at every spatial position (sequence of length 7,
  the view last, so the view's token has seen all faces). After each pair the branches' hidden
  outputs are summed (flipped ones flipped back), and so are their *residual* outputs
  (Vision-Mamba style, ``residual="reference"``): the skip path is amplified, so with zeroed
  mixers a stage returns 4x its input with two pairs, 9x with two pairs plus the cross-image
  blocks. A stage outputs ``residual + hidden``, which is also the next stage's input.
* output: the view's slice of every stage ``(B, channels[k], h_k, w_k)``, added to the UNet's
  down blocks as ``down_intrablock_additional_residuals`` (no zero-conv).

Beyond the reference (off by default, see ``docs/fidelity.md``):

* ``residual="standard"``: one shared residual stream (the residual after a pair is the input
  residual plus the previous hidden output, counted once, not once per branch): zeroed mixers
  give the identity.
* ``ring_scan=True``: after each stage a pre-norm residual circular Mamba layer along the
  horizon ring: each row of the 4 side faces F -> R -> B -> L -> (F) is one sequence of ``4 w``
  tokens scanned with ``circular=True``, so neighbouring faces, and the +-180 degree seam inside
  face B, are connected and no face edge is a scan boundary.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
from torch import nn

from .mamba import Mamba, MambaBlock
from .spherical import CUBE_YAW_PITCH, dir_to_lonlat, perspective_directions

__all__ = ["GMA", "ImageNorm", "gma_coordinates", "build_gma_input", "NUM_IMAGES", "VIEW_INDEX",
           "RESIDUAL_MODES"]

NUM_IMAGES = 7
VIEW_INDEX = 6
SIDE_FACES = (0, 1, 2, 3)  # F, R, B, L: yaw 0, 90, 180, -90, a ring turning right
RESIDUAL_MODES = ("reference", "standard")


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


class ImageNorm(nn.Module):
    """The reference GMA stem's "LayerNorm": each sample of ``(N, C, H, W)`` is normalised over
    all of ``C x H x W`` with its mean and its *unbiased* standard deviation, ``eps`` added to
    the std (not the variance), then a per-channel affine ``gamma * x + beta`` with
    ``gamma ~ U[0, 1)``, ``beta = 0`` at initialisation."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.empty(num_features).uniform_())
        self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        shape = (-1,) + (1,) * (x.ndim - 1)
        mean = flat.mean(1).view(shape)
        std = flat.std(1).view(shape)  # unbiased
        y = (x - mean) / (std + self.eps)
        affine = (1, -1) + (1,) * (x.ndim - 2)
        return y * self.gamma.view(affine) + self.beta.view(affine)


class _RingLayer(nn.Module):
    """Pre-norm residual circular Mamba layer ``x + Mamba(LN(x))`` on ``(N, L, C)`` (beyond the reference)."""

    def __init__(self, dim: int, **mamba_kw):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = Mamba(dim, circular=True, **mamba_kw)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))


class _Stage(nn.Module):
    """One ``MAdapterBlock`` of the reference: ``(B, 7, C_in, h, w)`` -> ``(B, 7, C, h', w')``."""

    def __init__(self, in_ch: int, ch: int, *, down: bool, pairs: int, cross: int, ring: bool,
                 residual: str, mamba_kw: dict):
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if down else None
        self.in_conv = nn.Conv2d(in_ch, ch, 1) if in_ch != ch else None
        self.layers = nn.ModuleList(MambaBlock(ch, **mamba_kw) for _ in range(2 * pairs))
        self.cross = nn.ModuleList(MambaBlock(ch, **mamba_kw) for _ in range(cross))
        self.ring = _RingLayer(ch, **mamba_kw) if ring else None
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.forward_from(x)
        if self.ring is not None:
            b, n, c, h, w = out.shape
            t = out.permute(0, 1, 3, 4, 2)  # (B, n, h, w, C)
            k = len(SIDE_FACES)
            r = t[:, :k].permute(0, 2, 1, 3, 4).reshape(b * h, k * w, c)  # rows of F R B L end to end
            r = self.ring(r).reshape(b, h, k, w, c).permute(0, 2, 1, 3, 4)
            out = torch.cat((r, t[:, k:]), dim=1).permute(0, 1, 4, 2, 3)
        return out

    def forward_from(self, x: torch.Tensor, first: int = 0, cached_pairs: list | None = None,
                     keep_pairs: bool = False) -> tuple[torch.Tensor, list | None]:
        """The stage without its ring layer, for images ``first..n-1`` of ``n = first + m``.

        Args:
            x: ``(B, m, C_in, h, w)``, the images from ``first`` on (``first = 0``: all of them).
            first: images before it are not recomputed; the cross-image blocks, which scan the
                images causally (F R B L U D, then the view), take their block inputs from
                ``cached_pairs``.
            cached_pairs: per cross-image block ``i``, ``(hidden, residual)`` inputs of the 6
                faces ``(B, 6, h w, C)`` from an earlier call with ``keep_pairs`` (None when
                ``first = 0``).
            keep_pairs: return those inputs for the 6 faces, for a later call.

        Returns:
            ``(out (B, m, C, h', w'), pairs or None)``; with ``first = 0`` ``out`` is the stage's
            output before the ring layer, and with the right ``cached_pairs`` the same features
            as the full call for images ``first..n-1``.
        """
        b, m = x.shape[:2]
        x = x.flatten(0, 1)
        if self.pool is not None:
            x = self.pool(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        c, h, w = x.shape[1:]
        hidden = x.flatten(2).transpose(1, 2)  # (B m, h w, C), raster order
        n = first + m

        def full(t, cached):  # (B m, hw, C) -> (B, n, hw, C), the cached images before ``first``
            t = t.reshape(b, m, h * w, c)
            return torch.cat((cached[:, :first], t), dim=1) if first else t

        def to_cross(t):  # (B, n, hw, C) -> (B hw, n, C): the images at each position, view last
            return t.transpose(1, 2).reshape(b * h * w, n, c)

        def from_cross(t):  # (B hw, n, C) -> (B m, hw, C), images first..n-1
            return t.reshape(b, h * w, n, c).transpose(1, 2)[:, first:].reshape(b * m, h * w, c)

        residual = None
        pairs = [] if keep_pairs else None
        for i in range(len(self.layers) // 2):
            hf, rf = self.layers[2 * i](hidden, residual)
            hb, rb = self.layers[2 * i + 1](hidden.flip(1), None if residual is None else residual.flip(1))
            new_hidden = hf + hb.flip(1)
            new_residual = rf + rb.flip(1) if self.residual == "reference" else rf
            if i < len(self.cross):
                ch = cached_pairs[i] if cached_pairs is not None else (None, None)
                hid_all = full(hidden, ch[0])
                res_all = None if residual is None else full(residual, ch[1])
                if keep_pairs:
                    pairs.append((hid_all[:, :VIEW_INDEX].clone(),
                                  None if res_all is None else res_all[:, :VIEW_INDEX].clone()))
                hn, rn = self.cross[i](to_cross(hid_all), None if res_all is None else to_cross(res_all))
                new_hidden = new_hidden + from_cross(hn)
                if self.residual == "reference":
                    new_residual = new_residual + from_cross(rn)
            hidden, residual = new_hidden, new_residual
        out = hidden if residual is None else residual + hidden
        return out.reshape(b, m, h, w, c).permute(0, 1, 4, 2, 3), pairs


class GMA(nn.Module):
    """Global-local Mamba Adapter (the reference's ``MambaAdapter``; module doc for the structure).

    Args:
        channels: channels per stage (the UNet's down-block channels, e.g. 320, 640, 1280, 1280).
        stem_channels: channels after each stride-2 stem conv; the last equals ``channels[0]``;
            the stem down-samples by ``2 ** len(stem_channels)`` (the VAE factor).
        in_channels: 5 (RGB + latitude + longitude).
        num_images: 7 (6 cube faces then the view).
        local_depth: pairs (forward + flipped block) per stage (2).
        global_depth: how many of a global stage's pairs get a parallel cross-image block
            (2 = all, as the reference; at most ``local_depth``).
        global_stages: stage indices with cross-image blocks (default: all but the first).
        d_state, d_conv, expand: Mamba sizes (16, 4, 2).
        residual: ``"reference"`` (residual outputs of parallel branches summed) or
            ``"standard"`` (one shared residual stream; beyond the reference).
        ring_scan: add a circular scan along the horizon ring of side faces (beyond the reference).
    """

    def __init__(self, channels: Sequence[int] = (320, 640, 1280, 1280), stem_channels: Sequence[int] = (80, 160, 320),
                 *, in_channels: int = 5, num_images: int = NUM_IMAGES, local_depth: int = 2,
                 global_depth: int = 2, global_stages: Sequence[int] | None = None, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, residual: str = "reference", ring_scan: bool = False):
        super().__init__()
        channels = [int(c) for c in channels]
        stem_channels = [int(c) for c in stem_channels]
        if not stem_channels or stem_channels[-1] != channels[0]:
            raise ValueError(f"the stem must end at channels[0]={channels[0]}, got {stem_channels}")
        if residual not in RESIDUAL_MODES:
            raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
        if not 0 <= global_depth <= local_depth:
            raise ValueError(f"global_depth ({global_depth}) must be between 0 and local_depth ({local_depth}):"
                             " each cross-image block runs in parallel with one forward/flipped pair")
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(stem_channels):
            layers.append(nn.Conv2d(prev, c, 3, stride=2, padding=1))
            if i < len(stem_channels) - 1:
                layers += [ImageNorm(c), nn.SiLU()]
            prev = c
        self.stem = nn.Sequential(*layers)
        self.image_embed = nn.Parameter(torch.empty(num_images, channels[0]))
        nn.init.trunc_normal_(self.image_embed, std=0.02)
        if global_stages is None:
            global_stages = range(1, len(channels))
        global_stages = set(int(k) for k in global_stages)
        mamba_kw = dict(d_state=d_state, d_conv=d_conv, expand=expand)
        self.stages = nn.ModuleList(
            _Stage(channels[k - 1] if k else channels[0], c, down=k > 0, pairs=local_depth,
                   cross=global_depth if k in global_stages else 0, ring=ring_scan, residual=residual,
                   mamba_kw=mamba_kw)
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
