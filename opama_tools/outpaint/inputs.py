"""Inputs of ``opama outpaint``: photo specs ``IMG[@yaw,pitch,fov]``, batch rows, reading a photo.

Light on purpose (no torch import): the CLI checks its arguments with these before it loads a model.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opama_model.directions import check_direction

__all__ = ["IMAGE_EXTS", "InputSpec", "Row", "parse_input_spec", "read_rows", "read_input_image"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class InputSpec:
    """One input photo or clip: its file and direction (degrees: yaw right, pitch up, horizontal fov).

    ``equirect``: the file is an equirectangular 360-degree video (``PATH@equirect``), to be edited
    inside a mask, not pasted at a direction.
    """

    path: Path
    yaw: float = 0.0
    pitch: float = 0.0
    fov: float = 90.0
    equirect: bool = False

    @property
    def direction(self) -> tuple[float, float, float]:
        return (self.yaw, self.pitch, self.fov)

    @property
    def is_video(self) -> bool:
        """The file is a video (by its suffix, :func:`opama_tools.videos.is_video_path`)."""
        from opama_tools.videos import is_video_path

        return is_video_path(self.path)


@dataclass(frozen=True)
class Row:
    """One panorama (or 360-degree video) to make: ``name`` (its folder in a batch), inputs (none =
    text only), caption.

    ``error``: why the row cannot be made (a bad batch CSV row); :func:`outpaint_batch` reports it
    as failed at its turn and goes on with the other rows. ``trajectory`` (a clip's per-frame
    directions, CSV ``frame,yaw,pitch,fov``) and ``mask`` (white = regenerate, for an ``@equirect``
    video) apply to a video row only.
    """

    name: str
    inputs: tuple[InputSpec, ...] = ()
    prompt: str = ""
    error: str = ""
    trajectory: Path | None = None
    mask: Path | None = None

    @property
    def is_video(self) -> bool:
        """Any input is a video (:mod:`.video_job` checks there is exactly one)."""
        return any(s.is_video for s in self.inputs)


def _angles(text: str) -> tuple[float, float, float] | None:
    """``yaw,pitch[,fov]`` degrees -> numbers (fov 90 by default), or None if it is not that."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        return None
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        return None
    return nums[0], nums[1], nums[2] if len(nums) == 3 else 90.0


EQUIRECT = ("equirect",)
"""What :func:`_split_spec` returns for ``PATH@equirect``."""


def _split_spec(text: str, base: Path | None) -> tuple[Path, tuple | None]:
    """``IMG[@yaw,pitch[,fov]]`` -> (path, angles or None when none were given, or :data:`EQUIRECT`);
    see :func:`parse_input_spec`."""
    text = text.strip()

    def resolve(p: str) -> Path:
        q = Path(p.strip()).expanduser()
        return base / q if base is not None and not q.is_absolute() else q

    if not text:
        raise ValueError("input '': no image path")
    if "@" not in text or resolve(text).exists():
        return resolve(text), None
    head, _, tail = text.rpartition("@")
    if tail.strip().lower() == "equirect" and head.strip():
        return resolve(head), EQUIRECT
    angles = _angles(tail)
    if angles is None:
        raise ValueError(f"input {text!r}: no such file, and {tail!r} after the last '@' is not "
                         "yaw,pitch[,fov] in degrees (expected IMG@yaw,pitch[,fov])")
    if not head.strip():
        raise ValueError(f"input {text!r}: no image path")
    try:
        check_direction(angles)
    except ValueError as e:
        raise ValueError(f"input {text!r}: {e}") from None
    return resolve(head), angles


def parse_input_spec(text: str, base: Path | None = None) -> InputSpec:
    """``IMG[@yaw,pitch[,fov]]`` (degrees; default ``@0,0,90``) or ``VIDEO@equirect`` -> :class:`InputSpec`.

    A path that exists as given wins (``photo@2x.png``); otherwise the text splits at its **last**
    ``@`` when what follows is ``yaw,pitch[,fov]`` numbers (or ``equirect``). Relative paths are
    taken under ``base``.

    Raises:
        ValueError: no path, out-of-range angles, or a missing file whose ``@`` suffix is not
            angles (message names the spec).
    """
    path, angles = _split_spec(text, base)
    if angles is EQUIRECT:
        return InputSpec(path, equirect=True)
    return InputSpec(path, *(angles or (0.0, 0.0, 90.0)))


def read_input_image(path: Path) -> np.ndarray:
    """A photo as uint8 ``(h, w, 3)`` RGB, or ``(h, w, 4)`` RGBA with transparent pixels, upright
    (EXIF orientation applied): :func:`opama_tools.images.read_photo`.

    Raises:
        ValueError: missing or unreadable file (message names it).
    """
    from opama_tools.images import read_photo

    try:
        return read_photo(path)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _row_name(spec: InputSpec | None, index: int) -> str:
    return spec.path.stem if spec is not None else f"row_{index:05d}"


def read_rows(batch: str | Path, prompt: str = "") -> list[Row]:
    """Rows of a batch: a CSV file or a folder of photos.

    * CSV (header required): ``image`` (a path relative to the CSV, or several
      ``IMG[@yaw,pitch,fov]`` joined by ``;``, or empty for text only; or one video clip, or
      ``VIDEO@equirect``), optional ``prompt``, ``yaw``, ``pitch``, ``fov`` (degrees, for a single
      image without ``@``), ``name`` (output folder; default the image's stem, or ``row_NNNNN``)
      and, for a video, ``trajectory`` and ``mask`` (paths relative to the CSV). A row with bad angles
      becomes a :class:`Row` with its ``error`` ("file, row N: reason"), made by nobody.
    * folder: every ``.png/.jpg/.jpeg`` under it (sorted, recursive), at ``@0,0,90``, with
      ``prompt``; ``name`` = relative path without suffix.

    Raises:
        ValueError: unreadable CSV, missing ``image`` column or duplicate names (message names the file).
    """
    batch = Path(batch)
    rows: list[Row] = []
    if batch.is_dir():
        files = sorted(p for p in batch.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                       and not p.name.startswith("."))
        for p in files:
            rows.append(Row(p.relative_to(batch).with_suffix("").as_posix(), (InputSpec(p),), prompt))
    elif batch.is_file():
        try:
            with open(batch, newline="", encoding="utf-8") as f:
                records = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"{batch}: unreadable CSV ({e})") from None
        if records and "image" not in records[0]:
            raise ValueError(f"{batch}: no 'image' column (columns: image, prompt, yaw, pitch, fov, name)")
        for i, rec in enumerate(records):
            where = f"{batch}, row {i + 2}"
            image = (rec.get("image") or "").strip()
            row_prompt = (rec.get("prompt") or "").strip() if "prompt" in rec else prompt
            specs: list[InputSpec] = []
            error = ""
            try:
                parts = [s.strip() for s in image.split(";") if s.strip()]
                for part in parts:
                    path, given = _split_spec(part, batch.parent)
                    if given is EQUIRECT:
                        specs.append(InputSpec(path, equirect=True))
                        continue
                    angles = [(rec.get(k) or "").strip() for k in ("yaw", "pitch", "fov")]
                    if given is None and len(parts) == 1 and any(angles):
                        try:
                            given = tuple(float(a) if a else d for a, d in zip(angles, (0.0, 0.0, 90.0)))
                        except ValueError:
                            raise ValueError(f"yaw, pitch and fov must be numbers (degrees), got "
                                             f"{','.join(angles)!r}") from None
                        try:
                            check_direction(given)
                        except ValueError as e:
                            raise ValueError(f"input {part!r}: {e}") from None
                    spec = InputSpec(path, *(given or (0.0, 0.0, 90.0)))
                    specs.append(spec)
            except ValueError as e:
                error = f"{where}: {e}"
            name = (rec.get("name") or "").strip() or (_row_name(specs[0] if specs else None, i) if not error
                                                       else _bad_row_name(image, i))
            extra = {}
            for col in ("trajectory", "mask"):  # a video row's files, relative to the CSV
                value = (rec.get(col) or "").strip()
                if value:
                    q = Path(value).expanduser()
                    extra[col] = q if q.is_absolute() else batch.parent / q
            rows.append(Row(name, tuple(specs) if not error else (), row_prompt, error, **extra))
    else:
        raise ValueError(f"{batch}: no such CSV file or folder")
    seen: set[str] = set()
    for r in rows:
        if r.name in seen or r.name.startswith(("/", "..")) or not r.name:
            raise ValueError(f"{batch}: output name {r.name!r} is empty, absolute or used twice "
                             "(add a 'name' column)")
        seen.add(r.name)
    return rows


def _bad_row_name(image: str, index: int) -> str:
    """Name of a row whose inputs could not be parsed: the first image's stem, or ``row_NNNNN``."""
    first = image.split(";")[0].strip()
    first = first.rpartition("@")[0].strip() or first
    return Path(first).stem if first else f"row_{index:05d}"
