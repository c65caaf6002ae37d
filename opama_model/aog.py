"""AOG-Net's conditioning modules (the baseline OPa-Ma replaces), as its reference code
(``zhuqiangLu/AOG-NET-360``, ``models/inpaint_model.py`` and ``models/modules.py``) builds them.

* :class:`AOGGlobalTransformer` (the reference's ``tgt`` + ``adain`` + ``projector`` +
  ``pos_embed`` + type embeddings): ``num_queries`` learned query tokens (``nn.Embedding``,
  N(0, 1)), each concatenated with the view's pooled CLIP embedding and mapped to ``dim`` by
  the ``query_mlp`` (the reference's ``adain``, which despite its name is a plain stack:
  FF(2D, 512) x 2, Linear(2D, D), FF(D, 512) x 2; FF = bias-free Linear-GELU-Dropout-Linear-Dropout
  with dropout 0.2, no residual). The sequence ``[queries, 6 cube faces + vision type, 77 text
  tokens + text type] + position embeddings`` (88 tokens) runs through a post-norm transformer
  of ``depth`` self-attention layers (:class:`AOGTransformer`); the query outputs are put in
  front of the 77 raw text hidden states: ``(B, num_queries + 77, dim)``.
* :class:`AOGLocalAdapter` (``adapter`` + ``adapter_transformer``): one diffusers
  ``T2IAdapter`` (5 input channels: RGB + latitude, longitude) shared by the 6 cube faces and the
  view; the view's last-level feature tokens attend to the faces' last-level tokens through an
  :class:`AOGTransformer` with cross-attention (depth 8 in the reference: the same
  ``transformer_config`` as the global one); the result replaces the view's last level. Returns
  the view's features per level (UNet adapter residuals).

Deliberate differences (``docs/fidelity.md``): the reference's global transformer allocates
cross-attention layers that it never calls (no memory is passed) and a 200-row position table of
which it reads 88; opama allocates only what is used. The null condition is ``num_queries``
learned tokens (the reference reads rows 0-4 of a 77-row table).

Image order everywhere: the 6 cube faces (``spherical.CUBE_FACES`` order), then the view;
``image_embeds`` are view first (the conditioner interface).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AOGGlobalTransformer", "AOGTransformer", "AOGLocalAdapter"]


class _Attention(nn.Module):
    """Multi-head attention with bias-free ``to_q``, ``to_k``, ``to_v``, ``to_out`` (the reference's
    ``SimpleAttention``; softmax scale ``dim_head ** -0.5``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, lq, c = x.shape
        h = self.heads
        q = self.to_q(x).view(b, lq, h, c // h).transpose(1, 2)
        k = self.to_k(context).view(b, -1, h, c // h).transpose(1, 2)
        v = self.to_v(context).view(b, -1, h, c // h).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(a.transpose(1, 2).reshape(b, lq, c))


def _feed_forward(dim: int, hidden: int, dropout: float = 0.0) -> nn.Sequential:
    """The reference's ``FeedForward``: bias-free Linear -> GELU -> Dropout -> Linear -> Dropout."""
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim, bias=False), nn.Dropout(dropout))


class AOGTransformer(nn.Module):
    """AOG-Net's ``CusTransformer``: post-norm layers ``x = LN1(x + SelfAttn(x))``, then (with a
    context) ``x = LN2(x + CrossAttn(x, context))``, then ``x = LN3(x + FF(x))`` with
    ``FF(dim, hidden=dim)``. ``cross=False`` builds no cross-attention (the global branch never
    passes a context).

    Attention uses ``F.scaled_dot_product_attention`` (PyTorch picks a fused kernel where it
    can; ``torch.nn.attention.sdpa_kernel`` forces one, e.g. the materialising math kernel).
    """

    def __init__(self, dim: int, depth: int, heads: int, *, cross: bool):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            parts = dict(norm1=nn.LayerNorm(dim), attn=_Attention(dim, heads), norm3=nn.LayerNorm(dim),
                         ff=_feed_forward(dim, dim))
            if cross:
                parts.update(norm2=nn.LayerNorm(dim), cross_attn=_Attention(dim, heads))
            self.layers.append(nn.ModuleDict(parts))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, L, C)`` [, ``context (B, Lc, C)``] -> ``(B, L, C)``."""
        for layer in self.layers:
            x = layer["norm1"](layer["attn"](x, x) + x)
            if context is not None:
                x = layer["norm2"](layer["cross_attn"](x, context) + x)
            x = layer["norm3"](layer["ff"](x) + x)
        return x


class AOGGlobalTransformer(nn.Module):
    """AOG-Net's global branch (module doc).

    Args:
        dim: output width (the UNet's cross-attention dim).
        image_dim, text_dim: widths of the pooled CLIP image embeddings / text hidden states
            (projected to ``dim`` when they differ; equal at SD-2 sizes, as in the reference).
        num_images: image tokens in ``image_embeds`` (7: the view, then the 6 faces).
        text_len: text tokens (77). num_queries: learned queries (5).
        depth, heads: transformer layers (8) and heads (8).
        mlp_hidden, dropout: the query MLP's hidden width (512) and dropout (0.2).
    """

    def __init__(self, dim: int, image_dim: int, text_dim: int, *, num_images: int = 7, text_len: int = 77,
                 num_queries: int = 5, depth: int = 8, heads: int = 8, mlp_hidden: int = 512, dropout: float = 0.2):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, dim) if image_dim != dim else nn.Identity()
        self.text_proj = nn.Linear(text_dim, dim) if text_dim != dim else nn.Identity()
        self.queries = nn.Parameter(torch.randn(num_queries, dim))
        self.query_mlp = nn.Sequential(
            _feed_forward(2 * dim, mlp_hidden, dropout), _feed_forward(2 * dim, mlp_hidden, dropout),
            nn.Linear(2 * dim, dim),
            _feed_forward(dim, mlp_hidden, dropout), _feed_forward(dim, mlp_hidden, dropout),
        )
        self.vision_embedding = nn.Parameter(torch.randn(1, dim))
        self.text_embedding = nn.Parameter(torch.randn(1, dim))
        self.pos_embed = nn.Parameter(torch.randn(num_queries + num_images - 1 + text_len, dim))
        self.transformer = AOGTransformer(dim, depth, heads, cross=False)
        self.num_queries = num_queries
        self.num_images = num_images

    def forward(self, image_embeds: torch.Tensor, text_hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, 7, image_dim)`` (view first), ``(B, 77, text_dim)`` -> ``(B, num_queries + 77, dim)``."""
        b = image_embeds.shape[0]
        if image_embeds.shape[1] != self.num_images:
            raise ValueError(f"expected {self.num_images} image embeddings, got {image_embeds.shape[1]}")
        img = self.image_proj(image_embeds)
        view, faces = img[:, :1], img[:, 1:]
        txt = self.text_proj(text_hidden_states)
        q = torch.cat((self.queries.unsqueeze(0).expand(b, -1, -1), view.expand(-1, self.num_queries, -1)), dim=-1)
        q = self.query_mlp(q)
        mem = torch.cat((q, faces + self.vision_embedding, txt + self.text_embedding), dim=1) + self.pos_embed
        y = self.transformer(mem)[:, : self.num_queries]
        return torch.cat((y, txt), dim=1)


class AOGLocalAdapter(nn.Module):
    """AOG-Net's local branch: a T2I-Adapter shared by the 7 images + cross-attention at the last level.

    Args:
        channels: adapter channels per level (the UNet's down-block channels).
        in_channels: 5 (RGB + latitude + longitude in radians).
        num_res_blocks: residual blocks per adapter level.
        downscale_factor: image pixels per latent pixel (8 for SD-2).
        fusion_heads, fusion_depth: the fusion transformer (8 heads, 8 layers in the reference).
        num_images: 7 (6 cube faces then the view; the view is the last image).
    """

    def __init__(self, channels, *, in_channels: int = 5, num_res_blocks: int = 2, downscale_factor: int = 8,
                 fusion_heads: int = 8, fusion_depth: int = 8, num_images: int = 7):
        super().__init__()
        from diffusers import T2IAdapter

        channels = [int(c) for c in channels]
        self.adapter = T2IAdapter(in_channels=in_channels, channels=channels, num_res_blocks=num_res_blocks,
                                  downscale_factor=downscale_factor, adapter_type="full_adapter")
        self.fusion = AOGTransformer(channels[-1], fusion_depth, fusion_heads, cross=True)
        self.num_images = num_images

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images (B, 7, 5, H, W)`` -> the view's features ``[(B, C_k, H/(f 2^k), W/(f 2^k))]``."""
        b, n = images.shape[:2]
        if n != self.num_images:
            raise ValueError(f"expected {self.num_images} images, got {n}")
        feats = self.adapter(images.flatten(0, 1))
        last = feats[-1].unflatten(0, (b, n))  # (B, 7, C, h, w)
        c, hh, ww = last.shape[2:]
        view = last[:, -1].flatten(2).transpose(1, 2)  # (B, hw, C)
        faces = last[:, :-1].flatten(3).transpose(2, 3).reshape(b, -1, c)  # (B, 6 hw, C), face-major
        fused = self.fusion(view, faces).transpose(1, 2).reshape(b, c, hh, ww)
        out = [f.unflatten(0, (b, n))[:, -1] for f in feats[:-1]]
        out.append(fused)
        return out
