"""``opama prepare``: HDR (``.exr``) and LDR (``.png/.jpg``) equirect panoramas → 8-bit PNG dataset.

Per source file (:func:`process_file`): read (OpenEXR, never imageio, for ``.exr``;
imageio for ``.png/.jpg``), check 2:1, repair NaN/Inf/negative values (counted),
tonemap (:mod:`opama_tools.tonemap`; LDR sources are only resized), resize with a
seam-aware Lanczos-3 filter (:func:`resize_equirect`), round to uint8 and write the
PNG atomically (hidden ``.NAME.XXXX.tmp`` file in the same folder, then rename).

The batch (:func:`prepare_dataset`) mirrors the source tree under the output folder,
skips outputs that exist unless ``overwrite``, runs files in worker processes, keeps
going past bad files (status ``failed`` with the reason), and merges one row per
source into ``OUT_DIR/manifest.csv`` (pandas; rows of earlier runs are kept). SIGTERM /
Ctrl-C stop the batch cleanly: workers remove their temp file and exit, the manifest of
what finished is written, and the outputs written so far are complete files.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import signal
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from opama_tools.io import atomic_path

__all__ = [
    "HDR_EXTS",
    "LDR_EXTS",
    "MANIFEST_COLUMNS",
    "PrepareConfig",
    "PrepareSummary",
    "Terminated",
    "find_sources",
    "lanczos_weights",
    "merge_manifest",
    "parse_size",
    "prepare_dataset",
    "read_manifest",
    "process_file",
    "resize_equirect",
    "to_uint8",
]

HDR_EXTS = (".exr",)
LDR_EXTS = (".png", ".jpg", ".jpeg")
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = [
    "source", "output", "status", "error", "width", "height", "src_width", "src_height",
    "operator", "params", "nan_pixels", "posinf_pixels", "negative_pixels", "repaired_pixels", "updated",
]
_INT_COLUMNS = ["width", "height", "src_width", "src_height", "nan_pixels", "posinf_pixels", "negative_pixels",
                "repaired_pixels"]


class Terminated(BaseException):
    """Raised by the SIGTERM handler (a BaseException so per-file ``except Exception`` never swallows it)."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PrepareConfig:
    """Options of a prepare run.

    ``size``: output ``(height, width)`` in pixels (must be 2:1), or None to keep the
    source size. ``operator``/``exposure``: see :func:`opama_tools.tonemap.tonemap`
    (``exposure`` in EV, applied before the operator). ``force_aspect``: resize non-2:1
    sources instead of failing them. ``overwrite``: redo outputs that exist.
    """

    size: tuple[int, int] | None = (1024, 2048)
    operator: str = "percentile"
    exposure: float = 0.0
    force_aspect: bool = False
    overwrite: bool = False

    def params_json(self) -> str:
        return json.dumps({"exposure_ev": self.exposure})


def parse_size(text: str) -> tuple[int, int] | None:
    """Parse ``"HxW"`` (e.g. ``"1024x2048"``, height first) or ``"native"`` (None). Requires W = 2 H."""
    t = text.strip().lower()
    if t in ("native", "keep", "none"):
        return None
    parts = t.replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size must look like HEIGHTxWIDTH (e.g. 1024x2048) or 'native', got {text!r}")
    h, w = (int(p) for p in parts)
    if h < 1 or w != 2 * h:
        raise ValueError(f"size {h}x{w} is not a 2:1 equirect size (width must be 2 x height)")
    return h, w


# --------------------------------------------------------------------------- resize
def _lanczos3(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


@lru_cache(maxsize=32)
def lanczos_weights(in_size: int, out_size: int, wrap: bool):
    """Sparse ``(out_size, in_size)`` float32 CSR matrix of Lanczos-3 resampling weights.

    Same kernel and sample positions as Pillow's ``Image.resize(..., LANCZOS)``: output
    sample ``o`` is centred at input coordinate ``c = (o + 0.5) s`` (``s = in/out``), the
    kernel ``sinc(t) sinc(t/3)`` (``|t| < 3``) is stretched by ``max(s, 1)`` (anti-aliasing
    when downscaling), taps ``floor(c - r + 0.5) <= i < floor(c + r + 0.5)`` (``r = 3
    max(s, 1)``) are weighted ``K((i + 0.5 - c) / max(s, 1))`` and normalised to sum 1.
    ``wrap=False`` drops taps outside the image (Pillow's border rule); ``wrap=True`` takes
    them modulo ``in_size``: the left/right edges of an equirect are neighbours (±180°).
    """
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = 3.0 * fscale
    centre = (np.arange(out_size) + 0.5) * scale
    lo = np.floor(centre - support + 0.5).astype(np.int64)
    hi = np.floor(centre + support + 0.5).astype(np.int64)
    if not wrap:
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, in_size)
    taps = int((hi - lo).max())
    idx = lo[:, None] + np.arange(taps)
    valid = idx < hi[:, None]
    w = np.where(valid, _lanczos3((idx + 0.5 - centre[:, None]) / fscale), 0.0)
    tot = w.sum(axis=1, keepdims=True)
    np.divide(w, tot, out=w, where=tot != 0)
    import scipy.sparse as sp

    rows = np.repeat(np.arange(out_size), valid.sum(axis=1))
    m = sp.csr_matrix((w[valid].astype(np.float32), (rows, (idx % in_size)[valid])), shape=(out_size, in_size))
    m.sum_duplicates()
    return m


def resize_equirect(img: np.ndarray, height: int, width: int, wrap: bool = True) -> np.ndarray:
    """Anti-aliased Lanczos-3 resize of a float32 ``(H, W, C)`` image to ``(height, width, C)``.

    Separable, as two sparse matrix products (:func:`lanczos_weights`): rows use Pillow's
    border rule, columns wrap around the ±180° seam (``wrap=True``), so a seamless
    panorama stays seamless and ``resize(roll(x, k)) == roll(resize(x), k * width / W)``.
    Matches Pillow's float ``LANCZOS`` resize of the column-wrapped image to ~1e-6.
    Returns float32 (may be a non-contiguous view); values can overshoot the input range
    slightly (Lanczos ringing), clip afterwards.
    """
    x = np.asarray(img, dtype=np.float32)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[..., None]
    h, w, c = x.shape
    if w == width:
        if h != height:
            x = np.ascontiguousarray(x).reshape(h, w * c)
            x = np.asarray(lanczos_weights(h, height, False) @ x, dtype=np.float32).reshape(height, w, c)
        return x[..., 0] if squeeze else x
    # Rows first, in blocks of columns, each result transposed while still in cache; the
    # column pass then runs on the (W, height, C) transposed image.
    sv = lanczos_weights(h, height, False) if h != height else None
    xt = np.empty((w, height, c), np.float32)
    block = 64
    for j in range(0, w, block):
        part = np.ascontiguousarray(x[:, j : j + block, :])
        bw = part.shape[1]
        if sv is not None:
            part = np.asarray(sv @ part.reshape(h, bw * c), dtype=np.float32).reshape(height, bw, c)
        xt[j : j + bw] = part.transpose(1, 0, 2)
    y = np.asarray(lanczos_weights(w, width, wrap) @ xt.reshape(w, height * c), dtype=np.float32)
    y = y.reshape(width, height, c).transpose(1, 0, 2)
    return y[..., 0] if squeeze else y


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Display values in ``[0, 1]`` → uint8 ``round(255 x)`` (half up), clipped; C-contiguous."""
    y = np.multiply(x, np.float32(255.0), dtype=np.float32)
    y += np.float32(0.5)
    np.clip(y, 0.0, 255.0, out=y)
    return np.ascontiguousarray(y.astype(np.uint8))


# --------------------------------------------------------------------------- one file
def _load_ldr(path: Path) -> np.ndarray:
    """Read a PNG/JPEG as RGB; returns uint8 ``(H, W, 3)`` or float32 in [0, 1] for 16-bit files."""
    import imageio.v3 as iio

    try:
        a = np.asarray(iio.imread(path))
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken files
        raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"{path}: unsupported image shape {a.shape}")
    if a.shape[2] in (1, 2):  # grey (+alpha)
        a = np.repeat(a[..., :1], 3, axis=2)
    a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / np.float32(65535.0)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    raise ValueError(f"{path}: unsupported pixel type {a.dtype}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _row(src: Path, dst_rel: str, **kw) -> dict:
    row = {c: None for c in MANIFEST_COLUMNS}
    row.update(source=str(src), output=dst_rel, error="", updated=_now())
    row.update(kw)
    return row


def process_file(src: str | Path, dst: str | Path, cfg: PrepareConfig, dst_rel: str | None = None) -> dict:
    """Convert one panorama ``src`` into the PNG ``dst``; never raises for a bad input.

    Returns its manifest row (``status`` ``done`` or ``failed`` with ``error`` = reason).
    EXR: read as float32 linear RGB (alpha dropped, ``Y`` replicated), repair bad values,
    tonemap with ``cfg.operator``, resize, round. PNG/JPEG: resize only. The PNG is
    written atomically. Existing outputs are not checked here (the batch skips them).
    """
    src, dst = Path(src), Path(dst)
    dst_rel = dst_rel if dst_rel is not None else str(dst)
    is_hdr = src.suffix.lower() in HDR_EXTS
    row = _row(src, dst_rel, operator=cfg.operator if is_hdr else "none")
    try:
        params: dict = {}
        counts = {"nan": 0, "posinf": 0, "negative": 0}
        if is_hdr:
            from opama_tools.exr import read_exr
            from opama_tools.tonemap import repair_hdr, tonemap

            x = read_exr(src)
            if x.shape[2] == 4:
                x = np.ascontiguousarray(x[..., :3])
        else:
            x = _load_ldr(src)
        h, w = x.shape[:2]
        row.update(src_width=w, src_height=h)
        if w != 2 * h and not cfg.force_aspect:
            raise ValueError(f"{src}: not a 2:1 equirect panorama ({w}x{h} pixels, W x H); use --force-aspect to resize it")
        out_h, out_w = cfg.size if cfg.size is not None else (h, w if w == 2 * h else 2 * h)
        if is_hdr:
            counts = repair_hdr(x)
            x, params = tonemap(x, cfg.operator, ev=cfg.exposure, in_place=True)
        if (out_h, out_w) != (h, w):
            if x.dtype == np.uint8:
                x = x.astype(np.float32) * np.float32(1 / 255)
            x = resize_equirect(x, out_h, out_w)
        u8 = x if x.dtype == np.uint8 else to_uint8(x)
        _write_png(dst, u8)
        row.update(
            status="done", width=out_w, height=out_h, params=json.dumps(params, sort_keys=True),
            nan_pixels=counts["nan"], posinf_pixels=counts["posinf"], negative_pixels=counts["negative"],
            repaired_pixels=counts["nan"] + counts["posinf"] + counts["negative"],
        )
    except MemoryError:
        row.update(status="failed", error=f"{src}: out of memory")
    except Exception as e:  # noqa: BLE001 - a bad file must not stop the batch
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        row.update(status="failed", error=msg if str(src) in msg else f"{src}: {msg}")
    return row


_CURRENT_TEMP: list[Path] = []  # temp file being written in this process (cleaned on SIGTERM)


def _write_png(dst: Path, u8: np.ndarray) -> None:
    """Write uint8 ``(H, W, 3)`` as PNG atomically. The temp name ``.NAME.XXXX.tmp`` never looks like an output."""
    import imageio.v3 as iio

    with atomic_path(dst, suffix="") as tmp:
        _CURRENT_TEMP.append(tmp)
        try:
            iio.imwrite(tmp, u8, extension=".png")
        finally:
            _CURRENT_TEMP.remove(tmp)


# --------------------------------------------------------------------------- batch
def find_sources(src_dir: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Every ``.exr/.png/.jpg/.jpeg`` (any case) under ``src_dir``, recursively, sorted;
    hidden files/folders and anything under ``exclude`` (the output folder) are left out."""
    root = Path(src_dir)
    ex = Path(exclude).resolve() if exclude is not None else None
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if ex is not None and (d.resolve() == ex or ex in d.resolve().parents):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in HDR_EXTS + LDR_EXTS:
                found.append(d / name)
    return sorted(found)


@dataclass
class PrepareSummary:
    """Result of :func:`prepare_dataset`: counts, the manifest rows of this run, failures."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: str | None = None  # "SIGTERM" / "SIGINT" when the run was stopped
    rows: list[dict] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]


def read_manifest(path: str | Path) -> "pd.DataFrame":  # noqa: F821
    """Read a prepare ``manifest.csv``: text columns as str (empty, never NaN), counts and sizes as
    nullable ``Int64`` (empty where unknown, e.g. for failed files)."""
    import pandas as pd

    df = pd.read_csv(path, dtype={c: "Int64" for c in _INT_COLUMNS}, keep_default_na=False, na_values={
        c: [""] for c in _INT_COLUMNS})
    for c in df.columns:
        if c not in _INT_COLUMNS:
            df[c] = df[c].astype(str)
    return df


def merge_manifest(path: str | Path, rows: list[dict]) -> "pd.DataFrame":  # noqa: F821
    """Merge ``rows`` into the CSV manifest at ``path`` (atomically rewritten) and return it.

    One row per ``source``: a ``done``/``failed`` row replaces the earlier row of its
    source; a ``skipped`` row only fills in a source that has no row yet; rows of other
    sources (earlier runs, other source folders) are always kept. Sorted by source.
    """
    import pandas as pd

    path = Path(path)
    new = pd.DataFrame(rows, columns=MANIFEST_COLUMNS) if rows else pd.DataFrame(columns=MANIFEST_COLUMNS)
    if path.exists():
        old = read_manifest(path)
        replace = set(new.loc[new["status"] != "skipped", "source"])
        new = new[(new["status"] != "skipped") | ~new["source"].isin(set(old["source"]))]
        old = old[~old["source"].isin(replace)]
        frames = [f for f in (old, new) if len(f)]
        merged = pd.concat(frames, ignore_index=True) if frames else new
    else:
        merged = new
    cols = MANIFEST_COLUMNS + [c for c in merged.columns if c not in MANIFEST_COLUMNS]
    merged = merged.reindex(columns=cols)
    for c in _INT_COLUMNS:  # nullable integers: empty where unknown, never "64.0"
        merged[c] = pd.to_numeric(merged[c].replace("", None), errors="coerce").astype("Int64")
    merged = merged.sort_values("source", kind="stable").reset_index(drop=True)
    with atomic_path(path) as tmp:
        merged.to_csv(tmp, index=False)
    return merged


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _raise_terminated(signum, frame):  # noqa: ARG001
    raise Terminated(signal.Signals(signum).name)


_IN_TASK = [False]


def _worker_sigterm(signum, frame):  # noqa: ARG001
    if _IN_TASK[0]:
        raise Terminated(signal.Signals(signum).name)  # unwinds atomic_path: the temp file is removed
    os._exit(128 + signum)  # idle worker: nothing to clean


def _worker_init() -> None:
    """Pool worker set-up: SIGTERM unwinds the current write (removing its temp file), then exits."""
    signal.signal(signal.SIGTERM, _worker_sigterm)


def _worker_task(src: str, dst: str, cfg: PrepareConfig, dst_rel: str) -> dict:
    _IN_TASK[0] = True
    try:
        return process_file(src, dst, cfg, dst_rel)
    except (Terminated, KeyboardInterrupt):
        for tmp in list(_CURRENT_TEMP):  # atomic_path has unlinked it already; belt and braces
            with contextlib.suppress(OSError):
                tmp.unlink()
        os._exit(128 + signal.SIGTERM)
    finally:
        _IN_TASK[0] = False


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """In the main thread, turn SIGTERM into :class:`Terminated` for the duration."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    prev = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev)


def prepare_dataset(
    src_dir: str | Path,
    out_dir: str | Path,
    cfg: PrepareConfig = PrepareConfig(),
    workers: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> PrepareSummary:
    """Convert every panorama under ``src_dir`` into ``out_dir`` (same relative paths, ``.png``).

    ``workers``: processes (default: all usable cores; 1 runs in this process).
    ``on_start(n_sources)`` and ``on_result(row)`` (once per source, skipped included)
    drive a progress bar. Writes ``out_dir/manifest.csv`` (merged, see
    :func:`merge_manifest`) also when interrupted by SIGTERM / Ctrl-C, in which case
    ``summary.interrupted`` is set and pending files are left for the next run.
    """
    src_root, out_root = Path(src_dir), Path(out_dir)
    if not src_root.is_dir():
        raise FileNotFoundError(f"{src_root}: source folder not found")
    out_root.mkdir(parents=True, exist_ok=True)
    sources = find_sources(src_root, exclude=out_root)
    if on_start:
        on_start(len(sources))
    summary = PrepareSummary(manifest=out_root / MANIFEST_NAME)

    def record(row: dict) -> None:
        summary.rows.append(row)
        setattr(summary, row["status"], getattr(summary, row["status"]) + 1)
        if on_result:
            on_result(row)

    tasks: list[tuple[str, str, PrepareConfig, str]] = []
    claimed: dict[Path, Path] = {}
    for src in sources:
        rel = src.relative_to(src_root).with_suffix(".png")
        dst = out_root / rel
        key = Path(os.path.normcase(dst))
        src_abs = src.resolve()
        if key in claimed:
            record(_row(src_abs, rel.as_posix(), status="failed",
                        error=f"{src}: output {rel.as_posix()} is also the output of {claimed[key]}"))
            continue
        claimed[key] = src
        if dst.exists() and not cfg.overwrite:
            width = height = None
            with contextlib.suppress(Exception):
                from PIL import Image

                with Image.open(dst) as im:
                    width, height = im.size
            record(_row(src_abs, rel.as_posix(), status="skipped", width=width, height=height))
            continue
        tasks.append((str(src_abs), str(dst), cfg, rel.as_posix()))

    n_workers = min(workers or _default_workers(), max(1, len(tasks)))
    with _sigterm_raises():
        try:
            if n_workers <= 1:
                for t in tasks:
                    record(process_file(*t))
            else:
                _run_pool(tasks, n_workers, record)
        except (Terminated, KeyboardInterrupt) as e:
            summary.interrupted = "SIGINT" if isinstance(e, KeyboardInterrupt) else "SIGTERM"
        finally:
            merge_manifest(summary.manifest, summary.rows)
    return summary


def _run_pool(tasks: list[tuple], n_workers: int, record: Callable[[dict], None]) -> None:
    """Run ``tasks`` on ``n_workers`` spawned processes, at most two queued per worker (so
    a stop leaves little in flight). A worker that dies (a crash in a decoder) fails the
    files it had in flight and the pool is restarted for the rest."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)

    ex = new_pool()
    todo = list(reversed(tasks))
    futs: dict = {}
    try:
        while todo or futs:
            while todo and len(futs) < 2 * n_workers:
                t = todo.pop()
                futs[ex.submit(_worker_task, *t)] = t
            done, _ = wait(list(futs), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                t = futs.pop(fut)
                try:
                    record(fut.result())
                except BrokenProcessPool:
                    broken = True
                    record(_row(Path(t[0]), t[3], status="failed",
                                error=f"{t[0]}: worker process died (crash converting this file or one "
                                      "converted at the same time); re-run to retry"))
            if broken:
                ex.shutdown(wait=True, cancel_futures=True)
                todo.extend(reversed(list(futs.values())))  # not started or lost with the pool: retry
                futs.clear()
                ex = new_pool()
    except BaseException:
        for f in futs:
            f.cancel()
        for p in list((getattr(ex, "_processes", None) or {}).values()):  # stop in-flight writes now
            with contextlib.suppress(Exception):
                p.terminate()
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
