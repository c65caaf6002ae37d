"""The model folder that ``opama train`` and ``opama convert-reference`` write and
``opama outpaint --model`` reads.

Layout (no copy of a frozen pretrained backbone; the backbone is named, not stored)::

    MODEL_DIR/
      opama_model.json     {"format": "opama-model", "version": 1, "preset": "tiny" | "sd2",
                            "conditioner": "opama" | "aog", "random_backbone": bool,
                            "backbone_seed": int, "trained": ["conditioner", ...], ...extra}
      conditioner/         save_pretrained of the conditioner (config.json + safetensors)
      unet/, vae/          only when they were trained (e.g. the tiny preset's demo recipe)
      scheduler/           scheduler_config.json: the noise schedule and prediction type trained
                           with (folders without it use the preset's)

A random backbone (``random_backbone``, always the case for ``tiny``) is rebuilt from the
preset's architecture configs with ``backbone_seed`` (deterministic on CPU); a pretrained one
is located like everywhere else (:func:`opama_model.weights.require`, never downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

from .fileio import atomic_dir

__all__ = ["MODEL_FILE", "ModelFolderError", "save_model_dir", "read_model_info", "load_model_dir"]

MODEL_FILE = "opama_model.json"
FORMAT = "opama-model"
VERSION = 1
TRAINABLE_PARTS = ("conditioner", "unet", "vae")


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete or of an unknown format (message names the file)."""


def save_model_dir(components, path: str | Path, *, trained: tuple[str, ...] = ("conditioner",),
                   random_backbone: bool | None = None, backbone_seed: int = 0,
                   extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``components`` (a :class:`opama_model.presets.Components`) as a model folder.

    Only the ``trained`` parts are stored. The folder is written beside ``path`` and swapped
    in as a whole (:func:`opama_model.fileio.atomic_dir`), so a reader never sees a
    half-written model; an existing folder is replaced.
    """
    path = Path(path)
    bad = [t for t in trained if t not in TRAINABLE_PARTS]
    if bad or "conditioner" not in trained:
        raise ValueError(f"trained parts must include 'conditioner' and be among {TRAINABLE_PARTS}, got {trained}")
    if random_backbone is None:
        random_backbone = not components.preset.pretrained
    kind = "aog" if type(components.conditioner).__name__ == "AOGConditioner" else "opama"
    info = dict(format=FORMAT, version=VERSION, preset=components.preset.name, conditioner=kind,
                random_backbone=bool(random_backbone), backbone_seed=int(backbone_seed), trained=list(trained))
    info.update(extra or {})
    with atomic_dir(path) as tmp:  # a reader never sees a half-written model; the old folder goes last
        for part in trained:
            getattr(components, part).save_pretrained(tmp / part)
        if getattr(components, "scheduler", None) is not None:  # convert-reference has none: the preset's
            components.scheduler.save_pretrained(tmp / "scheduler")
        (tmp / MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return path


def read_model_info(path: str | Path) -> dict:
    """The ``opama_model.json`` of a model folder, checked."""
    path = Path(path)
    f = path / MODEL_FILE
    if not path.is_dir():
        raise ModelFolderError(f"{path}: not a folder (expected a model folder written by `opama train`)")
    if not f.is_file():
        raise ModelFolderError(f"{f}: missing (not a model folder written by `opama train` or `opama convert-reference`)")
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{f}: unreadable ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ModelFolderError(f"{f}: not an {FORMAT} file")
    if int(info.get("version", 0)) > VERSION:
        raise ModelFolderError(f"{f}: version {info.get('version')} is newer than this opama reads ({VERSION})")
    for key in ("preset", "conditioner", "trained"):
        if key not in info:
            raise ModelFolderError(f"{f}: no {key!r} entry")
    for part in info["trained"]:
        if part not in TRAINABLE_PARTS:
            raise ModelFolderError(f"{f}: unknown part {part!r}")
        if not (path / part / "config.json").is_file():
            raise ModelFolderError(f"{path / part}: missing or incomplete ({part} listed as trained)")
    sched = path / "scheduler" / "scheduler_config.json"
    if sched.exists():
        try:
            json.loads(sched.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFolderError(f"{sched}: unreadable ({e})") from None
    return info


def load_model_dir(path: str | Path, *, paths: Mapping[str, Any] | None = None, device=None,
                   dtype: torch.dtype | None = None, random_weights: bool = False):
    """Build the :class:`~opama_model.presets.Components` of a model folder.

    ``random_weights=True`` rebuilds the backbone with random weights (``backbone_seed``) even when
    the folder names a pretrained one (``"random_backbone": false``), e.g. for timing without weights.

    Raises:
        ModelFolderError: the folder is not a complete model folder.
        MissingWeightsError: its pretrained backbone is not found locally.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .presets import build_components

    path = Path(path)
    info = read_model_info(path)
    comps = build_components(info["preset"], random_weights=random_weights or bool(info.get("random_backbone", False)),
                             paths=paths, conditioner=info["conditioner"],
                             conditioner_path=path / "conditioner", seed=int(info.get("backbone_seed", 0)))
    for part, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        if part in info["trained"]:
            m = cls.from_pretrained(path / part)
            m.requires_grad_(False)
            m.eval()
            setattr(comps, part, m)
    if (path / "scheduler" / "scheduler_config.json").is_file():
        comps.scheduler = type(comps.scheduler).from_pretrained(path / "scheduler")
    comps.conditioner.eval()
    if device is not None or dtype is not None:
        comps.to(device=device, dtype=dtype)
    return comps
