from __future__ import annotations

from pathlib import Path

import typer

from opama_tools.cli.app import app, console, err_console, fail


@app.command(
    help="Caption panoramas with BLIP; --augment adds one caption per NFoV view every --stride degrees.\n\n"
    "Writes one JSONL line per panorama {image, caption, views: [{yaw, pitch, caption}]}; re-runs skip "
    "panoramas already in OUT_JSONL from the same image content with the same settings. --from-metadata "
    "uses the synthetic generator's scenes.jsonl instead of a captioning model.\n\n"
    "Example: opama caption data/laval_png captions.jsonl --augment --stride 30"
)
def caption(
    pano_dir: Path = typer.Argument(..., help="Folder of PNG/JPG equirectangular panoramas (searched recursively)."),
    out_jsonl: Path = typer.Argument(..., help="Output JSONL (appended to; existing panoramas are skipped)."),
    model: str = typer.Option(
        None, "--model",
        help="Local folder of a BLIP / BLIP-2 checkpoint, or a repo id in the local Hugging Face cache "
        "(default: $OPAMA_BLIP, then Salesforce/blip-image-captioning-large in the cache). Never downloaded.",
    ),
    augment: bool = typer.Option(False, "--augment", help="Also caption NFoV views at yaw 0, stride, 2*stride, ... < 360."),
    stride: float = typer.Option(30.0, "--stride", help="Yaw step between views, degrees (30 -> 12 views)."),
    pitch: float = typer.Option(0.0, "--pitch", help="Pitch of the views, degrees (positive looks up)."),
    fov: float = typer.Option(90.0, "--fov", help="Horizontal field of view of the (square) views, degrees."),
    view_size: int = typer.Option(512, "--view-size", min=8, help="Side of each view in pixels before the processor resizes it."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per generate call (views and panoramas are batched together)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps (fp16 on CUDA, fp32 otherwise)."),
    max_new_tokens: int = typer.Option(30, "--max-new-tokens", min=1, help="Caption length limit in tokens."),
    prompt: str = typer.Option(
        "a photography of", "--prompt", help="Text prompt the caption continues (removed from the output); '' for none."
    ),
    from_metadata: Path = typer.Option(
        None, "--from-metadata", help="scenes.jsonl of `opama demo --data-only`: captions from the scene descriptions, no model."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start OUT_JSONL afresh instead of resuming."),
) -> None:
    from rich.markup import escape

    from opama_tools.data.caption import CaptionSettings, run_caption
    from opama_tools.io import printable_path
    from opama_tools.jobs import RESUME_HINT
    from opama_tools.weights import MissingWeightsError

    def show(captioner) -> None:
        console.print(f"captioner: {captioner.kind} from {captioner.source} on {captioner.device} "
                      f"({str(captioner.dtype).replace('torch.', '')})", highlight=False, soft_wrap=True,
                      markup=False)

    try:
        settings = CaptionSettings(augment=augment, stride=stride, pitch=pitch, fov=fov, view_size=view_size)
        summary = run_caption(pano_dir, out_jsonl, settings, scenes=from_metadata, model=model, device=device,
                              prompt=prompt, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              overwrite=overwrite, on_captioner=show)
    except (ValueError, MissingWeightsError) as e:  # NoInputsError, OutputPathError, bad files: one line
        raise fail(str(e), 2) from None
    for rel, reason in summary.failures:
        err_console.print(f"[red]failed[/] {escape(printable_path(pano_dir / rel))}: {escape(reason)}",
                          highlight=False, soft_wrap=True)
    console.print(
        f"{summary.done} done, {summary.skipped} skipped, {summary.failed} failed -> {printable_path(out_jsonl)}",
        highlight=False, soft_wrap=True, markup=False,
    )
    if summary.interrupted:
        err_console.print(f"[yellow]interrupted ({summary.interrupted})[/]: {RESUME_HINT}.", highlight=False)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)
