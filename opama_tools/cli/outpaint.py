from __future__ import annotations

from pathlib import Path

import typer

from opama_tools.cli.app import app, console, err_console, fail


@app.command(
    help="Outpaint photo(s) and/or a sentence into a full 360° equirectangular panorama.\n\n"
    "Writes OUT/pano.png, input_mask.png, index.html (drag-to-look viewer), meta.json (+ cube faces, pano.mp4); "
    "with --batch, OUT/<name>/... per row (resumable). Angles in degrees: yaw right, pitch up, fov horizontal.\n\n"
    'Example: opama outpaint --preset tiny --input view.png@0,0,90 --prompt "a living room" --out out/pano'
)
def outpaint(
    out: Path = typer.Option(..., "--out", help="Output folder (one panorama; or the batch's root)."),
    model: Path = typer.Option(None, "--model", help="Model folder written by `opama train` (or convert-reference)."),
    preset: str = typer.Option(None, "--preset", help="Build a preset instead: tiny (random) or sd2."),
    random_weights: bool = typer.Option(False, "--random-weights", help="With --preset sd2: random weights (timing)."),
    conditioner: str = typer.Option("opama", "--conditioner", help="With --preset: opama or aog."),
    inputs: list[str] = typer.Option(None, "--input", help="IMG[@yaw,pitch,fov] (default @0,0,90); repeat for several photos."),
    prompt: str = typer.Option("", "--prompt", help="Caption of the panorama (\"\" = none; with --batch DIR: for every photo)."),
    procedure: str = typer.Option("fast", "--procedure", help="fast (default), reference (OPa-Ma's) or aog (AOG-Net's)."),
    steps: int = typer.Option(None, "--steps", help="Override the procedure's steps per view."),
    guidance: float = typer.Option(None, "--guidance", help="Override the guidance scale (reference: 2.5)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Override the scheduler: dpm++2m, dpm++2m-karras, unipc, pndm, ddim, euler."),
    size: str = typer.Option(None, "--size", help="Canvas HxW, 2:1 (default 4x8 view sizes: 2048x4096 for sd2, 256x512 for tiny)."),
    views: str = typer.Option("aog21", "--views", help="Generated views: aog21 (as trained) or 'yaw,pitch;...' degrees; completion views follow."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial noise (same seed, same panorama)."),
    batch: Path = typer.Option(None, "--batch", help="CSV (image, prompt, yaw, pitch, fov, name) or a folder of photos."),
    video: bool = typer.Option(False, "--video", help="Also write pano.mp4, a look-around (imageio-ffmpeg)."),
    cube: int = typer.Option(0, "--cube", min=0, help="Also write the 6 cube faces with this width (0 = none)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N] (under accelerate launch: each process's GPU)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo panoramas already done."),
    sd2_inpaint: Path = typer.Option(None, "--sd2-inpaint", help="Local stable-diffusion-2-inpainting folder."),
    sd2_clip: Path = typer.Option(None, "--sd2-clip", help="Local stable-diffusion-2-1-unclip folder."),
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from opama_model.model_dir import ModelFolderError
    from opama_model.views import AOG21, parse_views
    from opama_model.weights import MissingWeightsError
    from opama_tools.outpaint import (
        OutpaintSettings, Row, distributed_context, load_model, outpaint_batch, parse_input_spec, parse_size,
        read_rows,
    )

    if (model is None) == (preset is None):
        raise fail("give exactly one of --model DIR or --preset tiny|sd2", 2)
    if batch is not None and inputs:
        raise fail("--input and --batch exclude each other (put the photos in the batch CSV)", 2)
    try:
        schedule = tuple(parse_views(views))
    except ValueError as e:
        raise fail(f"--views: {e}", 2) from None
    try:
        settings = OutpaintSettings(procedure=procedure, steps=steps, guidance=guidance, scheduler=scheduler,
                                    size=parse_size(size), seed=seed, cube=cube, video=video,
                                    views=None if schedule == AOG21 else schedule)
        rows = (read_rows(batch, prompt) if batch is not None
                else [Row(".", tuple(parse_input_spec(s) for s in inputs or []), prompt)])
    except ValueError as e:
        raise fail(str(e), 2) from None
    if batch is not None and not rows:
        raise fail(f"{batch}: no rows (no photos or an empty CSV)", 2)
    rank, world, dist_device = distributed_context()
    paths = {k: v for k, v in (("sd2-inpaint", sd2_inpaint), ("sd2-clip", sd2_clip)) if v is not None}
    try:
        m = load_model(model, preset=preset, random_weights=random_weights, device=dist_device or device,
                       dtype=dtype, paths=paths, conditioner=conditioner)
    except (ModelFolderError, MissingWeightsError, ValueError) as e:
        raise fail(str(e).splitlines()[0] if isinstance(e, MissingWeightsError) else str(e), 2) from None

    failures: list[tuple[str, str]] = []

    def report(name: str, reason: str) -> None:
        failures.append((name, reason))
        if batch is not None:
            err_console.print(f"[red]failed[/] {name}: {reason}", highlight=False, soft_wrap=True)

    with Progress(
        TextColumn("[bold]outpaint"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, transient=False, disable=rank != 0,
    ) as bar:
        view_task = bar.add_task("views", total=None)
        panos = bar.add_task("panoramas", total=len(rows[rank::world])) if batch is not None else None
        result = outpaint_batch(
            rows, m, out, settings, overwrite=overwrite, process_index=rank, num_processes=world,
            on_failure=report,
            view_progress=lambda k, n: bar.update(view_task, completed=k, total=n),
            progress=None if panos is None else (lambda k, n, name: bar.update(panos, completed=k, description=name)),
        )
    if batch is None:
        if failures:
            raise fail(failures[0][1], 2)
        state = "already done (same inputs and options; --overwrite redoes it)" if result.skipped else "written"
        console.print(f"outpaint: {out}/pano.png {state}", highlight=False)
        return
    console.print(f"outpaint: {len(result.done)} done, {len(result.skipped)} skipped, {len(result.failed)} failed"
                  + (f" (process {rank + 1} of {world})" if world > 1 else "") + f" -> {out}", highlight=False)
    if result.failed:
        raise typer.Exit(1)
