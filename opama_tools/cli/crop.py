from __future__ import annotations

from opama_tools.cli.app import app, not_built


@app.command(
    help="Cut NFoV views, masks and cube faces from equirectangular panoramas.\n\n"
    "Example: opama crop data/laval_png data/views --views aog21 --fov 90 --size 512 --masks"
)
def crop() -> None:
    not_built("crop", "issue #4")
