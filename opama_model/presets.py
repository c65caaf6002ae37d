"""Model presets and the one function that builds every component for a preset.

Presets (all architecture configs live in ``opama_model/configs/<preset>/``):

* ``tiny``: everything random-initialised and small (9-channel inpainting UNet at a 16x16
  latent, 3-block VAE with x4 down-sampling so views are 64x64 px, 2-layer CLIP text and
  vision towers with a locally built BPE tokenizer). A forward+backward step runs in well
  under a second on CPU. It has no pretrained weights: it is always random.
* ``sd2``: the paper's setting. UNet, VAE and scheduler of
  ``stabilityai/stable-diffusion-2-inpainting`` (512x512 views, 64x64 latent), CLIP text
  encoder, tokenizer and CLIP image encoder (with projection) of
  ``stabilityai/stable-diffusion-2-1-unclip``, located with :func:`opama_model.weights.require`
  (components ``sd2-inpaint`` and ``sd2-clip``; never downloaded). With
  ``random_weights=True`` the same architecture is built from the configs written into the
  project (a local tokenizer stands in for the real one), e.g. for GPU benchmarks.

Everything but the conditioner is frozen (``requires_grad_(False)``, ``eval()``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from .weights import MODEL_COMPONENTS, require

__all__ = [
    "Preset",
    "PRESETS",
    "get_preset",
    "load_config",
    "conditioner_kwargs",
    "Components",
    "build_components",
    "CLIP_MEAN",
    "CLIP_STD",
    "PREDICTION_TYPES",
    "with_prediction_type",
]

CONFIG_DIR = Path(__file__).with_name("configs")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preset:
    """One model setting.

    Attributes:
        name: preset name (also the folder under ``opama_model/configs``).
        image_size: side of the NFoV view and of each cube face fed to the model, pixels.
        latent_size: side of the UNet latent (``image_size / vae factor``).
        pretrained: whether real weights exist (loaded unless ``random_weights=True``).
        vcr: VCR settings (``depth``, ``d_state``, ``d_conv``, ``expand``).
        gma: GMA settings (``stem_channels``, ``local_depth``, ``global_depth``, Mamba sizes).
        aog: AOG-Net module settings (global transformer and local adapter).
    """

    name: str
    image_size: int
    latent_size: int
    pretrained: bool
    vcr: Mapping[str, Any] = field(default_factory=dict)
    gma: Mapping[str, Any] = field(default_factory=dict)
    aog: Mapping[str, Any] = field(default_factory=dict)

    @property
    def downscale(self) -> int:
        return self.image_size // self.latent_size


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        image_size=64,
        latent_size=16,
        pretrained=False,
        vcr=dict(depth=2, d_state=8, d_conv=4, expand=2),
        gma=dict(stem_channels=(16, 32), local_depth=1, global_depth=1, d_state=8, d_conv=4, expand=2),
        aog=dict(num_queries=5, global_depth=2, global_heads=4, num_res_blocks=1, fusion_heads=4, fusion_depth=1,
                 query_mlp_hidden=64),
    ),
    "sd2": Preset(
        name="sd2",
        image_size=512,
        latent_size=64,
        pretrained=True,
        vcr=dict(depth=8, d_state=16, d_conv=4, expand=2),
        gma=dict(stem_channels=(80, 160, 320), local_depth=2, global_depth=2, d_state=16, d_conv=4, expand=2),
        aog=dict(num_queries=5, global_depth=8, global_heads=8, num_res_blocks=2, fusion_heads=8, fusion_depth=8),
    ),
}


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


@lru_cache(maxsize=None)
def _read_config(preset: str, part: str) -> str:
    return (CONFIG_DIR / preset / f"{part}.json").read_text()


def load_config(preset: str | Preset, part: str) -> dict:
    """Architecture config ``part`` (``unet``, ``vae``, ``scheduler``, ``text_encoder``,
    ``image_encoder``) of a preset, without the ``_comment`` key."""
    name = get_preset(preset).name
    cfg = json.loads(_read_config(name, part))
    cfg.pop("_comment", None)
    return cfg


def conditioner_kwargs(preset: str | Preset, kind: str = "opama", *, unet_config=None, text_config=None,
                       image_config=None) -> dict:
    """Constructor arguments of :class:`OPaMaConditioner` (``kind="opama"``) or
    :class:`AOGConditioner` (``kind="aog"``) for a preset.

    Widths follow the UNet (cross-attention dim, down-block channels) and the CLIP towers
    (text hidden size, image projection size); pass the loaded models' configs to follow
    them, else the preset's architecture configs are read.
    """
    p = get_preset(preset)
    unet = dict(unet_config) if unet_config is not None else load_config(p, "unet")
    text = dict(text_config) if text_config is not None else load_config(p, "text_encoder")
    image = dict(image_config) if image_config is not None else load_config(p, "image_encoder")
    common = dict(
        cross_attention_dim=int(unet["cross_attention_dim"]),
        image_embed_dim=int(image["projection_dim"]),
        text_embed_dim=int(text["hidden_size"]),
        text_len=int(text.get("max_position_embeddings", 77)),
        unet_channels=tuple(int(c) for c in unet["block_out_channels"]),
        downscale_factor=p.downscale,
    )
    if kind == "opama":
        g = p.gma
        return dict(
            common,
            vcr_depth=p.vcr["depth"], vcr_d_state=p.vcr["d_state"], vcr_d_conv=p.vcr["d_conv"],
            vcr_expand=p.vcr["expand"],
            gma_stem_channels=tuple(g["stem_channels"]), gma_local_depth=g["local_depth"],
            gma_global_depth=g["global_depth"], gma_d_state=g["d_state"], gma_d_conv=g["d_conv"],
            gma_expand=g["expand"],
        )
    if kind == "aog":
        a = p.aog
        return dict(
            common,
            num_queries=a["num_queries"], global_depth=a["global_depth"], global_heads=a["global_heads"],
            adapter_num_res_blocks=a["num_res_blocks"], fusion_heads=a["fusion_heads"],
            fusion_depth=a["fusion_depth"], query_mlp_hidden=a.get("query_mlp_hidden", 512),
        )
    raise ValueError(f"unknown conditioner kind {kind!r}; choose 'opama' or 'aog'")


PREDICTION_TYPES = ("epsilon", "v_prediction")


def with_prediction_type(scheduler, prediction_type: str):
    """A copy of the noise ``scheduler`` (same class and schedule) whose UNet target is
    ``prediction_type`` (``"epsilon"`` or ``"v_prediction"``)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    return type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)


@dataclass
class Components:
    """Every model part of one preset. Frozen parts are in eval mode with ``requires_grad=False``."""

    preset: Preset
    unet: Any
    vae: Any
    scheduler: Any
    text_encoder: Any
    tokenizer: Any
    image_encoder: Any
    conditioner: Any = None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device=None, dtype=None) -> "Components":
        """Move every module (frozen parts to ``dtype`` too; the conditioner stays float32)."""
        for m in (self.unet, self.vae, self.text_encoder, self.image_encoder):
            m.to(device=device, dtype=dtype)
        if self.conditioner is not None:
            self.conditioner.to(device=device)
        return self

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """CLIP text hidden states ``(B, 77, text_hidden)`` (last layer) of ``captions``."""
        ids = self.tokenizer(list(captions), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        ids = ids.to(self.text_encoder.device)
        return self.text_encoder(input_ids=ids).last_hidden_state

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled, projected CLIP image embeddings ``(B, E)`` of images ``(B, 3, H, W)`` in [-1, 1].

        Images are resized (bicubic, antialiased) to the encoder's input size and normalised
        with CLIP's mean/std, as ``CLIPImageProcessor`` would (without its centre crop: views
        and cube faces are square).
        """
        enc = self.image_encoder
        size = int(enc.config.image_size)
        p = next(enc.parameters())
        x = (images.to(device=p.device, dtype=torch.float32) + 1) / 2
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        x = ((x.clamp(0, 1) - mean) / std).to(p.dtype)
        return enc(pixel_values=x).image_embeds

    def trainable_parameters(self):
        return [p for p in self.conditioner.parameters() if p.requires_grad] if self.conditioner is not None else []


def _freeze(*mods):
    for m in mods:
        m.requires_grad_(False)
        m.eval()


def _random_parts(p: Preset):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from .tokenizer import build_tiny_clip_tokenizer

    tokenizer = build_tiny_clip_tokenizer()
    unet = UNet2DConditionModel.from_config(load_config(p, "unet"))
    vae = AutoencoderKL.from_config(load_config(p, "vae"))
    scheduler = DDPMScheduler.from_config(load_config(p, "scheduler"))
    tcfg = load_config(p, "text_encoder")
    tcfg.pop("architectures", None)
    tcfg.pop("model_type", None)
    tcfg["vocab_size"] = max(int(tcfg["vocab_size"]), len(tokenizer))
    tcfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tcfg))
    icfg = load_config(p, "image_encoder")
    icfg.pop("architectures", None)
    icfg.pop("model_type", None)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**icfg))
    return unet, vae, scheduler, text_encoder, tokenizer, image_encoder


def _pretrained_parts(paths: Mapping[str, Any] | None):
    """Load the sd2 parts from local folders (``sd2-inpaint`` and ``sd2-clip`` layouts)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    paths = dict(paths or {})
    comps = {c.key: c for c in MODEL_COMPONENTS}
    inpaint = require(comps["sd2-inpaint"], paths.get("sd2-inpaint"))
    clip = require(comps["sd2-clip"], paths.get("sd2-clip"))
    kw = dict(local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(inpaint, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(inpaint, subfolder="vae", **kw)
    scheduler = DDPMScheduler.from_pretrained(inpaint, subfolder="scheduler", **kw)
    text_encoder = CLIPTextModel.from_pretrained(clip, subfolder="text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(clip, subfolder="tokenizer", **kw)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(clip, subfolder="image_encoder", **kw)
    return unet, vae, scheduler, text_encoder, tokenizer, image_encoder


def build_components(
    preset: str | Preset = "tiny",
    *,
    random_weights: bool = False,
    paths: Mapping[str, Any] | None = None,
    conditioner: str | None = "opama",
    conditioner_path: str | Path | None = None,
    seed: int | None = 0,
    device=None,
    dtype: torch.dtype | None = None,
) -> Components:
    """Build every component of ``preset`` (the one builder used by train, outpaint and tests).

    Args:
        preset: ``"tiny"`` or ``"sd2"`` (or a :class:`Preset`).
        random_weights: build from the architecture configs alone, with random weights
            (always the case for presets without pretrained weights, such as ``tiny``).
        paths: explicit local folders, ``{"sd2-inpaint": dir, "sd2-clip": dir}``; otherwise the
            ``OPAMA_SD2_*`` variables and the Hugging Face cache are searched (offline).
        conditioner: ``"opama"``, ``"aog"`` or None (no conditioner).
        conditioner_path: a folder written by the conditioner's ``save_pretrained`` to load.
        seed: seed for random initialisation (None: do not reseed).
        device, dtype: where to put the frozen parts and their dtype (the conditioner stays fp32).

    Raises:
        MissingWeightsError: a pretrained folder is missing (message says what to place where).
    """
    p = get_preset(preset)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if p.pretrained and not random_weights:
            parts = _pretrained_parts(paths)
        else:
            parts = _random_parts(p)
        unet, vae, scheduler, text_encoder, tokenizer, image_encoder = parts
        _freeze(unet, vae, text_encoder, image_encoder)
        cond = None
        if conditioner is not None:
            from .conditioner import AOGConditioner, OPaMaConditioner

            cls = {"opama": OPaMaConditioner, "aog": AOGConditioner}.get(conditioner)
            if cls is None:
                raise ValueError(f"unknown conditioner {conditioner!r}; choose 'opama' or 'aog'")
            if conditioner_path is not None:
                cond = cls.from_pretrained(conditioner_path)
            else:
                cond = cls(**conditioner_kwargs(p, conditioner, unet_config=unet.config,
                                                text_config=text_encoder.config.to_dict(),
                                                image_config=image_encoder.config.to_dict()))
    comps = Components(p, unet, vae, scheduler, text_encoder, tokenizer, image_encoder, cond)
    if device is not None or dtype is not None:
        comps.to(device=device, dtype=dtype)
    return comps


def vae_downscale(vae_config: Mapping[str, Any]) -> int:
    """Spatial down-sampling factor of an AutoencoderKL config (2 per block after the first)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)

