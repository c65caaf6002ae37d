"""The job layer of every stage (prepare, caption, crop, outpaint, eval): what is done, and stops.

Skipping finished work (one scheme for every stage):

* :func:`source_signature`: a content hash (sha256 hex) of a stage's inputs: a file's bytes,
  a folder's files (relative names and bytes), or a list of them in order. Streamed in
  1 MiB chunks; renaming or touching a file without changing its bytes keeps its signature.
  :func:`file_digest` (from :mod:`opama_model.fileio`) is the one-file case.
* :func:`folder_stat_signature`: a cheap signature of a model folder (JSON files by content,
  weight files by name, size and mtime): hashing gigabytes of weights on every run is too slow.
* :func:`settings_key`: a short hash (16 hex digits) of the canonical JSON of everything that
  shapes the output besides the inputs (options, model identity, ...). Pass the options that
  change the output and nothing else (not the device, not the progress bar).
* A done record is a JSON object holding ``"source": signature`` and ``"settings": key`` (plus
  anything else the stage wants to keep). :func:`write_done` writes it as a file atomically and
  must be called LAST, after every output is in place; :func:`is_done` is true only when the
  record exists, both fields match and every listed output exists. Stages that keep their
  records as lines or rows (caption's JSONL, prepare's manifest) use :func:`done_fields` and
  :func:`record_matches` on them. A record in an older format never matches: the work is redone.

Stops and workers:

* :func:`stop_raises`: in the main thread, SIGTERM raises :class:`Terminated` (a
  ``BaseException``, so per-file ``except Exception`` never swallows it); Ctrl-C raises
  ``KeyboardInterrupt`` as usual. The batch then unwinds (atomic writes remove their temp
  file), records what finished and returns ``interrupted`` = ``"SIGTERM"`` / ``"SIGINT"``.
  With ``deferred=True`` SIGTERM is only recorded and :func:`check_stop`, called by the batch
  loop between files, raises it: an exception raised asynchronously inside a library call
  can leave a half-built object whose finaliser prints a traceback (imageio's Pillow writer
  did, when SIGTERM landed in its constructor).
* :func:`stop_exit_code`: 143 for SIGTERM, 130 for SIGINT (the shell's ``128 + signal``);
  :func:`batch_exit_code`: a batch command's exit status (stopped, some item failed, or 0).
* :func:`die_with_parent`: called in a worker process, makes it end when its parent dies,
  even by SIGKILL: Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` plus a watchdog thread
  polling the parent pid (other systems, or a parent that died before the call).

Atomic writes (:func:`atomic_path`, :func:`atomic_dir`, ...) come from :mod:`opama_model.fileio`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from opama_model.fileio import (  # noqa: F401 (re-exported)
    Terminated,
    atomic_dir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    check_stop,
    file_digest,
    remove_stale_temps,
    signals_held,
    stop_exit_code,
    stop_name,
    stop_raises,
)

__all__ = [
    "NoInputsError",
    "RESUME_HINT",
    "file_digest",
    "source_signature",
    "folder_stat_signature",
    "canonical_json",
    "settings_key",
    "done_fields",
    "record_matches",
    "read_done",
    "write_done",
    "is_done",
    "Terminated",
    "stop_raises",
    "check_stop",
    "stop_name",
    "stop_exit_code",
    "batch_exit_code",
    "die_with_parent",
    "atomic_path",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_stale_temps",
    "signals_held",
]

RESUME_HINT = "re-run the same command to finish (finished outputs are kept)"


class NoInputsError(ValueError):
    """The input folder holds nothing the command can work on (every batch command: exit 2)."""


# --------------------------------------------------------------------------- what is done


def _folder_files(folder: Path) -> list[tuple[str, Path]]:
    found = []
    for dirpath, dirnames, names in os.walk(folder):
        dirnames.sort()
        d = Path(dirpath)
        for n in names:
            p = d / n
            if p.is_file():
                found.append((p.relative_to(folder).as_posix(), p))
    return sorted(found, key=lambda t: t[0])


def source_signature(source: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """Content hash (sha256, 64 hex digits) of a stage's inputs; what "unchanged input" means.

    * a file: the sha256 of its bytes (:func:`file_digest`); its name and mtime do not count;
    * a folder: sha256 over every file below it, sorted by relative POSIX name, each as
      ``name NUL file_digest LF`` (a renamed, added or removed file changes it);
    * a list or tuple of files/folders: sha256 over the entries' signatures, in order (the
      entries' own names do not count: put names that matter, e.g. of pairs, in the settings key).

    Raises ``OSError`` when an input cannot be read.
    """
    if isinstance(source, (list, tuple)):
        h = hashlib.sha256(b"list\n")
        for s in source:
            h.update(source_signature(s).encode("ascii") + b"\n")
        return h.hexdigest()
    path = Path(source)
    if path.is_dir():
        h = hashlib.sha256(b"folder\n")
        for rel, p in _folder_files(path):
            h.update(os.fsencode(rel) + b"\0" + file_digest(p).encode("ascii") + b"\n")
        return h.hexdigest()
    return file_digest(path)


def folder_stat_signature(folder: str | os.PathLike, hashed: tuple[str, ...] = (".json",)) -> str:
    """Cheap signature (sha256, 64 hex digits) of a folder of large files, e.g. a model folder.

    sha256 over every file below ``folder``, sorted by relative POSIX name: a file whose name
    ends with one of ``hashed`` (the small JSON configs) as ``name NUL "sha256" NUL file_digest``,
    any other file (weights) as ``name NUL size NUL mtime_ns``, without reading it. So a rewritten,
    touched, added, removed or renamed weight file changes it; a weight file changed in place
    with the same size and mtime does not (:func:`source_signature` would, at the cost of
    reading every byte). Raises ``OSError`` when the folder cannot be read.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    h = hashlib.sha256(b"folder-stat\n")
    for rel, p in _folder_files(root):
        if rel.endswith(hashed):
            h.update(os.fsencode(rel) + b"\0sha256\0" + file_digest(p).encode("ascii") + b"\n")
        else:
            st = p.stat()
            h.update(os.fsencode(rel) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode("ascii"))
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        with contextlib.suppress(Exception):
            return obj.item()
    return str(obj)  # e.g. a torch.dtype


def canonical_json(obj: Any) -> str:
    """One text per value: sorted keys, no spaces, ASCII, tuples as lists, dataclasses as dicts,
    paths and other objects as strings. ``1`` and ``1.0`` differ: normalise numbers first."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_jsonable)


def settings_key(*parts: Any) -> str:
    """16 hex digits of the sha256 of :func:`canonical_json` of ``parts``: the options that
    shape a stage's output (e.g. ``settings_key("crop", settings)``)."""
    return hashlib.sha256(canonical_json(list(parts)).encode("ascii")).hexdigest()[:16]


def done_fields(signature: str, key: str) -> dict[str, str]:
    """The fields every done record holds: ``{"source": signature, "settings": key}``."""
    return {"source": signature, "settings": key}


def record_matches(record: Mapping | None, signature: str, key: str) -> bool:
    """True when ``record`` (a done record, a JSONL line, a manifest row) holds this signature and key."""
    return isinstance(record, Mapping) and record.get("source") == signature and record.get("settings") == key


def read_done(path: str | os.PathLike) -> dict | None:
    """The done record at ``path``, or None when it is missing or not a JSON object."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def write_done(path: str | os.PathLike, signature: str, key: str, **extra: Any) -> None:
    """Write the done record ``{"source", "settings", **extra}`` to ``path`` atomically (one JSON
    line). Call it LAST, once every output of the job is in place."""
    rec = {**extra, **done_fields(signature, key)}
    atomic_write_text(path, json.dumps(rec, sort_keys=True, default=_jsonable) + "\n")


def is_done(path: str | os.PathLike, signature: str, key: str, outputs: Iterable[str | os.PathLike] = ()) -> bool:
    """True when the done record at ``path`` matches ``signature`` and ``key`` and every file in
    ``outputs`` exists (a missing output means the job is redone)."""
    if not record_matches(read_done(path), signature, key):
        return False
    return all(Path(o).is_file() for o in outputs)


def batch_exit_code(interrupted: str | None, failed: Any) -> int:
    """Exit status of a batch command: :func:`stop_exit_code` (130 / 143) when ``interrupted``
    (``"SIGINT"`` / ``"SIGTERM"``), else 1 when ``failed`` (a count or a list) is non-empty, else 0."""
    if interrupted:
        return stop_exit_code(interrupted)
    return 1 if failed else 0


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM, poll_s: float = 0.5) -> None:
    """Make this (worker) process receive ``sig`` when ``parent_pid`` dies.

    Linux: ``prctl(PR_SET_PDEATHSIG)``. Everywhere: a daemon thread checks every ``poll_s``
    seconds that the parent pid is unchanged and sends ``sig`` to this process otherwise
    (this also covers a parent that died before the ``prctl``). The worker's own ``sig``
    handler decides how to stop (finish the commit in progress, remove its temp file).
    """
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), sig)
                time.sleep(5.0)
                os._exit(128 + int(sig))  # the handler did not end the process: force it
            time.sleep(poll_s)

    threading.Thread(target=watch, name="opama-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # died before prctl took effect
        os.kill(os.getpid(), sig)
