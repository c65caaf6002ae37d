"""``opama caption``: the captioning job (BLIP / BLIP-2 or synthetic scene records) → a JSONL store.

OPa-Ma and AOG-Net caption each equirectangular panorama with BLIP(-2) and, because the
squeezed 2:1 panorama captions poorly, also caption NFoV views taken every ``stride``
degrees around the horizon. :func:`run_caption` does both and writes one JSONL line per
panorama (format: :mod:`opama_tools.data.caption_store`)::

    {"image": "<path relative to PANO_DIR>", "caption": "<global caption>",
     "views": [{"yaw": 0, "pitch": 0, "caption": "..."}, {"yaw": 30, ...}, ...],
     "source": "<sha256 of the image>", "settings": "<16 hex digits>"}

(``source``: :func:`opama_tools.jobs.source_signature` of the image; ``settings``:
:func:`opama_tools.jobs.settings_key` of the options, the model and, for ``--from-metadata``,
the scene record; a re-run redoes a panorama whose ``source`` or ``settings`` no longer match.)

Angles are degrees in the project's convention (yaw 0 = panorama centre column, positive
yaw turns right, positive pitch looks up, ``fov`` horizontal; views are square). Views are
cut with :func:`opama_model.spherical.equi_to_pers` at ``yaw = k * stride`` for
``k * stride < 360`` (AOG-Net's published script passes ``k`` itself as the yaw; not here).

The parts live in their own modules: BLIP loading and batched generation in
:mod:`opama_tools.data.blip`, the JSONL store in :mod:`opama_tools.data.caption_store`,
captions from scene geometry in :mod:`opama_tools.data.scene_captions`. This module holds
the job loop:

* Generation is batched across views *and* panoramas: exactly one ``generate`` call per
  ``batch_size`` images (the last call may be smaller).
* The job is resumable: images already in ``OUT.jsonl`` (without an ``error``, same ``source``
  and ``settings``) are skipped; each panorama's line is appended with one ``write`` and
  fsync'd; an unreadable image gives a line with an ``error`` field (retried on the next run)
  and does not stop the run. SIGTERM / Ctrl-C stop it cleanly (``summary.interrupted``; every
  line written is complete).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from opama_tools.data.blip import DEFAULT_PROMPT, Captioner, load_captioner, resolve_model_path  # noqa: F401
from opama_tools.data.caption_store import CaptionStore
from opama_tools.data.scene_captions import read_scenes, scene_from_record, scene_view_caption  # noqa: F401
from opama_tools.data.synthetic import visible_objects  # noqa: F401
from opama_tools.jobs import batch_exit_code, settings_key, source_signature

__all__ = [
    "DEFAULT_PROMPT",
    "IMAGE_SUFFIXES",
    "CaptionSettings",
    "CaptionSummary",
    "Captioner",
    "view_yaws",
    "resolve_model_path",
    "load_captioner",
    "read_panorama",
    "cut_views",
    "find_panoramas",
    "visible_objects",
    "scene_view_caption",
    "scene_from_record",
    "read_scenes",
    "run_caption",
    "run_caption_job",
    "run_metadata_job",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CaptionSettings:
    """What to caption. Angles in degrees; ``view_size`` in pixels (square views)."""

    augment: bool = False
    stride: float = 30.0
    pitch: float = 0.0
    fov: float = 90.0
    view_size: int = 512

    def __post_init__(self) -> None:
        for name, kind in (("augment", bool), ("stride", float), ("pitch", float), ("fov", float), ("view_size", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))  # 30 and 30.0 are the same settings
        if not 0 < self.stride <= 360:
            raise ValueError(f"stride must be in (0, 360] degrees, got {self.stride}")
        if not 0 < self.fov < 180:
            raise ValueError(f"fov must be in (0, 180) degrees, got {self.fov}")
        if not -90 <= self.pitch <= 90:
            raise ValueError(f"pitch must be in [-90, 90] degrees, got {self.pitch}")
        if self.view_size < 8:
            raise ValueError(f"view_size must be >= 8 pixels, got {self.view_size}")

    def yaws(self) -> list[float]:
        return view_yaws(self.stride) if self.augment else []


def _num(x: float) -> float | int:
    """Whole-valued floats as ints (``30`` rather than ``30.0`` in the JSONL)."""
    x = float(x)
    return int(x) if x.is_integer() else round(x, 6)


def view_yaws(stride: float) -> list[float]:
    """Yaws ``0, stride, 2*stride, ... < 360`` in degrees (``ceil(360/stride)`` views; 12 for 30)."""
    if not 0 < stride <= 360:
        raise ValueError(f"stride must be in (0, 360] degrees, got {stride}")
    n = math.ceil(360.0 / stride - 1e-9)
    return [k * float(stride) for k in range(n) if k * float(stride) < 360.0 - 1e-9]


@dataclass
class CaptionSummary:
    """Counts of one job; ``failures`` lists ``(relative image path, reason)``."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    out: Path | None = None
    interrupted: str | None = None  # "SIGTERM" / "SIGINT" when the run was stopped

    @property
    def exit_code(self) -> int:
        return batch_exit_code(self.interrupted, self.failed)



# --------------------------------------------------------------------------- images and views


def read_panorama(path: str | os.PathLike) -> np.ndarray:
    """Decode a PNG/JPG panorama to ``(H, W, 3)`` uint8 RGB; checks it is 2:1.

    8- or 16-bit, grey or RGB(A) (:func:`opama_tools.images.read_ldr`: grey expanded, alpha
    dropped, 16-bit rounded to 8-bit as ``round(v * 255 / 65535)``). Raises ``ValueError``
    with the reason for unreadable or non-2:1 images.
    """
    from opama_tools.images import check_equirect, read_ldr, to_uint8_rgb

    arr = to_uint8_rgb(read_ldr(path))
    check_equirect(*arr.shape[:2])
    return arr


def cut_views(
    pano: np.ndarray, yaws: Sequence[float], pitch: float, fov: float, size: int
) -> list[np.ndarray]:
    """Square perspective views ``(size, size, 3)`` uint8 of an ``(H, W, 3)`` uint8 panorama.

    One batched :func:`opama_model.spherical.equi_to_pers` call (bilinear). The panorama is
    first area-downsampled (antialiased) to about the views' angular resolution when larger.
    """
    import torch
    import torch.nn.functional as F

    from opama_model.spherical import equi_to_pers

    if not len(yaws):
        return []
    x = torch.from_numpy(np.ascontiguousarray(pano)).permute(2, 0, 1)[None].float() / 255.0
    h, w = x.shape[-2:]
    # View pixels per degree at the centre: (size-1) / (2 tan(fov/2)) per radian.
    px_per_rad = (size - 1) / (2 * math.tan(math.radians(fov) / 2))
    target_w = int(math.ceil(2 * math.pi * px_per_rad / 2) * 2)
    if w > 1.5 * target_w:
        x = F.interpolate(x, size=(target_w // 2, target_w), mode="area")
    v = equi_to_pers(x, list(yaws), [pitch] * len(yaws), fov, (size, size))[0]  # (V, 3, s, s)
    v = (v.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(v)


def find_panoramas(pano_dir: str | os.PathLike) -> list[Path]:
    """PNG/JPG files under ``pano_dir`` (recursive, hidden files skipped), sorted by relative path."""
    from opama_tools.io import find_files

    return find_files(pano_dir, IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- the job loop


@contextlib.contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True, soft_wrap=True),
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _prefetch(fn: Callable, items: Sequence, depth: int = 2) -> Iterator[tuple[object, object, BaseException | None]]:
    """Yield ``(item, fn(item) or None, exception or None)`` in order, computing ahead in a thread."""
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        futs: list = []
        it = iter(items)
        for item in it:
            futs.append((item, pool.submit(fn, item)))
            if len(futs) > depth:
                break
        while futs:
            item, fut = futs.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                futs.append((nxt, pool.submit(fn, nxt)))
            try:
                yield item, fut.result(), None
            except Exception as e:  # noqa: BLE001 - reported per image
                yield item, None, e


def _err_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)



def _open_job(
    root: Path, out_jsonl, overwrite: bool, key_of: Callable[[Path], str]
) -> tuple[CaptionStore, CaptionSummary, list[tuple[str, Path, str | None]]]:
    """Open the resumable store and list the panoramas under ``root`` not captioned yet as
    ``(relative posix path, path, source signature or None when unreadable)``; done ones are
    counted as skipped. A record is done only if its ``source`` signature matches the file now
    and its ``settings`` key equals ``key_of(path)``; stale records are removed and redone.

    Raises :class:`opama_tools.jobs.NoInputsError` when ``root`` holds no panorama (nothing
    is written), ``ValueError`` for an unusable output file.
    """
    from opama_tools.io import printable_path
    from opama_tools.jobs import NoInputsError

    found = find_panoramas(root)
    if not found:
        raise NoInputsError(f"{printable_path(root)}: no panoramas (*.png, *.jpg, *.jpeg) found")
    out = CaptionStore(Path(out_jsonl), overwrite)
    summary = CaptionSummary(out=Path(out_jsonl))
    todo = []
    stale: set[str] = set()
    for p in found:
        rel = printable_path(p.relative_to(root).as_posix())
        try:
            sig = source_signature(p)
        except OSError:
            sig = None  # reported when the image is read
        if sig is not None and out.is_done(rel, sig, key_of(p)):
            summary.skipped += 1
            continue
        stale.add(rel)
        todo.append((rel, p, sig))
    out.drop(stale)
    return out, summary, todo


def _fail_image(out: CaptionStore, summary: CaptionSummary, rel: str, reason: str) -> None:
    out.write_error(rel, reason)
    summary.failed += 1
    summary.failures.append((rel, reason))


def run_caption_job(
    pano_dir: str | os.PathLike,
    out_jsonl: str | os.PathLike,
    captioner: Captioner,
    settings: CaptionSettings = CaptionSettings(),
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> CaptionSummary:
    """Caption every panorama under ``pano_dir`` into ``out_jsonl`` (see module doc).

    Images from consecutive panoramas share ``generate`` batches: with ``n`` images to caption
    in total (1 + number of views per panorama), there are ``ceil(n / batch_size)`` calls.
    """
    root = Path(pano_dir)
    key = settings_key("blip", dataclasses.asdict(settings), captioner.kind, captioner.source, captioner.prompt,
                       captioner.max_new_tokens, str(captioner.dtype))
    out, summary, todo = _open_job(root, out_jsonl, overwrite, lambda p: key)
    yaws = settings.yaws()
    sigs = {rel: sig for rel, _, sig in todo}

    from opama_tools.io import utf8_name_problem
    from opama_tools.jobs import Terminated, check_stop, stop_name, stop_raises

    def load(item):
        _, p, _ = item
        bad = utf8_name_problem(p)
        if bad:
            raise ValueError("file name is not valid UTF-8; rename the file")
        pano = read_panorama(p)
        views = cut_views(pano, yaws, settings.pitch, settings.fov, settings.view_size)
        return [pano] + views

    # FIFO of panoramas waiting for captions: [rel, n_images, captions so far].
    pending: list[list] = []
    queue: list[tuple[list, np.ndarray]] = []  # (pending entry, image)

    def finish_ready(advance) -> None:
        while pending and len(pending[0][2]) == pending[0][1]:
            rel, _, caps = pending.pop(0)
            rec = {"image": rel, "caption": caps[0],
                   "views": [{"yaw": _num(y), "pitch": _num(settings.pitch), "caption": c}
                             for y, c in zip(yaws, caps[1:])]}
            if sigs[rel] is None:
                out.write(rec)  # no signature: never counts as done
            else:
                out.write_done(rec, sigs[rel], key)
            summary.done += 1
            advance()

    def run_batch(n: int, advance) -> None:
        batch = queue[:n]
        del queue[:n]
        caps = captioner.generate_batch([im for _, im in batch])
        for (entry, _), c in zip(batch, caps):
            entry[2].append(c)
        finish_ready(advance)

    try:
        with stop_raises(deferred=True), _progress(len(todo), "captioning", progress) as advance:
            try:
                for (rel, p, _), images, err in _prefetch(load, todo):
                    check_stop()  # SIGTERM takes effect between images, never inside a library call
                    if err is not None:
                        _fail_image(out, summary, rel, _err_text(err))
                        advance()
                        continue
                    entry = [rel, len(images), []]
                    pending.append(entry)
                    queue.extend((entry, im) for im in images)
                    while len(queue) >= captioner.batch_size:
                        check_stop()
                        run_batch(captioner.batch_size, advance)
                while queue:
                    check_stop()
                    run_batch(captioner.batch_size, advance)
            except (Terminated, KeyboardInterrupt) as e:
                summary.interrupted = stop_name(e)
    finally:
        out.close()
    return summary



def run_metadata_job(
    pano_dir: str | os.PathLike,
    out_jsonl: str | os.PathLike,
    scenes_jsonl: str | os.PathLike,
    settings: CaptionSettings = CaptionSettings(),
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> CaptionSummary:
    """Same JSONL as :func:`run_caption_job`, from the synthetic generator's ``scenes.jsonl``.

    Panoramas in ``pano_dir`` are matched to scene records by file stem (``synth_0003.png`` ↔
    ``synth_0003.exr``). The global caption is the record's ``caption``; with ``augment`` each
    view's caption is :func:`scene_view_caption`. No weights, no image decoding. A panorama
    without a scene record is recorded as failed.
    """
    from opama_tools.io import utf8_name_problem
    from opama_tools.jobs import Terminated, check_stop, stop_name, stop_raises

    scenes = read_scenes(scenes_jsonl)
    root = Path(pano_dir)
    base = dataclasses.asdict(settings)

    def key_of(p: Path) -> str:  # the scene record is the input of a metadata caption
        return settings_key("metadata", base, scenes.get(p.stem))

    out, summary, todo = _open_job(root, out_jsonl, overwrite, key_of)
    yaws = settings.yaws()
    try:
        with stop_raises(deferred=True), _progress(len(todo), "captions from metadata", progress) as advance:
            for rel, p, sig in todo:
                check_stop()  # SIGTERM takes effect between images, never inside a library call
                try:
                    if utf8_name_problem(p):
                        raise ValueError("file name is not valid UTF-8; rename the file")
                    rec = scenes.get(p.stem)
                    if rec is None:
                        raise ValueError(f"no record with stem {p.stem!r} in {scenes_jsonl}")
                    views = []
                    if yaws:
                        try:
                            scene = scene_from_record(rec)
                        except ValueError as e:
                            raise ValueError(f"{scenes_jsonl}: the record of {rec['image']}: {e}") from None
                        views = [{"yaw": _num(y), "pitch": _num(settings.pitch),
                                  "caption": scene_view_caption(scene, y, settings.pitch, settings.fov)} for y in yaws]
                    line = {"image": rel, "caption": str(rec.get("caption", "")), "views": views}
                    if sig is None:
                        out.write(line)  # no signature (unreadable file): never counts as done
                    else:
                        out.write_done(line, sig, key_of(p))
                    summary.done += 1
                except Exception as e:  # noqa: BLE001 - reported per image
                    _fail_image(out, summary, rel, _err_text(e))
                advance()
    except (Terminated, KeyboardInterrupt) as e:
        summary.interrupted = stop_name(e)
    finally:
        out.close()
    return summary



def run_caption(
    pano_dir: str | os.PathLike,
    out_jsonl: str | os.PathLike,
    settings: CaptionSettings = CaptionSettings(),
    *,
    scenes: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    device: str | None = "auto",
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 30,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    on_captioner: Callable[[Captioner], None] | None = None,
) -> CaptionSummary:
    """The ``opama caption`` stage: check the inputs, then caption every panorama under ``pano_dir``.

    With ``scenes`` (a ``scenes.jsonl`` of the synthetic generator) captions come from the scene
    records (:func:`run_metadata_job`, no weights); otherwise the BLIP / BLIP-2 captioner
    ``model`` is loaded (:func:`opama_tools.data.blip.load_captioner`; ``on_captioner(captioner)``
    is called once it is) and :func:`run_caption_job` runs. Returns the summary; its
    ``exit_code`` is 0, 1 (some panorama failed) or 130/143 (stopped).

    Raises ``ValueError`` (a one-line message naming the folder, file or option: a missing
    folder or scenes file, no panoramas, an unusable output file, bad weights) or
    :class:`opama_tools.weights.MissingWeightsError`; nothing is written then.
    """
    from opama_tools.io import printable_path

    if not Path(pano_dir).is_dir():
        raise ValueError(f"{printable_path(pano_dir)}: not a folder")
    if scenes is not None:
        if not Path(scenes).is_file():
            raise ValueError(f"{printable_path(scenes)}: scenes file not found")
        return run_metadata_job(pano_dir, out_jsonl, scenes, settings, overwrite=overwrite, progress=progress)
    captioner = load_captioner(model, device=device, prompt=prompt, max_new_tokens=max_new_tokens,
                               batch_size=batch_size)
    if on_captioner is not None:
        on_captioner(captioner)
    return run_caption_job(pano_dir, out_jsonl, captioner, settings, overwrite=overwrite, progress=progress)
