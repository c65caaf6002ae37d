from __future__ import annotations

from opama_tools.cli.app import app, not_built


@app.command(
    help="Train the OPa-Ma conditioner on panoramas + captions (accelerate: one CPU up to many GPUs).\n\n"
    "Example: accelerate launch -m opama_tools.cli train data/laval_png --captions captions.jsonl --preset sd2"
)
def train() -> None:
    not_built("train", "no issue yet: needs the model core (#6)")
