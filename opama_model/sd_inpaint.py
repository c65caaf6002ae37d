"""Stable Diffusion inpainting checkpoints (diffusers folders) in the OPa-Ma loop, without a conditioner.

The training-free method (``method = "sd-inpaint"``): a public SD-1.x/2.x inpainting checkpoint
(e.g. ``stabilityai/stable-diffusion-2-inpainting``) runs through :class:`OPaMaPipeline`'s views,
masks, completion views and paste-back; the tokens are the text encoder's states of the caption
and guidance uses the empty caption's states. It is the natural ablation of both papers (their
loop without the conditioner).

A checkpoint is a diffusers pipeline folder whose ``model_index.json`` names
``StableDiffusionInpaintPipeline`` with ``unet/`` (9 input channels), ``vae/``, ``text_encoder/``
(one CLIP text model), ``tokenizer/`` and ``scheduler/``; the safety checker and feature
extractor are not needed. A repo id ``owner/name`` is looked up in the local Hugging Face hub cache
(``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``), never downloaded.

:func:`export_inpaint_pipeline` writes the backbone of an opama model (or components) as such a
folder, so a backbone trained here (the tiny demo's text-conditioned UNet warm-up) runs through
the same training-free path as a public checkpoint.

The resolving functions import neither torch nor diffusers (answers to usage errors are immediate).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .weights import _hf_snapshot, hf_cache_dir

__all__ = ["INPAINT_PIPELINES", "InpaintCheckpointError", "read_model_index", "is_inpaint_folder",
           "check_inpaint_folder", "resolve_inpaint_checkpoint", "resolve_model_arg", "cached_inpaint_checkpoints",
           "load_inpaint_pipeline", "export_inpaint_pipeline", "EXPORT_FILE"]

INPAINT_PIPELINES = ("StableDiffusionInpaintPipeline",)
"""``_class_name`` values of ``model_index.json`` accepted (SD-1.x and SD-2.x inpainting)."""
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SUPPORTED = ("supported: a Stable Diffusion 1.x/2.x inpainting pipeline folder (model_index.json "
             "_class_name StableDiffusionInpaintPipeline, 9-channel UNet), e.g. stabilityai/stable-diffusion-2-inpainting")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class InpaintCheckpointError(ValueError):
    """Not a usable SD inpainting checkpoint (one line naming the folder or repo id and the problem)."""


def read_model_index(path: str | Path) -> dict | None:
    """``model_index.json`` of a diffusers pipeline folder, or None when the folder has none."""
    f = Path(path) / "model_index.json"
    if not f.is_file():
        return None
    try:
        index = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InpaintCheckpointError(f"{f}: unreadable ({e})") from None
    if not isinstance(index, dict):
        raise InpaintCheckpointError(f"{f}: not a diffusers model_index.json")
    return index


def is_inpaint_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a ``model_index.json`` naming an accepted inpainting pipeline."""
    try:
        index = read_model_index(path)
    except InpaintCheckpointError:
        return False
    return index is not None and index.get("_class_name") in INPAINT_PIPELINES


def check_inpaint_folder(path: str | Path) -> dict:
    """Check a diffusers folder is an SD inpainting checkpoint opama runs; returns its ``model_index.json``.

    Raises:
        InpaintCheckpointError: no ``model_index.json``, another pipeline class, a missing part, or
            a UNet without 9 input channels.
    """
    path = Path(path)
    index = read_model_index(path)
    if index is None:
        raise InpaintCheckpointError(f"{path}: no model_index.json (not a diffusers pipeline folder); {SUPPORTED}")
    cls = index.get("_class_name")
    if cls not in INPAINT_PIPELINES:
        raise InpaintCheckpointError(f"{path}: a {cls} folder is not supported; {SUPPORTED}")
    for part in PARTS:
        if not (path / part).is_dir():
            raise InpaintCheckpointError(f"{path / part}: missing ({cls} needs {', '.join(PARTS)})")
    cfg = path / "unet" / "config.json"
    try:
        unet = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InpaintCheckpointError(f"{cfg}: unreadable ({e})") from None
    if int(unet.get("in_channels", 0)) != 9:
        raise InpaintCheckpointError(f"{cfg}: a UNet with {unet.get('in_channels')} input channels is not an "
                                     f"inpainting UNet; {SUPPORTED}")
    return index


def resolve_inpaint_checkpoint(model: str | Path) -> tuple[Path, str]:
    """``(folder, model_id)`` of ``--model``: a checked inpainting folder, or a repo id ``owner/name``
    found in the local hub cache (``model_id`` is then the repo id; else ``dir:<absolute path>``).

    Raises:
        InpaintCheckpointError: not such a folder, or a repo id that is not in the cache.
    """
    path = Path(model)
    if path.is_dir():
        check_inpaint_folder(path)
        return path, f"dir:{path.resolve()}"
    if REPO_ID.match(str(model)) and not path.exists():
        snap = _hf_snapshot(str(model))
        root = Path(hf_cache_dir()) / ("models--" + str(model).replace("/", "--"))
        if snap is None:
            raise InpaintCheckpointError(
                f"--model {model}: not a folder, and not in the Hugging Face cache ({root}); download it once "
                f"with `huggingface-cli download {model}` (or set HF_HUB_CACHE / HF_HOME), or pass its folder")
        check_inpaint_folder(snap)
        return snap, str(model)
    raise InpaintCheckpointError(f"--model {model}: no such folder (an opama model folder, a diffusers "
                                 "inpainting pipeline folder, or a repo id owner/name in the Hugging Face cache)")


def resolve_model_arg(model: str | Path) -> tuple[str, Path, str]:
    """What ``opama outpaint --model`` names, checked without loading anything (no torch):
    ``(kind, folder, model_id)``, ``kind`` ``"opama"`` (a model folder of ``opama train``, checked by
    :func:`opama_model.model_dir.read_model_info`) or ``"sd-inpaint"`` (:func:`resolve_inpaint_checkpoint`).

    Raises:
        ModelFolderError: an incomplete opama model folder.
        InpaintCheckpointError: anything else that is not one of the two (one line).
    """
    from .model_dir import MODEL_FILE, read_model_info

    path = Path(model)
    if path.is_dir() and (path / MODEL_FILE).is_file():
        read_model_info(path)
        return "opama", path, f"dir:{path.resolve()}"
    if path.is_dir() and read_model_index(path) is None:
        raise InpaintCheckpointError(f"--model {model}: neither an opama model folder (no {MODEL_FILE}) nor a "
                                     f"diffusers pipeline folder (no model_index.json); {SUPPORTED}")
    folder, model_id = resolve_inpaint_checkpoint(model)
    return "sd-inpaint", folder, model_id


def cached_inpaint_checkpoints() -> list[tuple[str, Path]]:
    """``(repo_id, snapshot folder)`` of every repo in the local hub cache whose snapshot's
    ``model_index.json`` names an accepted inpainting pipeline (sorted by repo id)."""
    root = Path(hf_cache_dir())
    found = []
    if not root.is_dir():
        return found
    for d in sorted(root.glob("models--*--*")):
        repo_id = d.name[len("models--"):].replace("--", "/", 1)
        snap = _hf_snapshot(repo_id)
        if snap is not None and is_inpaint_folder(snap):
            found.append((repo_id, snap))
    return found


def load_inpaint_pipeline(path: str | Path, *, device=None, dtype=None):
    """An :class:`~opama_model.pipeline.OPaMaPipeline` without conditioner or image encoder over the
    checked inpainting folder ``path`` (each component loaded on its own, ``local_files_only=True``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .pipeline import OPaMaPipeline, make_scheduler

    path = Path(path)
    check_inpaint_folder(path)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    sched_file = path / "scheduler" / "scheduler_config.json"
    try:
        sched_cfg = json.loads(sched_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InpaintCheckpointError(f"{sched_file}: unreadable ({e})") from None
    scheduler = make_scheduler("ddim", sched_cfg)  # the noise schedule; each run makes its sampler from it
    if int(text_encoder.config.hidden_size) != int(unet.config.cross_attention_dim):
        raise InpaintCheckpointError(f"{path}: text encoder width {text_encoder.config.hidden_size} != UNet "
                                     f"cross_attention_dim {unet.config.cross_attention_dim}")
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
        m.eval()
        if device is not None or dtype is not None:
            m.to(device=device, dtype=dtype)
    return OPaMaPipeline(vae=vae, unet=unet, scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder,
                         image_encoder=None, conditioner=None)


EXPORT_FILE = "opama_export.json"
"""What :func:`export_inpaint_pipeline` adds to the folder: where the backbone came from."""


def export_inpaint_pipeline(source, out_dir: str | Path, *, paths=None) -> Path:
    """Write the backbone of ``source`` as a diffusers ``StableDiffusionInpaintPipeline`` folder at
    ``out_dir``: ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and
    ``scheduler/`` (its noise schedule and prediction type), no safety checker or feature extractor,
    plus :data:`EXPORT_FILE` naming the source. The conditioner and the CLIP image encoder are left out.

    ``source``: an opama model folder (:func:`opama_model.model_dir.load_model_dir`; ``paths``
    locates a pretrained backbone) or a :class:`~opama_model.presets.Components`. The folder is
    written beside ``out_dir`` and swapped in whole (:func:`opama_model.fileio.atomic_dir`); an
    existing folder is replaced. ``opama outpaint --model OUT_DIR`` (:func:`load_inpaint_pipeline`)
    and diffusers' ``StableDiffusionInpaintPipeline.from_pretrained`` load it.

    Raises:
        ModelFolderError: ``source`` is not a complete model folder.
        InpaintCheckpointError: the UNet is not a 9-channel inpainting UNet, or the text encoder's
            width differs from the UNet's cross-attention width.
    """
    from diffusers import StableDiffusionInpaintPipeline

    from .fileio import atomic_dir

    info: dict = {"format": "opama-export", "version": 1}
    if isinstance(source, (str, Path)):
        from .model_dir import load_model_dir, read_model_info

        model = read_model_info(source)
        comps = load_model_dir(source, paths=paths)
        info.update(source=f"dir:{Path(source).resolve()}", preset=model["preset"],
                    training=model.get("training"))
    else:
        comps = source
        info.update(source="components", preset=comps.preset.name)
    unet, text = comps.unet, comps.text_encoder
    if int(unet.config.in_channels) != 9:
        raise InpaintCheckpointError(f"{source}: a UNet with {unet.config.in_channels} input channels is not an "
                                     "inpainting UNet")
    if int(text.config.hidden_size) != int(unet.config.cross_attention_dim):
        raise InpaintCheckpointError(f"{source}: text encoder width {text.config.hidden_size} != UNet "
                                     f"cross_attention_dim {unet.config.cross_attention_dim}")
    # a copy of the scheduler: diffusers' SD pipelines rewrite some legacy scheduler settings in place
    scheduler = type(comps.scheduler).from_config(comps.scheduler.config)
    pipe = StableDiffusionInpaintPipeline(vae=comps.vae, text_encoder=text, tokenizer=comps.tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)
