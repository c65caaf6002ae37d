from __future__ import annotations

from pathlib import Path

import typer

from opama_tools.cli.app import app, console, fail


@app.command(
    "convert-reference",
    help="Convert a checkpoint of the OPa-Ma reference code (PengleiGao/OPaMa, a Lightning .ckpt whose "
    "state_dict holds projector, adapter, text_embedding, vision_embedding, uncond_embed) into an opama "
    "model folder for `opama outpaint --model OUT_DIR`. Only the conditioner is stored; rows 7-76 of "
    "uncond_embed (never read by the reference) are dropped. The file is read with "
    "torch.load(weights_only=True): nothing but tensors is unpickled.\n\n"
    "Example: opama convert-reference last.ckpt runs/opama-reference",
)
def convert_reference(
    ckpt: Path = typer.Argument(..., help="Reference checkpoint (.ckpt / .pt, or .safetensors with dotted names)."),
    out_dir: Path = typer.Argument(..., help="Model folder to write (replaced if it is one already)."),
    preset: str = typer.Option("auto", "--preset",
                               help="Backbone the conditioner is for: auto (by its widths), sd2 or tiny."),
) -> None:
    from opama_model.model_dir import MODEL_FILE
    from opama_model.reference import ReferenceCheckpointError, convert_reference_checkpoint

    if preset not in ("auto", "sd2", "tiny"):
        raise fail(f"--preset: {preset!r} is not one of auto, sd2, tiny", 2)
    if out_dir.exists() and not (out_dir.is_dir() and ((out_dir / MODEL_FILE).is_file() or not any(out_dir.iterdir()))):
        raise fail(f"{out_dir}: exists and is not an opama model folder; refusing to replace it", 2)
    try:
        with console.status(f"converting {ckpt.name}"):
            res = convert_reference_checkpoint(ckpt, out_dir, preset=preset)
    except ReferenceCheckpointError as e:
        raise fail(str(e), 2) from None
    console.print(
        f"convert-reference: {res['tensors']} tensors ({res['parameters']:,} parameters) -> {res['path']} "
        f"(preset {res['preset']}; {res['null_rows_dropped']} unused uncond_embed rows dropped)",
        highlight=False,
    )
