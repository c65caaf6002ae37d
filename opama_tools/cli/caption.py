from __future__ import annotations

from opama_tools.cli.app import app, not_built


@app.command(
    help="Caption panoramas with BLIP; --augment adds one caption per NFoV view every --stride degrees.\n\n"
    "Example: opama caption data/laval_png captions.jsonl --augment --stride 30"
)
def caption() -> None:
    not_built("caption", "issue #5")
