"""The trainable conditioners: OPa-Ma (VCR + GMA) and the AOG-Net baseline, same interface.

Both take, per sample,

* ``images``: ``(B, 7, 5, S, S)`` from :func:`opama_model.gma.build_gma_input` (6 cube faces
  of the current panorama, then the current view; RGB in [-1, 1] + latitude, longitude),
* ``image_embeds``: ``(B, 7, E_img)`` pooled, projected CLIP image embeddings, **the view
  first**, then the 6 cube faces (``spherical.CUBE_FACES`` order),
* ``text_hidden_states``: ``(B, 77, E_txt)`` CLIP text hidden states of the caption,
* ``unconditional``: optional ``(B,)`` bool (or one bool for the whole batch). As in the
  OPa-Ma reference, the null condition of classifier-free guidance is ``NUM_NULL_TOKENS`` (7)
  learned tokens (AOG-Net: ``num_queries`` = 5, as its reference) used as the *whole*
  ``encoder_hidden_states``: the global branch (VCR /
  AOG transformer), the text and the image embeddings are bypassed for those samples. The
  adapter residuals from ``images`` are computed for every sample (the reference feeds the
  same adapter features to its conditional and unconditional UNet passes),

and return :class:`ConditionerOutput`: ``encoder_hidden_states`` for the UNet's
cross-attention, ``encoder_attention_mask`` and ``down_intrablock_additional_residuals`` (one
tensor per UNet down block; pass a fresh list to every UNet call, diffusers pops from it).
When a batch mixes conditional (``T`` tokens) and null (7 tokens) samples, the null rows are
zero-padded to ``T`` and ``encoder_attention_mask (B, T)`` (True = attend) masks the padding;
for the UNet that is the same as 7 tokens alone. Otherwise the mask is None. Both are
``ModelMixin``/``ConfigMixin``: ``save_pretrained`` writes ``config.json`` and
``diffusion_pytorch_model.safetensors``; ``from_pretrained`` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .aog import AOGGlobalTransformer, AOGLocalAdapter

NUM_IMAGES = 7  # 6 cube faces + the view
NUM_NULL_TOKENS = 7  # the reference reads rows 0-6 of its (77, dim) ``uncond_embed`` table

__all__ = ["ConditionerOutput", "OPaMaConditioner", "AOGConditioner", "NUM_NULL_TOKENS", "pad_tokens"]


@dataclass
class ConditionerOutput(BaseOutput):
    """``encoder_hidden_states (B, T, cross_attention_dim)``, the UNet adapter residuals and
    ``encoder_attention_mask (B, T)`` bool (True = attend; None when no row is padded)."""

    encoder_hidden_states: torch.Tensor
    down_intrablock_additional_residuals: list
    encoder_attention_mask: torch.Tensor | None = None


def pad_tokens(tokens: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad ``tokens (B, T, D)`` to ``(B, length, D)``; returns it and the ``(B, length)``
    bool mask that is True on the ``T`` real tokens (for ``encoder_attention_mask``)."""
    b, t, d = tokens.shape
    if t > length:
        raise ValueError(f"cannot pad {t} tokens to {length}")
    out = torch.cat((tokens, tokens.new_zeros(b, length - t, d)), dim=1)
    mask = torch.zeros(b, length, dtype=torch.bool, device=tokens.device)
    mask[:, :t] = True
    return out, mask


class _ConditionerBase(ModelMixin, ConfigMixin):
    """Learned null condition, loading and ``forward`` shared by both conditioners.

    A subclass builds its two branches and names them in :meth:`_branches`.
    ``enable_gradient_checkpointing()`` (diffusers) recomputes each block that has a
    ``gradient_checkpointing`` switch (the Mamba blocks of VCR and GMA) in the backward pass.
    """

    _supports_gradient_checkpointing = True

    def _branches(self) -> tuple[nn.Module, nn.Module]:
        """``(global, local)``: tokens from ``(image_embeds, text_hidden_states)``; residuals from ``images``."""
        raise NotImplementedError

    def _null_init(self, dim: int, rows: int = NUM_NULL_TOKENS) -> None:
        # nn.Embedding's default initialisation, N(0, 1), as the references' ``uncond_embed``
        # (OPa-Ma reads its rows 0-6, AOG-Net its rows 0-4: one per query token).
        self.null_tokens = nn.Parameter(torch.randn(rows, dim))

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """The learned null condition ``(batch_size, 7, cross_attention_dim)`` (no inputs needed;
        AOG-Net: ``num_queries`` rows)."""
        return self.null_tokens.unsqueeze(0).expand(batch_size, -1, -1)

    @staticmethod
    def _check(images, image_embeds, text_hidden_states):
        if images.shape[0] != image_embeds.shape[0] or images.shape[0] != text_hidden_states.shape[0]:
            raise ValueError("images, image_embeds and text_hidden_states must share the batch size")

    def forward(self, images: torch.Tensor, image_embeds: torch.Tensor, text_hidden_states: torch.Tensor,
                unconditional=None, return_dict: bool = True):
        """See the module docstring. ``return_dict=False`` gives ``(tokens, residuals, mask)``."""
        self._check(images, image_embeds, text_hidden_states)
        global_branch, local_branch = self._branches()
        b = images.shape[0]
        null = torch.zeros(b, dtype=torch.bool, device=images.device)
        if unconditional is not None:
            null = torch.as_tensor(unconditional, dtype=torch.bool, device=images.device).reshape(-1).expand(b)
        mask = None
        if bool(null.all()):
            tokens = self.null_condition(b)
        else:
            keep = ~null
            all_cond = bool(keep.all())
            cond = global_branch(image_embeds if all_cond else image_embeds[keep],
                                 text_hidden_states if all_cond else text_hidden_states[keep])
            tokens = cond
            if not all_cond:  # the global branch runs on the conditional rows only
                tokens, mask = pad_tokens(self.null_condition(b).to(cond.dtype), cond.shape[1])
                tokens = tokens.index_put((keep.nonzero()[:, 0],), cond)
                mask = mask | keep[:, None]
        res = local_branch(images)
        if not return_dict:
            return tokens, res, mask
        return ConditionerOutput(encoder_hidden_states=tokens, down_intrablock_additional_residuals=res,
                                 encoder_attention_mask=mask)


class OPaMaConditioner(_ConditionerBase):
    """OPa-Ma: VCR (global, to the cross-attention) + GMA (local/global, adapter residuals).

    Output: ``encoder_hidden_states (B, 7 + text_len, cross_attention_dim)`` and the view's GMA
    features per UNet down block. Widths follow the UNet and CLIP configs
    (:func:`opama_model.presets.conditioner_kwargs`). With the defaults the structure, parameter
    names per part, shapes and initialisation are the reference's (``docs/fidelity.md``;
    :func:`opama_model.reference.from_reference_state_dict` loads its checkpoints). Options beyond
    the reference, off by default: ``gma_residual="standard"`` (one shared residual stream in the
    GMA instead of the amplified Vision-Mamba sum) and ``gma_ring_scan=True`` (a circular scan
    along the horizon ring of side faces after each GMA stage).
    """

    @register_to_config
    def __init__(
        self,
        cross_attention_dim: int = 1024,
        image_embed_dim: int = 1024,
        text_embed_dim: int = 1024,
        text_len: int = 77,
        unet_channels: tuple = (320, 640, 1280, 1280),
        downscale_factor: int = 8,
        vcr_depth: int = 8,
        vcr_d_state: int = 16,
        vcr_d_conv: int = 4,
        vcr_expand: int = 2,
        gma_stem_channels: tuple = (80, 160, 320),
        gma_local_depth: int = 2,
        gma_global_depth: int = 2,
        gma_global_stages: tuple | None = None,
        gma_d_state: int = 16,
        gma_d_conv: int = 4,
        gma_expand: int = 2,
        gma_ring_scan: bool = False,
        gma_residual: str = "reference",
    ):
        super().__init__()
        from .gma import GMA
        from .vcr import VCR

        if 2 ** len(gma_stem_channels) != downscale_factor:
            raise ValueError(f"{len(gma_stem_channels)} stem convs do not down-sample by {downscale_factor}")
        self.vcr = VCR(cross_attention_dim, image_embed_dim, text_embed_dim, num_images=NUM_IMAGES,
                       text_len=text_len, depth=vcr_depth, d_state=vcr_d_state, d_conv=vcr_d_conv,
                       expand=vcr_expand)
        self.gma = GMA(unet_channels, gma_stem_channels, local_depth=gma_local_depth,
                       global_depth=gma_global_depth, global_stages=gma_global_stages, d_state=gma_d_state,
                       d_conv=gma_d_conv, expand=gma_expand, residual=gma_residual, ring_scan=gma_ring_scan)
        self._null_init(cross_attention_dim)

    def _branches(self) -> tuple[nn.Module, nn.Module]:
        return self.vcr, self.gma


class AOGConditioner(_ConditionerBase):
    """AOG-Net: global transformer with learned queries + T2I-Adapter with cross-attention fusion.

    Output: ``encoder_hidden_states (B, num_queries + text_len, cross_attention_dim)`` and the
    view's adapter features per UNet down block (the last level fused with the cube faces).
    As in AOG-Net's reference code (:mod:`opama_model.aog`), its null condition is
    ``num_queries`` (5) learned tokens, not 7: ``null_tokens`` is ``(num_queries, dim)``.
    """

    @register_to_config
    def __init__(
        self,
        cross_attention_dim: int = 1024,
        image_embed_dim: int = 1024,
        text_embed_dim: int = 1024,
        text_len: int = 77,
        unet_channels: tuple = (320, 640, 1280, 1280),
        downscale_factor: int = 8,
        num_queries: int = 5,
        global_depth: int = 8,
        global_heads: int = 8,
        adapter_num_res_blocks: int = 2,
        fusion_heads: int = 8,
        fusion_depth: int = 8,
        query_mlp_hidden: int = 512,
        query_dropout: float = 0.2,
    ):
        super().__init__()
        self.global_branch = AOGGlobalTransformer(cross_attention_dim, image_embed_dim, text_embed_dim,
                                                  num_images=NUM_IMAGES, text_len=text_len,
                                                  num_queries=num_queries, depth=global_depth, heads=global_heads,
                                                  mlp_hidden=query_mlp_hidden, dropout=query_dropout)
        self.local_branch = AOGLocalAdapter(unet_channels, num_res_blocks=adapter_num_res_blocks,
                                            downscale_factor=downscale_factor, fusion_heads=fusion_heads,
                                            fusion_depth=fusion_depth, num_images=NUM_IMAGES)
        self._null_init(cross_attention_dim, num_queries)

    def _branches(self) -> tuple[nn.Module, nn.Module]:
        return self.global_branch, self.local_branch
