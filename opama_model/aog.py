"""AOG-Net's conditioning modules (the baseline OPa-Ma replaces), for ablation and benchmarks.

* :class:`AOGGlobalTransformer`: pooled CLIP image embeddings of the 7 images + the 77 CLIP
  text hidden states, with learned "vision"/"text" type embeddings and position
  embeddings, and ``num_queries`` learned query tokens through a pre-norm transformer
  encoder; the query outputs are put in front of the 77 text tokens:
  ``(B, num_queries + 77, cross_attention_dim)``.
* :class:`AOGLocalAdapter`: a diffusers ``T2IAdapter`` (5 input channels: RGB + latitude,
  longitude) on each of the 7 images; a cross-attention transformer lets the view's
  last-level feature attend to the 6 cube faces' last-level features; the result replaces
  the view's last level. Returns the view's features per level (UNet adapter residuals).

Image order everywhere: the 6 cube faces (``spherical.CUBE_FACES`` order), then the view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AOGGlobalTransformer", "CrossAttentionFusion", "AOGLocalAdapter"]


class AOGGlobalTransformer(nn.Module):
    """AOG-Net's global branch: learned queries over image + text tokens.

    Args:
        dim: output width (the UNet's cross-attention dim).
        image_dim, text_dim: widths of the pooled CLIP image embeddings / text hidden states.
        num_images: image tokens (7), text_len: text tokens (77).
        num_queries: learned query tokens (5), depth: layers (8), heads: attention heads (8).
    """

    def __init__(self, dim: int, image_dim: int, text_dim: int, *, num_images: int = 7, text_len: int = 77,
                 num_queries: int = 5, depth: int = 8, heads: int = 8, mlp_ratio: int = 4):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, dim) if image_dim != dim else nn.Identity()
        self.text_proj = nn.Linear(text_dim, dim) if text_dim != dim else nn.Identity()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.type_embed = nn.Parameter(torch.randn(2, dim) * 0.02)  # 0: vision, 1: text
        self.image_pos = nn.Parameter(torch.randn(num_images, dim) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(text_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * mlp_ratio, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.num_queries = num_queries

    def forward(self, image_embeds: torch.Tensor, text_hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, 7, image_dim)``, ``(B, 77, text_dim)`` -> ``(B, num_queries + 77, dim)``."""
        b = image_embeds.shape[0]
        img = self.image_proj(image_embeds) + self.type_embed[0] + self.image_pos
        txt_in = self.text_proj(text_hidden_states)
        txt = txt_in + self.type_embed[1] + self.text_pos
        q = self.queries.unsqueeze(0).expand(b, -1, -1)
        h = self.transformer(torch.cat((q, img, txt), dim=1))
        return torch.cat((self.norm(h[:, : self.num_queries]), txt_in), dim=1)


class CrossAttentionFusion(nn.Module):
    """Pre-norm cross-attention transformer: ``query`` tokens attend to ``context`` tokens.

    Attention uses ``F.scaled_dot_product_attention`` (PyTorch picks a fused kernel where it
    can; ``torch.nn.attention.sdpa_kernel`` forces one, e.g. the materialising math kernel).
    """

    def __init__(self, dim: int, heads: int = 8, depth: int = 1, mlp_ratio: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleDict(dict(
                norm_q=nn.LayerNorm(dim), norm_kv=nn.LayerNorm(dim),
                to_q=nn.Linear(dim, dim), to_kv=nn.Linear(dim, 2 * dim), proj=nn.Linear(dim, dim),
                norm_mlp=nn.LayerNorm(dim),
                mlp=nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)),
            )))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x (B, Lq, C)`` attends to ``context (B, Lk, C)``; returns ``(B, Lq, C)``."""
        b, lq, c = x.shape
        h = self.heads
        for layer in self.layers:
            q = layer["to_q"](layer["norm_q"](x)).view(b, lq, h, c // h).transpose(1, 2)
            k, v = layer["to_kv"](layer["norm_kv"](context)).chunk(2, dim=-1)
            k = k.reshape(b, -1, h, c // h).transpose(1, 2)
            v = v.reshape(b, -1, h, c // h).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v)
            x = x + layer["proj"](a.transpose(1, 2).reshape(b, lq, c))
            x = x + layer["mlp"](layer["norm_mlp"](x))
        return x


class AOGLocalAdapter(nn.Module):
    """AOG-Net's local branch: T2I-Adapter on 7 images + cross-attention at the last level.

    Args:
        channels: adapter channels per level (the UNet's down-block channels).
        in_channels: 5 (RGB + latitude + longitude in radians).
        num_res_blocks: residual blocks per adapter level.
        downscale_factor: image pixels per latent pixel (8 for SD-2).
        fusion_heads, fusion_depth: the cross-attention transformer.
        num_images: 7 (6 cube faces then the view; the view is the last image).
    """

    def __init__(self, channels, *, in_channels: int = 5, num_res_blocks: int = 2, downscale_factor: int = 8,
                 fusion_heads: int = 8, fusion_depth: int = 1, num_images: int = 7):
        super().__init__()
        from diffusers import T2IAdapter

        channels = [int(c) for c in channels]
        self.adapter = T2IAdapter(in_channels=in_channels, channels=channels, num_res_blocks=num_res_blocks,
                                  downscale_factor=downscale_factor, adapter_type="full_adapter")
        c = channels[-1]
        self.image_embed = nn.Parameter(torch.randn(num_images, c) * 0.02)
        self.fusion = CrossAttentionFusion(c, heads=fusion_heads, depth=fusion_depth)
        self.num_images = num_images

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images (B, 7, 5, H, W)`` -> the view's features ``[(B, C_k, H/(f 2^k), W/(f 2^k))]``."""
        b, n = images.shape[:2]
        if n != self.num_images:
            raise ValueError(f"expected {self.num_images} images, got {n}")
        feats = self.adapter(images.flatten(0, 1))
        last = feats[-1].unflatten(0, (b, n))  # (B, 7, C, h, w)
        c, hh, ww = last.shape[2:]
        tokens = last.flatten(3).transpose(2, 3) + self.image_embed[None, :, None, :]  # (B, 7, hw, C)
        view = tokens[:, -1]
        faces = tokens[:, :-1].reshape(b, -1, c)
        fused = self.fusion(view, faces).transpose(1, 2).reshape(b, c, hh, ww)
        out = [f.unflatten(0, (b, n))[:, -1] for f in feats[:-1]]
        out.append(fused)
        return out
