"""Training data for ``opama train``: scan a panorama folder, check it, attach captions.

Captions come from ``opama caption`` JSONL files or AOG-Net's published JSON files (e.g. the
shipped ``LAVAL_CAPTIONS / "indoor_train.json"`` + ``"indoor_train_aug.json"``) through
:func:`opama_tools.data.captions.load_captions`; they are handed to the model side
(:mod:`opama_model.training`) as :class:`~opama_model.training.data.PanoramaRecord` entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from opama_model.training.data import PanoramaRecord

__all__ = ["TrainDataError", "find_training_panoramas", "load_records", "IMAGE_EXTS"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class TrainDataError(ValueError):
    """Unusable training data (message names the file or folder)."""


def find_training_panoramas(data_dir: str | Path) -> list[Path]:
    """Images (``.png``, ``.jpg``, ``.jpeg``, any case) under ``data_dir``, recursively, sorted;
    hidden files and folders (``.name``) are skipped."""
    root = Path(data_dir)
    if not root.is_dir():
        raise TrainDataError(f"{root}: not a folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _check_aspect(path: Path) -> None:
    from opama_tools.images import check_equirect, image_hw

    try:
        h, w = image_hw(path)
    except ValueError as e:
        raise TrainDataError(f"{path}: cannot read image ({e})") from None
    try:
        check_equirect(h, w)
    except ValueError as e:
        raise TrainDataError(f"{path}: {e}") from None


def load_records(data_dir: str | Path, captions: Sequence[str | Path] = (), *, kind: str = "auto",
                 check_all: bool = True) -> list[PanoramaRecord]:
    """Panoramas of ``data_dir`` with their captions.

    Args:
        data_dir: folder of 2:1 panoramas (searched recursively).
        captions: caption files (``.jsonl`` from ``opama caption``, ``.json`` in AOG-Net's layout);
            none: every caption is empty (text conditioning then only sees "").
        kind: how AOG-Net JSON files are read (see :func:`opama_tools.data.captions.read_aognet_json`).
        check_all: check the 2:1 shape of every file (reads image headers only).

    Raises:
        TrainDataError: empty folder, a non-2:1 or unreadable image, a caption file that is
            unreadable or names none of the panoramas, or panoramas without a caption.
    """
    from opama_tools.data.captions import load_captions

    paths = find_training_panoramas(data_dir)
    if not paths:
        raise TrainDataError(f"{data_dir}: no panoramas (*.png, *.jpg, *.jpeg) found")
    for p in paths if check_all else paths[:1]:
        _check_aspect(p)
    if not captions:
        return [PanoramaRecord(str(p)) for p in paths]
    try:
        index = load_captions(*captions, kind=kind)  # type: ignore[arg-type]
    except (OSError, ValueError) as e:
        raise TrainDataError(str(e).splitlines()[0]) from None
    names = ", ".join(str(c) for c in captions)
    records, missing = [], []
    for p in paths:
        caps = index.get(p.relative_to(data_dir)) or index.get(p)
        if caps is None:
            missing.append(p)
            continue
        records.append(PanoramaRecord(str(p), caps.caption or "", tuple(v for v in caps.view_captions if v)))
    if not records:
        raise TrainDataError(f"{names}: names none of the {len(paths)} panoramas in {data_dir} "
                             f"(e.g. {paths[0].name}; captions are matched by relative path or file name)")
    if missing:
        raise TrainDataError(f"{missing[0]}: no caption in {names} ({len(missing)} of {len(paths)} panoramas "
                             f"have none; caption them with `opama caption` or train without --captions)")
    return records
