"""The bottom layer for files and stops, shared by ``opama_model`` and ``opama_tools``.

* Atomic writes: a temp file (or folder) beside the final path, then ``os.replace``
  (:func:`atomic_path`, :func:`atomic_write_bytes`, :func:`atomic_write_text`; folders
  :func:`atomic_dir`, which swaps a whole folder in with rollback). Temp names are hidden,
  ``.<stem>.<8 random chars>.tmp<suffix>`` (:data:`TEMP_PATTERN`); a run killed with SIGKILL
  can leave one behind, and :func:`remove_stale_temps` removes them. Outputs get the usual
  mode ``0o666 & ~umask`` (folders ``0o777 & ~umask``).
* Stops: :func:`signals_held` defers SIGTERM/SIGINT over a commit step; :func:`stop_raises`
  turns SIGTERM into :class:`Terminated` (at once, or with ``deferred=True`` at the next
  :func:`check_stop`), so a batch or a training loop unwinds cleanly and records what finished.
* Digests: :func:`file_digest`, the sha256 of a file's bytes, streamed (the one file hash;
  :mod:`opama_tools.jobs` builds its source signatures on it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

__all__ = [
    "TEMP_PATTERN",
    "current_umask",
    "file_digest",
    "signals_held",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_stale_temps",
    "atomic_dir",
    "Terminated",
    "stop_raises",
    "check_stop",
    "stop_name",
    "stop_exit_code",
]

_DIGEST_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (64 hex digits) of a file's bytes, read in 1 MiB chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_DIGEST_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


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



class Terminated(BaseException):
    """Raised by the SIGTERM handler of :func:`stop_raises` (and in workers)."""


def _raise_terminated(signum, frame):  # noqa: ARG001
    raise Terminated(signal.Signals(signum).name)


_PENDING: list[str] = []


def _record_stop(signum, frame):  # noqa: ARG001
    _PENDING.append(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_raises(deferred: bool = False) -> Iterator[None]:
    """In the main thread, turn SIGTERM into :class:`Terminated` for the duration (no-op elsewhere):
    at once, or with ``deferred`` at the next :func:`check_stop`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _PENDING.clear()
    prev = signal.signal(signal.SIGTERM, _record_stop if deferred else _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev)


def check_stop() -> None:
    """Raise :class:`Terminated` if SIGTERM arrived under ``stop_raises(deferred=True)``."""
    if _PENDING:
        raise Terminated(_PENDING[0])


def stop_name(exc: BaseException) -> str:
    """``"SIGINT"`` for ``KeyboardInterrupt``, else ``"SIGTERM"``."""
    return "SIGINT" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"


def stop_exit_code(name: str) -> int:
    return 130 if name == "SIGINT" else 143
