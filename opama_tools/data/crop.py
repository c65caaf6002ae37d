"""``opama crop``: cut NFoV views, their coverage masks and cube faces from equirect PNG panoramas.

For every panorama ``PANO_DIR/<rel>/<stem>.png`` (searched recursively, hidden files and the
output folder left out; ``.jpg``/``.jpeg`` too; 8- or 16-bit, grey, RGB or RGBA, alpha
dropped, read by :func:`opama_tools.images.read_ldr`; 2:1) it writes, under
``OUT_DIR/<rel>/<stem>/`` (the source tree is mirrored):

* ``view_KK.png``: view ``KK`` (0-based, in the order given), ``size x size``, horizontal fov
  ``fov`` degrees, 8-bit RGB (16-bit panoramas are sampled at full precision, then rounded);
* ``mask_KK.png`` (with ``masks``): the view's footprint on the panorama, 8-bit ``H x W``,
  255 where the view covers the equirect pixel, 0 elsewhere;
* ``cube_F.png`` ... ``cube_D.png`` (with ``cube``): the six 90° cube faces (F R B L U D);
* ``crop.json``: the panorama's done record (:mod:`opama_tools.jobs`): its ``source``
  signature (sha256 of the file), the ``settings`` key, the ``options`` used and the panorama's
  size; a panorama whose ``crop.json`` matches the source's current content and the current
  settings, and whose files all exist, is skipped on re-runs (unless ``overwrite``).

Each panorama's folder is written as a whole (:func:`opama_tools.io.atomic_dir`): a stopped or
killed run leaves either the previous complete folder or the new complete one, never a mix;
hidden leftovers of a SIGKILL are removed by the next run. SIGTERM / Ctrl-C stop the batch
after cleaning up (``result.interrupted``); ``views.csv`` then lists what is complete.

and ``OUT_DIR/views.csv`` (one row per written view / face, for the panoramas done or skipped
in this run): ``image, kind (view|cube), name, index, yaw, pitch, fov, size, path, mask_path``,
paths relative to ``OUT_DIR`` (``image`` relative to ``PANO_DIR``). Geometry: :mod:`opama_model.spherical` (degrees, yaw right,
pitch up, fov horizontal spanning the edge-pixel centres). Views are sampled bilinearly from a
once-padded panorama (seam wrap, pole continuation) in one batched ``grid_sample``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from opama_model.spherical import (
    CUBE_FACES,
    CUBE_YAW_PITCH,
    equi_to_pers,
    equirect_directions,
    pad_equirect,
    project_to_view,
)
from opama_tools.io import (
    atomic_dir,
    atomic_path,
    find_files,
    ensure_output_dir,
    printable_path,
    remove_stale_temps,
    utf8_name_problem,
)
from opama_tools.jobs import (
    NoInputsError,
    Terminated,
    batch_exit_code,
    check_stop,
    is_done,
    read_done,
    settings_key,
    source_signature,
    stop_name,
    stop_raises,
    write_done,
)

__all__ = [
    "IMAGE_EXTS",
    "CropSettings",
    "CropResult",
    "find_panoramas",
    "read_panorama",
    "write_png",
    "crop_arrays",
    "crop_one",
    "run_crop",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
CSV_COLUMNS = ["image", "kind", "name", "index", "yaw", "pitch", "fov", "size", "path", "mask_path"]


@dataclass(frozen=True)
class CropSettings:
    """What to cut: ``views`` as ``(yaw, pitch)`` degrees, square ``size`` px views of horizontal
    ``fov`` degrees, optional ``cube`` face width (0 = none), coverage ``masks`` or not."""

    views: tuple[tuple[float, float], ...]
    fov: float = 90.0
    size: int = 512
    cube: int = 0
    masks: bool = False

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("no views to cut")
        if not 0 < self.fov < 180:
            raise ValueError(f"fov must be in (0, 180) degrees, got {self.fov}")
        if self.size < 2:
            raise ValueError(f"size must be >= 2 pixels, got {self.size}")
        if self.cube < 0 or self.cube == 1:
            raise ValueError(f"cube face width must be 0 (none) or >= 2 pixels, got {self.cube}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["views"] = [[float(y), float(p)] for y, p in self.views]
        d.update(fov=float(self.fov), size=int(self.size), cube=int(self.cube), masks=bool(self.masks))
        return d

    def key(self) -> str:
        """The settings key of :mod:`opama_tools.jobs` (``0`` and ``0.0`` give the same key)."""
        return settings_key("crop", self.to_json())


@dataclass
class CropResult:
    """Outcome of :func:`run_crop`."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    csv: Path | None = None
    interrupted: str | None = None  # "SIGTERM" / "SIGINT" when the run was stopped

    @property
    def exit_code(self) -> int:
        """The command's exit status: 130/143 when stopped, 1 when a panorama failed, else 0."""
        return batch_exit_code(self.interrupted, self.failed)


def find_panoramas(pano_dir: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Image files (``.png``, ``.jpg``, ``.jpeg``, any case) under ``pano_dir``, recursively, sorted
    by relative path; hidden files and folders, and anything under ``exclude``, are left out."""
    return find_files(pano_dir, IMAGE_EXTS, exclude)


def read_panorama(path: str | Path) -> np.ndarray:
    """Read an equirect image as ``(H, W, 3)`` uint8 or uint16 (grey expanded, alpha dropped).

    Raises ``ValueError`` with the reason when the file cannot be used.
    """
    from opama_tools.images import check_equirect, read_ldr

    img = read_ldr(path)
    check_equirect(*img.shape[:2])
    return np.ascontiguousarray(img)


def write_png(path: str | Path, img: np.ndarray) -> None:
    """Write ``(H, W[, 3])`` uint8 (or ``(H, W)`` uint16) as PNG, atomically."""
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, img, extension=".png")


def _to_float(img: np.ndarray) -> torch.Tensor:
    scale = float(np.iinfo(img.dtype).max)
    return torch.from_numpy(img.astype(np.float32) / scale).permute(2, 0, 1).unsqueeze(0)


def _to_int(x: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """``(C, h, w)`` float in [0, 1] -> ``(h, w, C)`` integer image."""
    scale = float(np.iinfo(dtype).max)
    a = (x.clamp(0, 1) * scale).round().permute(1, 2, 0).numpy()
    return a.astype(dtype)


def crop_arrays(img: np.ndarray, settings: CropSettings) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Views and cube faces of one ``(H, W, 3)`` uint8/uint16 panorama.

    Returns ``(views, faces)``: lists of ``(size, size, 3)`` and ``(cube, cube, 3)`` uint8 arrays
    (faces empty when ``settings.cube == 0``). The panorama is padded once for all of them.
    """
    x = pad_equirect(_to_float(img), 1)
    yaws = [v[0] for v in settings.views]
    pitches = [v[1] for v in settings.views]
    with torch.no_grad():
        views = equi_to_pers(x, yaws, pitches, settings.fov, (settings.size, settings.size), padded=True)[0]
        out_views = [_to_int(v, np.uint8) for v in views]
        faces: list[np.ndarray] = []
        if settings.cube:
            cy = [yp[0] for yp in CUBE_YAW_PITCH]
            cp = [yp[1] for yp in CUBE_YAW_PITCH]
            cube = equi_to_pers(x, cy, cp, 90.0, (settings.cube, settings.cube), padded=True)[0]
            faces = [_to_int(f, np.uint8) for f in cube]
    return out_views, faces


def _outputs(stem: str, settings: CropSettings) -> dict[str, str]:
    """Relative output paths (POSIX) of one panorama, keyed by role."""
    out: dict[str, str] = {}
    for k in range(len(settings.views)):
        out[f"view_{k:02d}"] = f"{stem}/view_{k:02d}.png"
        if settings.masks:
            out[f"mask_{k:02d}"] = f"{stem}/mask_{k:02d}.png"
    if settings.cube:
        for name in CUBE_FACES:
            out[f"cube_{name}"] = f"{stem}/cube_{name}.png"
    return out


def _rows(image: str, stem: str, settings: CropSettings) -> list[dict]:
    rows = []
    for k, (yaw, pitch) in enumerate(settings.views):
        rows.append({
            "image": image, "kind": "view", "name": f"view_{k:02d}", "index": k, "yaw": yaw, "pitch": pitch,
            "fov": settings.fov, "size": settings.size, "path": f"{stem}/view_{k:02d}.png",
            "mask_path": f"{stem}/mask_{k:02d}.png" if settings.masks else "",
        })
    if settings.cube:
        for k, (name, (yaw, pitch)) in enumerate(zip(CUBE_FACES, CUBE_YAW_PITCH)):
            rows.append({
                "image": image, "kind": "cube", "name": name, "index": k, "yaw": yaw, "pitch": pitch,
                "fov": 90.0, "size": settings.cube, "path": f"{stem}/cube_{name}.png", "mask_path": "",
            })
    return rows


def _is_done(out_dir: Path, stem: str, settings: CropSettings, source: Path) -> bool:
    """``stem``: the panorama's output folder relative to ``out_dir`` (POSIX)."""
    if not (out_dir / stem / "crop.json").is_file():
        return False
    outputs = [out_dir / rel for rel in _outputs(stem, settings).values()]
    return is_done(out_dir / stem / "crop.json", source_signature(source), settings.key(), outputs)


_MASK_CACHE: dict[tuple, list[np.ndarray]] = {}


def _masks(settings: CropSettings, height: int, width: int) -> list[np.ndarray]:
    """Footprint masks ``(H, W)`` uint8 0/255 of every view (same for every panorama of that size;
    equal to :func:`opama_model.spherical.view_coverage_mask`)."""
    key = (settings.views, settings.fov, settings.size, height, width)
    if key not in _MASK_CACHE:
        _MASK_CACHE.clear()
        dirs = equirect_directions(height, width, dtype=torch.float32)
        hw = (settings.size, settings.size)
        _MASK_CACHE[key] = [
            project_to_view(dirs, yaw, pitch, settings.fov, hw)[2].numpy().astype(np.uint8) * 255
            for yaw, pitch in settings.views
        ]
    return _MASK_CACHE[key]


def crop_one(path: Path, out_dir: Path, settings: CropSettings, key: str | None = None) -> None:
    """Cut and write every output of one panorama into ``out_dir/key`` (default: its stem), the
    folder replaced as a whole (see the module doc). Raises ``ValueError`` on a bad input."""
    import imageio.v3 as iio

    sig = source_signature(path)
    img = read_panorama(path)
    views, faces = crop_arrays(img, settings)
    with atomic_dir(out_dir / (key or path.stem)) as folder:
        for k, v in enumerate(views):
            iio.imwrite(folder / f"view_{k:02d}.png", v, extension=".png")
        if settings.masks:
            for k, m in enumerate(_masks(settings, img.shape[0], img.shape[1])):
                iio.imwrite(folder / f"mask_{k:02d}.png", m, extension=".png")
        for name, f in zip(CUBE_FACES, faces):
            iio.imwrite(folder / f"cube_{name}.png", f, extension=".png")
        write_done(folder / "crop.json", sig, settings.key(), image=path.name, height=int(img.shape[0]),
                   width=int(img.shape[1]), options=settings.to_json())  # last: the folder is complete


def _remove_stale(out_dir: Path, path: Path, pano_dir: Path, seen: dict[str, Path]) -> None:
    """Remove the output folder an earlier run made from ``path`` (it has our ``crop.json`` naming
    this image) now that ``path`` failed: old views of a changed source must not pass for results."""
    import shutil

    try:
        key = path.relative_to(pano_dir).with_suffix("").as_posix()
        if seen.get(os.path.normcase(key)) not in (None, path):
            return  # another panorama owns that folder
        folder = out_dir / key
        meta = read_done(folder / "crop.json")
        if meta is not None and meta.get("image") == path.name:
            shutil.rmtree(folder)
    except (OSError, ValueError):
        pass


def run_crop(
    pano_dir: str | Path,
    out_dir: str | Path,
    settings: CropSettings,
    *,
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int, int, Path], None] | None = None,
    on_failure: Callable[[Path, str], None] | None = None,
) -> CropResult:
    """Crop every panorama under ``pano_dir`` (recursively) into ``out_dir``; write ``views.csv``.

    A bad file is recorded in ``result.failed`` with its reason (and passed to ``on_failure``)
    and does not stop the batch. ``on_start(n)`` is called once the inputs are checked (``n``
    panoramas), ``on_progress(k, n, path)`` after each panorama.
    SIGTERM / Ctrl-C stop the batch cleanly (``result.interrupted``). Raises
    ``FileNotFoundError`` when ``pano_dir`` is not a folder, :class:`opama_tools.jobs.NoInputsError`
    when it holds no panorama, :class:`opama_tools.io.OutputPathError` for an unusable ``out_dir``.
    """
    import pandas as pd

    pano_dir, out_dir = Path(pano_dir), Path(out_dir)
    if not pano_dir.is_dir():
        raise FileNotFoundError(f"{printable_path(pano_dir)}: not a folder")
    paths = find_panoramas(pano_dir, exclude=out_dir)
    if not paths:
        raise NoInputsError(f"{printable_path(pano_dir)}: no panoramas (*.png, *.jpg, *.jpeg) found")
    ensure_output_dir(out_dir)
    remove_stale_temps(out_dir)
    if on_start is not None:
        on_start(len(paths))
    result = CropResult()
    rows: list[dict] = []
    seen: dict[str, Path] = {}
    with stop_raises(deferred=True):
        try:
            for k, path in enumerate(paths):
                check_stop()  # SIGTERM takes effect between panoramas, never inside a library call
                try:
                    bad_name = utf8_name_problem(path)
                    if bad_name:
                        raise ValueError(bad_name.split(": ", 1)[1] if ": " in bad_name else bad_name)
                    rel = path.relative_to(pano_dir)
                    key = rel.with_suffix("").as_posix()
                    ckey = os.path.normcase(key)
                    if ckey == os.path.normcase("views.csv"):
                        raise ValueError("its output folder would be OUT_DIR/views.csv, the table of views; rename it")
                    clash = seen.get(ckey) or next(
                        (seen[a] for a in (os.path.normcase(p.as_posix()) for p in Path(key).parents) if a in seen),
                        None)
                    if clash is None:
                        clash = next((q for kk, q in seen.items() if kk.startswith(ckey + "/")), None)
                    if clash is not None:
                        raise ValueError(f"its output folder {key}/ collides with that of "
                                         f"{clash.relative_to(pano_dir).as_posix()}")
                    seen[ckey] = path
                    if not overwrite and _is_done(out_dir, key, settings, path):
                        result.skipped.append(path)
                    else:
                        crop_one(path, out_dir, settings, key)
                        result.done.append(path)
                    rows.extend(_rows(rel.as_posix(), key, settings))
                except Exception as e:  # a bad file must not stop the batch; reported with its reason
                    reason = str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"
                    reason = reason.splitlines()[0] if reason else type(e).__name__
                    result.failed.append((path, reason))
                    _remove_stale(out_dir, path, pano_dir, seen)
                    if on_failure is not None:
                        on_failure(path, reason)
                if on_progress is not None:
                    on_progress(k + 1, len(paths), path)
        except (Terminated, KeyboardInterrupt) as e:
            result.interrupted = stop_name(e)
        finally:
            csv = out_dir / "views.csv"
            with atomic_path(csv) as tmp:
                pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(tmp, index=False)
            result.csv = csv
    return result
