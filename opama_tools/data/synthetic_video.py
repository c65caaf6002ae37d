"""Synthetic 360° videos: a scene of :mod:`opama_tools.data.synthetic` with a moving object, a moving
sun and/or a turning NFoV camera, the matching NFoV input clip and its trajectory.

Conventions (as the image generator and the video pipeline): each reference frame is a
**world-fixed** equirectangular panorama ``(H, 2H, 3)`` ``uint8`` (yaw 0 at the centre column,
positive yaw to the right, positive pitch up, degrees); the camera only chooses which part the
input photo shows. Motions (over the clip, frame ``k`` of ``n`` at ``t = k / (n - 1)``):

* ``"object"``: a box on the ground (:class:`~opama_tools.data.synthetic.Box`, 2 x 3 x 2 m at
  ``object_distance`` m) travels ``object_span`` degrees of azimuth to the right, centred on the
  first frame's view direction: it crosses the input view and leaves it into the generated region;
* ``"sun"``: the sun turns ``sun_turn`` degrees of azimuth and sinks ``sun_drop`` degrees (never
  below 5 degrees); buildings and ground are lit by it, so their shading changes too;
* ``"camera"``: the view turns ``camera_turn`` degrees of yaw (positive: right) and
  ``camera_tilt`` degrees of pitch; the trajectory CSV lists every frame's direction.

Object and sun need an outdoor scene (an indoor room has neither): indoor clips only turn the camera.

HDR frames are tonemapped with the ``percentile`` operator of :mod:`opama_tools.data.tonemap`
(the prepare default) at **one** scale for the whole clip, frame 0's, so brightness does not
flicker. The input photo of frame ``k`` is the perspective cut (bilinear,
:func:`opama_model.spherical.equi_to_pers`) of the 8-bit reference frame ``k`` at the
trajectory's direction, as the image demo cuts its input views from the 8-bit panoramas.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import numpy as np

from opama_tools.data.synthetic import Box, Scene, make_scene, read_scene_records, render_equirect

__all__ = [
    "MOTIONS",
    "VideoMotion",
    "VideoFrame",
    "frame_scene",
    "camera_directions",
    "render_video",
    "generate_video_dataset",
]

MOTIONS = ("object", "sun", "camera")
_OBJECT_COLOURS = ("brick red", "dark blue", "pale yellow", "green")
CAPTIONS_FILE = "captions.jsonl"
BATCH_FILE = "video_batch.csv"


@dataclass(frozen=True)
class VideoMotion:
    """How far things move over a whole clip (degrees, metres)."""

    object_span: float = 50.0
    object_distance: float = 9.0
    sun_turn: float = 40.0
    sun_drop: float = 10.0
    camera_turn: float = 60.0
    camera_tilt: float = 0.0


@dataclass(frozen=True)
class VideoFrame:
    """One frame of a synthetic video: ``pano`` ``uint8`` ``(H, 2H, 3)`` (the world-fixed reference),
    ``photo`` ``uint8`` ``(v, v, 3)`` (the NFoV input at ``direction`` = ``(yaw, pitch, fov)``,
    degrees) and the frame's ``scene``."""

    index: int
    pano: np.ndarray
    photo: np.ndarray
    direction: tuple[float, float, float]
    scene: Scene


def _check_motion(motion: Iterable[str], scene_kind: str) -> tuple[str, ...]:
    m = tuple(dict.fromkeys(motion))
    bad = [x for x in m if x not in MOTIONS]
    if bad:
        raise ValueError(f"unknown motion {bad[0]!r}; choose from {', '.join(MOTIONS)}")
    if scene_kind != "outdoor" and ("object" in m or "sun" in m):
        raise ValueError("the 'object' and 'sun' motions need an outdoor scene (an indoor clip can only "
                         "turn the camera)")
    return m


def _t(k: int, n: int) -> float:
    return k / (n - 1) if n > 1 else 0.0


def _wrap180(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


def object_colour(scene: Scene) -> str:
    """The moving box's colour name (from the scene's seed)."""
    return _OBJECT_COLOURS[scene.seed % len(_OBJECT_COLOURS)]


def frame_scene(scene: Scene, k: int, n: int, motion: Iterable[str] = MOTIONS, *, yaw: float = 0.0,
                settings: VideoMotion = VideoMotion()) -> Scene:
    """The scene at frame ``k`` of ``n``: a copy of ``scene`` with the sun moved and the box added
    (``yaw``: the first frame's view direction, where the box's path is centred). ``scene`` is
    not modified."""
    m = _check_motion(motion, scene.kind)
    t = _t(k, n)
    changes: dict = {}
    if "sun" in m:
        changes["sun_yaw"] = _wrap180(scene.sun_yaw + settings.sun_turn * t)
        changes["sun_pitch"] = max(5.0, scene.sun_pitch - settings.sun_drop * t)
    if "object" in m:
        az = math.radians(yaw - settings.object_span / 2 + settings.object_span * t)
        cx, cz = settings.object_distance * math.sin(az), settings.object_distance * math.cos(az)
        ground = -scene.camera_height
        box = Box((cx - 1.0, ground, cz - 1.0), (cx + 1.0, ground + 3.0, cz + 1.0), object_colour(scene))
        changes["buildings"] = [*scene.buildings, box]
    return dataclasses.replace(scene, **changes)


def camera_directions(n: int, motion: Iterable[str] = MOTIONS, *, yaw: float = 0.0, pitch: float = 0.0,
                      fov: float = 90.0, settings: VideoMotion = VideoMotion()) -> list[tuple[float, float, float]]:
    """``(yaw, pitch, fov)`` of the input view at every frame (degrees; yaw wrapped to [-180, 180)):
    fixed without the ``"camera"`` motion, else turning linearly by ``camera_turn`` / ``camera_tilt``."""
    turn = "camera" in tuple(motion)
    out = []
    for k in range(n):
        t = _t(k, n) if turn else 0.0
        p = pitch + settings.camera_tilt * t
        out.append((_wrap180(yaw + settings.camera_turn * t), float(max(-90.0, min(90.0, p))), float(fov)))
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    from opama_tools.data.prepare import to_uint8

    return to_uint8(x)


def render_video(scene: Scene, n_frames: int, height: int, motion: Iterable[str] = MOTIONS, *, yaw: float = 0.0,
                 pitch: float = 0.0, fov: float = 90.0, view_size: int = 64, settings: VideoMotion = VideoMotion(),
                 supersample: int = 2) -> Iterator[VideoFrame]:
    """Render ``n_frames`` frames of ``scene`` with ``motion`` (see the module doc): each a
    :class:`VideoFrame` with the ``height x 2 height`` reference panorama, the ``view_size``
    square input photo and its direction (the first at ``yaw``/``pitch``/``fov``, degrees).

    Raises:
        ValueError: an unknown motion, object/sun motion in an indoor scene, a bad size.
    """
    import torch

    from opama_model.spherical import equi_to_pers
    from opama_tools.data.tonemap import percentile, percentile_alpha

    m = _check_motion(motion, scene.kind)
    n_frames, height, view_size = int(n_frames), int(height), int(view_size)
    if n_frames < 1:
        raise ValueError(f"a video needs at least 1 frame, got {n_frames}")
    if height < 2 or view_size < 1:
        raise ValueError(f"height must be >= 2 and view_size >= 1 pixels, got {height} and {view_size}")
    dirs = camera_directions(n_frames, m, yaw=yaw, pitch=pitch, fov=fov, settings=settings)
    alpha = None
    for k in range(n_frames):
        sc = frame_scene(scene, k, n_frames, m, yaw=yaw, settings=settings)
        hdr = render_equirect(sc, height, 2 * height, supersample=supersample)
        if alpha is None:
            alpha, _ = percentile_alpha(hdr)
        pano = _to_uint8(percentile(hdr, alpha=alpha, out=hdr))
        y, p, f = dirs[k]
        x = torch.from_numpy(pano).permute(2, 0, 1)[None].float() / 255.0
        view = equi_to_pers(x, y, p, f, (view_size, view_size))[0, 0]
        photo = (view.permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        yield VideoFrame(k, pano, photo, dirs[k], sc)


def _motion_text(scene: Scene, motion: tuple[str, ...], settings: VideoMotion) -> str:
    parts = []
    if "object" in motion:
        parts.append(f"a {object_colour(scene)} box moves from left to right in front")
    if "sun" in motion:
        parts.append("the sun moves and sinks")
    if "camera" in motion:
        side = "right" if settings.camera_turn >= 0 else "left"
        parts.append(f"the camera turns {abs(settings.camera_turn):g} degrees to the {side}")
    return "; ".join(parts)


def generate_video_dataset(
    out_dir: str | Path,
    n: int,
    frames: int = 12,
    height: int = 64,
    seed: int = 0,
    *,
    kind: Literal["outdoor", "indoor", "random"] = "outdoor",
    motion: Iterable[str] = MOTIONS,
    fps: float = 8.0,
    yaw: float = 0.0,
    pitch: float = 0.0,
    fov: float = 90.0,
    view_size: int = 64,
    settings: VideoMotion = VideoMotion(),
    lossless: bool = True,
    supersample: int = 2,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write ``n`` synthetic 360° clips (scene ``k``: seed ``seed + k``, name ``vid_NNNN``) into ``out_dir``:

    * ``refs/NAME.mp4``: the reference equirect video (H.264, ``frames`` frames at ``fps``,
      ``height x 2 height``); with ``lossless`` also ``refs/NAME.mkv``, the same frames bit-exact (FFV1);
    * ``clips/NAME.mp4``: the NFoV input clip (``view_size`` square, H.264);
      ``clips/NAME.csv``: its trajectory (``frame,yaw,pitch,fov``, every frame);
    * ``captions.jsonl``: one record per clip, ``{"image": "refs/NAME.mp4", "caption", "seed", "kind",
      "motion", "motion_text", "frames", "fps", "height", "directions", "scene", ...}`` (the caption is
      the scene's description, as the image generator's ``scenes.jsonl``; readable by
      :func:`opama_tools.data.captions.load_captions`);
    * ``video_batch.csv``: ``image,prompt,yaw,pitch,fov,name,trajectory`` per clip (paths relative to
      ``out_dir``; yaw/pitch/fov of frame 0).

    Object and sun motions apply to outdoor scenes; indoor scenes (``kind`` indoor or random) only
    turn the camera. A clip whose files exist and whose record has the same settings is kept
    unless ``overwrite``; every file is written atomically. ``height`` and ``view_size`` must be
    even (H.264). Returns the clip names.

    Raises:
        ValueError: a bad option or an unusable ``out_dir`` (one line).
    """
    from opama_tools.io import atomic_path, atomic_write_text, ensure_output_dir
    from opama_tools.videos import VideoWriter, write_trajectory

    n, frames, height, view_size = int(n), int(frames), int(height), int(view_size)
    if n < 1 or frames < 1:
        raise ValueError(f"need at least 1 clip of at least 1 frame, got n={n}, frames={frames}")
    if height < 2 or height % 2 or view_size < 2 or view_size % 2:
        raise ValueError(f"height and view_size must be even (H.264), got {height} and {view_size} pixels")
    motion = tuple(dict.fromkeys(motion))
    _check_motion(motion, "outdoor")
    out = ensure_output_dir(Path(out_dir))
    meta = out / CAPTIONS_FILE
    existing: dict[str, dict] = {}
    if meta.exists():
        existing = {r["image"]: r for r in read_scene_records(meta, "move it away or choose another folder")}
    names: list[str] = []
    records: list[dict] = []
    for k in range(n):
        s = seed + k
        scene = make_scene(s, kind)
        clip_motion = motion if scene.kind == "outdoor" else tuple(x for x in motion if x == "camera")
        name = f"vid_{s:04d}"
        dirs = camera_directions(frames, clip_motion, yaw=yaw, pitch=pitch, fov=fov, settings=settings)
        rec = {
            "image": f"refs/{name}.mp4", "name": name, "seed": s, "kind": scene.kind, "caption": scene.description,
            "motion": list(clip_motion), "motion_text": _motion_text(scene, clip_motion, settings),
            "frames": frames, "fps": float(fps), "height": height, "width": 2 * height, "view_size": view_size,
            "lossless": bool(lossless), "supersample": supersample, "settings": dataclasses.asdict(settings),
            "clip": f"clips/{name}.mp4", "trajectory": f"clips/{name}.csv",
            "reference": f"refs/{name}.mp4", "reference_lossless": f"refs/{name}.mkv" if lossless else None,
            "directions": [list(d) for d in dirs],
            "scene": scene.to_dict(),
        }
        rec = json.loads(json.dumps(rec))  # as read back from the JSONL (tuples become lists)
        files = [out / rec["clip"], out / rec["trajectory"], out / rec["reference"]]
        if lossless:
            files.append(out / rec["reference_lossless"])
        if overwrite or existing.get(rec["image"]) != rec or not all(f.is_file() for f in files):
            _write_clip(out, rec, scene, clip_motion, yaw, pitch, fov, settings, supersample, VideoWriter)
            write_trajectory(out / rec["trajectory"], dirs)
        names.append(name)
        records.append(rec)
        existing[rec["image"]] = rec
        atomic_write_text(meta, "".join(json.dumps(r) + "\n" for r in existing.values()))
        if progress is not None:
            progress(k + 1)
    with atomic_path(out / BATCH_FILE) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["image", "prompt", "yaw", "pitch", "fov", "name", "trajectory"])
            w.writeheader()
            for r in records:
                y, p, fv = r["directions"][0]
                w.writerow({"image": r["clip"], "prompt": r["caption"], "yaw": f"{y:g}", "pitch": f"{p:g}",
                            "fov": f"{fv:g}", "name": r["name"], "trajectory": r["trajectory"]})
    return names


def _write_clip(out: Path, rec: dict, scene: Scene, motion: tuple[str, ...], yaw: float, pitch: float, fov: float,
                settings: VideoMotion, supersample: int, writer_cls) -> None:
    import contextlib

    fps = rec["fps"]
    with contextlib.ExitStack() as stack:
        ref = stack.enter_context(writer_cls(out / rec["reference"], fps))
        clip = stack.enter_context(writer_cls(out / rec["clip"], fps))
        exact = stack.enter_context(writer_cls(out / rec["reference_lossless"], fps, lossless=True)) \
            if rec["reference_lossless"] else None
        for fr in render_video(scene, rec["frames"], rec["height"], motion, yaw=yaw, pitch=pitch, fov=fov,
                               view_size=rec["view_size"], settings=settings, supersample=supersample):
            ref.append(fr.pano)
            clip.append(fr.photo)
            if exact is not None:
                exact.append(fr.pano)
