"""The trainable conditioners: OPa-Ma (VCR + GMA) and the AOG-Net baseline, same interface.

Both take, per sample,

* ``images``: ``(B, 7, 5, S, S)`` from :func:`opama_model.gma.build_gma_input` (6 cube faces
  of the current panorama, then the current view; RGB in [-1, 1] + latitude, longitude),
* ``image_embeds``: ``(B, 7, E_img)`` pooled, projected CLIP image embeddings, **the view
  first**, then the 6 cube faces (``spherical.CUBE_FACES`` order),
* ``text_hidden_states``: ``(B, 77, E_txt)`` CLIP text hidden states of the caption,
* ``unconditional``: optional ``(B,)`` bool; where True the 7 image embeddings are replaced by
  the learned unconditional embedding (classifier-free guidance; pass the empty caption's
  text states for those samples; the adapter residuals from ``images`` are kept, the masked
  view is part of the UNet input in both passes anyway),

and return :class:`ConditionerOutput`: ``encoder_hidden_states`` for the UNet's
cross-attention and ``down_intrablock_additional_residuals`` (one tensor per UNet down block;
pass a fresh list to every UNet call, diffusers pops from it). Both are
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

__all__ = ["ConditionerOutput", "OPaMaConditioner", "AOGConditioner"]


@dataclass
class ConditionerOutput(BaseOutput):
    """``encoder_hidden_states (B, T, cross_attention_dim)`` and the UNet adapter residuals."""

    encoder_hidden_states: torch.Tensor
    down_intrablock_additional_residuals: list


class _ConditionerBase(ModelMixin, ConfigMixin):
    """Learned unconditional image embedding, loading and ``forward`` shared by both conditioners.

    A subclass builds its two branches and names them in :meth:`_branches`.
    """

    def _branches(self) -> tuple[nn.Module, nn.Module]:
        """``(global, local)``: tokens from ``(image_embeds, text_hidden_states)``; residuals from ``images``."""
        raise NotImplementedError

    def _null_init(self, image_embed_dim: int) -> None:
        self.null_image_embeds = nn.Parameter(torch.randn(NUM_IMAGES, image_embed_dim) * 0.02)

    def _apply_uncond(self, image_embeds: torch.Tensor, unconditional) -> torch.Tensor:
        if unconditional is None:
            return image_embeds
        m = torch.as_tensor(unconditional, device=image_embeds.device, dtype=torch.bool)
        m = m.reshape(-1, 1, 1).expand(image_embeds.shape[0], 1, 1)
        null = self.null_image_embeds.to(image_embeds.dtype).unsqueeze(0)
        return torch.where(m, null, image_embeds)

    @staticmethod
    def _check(images, image_embeds, text_hidden_states):
        if images.shape[0] != image_embeds.shape[0] or images.shape[0] != text_hidden_states.shape[0]:
            raise ValueError("images, image_embeds and text_hidden_states must share the batch size")

    def forward(self, images: torch.Tensor, image_embeds: torch.Tensor, text_hidden_states: torch.Tensor,
                unconditional=None, return_dict: bool = True):
        self._check(images, image_embeds, text_hidden_states)
        global_branch, local_branch = self._branches()
        tokens = global_branch(self._apply_uncond(image_embeds, unconditional), text_hidden_states)
        res = local_branch(images)
        if not return_dict:
            return tokens, res
        return ConditionerOutput(encoder_hidden_states=tokens, down_intrablock_additional_residuals=res)


class OPaMaConditioner(_ConditionerBase):
    """OPa-Ma: VCR (global, to the cross-attention) + GMA (local/global, adapter residuals).

    Output: ``encoder_hidden_states (B, 7 + text_len, cross_attention_dim)`` and the view's GMA
    features per UNet down block. Widths follow the UNet and CLIP configs
    (:func:`opama_model.presets.conditioner_kwargs`).
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
                       d_conv=gma_d_conv, expand=gma_expand, ring_scan=gma_ring_scan)
        self._null_init(image_embed_dim)

    def _branches(self) -> tuple[nn.Module, nn.Module]:
        return self.vcr, self.gma


class AOGConditioner(_ConditionerBase):
    """AOG-Net: global transformer with learned queries + T2I-Adapter with cross-attention fusion.

    Output: ``encoder_hidden_states (B, num_queries + text_len, cross_attention_dim)`` and the
    view's adapter features per UNet down block (the last level fused with the cube faces).
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
        fusion_depth: int = 1,
    ):
        super().__init__()
        self.global_branch = AOGGlobalTransformer(cross_attention_dim, image_embed_dim, text_embed_dim,
                                                  num_images=NUM_IMAGES, text_len=text_len,
                                                  num_queries=num_queries, depth=global_depth, heads=global_heads)
        self.local_branch = AOGLocalAdapter(unet_channels, num_res_blocks=adapter_num_res_blocks,
                                            downscale_factor=downscale_factor, fusion_heads=fusion_heads,
                                            fusion_depth=fusion_depth, num_images=NUM_IMAGES)
        self._null_init(image_embed_dim)

    def _branches(self) -> tuple[nn.Module, nn.Module]:
        return self.global_branch, self.local_branch
