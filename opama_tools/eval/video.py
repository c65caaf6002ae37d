"""``opama eval`` on 360° videos: pairing, per-frame and temporal metrics, summaries.

A GEN_DIR holding video outputs (:func:`has_video_outputs`) is evaluated as videos by
:func:`opama_tools.eval.run.run_eval`; the stages mirror the image scorer's
(:mod:`opama_tools.eval.evaluate`): :func:`collect_video_inputs` (pairing, masks, rotations, the
job layer's source signature and settings key), :func:`score_clip` per pair, then the summary
rows in the registry's order, into the same :class:`~opama_tools.eval.evaluate.EvalResult` and
report files (plus ``per_frame.csv``).

Pairing: ``GEN/<name>/pano.mkv`` (preferred: lossless) or ``pano.mp4`` with ``meta.json`` and
``input_masks.npy`` (``(T, H, W)`` bool, True = the input photo's pixels in frame ``t``; else
``input_mask.png`` for every frame; else the input view of the options) pairs with
``REF/<name>.mkv|.mp4`` or ``REF/<name>/pano.mkv|.mp4``; flat ``GEN/<name>.mkv|.mp4`` too. A
``pano.mp4`` beside a ``pano.png`` is an image output's look-around, not a video output, and so
is any other video beside a ``pano`` file (``look.mp4``). Generated and reference videos must
have the same number of frames and (unless ``--resize``) the same size; otherwise that pair is
reported failed (one line naming both files) and the others are scored.

Metrics: the registry's weight-free per-image metrics (``psnr``, ``ssim``, ``region``, ``seam``,
``ds``, ``pole``) on every frame, with that frame's input mask; the temporal ones
(:mod:`opama_tools.eval.metrics.temporal`): ``flicker`` and ``warp_error`` per frame pair (in
frame ``t``'s row; frame 0 has none) and ``border`` per frame, each also on the reference where
declared (``flicker_ref``, ``warp_error_ref``). Camera motion: world-fixed panoramas (identity
warp), unless ``meta.json`` holds ``video.rotations``, one ``[yaw, pitch(, roll)]`` per frame in
degrees (:mod:`~opama_tools.eval.metrics.temporal`'s convention), applied to both videos.
Learned and set metrics (FID, LPIPS, CLIP, ...) are not computed for videos.

Summary: a metric's value is the mean over every frame (or frame pair) of every clip; its 95%
interval is a percentile bootstrap that resamples clips (frames pooled within each resampled clip)
when there are at least 2 clips, and frames when there is one (frames of a clip are correlated,
so that interval is optimistic; the report says which). ``per_image.csv`` holds one row per clip
(means over its frames), ``per_frame.csv`` one row per frame.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from opama_tools.eval import registry
from opama_tools.eval.evaluate import (
    ALL_METRICS, IMAGE_SUFFIXES, EvalInputError, EvalInputs, EvalOptions, EvalResult, MetricResult, mean_ci,
    visible_files,
)

__all__ = [
    "VIDEO_SUFFIXES",
    "FRAME_OPTIONS",
    "VideoPair",
    "list_videos",
    "has_video_outputs",
    "pair_videos",
    "video_options",
    "collect_video_inputs",
    "score_clip",
    "pooled_mean_ci",
    "evaluate_videos",
    "PER_FRAME_FILE",
]

VIDEO_SUFFIXES = (".mkv", ".mp4")
FRAME_OPTIONS = ("psnr", "ssim", "region", "seam", "ds", "pole")
"""The ``--metrics`` names computed on every frame of a video (the weight-free per-image ones)."""
PER_FRAME_FILE = "per_frame.csv"


@dataclass
class VideoPair:
    """One generated video and its reference. ``masks``: ``input_masks.npy`` or ``input_mask.png``
    beside the generated video (None: the options' input view); ``rotations``: per-frame
    ``[yaw, pitch(, roll)]`` from ``meta.json`` (None: world-fixed)."""

    rel: str
    gen: Path
    ref: Path
    meta: dict = field(default_factory=dict)
    masks: Path | None = None
    rotations: list | None = None


def _holds(folder: Path, stem: str, suffixes) -> bool:
    return any((folder / f"{stem}{s}").is_file() for s in suffixes)


def list_videos(root: str | Path) -> dict[str, Path]:
    """``{clip name: path}`` of the video panoramas under ``root`` (hidden files skipped).

    ``a/b/pano.mkv|mp4`` is clip ``a/b`` (``.mkv`` preferred), a flat ``a/b.mkv|mp4`` too (the flat one
    wins). Left out: videos in a folder holding a ``pano`` image (an image output's look-around) and
    videos other than ``pano.*`` in a folder holding a ``pano`` video (``look.mp4``).
    """
    root = Path(root)
    flat: dict[str, Path] = {}
    nested: dict[str, Path] = {}
    for p, rel in visible_files(root, VIDEO_SUFFIXES):
        inner = len(rel.parts) > 1
        if inner and _holds(p.parent, "pano", IMAGE_SUFFIXES):
            continue
        if inner and p.stem == "pano":
            key, into = rel.parent.as_posix(), nested
        elif inner and _holds(p.parent, "pano", VIDEO_SUFFIXES):
            continue
        else:
            key, into = rel.with_suffix("").as_posix(), flat
        if key not in into or p.suffix.lower() == ".mkv":
            into[key] = p
    for k, p in nested.items():
        flat.setdefault(k, p)
    return dict(sorted(flat.items()))


def has_video_outputs(gen_dir: str | Path) -> bool:
    """``gen_dir`` holds at least one video panorama (:func:`list_videos`): evaluate it as videos."""
    return bool(list_videos(gen_dir))


def pair_videos(gen_dir: str | Path, ref_dir: str | Path) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """``([(clip, generated video, reference video)], only in GEN_DIR, only in REF_DIR)`` by clip name."""
    g, r = list_videos(gen_dir), list_videos(ref_dir)
    pairs = [(k, g[k], r[k]) for k in g if k in r]
    return pairs, sorted(set(g) - set(r)), sorted(set(r) - set(g))


def video_options(opt: EvalOptions) -> tuple[list[str], list[str], list[str]]:
    """``(per-frame names, temporal names, names not computed for videos)`` of ``opt.metrics``; the
    default ``all`` includes every temporal metric."""
    want = list(opt.metrics)
    frame = [o for o in want if o in FRAME_OPTIONS]
    temporal = list(registry.VIDEO_OPTIONS) if set(ALL_METRICS) <= set(want) else \
        [o for o in want if o in registry.VIDEO_OPTIONS]
    skipped = [o for o in want if o not in FRAME_OPTIONS and o not in registry.VIDEO_OPTIONS]
    return frame, temporal, skipped


def _rotations(meta: dict, path: Path) -> list | None:
    """``meta["video"]["rotations"]`` checked: None, or a list of ``[yaw, pitch]`` / ``[yaw, pitch, roll]``."""
    v = meta.get("video")
    rot = v.get("rotations") if isinstance(v, dict) else None
    if rot is None:
        return None
    ok = isinstance(rot, list) and all(
        isinstance(r, list) and len(r) in (2, 3) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                         and math.isfinite(x) for x in r) for r in rot)
    if not ok:
        raise EvalInputError(f"{path}: video.rotations must be a list of [yaw, pitch] or [yaw, pitch, roll] "
                             "(finite degrees), one per frame")
    return [[float(x) for x in r] for r in rot]


def _mask_file(gen: Path, gen_dir: Path) -> Path | None:
    """``input_masks.npy`` (checked: a ``(T, H, W)`` bool array) or ``input_mask.png`` beside a ``pano.*`` video."""
    if gen.stem != "pano" or gen.parent == gen_dir:
        return None
    npy = gen.parent / "input_masks.npy"
    if npy.is_file():
        try:
            a = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EvalInputError(f"{npy}: cannot read it as a NumPy array without pickle ({_first_line(e)})") from None
        if a.dtype != np.bool_ or a.ndim != 3:
            raise EvalInputError(f"{npy}: expected a (T, H, W) bool array, got {a.dtype} of shape {tuple(a.shape)}")
        return npy
    png = gen.parent / "input_mask.png"
    return png if png.is_file() else None


def _first_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def collect_video_inputs(gen_dir: str | Path, ref_dir: str | Path, opt: EvalOptions,
                         method: str | None = None) -> EvalInputs:
    """Stage 1 for videos: pair the clips, read every ``meta.json`` and check the mask files and
    rotations, key the run (``source``: the content signature of every paired video, ``meta.json`` and
    mask file; ``settings``: the options except the device, ``kind`` video, the method, the folders and
    the pairing). ``EvalInputs.pairs`` holds :class:`VideoPair`.

    Raises :class:`EvalInputError` when nothing pairs, no requested metric is computed for videos, or a
    ``meta.json``, ``input_masks.npy`` or rotation list is broken.
    """
    from opama_tools.eval.evaluate import _read_meta, _summarise_scored
    from opama_tools.jobs import settings_key, source_signature

    gen_dir, ref_dir = Path(gen_dir), Path(ref_dir)
    frame, temporal, _ = video_options(opt)
    if not frame and not temporal:
        raise EvalInputError(
            f"--metrics {','.join(opt.metrics)}: no requested metric is computed for videos (they get "
            f"{', '.join(FRAME_OPTIONS)} per frame and {', '.join(registry.VIDEO_OPTIONS)})")
    raw, gen_only, ref_only = pair_videos(gen_dir, ref_dir)
    if not raw:
        raise EvalInputError(f"{gen_dir} and {ref_dir}: nothing to evaluate ({len(gen_only)} generated and "
                             f"{len(ref_only)} reference videos, none with the same name)")
    pairs, files, names = [], [], []
    for rel, gp, rp in raw:
        meta = _read_meta(gp)
        rot = _rotations(meta, gp.parent / "meta.json") if meta else None
        masks = _mask_file(gp, gen_dir)
        pairs.append(VideoPair(rel, gp, rp, meta, masks, rot))
        files += [gp, rp] + ([gp.parent / "meta.json"] if meta else []) + ([masks] if masks else [])
        names.append([rel, gp.relative_to(gen_dir).as_posix(), rp.relative_to(ref_dir).as_posix(), bool(meta),
                      masks.name if masks else None])
    scored = _summarise_scored([p.meta for p in pairs])
    if method:
        scored["method"] = method
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opt).items() if k != "device"}
    unreadable = [str(f) for f in files if not os.access(f, os.R_OK)]
    source = source_signature([f for f in files if str(f) not in unreadable])
    key = settings_key("eval", settings, {"kind": "video", "pairs": names, "gen_only": gen_only,
                                          "ref_only": ref_only, "unreadable": unreadable, "method": method,
                                          "gen_dir": str(gen_dir), "ref_dir": str(ref_dir)})
    return EvalInputs(pairs, gen_only, ref_only, scored, source, key)


class _PairFailed(Exception):
    """A clip that cannot be scored: ``path`` and the one-line ``reason``."""

    def __init__(self, path: Path, reason: str):
        super().__init__(reason)
        self.path, self.reason = path, reason


def _load_masks(pair: VideoPair, opt: EvalOptions, hw: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """``(masks, per_frame)``: ``(T, H, W)`` bool from ``input_masks.npy``, or one ``(H, W)`` mask
    (``input_mask.png``, white = input, or the options' input view) for every frame."""
    from opama_tools.eval.metrics.panorama import input_coverage_mask
    from opama_tools.images import format_hw

    if pair.masks is None:
        m = input_coverage_mask(hw[0], hw[1], opt.input_yaw, opt.input_pitch, opt.input_fov,
                                (opt.input_size, opt.input_size)).numpy()
        return m, False
    try:
        if pair.masks.suffix == ".npy":
            m = np.load(pair.masks, allow_pickle=False)
        else:
            from opama_tools.images import read_ldr, to_unit_float

            m = to_unit_float(read_ldr(pair.masks)).mean(axis=-1) > 0.5
    except (OSError, ValueError) as e:
        raise _PairFailed(pair.masks, f"cannot read ({_first_line(e)})") from None
    if tuple(m.shape[-2:]) != hw:
        raise _PairFailed(pair.masks, f"masks of {format_hw(*m.shape[-2:])} but the video {pair.gen} is "
                                      f"{format_hw(*hw)} (HxW)")
    return m.astype(bool), m.ndim == 3


def _frames_of(path: Path) -> Iterator[np.ndarray]:
    """The frames of ``path`` (:func:`opama_tools.videos.read_frames`: uint8 RGB ``(H, W, 3)``, in order),
    a reading error as :class:`_PairFailed` naming ``path`` (one line)."""
    from opama_tools.videos import read_frames

    try:
        yield from read_frames(path)
    except (OSError, RuntimeError, ValueError) as e:  # missing, unreadable or undecodable file
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("===")]
        why = lines[0] if lines else type(e).__name__
        if len(lines) > 1:
            why += f": {lines[-1]}"
        for name in (str(path), path.name):  # the reader's message may name the file already
            why = why.removeprefix(f"{name}: ")
        raise _PairFailed(path, f"cannot decode the video ({why[:300]})") from None


def _nan_row(cols) -> dict:
    return {c: float("nan") for c in cols}


def score_clip(pair: VideoPair, opt: EvalOptions, frame_want: set[str], temporal: set[str],
               resized: list[str]) -> tuple[list[dict], tuple]:
    """Stage 3 for one clip: ``(rows, last)``, ``last`` = the last frame's ``(input mask, generated,
    reference)`` (the report's sample). One row per frame (``clip``, ``frame``, the per-frame columns of
    :func:`~opama_tools.eval.evaluate.weight_free_metrics`, ``border``, and from frame 1 on the frame
    pair's ``flicker``/``flicker_ref``/``warp_error``/``warp_error_ref``; NaN at frame 0). Reads both
    videos frame by frame, keeping only the previous frame.

    Raises :class:`_PairFailed` when a video cannot be decoded, the frame counts or sizes differ (and
    ``opt.resize`` is off), a frame is not 2:1, or the masks or rotations do not fit the video.
    """
    import torch

    from opama_tools.eval.evaluate import _to_tensor, _to_uint8_views, weight_free_metrics
    from opama_tools.eval.metrics import temporal as T
    from opama_tools.eval.metrics.panorama import resize_like
    from opama_tools.images import format_hw

    rows: list[dict] = []
    masks = per_frame = None
    prev = None  # (g8, r8, mask, rotation) of frame t-1
    n_gen = n_ref = 0
    t_cols = ([("flicker", "flicker_ref")] if "flicker" in temporal else []) + \
             ([("warp_error", "warp_error_ref")] if "warp" in temporal else [])
    g_it, r_it = _frames_of(pair.gen), _frames_of(pair.ref)
    try:
        for g8, r8 in zip_longest(g_it, r_it):
            n_gen += g8 is not None
            n_ref += r8 is not None
            if g8 is None or r8 is None:
                continue  # counting the longer one
            t = n_gen - 1
            hw = g8.shape[:2]
            if hw[1] != 2 * hw[0] or hw[0] < 8:
                raise _PairFailed(pair.gen, f"not a 2:1 equirect video of at least 8x16 px "
                                            f"({format_hw(*hw)}, HxW)")
            if r8.shape != g8.shape:
                if not opt.resize:
                    raise _PairFailed(pair.gen, f"{format_hw(*hw)} but its reference {pair.ref} is "
                                                f"{format_hw(*r8.shape[:2])} (HxW); pass --resize to resample "
                                                "the references")
                r8 = _to_uint8_views(resize_like(_to_tensor(r8), hw))[0]
                if t == 0:
                    resized.append(pair.rel)
            if masks is None:
                masks, per_frame = _load_masks(pair, opt, hw)
            if per_frame and t >= len(masks):
                raise _PairFailed(pair.masks, f"{len(masks)} masks but the video {pair.gen} has more frames")
            m = masks[t] if per_frame else masks
            rot = None
            if pair.rotations is not None:
                if t >= len(pair.rotations):
                    raise _PairFailed(pair.gen.parent / "meta.json", f"{len(pair.rotations)} video.rotations but "
                                                                     f"the video {pair.gen} has more frames")
                rot = pair.rotations[t]
            row: dict = {"clip": pair.rel, "frame": t}
            if frame_want:
                w = frame_want if m.any() else frame_want - {"psnr", "ssim"}
                row.update(weight_free_metrics(_to_tensor(g8), _to_tensor(r8), torch.from_numpy(m), w))
            if "border" in temporal:
                row["border"] = T.border_continuity(g8, r8, m)
            if prev is None:
                for a, b in t_cols:
                    row.update(_nan_row((a, b)))
            else:
                pg, pr, pm, prot = prev
                if "flicker" in temporal:
                    region = ~m & ~pm
                    row["flicker"], row["flicker_ref"] = T.flicker(pg, g8, region), T.flicker(pr, r8, region)
                if "warp" in temporal:
                    region = ~m & ~T.warp_frame(pm[..., None], prot, rot, mode="nearest")[..., 0]
                    row["warp_error"], row["warp_error_ref"], _ = T.warp_error(pg, g8, pr, r8, region, prot, rot)
            rows.append(row)
            prev = (g8, r8, m, rot)
    finally:
        g_it.close()
        r_it.close()
    if n_gen != n_ref:
        raise _PairFailed(pair.gen, f"{n_gen} frames but its reference {pair.ref} has {n_ref}")
    if n_gen == 0:
        raise _PairFailed(pair.gen, "no frame decoded")
    if per_frame and len(masks) != n_gen:
        raise _PairFailed(pair.masks, f"{len(masks)} masks but the video {pair.gen} has {n_gen} frames")
    if pair.rotations is not None and len(pair.rotations) != n_gen:
        raise _PairFailed(pair.gen.parent / "meta.json",
                          f"{len(pair.rotations)} video.rotations but the video {pair.gen} has {n_gen} frames")
    return rows, (prev[2], prev[0], prev[1])


def pooled_mean_ci(groups: list[np.ndarray], reps: int, seed: int) -> tuple[float, float, float, int, str]:
    """``(mean, lo, hi, n, method)`` of per-clip value arrays: the mean over every finite value, and its
    95% percentile-bootstrap interval resampling clips (each resample's mean pools the values of its
    clips) for 2+ clips, or resampling the values for one clip (:func:`~opama_tools.eval.evaluate.mean_ci`).
    NaN bounds when ``reps <= 0`` or too few values."""
    gs = [np.asarray(g, dtype=np.float64) for g in groups]
    gs = [g[np.isfinite(g)] for g in gs]
    gs = [g for g in gs if g.size]
    if not gs:
        return float("nan"), float("nan"), float("nan"), 0, ""
    if len(gs) == 1:
        mean, lo, hi, n = mean_ci(gs[0], reps, seed)
        return mean, lo, hi, n, "bootstrap over frames (1 clip)"
    sums = np.array([g.sum() for g in gs])
    counts = np.array([g.size for g in gs], dtype=np.float64)
    mean = float(sums.sum() / counts.sum())
    n = int(counts.sum())
    how = f"bootstrap over {len(gs)} clips (frames pooled)"
    if reps <= 0:
        return mean, float("nan"), float("nan"), n, how
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(gs), (reps, len(gs)))
    boots = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return mean, float(lo), float(hi), n, how


def _summary(per_frame, options: list[str], opt: EvalOptions) -> list[MetricResult]:
    """One row per requested metric (registry order, grouped): pooled mean and interval over clips."""
    out = []
    for m in registry.metrics_for(options):
        if m.learned or m.scope not in ("image", "video"):
            continue
        mr = MetricResult(m.key, m.label, "failed", better=m.better, group=m.group)
        if m.key not in getattr(per_frame, "columns", ()):
            mr.detail = "no frame evaluated"
            out.append(mr)
            continue
        groups = [g[m.key].to_numpy(dtype=float) for _, g in per_frame.groupby("clip", sort=False)]
        mean, lo, hi, n, how = pooled_mean_ci(groups, opt.bootstrap, opt.seed)
        if n == 0:
            mr.detail = "no value (no pixel to measure in any frame)"
        else:
            what = "frame pairs" if m.key in ("flicker", "flicker_ref", "warp_error", "warp_error_ref") else "frames"
            mr = MetricResult(m.key, m.label, "ok", mean, lo, hi, how, m.better, None, n,
                              f"{m.note}; n = {what}" if m.note else f"n = {what}", m.group)
        out.append(mr)
    out.sort(key=lambda r: registry.GROUPS.index(r.group) if r.group in registry.GROUPS else len(registry.GROUPS))
    return out


def evaluate_videos(gen_dir: str | Path, ref_dir: str | Path, options: EvalOptions | None = None,
                    progress: Callable[[int, int, str], None] | None = None,
                    log: Callable[[str], None] | None = None, inputs: EvalInputs | None = None) -> EvalResult:
    """Score the paired videos of ``gen_dir`` and ``ref_dir`` (module docstring).

    ``progress(done, total, clip)`` after each clip; ``log(msg)`` for notes; ``inputs`` a
    :func:`collect_video_inputs` result for these folders. Clips that cannot be scored are listed in
    ``failed`` (path, reason); the others are scored. ``per_image`` holds one row per clip
    (``image`` = clip name, ``frames``, the means over its frames), ``per_frame`` one row per frame.
    """
    import pandas as pd

    from opama_tools.eval.evaluate import resolve_device
    from opama_tools.eval.metrics.temporal import STATIC_THRESHOLD
    from opama_tools.jobs import done_fields

    opt = options or EvalOptions()
    opt.validate()
    say = log or (lambda m: None)
    t0 = time.perf_counter()
    device = resolve_device(opt.device)
    inputs = inputs or collect_video_inputs(gen_dir, ref_dir, opt)
    frame, temporal, skipped = video_options(opt)
    if skipped:
        say(f"videos: {len(skipped)} requested metrics are not computed for videos ({', '.join(skipped)}); "
            f"computed: {', '.join(frame + temporal)}")
    rows, clip_rows, failed, resized, samples = [], [], [], [], []
    for k, pair in enumerate(inputs.pairs):
        try:
            clip, last = score_clip(pair, opt, set(frame), set(temporal), resized)
        except _PairFailed as e:
            failed.append((str(e.path), e.reason))
            clip = []
        if clip:
            if len(samples) < 4:
                samples.append((f"{pair.rel} (frame {len(clip) - 1})", *last))
            rows += clip
            df = pd.DataFrame(clip)
            means = {c: float(np.nanmean(df[c].to_numpy(dtype=float))) if df[c].notna().any() else float("nan")
                     for c in df.columns if c not in ("clip", "frame")}
            clip_rows.append({"image": pair.rel, "frames": len(clip), **means})
        if progress:
            progress(k + 1, len(inputs.pairs), pair.rel)
    per_frame = pd.DataFrame(rows)
    per_image = pd.DataFrame(clip_rows)
    results = _summary(per_frame, frame + temporal, opt)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opt).items()}
    config.update({"gen_dir": str(gen_dir), "ref_dir": str(ref_dir), "device": device, "resized": resized,
                   "kind": "video", "clips": len(clip_rows), "frames": len(rows), "not_for_videos": skipped,
                   "static_threshold": STATIC_THRESHOLD,
                   "interval": results[0].ci_method if results and results[0].status == "ok" else ""})
    res = EvalResult(results, per_image, [p.rel for p in inputs.pairs], inputs.gen_only, inputs.ref_only, failed,
                     config, time.perf_counter() - t0, scored=inputs.scored,
                     done=done_fields(inputs.source, inputs.settings))
    res.per_frame = per_frame
    res.sample_frames = samples
    return res
