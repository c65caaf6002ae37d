"""Small file helpers: atomic writes (temp file in the same folder, then ``os.replace``).

Temp files are hidden and named ``.<stem>.<8 random chars>.tmp<suffix>`` beside the final
path (:data:`TEMP_PATTERN`); a run killed with SIGKILL can leave one behind, and
:func:`remove_stale_temps` (called by every batch command at start) removes them.
Outputs get the usual file mode ``0o666 & ~umask`` (``mkstemp`` alone would leave 0600).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Callable, Iterator

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

# ".<stem>.<8 chars of tempfile's alphabet>.tmp<suffix>", as made by atomic_path below.
TEMP_PATTERN = re.compile(r"^\..*\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def current_umask() -> int:
    """The process umask (read from ``/proc`` on Linux, else set-and-restore)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_HELD = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGINT", None)) if s is not None)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Defer SIGTERM/SIGINT for the duration (their handlers run right after): a commit step
    such as "rename, then journal the result" is never cut in half by a stop request.

    Done at the Python level (the handlers are swapped for a recorder), because a
    process-directed signal may be taken by any thread, so masking one thread is not enough.
    Only in the main thread, where Python runs signal handlers; elsewhere a no-op.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in _HELD}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)  # None: a handler set outside Python
        for s in dict.fromkeys(pending):
            h = old[s]
            if callable(h):
                h(s, None)
            elif h == signal.SIG_DFL:
                signal.raise_signal(s)


@contextlib.contextmanager
def atomic_path(
    path: str | Path, suffix: str | None = None, on_commit: Callable[[], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is untouched, so a
    killed or failed write never leaves a half-written output under the final name.
    The temp name keeps the final suffix (writers that pick a format by extension work).
    The output gets mode ``0o666 & ~umask``. ``on_commit()`` runs right after the rename
    with SIGTERM/SIGINT held (e.g. to journal that the output is complete).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with signals_held():
            os.replace(tmp_path, path)
            if on_commit is not None:
                on_commit()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def remove_stale_temps(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Remove temp files (and temp folders, see :func:`atomic_dir`) of :func:`atomic_path` that a
    killed run left in ``folder`` (:data:`TEMP_PATTERN`); returns what was removed. Only names of
    that exact pattern are touched."""
    import shutil

    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for dirpath, dirnames, names in os.walk(root):
        d = Path(dirpath)
        for name in names:
            p = d / name
            if TEMP_PATTERN.match(name) and not p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        for name in list(dirnames):
            p = d / name
            if TEMP_PATTERN.match(name) and not p.is_symlink():
                dirnames.remove(name)
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        if not recursive:
            break
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    Everything written into the folder appears at once under ``path`` (an existing ``path`` is
    moved aside, the new folder renamed in, the old one deleted, with SIGTERM/SIGINT held);
    on any exception the temporary folder is deleted and ``path`` is untouched. Folder mode
    ``0o777 & ~umask``. Names follow :data:`TEMP_PATTERN`, so a SIGKILL leftover is removed by
    :func:`remove_stale_temps`.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    old: Path | None = None
    try:
        yield tmp
        with signals_held():
            if path.exists() or path.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
                os.replace(path, old / "old")
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "old").exists() and not path.exists():
            with contextlib.suppress(OSError):
                os.replace(old / "old", path)  # the swap failed half-way: put the old folder back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


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
