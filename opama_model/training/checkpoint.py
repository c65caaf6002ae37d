"""Training checkpoints: ``RUN_DIR/checkpoint-STEP/``, written atomically, newest ``keep`` kept.

Layout (no pickle; everything loads with safetensors, JSON or ``torch.load(weights_only=True)``)::

    checkpoint-STEP/
      state.json            the :class:`RunState` numbers: step, micro-batches done, LR-scheduler and
                            grad-scaler state, EMA update count, run config
      conditioner/          save_pretrained (config.json + safetensors): the trainable conditioner
      unet/, vae/           only when they are trained (``--train-backbone``, ``--vae-steps``)
      optimizer.pt          optimiser state dict (tensors and numbers: ``weights_only=True``)
      ema.safetensors       EMA of the trainable weights (when ``--ema``)
      rng-RANK.safetensors  torch CPU (and CUDA) RNG state of each process

:func:`save_checkpoint` writes the folder through :func:`opama_model.fileio.atomic_dir` (a hidden
temporary folder renamed into place when complete), so a reader, or ``--resume`` after a crash,
never sees a half-written checkpoint; :func:`load_run_state` reads a :class:`RunState` back.

accelerate's ``save_state``/``load_state`` are not used: they store the Python and numpy RNG states
with pickle, and every random draw here is a function of ``(seed, position)`` anyway
(:mod:`.data`, :mod:`.step`), so the run state is only the numbers above.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..fileio import atomic_dir, remove_stale_temps

__all__ = ["CheckpointError", "RunState", "checkpoint_dirs", "latest_checkpoint", "save_checkpoint",
           "load_run_state", "capture_rng", "restore_rng", "prune_checkpoints", "read_state", "load_safetensors",
           "load_optimizer_state", "STATE_FILE"]

STATE_FILE = "state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not match the run (message names the file)."""


@dataclass
class RunState:
    """Everything besides the weights and the optimiser that an exact resume needs.

    Attributes:
        step: optimiser steps done.
        micro_done: global micro-batches done (the data position: :class:`.data.StreamSampler`).
        global_batch: samples per global micro-batch (processes x batch size; 0 = not recorded).
        world_size: processes.
        lr_scheduler: the LR scheduler's ``state_dict``.
        grad_scaler: the fp16 grad scaler's ``state_dict`` (None without one).
        ema_updates: EMA updates done; ``ema`` its shadow weights (None without ``--ema``).
        rng: this process's torch RNG states (``torch_cpu``, ``cuda_I``); None when not saved.
        trained: the parts whose weights the checkpoint holds.
        config: the run's :class:`~.trainer.TrainConfig` as JSON.
    """

    step: int = 0
    micro_done: int = 0
    global_batch: int = 1
    world_size: int = 1
    lr_scheduler: dict = field(default_factory=dict)
    grad_scaler: dict | None = None
    ema_updates: int = 0
    ema: dict[str, torch.Tensor] | None = None
    rng: dict[str, torch.Tensor] | None = None
    trained: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The ``state.json`` contents (everything but the tensors)."""
        return dict(step=self.step, micro_done=self.micro_done, samples_done=self.micro_done * self.global_batch,
                    global_batch=self.global_batch, world_size=self.world_size, lr_scheduler=self.lr_scheduler,
                    grad_scaler=self.grad_scaler, ema_updates=self.ema_updates, trained=list(self.trained),
                    config=self.config, time=time.time())

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "RunState":
        micro = int(d.get("micro_done", 0))
        gb = int(d.get("global_batch", 0))
        return cls(step=int(d["step"]), micro_done=micro, global_batch=gb, world_size=int(d.get("world_size", 1)),
                   lr_scheduler=d.get("lr_scheduler") or {}, grad_scaler=d.get("grad_scaler"),
                   ema_updates=int(d.get("ema_updates", 0)), trained=list(d.get("trained", [])),
                   config=dict(d.get("config", {})))

    def micro_done_at(self, global_batch: int) -> int:
        """Micro-batches done counted in batches of ``global_batch`` (a resume with another number
        of processes or batch size continues after the same number of samples)."""
        if not self.global_batch or global_batch == self.global_batch:
            return self.micro_done
        return (self.micro_done * self.global_batch) // global_batch


def capture_rng() -> dict[str, torch.Tensor]:
    """This process's torch RNG states: ``torch_cpu`` and ``cuda_I`` per visible GPU."""
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            rng[f"cuda_{i}"] = torch.cuda.get_rng_state(i)
    return rng


def restore_rng(rng: Mapping[str, torch.Tensor]) -> None:
    """Set the RNG states of :func:`capture_rng` (GPUs not present are skipped)."""
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"cuda_{i}" in rng:
                torch.cuda.set_rng_state(rng[f"cuda_{i}"], i)


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


def save_checkpoint(run_dir: str | Path, state: RunState, modules: Mapping[str, Any], optimizer_state: dict,
                    rng_by_rank: Mapping[int, Mapping[str, torch.Tensor]], keep: int = 0) -> Path:
    """Write ``run_dir/checkpoint-STEP`` atomically (replacing one of the same step), then keep the
    newest ``keep`` checkpoints (:func:`prune_checkpoints`). ``modules``: the trained parts by name
    (each with ``save_pretrained``); ``rng_by_rank``: every process's :func:`capture_rng`."""
    from safetensors.torch import save_file

    final = Path(run_dir) / f"checkpoint-{state.step}"
    with atomic_dir(final) as tmp:
        for rank, rng in rng_by_rank.items():
            save_file(dict(rng), str(tmp / f"rng-{rank}.safetensors"))
        for part, m in modules.items():
            m.save_pretrained(tmp / part)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        if state.ema is not None:
            save_file({k: v.contiguous() for k, v in state.ema.items()}, str(tmp / "ema.safetensors"))
        (tmp / STATE_FILE).write_text(json.dumps(state.to_json(), indent=2) + "\n")
    prune_checkpoints(run_dir, keep)
    return final


def load_run_state(ckpt: Path, rank: int = 0, *, ema: bool = False) -> RunState:
    """The :class:`RunState` of checkpoint ``ckpt`` for process ``rank`` (``ema``: also read the
    EMA weights, which must be there)."""
    state = RunState.from_json(read_state(ckpt))
    if ema:
        if not (ckpt / "ema.safetensors").exists():
            raise CheckpointError(f"{ckpt}: has no ema.safetensors (the run was started without --ema)")
        state.ema = load_safetensors(ckpt / "ema.safetensors")
    rng_file = ckpt / f"rng-{rank}.safetensors"
    if rng_file.exists():
        state.rng = load_safetensors(rng_file)
    return state


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all) and the temporary
    folders a killed run left behind."""
    dirs = checkpoint_dirs(run_dir)
    if keep > 0:
        for _, p in dirs[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    remove_stale_temps(run_dir, recursive=False)


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
