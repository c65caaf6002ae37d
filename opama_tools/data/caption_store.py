"""The JSONL caption store of ``opama caption``: one line per panorama, resumable.

Each line is one JSON object::

    {"image": "<path relative to PANO_DIR>", "caption": "<global caption>",
     "views": [{"yaw": 0, "pitch": 0, "caption": "..."}, ...],
     "source": "<sha256 of the image file>", "settings": "<16 hex digits>"}

``source`` and ``settings`` are the done-record fields of :mod:`opama_tools.jobs` (the image's
content signature and the settings key); a panorama is done when its line carries the
current ones. A failed panorama gets ``{"image": ..., "error": "<reason>"}``; error lines,
stale lines and a torn last line (a killed writer) are dropped when the store is opened or
:meth:`CaptionStore.drop` is called, and the panorama is redone. Lines are appended with one
``write`` each and fsync'd, so a stopped run never leaves half a line behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from opama_tools.jobs import done_fields, record_matches

__all__ = ["CaptionStore"]


class CaptionStore:
    """Append-only JSONL writer with resume: reads what is done, drops error lines and a torn last line.

    Any other line that is not a caption record means ``path`` is not ours: ``ValueError``
    naming the file and line (nothing is rewritten). ``overwrite`` starts the file afresh.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        from opama_tools.io import atomic_write_text, ensure_output_file

        path = Path(path)
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

    def is_done(self, image: str, signature: str, key: str) -> bool:
        """True when ``image`` has a line with this source signature and settings key."""
        return record_matches(self.records.get(image), signature, key)

    def drop(self, images: set[str]) -> None:
        """Remove the records of ``images`` (stale: their source or settings changed) from the file."""
        from opama_tools.io import atomic_write_text

        images = {im for im in images if im in self.records}
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

    def write_done(self, rec: dict, signature: str, key: str) -> None:
        """Append a panorama's caption record stamped with its done fields (``source``, ``settings``)."""
        self.write({**rec, **done_fields(signature, key)})

    def write_error(self, image: str, reason: str) -> None:
        """Append a failure line (dropped and retried on the next run)."""
        self.write({"image": image, "error": reason})

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "CaptionStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
