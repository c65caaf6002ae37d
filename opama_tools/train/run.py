"""``opama train`` as a library function: :func:`run_train`.

It reads the panoramas and captions (:func:`opama_tools.data.train_data.load_records`), runs
:func:`opama_model.training.train` (checkpoints, resume, warm-ups, the final model folder) and
returns a :class:`TrainSummary`. A user's mistake (unusable data or captions, a bad option, a
missing weight folder, an unusable checkpoint) raises :class:`TrainInputError` with a one-line
message naming the file or option, before training starts. The CLI
(:mod:`opama_tools.cli.train`) only parses, calls, prints and sets the exit code; the demo calls
it in a child process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["TrainInputError", "TrainSummary", "run_train"]


class TrainInputError(ValueError):
    """A user's mistake in the data, the captions, the options or the weights (one-line message)."""


@dataclass
class TrainSummary:
    """What :func:`run_train` did.

    ``result``: the trainer's :class:`~opama_model.training.trainer.RunResult` (step, losses,
    model folder, checkpoint, ``stopped`` after SIGTERM). ``hint``: a one-line recipe hint when a
    random backbone is trained without warm-ups, else None. ``exit_code``: 0, or 143 when stopped
    by SIGTERM (a checkpoint was saved; ``resume=True`` continues).
    """

    result: object
    hint: str | None = None

    @property
    def exit_code(self) -> int:
        return 143 if self.result.stopped else 0

    @property
    def mean_loss(self) -> float:
        """Mean training loss of the last 20 steps (NaN when no step ran)."""
        tail = self.result.losses[-20:]
        return sum(tail) / len(tail) if tail else float("nan")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_train(cfg, data: str | Path, captions: Sequence[str | Path] = (), *, val_data: str | Path | None = None,
              val_captions: Sequence[str | Path] | None = None,
              progress: Callable | None = None, notify: Callable[[str], None] | None = None) -> TrainSummary:
    """Train one run as ``opama train`` does.

    Args:
        cfg: an :class:`opama_model.training.TrainConfig` (``out`` is the run folder).
        data: folder of 2:1 panoramas (searched recursively).
        captions: caption files (``opama caption`` JSONL or AOG-Net JSON), merged.
        val_data, val_captions: validation panoramas and their captions (default: ``captions``).
        progress: called with each :class:`~opama_model.training.trainer.TrainProgress`.
        notify: called with one-line notes for the user before training starts (the recipe hint).

    Raises:
        TrainInputError: unusable input (the message names the file or option); nothing trained.
    """
    from opama_model.model_dir import ModelFolderError
    from opama_model.training import TrainError, train
    from opama_model.training.checkpoint import CheckpointError
    from opama_model.training.trainer import recipe_hint
    from opama_model.weights import MissingWeightsError
    from opama_tools.data.train_data import TrainDataError, load_records

    hint = recipe_hint(cfg) if cfg.preset in ("tiny", "sd2") else None
    if hint and notify is not None:
        notify(hint)
    try:
        records = load_records(data, list(captions))
        val_records = (load_records(val_data, list(val_captions if val_captions is not None else captions))
                       if val_data is not None else None)
        result = train(cfg, records, val_records, progress=progress)
    except (TrainDataError, TrainError, CheckpointError, MissingWeightsError, ModelFolderError) as e:
        raise TrainInputError(_first_line(e)) from None
    return TrainSummary(result=result, hint=hint)
