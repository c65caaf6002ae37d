"""Training checkpoints: ``RUN_DIR/checkpoint-STEP/``, written atomically, newest ``keep`` kept.

Layout (no pickle; everything loads with safetensors, JSON or ``torch.load(weights_only=True)``)::

    checkpoint-STEP/
      state.json            step, micro-batches done, LR-scheduler and grad-scaler state, run config
      conditioner/          save_pretrained (config.json + safetensors): the trainable conditioner
      unet/, vae/           only when they are trained (``--train-backbone``, ``--vae-steps``)
      optimizer.pt          AdamW state dict (tensors and numbers: ``weights_only=True``)
      ema.safetensors       EMA of the trainable weights (when ``--ema``)
      rng-RANK.safetensors  torch CPU (and CUDA) RNG state of each process

The folder is first written as ``.checkpoint-STEP.tmp`` and renamed when complete, so a reader
(or ``--resume`` after a crash) never sees a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

__all__ = ["CheckpointError", "checkpoint_dirs", "latest_checkpoint", "tmp_dir_for", "finish_checkpoint",
           "prune_checkpoints", "read_state", "load_safetensors", "load_optimizer_state", "STATE_FILE"]

STATE_FILE = "state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not match the run (message names the file)."""


def checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``[(step, path)]`` in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out = []
    for p in run_dir.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1][1] if dirs else None


def tmp_dir_for(run_dir: str | Path, step: int) -> Path:
    """The temporary folder a checkpoint is written into (emptied first)."""
    tmp = Path(run_dir) / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finish_checkpoint(tmp: Path, step: int) -> Path:
    """Rename a complete temporary folder to ``checkpoint-STEP`` (replacing an older one)."""
    final = tmp.parent / f"checkpoint-{step}"
    if final.exists():
        old = tmp.parent / f".checkpoint-{step}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all) and stale temp folders."""
    dirs = checkpoint_dirs(run_dir)
    if keep > 0:
        for _, p in dirs[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    for p in Path(run_dir).glob(".checkpoint-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def read_state(ckpt: Path) -> dict:
    f = ckpt / STATE_FILE
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable ({e.__class__.__name__}: {e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{f}: not an opama training state (no 'step')")
    return state


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{path}: unreadable ({e.__class__.__name__}: {e})") from None


def load_optimizer_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") \
            from None
