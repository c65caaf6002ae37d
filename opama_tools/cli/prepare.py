from __future__ import annotations

from opama_tools.cli.app import app, not_built


@app.command(
    help="EXR HDR panoramas (Laval Indoor/Outdoor) → tonemapped PNG panoramas + manifest.csv.\n\n"
    "Example: opama prepare data/laval_exr data/laval_png --size 1024x2048"
)
def prepare() -> None:
    not_built("prepare", "issue #3")
