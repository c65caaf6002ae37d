"""``opama outpaint``: photo(s) and/or a sentence -> a 360-degree panorama, one or a batch.

Library entry points (the CLI and the demo call the same ones):

* :func:`run_outpaint`: the whole command (validates, loads, writes, returns an :class:`OutpaintSummary`);
* :func:`load_model` (a model folder or a preset) -> :class:`OutpaintModel`;
* :func:`read_rows` (a CSV or a folder) or :class:`Row` / :func:`parse_input_spec` by hand;
* :func:`outpaint_batch` (resumable, atomic, spread over ``accelerate launch`` processes) or
  :func:`outpaint_row` for one panorama folder;
* :func:`write_viewer` (``index.html``), :func:`write_video` (``pano.mp4``);
* for a panorama video: :func:`write_video_viewer` (``index.html`` playing ``pano.mp4``) and
  :func:`write_look_around_video` (``look.mp4``).

Names are imported on first use, so that importing the package (and checking the CLI's
arguments with :mod:`.inputs` and :mod:`.run`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "IMAGE_EXTS": "inputs",
    "InputSpec": "inputs",
    "Row": "inputs",
    "parse_input_spec": "inputs",
    "read_input_image": "inputs",
    "read_rows": "inputs",
    "OutpaintError": "run",
    "OutpaintSummary": "run",
    "run_outpaint": "run",
    "BatchResult": "runner",
    "OutpaintModel": "runner",
    "OutpaintSettings": "runner",
    "check_row": "runner",
    "distributed_context": "runner",
    "load_model": "runner",
    "outpaint_batch": "runner",
    "outpaint_row": "runner",
    "perspective_views": "video",
    "write_look_around_video": "video",
    "write_video": "video",
    "video_viewer_html": "viewer",
    "viewer_html": "viewer",
    "write_video_viewer": "viewer",
    "write_viewer": "viewer",
}

__all__ = sorted([*_WHERE, "parse_size"])


def __getattr__(name: str):
    if name == "parse_size":
        from opama_tools.images import parse_size

        return parse_size
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors
    from opama_tools.images import parse_size
    from .inputs import IMAGE_EXTS, InputSpec, Row, parse_input_spec, read_input_image, read_rows
    from .run import OutpaintError, OutpaintSummary, run_outpaint
    from .runner import (BatchResult, OutpaintModel, OutpaintSettings, check_row, distributed_context, load_model,
                         outpaint_batch, outpaint_row)
    from .video import perspective_views, write_look_around_video, write_video
    from .viewer import video_viewer_html, viewer_html, write_video_viewer, write_viewer
