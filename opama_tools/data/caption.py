"""Panorama captioning: BLIP / BLIP-2 on the whole panorama plus "augmented" per-view captions.

OPa-Ma and AOG-Net caption each equirectangular panorama with BLIP(-2) and, because the
squeezed 2:1 panorama captions poorly, also caption NFoV views taken every ``stride``
degrees around the horizon. This module does both and writes one JSONL line per panorama::

    {"image": "<path relative to PANO_DIR>", "caption": "<global caption>",
     "views": [{"yaw": 0, "pitch": 0, "caption": "..."}, {"yaw": 30, ...}, ...],
     "source": {"bytes": ..., "mtime_ns": ...}, "settings": "<16 hex digits>"}

(``source``: the image file when it was captioned; ``settings``: a hash of the options, the
model and, for ``--from-metadata``, the scene record; a re-run redoes a panorama whose
``source`` or ``settings`` no longer match.)

Angles are degrees in the project's convention (yaw 0 = panorama centre column, positive
yaw turns right, positive pitch looks up, ``fov`` horizontal; views are square). Views are
cut with :func:`opama_model.spherical.equi_to_pers` at ``yaw = k * stride`` for
``k * stride < 360`` (AOG-Net's published script passes ``k`` itself as the yaw; not here).

* Captioner weights are looked up locally only (flag path or repo id in the HF cache, then
  ``OPAMA_BLIP``, then the HF cache of ``Salesforce/blip-image-captioning-large``); BLIP vs
  BLIP-2 is chosen from the checkpoint's ``config.json`` ``model_type``. fp16 on CUDA, fp32 on CPU.
* Generation is batched across views *and* panoramas: exactly one ``generate`` call per
  ``batch_size`` images (the last call may be smaller).
* The job is resumable: images already in ``OUT.jsonl`` (without an ``error``, same ``source``
  and ``settings``) are skipped;
  each panorama's line is appended with one ``write`` and fsync'd; an unreadable image gives a
  line with an ``error`` field (retried on the next run) and does not stop the run. SIGTERM /
  Ctrl-C stop it cleanly (``summary.interrupted``; every line written is complete).
* :func:`scene_view_caption` derives per-view captions from the synthetic generator's scene
  description (what lies inside each view's frustum), so ``--from-metadata`` needs no weights.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

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
    "run_caption_job",
    "run_metadata_job",
]

DEFAULT_PROMPT = "a photography of"
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
        from opama_tools.jobs import stop_exit_code

        if self.interrupted:
            return stop_exit_code(self.interrupted)
        return 1 if self.failed else 0


# --------------------------------------------------------------------------- captioner


class Captioner:
    """A loaded BLIP or BLIP-2 captioner.

    ``caption(images)`` captions a list of PIL images (or HWC uint8 arrays) with one
    ``model.generate`` call per ``batch_size`` images and returns one string per image,
    with the prompt prefix removed.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        kind: str,
        device,
        dtype,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 30,
        batch_size: int = 8,
        source: str = "",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.kind = kind
        self.device = device
        self.dtype = dtype
        self.prompt = prompt or ""
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.source = source

    def _strip_prompt(self, text: str) -> str:
        text = " ".join(text.split())
        p = " ".join(self.prompt.split())
        if p and text.lower().startswith(p.lower()):
            text = text[len(p):].strip()
        return text

    def generate_batch(self, images: Sequence) -> list[str]:
        """Caption ``images`` (at most ``batch_size`` of them) with exactly one ``generate`` call."""
        import torch

        from PIL import Image

        pil = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images]
        if self.prompt:
            inputs = self.processor(images=pil, text=[self.prompt] * len(pil), return_tensors="pt")
        else:
            inputs = self.processor(images=pil, return_tensors="pt")
        inputs = {
            k: (v.to(self.device, self.dtype) if k == "pixel_values" else v.to(self.device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [self._strip_prompt(t) for t in texts]

    def caption(self, images: Sequence) -> list[str]:
        """Caption any number of images, ``ceil(len/batch_size)`` generate calls."""
        out: list[str] = []
        for i in range(0, len(images), self.batch_size):
            out.extend(self.generate_batch(images[i : i + self.batch_size]))
        return out


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(model: str | os.PathLike | None = None) -> Path:
    """Local folder of the captioner: ``model`` (a folder, or a repo id found in the local HF
    cache), else ``OPAMA_BLIP``, else the HF cache of the default id. Never downloads.

    Raises :class:`opama_tools.weights.MissingWeightsError` naming the id, where to place it
    and ``opama doctor``.
    """
    from opama_model.weights import hf_cache_dir
    from opama_tools.weights import MissingWeightsError, component, require

    comp = component("blip")
    if model is None or str(model) == "":
        return require(comp)
    p = Path(model).expanduser()
    if p.exists() or not _REPO_ID.match(str(model)):
        return require(comp, explicit=p)
    # A repo id: only the local Hugging Face cache (offline) is consulted.
    with contextlib.suppress(Exception):
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(str(model), cache_dir=hf_cache_dir(), local_files_only=True))
        if (snap / "config.json").is_file():
            return snap
    hint = dataclasses.replace(comp, repo_id=str(model)).cache_hint()
    raise MissingWeightsError(
        f"{comp.title}: {model} (given with {comp.flag}) is neither a local folder nor in the local "
        f"Hugging Face cache. Place the Hugging Face repo {model} at {hint} (or pass {comp.flag} PATH "
        f"to a folder with config.json, or set {comp.env}=PATH); no download is attempted. See `opama doctor`."
    )


def _pick_device(device: str | None):
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {device!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: not supported (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def load_captioner(
    model: str | os.PathLike | None = None,
    *,
    device: str | None = "auto",
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 30,
    batch_size: int = 8,
) -> Captioner:
    """Load BLIP (``model_type`` ``blip``) or BLIP-2 (``blip-2``) from a local folder / HF cache.

    fp16 on CUDA, fp32 on CPU. See :func:`resolve_model_path` for where it looks.
    """
    import torch

    path = resolve_model_path(model)
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        model_type = cfg.get("model_type", "") if isinstance(cfg, dict) else ""
    except UnicodeDecodeError:
        raise ValueError(f"{cfg_file}: cannot read the model config (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: line {e.lineno}: not valid JSON ({e.msg})") from None
    except OSError as e:
        raise ValueError(f"{cfg_file}: cannot read the model config ({e.strerror or e})") from None
    dev = _pick_device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if model_type == "blip":
        from transformers import BlipForConditionalGeneration, BlipProcessor

        proc_cls, net_cls, kind = BlipProcessor, BlipForConditionalGeneration, "blip"
    elif model_type == "blip-2":
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        proc_cls, net_cls, kind = Blip2Processor, Blip2ForConditionalGeneration, "blip-2"
    else:
        raise ValueError(
            f"{cfg_file}: model_type {model_type!r} is not a captioner opama supports (expected 'blip' or 'blip-2')"
        )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        try:
            proc = proc_cls.from_pretrained(path, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/TypeError ...
            raise ValueError(f"{path}: cannot load the {kind} processor (tokenizer / image processor files): "
                             f"{_first_line(e)}") from None
        try:
            net = net_cls.from_pretrained(path, dtype=dtype, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: cannot load the {kind} weights: {_first_line(e)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    net = net.to(dev).eval()
    return Captioner(
        net, proc, kind=kind, device=dev, dtype=dtype, prompt=prompt, max_new_tokens=max_new_tokens,
        batch_size=batch_size, source=str(path),
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------- images and views


def read_panorama(path: str | os.PathLike) -> np.ndarray:
    """Decode a PNG/JPG panorama to ``(H, W, 3)`` uint8 RGB; checks it is 2:1.

    8- or 16-bit, grey or RGB(A) (:func:`opama_tools.images.read_ldr`: grey expanded, alpha
    dropped, 16-bit rounded to 8-bit as ``round(v * 255 / 65535)``). Raises ``ValueError``
    with the reason for unreadable or non-2:1 images.
    """
    from opama_tools.images import read_ldr, to_uint8_rgb

    arr = to_uint8_rgb(read_ldr(path))
    h, w = arr.shape[:2]
    if w != 2 * h:
        raise ValueError(f"not a 2:1 equirectangular panorama ({w}x{h})")
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
    root = Path(pano_dir)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        d = Path(dirpath)
        for name in filenames:
            p = d / name
            if not name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


# --------------------------------------------------------------------------- JSONL bookkeeping


class _JsonlOut:
    """Append-only JSONL writer with resume: reads what is done, drops error lines and a torn last line.

    Any other line that is not a caption record means ``path`` is not ours: ``ValueError``
    naming the file and line (nothing is rewritten).
    """

    def __init__(self, path: Path, overwrite: bool) -> None:
        from opama_tools.io import atomic_write_text, ensure_output_file

        self.path = path
        ensure_output_file(path, "captions file")
        self.records: dict[str, dict] = {}  # image -> its caption record (without errors)
        keep: list[str] = []
        rewrite = overwrite and path.exists()
        if path.exists() and not overwrite:
            try:
                raw = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}: not a captions JSONL file (not UTF-8 text); pass --overwrite to "
                                 "replace it or choose another file") from None
            lines = raw.splitlines()
            for i, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    if i == len(lines) and not raw.endswith("\n"):
                        rewrite = True  # a half-written last line from a killed run
                        continue
                    raise ValueError(f"{path}: line {i}: not valid JSON ({getattr(e, 'msg', e)}); pass --overwrite "
                                     "to replace the file or fix the line") from None
                if not isinstance(rec, dict) or "image" not in rec:
                    raise ValueError(f"{path}: line {i}: not a caption record (no 'image' field); pass --overwrite "
                                     "to replace the file or fix the line")
                if rec.get("error"):
                    rewrite = True  # failed before: retried now
                    continue
                self.records[str(rec["image"])] = rec
                keep.append(json.dumps(rec, ensure_ascii=False))
            if raw and not raw.endswith("\n"):
                rewrite = True
        if rewrite:
            atomic_write_text(path, "".join(k + "\n" for k in keep))
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def drop(self, images: set[str]) -> None:
        """Remove the records of ``images`` (stale: their source or settings changed) from the file."""
        from opama_tools.io import atomic_write_text

        if not images:
            return
        os.close(self._fd)
        for im in images:
            self.records.pop(im, None)
        lines = [json.dumps(r, ensure_ascii=False) for r in self.records.values()]
        atomic_write_text(self.path, "".join(k + "\n" for k in lines))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def write(self, rec: dict) -> None:
        """Append one record as a line with a single ``write`` (never torn by a stop), then fsync."""
        os.write(self._fd, (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
        with contextlib.suppress(OSError):
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


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


# --------------------------------------------------------------------------- BLIP job



def _source_signature(p: Path) -> dict:
    """What "unchanged input" means for re-runs: size in bytes and mtime in ns."""
    st = p.stat()
    return {"bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def settings_key(*parts) -> str:
    """A short stable hash of everything that shapes a caption (settings, model, scene record)."""
    import hashlib

    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _open_job(
    root: Path, out_jsonl, overwrite: bool, key_of: Callable[[Path], str] | None = None
) -> tuple["_JsonlOut", CaptionSummary, list[tuple[str, Path]]]:
    """Open the resumable output and list the panoramas under ``root`` not captioned yet
    (``(relative posix path, path)``); already-done ones are counted as skipped. A record is
    done only if its ``source`` (size, mtime) matches the file now and its ``settings`` key
    equals ``key_of(path)``; stale records are removed from the file and redone.

    Raises :class:`opama_tools.jobs.NoInputsError` when ``root`` holds no panorama (nothing
    is written), ``ValueError`` for an unusable output file.
    """
    from opama_tools.io import printable_path
    from opama_tools.jobs import NoInputsError

    found = find_panoramas(root)
    if not found:
        raise NoInputsError(f"{printable_path(root)}: no panoramas (*.png, *.jpg, *.jpeg) found")
    out = _JsonlOut(Path(out_jsonl), overwrite)
    summary = CaptionSummary(out=Path(out_jsonl))
    todo = []
    stale: set[str] = set()
    for p in found:
        rel = printable_path(p.relative_to(root).as_posix())
        rec = out.records.get(rel)
        if rec is not None:
            try:
                fresh = rec.get("source") == _source_signature(p) and (
                    key_of is None or rec.get("settings") == key_of(p))
            except OSError:
                fresh = False
            if fresh:
                summary.skipped += 1
                continue
            stale.add(rel)
        todo.append((rel, p))
    out.drop(stale)
    return out, summary, todo


def _stamp(rec: dict, p: Path, key: str | None) -> dict:
    """Add the ``source`` signature and the ``settings`` key that make a record checkable on resume."""
    with contextlib.suppress(OSError):
        rec["source"] = _source_signature(p)
    if key is not None:
        rec["settings"] = key
    return rec


def _fail_image(out: "_JsonlOut", summary: CaptionSummary, rel: str, reason: str) -> None:
    out.write({"image": rel, "error": reason})
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
    paths = dict(todo)

    from opama_tools.io import utf8_name_problem
    from opama_tools.jobs import Terminated, check_stop, stop_name, stop_raises

    def load(item):
        _, p = item
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
            out.write(_stamp(rec, paths[rel], key))
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
                for (rel, p), images, err in _prefetch(load, todo):
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


# --------------------------------------------------------------------------- captions from scenes


def scene_from_record(rec: dict):
    """The :class:`opama_tools.data.synthetic.Scene` of one ``scenes.jsonl`` record.

    Uses the stored ``scene`` dict; falls back to ``make_scene(seed, kind)`` when absent.
    """
    from opama_tools.data.synthetic import Box, Scene, make_scene

    d = rec.get("scene")
    if isinstance(d, dict):
        fields = dataclasses.fields(Scene)
        names = {f.name for f in fields}
        required = [f.name for f in fields
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise ValueError(f"its 'scene' lacks the field(s) {', '.join(missing)}")
        kw = {k: v for k, v in d.items() if k in names}
        try:
            kw["buildings"] = [Box(tuple(b["lo"]), tuple(b["hi"]), b.get("colour", "grey"))
                               for b in kw.get("buildings", [])]
            for k in ("room_lo", "room_hi", "wall_colours", "floor_colour", "sky_zenith", "sky_horizon"):
                if k in kw:
                    kw[k] = tuple(kw[k])
            kw["lamps"] = [tuple(lp) for lp in kw.get("lamps", [])]
            return Scene(**kw)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"its 'scene' is malformed ({type(e).__name__}: {_first_line(e)})") from None
    if "seed" in rec:
        try:
            return make_scene(int(rec["seed"]), rec.get("kind", "random"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"its 'seed'/'kind' are unusable ({_first_line(e)})") from None
    raise ValueError("record has neither 'scene' nor 'seed'")


def _in_frustum(points: np.ndarray, yaw: float, pitch: float, fov: float) -> np.ndarray:
    """Which world points ``(N, 3)`` (camera at the origin) fall inside a square view's frustum."""
    from opama_model.spherical import rotation_matrix

    rot = rotation_matrix(yaw, pitch).numpy()
    cam = points @ rot  # world -> camera: R^T p, row-vector form
    t = math.tan(math.radians(fov) / 2)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (z > 1e-9) & (np.abs(cam[:, 0]) <= t * z) & (np.abs(cam[:, 1]) <= t * z)


def visible_objects(scene, yaw: float, pitch: float, fov: float, samples: int = 32) -> dict:
    """What a square view at ``yaw``/``pitch``/``fov`` (degrees) of a synthetic scene shows.

    Coverage fractions come from a ``samples x samples`` grid of pixel-centre rays (the
    geometry of :func:`opama_model.spherical.perspective_directions`, nearest hit as in the
    renderer). Outdoor: ``{"sky", "ground", "buildings": {index: fraction}, "sun": bool}``
    (sun: its centre inside the frustum and not hidden by a building). Indoor:
    ``{"floor", "ceiling", "walls": {surface id: fraction}, "windows": [indices],
    "lamps": [indices]}`` (a window counts when any of a 5x5 grid of points on it is inside
    the frustum; a lamp when its centre is; nothing occludes inside the convex room).
    """
    import torch

    from opama_model.spherical import perspective_directions

    d = perspective_directions(yaw, pitch, fov, (samples, samples), dtype=torch.float64)[0]
    d = d.reshape(-1, 3).numpy()
    n = d.shape[0]
    _, lab = scene.nearest_hits(d)  # outdoor: -2 sky, -1 ground, k building k; indoor: surface id
    if scene.kind == "outdoor":
        b = {k: float((lab == k).sum()) / n for k in range(len(scene.buildings)) if (lab == k).any()}
        sun_dir = scene._sun_dir()[None]
        sun = bool(_in_frustum(sun_dir, yaw, pitch, fov)[0] and scene.nearest_hits(sun_dir)[1][0] == -2)
        return {"sky": float((lab == -2).sum()) / n, "ground": float((lab == -1).sum()) / n, "buildings": b, "sun": sun}
    walls = {w: float((lab == w).sum()) / n for w in (2, 3, 4, 5) if (lab == w).any()}
    windows = []
    for k, w in enumerate(scene.windows):
        c = np.array(w["centre"], dtype=np.float64)
        u_ax = 0 if w["wall"] in (2, 3) else 2
        g = np.linspace(-0.5, 0.5, 5)
        uu, vv = np.meshgrid(g * w["w"], g * w["h"], indexing="ij")
        pts = np.repeat(c[None], uu.size, 0)
        pts[:, u_ax] += uu.ravel()
        pts[:, 1] += vv.ravel()
        if _in_frustum(pts, yaw, pitch, fov).any():
            windows.append(k)
    lamps = []
    if scene.lamps:
        inside = _in_frustum(np.array(scene.lamps, dtype=np.float64), yaw, pitch, fov)
        lamps = [k for k in range(len(scene.lamps)) if inside[k]]
    return {"floor": float((lab == 0).sum()) / n, "ceiling": float((lab == 1).sum()) / n, "walls": walls,
            "windows": windows, "lamps": lamps}


_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _count(n: int, noun: str) -> str:
    word = _NUMBERS[n] if n < len(_NUMBERS) else str(n)
    if n == 1:
        return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    return f"{word} {noun}s"


def _join(parts: Sequence[str]) -> str:
    parts = list(parts)
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def scene_view_caption(scene, yaw: float, pitch: float = 0.0, fov: float = 90.0, *, min_fraction: float = 0.01) -> str:
    """A caption of what a square view (degrees) of a synthetic scene shows, from its geometry.

    Objects covering less than ``min_fraction`` of the view are left out (windows, lamps and
    the sun are point-like and are mentioned whenever inside the frustum).
    """
    vis = visible_objects(scene, yaw, pitch, fov)
    if scene.kind == "outdoor":
        overcast = scene.sky_zenith[2] - scene.sky_zenith[0] < 0.2
        sky = "an overcast grey sky" if overcast else "a clear blue sky"
        blds = sorted(((f, k) for k, f in vis["buildings"].items() if f >= min_fraction), reverse=True)
        colours: list[str] = []
        for _, k in blds:
            c = scene.buildings[k].colour
            if c not in colours:
                colours.append(c)
        if len(blds) == 1:
            bword = f"{'an' if colours[0][0] in 'aeiou' else 'a'} {colours[0]} building"
        elif blds:
            bword = f"{_NUMBERS[len(blds)] if len(blds) < 10 else len(blds)} {' and '.join(colours)} buildings"
        else:
            bword = ""
        ground = f"{scene.ground} ground"
        has_ground = vis["ground"] >= min_fraction
        has_sky = vis["sky"] >= min_fraction
        if bword:
            text = f"a view of {bword}"
            if has_ground:
                text += f" on {ground}"
            if has_sky:
                text += f" under {sky}"
        elif has_ground and has_sky:
            text = f"a view of {ground} under {sky}"
        elif has_sky:
            text = f"a view of {sky}"
        else:
            text = f"a view of {ground}"
        if vis["sun"]:
            sp = scene.sun_pitch
            text += ", with the sun " + ("low over the horizon" if sp < 25 else "high in the sky" if sp > 50 else "in the sky")
        return text
    walls = sorted(((f, w) for w, f in vis["walls"].items() if f >= max(min_fraction, 0.05)), reverse=True)
    wall_colours: list[str] = []
    for _, w in walls:
        c = scene.wall_colours[w - 2]
        if c not in wall_colours:
            wall_colours.append(c)
    parts = []
    if len(walls) == 1:
        parts.append(f"a {wall_colours[0]} wall")
    elif walls:
        parts.append(f"{' and '.join(wall_colours)} walls")
    if vis["windows"]:
        parts.append(_count(len(vis["windows"]), "bright window"))
    if vis["floor"] >= max(min_fraction, 0.05):
        parts.append("a wooden floor")
    if vis["lamps"]:
        parts.append(_count(len(vis["lamps"]), "ceiling lamp"))
    elif vis["ceiling"] >= max(min_fraction, 0.05):
        parts.append("a white ceiling")
    return "a view of " + (_join(parts) if parts else "a room")


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
            for rel, p in todo:
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
                    out.write(_stamp({"image": rel, "caption": str(rec.get("caption", "")), "views": views}, p,
                                     key_of(p)))
                    summary.done += 1
                except Exception as e:  # noqa: BLE001 - reported per image
                    _fail_image(out, summary, rel, _err_text(e))
                advance()
    except (Terminated, KeyboardInterrupt) as e:
        summary.interrupted = stop_name(e)
    finally:
        out.close()
    return summary


def read_scenes(scenes_jsonl: str | os.PathLike) -> dict[str, dict]:
    """``scenes.jsonl`` of the synthetic generator → ``{file stem: record}``.

    Raises ``ValueError`` naming the file (and line) for anything that is not a scene record.
    """
    path = Path(scenes_jsonl)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a scenes JSONL file (not UTF-8 text at byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    scenes: dict[str, dict] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: line {i}: not a scene record (a JSON object expected)")
        if not isinstance(rec.get("image"), str) or not rec["image"]:
            raise ValueError(f"{path}: line {i}: scene record without an 'image' file name")
        scenes[Path(rec["image"]).stem] = rec
    if not scenes:
        raise ValueError(f"{path}: no scene records (empty file)")
    return scenes
