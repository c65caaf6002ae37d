"""``opama outpaint``: photo(s) and/or a sentence -> a 360-degree panorama, one or a batch.

Library entry points (the CLI and the demo call the same ones):

* :func:`load_model` (a model folder or a preset) -> :class:`OutpaintModel`;
* :func:`read_rows` (a CSV or a folder) or :class:`Row` / :func:`parse_input_spec` by hand;
* :func:`outpaint_batch` (resumable, atomic, spread over ``accelerate launch`` processes) or
  :func:`outpaint_row` for one panorama folder;
* :func:`write_viewer` (``index.html``), :func:`write_video` (``pano.mp4``).
"""

from .runner import (
    BatchResult,
    InputSpec,
    OutpaintModel,
    OutpaintSettings,
    Row,
    check_row,
    distributed_context,
    load_model,
    outpaint_batch,
    outpaint_row,
    parse_input_spec,
    parse_size,
    read_input_image,
    read_rows,
)
from .video import write_video
from .viewer import viewer_html, write_viewer

__all__ = [
    "BatchResult",
    "InputSpec",
    "OutpaintModel",
    "OutpaintSettings",
    "Row",
    "check_row",
    "distributed_context",
    "load_model",
    "outpaint_batch",
    "outpaint_row",
    "parse_input_spec",
    "parse_size",
    "read_input_image",
    "read_rows",
    "viewer_html",
    "write_video",
    "write_viewer",
]
