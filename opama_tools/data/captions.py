"""Caption loader for datasets: panorama path -> global caption + per-view captions.

Reads two formats and merges them:

* opama's JSONL (``opama caption``): one line per panorama
  ``{"image": rel path, "caption": str, "views": [{"yaw", "pitch", "caption"}, ...]}``;
  lines with an ``error`` field are ignored.
* AOG-Net / OPa-Ma's published caption files converted to JSON: ``{file name: [captions]}``
  (e.g. ``indoor_train.json``: one whole-panorama caption per file;
  ``indoor_train_aug.json``: 12 view captions per file). Their view yaws are unknown (the
  published script took the views at yaw 0..11 degrees by mistake), so they load with
  ``yaw=None``.

Lookup (:meth:`CaptionIndex.get`) accepts any path to the panorama: the longest trailing
part of the path that is a key wins (``/data/png/indoor/x.png`` finds ``indoor/x.png`` or
``x.png``); failing that, a unique file stem (``x.exr`` finds ``x.png``). Angles in degrees.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Iterable, Literal

__all__ = [
    "LAVAL_CAPTIONS", "laval_split", "ViewCaption", "PanoramaCaptions", "CaptionIndex", "load_captions",
    "read_caption_jsonl", "read_aognet_json",
]

LAVAL_CAPTIONS = Path(__file__).parent / "laval_captions"
"""Shipped copies of the published BLIP-2 captions and splits of Laval Indoor/Outdoor HDR
(OPa-Ma reference code, MIT): ``{indoor,outdoor}_{train,test}.json`` and ``indoor_train_aug.json``."""


def laval_split(dataset: Literal["indoor", "outdoor"], split: Literal["train", "test"]) -> list[str]:
    """File names of the published Laval ``dataset`` ``split`` (1921/312 indoor, 165/40 outdoor)."""
    return sorted(json.loads((LAVAL_CAPTIONS / f"{dataset}_{split}.json").read_text()))


@dataclass(frozen=True)
class ViewCaption:
    """Caption of one NFoV view; ``yaw``/``pitch`` in degrees, ``None`` when unknown."""

    caption: str
    yaw: float | None = None
    pitch: float | None = None


@dataclass
class PanoramaCaptions:
    """All captions of one panorama: ``caption`` (whole panorama, may be None) and ``views``."""

    caption: str | None = None
    views: list[ViewCaption] = field(default_factory=list)

    @property
    def view_captions(self) -> list[str]:
        return [v.caption for v in self.views]

    @property
    def texts(self) -> list[str]:
        """Every caption: the global one first (if any), then the views'."""
        return ([self.caption] if self.caption else []) + self.view_captions

    def nearest_view(self, yaw: float, pitch: float | None = None) -> ViewCaption | None:
        """The view caption closest in angle to ``yaw``/``pitch`` (degrees; yaw wraps at 360).

        Only views with known yaw take part; None if there are none.
        """
        best, best_d = None, math.inf
        for v in self.views:
            if v.yaw is None:
                continue
            dy = abs((yaw - v.yaw + 180.0) % 360.0 - 180.0)
            dp = abs(pitch - v.pitch) if pitch is not None and v.pitch is not None else 0.0
            d = math.hypot(dy, dp)
            if d < best_d:
                best, best_d = v, d
        return best

    def merge(self, other: "PanoramaCaptions") -> None:
        """Fill in ``other``'s global caption (if this has none) and append its views."""
        if other.caption and not self.caption:
            self.caption = other.caption
        self.views.extend(other.views)


def _key(name: str) -> str:
    return PurePath(str(name).replace("\\", "/")).as_posix() if name else name


def read_caption_jsonl(path: str | os.PathLike) -> dict[str, PanoramaCaptions]:
    """opama caption JSONL -> ``{image rel path: PanoramaCaptions}``; error lines skipped.

    A later line for the same image replaces an earlier one. Raises ``ValueError`` naming the
    file and line for a malformed line (other than a half-written last line).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a captions JSONL file (not UTF-8 text at byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    out: dict[str, PanoramaCaptions] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):  # a run killed mid-write; the job rewrites it on resume
                continue
            raise ValueError(f"{path}: line {i} is not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict) or "image" not in rec:
            raise ValueError(f"{path}: line {i} has no 'image' field")
        if rec.get("error"):
            continue
        views = []
        raw_views = rec.get("views") or []
        if not isinstance(raw_views, list):
            raise ValueError(f"{path}: line {i}: 'views' must be a list")
        for v in raw_views:
            if isinstance(v, str):
                views.append(ViewCaption(v))
            elif isinstance(v, dict) and "caption" in v:
                try:
                    views.append(ViewCaption(str(v["caption"]), _float(v.get("yaw")), _float(v.get("pitch"))))
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: line {i}: a view has a yaw/pitch that is not a number") from None
            else:
                raise ValueError(f"{path}: line {i}: a view without a 'caption'")
        cap = rec.get("caption")
        out[_key(str(rec["image"]))] = PanoramaCaptions(str(cap) if cap is not None else None, views)
    return out


def _float(x) -> float | None:
    return None if x is None else float(x)


def read_aognet_json(
    path: str | os.PathLike, kind: Literal["auto", "global", "views"] = "auto"
) -> dict[str, PanoramaCaptions]:
    """AOG-Net's ``{file name: [captions]}`` (as JSON) -> ``{file name: PanoramaCaptions}``.

    ``kind="global"``: the first caption of each list is the whole-panorama caption (extra
    ones become views); ``"views"``: every caption is a view caption (yaw unknown);
    ``"auto"``: ``"views"`` when the file name contains ``aug`` or any list holds more than
    one caption, else ``"global"``. A bare string value counts as a one-caption list.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not JSON (not UTF-8 text at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: not JSON ({e.msg} at column {e.colno})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping {{file name: [captions]}}, got {type(data).__name__}")
    norm: dict[str, list[str]] = {}
    for name, caps in data.items():
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ValueError(f"{path}: value of {name!r} is not a list of strings")
        norm[_key(name)] = [" ".join(c.split()) for c in caps]
    if kind == "auto":
        kind = "views" if ("aug" in path.stem.lower() or any(len(c) > 1 for c in norm.values())) else "global"
    if kind not in ("global", "views"):
        raise ValueError(f"kind must be 'auto', 'global' or 'views', got {kind!r}")
    out = {}
    for name, caps in norm.items():
        if kind == "global":
            out[name] = PanoramaCaptions(caps[0] if caps else None, [ViewCaption(c) for c in caps[1:]])
        else:
            out[name] = PanoramaCaptions(None, [ViewCaption(c) for c in caps])
    return out


class CaptionIndex:
    """Captions of many panoramas, looked up by any path to the panorama (see module doc)."""

    def __init__(self, records: dict[str, PanoramaCaptions] | None = None) -> None:
        self._by_key: dict[str, PanoramaCaptions] = {}
        self._by_stem: dict[str, list[str]] = {}
        for k, v in (records or {}).items():
            self.add(k, v)

    def add(self, key: str, caps: PanoramaCaptions) -> None:
        """Add (or merge into) the entry for ``key`` (a relative path or file name)."""
        key = _key(key)
        if key in self._by_key:
            self._by_key[key].merge(caps)
            return
        self._by_key[key] = PanoramaCaptions(caps.caption, list(caps.views))
        self._by_stem.setdefault(PurePath(key).stem, []).append(key)

    def update(self, records: dict[str, PanoramaCaptions]) -> "CaptionIndex":
        for k, v in records.items():
            self.add(k, v)
        return self

    def __len__(self) -> int:
        return len(self._by_key)

    def keys(self) -> list[str]:
        return list(self._by_key)

    def __contains__(self, path) -> bool:
        return self.get(path) is not None

    def get(self, path: str | os.PathLike) -> PanoramaCaptions | None:
        """Captions of the panorama at ``path`` (absolute, relative or a bare file name), or None."""
        parts = PurePath(str(path).replace("\\", "/")).parts
        for i in range(len(parts)):
            k = "/".join(p for p in parts[i:] if p not in ("/", ""))
            if k in self._by_key:
                return self._by_key[k]
        if parts:
            cands = self._by_stem.get(PurePath(parts[-1]).stem, [])
            if len(cands) == 1:
                return self._by_key[cands[0]]
        return None

    def __getitem__(self, path: str | os.PathLike) -> PanoramaCaptions:
        caps = self.get(path)
        if caps is None:
            raise KeyError(f"{path}: no caption for this panorama (looked up by path suffix and file stem)")
        return caps

    def caption(self, path: str | os.PathLike) -> str | None:
        """Global caption of ``path`` (KeyError if the panorama is unknown)."""
        return self[path].caption

    def view_captions(self, path: str | os.PathLike) -> list[str]:
        """View captions of ``path`` in file order (KeyError if the panorama is unknown)."""
        return self[path].view_captions


def load_captions(*paths: str | os.PathLike, kind: Literal["auto", "global", "views"] = "auto") -> CaptionIndex:
    """Load and merge caption files: ``*.jsonl`` (opama) and ``*.json`` (AOG-Net structure).

    Entries with the same key are merged (e.g. ``indoor_train.json`` gives the global caption
    and ``indoor_train_aug.json`` the view captions). ``kind`` applies to the JSON files.
    """
    index = CaptionIndex()
    for p in _expand(paths):
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: caption file not found")
        if p.suffix.lower() == ".jsonl":
            index.update(read_caption_jsonl(p))
        elif p.suffix.lower() == ".json":
            index.update(read_aognet_json(p, kind))
        else:
            raise ValueError(f"{p}: unknown caption file type (expected .jsonl or .json)")
    return index


def _expand(paths: Iterable) -> list:
    out = []
    for p in paths:
        if isinstance(p, (list, tuple)):
            out.extend(_expand(p))
        else:
            out.append(p)
    return out
