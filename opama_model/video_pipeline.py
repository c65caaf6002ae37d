"""360-degree video over :class:`~opama_model.pipeline.OPaMaPipeline`: an NFoV clip (or an equirect clip
and a mask) -> a temporally consistent equirectangular video, frame by frame (:func:`outpaint_video`).

The method (``docs/model.md``, "360° video"):

* **World-fixed state.** Panoramas are world-fixed (yaw 0 at the centre column): a turning camera
  moves the input footprint on the canvas, the world does not rotate, so the previous output is
  the state of the next frame without any warp.
* **Frame 0**: a full panorama through the image loop (exactly ``pipe(...)`` for that photo and seed).
* **Frame t > 0**: the state is the previous output with frame t's input pasted (outpaint: the photo
  at its direction; inpaint: every pixel outside the mask). Only a region ``R_t`` is regenerated:
  the pixels that were input at t-1 and are not at t (newly uncovered by a turning camera or a
  shrinking footprint / growing mask) and the generated pixels within ``band`` degrees of input
  pixels that changed by more than ``change_threshold`` 8-bit levels since t-1 (moving content
  at the input's border must continue outside it). Only pixels that are input at both frames can
  change: a turning camera over a static world changes no content, the state already holds what
  was generated there, and the newly covered pixels simply overwrite it (a seam with the old
  generation may remain at the leading edge: regenerating a band ahead of it every frame would
  fix it at the price of flicker in exactly the region that matters for temporal consistency).
  An empty ``R_t`` costs no UNet call: a static clip gives exactly the same frame again.
* **Few views.** ``R_t`` is regenerated with one square view centred on the input direction
  (inpaint: on ``R_t``'s mean direction, rounded to 5 degrees so that it is stable over frames)
  whose fov holds ``R_t`` plus ``context`` degrees of known surroundings (rounded up to 10
  degrees, at most ``max_fov``); what it cannot hold gets greedy completion views at the image
  loop's fov (as :func:`~opama_model.pipeline.plan_views`). Each view: known = everything but
  ``R_t``; initial latent = the VAE latent of the current state's view, noised to ``strength``
  with **a fixed noise per view direction** (drawn from the seed and the direction, the same
  every frame), denoised by the inpainting UNet; only ``R_t`` is pasted back, the band with a
  ramp (weight 1 next to the input, falling in 4 steps to 1/4 at ``band`` degrees) over the previous
  pixels, so that no seam appears at the band's outer edge (newly uncovered pixels: weight 1).
* **Keyframes** (every ``keyframe_every`` frames; default 0 = none after frame 0, because a refresh
  is a change of the whole accumulated region: on the demo model a keyframe at frame 12 of a
  14-frame clip raised the mean flicker from 0.036 to 0.085 levels, ``benchmarks/bench_video.py``;
  use them on long clips where the band drifts): the pixels regenerated
  since the previous keyframe (dilated by ``band``) are refreshed together, at
  ``keyframe_strength``, from the propagated state, so that regions regenerated piecewise over
  several frames become one coherent fill; the refresh is **blended in** over ``blend_frames``
  frames (a linear ramp) instead of switched, and skipped when nothing was regenerated.
* ``independent=True``: the per-frame baseline, every frame a full panorama with the same seed.

Every UNet pass is counted per frame (:class:`VideoFrameResult`), :func:`summarise_video` gives the
``meta.json`` "video" object. Frames are streamed: the generator never holds the whole video.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .canvas import cut_view_only
from .directions import check_direction
from .pipeline import (
    COMPLETION_CANDIDATES,
    PROCEDURES,
    OPaMaPipeline,
    Procedure,
    _guided_steps,
    _Timer,
    default_canvas_size,
    make_scheduler,
    paste_inputs,
    resolve_batched_cfg,
    to_uint8,
)
from .spherical import dir_to_lonlat, equirect_directions, pers_to_equi, project_to_view, rotation_matrix
from .views import AOG21

__all__ = ["TemporalSettings", "VideoFrameResult", "outpaint_video", "summarise_video", "dilate_degrees",
           "regenerate_region"]


@dataclass(frozen=True)
class TemporalSettings:
    """Knobs of the temporal method (module docstring). Angles in degrees.

    Attributes:
        keyframe_every: a keyframe refresh every this many frames (0: frame 0 only).
        strength: partial-noising strength in (0, 1] of the regenerated region (1: from pure noise).
        band: width of the ring outside the input footprint that may be regenerated where the
            input changed near its border, degrees.
        change_threshold: an input pixel changed when a channel differs from the previous output by
            more than this, 8-bit levels.
        independent: the per-frame baseline: every frame a full panorama (same seed each frame).
        keyframe_strength: partial-noising strength of a keyframe refresh, (0, 1].
        blend_frames: frames over which a keyframe refresh is blended in (1: switched at once).
        context: known surroundings added to the fov of a regeneration view, degrees.
        max_fov: widest regeneration view, degrees (beyond: greedy completion views).
    """

    keyframe_every: int = 0
    strength: float = 0.5
    band: float = 8.0
    change_threshold: float = 8.0
    independent: bool = False
    keyframe_strength: float = 0.6
    blend_frames: int = 4
    context: float = 10.0
    max_fov: float = 150.0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"temporal setting {name}={getattr(self, name)!r}: {why}")

        if isinstance(self.keyframe_every, bool) or not isinstance(self.keyframe_every, int) or self.keyframe_every < 0:
            raise bad("keyframe_every", "must be an integer >= 0 (0: frame 0 only)")
        for name in ("strength", "keyframe_strength"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise bad(name, "must be within (0, 1]")
        for name, hi in (("band", 90.0), ("change_threshold", 255.0), ("context", 90.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= hi):
                raise bad(name, f"must be within [0, {hi:g}]")
        if isinstance(self.blend_frames, bool) or not isinstance(self.blend_frames, int) or self.blend_frames < 1:
            raise bad("blend_frames", "must be an integer >= 1")
        if not (isinstance(self.max_fov, (int, float)) and 30 <= self.max_fov < 180):
            raise bad("max_fov", "must be within [30, 180) degrees")
        if not isinstance(self.independent, bool):
            raise bad("independent", "must be True or False")


@dataclass
class VideoFrameResult:
    """One output frame of :func:`outpaint_video`.

    Attributes:
        index: frame number from 0.
        image: uint8 ``(H, W, 3)`` equirect frame.
        input_mask: bool ``(H, W)``, True where the pixel is this frame's input.
        keyframe: frame 0, an independent frame, or a frame whose keyframe refresh ran.
        unet_passes, unet_rows: UNet calls and batch rows spent on this frame.
        regenerated_pixels: canvas pixels regenerated (frame 0: every non-input pixel).
        views: the views that ran, as the image pipeline's ``info["views"]`` (plus ``fov``).
        seconds: wall seconds per stage and ``total``.
    """

    index: int
    image: np.ndarray
    input_mask: np.ndarray
    keyframe: bool
    unet_passes: int
    unet_rows: int
    regenerated_pixels: int
    views: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def info(self) -> dict:
        """Everything but the arrays, JSON-ready (what :func:`summarise_video` takes)."""
        return dict(index=self.index, keyframe=self.keyframe, unet_passes=self.unet_passes,
                    unet_rows=self.unet_rows, regenerated_pixels=self.regenerated_pixels, views=self.views,
                    seconds=self.seconds)


def summarise_video(frames_info: Sequence[dict], temporal: TemporalSettings | None = None, *,
                    fps: float | None = None, directions: Sequence[Sequence[float]] | None = None) -> dict:
    """The ``meta.json`` "video" object from the frames' :meth:`VideoFrameResult.info` dicts.

    Pass ratios are each frame's UNet passes over frame 0's (a full panorama); seconds are summed
    per stage over the frames.
    """
    if not frames_info:
        raise ValueError("no frames")
    passes = [int(f["unet_passes"]) for f in frames_info]
    full = passes[0]
    ratios = [p / full for p in passes[1:]] if full > 0 else []
    seconds: dict[str, float] = {}
    for f in frames_info:
        for k, v in f.get("seconds", {}).items():
            seconds[k] = round(seconds.get(k, 0.0) + float(v), 4)
    return dict(
        frames=len(frames_info), fps=fps,
        keyframes=[int(f["index"]) for f in frames_info if f.get("keyframe")],
        unet_passes_per_frame=passes, unet_passes_total=sum(passes), full_panorama_unet_passes=full,
        mean_pass_ratio_after_first=(sum(ratios) / len(ratios)) if ratios else None,
        max_pass_ratio_after_first=max(ratios) if ratios else None,
        regenerated_pixels_per_frame=[int(f.get("regenerated_pixels", 0)) for f in frames_info],
        directions=None if directions is None else [[float(v) for v in d] for d in directions],
        temporal=asdict(temporal) if temporal is not None else None,
        seconds=seconds,
    )


# ----------------------------------------------------------------------------- geometry helpers
def dilate_degrees(mask: torch.Tensor, degrees: float) -> torch.Tensor:
    """``(1, 1, H, W)`` bool equirect mask dilated by ``degrees``: a box of half-width ``degrees``
    in the local north/east metric (``degrees`` of latitude, ``degrees / cos(latitude)`` of
    longitude, wrapping at +-180), rounded up to whole pixels."""
    if degrees <= 0 or not bool(mask.any()):
        return mask.clone()
    h, w = mask.shape[-2:]
    rv = min(h, math.ceil(degrees * h / 180.0))
    m = F.max_pool2d(mask.float(), kernel_size=(2 * rv + 1, 1), stride=1, padding=(rv, 0))[0, 0]
    half = w // 2
    lat = (0.5 - (torch.arange(h, dtype=torch.float64) + 0.5) / h) * math.pi
    rh = torch.ceil(degrees / torch.cos(lat).clamp_min(1e-6) * w / 360.0).clamp(max=half).long().to(m.device)
    padded = torch.cat((m[:, w - half:], m, m[:, :half]), dim=1)  # circular: column x at x + half
    cs = torch.cat((torch.zeros(h, 1, device=m.device), padded.cumsum(1)), dim=1)
    x = torch.arange(w, device=m.device)[None, :] + half
    lo, hi = x - rh[:, None], x + rh[:, None] + 1
    count = cs.gather(1, hi) - cs.gather(1, lo)
    return (count > 0.5)[None, None]


BAND_LEVELS = 4
"""Steps of the band's blending ramp (:func:`_band_weight`)."""


def _band_weight(inputs: torch.Tensor, band: float) -> torch.Tensor:
    """``(1, 1, H, W)`` float: 1 within ``band / BAND_LEVELS`` degrees of ``inputs`` (bool), falling
    in :data:`BAND_LEVELS` steps to ``1 / BAND_LEVELS`` at ``band`` degrees (regenerated band pixels
    continue the input at its border and fade into the previous frame's pixels outwards: no seam at
    the band's outer edge)."""
    w = torch.zeros(inputs.shape, dtype=torch.float32, device=inputs.device)
    for k in range(BAND_LEVELS, 0, -1):
        w = torch.where(dilate_degrees(inputs, band * k / BAND_LEVELS), torch.tensor(1 - (k - 1) / BAND_LEVELS), w)
    return w


def _needed_fov(region: torch.Tensor, yaw: float, pitch: float) -> float:
    """Square-view fov (degrees) that holds every pixel of ``region (1, 1, H, W)`` seen from
    ``(yaw, pitch)``; 360 when some pixel is not in front."""
    h, w = region.shape[-2:]
    dirs = equirect_directions(h, w, dtype=torch.float64, device=region.device)[region[0, 0]]
    cam = dirs @ rotation_matrix(yaw, pitch, dtype=torch.float64, device=region.device)
    x, y, z = cam.unbind(-1)
    if not bool((z > 1e-3).all()):
        return 360.0
    t = torch.maximum((x / z).abs(), (y / z).abs()).max()
    # one canvas pixel of margin around the outermost pixel centre
    return 2 * math.degrees(math.atan(float(t))) + 2 * 360.0 / w


def _mean_direction(region: torch.Tensor) -> tuple[float, float] | None:
    """``(yaw, pitch)`` of the solid-angle-weighted mean direction of ``region``, rounded to 5
    degrees; None when the directions cancel out."""
    h, w = region.shape[-2:]
    dirs = equirect_directions(h, w, dtype=torch.float64, device=region.device)
    lat = (0.5 - (torch.arange(h, dtype=torch.float64, device=region.device) + 0.5) / h) * math.pi
    wgt = torch.cos(lat)[:, None].expand(h, w)[region[0, 0]]
    m = (dirs[region[0, 0]] * wgt[:, None]).sum(0)
    if float(m.norm()) < 1e-3 * float(wgt.sum()):
        return None
    lon, lat_c = dir_to_lonlat(m / m.norm())
    yaw, pitch = math.degrees(float(lon)), math.degrees(float(lat_c))
    return round(yaw / 5) * 5.0, max(-90.0, min(90.0, round(pitch / 5) * 5.0))


def _view_noise(seed: int, yaw: float, pitch: float, shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed initial noise of a regeneration view at ``(yaw, pitch)``: a function of the seed and
    the direction only (the same every frame), CPU float32."""
    key = zlib.crc32(f"{float(yaw) % 360.0:.3f},{float(pitch):.3f}".encode())
    g = torch.Generator(device="cpu").manual_seed((int(seed) * 1_000_003 + key) % (2 ** 63))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def regenerate_region(pipe: OPaMaPipeline, canvas: torch.Tensor, region: torch.Tensor, *, centre: tuple[float, float],
                      strength: float, seed: int, text: torch.Tensor, text_up, text_down, null_text,
                      sched, proc: Procedure, guided: int, view_fov: float, temporal: TemporalSettings,
                      timer: _Timer, kind: str = "regenerate", weight: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, list[dict]]:
    """Regenerate ``region (1, 1, H, W)`` of ``canvas (1, 3, H, W)`` (the rest is known and never written).

    One view centred at ``centre`` (degrees) whose fov holds the region plus ``temporal.context``
    (rounded up to 10 degrees, at most ``temporal.max_fov``), then greedy completion views at
    ``view_fov`` over what it could not hold. Each view starts from the VAE latent of the canvas's
    view noised to ``strength`` with :func:`_view_noise`. ``weight (1, 1, H, W)`` in [0, 1]: the
    regenerated values are blended over the old ones with it (None: replaced). Returns the new canvas
    and the views' info.
    """
    size = pipe.view_size
    hw = tuple(canvas.shape[-2:])
    remaining = region.clone()
    views: list[dict] = []
    lat_hw = size // pipe.vae_scale_factor
    shape = (1, int(pipe.unet.config.out_channels), lat_hw, lat_hw)

    def run(yaw: float, pitch: float, fov: float, view_kind: str) -> int:
        nonlocal canvas, remaining
        calls0 = pipe.unet_calls
        known = ~remaining
        everything = torch.ones_like(known)
        init = cut_view_only(canvas, everything, yaw, pitch, fov, size)[0]
        view_text, which = pipe._view_text(pitch, text, text_up, text_down)
        view_out, generated = pipe._generate_view(
            canvas, known, yaw, pitch, fov, size, view_text, null_text, sched, proc, guided,
            noise=_view_noise(seed, yaw, pitch, shape), init=init, strength=strength, timer=timer)
        with timer("paste"):
            pasted, cover = pers_to_equi(view_out.unsqueeze(1), yaw, pitch, fov, hw, feather=0.0)
            new = (cover > 0) & remaining
            if generated:
                if weight is not None:
                    pasted = canvas + weight * (pasted - canvas)
                canvas = torch.where(new, pasted, canvas)
            n_new = int(new.sum())
            remaining = remaining & ~new
        views.append(dict(yaw=float(yaw), pitch=float(pitch), fov=float(fov), kind=view_kind, generated=generated,
                          new_pixels=n_new, unet_calls=pipe.unet_calls - calls0, prompt=which))
        return n_new

    yaw, pitch = centre
    fov = _needed_fov(remaining, yaw, pitch) + temporal.context
    fov = min(temporal.max_fov, math.ceil(fov / 10.0) * 10.0)
    run(yaw, pitch, fov, kind)
    while bool(remaining.any()):
        dirs = equirect_directions(*hw, dtype=torch.float64, device=canvas.device)[remaining[0, 0]]
        best, best_n = None, 0
        for cy, cp in COMPLETION_CANDIDATES:
            u, v, inside = project_to_view(dirs, cy, cp, view_fov, (size, size))
            inside = inside & (u >= 0.5) & (u <= size - 1.5) & (v >= 0.5) & (v <= size - 1.5)
            n = int(inside.sum())
            if n > best_n:
                best, best_n = (cy, cp), n
        if best is None or run(best[0], best[1], view_fov, "completion") == 0:
            break  # single pixels no view samples: they keep the state's values
    return canvas, views


# ----------------------------------------------------------------------------- the video loop
def _is_direction(d: Any) -> bool:
    return (isinstance(d, (tuple, list)) or (isinstance(d, np.ndarray) and d.ndim == 1)) and len(d) == 3 and \
        all(isinstance(v, (int, float, np.integer, np.floating)) for v in d)


def _frame_tensor(frame: Any, hw: tuple[int, int], index: int, device) -> torch.Tensor:
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.shape != (*hw, 3):
        raise ValueError(f"frame {index}: an equirect frame must be uint8 {hw[0]}x{hw[1]}x3 (the canvas), got "
                         f"{a.dtype} {a.shape}")
    return (torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 127.5 - 1).to(device)


def _quantise(canvas: torch.Tensor) -> torch.Tensor:
    return torch.round((canvas.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def outpaint_video(pipe: OPaMaPipeline, frames: Iterable[Any], directions: Any = None, prompt: str = "", *,
                   masks: Any = None, height: int | None = None, width: int | None = None,
                   procedure: str | Procedure = "fast", seed: int = 0, temporal: TemporalSettings = TemporalSettings(),
                   prompt_up: str | None = None, prompt_down: str | None = None,
                   schedule: Sequence[tuple[float, float]] = AOG21, view_fov: float = 90.0,
                   callback: Callable[[int, VideoFrameResult], None] | None = None) -> Iterator[VideoFrameResult]:
    """Outpaint (or inpaint) a clip frame by frame with the temporal method; yields one
    :class:`VideoFrameResult` per frame as it is done.

    Args:
        pipe: the image pipeline.
        frames: outpaint mode: NFoV photos (anything :func:`~opama_model.pipeline.paste_inputs` takes);
            inpaint mode (``masks`` given): equirect uint8 ``(H, W, 3)`` frames at the canvas size.
        directions: outpaint mode: ``(yaw, pitch, fov)`` degrees for all frames, or a sequence of them
            per frame (default ``(0, 0, 90)``). Must be None in inpaint mode.
        prompt, prompt_up, prompt_down, procedure, seed, schedule, view_fov: as ``pipe(...)``.
        masks: inpaint mode: bool ``(H, W)`` (True = regenerate) for all frames, or an iterable of them
            per frame; unmasked pixels are the input.
        height, width: canvas (2:1; default :func:`~opama_model.pipeline.default_canvas_size`;
            inpaint mode: the frames' size).
        temporal: :class:`TemporalSettings`.
        callback: called as ``callback(index, result)`` after each frame.

    Raises:
        ValueError: bad settings, directions, frames or masks (one line naming the frame).
    """
    inpaint = masks is not None
    if inpaint and directions is not None:
        raise ValueError("directions are for NFoV frames; inpaint mode (masks) takes equirect frames")
    if directions is None:
        directions = None if inpaint else (0.0, 0.0, 90.0)
    per_frame_dirs = None
    if not inpaint:
        if _is_direction(directions):
            directions = check_direction(directions)
        else:
            per_frame_dirs = [check_direction(d) for d in directions]
            if not per_frame_dirs:
                raise ValueError("directions: an empty sequence")
            if hasattr(frames, "__len__") and len(frames) > len(per_frame_dirs):
                raise ValueError(f"directions: {len(per_frame_dirs)} given, no direction for frame "
                                 f"{len(per_frame_dirs)} of {len(frames)}")
    if isinstance(masks, (np.ndarray, torch.Tensor)) and np.asarray(masks).ndim == 2:
        one_mask = np.asarray(masks)
        masks = None
    else:
        one_mask = None
    mask_iter = iter(masks) if masks is not None else None

    device = pipe._execution_device
    proc = PROCEDURES[procedure] if isinstance(procedure, str) else procedure
    proc = replace(proc, batched_cfg=resolve_batched_cfg(proc.batched_cfg, device))
    seed = int(seed)

    with torch.inference_mode():
        text = pipe._encode_text(prompt)
        text_up = None if prompt_up is None else pipe._encode_text(prompt_up)
        text_down = None if prompt_down is None else pipe._encode_text(prompt_down)
        null_text = pipe._encode_text("") if pipe.conditioner is None else None
    sched = make_scheduler(proc.scheduler, pipe.scheduler.config)
    sched.set_timesteps(proc.steps, device=device)
    guided = _guided_steps(len(sched.timesteps), proc.guidance, proc.guidance_fraction)

    state = prev_input = None
    since_key = None  # pixels regenerated since the last keyframe
    blend = None  # (target canvas, region, frames left)
    hw = None
    for t, frame in enumerate(frames):
        timer = _Timer()
        t0 = time.perf_counter()
        # this frame's input: canvas values and known mask
        with timer("paste_input"):
            if inpaint:
                if hw is None:
                    a = np.asarray(frame)
                    if a.ndim != 3 or a.shape[2] != 3 or a.shape[1] != 2 * a.shape[0]:
                        raise ValueError(f"frame 0: an equirect frame must be H x 2H x 3, got {a.shape}")
                    hw = (int(a.shape[0]), int(a.shape[1]))
                    if (height, width) not in ((None, None), hw):
                        raise ValueError(f"height/width {height}x{width} differ from the frames' {hw[0]}x{hw[1]}")
                inp_canvas = _frame_tensor(frame, hw, t, device)
                if one_mask is not None:
                    m = one_mask
                else:
                    try:
                        m = next(mask_iter)
                    except StopIteration:
                        raise ValueError(f"masks: no mask for frame {t}") from None
                m = np.asarray(m)
                if m.shape != hw:
                    raise ValueError(f"mask of frame {t}: must be {hw[0]}x{hw[1]} (the frames), got {m.shape}")
                inp_known = torch.from_numpy(~m.astype(bool))[None, None].to(device)
                direction = None
            else:
                if hw is None:
                    if height is None and width is None:
                        hw = default_canvas_size(pipe.view_size)
                    elif height is None or width is None or width != 2 * height or height < 2:
                        raise ValueError(f"canvas must be 2:1 (width = 2 x height), got {height}x{width} (HxW)")
                    else:
                        hw = (int(height), int(width))
                if per_frame_dirs is None:
                    direction = directions
                elif t < len(per_frame_dirs):
                    direction = per_frame_dirs[t]
                else:
                    raise ValueError(f"directions: {len(per_frame_dirs)} given, no direction for frame {t}")
                try:
                    inp_canvas, inp_known = paste_inputs([frame], [direction], hw, device=device)
                except ValueError as e:
                    raise ValueError(f"frame {t}: {e}") from None

        if t == 0 or temporal.independent:
            out = pipe(canvas=inp_canvas, known=inp_known, prompt=prompt, height=hw[0], width=hw[1],
                       procedure=proc, seed=seed, prompt_up=prompt_up, prompt_down=prompt_down,
                       schedule=schedule, view_fov=view_fov, output_type="pt")
            state = out.images
            result_views, passes, rows = out.info["views"], out.info["unet_passes"], out.info["unet_rows"]
            for k, v in out.info["seconds"].items():
                if k != "total":
                    timer.add(k, v)
            regenerated = int((~inp_known).sum())
            keyframe = True
            since_key = torch.zeros_like(inp_known)
            blend = None
        else:
            with torch.inference_mode():
                passes0, rows0 = pipe.unet_calls, pipe.unet_rows
                result_views = []
                with timer("regions"):
                    diff = (inp_canvas - state).abs().amax(1, keepdim=True) * 127.5
                    # content motion: input at both frames and different (a pan's newly covered pixels are not)
                    changed = inp_known & prev_input & (diff > temporal.change_threshold + 1e-3)
                    state = torch.where(inp_known, inp_canvas, state)
                    uncovered = prev_input & ~inp_known
                    region = uncovered | (~inp_known & dilate_degrees(changed, temporal.band))
                    weight = _band_weight(inp_known, temporal.band) if bool(region.any()) else None
                    if weight is not None:
                        weight = torch.where(uncovered, torch.ones_like(weight), weight)
                if direction is not None:
                    centre = (direction[0], direction[1])
                else:
                    centre = _mean_direction(region) if bool(region.any()) else None
                if bool(region.any()):
                    if centre is None:
                        centre = (0.0, 0.0)
                    state, vs = regenerate_region(
                        pipe, state, region, centre=centre, strength=temporal.strength, seed=seed, text=text,
                        text_up=text_up, text_down=text_down, null_text=null_text, sched=sched, proc=proc,
                        guided=guided, view_fov=view_fov, temporal=temporal, timer=timer, weight=weight)
                    result_views += vs
                    since_key = since_key | region
                regenerated = int(region.sum())
                # a keyframe refresh of what was regenerated since the last one, blended in from here
                keyframe = False
                if temporal.keyframe_every > 0 and t % temporal.keyframe_every == 0 and bool(since_key.any()):
                    ref = dilate_degrees(since_key, temporal.band) & ~inp_known
                    if bool(ref.any()):
                        kc = centre if centre is not None else (_mean_direction(ref) or (0.0, 0.0))
                        target, vs = regenerate_region(
                            pipe, state, ref, centre=kc, strength=temporal.keyframe_strength, seed=seed + 1,
                            text=text, text_up=text_up, text_down=text_down, null_text=null_text, sched=sched,
                            proc=proc, guided=guided, view_fov=view_fov, temporal=temporal, timer=timer,
                            kind="keyframe")
                        for v in vs:
                            v["kind"] = "keyframe" if v["kind"] != "completion" else "keyframe-completion"
                        result_views += vs
                        blend = (_quantise(target), ref, temporal.blend_frames)
                        keyframe = True
                    since_key = torch.zeros_like(since_key)
                if blend is not None:
                    with timer("blend"):
                        target, ref, left = blend
                        ref = ref & ~inp_known & ~region  # the input and fresh regenerations win
                        state = torch.where(ref, state + (target - state) / left, state)
                        blend = (target, ref, left - 1) if left > 1 else None
                passes, rows = pipe.unet_calls - passes0, pipe.unet_rows - rows0
                state = torch.where(inp_known, inp_canvas, _quantise(state))
        prev_input = inp_known
        seconds = timer.seconds()
        seconds["total"] = round(time.perf_counter() - t0, 4)
        res = VideoFrameResult(index=t, image=to_uint8(state), input_mask=inp_known[0, 0].cpu().numpy(),
                               keyframe=keyframe, unet_passes=int(passes), unet_rows=int(rows),
                               regenerated_pixels=regenerated, views=result_views, seconds=seconds)
        if callback is not None:
            callback(t, res)
        yield res
