from __future__ import annotations

from pathlib import Path

import typer

from opama_tools.cli.app import app, console, err_console, fail


@app.command(
    help="Cut NFoV views, masks and cube faces from equirectangular panoramas.\n\n"
    "Finds panoramas recursively and writes OUT_DIR/<rel>/<stem>/view_KK.png (+ mask_KK.png, cube_F..D.png) "
    "per panorama and OUT_DIR/views.csv; re-runs skip panoramas done from the same file with the same settings. "
    "Angles in degrees: yaw 0 = panorama centre, positive yaw turns right, positive pitch looks up.\n\n"
    "Example: opama crop data/laval_png data/views --views aog21 --fov 90 --size 512 --masks"
)
def crop(
    pano_dir: Path = typer.Argument(..., help="Folder of 2:1 equirect panoramas (.png, .jpg; 8 or 16 bit), searched recursively."),
    out_dir: Path = typer.Argument(..., help="Output folder."),
    views: str = typer.Option(
        "aog21", "--views",
        help="'yaw,pitch;yaw,pitch;...' in degrees, or a named set: aog21 (AOG-Net's 21-view order), "
        "ring8 (8 horizon views every 45°), cube (F R B L U D directions).",
    ),
    fov: float = typer.Option(90.0, "--fov", help="Horizontal field of view of each view, degrees (0-180)."),
    size: int = typer.Option(512, "--size", min=2, help="View width and height in pixels."),
    cube: int = typer.Option(0, "--cube", min=0, help="Also write the 6 cube faces with this width (0 = no faces)."),
    masks: bool = typer.Option(False, "--masks", help="Also write each view's footprint mask on the panorama (0/255)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo panoramas whose outputs already exist."),
) -> None:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from opama_model.views import parse_views
    from opama_tools.data.crop import CropSettings, run_crop
    from opama_tools.io import printable_path
    from opama_tools.jobs import RESUME_HINT

    try:
        settings = CropSettings(views=tuple(parse_views(views)), fov=fov, size=size, cube=cube, masks=masks)
    except ValueError as e:
        raise fail(f"--views/--fov/--size/--cube: {e}", 2) from None

    def report(path: Path, reason: str) -> None:
        err_console.print(f"[red]failed[/] {escape(printable_path(path))}: {escape(reason)}", highlight=False,
                          soft_wrap=True)

    bar = Progress(
        TextColumn("[bold]crop"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, transient=False,
    )
    task = bar.add_task("", total=None)

    def on_start(n: int) -> None:  # the inputs are checked: show the bar
        bar.update(task, total=n)
        bar.start()

    try:
        result = run_crop(
            pano_dir, out_dir, settings, overwrite=overwrite, on_start=on_start, on_failure=report,
            on_progress=lambda k, total, p: bar.update(task, completed=k, description=escape(printable_path(p.name))),
        )
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e), 2) from None
    finally:
        bar.stop()
    per = len(settings.views) + (6 if settings.cube else 0)
    console.print(
        f"crop: {len(result.done)} done, {len(result.skipped)} skipped, {len(result.failed)} failed "
        f"({len(settings.views)} views{' + 6 cube faces' if settings.cube else ''} per panorama, "
        f"{per * (len(result.done) + len(result.skipped))} rows in {printable_path(result.csv)})",
        highlight=False, markup=False, soft_wrap=True,
    )
    if result.interrupted:
        err_console.print(f"[yellow]interrupted ({result.interrupted})[/]: {RESUME_HINT}.", highlight=False)
    if result.exit_code:
        raise typer.Exit(result.exit_code)
