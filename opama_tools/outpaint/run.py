"""``run_outpaint``: the library function behind ``opama outpaint`` (validates, writes, returns a summary).

Arguments are checked before torch, diffusers or a model are loaded (sizes, options that
exclude each other, input specs and files, batch rows), so a usage error is answered at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from opama_tools.devices import check_device_name
from opama_tools.images import format_hw, image_hw, parse_size

from .inputs import Row, parse_input_spec, read_rows

__all__ = ["OutpaintError", "OutpaintSummary", "run_outpaint"]

DTYPES = ("auto", "fp32", "fp16", "bf16")


class OutpaintError(ValueError):
    """Bad user input to :func:`run_outpaint` (one line naming the option or file; CLI exit 2)."""


@dataclass
class OutpaintSummary:
    """What :func:`run_outpaint` did (this process's share under ``accelerate launch``).

    ``single``: one panorama written into ``out`` (no ``batch``); ``done``/``skipped`` names,
    ``failed`` ``(name, reason)``; ``process_index``/``num_processes`` of this process; ``video``:
    the single output is a 360-degree video (``pano.mp4``), not ``pano.png``.
    """

    out: Path
    single: bool
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    process_index: int = 0
    num_processes: int = 1
    video: bool = False


def _check_light(*, model, preset, inputs, batch, size, views, steps, cube, device, dtype,
                 trajectory=None, mask=None) -> tuple:
    """Every check that needs no torch import; returns ``(size, view schedule, input specs)``.

    A video input (one clip, its ``trajectory`` or ``mask``) is probed here too (ffmpeg, no torch).
    """
    from opama_model.views import parse_views
    if (model is None) == (preset is None):
        raise OutpaintError("give exactly one of --model DIR or --preset tiny|sd2")
    if batch is not None and inputs:
        raise OutpaintError("--input and --batch exclude each other (put the photos in the batch CSV)")
    hw = parse_size(size) if isinstance(size, (str, type(None))) else tuple(size)
    if hw is not None and (len(hw) != 2 or hw[0] < 2 or hw[1] != 2 * hw[0]):
        raise OutpaintError(f"--size {format_hw(*hw) if len(hw) == 2 else hw}: a panorama must be 2:1 "
                            "(width = 2 x height, HxW)")
    if steps is not None and steps < 1:
        raise OutpaintError(f"--steps must be >= 1, got {steps}")
    try:
        schedule = tuple(parse_views(views))
    except ValueError as e:
        raise OutpaintError(f"--views: {e}") from None
    if cube < 0 or cube == 1:
        raise OutpaintError(f"--cube must be 0 (none) or >= 2 pixels, got {cube}")
    check_device_name(device)
    if dtype not in DTYPES:
        raise OutpaintError(f"--dtype {dtype!r}: choose {', '.join(DTYPES)}")
    if model is not None:
        from opama_model.model_dir import ModelFolderError
        from opama_model.sd_inpaint import InpaintCheckpointError, resolve_model_arg

        try:
            resolve_model_arg(model)
        except (ModelFolderError, InpaintCheckpointError) as e:
            raise OutpaintError(str(e)) from None
    specs = [parse_input_spec(s) for s in inputs or []]
    if any(s.is_video or s.equirect for s in specs) or trajectory is not None or mask is not None:
        if cube:
            raise OutpaintError("--cube applies to panorama images, not to a video input")
        if hw is not None and hw[0] % 2:
            raise OutpaintError(f"--size {format_hw(*hw)}: a video needs an even height (H.264 pano.mp4)")
        _check_video_inputs(specs, trajectory, mask)
        return hw, schedule, specs
    for s in specs:
        try:
            image_hw(s.path)
        except ValueError as e:
            raise OutpaintError(f"{s.path}: {e}") from None
    return hw, schedule, specs


def _check_video_inputs(specs, trajectory, mask) -> None:
    """A video job's inputs: one clip (``@equirect`` only for a video), its trajectory and mask files."""
    from .video_job import probe_video_row

    if not any(s.is_video for s in specs):
        if any(s.equirect for s in specs):
            bad = next(s for s in specs if s.equirect)
            raise OutpaintError(f"--input {bad.path}@equirect: not a video file (expected one of "
                                ".mp4 .mov .mkv .webm .avi .m4v, with --mask)")
        flag = "--trajectory" if trajectory is not None else "--mask"
        raise OutpaintError(f"{flag} applies to a video input (--input CLIP.mp4@yaw,pitch,fov or "
                            "PANO.mp4@equirect)")
    try:
        probe_video_row(Row(".", tuple(specs), trajectory=_path(trajectory), mask=_path(mask)))
    except ValueError as e:
        raise OutpaintError(str(e)) from None


def _path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p).expanduser()


def run_outpaint(
    out: str | Path,
    *,
    model: str | Path | None = None,
    preset: str | None = None,
    random_weights: bool = False,
    conditioner: str = "opama",
    inputs: Sequence[str] = (),
    prompt: str = "",
    prompt_up: str | None = None,
    prompt_down: str | None = None,
    batch: str | Path | None = None,
    procedure: str = "fast",
    steps: int | None = None,
    guidance: float | None = None,
    scheduler: str | None = None,
    size: str | tuple[int, int] | None = None,
    views: str = "aog21",
    seed: int = 0,
    video: bool = False,
    cube: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    overwrite: bool = False,
    paths: Mapping[str, str | Path] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    view_progress: Callable[[int, int], None] | None = None,
    trajectory: str | Path | None = None,
    mask: str | Path | None = None,
    keyframe_every: int | None = None,
    strength: float | None = None,
    band: float | None = None,
    independent: bool = False,
    lossless: bool = False,
) -> OutpaintSummary:
    """Outpaint one panorama (``inputs`` ``IMG[@yaw,pitch,fov]`` and/or ``prompt``) into ``out``, or every
    row of ``batch`` (a CSV or a folder of photos, :func:`read_rows`) into ``out/<name>/``.

    Wraps :func:`load_model`, :func:`read_rows` and :func:`outpaint_batch`; the options are those of
    ``opama outpaint`` (``model``: a model folder, an SD inpainting folder or a cached repo id; ``size`` ``"HxW"`` or ``(H, W)``, angles in degrees). ``progress(k, n, name)``
    after each panorama of a batch and ``view_progress(k, n)`` after each view (each frame of a
    video) are called on the main process only.

    A video input (``CLIP.mp4@yaw,pitch,fov`` with an optional ``trajectory`` CSV, or
    ``PANO.mp4@equirect`` with a ``mask``) makes a 360-degree video (:mod:`.video_job`);
    ``keyframe_every``, ``strength``, ``band`` (degrees), ``independent`` and ``lossless`` apply to it.

    Returns:
        :class:`OutpaintSummary`; a batch row that fails is in ``failed`` and the others are made.

    Raises:
        OutpaintError: bad options or input files, a missing model or weights, or (one panorama)
            the panorama could not be made; nothing is written then.
    """
    try:
        hw, schedule, specs = _check_light(model=model, preset=preset, inputs=inputs, batch=batch, size=size,
                                           views=views, steps=steps, cube=cube, device=device, dtype=dtype,
                                           trajectory=trajectory, mask=mask)
        rows = (read_rows(batch, prompt) if batch is not None
                else [Row(".", tuple(specs), prompt, trajectory=_path(trajectory), mask=_path(mask))])
    except OutpaintError:
        raise
    except ValueError as e:
        raise OutpaintError(str(e)) from None
    if batch is not None and not rows:
        raise OutpaintError(f"{batch}: no rows (no photos or an empty CSV)")

    from opama_model.model_dir import ModelFolderError
    from opama_model.views import AOG21
    from opama_model.weights import MissingWeightsError

    from .runner import OutpaintSettings, distributed_context, load_model, outpaint_batch

    try:
        settings = OutpaintSettings(procedure=procedure, steps=steps, guidance=guidance, scheduler=scheduler,
                                    size=hw, seed=seed, cube=cube, video=video,
                                    views=None if schedule == AOG21 else schedule,
                                    prompt_up=prompt_up, prompt_down=prompt_down,
                                    keyframe_every=keyframe_every, strength=strength, band=band,
                                    independent=independent, lossless=lossless)
    except ValueError as e:
        raise OutpaintError(str(e)) from None
    if any(r.is_video for r in rows):
        from .video_job import temporal_settings

        try:
            temporal_settings(settings)
        except ValueError as e:
            raise OutpaintError(str(e)) from None
    rank, world, dist_device = distributed_context()
    try:
        m = load_model(model, preset=preset, random_weights=random_weights, device=dist_device or device,
                       dtype=dtype, paths=dict(paths or {}), conditioner=conditioner)
    except MissingWeightsError as e:
        raise OutpaintError(str(e).splitlines()[0]) from None
    except (ModelFolderError, ValueError) as e:
        raise OutpaintError(str(e)) from None
    main = rank == 0
    result = outpaint_batch(
        rows, m, out, settings, overwrite=overwrite, process_index=rank, num_processes=world,
        view_progress=view_progress if main else None,
        progress=progress if main and batch is not None else None,
    )
    if batch is None and result.failed:
        raise OutpaintError(result.failed[0][1])
    return OutpaintSummary(Path(out), batch is None, result.done, result.skipped, result.failed, rank, world,
                           video=batch is None and rows[0].is_video)
