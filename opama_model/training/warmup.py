"""Warm-ups of a random backbone (the tiny recipe): fit the VAE, then pre-train the UNet as a plain
inpainting model, before the conditioner trains on the frozen result.

They stand in for the pretraining a random backbone lacks (SD-2's VAE and SD-2-inpainting's UNet).
Every random draw comes from ``(seed, stream key, step)`` (:func:`.sample.seeded_rng`), so a
warm-up gives the same weights in every run and process. ``report(step, total, loss, lr)`` is
called after each step (1-based ``step``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .data import PanoramaDataset
from .sample import compose_caption, draw_sample_params, make_sample, seeded_rng
from .step import draw_step, unet_inputs

__all__ = ["WARMUP_LR", "UNET_CONTEXTS", "warmup_lr_factor", "warmup_context", "POSTERIOR_LOGVAR", "deterministic_posterior_", "vae_warmup",
           "unet_warmup", "VAE_KEY", "UNET_KEY"]

VAE_KEY = 5
UNET_KEY = 6

Report = Callable[[int, int, float, float], None]

WARMUP_LR = ("constant", "cosine")
"""Learning-rate shapes of the VAE and UNet warm-ups (``TrainConfig.warmup_lr``)."""

UNET_CONTEXTS = ("null", "text")
"""What the UNet warm-up's cross-attention sees (``TrainConfig.unet_warmup_context``): the
conditioner's null tokens, or the caption's text-encoder states (as SD-2-inpainting was trained)."""


def warmup_lr_factor(kind: str, step: int, steps: int) -> float:
    """Factor on a warm-up's learning rate at ``step`` (0-based) of ``steps``: 1 (``constant``),
    or ``cosine``: ``(1 + cos(pi * step / steps)) / 2``, from 1 down towards 0 at the end, so the
    warmed-up weights are not wherever the last full-size noisy updates left them."""
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))
    raise ValueError(f"warm-up lr shape must be one of {', '.join(WARMUP_LR)}, got {kind!r}")


POSTERIOR_LOGVAR = -30.0
"""Log-variance the VAE warm-up gives every latent: the floor diffusers clamps to, so the posterior is
the mean (standard deviation ``exp(-15)``), as good as deterministic like SD's pretrained VAE."""


def deterministic_posterior_(vae) -> None:
    """Make ``vae``'s posterior a point mass at its mean, in place: the log-variance half of the
    layer that outputs the moments (``quant_conv``, or the encoder's ``conv_out`` without one) gets
    zero weights and bias :data:`POSTERIOR_LOGVAR`. The mean half is untouched."""
    layer = vae.quant_conv if getattr(vae, "quant_conv", None) is not None else vae.encoder.conv_out
    c = layer.out_channels // 2
    with torch.no_grad():
        layer.weight[c:].zero_()
        layer.bias[c:].fill_(POSTERIOR_LOGVAR)


def vae_warmup(comps, dataset: PanoramaDataset, device, *, steps: int, lr: float, batch: int,
               lr_shape: str = "constant", seed: int = 0, report: Report | None = None) -> float:
    """Fit the (random) VAE as an autoencoder on random views (decoding the posterior mean), make
    its posterior deterministic (:func:`deterministic_posterior_`), set ``scaling_factor`` to 1 / std
    of its latents (as SD chose 0.18215), then freeze it. Returns the last loss.

    Views: ``batch`` per step, random panorama, yaw uniform in [-180, 180), pitch in [-60, 60)
    degrees, fov 90, bilinear. AdamW without weight decay at ``lr`` times :func:`warmup_lr_factor`.

    Why deterministic: SD's pretrained VAE has a negligible posterior spread; a random VAE trained
    for a few hundred steps on sampled latents keeps a spread of ~0.65 of the latent std
    (measured), and the training step samples the posterior, which would put that noise into every
    target and masked-image latent, an error floor no UNet or conditioner could learn below."""
    from ..spherical import equi_to_pers

    vae = comps.vae
    vae.requires_grad_(True)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    s = dataset.settings.view_size
    n = len(dataset)

    def views(step: int, b: int) -> torch.Tensor:
        rng = seeded_rng(seed, VAE_KEY, step)
        out = []
        for _ in range(b):
            pano = dataset.panorama(int(rng.integers(0, n))).unsqueeze(0)
            yaw, pitch = float(rng.uniform(-180, 180)), float(rng.uniform(-60, 60))
            out.append(equi_to_pers(pano, yaw, pitch, 90.0, (s, s), mode="bilinear")[0, 0])
        return torch.stack(out).to(device)

    loss_v = float("nan")
    for step in range(steps):
        lr_now = lr * warmup_lr_factor(lr_shape, step, steps)
        for group in opt.param_groups:
            group["lr"] = lr_now
        x = views(step, batch)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        loss = torch.nn.functional.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_v = float(loss.detach())
        if report is not None:
            report(step + 1, steps, loss_v, lr_now)
    vae.eval()
    vae.requires_grad_(False)
    deterministic_posterior_(vae)
    with torch.no_grad():
        z = torch.cat([vae.encode(views(10_000 + i, batch)).latent_dist.mean for i in range(4)])
        std = float(z.float().std())
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    return loss_v


def warmup_context(comps, captions: list[str], drop: list[bool]) -> torch.Tensor:
    """The text context of the UNet warm-up: the frozen text encoder's last hidden states
    ``(B, 77, D)`` of ``captions``, the empty caption's states where ``drop`` is true (guidance
    dropout, as SD's text-conditioned training)."""
    with torch.no_grad():
        return comps.encode_text(["" if d else c for c, d in zip(captions, drop)]).detach()


def unet_warmup(comps, dataset: PanoramaDataset, device, *, steps: int, lr: float, batch: int,
                lr_shape: str = "constant", seed: int = 0, weight_decay: float = 0.01, clip: float = 0.5,
                offset_noise: float = 0.1, context: str = "null", text_dropout: float = 0.1,
                report: Report | None = None) -> float:
    """Pre-train the (random) UNet as a plain inpainting model, standing in for the inpainting
    pre-training of SD-2-inpainting: samples drawn as the training samples (step ``k``, yaw,
    target view, unknown mask, masked image), the same noise and loss and no adapter residuals.

    ``context`` (:data:`UNET_CONTEXTS`): ``"null"``, the conditioner's null tokens (as
    initialised, not trained here) as the whole context; ``"text"`` (beyond the papers), the
    sample's caption (global + random per-view captions, :func:`.sample.compose_caption`) through
    the frozen text encoder, replaced by the empty caption's states with probability
    ``text_dropout`` (:func:`warmup_context`), so the UNet becomes a text-conditioned inpainting
    model that the training-free path (:mod:`opama_model.sd_inpaint`) can run on its own. The
    caption and dropout draws come after the sample's own from the step's generator, so ``"null"``
    draws exactly what it drew before.
    AdamW (``weight_decay``), gradient-norm clipping at ``clip`` (0 = off).
    Leaves the UNet in train mode with gradients on; returns the last loss."""
    if context not in UNET_CONTEXTS:
        raise ValueError(f"UNet warm-up context must be one of {', '.join(UNET_CONTEXTS)}, got {context!r}")
    unet = comps.unet
    unet.requires_grad_(True)
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=weight_decay)
    settings = dataset.settings
    n = len(dataset)
    latent_shape = (int(comps.unet.config.out_channels), comps.preset.latent_size, comps.preset.latent_size)
    num_t = int(comps.scheduler.config.num_train_timesteps)
    null_context = None
    if context == "null":
        with torch.no_grad():
            null_context = comps.conditioner.null_condition(batch).detach().to(device)
    loss_v = float("nan")
    for step in range(steps):
        lr_now = lr * warmup_lr_factor(lr_shape, step, steps)
        for group in opt.param_groups:
            group["lr"] = lr_now
        rng = seeded_rng(seed, UNET_KEY, step)
        samples, captions, drop = [], [], []
        for _ in range(batch):
            k, yaw = draw_sample_params(rng, settings)
            i = int(rng.integers(0, n))
            samples.append(make_sample(dataset.panorama(i), k, yaw, settings, unet_only=True))
            if context == "text":
                rec = dataset.records[i]
                captions.append(compose_caption(rec.caption, rec.view_captions, rng, settings.max_view_captions))
                drop.append(bool(rng.random() < text_dropout))
        b = {key: torch.stack([x[key] for x in samples]) for key in ("target", "unknown", "masked_image")}
        draws = draw_step(seed, step, range(batch), latent_shape, num_t, stream=UNET_KEY).to(device)
        x, t, target = unet_inputs(comps.vae, comps.scheduler, b, draws, offset_noise=offset_noise, device=device)
        ctx = null_context if context == "null" else warmup_context(comps, captions, drop).to(device)
        pred = unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), clip)
        opt.step()
        loss_v = float(loss.detach())
        if report is not None:
            report(step + 1, steps, loss_v, lr_now)
    return loss_v
