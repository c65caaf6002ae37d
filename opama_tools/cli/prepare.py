from __future__ import annotations

from pathlib import Path

import typer

from opama_tools.cli.app import app, console, err_console, fail


@app.command(
    help="EXR HDR panoramas (Laval Indoor/Outdoor) → tonemapped PNG panoramas + manifest.csv.\n\n"
    "Reads every .exr (and .png/.jpg, resized only) under SRC_DIR recursively, mirrors the folder "
    "structure under OUT_DIR, skips sources already done from the same content with the same settings "
    "(unless --overwrite), and merges one row per source into OUT_DIR/manifest.csv. Exit code 1 if any "
    "file failed, 2 for a usage error or an empty SRC_DIR, 143 if stopped (re-run to finish).\n\n"
    "Output size: by default the source size, at most 1024x2048 (smaller sources are never upsampled); "
    "--size native keeps every source's size, --size HxW resizes to exactly that (upsampling too).\n\n"
    "Example: opama prepare data/laval_exr data/laval_png --size 1024x2048"
)
def prepare(
    src_dir: Path = typer.Argument(..., help="Folder searched recursively for .exr/.png/.jpg panoramas."),
    out_dir: Path = typer.Argument(..., help="Output folder (PNG files + manifest.csv)."),
    size: str = typer.Option(
        "auto", "--size",
        help="Output HEIGHTxWIDTH (2:1, exactly that size), 'native' (the source size) or 'auto' (the source "
        "size, at most 1024x2048: never upsampled).",
    ),
    operator: str = typer.Option(
        "percentile", "--operator", help="Tonemap: percentile (AOG-Net's, default), reinhard, aces or exposure."
    ),
    exposure: float = typer.Option(0.0, "--exposure", help="Exposure in EV (x * 2^EV) applied before the operator; finite, |EV| <= 64."),
    workers: int = typer.Option(0, "--workers", min=0, help="Worker processes (0 = all cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that already exist."),
    force_aspect: bool = typer.Option(False, "--force-aspect", help="Resize non-2:1 sources instead of failing them."),
) -> None:
    from opama_tools.data.prepare import run_prepare
    from opama_tools.jobs import RESUME_HINT

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]prepare"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.description}"), console=console, transient=False,
    )
    task = progress.add_task("", total=None)

    def on_start(n: int) -> None:  # the options and folders are checked: show the bar
        progress.update(task, total=n)
        progress.start()

    def on_result(row: dict) -> None:
        if row["status"] == "failed":
            progress.console.print(f"[red]failed[/] {escape(row['error'])}", highlight=False, soft_wrap=True)
        progress.update(task, advance=1, description=Path(row["source"]).name)

    try:
        summary = run_prepare(src_dir, out_dir, size=size, operator=operator, exposure=exposure,
                              force_aspect=force_aspect, overwrite=overwrite, workers=workers or None,
                              on_start=on_start, on_result=on_result)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e), 2) from None
    finally:
        progress.stop()

    console.print(
        f"done {summary.done} / skipped {summary.skipped} / failed {summary.failed}; manifest: {summary.manifest}",
        highlight=False, soft_wrap=True, markup=False,
    )
    if summary.interrupted:
        err_console.print(f"[yellow]interrupted ({summary.interrupted})[/]: {RESUME_HINT}.", highlight=False)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)
