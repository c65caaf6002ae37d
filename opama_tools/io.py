"""File helpers of the toolkit: path checks and the recursive file finder.

Atomic writes, the folder swap and temp-file clean-up live in :mod:`opama_model.fileio` (the
bottom layer both packages share) and are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

from opama_model.fileio import (  # noqa: F401 (re-exported)
    TEMP_PATTERN,
    atomic_dir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    current_umask,
    remove_stale_temps,
    signals_held,
)

__all__ = [
    "TEMP_PATTERN",
    "find_files",
    "OutputPathError",
    "atomic_dir",
    "atomic_path",
    "ensure_output_dir",
    "ensure_output_file",
    "atomic_write_text",
    "atomic_write_bytes",
    "current_umask",
    "printable_path",
    "remove_stale_temps",
    "signals_held",
    "utf8_name_problem",
]

def printable_path(path: str | Path) -> str:
    """``str(path)`` with bytes that are not valid UTF-8 shown as ``\\xNN`` (safe to print,
    to write into CSV/JSON and to compare)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def utf8_name_problem(path: str | Path) -> str | None:
    """A one-line reason when ``path``'s name is not valid UTF-8 (it could not be recorded in
    CSV/JSON outputs), else None."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return f"{printable_path(path)}: file name is not valid UTF-8; rename the file"
    return None


class OutputPathError(ValueError):
    """An output location cannot be used; the message names it and says why (one line)."""


def ensure_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` (with parents) if needed and check it is a writable folder.

    Raises :class:`OutputPathError` naming ``path`` when it is a file, lies under a file,
    or cannot be written.
    """
    path = Path(path)
    shown = printable_path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{shown}: the {what} is an existing file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(f"{shown}: cannot create the {what} (a parent of it is a file)") from None
    except OSError as e:
        raise OutputPathError(f"{shown}: cannot create the {what} ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputPathError(f"{shown}: the {what} is not writable")
    return path


def ensure_output_file(path: str | Path, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file (its folder is created if needed).

    Raises :class:`OutputPathError` naming ``path`` when it is a folder, its parent cannot
    be a folder, or it (or its folder) is not writable.
    """
    path = Path(path)
    shown = printable_path(path)
    if path.is_dir():
        raise OutputPathError(f"{shown}: the {what} is an existing folder")
    ensure_output_dir(path.parent, what=f"folder of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{shown}: the {what} is not writable")
    return path


def find_files(root: str | Path, exts: tuple[str, ...], exclude: str | Path | None = None) -> list[Path]:
    """Files under ``root`` whose suffix is in ``exts`` (lower case, with the dot; any case on
    disk), recursively, sorted by relative path. Hidden files and folders, and anything under
    ``exclude`` (e.g. the output folder inside the input folder), are left out."""
    root = Path(root)
    ex = Path(exclude).resolve() if exclude is not None else None
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if ex is not None and (d.resolve() == ex or ex in d.resolve().parents):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in exts and (d / name).is_file():
                found.append(d / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
