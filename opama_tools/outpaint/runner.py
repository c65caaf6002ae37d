"""Run :class:`opama_model.pipeline.OPaMaPipeline` on one panorama or a batch, and write its outputs.

Per panorama, in its folder (``OUT`` for one panorama, ``OUT/<name>/`` in a batch):

* ``pano.png``: the 2:1 equirect, 8-bit RGB (input pixels exactly as pasted);
* ``input_mask.png``: 255 where the inputs were pasted (never altered), 0 elsewhere (the
  transparent pixels of a photo with alpha are 0: generated);
* ``index.html``: the self-contained drag-to-look viewer (:mod:`.viewer`);
* ``cube_F.png`` ... ``cube_D.png`` with ``cube > 0``; ``pano.mp4`` with ``video``;
* ``meta.json``, written **last**: prompt, inputs and directions, seed, procedure, scheduler,
  steps, guidance, views, ``model_id``, ``method``, UNet passes (counted), seconds per stage;
  it is the job layer's done record (:mod:`opama_tools.jobs`): ``source`` = the
  :func:`~opama_tools.jobs.source_signature` of the input photos' bytes, in order, and
  ``settings`` = the :func:`~opama_tools.jobs.settings_key` of everything else that determines
  the output (directions, prompt, canvas size, options, and the model: a model folder by its
  :func:`~opama_tools.jobs.folder_stat_signature`, a preset by name, conditioner and seed).

Every file is written atomically. A panorama whose ``meta.json`` matches the current
``source`` and ``settings`` and whose files exist is skipped on re-runs, so a batch is
resumable; ``overwrite`` redoes it. Under ``accelerate launch``
the rows are spread over the processes (row ``i`` to process ``i % n``), one output folder.
A row that fails (a bad batch row, an unreadable photo) is reported and the others go on.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from opama_model.directions import check_direction
from opama_tools.devices import resolve_device
from opama_tools.images import format_hw, parse_size
from opama_tools.io import atomic_path, atomic_write_text
from opama_tools.jobs import done_fields, folder_stat_signature, is_done, settings_key, source_signature

from .inputs import IMAGE_EXTS, InputSpec, Row, parse_input_spec, read_input_image, read_rows

__all__ = [
    "IMAGE_EXTS",
    "InputSpec",
    "Row",
    "OutpaintSettings",
    "OutpaintModel",
    "BatchResult",
    "parse_input_spec",
    "parse_size",
    "read_rows",
    "read_input_image",
    "load_model",
    "check_row",
    "outpaint_row",
    "outpaint_batch",
    "distributed_context",
]

META = "meta.json"
CUBE_NAMES = ("F", "R", "B", "L", "U", "D")


# ----------------------------------------------------------------------------- model
@dataclass
class OutpaintModel:
    """A loaded pipeline and what identifies it (``model_id``, ``method`` = "opama" | "aog" | "sd-inpaint";
    ``digest``: the model's part of each panorama's settings key)."""

    pipeline: Any
    model_id: str
    method: str
    digest: str
    preset: str


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise ValueError(f"--dtype {dtype!r}: choose auto, fp32, fp16 or bf16")
    if device.type == "cpu" and dtype == "fp16":
        raise ValueError("--dtype fp16 needs a CUDA device (use fp32 or bf16 on CPU)")
    return table[dtype]


def load_model(model: str | Path | None = None, *, preset: str | None = None, random_weights: bool = False,
               device: str = "auto", dtype: str = "auto", paths: dict | None = None,
               conditioner: str = "opama", seed: int = 0) -> OutpaintModel:
    """Load a model folder (``opama train`` output), an SD inpainting checkpoint (a diffusers folder or
    a cached repo id: the training-free method, no conditioner) or build a preset; returns an
    :class:`OutpaintModel`.

    ``random_weights``: a random backbone (with ``preset``, or for a model folder whose backbone is
    pretrained: rebuilt from the architecture configs with the folder's ``backbone_seed``).
    ``dtype="auto"``: fp16 on CUDA (UNet, VAE, CLIP; the conditioner stays fp32), fp32 on CPU.
    On CUDA the UNet uses channels-last memory (and PyTorch's SDPA attention, diffusers' default).

    Raises:
        ModelFolderError: ``model`` is not a complete model folder.
        MissingWeightsError: a pretrained backbone is not on this machine.
        ValueError: bad device/dtype/preset.
    """
    from opama_model.model_dir import load_model_dir
    from opama_model.sd_inpaint import resolve_model_arg
    from opama_model.pipeline import OPaMaPipeline
    from opama_model.presets import build_components

    dev = resolve_device(device)
    dt = _resolve_dtype(dtype, dev)
    if (model is None) == (preset is None):
        raise ValueError("give exactly one of --model DIR or --preset NAME")
    if model is not None and resolve_model_arg(model)[0] == "sd-inpaint":
        from opama_model.sd_inpaint import load_inpaint_pipeline

        if random_weights:
            raise ValueError("--random-weights applies to --preset and opama model folders, not to an "
                             "inpainting checkpoint")
        _, folder, model_id = resolve_model_arg(model)
        pipe = load_inpaint_pipeline(folder)
        if dev.type != "cpu" or dt != torch.float32:
            for m in (pipe.unet, pipe.vae, pipe.text_encoder):
                m.to(device=dev, dtype=dt)
        if dev.type == "cuda":
            pipe.unet.to(memory_format=torch.channels_last)
        pipe.set_progress_bar_config(disable=True)
        digest = settings_key("sd-inpaint", folder_stat_signature(folder))
        return OutpaintModel(pipe, model_id, pipe.method, digest, "sd-inpaint")
    if model is not None:
        path = Path(model)
        comps = load_model_dir(path, paths=paths, random_weights=random_weights)
        model_id = f"dir:{path.resolve()}" + ("-random" if random_weights else "")
        digest = folder_stat_signature(path)
        if random_weights:
            digest = settings_key(digest, "random-backbone")
    else:
        comps = build_components(preset, random_weights=random_weights, paths=paths, conditioner=conditioner,
                                 seed=seed)
        model_id = f"preset:{preset}" + ("-random" if (random_weights or not comps.preset.pretrained) else "")
        digest = settings_key("preset", model_id, conditioner, seed)
    if dev.type != "cpu" or dt != torch.float32:  # (a no-op .to() still makes diffusers warn)
        comps.to(device=dev, dtype=dt)
    if dev.type == "cuda":
        comps.unet.to(memory_format=torch.channels_last)
    pipe = OPaMaPipeline.from_components(comps)
    pipe.set_progress_bar_config(disable=True)
    return OutpaintModel(pipe, model_id, pipe.method, digest, comps.preset.name)


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class OutpaintSettings:
    """Options of ``opama outpaint`` that apply to every panorama.

    ``size``: canvas ``(H, W)`` (None: 4 x 8 view sizes); ``steps``/``guidance``/``scheduler``
    override the procedure's; ``cube``: cube-face width (0 = none); ``video``: write
    ``pano.mp4``; ``viewer``: write ``index.html``; ``views``: the generated views' schedule
    ``(yaw, pitch)`` degrees (None: AOG-Net's 21, as the model was trained; completion views follow);
    ``prompt_up``/``prompt_down``: captions of the views with pitch >= 45 / <= -45 degrees (None: the row's).

    Video rows only (:mod:`.video_job`): ``keyframe_every``, ``strength``, ``band`` (degrees) override
    :class:`~opama_model.video_pipeline.TemporalSettings`' defaults; ``independent``: every frame a
    full panorama (the per-frame baseline); ``lossless``: also write ``pano.mkv`` (bit-exact frames).
    """

    procedure: str = "fast"
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    size: tuple[int, int] | None = None
    seed: int = 0
    cube: int = 0
    video: bool = False
    viewer: bool = True
    views: tuple[tuple[float, float], ...] | None = None
    prompt_up: str | None = None
    prompt_down: str | None = None
    keyframe_every: int | None = None
    strength: float | None = None
    band: float | None = None
    independent: bool = False
    lossless: bool = False

    VIDEO_ONLY = ("keyframe_every", "strength", "band", "independent", "lossless")

    def __post_init__(self) -> None:
        from opama_model.pipeline import PROCEDURES, SCHEDULERS

        if self.procedure not in PROCEDURES:
            raise ValueError(f"--procedure {self.procedure!r}: choose one of {', '.join(PROCEDURES)}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.size is not None and (self.size[1] != 2 * self.size[0] or self.size[0] < 2):
            raise ValueError(f"--size {format_hw(*self.size)}: must be 2:1 (HxW, width = 2 x height)")
        if self.cube < 0 or self.cube == 1:
            raise ValueError(f"--cube must be 0 (none) or >= 2 pixels, got {self.cube}")

    def output_files(self) -> list[str]:
        files = ["pano.png", "input_mask.png"]
        files += ["index.html"] if self.viewer else []
        files += [f"cube_{n}.png" for n in CUBE_NAMES] if self.cube else []
        files += ["pano.mp4"] if self.video else []
        return files


def _canvas_size(model: OutpaintModel, settings: OutpaintSettings) -> tuple[int, int]:
    from opama_model.pipeline import default_canvas_size

    return settings.size or default_canvas_size(model.pipeline.view_size)


def check_row(row: Row, model: OutpaintModel, settings: OutpaintSettings) -> tuple[list[np.ndarray], str, str]:
    """Read and check a row's inputs before anything runs; returns the images and the row's
    done-record fields: the inputs' ``source_signature`` and the ``settings_key``.

    Photos of any size are accepted (they are resampled to their footprint on the canvas).

    Raises:
        ValueError: a bad batch row (``row.error``), an unreadable image or a bad direction.
    """
    if row.error:
        raise ValueError(row.error)
    h, w = _canvas_size(model, settings)
    images = []
    for spec in row.inputs:
        check_direction(spec.direction)
        images.append(read_input_image(spec.path))
    signature = source_signature([spec.path for spec in row.inputs])
    # cube, video and viewer only add files: the done check asks for them by name
    options = {k: v for k, v in asdict(settings).items()
               if k not in ("size", "cube", "video", "viewer", *OutpaintSettings.VIDEO_ONLY)}
    key = settings_key("outpaint", dict(directions=[list(s.direction) for s in row.inputs], prompt=row.prompt,
                                        model=model.digest, size=[h, w], **options))
    return images, signature, key


def _is_done(folder: Path, signature: str, key: str, settings: OutpaintSettings) -> bool:
    return is_done(folder / META, signature, key, [folder / f for f in settings.output_files()])


def _usual_mode(path: Path) -> None:
    """``atomic_path`` writes 0600 temp files: give outputs the usual 0666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    _usual_mode(path)


def outpaint_row(row: Row, model: OutpaintModel, folder: str | Path, settings: OutpaintSettings, *,
                 checked: tuple[list[np.ndarray], str, str] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Make one panorama and write its files into ``folder`` (``meta.json`` last); returns the meta.

    Inputs are checked (:func:`check_row`, or pass its result as ``checked``) before the model
    runs, so a bad input writes nothing.
    """
    from opama_model.spherical import equi_to_cube

    folder = Path(folder)
    images, signature, key = check_row(row, model, settings) if checked is None else checked
    h, w = _canvas_size(model, settings)
    t0 = time.perf_counter()
    out = model.pipeline(
        images=images, directions=[s.direction for s in row.inputs], prompt=row.prompt, height=h, width=w,
        procedure=settings.procedure, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
        scheduler=settings.scheduler, seed=settings.seed, output_type="np",
        prompt_up=settings.prompt_up, prompt_down=settings.prompt_down,
        **({} if settings.views is None else dict(schedule=settings.views)),
        callback=None if progress is None else (lambda k, n, _s: progress(k, n)),
    )
    pano, info = out.images[0], dict(out.info)  # info["method"]: the pipeline's, as model.method
    t_write = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META).unlink(missing_ok=True)  # the folder is "not done" until the new meta.json lands
    wanted = set(settings.output_files())
    for stale in ["index.html", "pano.mp4", "pano.mkv", "input_masks.npy", "look.mp4",
                  *(f"cube_{n}.png" for n in CUBE_NAMES)]:
        if stale not in wanted:  # outputs of an earlier run with other options
            (folder / stale).unlink(missing_ok=True)
    _write_png(folder / "pano.png", pano)
    _write_png(folder / "input_mask.png", out.input_mask.astype(np.uint8) * 255)
    if settings.viewer:
        from .viewer import write_viewer

        write_viewer(folder / "index.html", pano, title=f"opama: {row.prompt or row.name}")
        _usual_mode(folder / "index.html")
    if settings.cube:
        faces = equi_to_cube(torch.from_numpy(pano).permute(2, 0, 1)[None].float(), settings.cube)[0]
        for n, face in zip(CUBE_NAMES, faces):
            _write_png(folder / f"cube_{n}.png", face.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    if settings.video:
        from .video import write_video

        write_video(folder / "pano.mp4", pano)
        _usual_mode(folder / "pano.mp4")
    seconds = dict(info.pop("seconds"))
    seconds["write"] = round(time.perf_counter() - t_write, 4)
    seconds["panorama"] = round(time.perf_counter() - t0, 4)
    meta = dict(
        name=row.name, **info,
        mode=("text+photo" if row.prompt else "photo") if row.inputs else "text",
        model_id=model.model_id, preset=model.preset,
        seconds=seconds, outputs=settings.output_files(), **done_fields(signature, key),
    )
    meta.update(prompt=row.prompt,
                inputs=[dict(path=str(s.path), yaw=s.yaw, pitch=s.pitch, fov=s.fov) for s in row.inputs])
    atomic_write_text(folder / META, json.dumps(meta, indent=2) + "\n")
    _usual_mode(folder / META)
    return meta


# ----------------------------------------------------------------------------- batch
@dataclass
class BatchResult:
    """Names done, skipped (already done) and failed (``(name, reason)``) by this process."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def distributed_context() -> tuple[int, int, str | None]:
    """``(process_index, num_processes, device)`` under ``accelerate launch`` / torchrun, else ``(0, 1, None)``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, str(state.device)


def outpaint_batch(rows: Sequence[Row], model: OutpaintModel, out: str | Path, settings: OutpaintSettings, *,
                   overwrite: bool = False, process_index: int = 0, num_processes: int = 1,
                   progress: Callable[[int, int, str], None] | None = None,
                   on_failure: Callable[[str, str], None] | None = None,
                   view_progress: Callable[[int, int], None] | None = None) -> BatchResult:
    """Make every row's panorama into ``out/<name>/`` (this process's share: rows ``i`` with
    ``i % num_processes == process_index``). Resumable; a failed row is reported and the rest go on.

    ``progress(k, total, name)`` after each of this process's rows; ``on_failure(name, reason)``.
    The same entry point serves the CLI and the demo.
    """
    out = Path(out)
    mine = [r for i, r in enumerate(rows) if i % num_processes == process_index]
    result = BatchResult()
    for k, row in enumerate(mine):
        folder = out / row.name
        try:
            if row.is_video:
                from .video_job import check_video_row, outpaint_video_row, video_output_files

                vid = check_video_row(row, model, settings)
                if not overwrite and is_done(folder / META, vid.signature, vid.key,
                                             [folder / f for f in video_output_files(settings)]):
                    result.skipped.append(row.name)
                else:
                    outpaint_video_row(row, model, folder, settings, vid, progress=view_progress)
                    result.done.append(row.name)
            else:
                checked = check_row(row, model, settings)
                if not overwrite and _is_done(folder, *checked[1:], settings):
                    result.skipped.append(row.name)
                else:
                    outpaint_row(row, model, folder, settings, checked=checked, progress=view_progress)
                    result.done.append(row.name)
        except (ValueError, RuntimeError, OSError) as e:
            result.failed.append((row.name, str(e)))
            if on_failure is not None:
                on_failure(row.name, str(e))
        if progress is not None:
            progress(k + 1, len(mine), row.name)
    return result
