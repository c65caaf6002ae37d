"""``opama prepare``: HDR (``.exr``) and LDR (``.png/.jpg``) equirect panoramas → 8-bit PNG dataset.

Per source file (:func:`process_file`): read (OpenEXR, never imageio, for ``.exr``;
imageio for ``.png/.jpg``), check 2:1, repair NaN/Inf/negative values (counted),
tonemap (:mod:`opama_tools.data.tonemap`; LDR sources are only resized), resize with a
seam-aware Lanczos-3 filter (:func:`resize_equirect`), round to uint8 and write the
PNG atomically (hidden ``.NAME.XXXX.tmp`` file in the same folder, then rename).

Output size: ``PrepareConfig.size`` ``"auto"`` (the default) keeps the source size but at most
1024x2048 (never upsamples; larger sources are downsampled to 1024x2048), ``None`` keeps the
source size, an explicit ``(H, W)`` resizes to exactly that (upsampling included).

The batch (:func:`run_prepare`, :func:`prepare_dataset`) mirrors the source tree under the
output folder, skips a source only when its manifest row says ``done`` for the same source
content (``source_sha256``, :func:`opama_tools.jobs.source_signature`) and the same settings
(``settings``, :func:`opama_tools.jobs.settings_key`) and the output exists (unless ``overwrite``),
runs files in worker processes, keeps going past bad files (status ``failed`` with the
reason), and merges one row per source into ``OUT_DIR/manifest.csv`` (pandas; rows of
earlier runs are kept). Each result is journaled as it lands (``OUT_DIR/.manifest.journal.jsonl``,
one fsync'd JSON line written right after the PNG's rename, with SIGTERM/SIGINT held): the
journal is folded into ``manifest.csv`` at the end of a run and at the start of the next, so
a run killed even by SIGKILL loses no metadata. SIGTERM / Ctrl-C stop the batch cleanly;
workers die with the main process (:func:`opama_tools.jobs.die_with_parent`); temp files
left by a SIGKILL are removed by the next run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import signal
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from opama_tools.images import check_equirect, format_hw
from opama_tools.io import atomic_path, find_files, printable_path, remove_stale_temps, utf8_name_problem
from opama_tools.jobs import (
    NoInputsError,
    Terminated,
    batch_exit_code,
    check_stop,
    die_with_parent,
    record_matches,
    settings_key,
    source_signature,
    stop_name,
    stop_raises,
)

__all__ = [
    "DEFAULT_MAX_SIZE",
    "HDR_EXTS",
    "LDR_EXTS",
    "MANIFEST_COLUMNS",
    "PrepareConfig",
    "PrepareSummary",
    "Terminated",
    "find_sources",
    "journal_append",
    "read_journal",
    "lanczos_weights",
    "merge_manifest",
    "parse_size",
    "prepare_dataset",
    "read_manifest",
    "process_file",
    "resize_equirect",
    "run_prepare",
    "to_uint8",
]

HDR_EXTS = (".exr",)
LDR_EXTS = (".png", ".jpg", ".jpeg")
MANIFEST_NAME = "manifest.csv"
JOURNAL_NAME = ".manifest.journal.jsonl"
MANIFEST_COLUMNS = [
    "source", "output", "status", "error", "width", "height", "src_width", "src_height",
    "operator", "params", "nan_pixels", "posinf_pixels", "negative_pixels", "repaired_pixels",
    "source_bytes", "source_mtime_ns", "source_sha256", "settings", "updated",
]
_INT_COLUMNS = ["width", "height", "src_width", "src_height", "nan_pixels", "posinf_pixels", "negative_pixels",
                "repaired_pixels", "source_bytes", "source_mtime_ns"]


# --------------------------------------------------------------------------- config
DEFAULT_MAX_SIZE = (1024, 2048)
"""The largest output ``(H, W)`` of ``size="auto"``: smaller sources keep their size."""


@dataclass(frozen=True)
class PrepareConfig:
    """Options of a prepare run.

    ``size``: ``"auto"`` (default): the source size, at most :data:`DEFAULT_MAX_SIZE`
    (1024x2048; never upsampled); ``None``: the source size; ``(height, width)`` in pixels
    (2:1): exactly that size. A non-2:1 source (with ``force_aspect``) counts as
    ``H x 2H``. ``operator``/``exposure``: see :func:`opama_tools.data.tonemap.tonemap`
    (``exposure`` in EV, applied before the operator). ``force_aspect``: resize non-2:1
    sources instead of failing them. ``overwrite``: redo outputs that exist.
    """

    size: tuple[int, int] | None | str = "auto"
    operator: str = "percentile"
    exposure: float = 0.0
    force_aspect: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        from opama_tools.data.tonemap import OPERATORS

        if self.operator not in OPERATORS:
            raise ValueError(f"--operator must be one of {', '.join(OPERATORS)}, got {self.operator!r}")
        if isinstance(self.size, str):
            if self.size != "auto":
                raise ValueError(f"--size must be 'auto', 'native' or HEIGHTxWIDTH, got {self.size!r}")
        elif self.size is not None:
            h, w = (int(v) for v in self.size)
            if h < 1 or w != 2 * h:
                raise ValueError(f"size {format_hw(h, w)} is not a 2:1 equirect size (HxW, width must be 2 x height)")
            object.__setattr__(self, "size", (h, w))
        if not math.isfinite(self.exposure):
            raise ValueError(f"--exposure must be a finite number of EV, got {self.exposure}")
        if abs(self.exposure) > 64:
            raise ValueError(f"--exposure {self.exposure} EV is out of range (|EV| <= 64)")

    def params_json(self) -> str:
        return json.dumps({"exposure_ev": self.exposure})

    def output_size(self, src_height: int, src_width: int) -> tuple[int, int]:
        """Output ``(H, W)`` for a source of ``src_height x src_width`` pixels (see ``size``)."""
        if isinstance(self.size, tuple):
            return self.size
        h = int(src_height)
        if self.size == "auto" and h > DEFAULT_MAX_SIZE[0]:
            return DEFAULT_MAX_SIZE
        return h, (int(src_width) if src_width == 2 * h else 2 * h)

    def key(self, is_hdr: bool, out_size: tuple[int, int]) -> str:
        """The settings key (:func:`opama_tools.jobs.settings_key`) of one output: what shapes its
        pixels besides the source (tonemap and exposure for HDR sources, the output size)."""
        tone = [self.operator, float(self.exposure)] if is_hdr else ["none"]
        return settings_key("prepare", tone, [int(out_size[0]), int(out_size[1])])


def parse_size(text: str) -> tuple[int, int] | None | str:
    """``--size``: ``"HxW"`` (e.g. ``"1024x2048"``, height first, 2:1; :func:`opama_tools.images.parse_size`),
    ``"native"`` (None: the source size) or ``"auto"`` (the source size, at most
    :data:`DEFAULT_MAX_SIZE`). Raises ``ValueError``: one line naming ``--size``."""
    from opama_tools.images import parse_size as parse_hw

    if text.strip().lower() == "auto":
        return "auto"
    if not text.strip():
        raise ValueError("--size '': expected HxW in pixels, height first (e.g. 1024x2048) or 'auto' / 'native'")
    return parse_hw(text, option="--size", equirect=True, native=("native", "keep", "none", "auto"))


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
    """Read a PNG/JPEG as RGB (:func:`opama_tools.images.read_ldr`: grey expanded, alpha dropped);
    returns uint8 ``(H, W, 3)``, or float32 in [0, 1] for 16-bit files (divided by 65535)."""
    from opama_tools.images import read_ldr, to_unit_float

    try:
        a = read_ldr(path)
    except ValueError as e:
        raise ValueError(f"{printable_path(path)}: {e}") from None
    return a if a.dtype == np.uint8 else to_unit_float(a)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _row(src: Path, dst_rel: str, **kw) -> dict:
    row = {c: None for c in MANIFEST_COLUMNS}
    row.update(source=printable_path(src), output=dst_rel, error="", updated=_now())
    row.update(kw)
    return row


def _signature(src: Path) -> tuple[int, int] | None:
    """``(size in bytes, mtime in ns)`` of a source, recorded in the manifest for information
    (whether a source is unchanged is decided by its content signature)."""
    try:
        st = src.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def journal_append(journal: str | Path, row: dict) -> None:
    """Append one manifest row as a JSON line to ``journal`` (O_APPEND, one write, fsync'd)."""
    line = (json.dumps(row, ensure_ascii=True, default=str) + "\n").encode("ascii")
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_journal(journal: str | Path) -> list[dict]:
    """Rows of a journal (a torn last line from a killed writer is ignored)."""
    rows = []
    try:
        raw = Path(journal).read_bytes()
    except FileNotFoundError:
        return rows
    for line in raw.decode("ascii", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and "source" in rec and rec.get("status") in ("done", "failed"):
                rows.append({c: rec.get(c) for c in MANIFEST_COLUMNS})
    return rows


def _non_finite_message(x: np.ndarray) -> str | None:
    """None if some pixel of ``x`` ``(H, W, C)`` has all channels finite, else why it is unusable."""
    lo, hi = float(x.min()), float(x.max())
    if math.isfinite(lo) and math.isfinite(hi):
        return None
    if np.isfinite(x).all(axis=-1).any():
        return None
    kinds = [k for k, m in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)) if m(x).any()]
    return f"no finite pixel (every pixel has {'/'.join(kinds)}): nothing to tonemap"


def process_file(src: str | Path, dst: str | Path, cfg: PrepareConfig, dst_rel: str | None = None,
                 journal: str | Path | None = None) -> dict:
    """Convert one panorama ``src`` into the PNG ``dst``; never raises for a bad input.

    Returns its manifest row (``status`` ``done`` or ``failed`` with ``error`` = reason).
    EXR: read as float32 linear RGB (alpha dropped, ``Y`` replicated), repair bad values
    (a source with no finite pixel fails), tonemap with ``cfg.operator``, resize, round.
    PNG/JPEG: resize only (16-bit scaled by 65535, grey expanded, alpha dropped). The PNG
    is written atomically; with ``journal``, the row is appended there right after the
    rename (SIGTERM/SIGINT held in between), failures too. Existing outputs are not
    checked here (the batch decides what to skip).
    """
    src, dst = Path(src), Path(dst)
    dst_rel = dst_rel if dst_rel is not None else str(dst)
    is_hdr = src.suffix.lower() in HDR_EXTS
    row = _row(src, dst_rel, operator=cfg.operator if is_hdr else "none")
    sig = _signature(src)
    if sig is not None:
        row.update(source_bytes=sig[0], source_mtime_ns=sig[1])
    try:
        row["source_sha256"] = source_signature(src)
        params: dict = {}
        counts = {"nan": 0, "posinf": 0, "negative": 0}
        if is_hdr:
            from opama_tools.data.exr import read_exr
            from opama_tools.data.tonemap import repair_hdr, tonemap

            x = read_exr(src)
            if x.shape[2] == 4:
                x = np.ascontiguousarray(x[..., :3])
        else:
            x = _load_ldr(src)
        h, w = x.shape[:2]
        row.update(src_width=w, src_height=h)
        if not cfg.force_aspect:
            try:
                check_equirect(h, w)
            except ValueError as e:
                raise ValueError(f"{printable_path(src)}: {e}; use --force-aspect to resize it") from None
        out_h, out_w = cfg.output_size(h, w)
        if is_hdr:
            bad = _non_finite_message(x)
            if bad:
                raise ValueError(f"{printable_path(src)}: {bad}")
            counts = repair_hdr(x)
            x, params = tonemap(x, cfg.operator, ev=cfg.exposure, in_place=True)
        if (out_h, out_w) != (h, w):
            if x.dtype == np.uint8:
                x = x.astype(np.float32) * np.float32(1 / 255)
            x = resize_equirect(x, out_h, out_w)
        u8 = x if x.dtype == np.uint8 else to_uint8(x)
        row.update(
            status="done", width=out_w, height=out_h, params=json.dumps(params, sort_keys=True),
            settings=cfg.key(is_hdr, (out_h, out_w)),
            nan_pixels=counts["nan"], posinf_pixels=counts["posinf"], negative_pixels=counts["negative"],
            repaired_pixels=counts["nan"] + counts["posinf"] + counts["negative"],
        )
        row["updated"] = _now()
        _write_png(dst, u8, on_commit=(lambda: journal_append(journal, row)) if journal is not None else None)
    except MemoryError:
        _failed(row, f"{printable_path(src)}: out of memory", journal, dst)
    except Exception as e:  # noqa: BLE001 - a bad file must not stop the batch
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        name = printable_path(src)
        _failed(row, msg if name in msg else f"{name}: {msg}", journal, dst)
    return row


def _failed(row: dict, error: str, journal: str | Path | None, dst: Path | None = None) -> None:
    """Mark ``row`` failed (journaled); an output of an earlier run of this source is removed:
    it no longer matches the source (or the settings) and must not pass for a result."""
    if dst is not None:
        with contextlib.suppress(OSError):
            dst.unlink()
    for c in ("width", "height", "params", "nan_pixels", "posinf_pixels", "negative_pixels", "repaired_pixels",
              "settings"):
        row[c] = None
    row.update(status="failed", error=error, updated=_now())
    if journal is not None:
        with contextlib.suppress(OSError):
            journal_append(journal, row)


_CURRENT_TEMP: list[Path] = []  # temp file being written in this process (cleaned on SIGTERM)


def _write_png(dst: Path, u8: np.ndarray, on_commit: Callable[[], None] | None = None) -> None:
    """Write uint8 ``(H, W, 3)`` as PNG atomically. The temp name ``.NAME.XXXX.tmp`` never looks like an output."""
    import imageio.v3 as iio

    with atomic_path(dst, suffix="", on_commit=on_commit) as tmp:
        _CURRENT_TEMP.append(tmp)
        try:
            iio.imwrite(tmp, u8, extension=".png")
        finally:
            _CURRENT_TEMP.remove(tmp)


# --------------------------------------------------------------------------- batch
def find_sources(src_dir: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Every ``.exr/.png/.jpg/.jpeg`` (any case) under ``src_dir``, recursively, sorted;
    hidden files/folders and anything under ``exclude`` (the output folder) are left out."""
    return find_files(src_dir, tuple(HDR_EXTS) + tuple(LDR_EXTS), exclude)


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

    @property
    def exit_code(self) -> int:
        """The command's exit status: 130/143 when stopped, 1 when a file failed, else 0."""
        return batch_exit_code(self.interrupted, self.failed)


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
    new = pd.DataFrame(rows, columns=MANIFEST_COLUMNS, dtype=object)  # object: ns times must not pass through float
    new = new.drop_duplicates("source", keep="last")  # a journal may hold a retried source twice
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
    for c in _INT_COLUMNS:  # nullable integers: empty where unknown, never "64.0"; exact (ns times exceed 2^53)
        merged[c] = pd.array([_int_or_none(v) for v in merged[c]], dtype="Int64")
    merged = merged.sort_values("source", kind="stable").reset_index(drop=True)
    with atomic_path(path) as tmp:
        merged.to_csv(tmp, index=False)
    return merged


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_IN_TASK = [False]


def _worker_sigterm(signum, frame):  # noqa: ARG001
    if _IN_TASK[0]:
        raise Terminated(signal.Signals(signum).name)  # unwinds atomic_path: the temp file is removed
    os._exit(128 + signum)  # idle worker: nothing to clean


def _worker_init(parent_pid: int | None = None) -> None:
    """Pool worker set-up: SIGTERM unwinds the current write (removing its temp file), then exits;
    Ctrl-C is left to the main process (which stops the workers); the worker dies with its parent."""
    signal.signal(signal.SIGTERM, _worker_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        die_with_parent(parent_pid, signal.SIGTERM)


def _worker_task(src: str, dst: str, cfg: PrepareConfig, dst_rel: str, journal: str | None = None) -> dict:
    _IN_TASK[0] = True
    try:
        return process_file(src, dst, cfg, dst_rel, journal)
    except (Terminated, KeyboardInterrupt):
        for tmp in list(_CURRENT_TEMP):  # atomic_path has unlinked it already; belt and braces
            with contextlib.suppress(OSError):
                tmp.unlink()
        os._exit(128 + signal.SIGTERM)
    finally:
        _IN_TASK[0] = False


def _int_or_none(v) -> int | None:
    """An exact int from a manifest cell (int, numpy int, numeric str); None when empty / NaN / NA."""
    if v is None:
        return None
    try:
        if v != v:  # NaN
            return None
        return int(v)
    except (TypeError, ValueError, OverflowError):  # pd.NA, "", junk
        return None


def _up_to_date(row: dict | None, src: Path, dst: Path, rel: str, cfg: PrepareConfig, sig: str | None) -> bool:
    """True when ``row`` (from the manifest) records ``dst`` done from this very source content
    (``sig``: :func:`opama_tools.jobs.source_signature` of ``src`` now, None if unreadable) with
    the settings of ``cfg``, and ``dst`` exists."""
    if not _maybe_done(row, rel, dst) or sig is None:
        return False
    sh, sw = _int_or_none(row.get("src_height")), _int_or_none(row.get("src_width"))
    if sh is None or sw is None:
        return False
    # same content: the recorded source size is this source's size
    key = cfg.key(src.suffix.lower() in HDR_EXTS, cfg.output_size(sh, sw))
    return record_matches({"source": row.get("source_sha256"), "settings": row.get("settings")}, sig, key)


def _maybe_done(row: dict | None, rel: str, dst: Path) -> bool:
    """The cheap part of :func:`_up_to_date`: a done row with a signature, and its output exists."""
    return (row is not None and row.get("status") == "done" and row.get("output") == rel
            and bool(row.get("source_sha256")) and bool(row.get("settings")) and dst.is_file())


def _signatures(paths: list[Path], threads: int) -> dict[Path, str | None]:
    """:func:`opama_tools.jobs.source_signature` of ``paths`` (None for an unreadable file),
    ``threads`` at a time (hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(p: Path) -> str | None:
        try:
            return source_signature(p)
        except OSError:
            return None

    if threads <= 1 or len(paths) <= 1:
        return {p: one(p) for p in paths}
    with ThreadPoolExecutor(max_workers=threads) as ex:
        return dict(zip(paths, ex.map(one, paths)))


def _load_old_rows(manifest: Path) -> dict[str, dict]:
    if not manifest.exists():
        return {}
    try:
        df = read_manifest(manifest)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for a damaged CSV
        raise ValueError(f"{manifest}: unreadable manifest ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                         "move it away to start afresh") from None
    if "source" not in df.columns:
        raise ValueError(f"{manifest}: not a prepare manifest (no 'source' column); move it away to start afresh")
    return {str(r["source"]): r for r in df.to_dict("records")}


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
    Raises ``FileNotFoundError`` (no source folder) or ``ValueError`` (unusable output
    folder or manifest) with a one-line message.
    """
    from opama_tools.io import ensure_output_dir

    src_root, out_root = Path(src_dir), Path(out_dir)
    if not src_root.is_dir():
        raise FileNotFoundError(f"{printable_path(src_root)}: source folder not found")
    sources = find_sources(src_root, exclude=out_root)
    if not sources:
        raise NoInputsError(f"{printable_path(src_root)}: no panoramas (*.exr, *.png, *.jpg, *.jpeg) found")
    ensure_output_dir(out_root)
    manifest = out_root / MANIFEST_NAME
    journal = out_root / JOURNAL_NAME
    old = _load_old_rows(manifest)  # a damaged manifest is named before anything is written
    remove_stale_temps(out_root)
    if journal.exists():  # a run killed before it could fold its journal
        merge_manifest(manifest, read_journal(journal))
        journal.unlink()
        old = _load_old_rows(manifest)
    if on_start:
        on_start(len(sources))
    summary = PrepareSummary(manifest=manifest)
    skipped_rows: list[dict] = []

    def record(row: dict) -> None:
        summary.rows.append(row)
        setattr(summary, row["status"], getattr(summary, row["status"]) + 1)
        if row["status"] == "skipped":
            skipped_rows.append(row)
        if on_result:
            on_result(row)

    def record_failed_here(row: dict) -> None:  # a failure decided in this process: journal it too
        with contextlib.suppress(OSError):
            journal_append(journal, row)
        record(row)

    tasks: list[tuple[str, str, PrepareConfig, str, str]] = []
    claimed: dict[Path, Path] = {}
    plan = []  # (source, its absolute path, output path relative to out_root as text, output path)
    for src in sources:
        rel = src.relative_to(src_root).with_suffix(".png")
        plan.append((src, src.resolve(), printable_path(rel.as_posix()), out_root / rel))
    # hash (in threads) the sources an earlier run may have done: is their content unchanged?
    candidates = [] if cfg.overwrite else [
        a for _, a, rel_txt, dst in plan if _maybe_done(old.get(printable_path(a)), rel_txt, dst)]
    sigs = _signatures(candidates, workers or _default_workers())
    for src, src_abs, rel_txt, dst in plan:
        key = Path(os.path.normcase(dst))
        bad_name = utf8_name_problem(src)
        if bad_name:
            record_failed_here(_row(src_abs, rel_txt, status="failed", error=bad_name))
            continue
        if key in claimed:
            record_failed_here(_row(src_abs, rel_txt, status="failed",
                                    error=f"{src}: output {rel_txt} is also the output of {claimed[key]}"))
            continue
        claimed[key] = src
        prev = old.get(printable_path(src_abs))
        if not cfg.overwrite and _up_to_date(prev, src_abs, dst, rel_txt, cfg, sigs.get(src_abs)):
            row = {c: prev.get(c) for c in MANIFEST_COLUMNS}
            row["status"] = "skipped"
            record(row)
            continue
        tasks.append((str(src_abs), str(dst), cfg, rel_txt, str(journal)))

    n_workers = min(workers or _default_workers(), max(1, len(tasks)))
    # in-process work: SIGTERM takes effect between files (never inside a library call); with workers the
    # main thread only waits and records, and the workers clean up their own write
    with stop_raises(deferred=n_workers <= 1):
        try:
            if n_workers <= 1:
                for t in tasks:
                    check_stop()
                    record(process_file(*t))
            else:
                _run_pool(tasks, n_workers, record, record_failed_here)
        except (Terminated, KeyboardInterrupt) as e:
            summary.interrupted = stop_name(e)
        finally:
            finished = read_journal(journal)
            merge_manifest(manifest, finished + skipped_rows)
            with contextlib.suppress(FileNotFoundError):
                journal.unlink()
            if summary.interrupted:  # workers may have finished files whose results never came back
                last = {r["source"]: r["status"] for r in finished}
                summary.done = sum(v == "done" for v in last.values())
                summary.failed = sum(v == "failed" for v in last.values())
    return summary


def run_prepare(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    size: tuple[int, int] | None | str = "auto",
    operator: str = "percentile",
    exposure: float = 0.0,
    force_aspect: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> PrepareSummary:
    """The ``opama prepare`` stage: check the options, then :func:`prepare_dataset`.

    ``size``: ``"auto"``, ``"native"`` or ``"HxW"`` text (:func:`parse_size`), or a value of
    :attr:`PrepareConfig.size`. Other arguments as in :class:`PrepareConfig` and
    :func:`prepare_dataset`. Raises ``ValueError`` (a bad option, named, e.g. ``--size: ...``;
    an unusable output folder or manifest; :class:`opama_tools.jobs.NoInputsError`) or
    ``FileNotFoundError`` (no source folder), each a one-line message; nothing is written then.
    Summary counts: ``done``, ``skipped``, ``failed``; ``interrupted`` when stopped.
    """
    if isinstance(size, str):
        size = parse_size(size)
    cfg = PrepareConfig(size=size, operator=operator, exposure=exposure, force_aspect=force_aspect,
                        overwrite=overwrite)
    return prepare_dataset(src_dir, out_dir, cfg, workers=workers, on_start=on_start, on_result=on_result)


def _run_pool(tasks: list[tuple], n_workers: int, record: Callable[[dict], None],
              record_failed: Callable[[dict], None]) -> None:
    """Run ``tasks`` on ``n_workers`` spawned processes, at most two queued per worker (so
    a stop leaves little in flight). Workers die with this process (even on SIGKILL). A
    worker that dies (a crash in a decoder) fails the files it had in flight and the pool
    is restarted for the rest."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context("spawn"),
                                   initializer=_worker_init, initargs=(os.getpid(),))

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
                    record_failed(_row(Path(t[0]), t[3], status="failed",
                                       error=f"{printable_path(t[0])}: worker process died (crash converting this "
                                             "file or one converted at the same time); re-run to retry"))
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
