from __future__ import annotations

from opama_tools.cli.app import app, not_built


@app.command(
    name="eval",
    help="Metrics (FID, KID, IS, CLIP score, LPIPS, SC, seam, pole, PSNR/SSIM) and a benchmark report.\n\n"
    "Example: opama eval out/generated data/laval_png --captions captions.jsonl --metrics fid,clip,seam --out report",
)
def evaluate() -> None:
    not_built("eval", "issue #7")
