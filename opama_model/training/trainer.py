"""The training loop (``opama train``): accelerate, checkpoints, exact resume, EMA, validation, logs.

:func:`train` is the one entry point (the CLI and the demo call it). It runs unchanged in one
process (CPU or one GPU) or under ``accelerate launch --num_processes N`` (data parallel; gloo
on CPU): each process takes its slice of every global micro-batch (:mod:`.data`), gradients are
averaged by DDP, and only the main process logs and writes files.

Exact resume: every random draw is a function of ``(seed, position)`` (:mod:`.data`,
:mod:`.step`), so a checkpoint needs the weights, the optimizer and the run state
(:class:`.checkpoint.RunState`: step, micro-batches done, LR-scheduler, EMA, grad-scaler and torch
RNG states), written by :func:`.checkpoint.save_checkpoint` and put back by ``_restore_run``. On
CPU, a run killed with SIGKILL and resumed reaches bit-identical weights. SIGTERM
(:func:`opama_model.fileio.stop_raises`) ends the current step, saves a checkpoint and returns
with ``stopped``.

Memory: ``--mixed-precision fp16|bf16`` autocasts and stores the frozen parts in that dtype
(:func:`cast_frozen_`; the trained conditioner keeps fp32 weights); ``--gradient-checkpointing``
recomputes the Mamba blocks and the UNet blocks in the backward pass (:func:`enable_checkpointing`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..fileio import Terminated, atomic_path, atomic_write_text, check_stop, stop_raises
from .checkpoint import (STATE_FILE, CheckpointError, RunState, capture_rng, latest_checkpoint, load_optimizer_state,
                         load_run_state, load_safetensors, restore_rng, save_checkpoint)
from .data import PanoramaDataset, PanoramaRecord, StreamSampler
from .sample import SampleSettings, canvas_size, warm_sample_caches
from .step import MODE_CAPTION, GuidanceProbs, Parts, diffusion_loss, draw_step, generate_view
from .warmup import UNET_CONTEXTS, WARMUP_LR, unet_warmup, vae_warmup

__all__ = ["TrainConfig", "TrainProgress", "RunResult", "TrainError", "train", "optimizer_groups", "make_optimizer",
           "recipe_hint", "cast_frozen_", "enable_checkpointing", "OPTIMIZERS",
           "embedding_parameter_names", "LOG_COLUMNS"]

LOG_COLUMNS = ("step", "phase", "time_s", "loss", "lr", "samples_per_s", "val_loss")
VAL_SEED = 20240710  # fixed: validation draws never change across steps or runs


class TrainError(ValueError):
    """A user error (bad data, options, checkpoint, out of memory): a one-line message."""


@dataclass
class TrainConfig:
    """Everything a run needs besides the data. Angles in degrees, sizes in pixels.

    Reference values (OPa-Ma ``configs/train_indoor_mamba.yaml``): AdamW lr 1e-4, betas
    (0.9, 0.999), weight decay 0.01 on everything, constant LR, grad-clip 0.5, no EMA, offset
    noise 0.1, guidance dropout 20% null / 40% empty caption, frozen UNet/VAE/CLIP.

    ``prediction_type`` (None = the backbone scheduler's, epsilon for sd2-inpainting and tiny)
    overrides what the UNet predicts, ``"epsilon"`` or ``"v_prediction"``; the model folder keeps
    the scheduler config so outpainting samples with the same parametrisation. Beyond the
    reference (off by default); the tiny demo recipe uses v because a UNet trained from scratch
    for minutes with epsilon does not learn the colours of the unknown region (docs/training.md).

    ``unet_warmup_context`` (``"null"`` | ``"text"``) and ``unet_warmup_dropout``: the context of
    the ``unet_steps`` warm-up (:func:`.warmup.unet_warmup`): the conditioner's null tokens
    (default), or the caption's text-encoder states, the empty caption's with probability
    ``unet_warmup_dropout`` (beyond the papers; the demo uses it, so its UNet is a
    text-conditioned inpainting model like SD-2-inpainting).
    """

    out: str
    preset: str = "tiny"
    conditioner: str = "opama"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    no_decay_ssm: bool = False
    warmup_steps: int = 0
    clip: float = 0.5
    ema: float = 0.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    save_every: int = 500
    keep: int = 3
    val_every: int = 500
    val_count: int = 10
    panel_count: int = 4
    panel_steps: int = 20
    guidance: float = 2.5
    seed: int = 0
    resume: bool = False
    num_workers: int | None = None
    train_backbone: bool = False
    vae_steps: int = 0
    vae_lr: float = 1e-3
    vae_batch: int = 8
    unet_steps: int = 0
    unet_lr: float = 2e-3
    unet_batch: int = 8
    warmup_lr: str = "constant"
    unet_warmup_context: str = "null"
    unet_warmup_dropout: float = 0.1
    empty_canvas_prob: float = 0.0
    canvas_hw: tuple[int, int] | None = None
    offset_noise: float = 0.1
    prediction_type: str | None = None
    null_prob: float = 0.2
    empty_caption_prob: float = 0.4
    max_view_captions: int = 4
    random_weights: bool = False
    weights: dict | None = None
    cpu: bool = False

    def to_json(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["canvas_hw"] = list(self.canvas_hw) if self.canvas_hw else None
        return d


@dataclass
class TrainProgress:
    """One progress event: ``phase`` is ``"vae"`` / ``"unet"`` (warm-ups), ``"train"`` or ``"val"``."""

    phase: str
    step: int
    total: int
    loss: float | None = None
    lr: float | None = None
    steps_per_s: float | None = None
    val_loss: float | None = None


@dataclass
class RunResult:
    """What a run did. ``stopped``: interrupted by SIGTERM (a checkpoint was saved)."""

    out: Path
    model_dir: Path | None
    step: int
    total_steps: int
    trained: tuple[str, ...]
    losses: list[float] = field(default_factory=list)
    val_loss: float | None = None
    resumed_from: Path | None = None
    seconds: float = 0.0
    stopped: bool = False
    checkpoint: Path | None = None


# ----------------------------------------------------------------------------- optimiser
def embedding_parameter_names(model: torch.nn.Module) -> set[str]:
    """Embedding-like parameters (``nn.Embedding`` weights, learned null tokens, type / position /
    per-image embeddings): mamba-ssm's recipe does not decay them."""
    names = set()
    for prefix, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            full = f"{prefix}.{pname}" if prefix else pname
            leaf = pname.lower()
            if isinstance(mod, torch.nn.Embedding) or leaf == "null_tokens" or "embed" in leaf or \
                    leaf.endswith("_type") or leaf.endswith("_pos") or leaf.startswith("pos_"):
                names.add(full)
    return names


def optimizer_groups(modules: dict[str, torch.nn.Module], weight_decay: float, no_decay_ssm: bool) -> list[dict]:
    """AdamW parameter groups: everything decays (as the reference) unless ``no_decay_ssm``, which
    moves Mamba's ``A_log``/``D`` (:func:`opama_model.mamba.no_weight_decay_names`) and the
    embeddings to a group without decay."""
    from ..mamba import no_weight_decay_names

    decay, no_decay = [], []
    for mod in modules.values():
        skip = (no_weight_decay_names(mod) | embedding_parameter_names(mod)) if no_decay_ssm else set()
        for name, p in mod.named_parameters():
            if p.requires_grad:
                (no_decay if name in skip else decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay)]
    if no_decay:
        groups.append(dict(params=no_decay, weight_decay=0.0))
    return groups


class EMA:
    """Exponential moving average of the trainable weights (``decay`` with the usual warm-up
    ``min(decay, (1 + n) / (10 + n))``)."""

    def __init__(self, named: dict[str, torch.nn.Parameter], decay: float):
        self.named, self.decay, self.updates = named, decay, 0
        self.shadow = {k: p.detach().clone().float() for k, p in named.items()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, p in self.named.items():
            self.shadow[k].lerp_(p.detach().float(), 1 - d)

    @contextlib.contextmanager
    def applied(self):
        """Temporarily copy the EMA weights into the model."""
        saved = {k: p.detach().clone() for k, p in self.named.items()}
        with torch.no_grad():
            for k, p in self.named.items():
                p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.named.items():
                    p.copy_(saved[k])


# ----------------------------------------------------------------------------- helpers
def _collate(items: list[dict]) -> dict:
    from torch.utils.data import default_collate

    return default_collate(items)


def _check_config(cfg: TrainConfig, n_train: int) -> int:
    """Validate options; returns the number of optimiser steps."""
    def bad(msg):
        raise TrainError(msg)

    if cfg.preset not in ("tiny", "sd2"):
        bad(f"--preset: unknown preset {cfg.preset!r} (tiny or sd2)")
    if cfg.conditioner not in ("opama", "aog"):
        bad(f"--conditioner: {cfg.conditioner!r} is not opama or aog")
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        bad(f"--mixed-precision: {cfg.mixed_precision!r} is not no, fp16 or bf16")
    from ..presets import PREDICTION_TYPES

    if cfg.prediction_type is not None and cfg.prediction_type not in PREDICTION_TYPES:
        bad(f"--prediction-type: {cfg.prediction_type!r} is not epsilon or v_prediction")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        bad(f"--num-workers: must be 0 or more, got {cfg.num_workers}")
    if cfg.optimizer not in OPTIMIZERS:
        bad(f"--optimizer: {cfg.optimizer!r} is not {' or '.join(OPTIMIZERS)}")
    if cfg.optimizer == "adamw8bit":
        reason = _adamw8bit_unavailable(cfg.cpu)
        if reason:
            bad(f"--optimizer adamw8bit: {reason}; use --optimizer adamw")
    for name, v in (("--batch-size", cfg.batch_size), ("--grad-accum", cfg.grad_accum)):
        if v < 1:
            bad(f"{name}: must be at least 1, got {v}")
    if cfg.lr <= 0 or not math.isfinite(cfg.lr):
        bad(f"--lr: must be a positive number, got {cfg.lr}")
    if cfg.warmup_lr not in WARMUP_LR:
        bad(f"--warmup-lr: must be one of {', '.join(WARMUP_LR)}, got {cfg.warmup_lr!r}")
    if cfg.unet_warmup_context not in UNET_CONTEXTS:
        bad(f"--unet-context: must be one of {', '.join(UNET_CONTEXTS)}, got {cfg.unet_warmup_context!r}")
    for name, v in (("--vae-steps", cfg.vae_steps), ("--unet-steps", cfg.unet_steps)):
        if v < 0:
            bad(f"{name}: must be 0 or more, got {v}")
    if cfg.unet_steps > 0:
        if _pretrained(cfg.preset) and not cfg.random_weights:
            bad(f"--unet-steps: the {cfg.preset} UNet is pretrained; the warm-up is for random backbones (tiny)")
        if cfg.unet_lr <= 0 or not math.isfinite(cfg.unet_lr) or cfg.unet_batch < 1:
            bad(f"--unet-lr / unet batch: must be positive, got {cfg.unet_lr} / {cfg.unet_batch}")
    for name, v in (("--empty-canvas-prob", cfg.empty_canvas_prob), ("null_prob", cfg.null_prob),
                    ("--unet-context-dropout", cfg.unet_warmup_dropout),
                    ("empty_caption_prob", cfg.empty_caption_prob)):
        if not 0 <= v <= 1:
            bad(f"{name}: must be within [0, 1], got {v}")
    if cfg.null_prob + cfg.empty_caption_prob > 1:
        bad("guidance dropout probabilities add up to more than 1")
    if not 0 <= cfg.ema < 1:
        bad(f"--ema: decay must be within [0, 1), got {cfg.ema}")
    if cfg.canvas_hw is not None and (cfg.canvas_hw[1] != 2 * cfg.canvas_hw[0] or cfg.canvas_hw[0] < 8):
        bad(f"--canvas: must be 2:1 (H x 2H), got {cfg.canvas_hw[0]}x{cfg.canvas_hw[1]}")
    if (cfg.steps is None) == (cfg.epochs is None):
        bad("give exactly one of --steps and --epochs")
    if cfg.steps is not None:
        if cfg.steps < 1:
            bad(f"--steps: must be at least 1, got {cfg.steps}")
        return int(cfg.steps)
    if not cfg.epochs > 0:
        bad(f"--epochs: must be positive, got {cfg.epochs}")
    return -1  # resolved once the world size is known


OPTIMIZERS = ("adamw", "adamw8bit")
FROZEN_PARTS = ("unet", "vae", "text_encoder", "image_encoder")
MIXED_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def default_num_workers(device: torch.device) -> int:
    """Data-loader workers when ``--num-workers`` is not given: 0 on the CPU (the step is far slower
    than building a sample, and workers would compete for the same cores), ``min(4, cores - 1)``
    on a GPU (a sample at the sd2 canvas takes a fraction of a second of one core)."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


def _adamw8bit_unavailable(cpu: bool) -> str | None:
    """Why bitsandbytes' 8-bit AdamW cannot run here (None when it can)."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "needs the bitsandbytes package (pip install bitsandbytes), which is not installed"
    if cpu or not torch.cuda.is_available():
        return "needs a CUDA GPU (bitsandbytes' 8-bit optimiser states live on the GPU)"
    return None


def make_optimizer(kind: str, groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """AdamW (``"adamw"``, torch) or 8-bit AdamW (``"adamw8bit"``, bitsandbytes, CUDA only) over ``groups``."""
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=lr, betas=tuple(betas))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def recipe_hint(cfg: TrainConfig) -> str | None:
    """A one-line recommendation when a random backbone is trained without the warm-ups (the
    conditioner alone on a random VAE and UNet gives noise), else None."""
    random_backbone = cfg.random_weights or not _pretrained(cfg.preset)
    if not random_backbone or cfg.vae_steps > 0 or cfg.unet_steps > 0 or cfg.resume:
        return None
    return (f"note: the {cfg.preset} backbone is random and no warm-up was asked for, so the model will generate "
            "noise; the recipe first fits the VAE and the UNet: --vae-steps 600 --unet-steps 600 (see docs/training.md)")


def cast_frozen_(comps, dtype: torch.dtype | None, keep: Sequence[str] = ()) -> list[str]:
    """Store the frozen parts (UNet, VAE, CLIP encoders) in ``dtype`` (e.g. the mixed-precision
    dtype), except those named in ``keep`` (trained or saved parts stay float32); the conditioner
    is never cast. Returns the names cast."""
    if dtype is None:
        return []
    done = []
    for name in FROZEN_PARTS:
        m = getattr(comps, name, None)
        if m is None or name in keep or any(p.requires_grad for p in m.parameters()):
            continue
        m.to(dtype=dtype)
        done.append(name)
    return done


def enable_checkpointing(comps, conditioner) -> None:
    """Gradient checkpointing: the conditioner's Mamba blocks (GMA, VCR) and the UNet's blocks
    recompute their activations in the backward pass (``use_reentrant=False``). Gradients still
    flow through the frozen UNet into the conditioner's residuals and tokens."""
    if getattr(conditioner, "_supports_gradient_checkpointing", False):
        conditioner.enable_gradient_checkpointing()
    comps.unet.enable_gradient_checkpointing()


def _phase_report(phase: str, report: Callable[[TrainProgress], None] | None):
    """A warm-up's ``report(step, total, loss, lr)`` as :class:`TrainProgress` events (None: silent)."""
    if report is None:
        return None
    return lambda step, total, loss, lr: report(TrainProgress(phase, step, total, loss=loss, lr=lr))


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


class _Log:
    """``RUN_DIR/log.csv`` (main process), TensorBoard when installed."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / "log.csv"
        rows = []
        if resume_step is not None and self.path.exists():
            with self.path.open(newline="") as f:
                for r in csv.DictReader(f):
                    try:
                        if int(r["step"]) <= resume_step:
                            rows.append(r)
                    except (KeyError, ValueError):
                        continue
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in LOG_COLUMNS})
        self.f = self.path.open("a", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=LOG_COLUMNS)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def row(self, **kw) -> None:
        self.w.writerow({k: (_fmt(v) if isinstance(v, float) else v) for k, v in kw.items()})
        self.f.flush()
        if self.tb is not None:
            for k in ("loss", "lr", "val_loss", "samples_per_s"):
                if kw.get(k) is not None:
                    self.tb.add_scalar(f"{kw.get('phase', 'train')}/{k}", kw[k], kw["step"])

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()


def _save_panel(path: Path, rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """PNG grid, one row per sample: masked input (unknown grey), generated view, target."""
    import numpy as np
    from PIL import Image

    def img(x):
        return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

    grid = np.concatenate([np.concatenate([img(a), img(b), img(c)], axis=1) for a, b, c in rows], axis=0)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp)


# ----------------------------------------------------------------------------- train
def train(cfg: TrainConfig, data: Sequence[PanoramaRecord], val_data: Sequence[PanoramaRecord] | None = None,
          progress: Callable[[TrainProgress], None] | None = None) -> RunResult:
    """Train the conditioner (and, on request, the UNet / a VAE warm-up) on ``data``.

    Args:
        cfg: options (:class:`TrainConfig`); ``cfg.out`` is the run folder.
        data: training panoramas with their captions (``opama_tools.data.train_data`` builds them).
        val_data: validation panoramas (never the test split), or None.
        progress: called with a :class:`TrainProgress` on the main process.

    Returns:
        :class:`RunResult`; the final model is ``RUN_DIR/model`` (:func:`opama_model.model_dir.save_model_dir`).

    Raises:
        TrainError: bad options, data or checkpoint, out of memory (one-line message).
        MissingWeightsError: the preset's pretrained weights are not found (``opama doctor`` message).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    t_start = time.time()
    total = _check_config(cfg, len(data))
    if not data:
        raise TrainError("no training panoramas")
    report = progress or (lambda p: None)
    run_dir = Path(cfg.out)

    # Several processes and no GPU (``accelerate launch --multi_gpu`` / ``torchrun`` on a CPU machine):
    # accelerate only sets up its gloo process group when told to use the CPU.
    cpu = cfg.cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    _forget_other_precision(cfg.mixed_precision)
    try:
        accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu,
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    except ValueError as e:  # e.g. fp16 without a GPU
        raise TrainError(f"--mixed-precision {cfg.mixed_precision}: {str(e).splitlines()[0]}") from None
    main, world, rank, device = accelerator.is_main_process, accelerator.num_processes, \
        accelerator.process_index, accelerator.device
    global_batch = cfg.batch_size * world
    if total < 0:
        total = max(1, math.ceil(cfg.epochs * len(data) / (global_batch * cfg.grad_accum)))

    # ---- resume point
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if not cfg.resume and latest_checkpoint(run_dir) is not None:
        raise TrainError(f"{run_dir}: already holds checkpoints; pass --resume to continue or choose another --out")
    state = load_run_state(ckpt, rank, ema=cfg.ema > 0) if ckpt is not None else None
    if state is not None:
        old = state.config
        for key in ("preset", "conditioner", "train_backbone", "canvas_hw", "prediction_type", "unet_warmup_context"):
            if key in old and old[key] != cfg.to_json()[key]:
                raise TrainError(f"{ckpt / STATE_FILE}: made with {key}={old[key]!r}, this run has "
                                 f"{cfg.to_json()[key]!r}")

    # ---- model
    from ..presets import build_components, with_prediction_type

    comps = build_components(cfg.preset, random_weights=cfg.random_weights or not _pretrained(cfg.preset),
                             paths=cfg.weights, conditioner=cfg.conditioner, seed=cfg.seed)
    if cfg.prediction_type is not None:
        comps.scheduler = with_prediction_type(comps.scheduler, cfg.prediction_type)
    settings = SampleSettings(view_size=comps.preset.image_size,
                              canvas_hw=tuple(cfg.canvas_hw) if cfg.canvas_hw else canvas_size(comps.preset.image_size),
                              empty_canvas_prob=cfg.empty_canvas_prob, max_view_captions=cfg.max_view_captions)
    trained = (["conditioner"] + (["unet"] if cfg.train_backbone or cfg.unet_steps > 0 else [])
               + (["vae"] if cfg.vae_steps > 0 else []))
    if (comps.device.type, comps.device.index or 0) != (device.type, device.index or 0):
        comps.to(device=device)
    cond = comps.conditioner
    cond.requires_grad_(True)
    cond.train()
    modules: dict[str, torch.nn.Module] = {"conditioner": cond}
    if cfg.train_backbone:
        comps.unet.requires_grad_(True)
        comps.unet.train()
        modules["unet"] = comps.unet

    step, micro_done, warmed_up = 0, 0, cfg.vae_steps == 0 and cfg.unet_steps == 0
    if state is not None:
        _load_modules(ckpt, comps, trained)
        step, micro_done = state.step, state.micro_done_at(global_batch)
        warmed_up = True

    dataset = PanoramaDataset(data, settings, seed=cfg.seed)
    if not warmed_up:
        if cfg.vae_steps > 0:
            vae_warmup(comps, dataset, device, steps=cfg.vae_steps, lr=cfg.vae_lr, batch=cfg.vae_batch,
                       lr_shape=cfg.warmup_lr, seed=cfg.seed, report=_phase_report("vae", report if main else None))
            if world > 1:
                _broadcast_module(comps.vae)
        if cfg.unet_steps > 0:
            unet_warmup(comps, dataset, device, steps=cfg.unet_steps, lr=cfg.unet_lr, batch=cfg.unet_batch,
                        lr_shape=cfg.warmup_lr, seed=cfg.seed, weight_decay=cfg.weight_decay, clip=cfg.clip,
                        offset_noise=cfg.offset_noise, context=cfg.unet_warmup_context,
                        text_dropout=cfg.unet_warmup_dropout,
                        report=_phase_report("unet", report if main else None))
            if world > 1:
                _broadcast_module(comps.unet)
            if not cfg.train_backbone:  # then frozen, as the reference freezes SD-2-inpainting's UNet
                comps.unet.requires_grad_(False)
                comps.unet.eval()

    cast_frozen_(comps, MIXED_DTYPES.get(cfg.mixed_precision), keep=trained)
    if cfg.gradient_checkpointing:
        enable_checkpointing(comps, cond)
    named = {f"{k}.{n}": p for k, m in modules.items() for n, p in m.named_parameters() if p.requires_grad}
    opt = make_optimizer(cfg.optimizer, optimizer_groups(modules, cfg.weight_decay, cfg.no_decay_ssm), cfg.lr,
                         cfg.betas)
    warm = max(0, int(cfg.warmup_steps))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    ema = EMA(named, cfg.ema) if cfg.ema > 0 else None
    if state is not None:
        opt.load_state_dict(load_optimizer_state(ckpt / "optimizer.pt"))
        _restore_run(state, lr_sched, ema, accelerator.scaler)
    wrapped = {k: accelerator.prepare(m) for k, m in modules.items()}
    opt = accelerator.prepare(opt)
    parts = Parts(comps, wrapped["conditioner"], wrapped.get("unet", comps.unet))
    trainable = list(named.values())

    val = PanoramaDataset(val_data, replace(settings, rotate=False), seed=VAL_SEED) if val_data else None

    workers = default_num_workers(device) if cfg.num_workers is None else int(cfg.num_workers)
    if workers:
        warm_sample_caches(settings)  # computed once here; forked workers inherit them
    sampler = StreamSampler(len(dataset), cfg.seed, cfg.batch_size, world, rank, start_micro=micro_done)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=_collate,
                                         num_workers=workers, persistent_workers=False,
                                         prefetch_factor=2 if workers else None)
    latent_shape = (int(comps.unet.config.in_channels - 1) // 2, comps.preset.latent_size, comps.preset.latent_size)
    num_t = int(comps.scheduler.config.num_train_timesteps)
    probs = GuidanceProbs(cfg.null_prob, cfg.empty_caption_prob)
    slots = [rank * cfg.batch_size + j for j in range(cfg.batch_size)]

    log = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "config.json", cfg.to_json())
        log = _Log(run_dir, step if state is not None else None)
        (run_dir / "panels").mkdir(exist_ok=True)

    def save() -> Path | None:
        run = RunState(step=step, micro_done=micro_done, global_batch=global_batch, world_size=world,
                       lr_scheduler=lr_sched.state_dict(),
                       grad_scaler=accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                       ema_updates=ema.updates if ema is not None else 0,
                       ema=ema.shadow if ema is not None else None, trained=list(trained), config=cfg.to_json())
        return _save_checkpoint(accelerator, run_dir, run, wrapped, comps, opt, cfg.keep)

    result = RunResult(out=run_dir, model_dir=None, step=step, total_steps=total, trained=tuple(trained),
                       resumed_from=ckpt)
    last_val = None
    it = iter(loader)
    t_last, steps_since = time.time(), 0
    stops = contextlib.ExitStack()
    stops.enter_context(stop_raises(deferred=True))  # SIGTERM: finish the step, save a checkpoint, return
    try:
        while step < total:
            loss_sum = 0.0
            for a in range(cfg.grad_accum):
                batch = next(it)
                draws = draw_step(cfg.seed, micro_done, slots, latent_shape, num_t, probs)
                sync = a == cfg.grad_accum - 1
                ctx = contextlib.ExitStack()
                if not sync and world > 1:
                    for m in wrapped.values():
                        ctx.enter_context(accelerator.no_sync(m))
                with ctx:
                    with accelerator.autocast():
                        loss = diffusion_loss(parts, batch, draws, offset_noise=cfg.offset_noise, device=device).mean()
                    accelerator.backward(loss / cfg.grad_accum)
                loss_sum += float(loss.detach())
                micro_done += 1
            if cfg.clip > 0:
                accelerator.clip_grad_norm_(trainable, cfg.clip)
            lr_v = float(opt.param_groups[0]["lr"])  # the LR this step used
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            step += 1
            steps_since += 1
            loss_v = loss_sum / cfg.grad_accum
            if world > 1:
                loss_v = float(accelerator.reduce(torch.tensor(loss_v, device=device), "mean"))
            result.losses.append(loss_v)
            now = time.time()
            sps = steps_since / max(now - t_last, 1e-9)
            do_val = val is not None and cfg.val_every > 0 and (step % cfg.val_every == 0 or step == total)
            if do_val:
                accelerator.wait_for_everyone()
                if main:
                    with accelerator.autocast():
                        last_val = _validate(cfg, comps, accelerator.unwrap_model(wrapped["conditioner"]), val,
                                             latent_shape, num_t, device,
                                             run_dir / "panels" / f"step-{step:07d}.png", ema)
                accelerator.wait_for_everyone()
                t_last, steps_since = time.time(), 0
            if main:
                log.row(step=step, phase="train", time_s=round(now - t_start, 3), loss=loss_v, lr=lr_v,
                        samples_per_s=sps * global_batch * cfg.grad_accum, val_loss=last_val if do_val else None)
                report(TrainProgress("train", step, total, loss=loss_v, lr=lr_v, steps_per_s=sps,
                                     val_loss=last_val))
            stopping = _stop_requested()
            if world > 1:
                stopping = bool(accelerator.reduce(torch.tensor(float(stopping), device=device), "sum") > 0)
            if (cfg.save_every > 0 and step % cfg.save_every == 0) or stopping or step == total:
                result.checkpoint = save()
            if stopping:
                result.stopped = True
                break
    except torch.OutOfMemoryError:
        raise TrainError(f"out of memory at --batch-size {cfg.batch_size} on {device}: lower --batch-size (raise "
                         f"--grad-accum to keep the global batch) or use --mixed-precision bf16/fp16; no checkpoint "
                         f"was written for the failed step") from None
    finally:
        stops.close()
        del it
        if log is not None:
            log.close()
    result.step = step
    result.val_loss = last_val
    if not result.stopped and main:
        from ..model_dir import save_model_dir

        for k, m in wrapped.items():
            setattr(comps, k, accelerator.unwrap_model(m))
        extra = {"training": {"steps": step, "seed": cfg.seed, "ema": cfg.ema, "vae_steps": cfg.vae_steps,
                              "unet_steps": cfg.unet_steps, "warmup_lr": cfg.warmup_lr,
                              "unet_warmup_context": cfg.unet_warmup_context,
                              "unet_warmup_dropout": cfg.unet_warmup_dropout,
                              "train_backbone": cfg.train_backbone,
                              "prediction_type": comps.scheduler.config.prediction_type,
                              "canvas_hw": list(settings.canvas_hw), "empty_canvas_prob": cfg.empty_canvas_prob}}
        with (ema.applied() if ema is not None else contextlib.nullcontext()):
            result.model_dir = save_model_dir(comps, run_dir / "model", trained=tuple(trained),
                                              random_backbone=cfg.random_weights or not _pretrained(cfg.preset),
                                              backbone_seed=cfg.seed, extra=extra)
    accelerator.wait_for_everyone()
    result.seconds = time.time() - t_start
    return result


def _forget_other_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state and refuses a second ``Accelerator`` with another
    mixed precision; a later run in the same process (library use, tests) resets that part of the
    state (the distributed set-up, ``PartialState``, is kept)."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and str(shared.get("_mixed_precision", mixed_precision)) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _pretrained(preset: str) -> bool:
    from ..presets import get_preset

    return get_preset(preset).pretrained


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _broadcast_module(m: torch.nn.Module) -> None:
    from accelerate.utils import broadcast

    with torch.no_grad():
        for t in list(m.parameters()) + list(m.buffers()):
            t.copy_(broadcast(t.detach().clone()))
    if hasattr(m, "config") and "scaling_factor" in m.config:
        sf = broadcast(torch.tensor([float(m.config.scaling_factor)], device=next(m.parameters()).device))
        m.register_to_config(scaling_factor=float(sf.item()))


def _load_modules(ckpt: Path, comps, trained: list[str]) -> None:
    """Load the trainable weights of a checkpoint into ``comps`` (strict: names and shapes must match)."""
    for part in trained:
        folder = ckpt / part
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if not files:
            raise CheckpointError(f"{folder}: missing (the checkpoint has no {part} weights)")
        sd = {}
        for f in files:
            sd.update(load_safetensors(f))
        module = getattr(comps, part)
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{folder}: does not match this run's {part} ({str(e).splitlines()[0]})") from None
        if part == "vae":
            cfg_file = folder / "config.json"
            try:
                sf = json.loads(cfg_file.read_text())["scaling_factor"]
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"{cfg_file}: unreadable ({e})") from None
            module.register_to_config(scaling_factor=float(sf))


def _save_checkpoint(accelerator, run_dir: Path, run: RunState, wrapped: dict, comps, opt, keep: int) -> Path | None:
    """Every process hands its RNG state to the main process, which writes ``checkpoint-STEP``
    (:func:`.checkpoint.save_checkpoint`); returns its path on the main process, else None."""
    from accelerate.utils import gather_object

    accelerator.wait_for_everyone()
    rngs = dict(gather_object([(accelerator.process_index, capture_rng())]))
    final = None
    if accelerator.is_main_process:
        modules = {part: accelerator.unwrap_model(wrapped[part]) if part in wrapped else getattr(comps, part)
                   for part in run.trained}
        final = save_checkpoint(run_dir, run, modules, opt.state_dict(), rngs, keep)
    accelerator.wait_for_everyone()
    return final


def _restore_run(state: RunState, lr_sched, ema: EMA | None, scaler) -> None:
    """Put a checkpoint's :class:`RunState` back: LR scheduler, EMA, grad scaler, this process's RNG."""
    lr_sched.load_state_dict(state.lr_scheduler)
    if ema is not None:
        ema.shadow = state.ema
        ema.updates = state.ema_updates
    if scaler is not None and state.grad_scaler:
        scaler.load_state_dict(state.grad_scaler)
    if state.rng is not None:
        restore_rng(state.rng)


def _stop_requested() -> bool:
    """Whether SIGTERM arrived (under :func:`opama_model.fileio.stop_raises` ``deferred=True``)."""
    try:
        check_stop()
    except Terminated:
        return True
    return False


@torch.no_grad()
def _validate(cfg, comps, conditioner, val: PanoramaDataset, latent_shape, num_t, device, panel: Path, ema) -> float:
    """Validation loss with fixed samples, timesteps and noise (comparable across steps), and a panel
    PNG (masked input, generated view, target) of the first ``panel_count`` samples."""
    n = min(len(val), cfg.val_count)
    losses = []
    was_training = conditioner.training
    unet_training = comps.unet.training
    conditioner.eval()
    comps.unet.eval()
    try:
        with (ema.applied() if ema is not None else contextlib.nullcontext()):
            parts = Parts(comps, conditioner, comps.unet)
            items = [val[(i, i)] for i in range(n)]
            for i, item in enumerate(items):
                batch = _collate([item])
                draws = draw_step(VAL_SEED, 0, [i], latent_shape, num_t, modes=[MODE_CAPTION])
                losses.append(float(diffusion_loss(parts, batch, draws, offset_noise=cfg.offset_noise,
                                                   device=device).mean()))
            k = min(n, cfg.panel_count)
            if k and cfg.panel_steps > 0:
                batch = _collate(items[:k])
                gen = generate_view(comps, conditioner, batch, steps=cfg.panel_steps, guidance=cfg.guidance,
                                    seed=VAL_SEED)
                shown = batch["masked_image"]  # unknown = 0: grey
                _save_panel(panel, [(shown[j], gen[j], batch["target"][j]) for j in range(k)])
    finally:
        conditioner.train(was_training)
        comps.unet.train(unet_training)
    return sum(losses) / max(len(losses), 1)
