"""CLIP score (Hessel et al. 2021): ``100 * max(cos(image, text), 0)``, computed here.

torchmetrics' ``CLIPScore`` rejects local paths and breaks with transformers 5, so the
embeddings come from a transformers ``CLIPModel`` + ``CLIPProcessor`` loaded from a
local folder (default: the papers' ``openai/clip-vit-base-patch16`` in the HF cache),
projected exactly as ``CLIPModel.forward`` does (``visual_projection(vision pooler)``,
``text_projection(text pooler)``). The processor resizes the shorter side and
centre-crops, as torchmetrics does, so the "whole panorama" score sees its central
part; the NFoV variant averages the score over 8 horizontal 90° views.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from opama_tools.eval.metrics.features import MetricUnavailable, resolve_weights

__all__ = ["ClipScorer", "load_clip_scorer", "clip_score_from_embeds"]


def clip_score_from_embeds(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """``100 * max(cos, 0)`` row by row for embeddings ``(N, D)`` and ``(N, D)``, ``(N,)``."""
    img = torch.nn.functional.normalize(img.double(), dim=-1)
    txt = torch.nn.functional.normalize(txt.double(), dim=-1)
    return 100 * (img * txt).sum(-1).clamp_min(0)


class ClipScorer:
    """Image and text embeddings of a local transformers CLIP model."""

    def __init__(self, model, processor, name: str, path: Path, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.processor = processor
        self.name = name
        self.path = path
        self.device = device

    @torch.no_grad()
    def image_embeds(self, images: np.ndarray) -> torch.Tensor:
        """``(N, D)`` projected embeddings of uint8 images ``(N, H, W, 3)`` (processor: resize + centre crop)."""
        inputs = self.processor(images=list(np.asarray(images)), return_tensors="pt")
        pix = inputs["pixel_values"].to(self.device)
        pooled = self.model.vision_model(pixel_values=pix).pooler_output
        return self.model.visual_projection(pooled).cpu()

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """``(N, D)`` projected embeddings of captions (truncated to the model's context)."""
        ctx = int(self.model.config.text_config.max_position_embeddings)
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True, max_length=ctx)
        out = self.model.text_model(
            input_ids=inputs["input_ids"].to(self.device), attention_mask=inputs["attention_mask"].to(self.device)
        )
        return self.model.text_projection(out.pooler_output).cpu()


def _canonical(cfg: dict) -> bool:
    v = cfg.get("vision_config", {})
    return cfg.get("projection_dim") == 512 and v.get("patch_size") == 16 and v.get("hidden_size") == 768 and v.get("num_hidden_layers") == 12


def load_clip_scorer(explicit: str | os.PathLike | None = None, device: str = "cpu") -> ClipScorer:
    """The CLIP-score network from ``--clip-weights`` / ``$OPAMA_CLIPSCORE`` / the HF cache.

    Named ``clip-vit-base-patch16`` only when its config is that architecture, else
    ``custom:<folder>``.
    """
    from transformers import CLIPModel, CLIPProcessor

    p = resolve_weights("clip-score", explicit, "--clip-weights")
    try:
        model = CLIPModel.from_pretrained(str(p), local_files_only=True)
        proc = CLIPProcessor.from_pretrained(str(p), local_files_only=True)
        cfg = json.loads((p / "config.json").read_text())
    except Exception as e:
        raise MetricUnavailable(f"{p}: cannot load a transformers CLIP model + processor ({type(e).__name__}: {e})") from e
    name = "clip-vit-base-patch16" if _canonical(cfg) else f"custom:{p.name}"
    return ClipScorer(model, proc, name, p, device)
