"""Visual-textual Consistency Refiner (VCR) of OPa-Ma, as the reference code builds it.

Tokens: 1 pooled CLIP image embedding of the current view, 6 pooled CLIP image embeddings
of the current panorama's cube faces, and the 77 CLIP text hidden states (84 tokens).
Learned type embeddings (``vision_embedding (7, dim)``, one per visual token, and
``text_embedding (77, dim)``, one per text position; N(0, 1) like the reference's
``nn.Embedding``) are added, the sequence runs through ``depth`` one-directional mamba-ssm
``Block``\\ s ("add residual -> LayerNorm -> Mamba", :class:`~opama_model.mamba.MambaBlock`),
and ``h = residual + hidden`` of the last block goes straight (no final norm, as the
reference's ``CusMamba``) to

    cond = a * proj(h) + (1 - a) * input,   a = sigmoid(gate(h)),  gate = Linear(dim -> 1, no bias)

with ``gate``'s weight initialised to zero (so ``a = 0.5`` at the start) and ``proj`` a
``Linear(dim, dim)`` with PyTorch's default init. ``input`` is the token *before* the type
embeddings (projected to ``dim`` by ``image_proj`` / ``text_proj`` when the CLIP widths differ
from it; at SD-2 sizes both are the identity, as in the reference).
"""

from __future__ import annotations

import torch
from torch import nn

from .mamba import MambaBlock

__all__ = ["VCR"]


class VCR(nn.Module):
    """Visual-textual Consistency Refiner (the reference's ``projector`` + type embeddings).

    Args:
        dim: model and output width (the UNet's cross-attention dim, 1024 for SD-2).
        image_dim: width of the pooled CLIP image embeddings (projection dim).
        text_dim: width of the CLIP text hidden states.
        num_images: visual tokens (7: the view, then the 6 cube faces).
        text_len: text tokens (77).
        depth, d_state, d_conv, expand: Mamba stack settings (8, 16, 4, 2 in the reference).
    """

    def __init__(self, dim: int, image_dim: int, text_dim: int, *, num_images: int = 7, text_len: int = 77,
                 depth: int = 8, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, dim) if image_dim != dim else nn.Identity()
        self.text_proj = nn.Linear(text_dim, dim) if text_dim != dim else nn.Identity()
        self.vision_embedding = nn.Parameter(torch.randn(num_images, dim))
        self.text_embedding = nn.Parameter(torch.randn(text_len, dim))
        self.layers = nn.ModuleList(
            MambaBlock(dim, d_state=d_state, d_conv=d_conv, expand=expand) for _ in range(depth)
        )
        self.gate = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(self.gate.weight)
        self.proj = nn.Linear(dim, dim)
        self.num_images = num_images
        self.text_len = text_len

    def forward(self, image_embeds: torch.Tensor, text_hidden_states: torch.Tensor) -> torch.Tensor:
        """``image_embeds (B, 7, image_dim)`` (view first), ``text_hidden_states (B, 77, text_dim)``
        -> ``(B, 84, dim)``."""
        if image_embeds.shape[1] != self.num_images or text_hidden_states.shape[1] != self.text_len:
            raise ValueError(
                f"expected {self.num_images} image and {self.text_len} text tokens, got "
                f"{image_embeds.shape[1]} and {text_hidden_states.shape[1]}"
            )
        x = torch.cat((self.image_proj(image_embeds), self.text_proj(text_hidden_states)), dim=1)
        hidden = x + torch.cat((self.vision_embedding, self.text_embedding), dim=0)
        residual = None
        for blk in self.layers:
            hidden, residual = blk(hidden, residual)
        h = hidden if residual is None else residual + hidden
        a = torch.sigmoid(self.gate(h))
        return a * self.proj(h) + (1 - a) * x
