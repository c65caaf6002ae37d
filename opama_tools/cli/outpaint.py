from __future__ import annotations

from opama_tools.cli.app import app, not_built


@app.command(
    help="Outpaint NFoV image(s) + a sentence into a full 360° equirectangular panorama.\n\n"
    'Example: opama outpaint view.png --text "a living room with a large window" --out pano.png'
)
def outpaint() -> None:
    not_built("outpaint", "no issue yet: needs the model core (#6)")
