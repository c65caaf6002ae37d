"""``OPaMaPipeline``: photo(s) and/or a sentence -> a full 360-degree equirectangular panorama.

The autoregressive loop of the OPa-Ma / AOG-Net reference inference, readable top to bottom
(:meth:`OPaMaPipeline.__call__`):

1. **Plan** (:func:`plan_views`): the input photos are pasted on an empty canvas; the view
   schedule (default :data:`opama_model.views.AOG21`, in our convention: yaw right, pitch up,
   degrees; text-only runs start with the view (0, 0) generated from an empty canvas) is
   simulated on the known mask with the very functions the loop uses, then **completion
   views** are appended until every canvas pixel is covered: the published 21 views leave
   about 0.1% of the canvas (pole rows, the +-180 degree columns near the poles) unfilled. The
   plan says which views need the diffusion model (some unknown pixel in the view) and how
   many UNet passes that implies (:func:`expected_unet_passes`).
2. **Encode the caption once** per panorama (the reference re-randomises it per view).
3. **Per view**: cut the canvas (:func:`opama_model.canvas.cut_view`: view, unknown mask,
   cube faces of the masked canvas, GMA images), CLIP-encode the view and the 6 faces, run the
   conditioner **once** (VCR tokens and GMA residuals do not depend on the timestep), encode
   the masked view with the VAE (the latent *mean*: deterministic), denoise, decode, and paste
   back **only the unknown pixels** (:func:`opama_model.spherical.pers_to_equi`, no feather).
   Known pixels are never written: the output's known region is bit-identical to the pasted
   inputs (they are quantised to 8-bit levels when pasted, so the PNG holds them exactly).
4. Classifier-free guidance: ``eps = eps_null + g * (eps_cond - eps_null)``; the null branch
   is the conditioner's 7 learned tokens (:meth:`null_condition`) with the *same* GMA
   residuals (reference semantics). Every UNet call gets a **fresh residual list**: diffusers
   pops from it, which is why the published inference applied the GMA to only the first UNet
   call of each view.

Procedures (:data:`PROCEDURES`): ``reference`` (OPa-Ma's: DPM-Solver++ 25 steps, guidance 2.5,
separate conditional/unconditional calls), ``aog`` (AOG-Net's: PNDM 50 steps), ``fast`` (the
default: DPM-Solver++ with Karras sigmas, 10 steps, whose integration error matches the
reference's 25 uniform steps; guidance in the first half of the steps only, which changes the
solution by less than that error: 315 UNet rows instead of 1,050; guidance batched in one UNet
call (null tokens zero-padded to the conditional length and masked with
``encoder_attention_mask``) where that is faster, ``batched_cfg="auto"``: on CUDA batched, on
CPU two separate calls (:func:`resolve_batched_cfg`); and **face reuse**: the CLIP embeddings
and the GMA's work of the cube faces whose pixels did not change since the previous view are
reused, not recomputed (:class:`FaceCache`)). ``reference`` and ``aog`` keep the published
per-view recomputation. ``benchmarks/bench_outpaint.py`` and ``benchmarks/bench_sd2.py`` measure every
choice.

Seeds: one CPU ``torch.Generator`` per panorama draws every view's initial noise, so a seed
gives the same panorama on any device up to the device's arithmetic (bit-identical on CPU).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils import BaseOutput

from .canvas import ViewInputs, cut_view, cut_view_only
from .conditioner import AOGConditioner, OPaMaConditioner, pad_tokens  # noqa: F401 (from_pretrained finds them)
from .directions import Direction, check_direction
from .gma import GMA, VIEW_INDEX
from .spherical import equi_to_pers, equirect_directions, pers_to_equi, project_to_view
from .views import AOG21

__all__ = [
    "Procedure",
    "resolve_batched_cfg",
    "PROCEDURES",
    "SCHEDULERS",
    "make_scheduler",
    "ViewStep",
    "plan_views",
    "paste_inputs",
    "expected_unet_passes",
    "default_canvas_size",
    "OPaMaPipelineOutput",
    "OPaMaPipeline",
]


# ----------------------------------------------------------------------------- procedures
@dataclass(frozen=True)
class Procedure:
    """How to denoise each view.

    Attributes:
        name: ``reference``, ``aog`` or ``fast``.
        scheduler: a key of :data:`SCHEDULERS`.
        steps: inference steps per view (the scheduler may evaluate the UNet a few more times,
            e.g. PNDM's warm-up: passes are counted, not assumed).
        guidance: classifier-free guidance scale ``g`` (1 = no guidance).
        batched_cfg: conditional and null branches in one UNet call (null tokens padded + masked);
            ``"auto"``: batched except on CPU (:func:`resolve_batched_cfg`).
        guidance_fraction: guidance in the first ``ceil(fraction * n)`` of the ``n`` UNet
            evaluations per view, conditional branch only afterwards.
        reuse_faces: reuse, from the previous view of the same panorama, the CLIP embeddings and
            the GMA features (:meth:`FaceCache.gma_residuals`) of every cube face whose pixels
            did not change (compared exactly). The result equals recomputing up to float
            rounding of the smaller batches (tested <= 1e-5). Off for ``reference`` and
            ``aog``, which recompute every view as published.

    The precision is the loaded model's (``opama outpaint --dtype auto``: fp16 UNet/VAE/CLIP and
    channels-last on CUDA, fp32 on CPU), the same for every procedure.
    """

    name: str
    scheduler: str
    steps: int
    guidance: float = 2.5
    batched_cfg: bool | str = False
    guidance_fraction: float = 1.0
    reuse_faces: bool = False


PROCEDURES: dict[str, Procedure] = {
    "reference": Procedure("reference", "dpm++2m", 25, 2.5),
    "aog": Procedure("aog", "pndm", 50, 2.5),
    "fast": Procedure("fast", "dpm++2m-karras", 10, 2.5, batched_cfg="auto", guidance_fraction=0.5,
                      reuse_faces=True),
}
"""The three procedures of ``opama outpaint --procedure`` (see the module docstring)."""

SCHEDULERS: dict[str, tuple[type, dict]] = {
    "dpm++2m": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2)),
    "dpm++2m-karras": (DPMSolverMultistepScheduler,
                       dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)),
    "unipc": (UniPCMultistepScheduler, dict(solver_order=2, solver_type="bh2")),
    "pndm": (PNDMScheduler, dict(skip_prk_steps=True)),
    "ddim": (DDIMScheduler, dict()),
    "euler": (EulerDiscreteScheduler, dict()),
}
"""Scheduler names of ``--scheduler``: class and settings over the model's noise schedule."""


NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                       "prediction_type", "steps_offset")
"""What a sampling scheduler takes from the model's scheduler config: the training noise schedule only."""


def make_scheduler(name: str, base_config: dict):
    """A fresh scheduler ``name`` (:data:`SCHEDULERS`) over ``base_config``'s noise schedule.

    Only :data:`NOISE_SCHEDULE_KEYS` are taken from ``base_config``: everything else (timestep
    spacing, final sigma, ...) is the sampler's own default, as ``from_pretrained`` of the
    SD-2-inpainting scheduler folder gives in the reference (the training ``DDPMScheduler``'s
    ``timestep_spacing="leading"`` would start DPM-Solver at t = 961 instead of 999).
    """
    try:
        cls, kwargs = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}") from None
    cfg = {k: v for k, v in dict(base_config).items() if k in NOISE_SCHEDULE_KEYS}
    return cls.from_config(cfg, **kwargs)


def resolve_batched_cfg(value: bool | str, device=None) -> bool:
    """``batched_cfg`` of a :class:`Procedure` for ``device``: ``"auto"`` is False on CPU and
    True elsewhere. On CPU a batch-2 sd2 UNet pass costs two batch-1 passes or more (one thread:
    25.3 s vs 2 x 12.2 s on a quiet machine, 31.0 s vs 2 x 15.6 s on a loaded one), while a GPU
    runs a batch of 2 in little more than the time of one (``benchmarks/bench_sd2.py``)."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"batched_cfg must be True, False or 'auto', got {value!r}")
        return torch.device(device if device is not None else "cpu").type != "cpu"
    return bool(value)


def _guided_steps(n_evals: int, guidance: float, fraction: float) -> int:
    """Number of leading UNet evaluations (of ``n_evals`` per view) that use guidance."""
    if guidance == 1.0 or fraction <= 0:
        return 0
    return min(n_evals, math.ceil(fraction * n_evals))


def default_canvas_size(view_size: int) -> tuple[int, int]:
    """``(H, W)`` of the default canvas: ``4 x 8`` view sizes (the reference: 512 px views, 2048 x 4096)."""
    return 4 * view_size, 8 * view_size


# ----------------------------------------------------------------------------- planning
@dataclass
class ViewStep:
    """One step of the autoregressive loop.

    Attributes:
        yaw, pitch: view direction, degrees (fov is the plan's).
        kind: ``"first"`` (text-only start from an empty canvas), ``"schedule"`` or ``"completion"``.
        generate: the view has unknown pixels, so the diffusion model runs (else its known
            pixels only fill equirect holes between them, no UNet call).
        new_pixels: canvas pixels this step fills.
    """

    yaw: float
    pitch: float
    kind: str
    generate: bool = True
    new_pixels: int = 0


def _input_footprint(h: int, w: int, direction: Direction, equi_hw: tuple[int, int], device=None) -> torch.Tensor:
    """``(1, 1, H, W)`` bool: canvas pixels an ``h x w`` photo at ``direction`` covers when pasted."""
    ones = torch.ones(1, 1, 1, h, w, device=device)
    _, cover = pers_to_equi(ones, direction[0], direction[1], direction[2], equi_hw, feather=0.0)
    return cover > 0


def _view_has_unknown(known: torch.Tensor, yaw: float, pitch: float, fov: float, size: int) -> bool:
    """Whether the view cut by :func:`cut_view` at ``(yaw, pitch)`` has an unknown pixel (same sampling)."""
    cut = equi_to_pers(known.float(), yaw, pitch, fov, (size, size), mode="nearest")
    return bool((cut <= 0.5).any())


def _view_cover(yaw: float, pitch: float, fov: float, size: int, equi_hw: tuple[int, int], device) -> torch.Tensor:
    """``(1, 1, H, W)`` bool: canvas pixels a generated ``size``-px view pastes onto (as the loop)."""
    return _input_footprint(size, size, (yaw, pitch, fov), equi_hw, device)


COMPLETION_CANDIDATES: tuple[tuple[float, float], ...] = (
    ((0.0, 90.0), (0.0, -90.0))
    + tuple((float(y), p) for p in (67.5, -67.5, 45.0, -45.0, 22.5, -22.5, 0.0) for y in range(-180, 180, 45))
)
"""Directions tried, greedily, to cover what the schedule leaves unknown (degrees)."""


def plan_views(known: torch.Tensor, schedule: Sequence[tuple[float, float]], fov: float, size: int,
               *, first_view: bool = False, complete: bool = True) -> tuple[list[ViewStep], torch.Tensor]:
    """Simulate the loop on the known mask and append completion views until nothing is unknown.

    Args:
        known: ``(1, 1, H, W)`` bool, the pasted inputs' footprint.
        schedule: generated views ``(yaw, pitch)`` in order (degrees).
        fov, size: the generated views' horizontal fov (degrees) and side (pixels).
        first_view: start with the view (0, 0) (text-only: the canvas is empty).
        complete: append completion views (greedy over :data:`COMPLETION_CANDIDATES`: the
            direction whose footprint, one view pixel inside its border, holds most of the
            remaining unknown pixels) until every pixel is covered.

    Returns:
        ``(steps, known_final)``. The loop of :class:`OPaMaPipeline` follows these steps and
        updates its mask with the same functions, so the plan is exact.
    """
    equi_hw = tuple(known.shape[-2:])
    device = known.device
    known = known.clone()
    steps: list[ViewStep] = []

    def run(yaw: float, pitch: float, kind: str) -> int:
        nonlocal known
        gen = _view_has_unknown(known, yaw, pitch, fov, size)
        new = _view_cover(yaw, pitch, fov, size, equi_hw, device) & ~known
        n_new = int(new.sum())
        known = known | new
        steps.append(ViewStep(float(yaw), float(pitch), kind, gen, n_new))
        return n_new

    if first_view:
        run(0.0, 0.0, "first")
    for yaw, pitch in schedule:
        run(yaw, pitch, "schedule")
    if complete:
        while not bool(known.all()):
            dirs = equirect_directions(*equi_hw, dtype=torch.float64, device=device)[~known[0, 0]]
            best, best_n = None, 0
            for yaw, pitch in COMPLETION_CANDIDATES:
                u, v, inside = project_to_view(dirs, yaw, pitch, fov, (size, size))
                # one view pixel of margin: robust to rounding at the footprint border
                inside = inside & (u >= 0.5) & (u <= size - 1.5) & (v >= 0.5) & (v <= size - 1.5)
                n = int(inside.sum())
                if n > best_n:
                    best, best_n = (yaw, pitch), n
            if best is None or run(best[0], best[1], "completion") == 0:
                raise RuntimeError(f"{int((~known).sum())} canvas pixels cannot be covered by any completion view")
    return steps, known


def expected_unet_passes(steps: Sequence[ViewStep], procedure: Procedure, n_evals: int,
                         device=None) -> tuple[int, int]:
    """``(calls, rows)`` of UNet forward passes a plan implies.

    ``n_evals`` is the number of UNet evaluations per view of the scheduler (``len(timesteps)``).
    Each guided evaluation is 2 calls of batch 1 (separate) or 1 call of batch 2 (batched;
    ``"auto"`` resolved for ``device``, default CPU).
    """
    guided = _guided_steps(n_evals, procedure.guidance, procedure.guidance_fraction)
    batched = resolve_batched_cfg(procedure.batched_cfg, device)
    per_calls = (guided if batched else 2 * guided) + (n_evals - guided)
    per_rows = 2 * guided + (n_evals - guided)
    n = sum(1 for s in steps if s.generate)
    return n * per_calls, n * per_rows


# ----------------------------------------------------------------------------- inputs
def _to_image_tensor(image: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A photo as ``(1, 3, h, w)`` float32 in [-1, 1] and its opacity ``(1, 1, h, w)`` (1 = opaque, 0 =
    unknown; None when every pixel is opaque).

    Accepts a PIL image (alpha, or palette / ``tRNS`` transparency, gives the opacity), a uint8 or
    uint16 array ``(h, w)``, ``(h, w, 3)`` or ``(h, w, 4)`` (RGBA; uint16 rounded to 8-bit levels) or
    a ``(3, h, w)`` / ``(1, 3, h, w)`` tensor in [-1, 1]. Only pixels of full alpha are opaque.
    """
    if isinstance(image, torch.Tensor):
        x = image.detach().float()
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[:2] != (1, 3):
            raise ValueError(f"image tensor must be (3, h, w) or (1, 3, h, w), got {tuple(image.shape)}")
        return x.cpu().clamp(-1, 1), None
    if hasattr(image, "convert"):
        alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in getattr(image, "info", {})
        image = image.convert("RGBA" if alpha else "RGB")
    a = np.array(image)  # a writable copy
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"image array must be (h, w, 3) RGB or (h, w, 4) RGBA, got {a.shape}")
    if a.dtype == np.uint16:
        a = ((a.astype(np.float32) * np.float32(255.0 / 65535.0)) + 0.5).astype(np.uint8)
    if a.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 (or uint16), got {a.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1)[None].float() / 127.5 - 1
    if a.shape[2] == 3 or (a[..., 3] == 255).all():
        return x, None
    return x, torch.from_numpy(a[..., 3] == 255)[None, None].float()


def paste_inputs(images: Sequence[Any], directions: Sequence[Sequence[float]], equi_hw: tuple[int, int],
                 device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the input photos on an empty canvas (earlier photos win where they overlap).

    Args:
        images: photos (PIL, uint8 ``(h, w, 3)`` RGB or ``(h, w, 4)`` RGBA arrays, or ``(3, h, w)``
            tensors in [-1, 1]), any size: see :func:`_to_image_tensor`.
        directions: one ``(yaw, pitch, fov)`` per photo, degrees, fov horizontal.
        equi_hw: canvas ``(H, W)``.

    A photo finer than the canvas at its footprint is first shrunk (antialiased) to the
    canvas's pixel density, so any photo size works. Transparent pixels (alpha below full) are
    unknown: a canvas pixel is known only where every photo pixel it is sampled from is opaque,
    and a later photo may fill it. Pasted values are quantised to 8-bit levels so that the PNG
    written at the end holds them exactly.

    Returns:
        ``canvas (1, 3, H, W)`` float32 in [-1, 1] (0 where unknown) and ``known (1, 1, H, W)`` bool.

    Raises:
        ValueError: bad direction or image.
    """
    h_eq, w_eq = int(equi_hw[0]), int(equi_hw[1])
    if len(images) != len(directions):
        raise ValueError(f"{len(images)} images but {len(directions)} directions")
    canvas = torch.zeros(1, 3, h_eq, w_eq, device=device)
    known = torch.zeros(1, 1, h_eq, w_eq, dtype=torch.bool, device=device)
    for image, direction in zip(images, directions):
        yaw, pitch, fov = check_direction(direction)
        x, opacity = _to_image_tensor(image)
        x = x.to(device)
        h, w = x.shape[-2:]
        # pixel pitch at the photo's centre vs the canvas's (radians per pixel)
        fit_w = math.ceil(2 * math.tan(math.radians(fov) / 2) / (2 * math.pi / w_eq)) + 1
        fit_h = max(2, round(h * fit_w / w))
        if w > fit_w:
            x = F.interpolate(x, size=(fit_h, fit_w), mode="bilinear", antialias=True, align_corners=False)
        pasted, cover = pers_to_equi(x, yaw, pitch, fov, (h_eq, w_eq), feather=0.0)
        inside = cover > 0
        if opacity is not None:  # resampled and pasted on its own: the colours are those of the opaque photo
            opacity = opacity.to(device)
            if w > fit_w:
                opacity = F.interpolate(opacity, size=(fit_h, fit_w), mode="bilinear", antialias=True,
                                        align_corners=False)
            pasted_opacity, _ = pers_to_equi(opacity, yaw, pitch, fov, (h_eq, w_eq), feather=0.0)
            inside = inside & (pasted_opacity >= 1 - 1e-5)  # every photo pixel sampled there is opaque
        new = inside & ~known
        canvas = torch.where(new, pasted, canvas)
        known = known | new
    levels = torch.round((canvas.clamp(-1, 1) + 1) * 127.5)
    canvas = torch.where(known, levels / 127.5 - 1, torch.zeros_like(canvas))
    return canvas, known


def to_uint8(panorama: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` in [-1, 1] -> uint8 ``(H, W, 3)`` (exact for 8-bit levels)."""
    a = torch.round((panorama[0].float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    return a.permute(1, 2, 0).cpu().numpy()


# ----------------------------------------------------------------------------- pipeline
@dataclass
class OPaMaPipelineOutput(BaseOutput):
    """Result of :class:`OPaMaPipeline`.

    Attributes:
        images: ``[PIL.Image]`` (``output_type="pil"``) or ``[uint8 (H, W, 3)]`` (``"np"``) or
            the ``(1, 3, H, W)`` tensor in [-1, 1] (``"pt"``).
        input_mask: ``(H, W)`` bool, the pasted inputs' footprint (never altered).
        info: what ran: procedure, scheduler, steps, guidance, views, UNet passes, seconds per stage.
    """

    images: Any
    input_mask: np.ndarray
    info: dict = field(default_factory=dict)


class OPaMaPipeline(DiffusionPipeline):
    """Photo(s) and/or a caption -> a 360-degree equirectangular panorama (see the module docstring).

    Components are those of :class:`opama_model.presets.Components`; build one with
    :meth:`from_components`. With ``conditioner=None`` and ``image_encoder=None`` it is the training-free
    method (a Stable Diffusion inpainting checkpoint in the same loop, :mod:`opama_model.sd_inpaint`):
    tokens = the caption's text states, guidance against the empty caption, no GMA residuals. ``save_pretrained`` / ``from_pretrained`` write and read every
    component (the conditioner too).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->conditioner->unet->vae"

    def __init__(self, vae, unet, scheduler, tokenizer, text_encoder, image_encoder, conditioner):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, tokenizer=tokenizer,
                              text_encoder=text_encoder, image_encoder=image_encoder, conditioner=conditioner)
        self.unet_calls = 0
        self.unet_rows = 0

    @property
    def method(self) -> str:
        """``"sd-inpaint"`` (no conditioner: a plain SD inpainting model in the loop), ``"aog"`` or ``"opama"``."""
        if self.conditioner is None:
            return "sd-inpaint"
        return "aog" if isinstance(self.conditioner, AOGConditioner) else "opama"

    @classmethod
    def from_components(cls, comps) -> "OPaMaPipeline":
        """A pipeline over a :class:`~opama_model.presets.Components` (shares its modules)."""
        return cls(vae=comps.vae, unet=comps.unet, scheduler=comps.scheduler, tokenizer=comps.tokenizer,
                   text_encoder=comps.text_encoder, image_encoder=comps.image_encoder,
                   conditioner=comps.conditioner)

    # -- sizes
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def view_size(self) -> int:
        """Side of the generated views in pixels (UNet sample size x VAE factor)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    # -- encoders
    def _encode_text(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer([prompt], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        return self.text_encoder(input_ids=ids.to(self.text_encoder.device)).last_hidden_state.float()

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled CLIP embeddings ``(N, E)`` float32 of ``(N, 3, S, S)`` in [-1, 1] (as Components.encode_images)."""
        from .presets import CLIP_MEAN, CLIP_STD

        enc = self.image_encoder
        size = int(enc.config.image_size)
        x = (images.float() + 1) / 2
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        x = ((x.clamp(0, 1) - mean) / std).to(enc.dtype)
        return enc(pixel_values=x).image_embeds.float()

    def _vae_encode(self, image: torch.Tensor) -> torch.Tensor:
        """Deterministic latent (the posterior mean, scaled) of ``(B, 3, S, S)`` in [-1, 1]."""
        dist = self.vae.encode(image.to(self.vae.dtype)).latent_dist
        return dist.mean.float() * self.vae.config.scaling_factor

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return x.float().clamp(-1, 1)

    # -- one UNet call (counted; a fresh residual list every time)
    def _unet(self, sample: torch.Tensor, t, tokens: torch.Tensor, residuals: Sequence[torch.Tensor] | None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.unet.dtype
        self.unet_calls += 1
        self.unet_rows += sample.shape[0]
        return self.unet(
            sample.to(dtype), t, encoder_hidden_states=tokens.to(dtype), encoder_attention_mask=mask,
            down_intrablock_additional_residuals=None if residuals is None else [r.to(dtype) for r in residuals],
            return_dict=False,
        )[0].float()

    # -- the main entry point
    @torch.inference_mode()
    def __call__(
        self,
        images: Sequence[Any] | None = None,
        directions: Sequence[Sequence[float]] | None = None,
        prompt: str = "",
        *,
        height: int | None = None,
        width: int | None = None,
        procedure: str | Procedure = "fast",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        batched_cfg: bool | None = None,
        guidance_fraction: float | None = None,
        reuse_faces: bool | None = None,
        seed: int = 0,
        prompt_up: str | None = None,
        prompt_down: str | None = None,
        schedule: Sequence[tuple[float, float]] = AOG21,
        view_fov: float = 90.0,
        output_type: str = "pil",
        callback: Callable[[int, int, ViewStep], None] | None = None,
        return_dict: bool = True,
        canvas: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
    ):
        """Outpaint one panorama.

        Args:
            images: input photos (PIL, uint8 arrays or tensors in [-1, 1]); None or empty = text only.
            directions: ``(yaw, pitch, fov)`` per photo, degrees (default ``(0, 0, 90)`` each).
            prompt: the caption ("" = none), encoded once.
            height, width: canvas size, 2:1 (default :func:`default_canvas_size`).
            procedure: a :data:`PROCEDURES` name or a :class:`Procedure`; ``num_inference_steps``,
                ``guidance_scale``, ``scheduler``, ``batched_cfg``, ``guidance_fraction`` and
                ``reuse_faces`` override its fields (``batched_cfg="auto"`` is resolved for the
                pipeline's device).
            seed: seeds the CPU generator of every view's initial noise.
            prompt_up, prompt_down: captions of the views with pitch >= 45 resp. <= -45 degrees
                (None: ``prompt``), each encoded once (beyond the papers: "sky"/"floor" views are not
                asked to draw the main subject).
            schedule: generated views ``(yaw, pitch)`` in order, degrees (completion views follow).
            view_fov: horizontal fov of the generated views, degrees.
            output_type: ``"pil"``, ``"np"`` or ``"pt"``.
            callback: called after each step as ``callback(k, n_steps, step)``.
            canvas, known: instead of ``images``, a pre-pasted canvas ``(1, 3, H, W)`` in [-1, 1] (8-bit
                levels where known: they are written back unchanged) and its known mask ``(1, 1, H, W)``
                bool (equirect inpainting: known = everything outside the mask). Both or neither.

        Returns:
            :class:`OPaMaPipelineOutput` (or ``(images, input_mask, info)``).
        """
        timer = _Timer()
        proc = PROCEDURES[procedure] if isinstance(procedure, str) else procedure
        overrides = dict(steps=num_inference_steps, guidance=guidance_scale, scheduler=scheduler,
                         batched_cfg=batched_cfg, guidance_fraction=guidance_fraction, reuse_faces=reuse_faces)
        proc = Procedure(**{**asdict(proc), **{k: v for k, v in overrides.items() if v is not None}})
        device = self._execution_device
        proc = replace(proc, batched_cfg=resolve_batched_cfg(proc.batched_cfg, device))
        if proc.steps < 1:
            raise ValueError(f"steps must be >= 1, got {proc.steps}")
        size = self.view_size
        if height is None and width is None:
            height, width = default_canvas_size(size)
        elif height is None or width is None or width != 2 * height or height < 2:
            raise ValueError(f"canvas must be 2:1 (width = 2 x height), got {height}x{width} (HxW)")
        images = list(images or [])
        if directions is None:
            directions = [(0.0, 0.0, 90.0)] * len(images)
        if (canvas is None) != (known is None):
            raise ValueError("canvas and known go together: give both or neither")
        if canvas is not None:
            if images:
                raise ValueError("give images or a pre-pasted canvas, not both")
            if tuple(canvas.shape) != (1, 3, height, width) or tuple(known.shape) != (1, 1, height, width):
                raise ValueError(f"canvas (1, 3, {height}, {width}) and known (1, 1, {height}, {width}) expected, "
                                 f"got {tuple(canvas.shape)} and {tuple(known.shape)}")

        # 1. inputs and plan
        with timer("plan"):
            if canvas is None:
                canvas, known = paste_inputs(images, directions, (height, width), device=device)
                first_view = not images
            else:
                canvas, known = canvas.to(device=device, dtype=torch.float32), known.to(device=device, dtype=torch.bool)
                first_view = not bool(known.any())
            input_mask = known.clone()
            steps, _ = plan_views(known, schedule, view_fov, size, first_view=first_view)
            sched = make_scheduler(proc.scheduler, self.scheduler.config)
            sched.set_timesteps(proc.steps, device=device)
            n_evals = len(sched.timesteps)
            guided = _guided_steps(n_evals, proc.guidance, proc.guidance_fraction)
            expected_calls, expected_rows = expected_unet_passes(steps, proc, n_evals, device)

        # 2. caption, once per panorama
        with timer("encode_text"):
            text = self._encode_text(prompt)
            text_up = None if prompt_up is None else self._encode_text(prompt_up)
            text_down = None if prompt_down is None else self._encode_text(prompt_down)
            # no conditioner: guidance's null branch is the empty caption's states (diffusers' inpaint pipeline)
            null_text = self._encode_text("") if self.conditioner is None else None

        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.unet_calls = self.unet_rows = 0
        views_info = []
        reuse_faces = proc.reuse_faces and self.conditioner is not None
        faces_cache = FaceCache() if reuse_faces else None
        for k, step in enumerate(steps):
            calls0 = self.unet_calls
            # 3. the view: cut, condition, denoise, decode (known view pixels kept)
            view_text, which = self._view_text(step.pitch, text, text_up, text_down)
            view_out, generated = self._generate_view(
                canvas, known, step.yaw, step.pitch, view_fov, size, view_text, null_text, sched, proc, guided,
                generator=generator, faces_cache=faces_cache, timer=timer)
            if generated != step.generate:
                raise RuntimeError("internal: the plan and the loop disagree on a view")
            # 4. paste back only the unknown canvas pixels
            with timer("paste"):
                pasted, cover = pers_to_equi(view_out.unsqueeze(1), step.yaw, step.pitch, view_fov,
                                             (height, width), feather=0.0)
                new = (cover > 0) & ~known
                canvas = torch.where(new, pasted, canvas)
                known = known | new
            views_info.append(dict(yaw=step.yaw, pitch=step.pitch, kind=step.kind, generated=step.generate,
                                   new_pixels=step.new_pixels, unet_calls=self.unet_calls - calls0,
                                   prompt=which))
            if callback is not None:
                callback(k + 1, len(steps), step)
        if not bool(known.all()):
            raise RuntimeError(f"internal: {int((~known).sum())} canvas pixels left unfilled")

        # 5. output: 8-bit levels (the known pixels are already exact levels)
        panorama = torch.round((canvas.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1
        info = dict(
            procedure=proc.name, scheduler=proc.scheduler, scheduler_class=type(sched).__name__,
            steps=proc.steps, unet_evals_per_view=n_evals, guidance=proc.guidance, guided_evals_per_view=guided,
            method=self.method,
            batched_cfg=proc.batched_cfg, guidance_fraction=proc.guidance_fraction, reuse_faces=reuse_faces,
            faces_reused=faces_cache.reused if faces_cache is not None else 0, seed=int(seed),
            prompt=prompt, prompt_up=prompt_up, prompt_down=prompt_down, size=[height, width], view_size=size, view_fov=view_fov,
            inputs=[dict(zip(("yaw", "pitch", "fov"), check_direction(d))) for d in directions],
            views=views_info, generated_views=sum(s.generate for s in steps),
            completion_views=sum(s.kind == "completion" for s in steps),
            unet_passes=self.unet_calls, unet_rows=self.unet_rows,
            unet_passes_expected=expected_calls, unet_rows_expected=expected_rows,
            device=str(device), dtype=str(self.unet.dtype).replace("torch.", ""),
            seconds=timer.seconds(),
        )
        mask_np = input_mask[0, 0].cpu().numpy()
        if output_type == "pt":
            out = panorama
        elif output_type in ("np", "pil"):
            arr = to_uint8(panorama)
            if output_type == "pil":
                from PIL import Image

                out = [Image.fromarray(arr)]
            else:
                out = [arr]
        else:
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if not return_dict:
            return out, mask_np, info
        return OPaMaPipelineOutput(images=out, input_mask=mask_np, info=info)

    @staticmethod
    def _view_text(pitch: float, text: torch.Tensor, text_up: torch.Tensor | None,
                   text_down: torch.Tensor | None) -> tuple[torch.Tensor, str]:
        """The caption states of a view at ``pitch`` (degrees) and which: ``"up"`` (pitch >= 45 with
        ``text_up``), ``"down"`` (pitch <= -45 with ``text_down``) or ``"main"``."""
        which = ("up" if text_up is not None and pitch >= 45
                 else "down" if text_down is not None and pitch <= -45 else "main")
        return dict(up=text_up, down=text_down, main=text)[which], which

    def _generate_view(self, canvas: torch.Tensor, known: torch.Tensor, yaw: float, pitch: float, fov: float,
                       size: int, text: torch.Tensor, null_text: torch.Tensor | None, sched, proc: Procedure,
                       guided: int, *, generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                       faces_cache: "FaceCache | None" = None, init: torch.Tensor | None = None,
                       strength: float = 1.0, timer: "_Timer | None" = None) -> tuple[torch.Tensor, bool]:
        """One view of the loop: cut ``(yaw, pitch, fov)`` (degrees) at ``size`` px from the canvas
        ``(1, 3, H, W)`` / ``known (1, 1, H, W)``, condition, VAE-encode the masked view, denoise,
        decode, and keep the known view pixels.

        ``noise``: the initial noise ``(1, 4, s, s)`` (None: drawn from ``generator``). ``init``: a view
        image ``(1, 3, S, S)`` in [-1, 1] whose VAE latent, noised to ``strength`` in (0, 1], starts
        the denoising (img2img; see :meth:`_denoise`); None or strength 1: pure noise.

        Returns:
            ``(view (1, 3, S, S) in [-1, 1], generated)``: without unknown view pixels no model runs
            (``generated`` False) and the view is the canvas's.
        """
        timer = timer if timer is not None else _Timer()
        with timer("cut"):
            if self.conditioner is None:  # the UNet's inputs only: no cube faces, no GMA images
                inp = ViewInputs(*cut_view_only(canvas, known, yaw, pitch, fov, size), faces=None, gma_images=None)
            else:
                inp = cut_view(canvas, known, yaw, pitch, fov, size)
        if not bool(inp.unknown.any()):
            return inp.view, False
        with timer("condition"):
            tokens, residuals = self._condition(inp, text, faces_cache)
        with timer("encode_image"):
            masked_latents = self._vae_encode(inp.masked_image)
            lat_mask = F.interpolate(inp.unknown, size=masked_latents.shape[-2:])
            init_latents = None if init is None or strength >= 1 else self._vae_encode(init)
        with timer("denoise"):
            latents = self._denoise(sched, proc, guided, tokens, residuals, lat_mask, masked_latents,
                                    generator, null=null_text, noise=noise, init_latents=init_latents,
                                    strength=strength)
        with timer("decode"):
            decoded = self._vae_decode(latents)
        return torch.where(inp.unknown > 0.5, decoded, inp.view), True

    def _condition(self, inp, text: torch.Tensor, cache: "FaceCache | None" = None
                   ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Conditional tokens ``(1, T, D)`` and GMA residuals of one view (once per view).

        Without a conditioner (``method == "sd-inpaint"``) the tokens are the caption's text-encoder
        states ``text`` and there are no residuals (None): no CLIP image encoding, no GMA.

        With a :class:`FaceCache` (``Procedure.reuse_faces``) the CLIP embeddings and the GMA's
        per-image features of faces equal to the previous view's are taken from it; otherwise,
        and at the first view, everything is computed (the conditioner's own ``forward``).
        """
        b = inp.view.shape[0]
        text = text.expand(b, -1, -1)
        if self.conditioner is None:
            return text, None
        clip = inp.clip_images  # (B, 7, 3, S, S), the view first
        if cache is None:
            embeds = self._encode_images(clip.flatten(0, 1)).view(b, clip.shape[1], -1)
            out = self.conditioner(inp.gma_images.float(), embeds, text)
            return out.encoder_hidden_states, list(out.down_intrablock_additional_residuals)
        global_branch, local_branch = self.conditioner._branches()
        embeds = cache.clip_embeds(inp.faces, inp.view, self._encode_images)
        tokens = global_branch(embeds, text)
        images = inp.gma_images.float()
        if isinstance(local_branch, GMA) and all(getattr(st, "ring", None) is None for st in local_branch.stages):
            residuals = cache.gma_residuals(local_branch, images)
        else:
            residuals = list(local_branch(images))
        return tokens, residuals

    def _denoise(self, sched, proc: Procedure, guided: int, tokens: torch.Tensor,
                 residuals: list[torch.Tensor] | None, lat_mask: torch.Tensor, masked_latents: torch.Tensor,
                 generator: torch.Generator | None, null: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, init_latents: torch.Tensor | None = None,
                 strength: float = 1.0) -> torch.Tensor:
        """Denoise one view's latent ``(1, 4, h, w)`` with guidance in the first ``guided`` evaluations.

        ``null``: the null branch's tokens ``(1, T, D)`` (the empty caption's states when there is no
        conditioner); None: the conditioner's learned null tokens. ``residuals`` None: no GMA.
        ``noise``: the initial noise (None: drawn from ``generator``, CPU, float32).

        Partial noising (``init_latents`` given and ``strength < 1``; diffusers' img2img semantics): of
        the ``steps`` inference steps only the last ``floor(steps * strength)`` run, starting from
        ``scheduler.add_noise(init_latents, noise, t_start)``; guidance stays on the evaluations of
        the full schedule's first ``guided`` (so a low strength may run unguided). Otherwise the
        start is ``noise * init_noise_sigma`` (the image path).
        """
        device = masked_latents.device
        b = masked_latents.shape[0]
        dtype = self.unet.dtype  # cast once per view, not per call
        tokens = tokens.to(dtype)
        residuals = None if residuals is None else [r.to(dtype) for r in residuals]
        null = (self.conditioner.null_condition(b) if null is None else null.expand(b, -1, -1)).to(dtype)
        if proc.batched_cfg:  # one call: [cond; null] (padded to T and masked when shorter)
            if null.shape[1] == tokens.shape[1]:
                both_tokens, both_mask = torch.cat((tokens, null)), None
            else:
                null_padded, null_mask = pad_tokens(null, tokens.shape[1])
                both_tokens = torch.cat((tokens, null_padded))
                both_mask = torch.cat((torch.ones_like(null_mask), null_mask))
            both_res = None if residuals is None else [torch.cat((r, r)) for r in residuals]
        sched.set_timesteps(proc.steps, device=device)
        shape = (b, int(self.unet.config.out_channels), *masked_latents.shape[-2:])
        if noise is None:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must be {shape}, got {tuple(noise.shape)}")
        noise = noise.to(device)
        timesteps, start = sched.timesteps, 0
        if init_latents is None or strength >= 1:
            latents = noise * sched.init_noise_sigma
        else:
            n_run = min(int(math.floor(proc.steps * strength + 1e-9)), proc.steps)
            if n_run < 1:
                return init_latents.float()
            start = (proc.steps - n_run) * sched.order
            timesteps = sched.timesteps[start:]
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(start)
            latents = sched.add_noise(init_latents.float(), noise, timesteps[:1])
        for i, t in enumerate(timesteps):
            x = torch.cat((sched.scale_model_input(latents, t), lat_mask, masked_latents), dim=1)
            if start + i >= guided:
                eps = self._unet(x, t, tokens, residuals)
            elif proc.batched_cfg:
                eps_c, eps_u = self._unet(torch.cat((x, x)), t, both_tokens, both_res, both_mask).chunk(2)
                eps = eps_u + proc.guidance * (eps_c - eps_u)
            else:
                eps_c = self._unet(x, t, tokens, residuals)
                eps_u = self._unet(x, t, null, residuals)
                eps = eps_u + proc.guidance * (eps_c - eps_u)
            latents = sched.step(eps, t, latents, return_dict=False)[0]
        return latents


class FaceCache:
    """Per-panorama cache of the cube faces' CLIP embeddings and GMA per-image features
    (``Procedure.reuse_faces``).

    A face is reused when its pixels (the CLIP input ``(B, 3, S, S)``, resp. the GMA input
    ``(B, 5, S, S)``) equal the previous view's exactly (``torch.equal``); changed faces and the
    view are computed in one smaller batch. ``reused`` counts reused face encodings (CLIP and
    GMA separately).
    """

    def __init__(self) -> None:
        self._clip_in: torch.Tensor | None = None  # (B, 6, 3, S, S)
        self._clip_out: torch.Tensor | None = None  # (B, 6, E)
        self._gma_in: torch.Tensor | None = None  # (B, 6, 5, S, S)
        self._gma_state: dict | None = None  # per-face stem/stage outputs and cross-stage block-pair inputs
        self.reused = 0

    @staticmethod
    def _same(prev: torch.Tensor | None, cur: torch.Tensor) -> list[bool]:
        n = cur.shape[1]
        if prev is None or prev.shape != cur.shape:
            return [False] * n
        return [torch.equal(prev[:, i], cur[:, i]) for i in range(n)]

    def clip_embeds(self, faces: torch.Tensor, view: torch.Tensor, encode: Callable) -> torch.Tensor:
        """``(B, 7, E)`` embeddings, the view first (``encode``: ``(N, 3, S, S) -> (N, E)``)."""
        b = view.shape[0]
        same = self._same(self._clip_in, faces)
        todo = [i for i, s in enumerate(same) if not s]
        x = torch.cat((view.unsqueeze(1), faces[:, todo]), dim=1)  # (B, 1 + m, 3, S, S)
        new = encode(x.flatten(0, 1)).view(b, x.shape[1], -1)
        if self._clip_out is None:
            out = new[:, 1:].clone()
        else:
            out = self._clip_out.clone()
            out[:, todo] = new[:, 1:]
        self.reused += len(same) - len(todo)
        self._clip_in, self._clip_out = faces.clone(), out
        return torch.cat((new[:, :1], out), dim=1)

    def gma_residuals(self, gma: GMA, images: torch.Tensor) -> list[torch.Tensor]:
        """The view's GMA features per stage (as ``gma(images)``), ``images (B, 7, 5, S, S)``
        (faces then the view, :data:`opama_model.gma.VIEW_INDEX` last).

        What is recomputed: the stem and every stage that treats each image alone (no
        cross-image or ring blocks) for the changed faces and the view only. A cross-image block
        scans the 7 images causally (F R B L U D, then the view), so a face's features depend on
        itself and the faces before it only: in those stages the faces before the first changed
        one keep their cached block inputs and outputs, and only the later faces' per-image
        blocks run (the cross block runs on all 7 images, the cached ones included).
        """
        b, n = images.shape[:2]
        if n - 1 != VIEW_INDEX:
            raise ValueError(f"GMA images must be 6 faces then the view, got {n}")
        faces = images[:, :VIEW_INDEX]
        same = self._same(self._gma_in, faces)
        changed = [i for i, s in enumerate(same) if not s]
        first = changed[0] if changed else VIEW_INDEX
        old = self._gma_state
        state: dict = {"stem": None, "out": [], "pairs": []}
        idx = changed + [VIEW_INDEX]  # images whose features are computed (sorted, the view last)
        x = gma.stem(images[:, idx].flatten(0, 1)).unflatten(0, (b, len(idx)))
        x = x + gma.image_embed[idx][None, :, :, None, None]
        prev_faces = self._merge(old["stem"] if old else None, x, idx)
        state["stem"] = prev_faces
        residuals = []
        for k, stage in enumerate(gma.stages):
            if getattr(stage, "ring", None) is not None:
                raise ValueError("face reuse does not support the GMA ring scan (its faces are not causal)")
            if len(stage.cross) == 0:
                x = stage(x)
                state["pairs"].append(None)
            else:
                want = list(range(first, VIEW_INDEX)) + [VIEW_INDEX]
                if want != idx:  # widen to every face from the first changed one (cached inputs)
                    pos = {i: j for j, i in enumerate(idx)}
                    x = torch.stack([x[:, pos[i]] if i in pos else prev_faces[:, i] for i in want], dim=1)
                    idx = want
                x, pairs = stage.forward_from(x, first, old["pairs"][k] if old else None, keep_pairs=True)
                state["pairs"].append(pairs)
            prev_faces = self._merge(old["out"][k] if old else None, x, idx)
            state["out"].append(prev_faces)
            residuals.append(x[:, -1].contiguous())
        self.reused += len(same) - len(changed)
        self._gma_in, self._gma_state = faces.clone(), state
        return residuals

    @staticmethod
    def _merge(cached: torch.Tensor | None, x: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """``(B, 6, ...)`` face features: ``cached`` with the faces of ``idx`` (``x[:, j]`` for
        ``idx[j]``; the view, last, is left out) replaced."""
        faces = idx[:-1]
        if cached is None:
            if faces != list(range(VIEW_INDEX)):
                raise RuntimeError("internal: face cache without a first full view")
            return x[:, :-1].clone()
        out = cached.clone()
        if faces:
            out[:, faces] = x[:, :-1]
        return out

class _Timer:
    """Accumulates wall seconds per stage (CUDA synchronised at each stage's end)."""

    def __init__(self) -> None:
        self._s: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    torch.cuda.synchronize()
                timer.add(name, time.perf_counter() - self.t)

        return _Ctx()

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name``."""
        self._s[name] = self._s.get(name, 0.0) + seconds

    def seconds(self) -> dict[str, float]:
        out = {k: round(v, 4) for k, v in self._s.items()}
        out["total"] = round(time.perf_counter() - self._t0, 4)
        return out
