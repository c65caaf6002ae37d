"""FAED (Fréchet AutoEncoder Distance): FID in the feature space of PanFusion's panorama
autoencoder (``chengzhag/PanFusion``, ``models/faed/``; reported by PanFusion and PAR).

The encoder here is rebuilt so that PanFusion's published ``faed.ckpt`` (a Lightning
checkpoint of a module whose ``net`` is the autoencoder) loads into it: the same module
names and shapes (``downconv1_rgb`` ... ``fuse``), every convolution padded circularly in
width (longitude wraps) and with zeros in height. Architecture: a 9x9 conv (3→32), then
five stride-2 4x4 conv blocks (conv + BatchNorm + ReLU; 32→64→128→128→128→128) with
residual blocks between them, then a 3x3 ``fuse`` conv: ``(B, 128, H/32, W/32)``.

Features of a panorama (as PanFusion's ``get_activation``): 8-bit RGB scaled to
``x / 127.5 - 1``, encoded, averaged over width, each of the ``H/32`` latitude rows
weighted by ``cos(lat)`` with ``lat`` = ``linspace(+90°, -90°, H/32)`` (the end rows
get weight cos(±90°) ≈ 0, as in the reference), flattened to ``128 H / 32 = 4 H``
values. FAED is the Fréchet distance of the generated and reference feature sets.
PanFusion evaluates 512x1024 panoramas (``pano_height`` 512 → 2048-d features); images of
another size are resized (antialiased bilinear) to ``height x 2 height`` first.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from opama_tools.eval.metrics.features import MetricUnavailable, resolve_weights

__all__ = ["FAED_HEIGHT", "FaedEncoder", "FaedFeatures", "load_faed", "encoder_state_dict"]

FAED_HEIGHT = 512
"""Panorama height PanFusion computes FAED at (512 x 1024)."""


class _Conv(nn.Module):
    """Conv2d after circular (width) / zero (height) padding of ``pad`` pixels; key ``conv2d``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int):
        super().__init__()
        self.pad = pad
        self.conv2d = nn.Conv2d(cin, cout, k, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(F.pad(x, (self.pad, self.pad, 0, 0), mode="circular"), (0, 0, self.pad, self.pad))
        return self.conv2d(x)


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int):
        super().__init__()
        self.conv1 = _Conv(cin, cout, k, stride, pad)
        self.batchnorm1 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.batchnorm1(self.conv1(x)))


class _ResBlock(nn.Module):
    def __init__(self, ch: int, k: int, pad: int):
        super().__init__()
        self.conv1 = _Conv(ch, ch, k, 1, pad)
        self.batchnorm1 = nn.BatchNorm2d(ch)
        self.conv2 = _Conv(ch, ch, k, 1, pad)
        self.batchnorm2 = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.batchnorm2(self.conv2(F.relu(self.batchnorm1(self.conv1(x)))))


class FaedEncoder(nn.Module):
    """PanFusion's panorama encoder: ``(B, 3, H, W)`` in [-1, 1] → ``(B, 128, H/32, W/32)``."""

    def __init__(self):
        super().__init__()
        self.downconv1_rgb = _Conv(3, 32, 9, 1, 4)
        self.downres1_rgb = _ResBlock(32, 9, 4)
        self.downconv2_rgb = _ConvBlock(32, 64, 4, 2, 1)
        self.downres2_rgb = _ResBlock(64, 7, 3)
        self.downconv3_rgb = _ConvBlock(64, 128, 4, 2, 1)
        self.downres3_rgb = _ResBlock(128, 5, 2)
        self.downconv4_rgb = _ConvBlock(128, 128, 4, 2, 1)
        self.downres4_rgb = _ResBlock(128, 3, 1)
        self.downconv5_rgb = _ConvBlock(128, 128, 4, 2, 1)
        self.downres5_rgb = _ResBlock(128, 3, 1)
        self.downconv6_rgb = _ConvBlock(128, 128, 4, 2, 1)
        self.fuse = _Conv(128, 128, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :3]
        for name in ("downconv1", "downres1", "downconv2", "downres2", "downconv3", "downres3",
                     "downconv4", "downres4", "downconv5", "downres5", "downconv6"):
            x = getattr(self, f"{name}_rgb")(x)
        return self.fuse(x)


def encoder_state_dict(sd: dict) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a PanFusion FAED checkpoint, keys relative to the encoder.

    Accepts a Lightning checkpoint dict (``{"state_dict": {"net.encoder.…": …}, …}``), its
    ``state_dict`` alone, an autoencoder state dict (``encoder.…``) or an encoder one.
    """
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError("not a state dict")
    for prefix in ("net.encoder.", "encoder.", ""):
        out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}
        if prefix == "" or out:
            if prefix == "":
                out = {k: v for k, v in out.items() if not k.startswith(("net.decoder.", "decoder."))}
            return out
    return {}


class FaedFeatures(nn.Module):
    """FAED feature extractor on 8-bit panoramas (see the module docstring)."""

    def __init__(self, encoder: FaedEncoder, name: str, path: Path | None, height: int = FAED_HEIGHT):
        super().__init__()
        if height % 32 or height < 64:
            raise ValueError(f"FAED height must be a multiple of 32 and >= 64, got {height}")
        self.encoder = encoder.eval()
        self.name = name
        self.path = path
        self.height = height

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(B, 4 H)`` of ``x`` ``(B, 3, H, 2H)`` in [-1, 1] (already at ``self.height``)."""
        f = self.encoder(x).mean(dim=3)  # (B, 128, H/32)
        lat = torch.linspace(math.pi / 2, -math.pi / 2, f.shape[-1], device=f.device, dtype=f.dtype)
        return (f * torch.cos(lat)).reshape(f.shape[0], -1)

    def features(self, images: np.ndarray) -> np.ndarray:
        """``(N, 4 height)`` float64 features of uint8 equirects ``(N, H, 2H, 3)``."""
        a = np.asarray(images)
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {a.dtype} {a.shape}")
        dev = next(self.encoder.parameters()).device
        x = torch.from_numpy(a).to(dev).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.height, 2 * self.height):
            x = F.interpolate(x, size=(self.height, 2 * self.height), mode="bilinear", align_corners=False,
                              antialias=True)
        return self(x / 127.5 - 1).double().cpu().numpy()


def load_faed(explicit: str | os.PathLike | None = None, height: int = FAED_HEIGHT) -> FaedFeatures:
    """PanFusion's FAED encoder from ``--faed-weights`` / ``$OPAMA_FAED`` / the cache path.

    ``faed.ckpt`` is read with ``torch.load(weights_only=True)`` (no pickle code runs);
    a ``.safetensors`` file with the same keys works too. Missing or unreadable files raise
    :class:`MetricUnavailable` saying what to place where.
    """
    p = resolve_weights("faed", explicit, "--faed-weights")
    if p.is_dir():
        cands = sorted(p.glob("*.ckpt")) + sorted(p.glob("*.safetensors"))
        if not cands:
            raise MetricUnavailable(f"{p}: folder without faed.ckpt / *.safetensors")
        p = cands[0]
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(p))
        else:
            raw = torch.load(str(p), map_location="cpu", weights_only=True)
        sd = encoder_state_dict(raw)
        enc = FaedEncoder()
        enc.load_state_dict(sd, strict=True)
    except Exception as e:
        raise MetricUnavailable(
            f"{p}: not PanFusion's FAED checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from e
    for q in enc.parameters():
        q.requires_grad_(False)
    name = "panfusion_faed" if p.name == "faed.ckpt" else f"custom:{p.stem}"
    return FaedFeatures(enc, name, p, height)
