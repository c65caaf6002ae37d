"""The training loss of one (micro-)batch, as the reference's ``InpaintMamba.forward``, and the
view generator used for the training panels.

Per sample (``slot``), every random number is drawn from a generator seeded by
``(seed, micro-batch, slot)``: the guidance mode, the timestep, the noise, the offset noise and
the VAE posterior samples. So a global batch split over N processes draws exactly what one
process draws for the whole batch, and nothing depends on a global RNG state.

Differences from the reference, on purpose:

* guidance dropout is drawn **per sample** (20% null condition, 40% empty caption, 40% caption);
  the reference draws once per batch, so with its batch of 2 both samples always share the mode.
  Null samples carry the 7 null tokens, the others 84 (OPa-Ma): the conditioner pads and returns
  ``encoder_attention_mask``, which goes to the UNet;
* the adapter residuals go to the UNet as a fresh list (diffusers pops from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .sample import seeded_rng

__all__ = ["StepDraws", "draw_step", "GuidanceProbs", "Parts", "diffusion_loss", "unet_inputs", "encode_latents",
           "generate_view",
           "MODE_NULL", "MODE_EMPTY", "MODE_CAPTION"]

MODE_NULL, MODE_EMPTY, MODE_CAPTION = 0, 1, 2
STEP_KEY = 3


@dataclass(frozen=True)
class GuidanceProbs:
    """Classifier-free guidance dropout: probability of the null condition and of an empty caption
    (the rest keeps the caption). Reference: 0.2 and 0.4 (0.8 x 0.5)."""

    null: float = 0.2
    empty_caption: float = 0.4


@dataclass
class StepDraws:
    """Random draws of one micro-batch (``B`` samples; latent ``(C, h, w)``).

    Attributes:
        modes: ``(B,)`` long, :data:`MODE_NULL` / :data:`MODE_EMPTY` / :data:`MODE_CAPTION`.
        timesteps: ``(B,)`` long, uniform in ``0 .. num_train_timesteps - 1``.
        noise: ``(B, C, h, w)`` standard normal.
        offset: ``(B, C, 1, 1)`` standard normal (scaled by the offset-noise strength in the loss).
        eps_target, eps_masked: ``(B, C, h, w)`` standard normal for the VAE posterior samples.
    """

    modes: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor
    offset: torch.Tensor
    eps_target: torch.Tensor
    eps_masked: torch.Tensor

    def to(self, device) -> "StepDraws":
        return StepDraws(*(getattr(self, f).to(device) for f in
                           ("modes", "timesteps", "noise", "offset", "eps_target", "eps_masked")))


def draw_step(seed: int, micro: int, slots: Sequence[int], latent_shape: tuple[int, int, int], num_timesteps: int,
              probs: GuidanceProbs = GuidanceProbs(), *, modes: Sequence[int] | None = None,
              stream: int = STEP_KEY) -> StepDraws:
    """Draws for the samples ``slots`` (their indices in the global micro-batch ``micro``).

    ``modes`` forces the guidance modes (e.g. validation: all :data:`MODE_CAPTION`)."""
    out = {k: [] for k in ("modes", "timesteps", "noise", "offset", "eps_target", "eps_masked")}
    c = latent_shape[0]
    for j, slot in enumerate(slots):
        g = torch.Generator().manual_seed(int(seeded_rng(seed, stream, micro, slot).integers(0, 2**62)))
        u = torch.rand((), generator=g).item()
        mode = MODE_NULL if u < probs.null else MODE_EMPTY if u < probs.null + probs.empty_caption else MODE_CAPTION
        out["modes"].append(torch.tensor(mode if modes is None else modes[j]))
        out["timesteps"].append(torch.randint(0, num_timesteps, (), generator=g))
        out["noise"].append(torch.randn(latent_shape, generator=g))
        out["offset"].append(torch.randn(c, 1, 1, generator=g))
        out["eps_target"].append(torch.randn(latent_shape, generator=g))
        out["eps_masked"].append(torch.randn(latent_shape, generator=g))
    return StepDraws(**{k: torch.stack(v) for k, v in out.items()})


@dataclass
class Parts:
    """What the loss needs. ``conditioner`` and ``unet`` may be wrapped (DDP); ``components`` is the
    :class:`opama_model.presets.Components` (frozen encoders, VAE, scheduler)."""

    components: Any
    conditioner: Callable
    unet: Callable

    @property
    def vae(self):
        return self.components.vae

    @property
    def scheduler(self):
        return self.components.scheduler


def encode_latents(vae, images: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    """Scaled VAE latents of ``images (B, 3, S, S)`` in [-1, 1]: a posterior sample
    ``mean + std * eps`` (the reference samples the latent distribution), or the mean when ``eps``
    is None; times ``vae.config.scaling_factor``."""
    p = next(vae.parameters())
    dist = vae.encode(images.to(device=p.device, dtype=p.dtype)).latent_dist
    z = dist.mean if eps is None else dist.mean + dist.std * eps.to(dist.mean.dtype)
    return z * vae.config.scaling_factor


def _dtype(module) -> torch.dtype:
    return next(module.parameters()).dtype


def _conditions(parts: Parts, batch: dict, modes: torch.Tensor, device):
    comps = parts.components
    b = modes.shape[0]
    captions = ["" if int(m) == MODE_EMPTY else c for c, m in zip(batch["caption"], modes.tolist())]
    text = comps.encode_text(captions)
    clip = batch["clip_images"].to(device)
    emb = comps.encode_images(clip.flatten(0, 1)).reshape(b, clip.shape[1], -1)
    null = (modes == MODE_NULL).to(device)
    return text, emb, null


def diffusion_loss(parts: Parts, batch: dict, draws: StepDraws, *, offset_noise: float = 0.1,
                   device=None) -> torch.Tensor:
    """Per-sample training loss ``(B,)``: MSE of the UNet's prediction against the noise (epsilon)
    or the velocity (``prediction_type == "v_prediction"``), averaged over the latent.

    The UNet input is ``[noisy latent, unknown mask (nearest, latent size), masked-image latent]``
    (9 channels); noise = ``noise + offset_noise * offset`` (offset noise 0.1); DDPM ``add_noise``.
    """
    comps = parts.components
    device = device or comps.device
    draws = draws.to(device)
    x, t, target = unet_inputs(parts.vae, parts.scheduler, batch, draws, offset_noise=offset_noise, device=device)
    with torch.no_grad():
        text, emb, null = _conditions(parts, batch, draws.modes, device)
    tokens, residuals, attn_mask = parts.conditioner(batch["gma_images"].to(device), emb, text, unconditional=null,
                                                     return_dict=False)
    dt = _dtype(parts.components.unet)  # a UNet stored in fp16/bf16 gets its inputs in that dtype
    pred = parts.unet(x, t, encoder_hidden_states=tokens.to(dt), encoder_attention_mask=attn_mask,
                      down_intrablock_additional_residuals=[r.to(dt) for r in residuals], return_dict=False)[0]
    return (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))


def unet_inputs(vae, sched, batch: dict, draws: StepDraws, *, offset_noise: float = 0.1,
                device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The UNet's 9-channel input ``[noisy latent, unknown mask, masked-image latent]``, the
    timesteps ``(B,)`` and the regression target (the noise, or the velocity when the scheduler's
    ``prediction_type`` is ``v_prediction``) of ``batch["target"]`` / ``["masked_image"]`` /
    ``["unknown"]`` under ``draws`` (already on ``device``)."""
    with torch.no_grad():
        latents = encode_latents(vae, batch["target"].to(device), draws.eps_target).float()
        masked = encode_latents(vae, batch["masked_image"].to(device), draws.eps_masked).float()
    noise = draws.noise + offset_noise * draws.offset
    t = draws.timesteps
    noisy = sched.add_noise(latents, noise, t)
    mask = F.interpolate(batch["unknown"].to(device).float(), size=latents.shape[-2:])
    kind = sched.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = sched.get_velocity(latents, noise, t)
    else:
        raise ValueError(f"unsupported prediction_type {kind!r} in the scheduler config")
    return torch.cat((noisy, mask, masked), dim=1), t, target


@torch.no_grad()
def generate_view(components, conditioner, batch: dict, *, steps: int = 20, guidance: float = 2.5,
                  seed: int = 0) -> torch.Tensor:
    """Generate the target views of ``batch`` (DDIM, classifier-free guidance with the learned null
    condition, conditional and unconditional passes separate as the reference) -> ``(B, 3, S, S)``
    in [-1, 1]. For training panels; :mod:`opama_model.pipeline` does full outpainting."""
    from diffusers import DDIMScheduler

    device = components.device
    vae, unet = components.vae, components.unet
    sched = DDIMScheduler.from_config(components.scheduler.config)
    sched.set_timesteps(steps, device=device)
    b = batch["target"].shape[0]
    modes = torch.full((b,), MODE_CAPTION)
    text, emb, _ = _conditions(Parts(components, conditioner, unet), batch, modes, device)
    masked = encode_latents(vae, batch["masked_image"].to(device), None).float()
    mask = F.interpolate(batch["unknown"].to(device).float(), size=masked.shape[-2:])
    out = conditioner(batch["gma_images"].to(device), emb, text, return_dict=False)
    dt = _dtype(unet)
    tokens, residuals = out[0].to(dt), [r.to(dt) for r in out[1]]
    null = conditioner.null_condition(b).to(dt)
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(masked.shape, generator=g).to(device) * sched.init_noise_sigma
    for t in sched.timesteps:
        x = torch.cat((sched.scale_model_input(lat, t), mask, masked), dim=1)
        eps_c = unet(x, t, encoder_hidden_states=tokens, down_intrablock_additional_residuals=list(residuals)).sample
        eps_u = unet(x, t, encoder_hidden_states=null, down_intrablock_additional_residuals=list(residuals)).sample
        lat = sched.step(eps_u + guidance * (eps_c - eps_u), t, lat).prev_sample
    return vae.decode(lat / vae.config.scaling_factor).sample.clamp(-1, 1).float()
