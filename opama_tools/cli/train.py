from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from opama_tools.cli.app import app, console, fail


@app.command(
    help="Train the OPa-Ma conditioner on 2:1 panoramas + captions, as the reference does "
    "(accelerate: one CPU up to many GPUs; the same command runs under `accelerate launch`).\n\n"
    "Writes RUN_DIR/checkpoint-STEP/ (atomic, newest --keep kept), RUN_DIR/log.csv, RUN_DIR/panels/*.png "
    "and the final model RUN_DIR/model (for `opama outpaint --model`). Exit 2 on bad input, 143 after "
    "SIGTERM (a checkpoint is saved; --resume continues).\n\n"
    "Example: opama train --preset tiny --data data/png --captions data/captions.jsonl --out runs/tiny --steps 300 "
    "--train-backbone --vae-steps 100 --lr 1e-3 --save-every 100"
)
def train(
    data: Path = typer.Option(..., "--data", help="Folder of 2:1 equirect panoramas (.png/.jpg, searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, log.csv, panels, model)."),
    captions: Optional[list[Path]] = typer.Option(
        None, "--captions", help="Caption file(s): opama caption JSONL or AOG-Net JSON (repeat the option to merge)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (random, CPU) or sd2 (SD-2 inpainting + unCLIP CLIP)."),
    conditioner: str = typer.Option("opama", "--conditioner", help="opama (VCR + GMA) or aog (AOG-Net baseline)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (give --steps or --epochs)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data (converted to steps)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Samples per process per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimiser step."),
    lr: float = typer.Option(1e-4, "--lr", help="AdamW learning rate (reference 1e-4)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay (reference 0.01 on everything)."),
    no_decay_ssm: bool = typer.Option(False, "--no-decay-ssm", help="No weight decay on Mamba's A_log, D and embeddings."),
    warmup: int = typer.Option(0, "--warmup", help="Linear LR warm-up steps (then constant)."),
    clip: float = typer.Option(0.5, "--clip", help="Gradient-norm clipping (0 = off; reference 0.5)."),
    ema: float = typer.Option(0.0, "--ema", help="EMA decay of the trainable weights (0 = off, e.g. 0.999)."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, fp16 or bf16: autocast, and the frozen UNet, VAE and CLIP encoders stored in that dtype (the trained conditioner keeps fp32 weights)."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute the GMA/VCR Mamba blocks and the UNet blocks in the backward pass instead of keeping their activations (less memory, slower step)."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, or adamw8bit (bitsandbytes' 8-bit AdamW; needs bitsandbytes and a CUDA GPU)."),
    save_every: int = typer.Option(500, "--save-every", help="Checkpoint every N steps (and at the end)."),
    keep: int = typer.Option(3, "--keep", help="Keep the newest N checkpoints (0 = all)."),
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="Validation panoramas (never the test split)."),
    val_captions: Optional[list[Path]] = typer.Option(None, "--val-captions", help="Captions of --val-data (default: --captions)."),
    val_every: int = typer.Option(500, "--val-every", help="Validation loss + panel PNG every N steps."),
    val_count: int = typer.Option(10, "--val-count", help="Validation panoramas used (the reference uses 10)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order, the draws and the random backbone."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in --out."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Data-loader worker processes (default: 0 on the CPU, min(4, CPU cores - 1) with a GPU)."),
    train_backbone: bool = typer.Option(False, "--train-backbone", help="Also train the UNet (tiny demo recipe; the reference freezes it)."),
    vae_steps: int = typer.Option(0, "--vae-steps", help="First fit the VAE on views for N steps, then freeze it (tiny demo recipe)."),
    unet_steps: int = typer.Option(0, "--unet-steps", help="Then pre-train the random UNet as a plain inpainting model for N steps (stands in for SD-2-inpainting's pre-training; tiny demo recipe); frozen afterwards unless --train-backbone."),
    unet_lr: float = typer.Option(2e-3, "--unet-lr", help="Learning rate of the --unet-steps warm-up."),
    unet_batch: int = typer.Option(8, "--unet-batch", help="Batch size of the --unet-steps warm-up."),
    warmup_lr: str = typer.Option("constant", "--warmup-lr", help="Learning-rate shape of the --vae-steps and --unet-steps warm-ups: constant, or cosine (decays to 0 by the warm-up's end)."),
    unet_context: str = typer.Option("null", "--unet-context", help="Context of the --unet-steps warm-up: null (the conditioner's null tokens), or text (the caption's text-encoder states, as SD-2-inpainting was trained; makes the UNet usable without the conditioner)."),
    unet_context_dropout: float = typer.Option(0.1, "--unet-context-dropout", help="With --unet-context text: probability of the empty caption's states instead (guidance dropout)."),
    prediction_type: Optional[str] = typer.Option(None, "--prediction-type", help="epsilon or v_prediction: what the UNet learns to predict (default: the backbone scheduler's, epsilon; the tiny demo recipe uses v_prediction). Kept in the model folder for outpainting."),
    empty_canvas_prob: float = typer.Option(0.0, "--empty-canvas-prob", help="Fraction of samples with nothing known (text-only outpainting; 0 = reference)."),
    canvas: Optional[str] = typer.Option(None, "--canvas", help="Canvas HxW (default: 4 x 8 view sizes; sd2 2048x4096, tiny 256x512)."),
    sd2_inpaint: Optional[Path] = typer.Option(None, "--sd2-inpaint", help="Local stable-diffusion-2-inpainting folder."),
    sd2_clip: Optional[Path] = typer.Option(None, "--sd2-clip", help="Local stable-diffusion-2-1-unclip folder."),
    random_weights: bool = typer.Option(False, "--random-weights", help="sd2 architecture with random weights (benchmarks)."),
    cpu: bool = typer.Option(False, "--cpu", help="Train on the CPU even when a GPU is present."),
    threads: int = typer.Option(0, "--threads", help="CPU threads for torch (0 = torch's default)."),
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from opama_model.training import TrainConfig
    from opama_tools.images import parse_size
    from opama_tools.train import TrainInputError, run_train

    try:
        canvas_hw = parse_size(canvas, option="--canvas")
    except ValueError as e:
        raise fail(str(e), 2) from None
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    weights = {k: v for k, v in (("sd2-inpaint", sd2_inpaint), ("sd2-clip", sd2_clip)) if v is not None}
    cfg = TrainConfig(
        out=str(out), preset=preset, conditioner=conditioner, steps=steps, epochs=epochs, batch_size=batch_size,
        grad_accum=grad_accum, lr=lr, weight_decay=weight_decay, no_decay_ssm=no_decay_ssm, warmup_steps=warmup,
        clip=clip, ema=ema, mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
        optimizer=optimizer, save_every=save_every, keep=keep, val_every=val_every,
        val_count=val_count, seed=seed, resume=resume, num_workers=num_workers, train_backbone=train_backbone,
        vae_steps=vae_steps, unet_steps=unet_steps, unet_lr=unet_lr, unet_batch=unet_batch, warmup_lr=warmup_lr,
        unet_warmup_context=unet_context, unet_warmup_dropout=unet_context_dropout,
        prediction_type=prediction_type, empty_canvas_prob=empty_canvas_prob, canvas_hw=canvas_hw,
        random_weights=random_weights, weights=weights or None, cpu=cpu,
    )
    main = os.environ.get("RANK", "0") == "0"
    try:
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not main,
        ) as bar:
            tasks: dict[str, int] = {}

            def show(p) -> None:
                if p.phase not in tasks:
                    label = {"vae": "VAE warm-up", "unet": "UNet warm-up"}.get(p.phase, "train")
                    tasks[p.phase] = bar.add_task(label, total=p.total, info="")
                info = f"loss {p.loss:.4f}" if p.loss is not None else ""
                if p.phase == "train":
                    info += f" lr {p.lr:.2e}" + (f" {p.steps_per_s:.2f} it/s" if p.steps_per_s else "")
                    info += f" val {p.val_loss:.4f}" if p.val_loss is not None else ""
                bar.update(tasks[p.phase], completed=p.step, info=info)

            def note(text: str) -> None:
                if main:
                    console.print(f"train: {text}", highlight=False)

            summary = run_train(cfg, data, captions or (), val_data=val_data, val_captions=val_captions,
                                progress=show, notify=note)
    except TrainInputError as e:
        raise fail(str(e), 2) from None
    except KeyboardInterrupt:
        raise fail("interrupted (the newest complete checkpoint is kept; --resume continues)", 130) from None
    result = summary.result
    if resume and result.resumed_from is None and main:
        console.print(f"train: no checkpoint in {out}: started from step 0", highlight=False)
    if result.stopped:
        if main:
            console.print(f"train: stopped by SIGTERM at step {result.step}; checkpoint {result.checkpoint} "
                          "(re-run with --resume to continue)", highlight=False)
        raise typer.Exit(summary.exit_code)
    if main:
        last = summary.mean_loss
        val = f", val loss {result.val_loss:.4f}" if result.val_loss is not None else ""
        console.print(
            f"train: {result.step} steps in {result.seconds:.0f} s, loss {last:.4f} (mean of the last "
            f"{min(20, len(result.losses))}){val}; model in {result.model_dir} (trained: {', '.join(result.trained)})",
            highlight=False)
