"""One 360-degree video job of ``opama outpaint``: a clip (and a sentence) -> a 360-degree video.

Two kinds of row (:class:`~.inputs.Row` with one video input):

* ``clip.mp4@yaw,pitch,fov`` (optionally ``trajectory``: CSV ``frame,yaw,pitch,fov``, a turning
  camera): every frame's photo is pasted at its direction on a world-fixed equirect canvas and
  the rest of the sphere is outpainted with the temporal method of
  :func:`opama_model.video_pipeline.outpaint_video`;
* ``pano.mp4@equirect`` with ``mask`` (a PNG, or a video of masks; white = regenerate): a 360-degree
  video edited inside the mask by the same temporal machinery; every unmasked pixel is the input's.

Files in the row's folder (``meta.json`` last, every file atomic):

* ``pano.mp4``: the equirect video, H.264 (yuv420p, plays in browsers), the clip's frame rate;
* ``pano.mkv`` with ``lossless``: the same frames bit-exact (FFV1), for exact checks and ``opama eval``;
* ``input_mask.png`` (frame 0's input pixels, white) and ``input_masks.npy`` (``(T, H, W)`` bool, every
  frame's; ``np.load(..., allow_pickle=False)``);
* ``index.html``: drag-to-look player of ``pano.mp4``; ``look.mp4`` with ``video``: a look-around;
* ``meta.json``: the image fields, ``kind: "video"`` and ``video`` (frames, fps, keyframes, UNet passes
  per frame and in all, the ratio to a full panorama, the temporal settings, seconds per stage). It
  is the done record: ``source`` signs the clip, trajectory and mask files' bytes.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from opama_tools.io import atomic_path, atomic_write_text
from opama_tools.jobs import done_fields, settings_key, source_signature

from .inputs import Row

__all__ = ["CheckedVideo", "video_output_files", "temporal_settings", "probe_video_row", "check_video_row",
           "outpaint_video_row"]

META = "meta.json"


def video_output_files(settings) -> list[str]:
    """Files a finished video folder holds (besides ``meta.json``) for :class:`~.runner.OutpaintSettings`."""
    files = ["pano.mp4", "input_mask.png", "input_masks.npy"]
    files += ["index.html"] if settings.viewer else []
    files += ["pano.mkv"] if settings.lossless else []
    files += ["look.mp4"] if settings.video else []
    return files


ALL_VIDEO_FILES = ("pano.mp4", "pano.mkv", "input_masks.npy", "look.mp4")
"""Files only a video folder has (removed when an image is made in the folder, and vice versa)."""


def temporal_settings(settings):
    """The :class:`~opama_model.video_pipeline.TemporalSettings` of ``settings`` (its defaults where
    an option is None).

    Raises:
        ValueError: an out-of-range knob (one line naming it).
    """
    from opama_model.video_pipeline import TemporalSettings

    given = dict(keyframe_every=settings.keyframe_every, strength=settings.strength, band=settings.band,
                 independent=settings.independent or None)
    try:
        return TemporalSettings(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:  # name the CLI option
        msg = str(e)
        for name in given:
            msg = msg.replace(f"temporal setting {name}=", f"--{name.replace('_', '-')} ")
        raise ValueError(msg) from None


@dataclass
class CheckedVideo:
    """A video row read and checked before anything runs (see :func:`check_video_row`)."""

    frames: int
    fps: float
    hw: tuple[int, int]
    directions: list[tuple[float, float, float]] | None  # per frame; None for an equirect input
    temporal: object
    signature: str
    key: str


def probe_video_row(row: Row):
    """Probe a video row's files without torch: ``(VideoInfo, directions per frame or None)``.

    Raises:
        ValueError: one line naming the file or option: not exactly one video input, not a video,
            an unreadable clip, a bad trajectory or mask, an option that does not apply.
    """
    from opama_tools.videos import probe_video, read_mask_frames, read_trajectory

    if row.error:
        raise ValueError(row.error)
    if len(row.inputs) != 1:
        raise ValueError(f"a video input must be the only input, got {len(row.inputs)} inputs "
                         f"({', '.join(str(s.path) for s in row.inputs)})")
    spec = row.inputs[0]
    info = probe_video(spec.path)
    if spec.equirect:
        if row.mask is None:
            raise ValueError(f"{spec.path}@equirect: an equirect video is edited inside --mask "
                             "(white = regenerate); give --mask PNG|MP4")
        if row.trajectory is not None:
            raise ValueError(f"--trajectory {row.trajectory}: applies to a clip pasted at a direction, "
                             "not to an @equirect video")
        if abs(info.width - 2 * info.height) > 1:
            raise ValueError(f"{spec.path}: an @equirect video must be 2:1 (width = 2 x height), "
                             f"got {info.height}x{info.width} (HxW)")
        next(iter(read_mask_frames(row.mask, info.frames, (info.height, info.width))))
        return info, None
    if row.mask is not None:
        raise ValueError(f"--mask {row.mask}: applies to an equirect video (--input PANO.mp4@equirect)")
    if row.trajectory is not None:
        return info, [tuple(map(float, d)) for d in read_trajectory(row.trajectory, info.frames)]
    return info, [spec.direction] * info.frames


def check_video_row(row: Row, model, settings) -> CheckedVideo:
    """Probe a video row (:func:`probe_video_row`) and build its done-record fields. The canvas is
    ``settings.size``, else an equirect input's own size, else the model's default.

    Raises:
        ValueError: see :func:`probe_video_row`; a bad temporal knob.
    """
    from opama_model.pipeline import default_canvas_size

    info, directions = probe_video_row(row)
    spec = row.inputs[0]
    if settings.size is not None:
        h, w = settings.size
    elif spec.equirect:
        h, w = info.height, 2 * info.height
    else:
        h, w = default_canvas_size(model.pipeline.view_size)
    if h % 2:
        raise ValueError(f"--size {h}x{w}: a video needs an even height (H.264 pano.mp4); "
                         f"use e.g. {h + 1}x{2 * (h + 1)}")
    temporal = temporal_settings(settings)
    files = [p for p in (spec.path, row.trajectory, row.mask) if p is not None]
    signature = source_signature(files)
    image_opts = {k: v for k, v in asdict(settings).items()
                  if k not in ("size", "cube", "video", "viewer", "lossless")}
    key = settings_key("outpaint-video", dict(
        input=dict(direction=list(spec.direction), equirect=spec.equirect,
                   trajectory=row.trajectory is not None, mask=row.mask is not None),
        prompt=row.prompt, model=model.digest, size=[h, w], **image_opts,
        temporal=asdict(temporal)))
    return CheckedVideo(info.frames, float(info.fps), (h, w), directions, temporal, signature, key)


def _procedure(settings):
    """The :class:`~opama_model.pipeline.Procedure` of ``settings`` (its steps, guidance and scheduler overrides)."""
    from dataclasses import replace

    from opama_model.pipeline import PROCEDURES

    overrides = dict(steps=settings.steps, guidance=settings.guidance, scheduler=settings.scheduler)
    return replace(PROCEDURES[settings.procedure], **{k: v for k, v in overrides.items() if v is not None})


def _masks_npy(path: Path, n: int, hw: tuple[int, int]):
    """A ``(n, H, W)`` bool ``.npy`` memory map written at ``path`` (frames stream in; no RAM copy)."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.bool_, shape=(n, *hw))


def outpaint_video_row(row: Row, model, folder: str | Path, settings, checked: CheckedVideo, *,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Make one 360-degree video into ``folder`` (``meta.json`` last); returns the meta.

    Frames stream from the clip through the model into the writers: the video is never held in
    memory. An error leaves no output under its final name (and no ``meta.json``).
    """
    from PIL import Image

    from opama_model.video_pipeline import outpaint_video, summarise_video
    from opama_tools.videos import VideoWriter, read_frames, read_mask_frames

    from .runner import CUBE_NAMES

    folder = Path(folder)
    spec = row.inputs[0]
    h, w = checked.hw
    n = checked.frames
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META).unlink(missing_ok=True)  # "not done" until the new meta.json lands
    wanted = set(video_output_files(settings))
    for stale in ["pano.png", "index.html", *ALL_VIDEO_FILES, *(f"cube_{c}.png" for c in CUBE_NAMES)]:
        if stale not in wanted:
            (folder / stale).unlink(missing_ok=True)

    if spec.equirect:
        frames = read_frames(spec.path, size=(h, w))
        masks = read_mask_frames(row.mask, n, (h, w))
        directions = None
    else:
        frames = read_frames(spec.path)
        masks = None
        directions = checked.directions
    proc = _procedure(settings)
    results = outpaint_video(
        model.pipeline, frames, directions, row.prompt, masks=masks, height=h, width=w,
        procedure=proc, seed=settings.seed, temporal=checked.temporal,
        prompt_up=settings.prompt_up, prompt_down=settings.prompt_down,
        **({} if settings.views is None else dict(schedule=settings.views)),
    )
    per_frame: list[dict] = []
    poster = None
    with contextlib.ExitStack() as stack:
        mp4 = stack.enter_context(VideoWriter(folder / "pano.mp4", checked.fps))
        mkv = stack.enter_context(VideoWriter(folder / "pano.mkv", checked.fps, lossless=True)) \
            if settings.lossless else None
        masks_tmp = stack.enter_context(atomic_path(folder / "input_masks.npy"))
        masks_out = _masks_npy(masks_tmp, n, (h, w))
        for r in results:
            if r.index >= n:
                raise RuntimeError(f"internal: the model gave more frames than the clip's {n}")
            mp4.append(r.image)
            if mkv is not None:
                mkv.append(r.image)
            masks_out[r.index] = r.input_mask
            per_frame.append(r.info())
            if r.index == 0:
                poster = r.image
                with atomic_path(folder / "input_mask.png") as tmp:
                    Image.fromarray(r.input_mask.astype(np.uint8) * 255).save(tmp, format="PNG")
            if progress is not None:
                progress(r.index + 1, n)
        if len(per_frame) != n:
            raise ValueError(f"{spec.path}: {len(per_frame)} frames decoded, the clip says {n}")
        masks_out.flush()
        del masks_out
    t_write = time.perf_counter()
    title = f"opama: {row.prompt or row.name}"
    if settings.viewer:
        from .viewer import write_video_viewer

        write_video_viewer(folder / "index.html", "pano.mp4", title=title, poster=poster)
    if settings.video:
        from .video import write_look_around_video

        write_look_around_video(folder / "look.mp4",
                                read_frames(folder / ("pano.mkv" if settings.lossless else "pano.mp4")),
                                checked.fps, n_frames=n)
    video = summarise_video(per_frame, checked.temporal, fps=checked.fps, directions=checked.directions)
    info = dict(procedure=proc.name, scheduler=proc.scheduler, steps=proc.steps, guidance=proc.guidance,
                guidance_fraction=proc.guidance_fraction, seed=int(settings.seed), size=[h, w],
                prompt_up=settings.prompt_up, prompt_down=settings.prompt_down,
                views_schedule=None if settings.views is None else [list(v) for v in settings.views])
    seconds = dict(video.pop("seconds", {}))
    seconds["write"] = round(time.perf_counter() - t_write, 4)
    seconds["video"] = round(time.perf_counter() - t0, 4)
    meta = dict(
        name=row.name, **info, kind="video",
        mode="video-edit" if spec.equirect else ("text+video" if row.prompt else "video"),
        model_id=model.model_id, preset=model.preset, method=model.method,
        video=video, seconds=seconds, outputs=sorted(wanted), **done_fields(checked.signature, checked.key),
    )
    meta.update(prompt=row.prompt, inputs=[dict(
        path=str(spec.path), equirect=spec.equirect, yaw=spec.yaw, pitch=spec.pitch, fov=spec.fov,
        trajectory=None if row.trajectory is None else str(row.trajectory),
        mask=None if row.mask is None else str(row.mask))])
    atomic_write_text(folder / META, json.dumps(meta, indent=2) + "\n")
    return meta
