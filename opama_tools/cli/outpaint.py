from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from opama_tools.cli.app import app, console, err_console, fail


@app.command(
    help="Outpaint photo(s) and/or a sentence into a full 360° equirectangular panorama.\n\n"
    "Writes OUT/pano.png, input_mask.png, index.html (drag-to-look viewer), meta.json (+ cube faces, pano.mp4); "
    "with --batch, OUT/<name>/... per row (resumable). Angles in degrees: yaw right, pitch up, fov horizontal.\n\n"
    "A video input gives a 360° video: OUT/pano.mp4 (equirect), input_masks.npy, index.html (player), meta.json.\n\n"
    'Example: opama outpaint --preset tiny --input view.png@0,0,90 --prompt "a living room" --out out/pano\n\n'
    'Video: opama outpaint --preset tiny --input clip.mp4@0,0,90 --prompt "a beach" --out out/video'
)
def outpaint(
    out: Path = typer.Option(..., "--out", help="Output folder (one panorama; or the batch's root)."),
    model: str = typer.Option(None, "--model", help="Model folder written by `opama train` (or convert-reference), or "
                              "an SD 1.x/2.x inpainting checkpoint: a diffusers folder or a repo id in the local Hugging "
                              "Face cache, e.g. stabilityai/stable-diffusion-2-inpainting (no training, no conditioner)."),
    preset: str = typer.Option(None, "--preset", help="Build a preset instead: tiny (random) or sd2."),
    random_weights: bool = typer.Option(False, "--random-weights", help="With --preset sd2: random weights (timing)."),
    conditioner: str = typer.Option("opama", "--conditioner", help="With --preset: opama or aog."),
    inputs: list[str] = typer.Option(None, "--input", help="IMG[@yaw,pitch,fov] (default @0,0,90); repeat for several photos."),
    prompt: str = typer.Option("", "--prompt", help="Caption of the panorama (\"\" = none; with --batch DIR: for every photo)."),
    prompt_up: str = typer.Option(None, "--prompt-up", help="Caption of the views looking up (pitch >= 45°); default --prompt."),
    prompt_down: str = typer.Option(None, "--prompt-down", help="Caption of the views looking down (pitch <= -45°); default --prompt."),
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
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps (under accelerate launch: each process's GPU)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo panoramas already done."),
    trajectory: Path = typer.Option(None, "--trajectory", help="Video: CSV frame,yaw,pitch,fov (degrees) of a turning camera; "
                                    "frames between listed ones are interpolated."),
    mask: Path = typer.Option(None, "--mask", help="Video edit: PNG or video of masks (white = regenerate) for "
                              "--input PANO.mp4@equirect."),
    keyframe_every: int = typer.Option(None, "--keyframe-every", help="Video: refresh the generated region every K frames (0 = never)."),
    strength: float = typer.Option(None, "--strength", help="Video: partial noising of the previous frame's result, 0..1."),
    band: float = typer.Option(None, "--band", help="Video: width (degrees) of the band around the input that follows its motion."),
    independent: bool = typer.Option(False, "--independent", help="Video: every frame a full panorama (the per-frame baseline; flickers)."),
    lossless: bool = typer.Option(False, "--lossless", help="Video: also write pano.mkv, the frames bit-exact (FFV1)."),
    sd2_inpaint: Path = typer.Option(None, "--sd2-inpaint", help="Local stable-diffusion-2-inpainting folder."),
    sd2_clip: Path = typer.Option(None, "--sd2-clip", help="Local stable-diffusion-2-1-unclip folder."),
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from opama_tools.outpaint.run import OutpaintError, run_outpaint

    # the bar starts with the first panorama's progress (after the checks and the model's loading)
    bar = Progress(TextColumn("[bold]outpaint"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), console=console, transient=False)
    tasks: dict[str, int] = {}

    def started() -> None:
        if not tasks:
            bar.start()
            tasks["views"] = bar.add_task("views", total=None)
            if batch is not None:
                tasks["panos"] = bar.add_task("panoramas", total=None)

    def view_progress(k: int, n: int) -> None:
        started()
        bar.update(tasks["views"], completed=k, total=n)

    def progress(k: int, n: int, name: str) -> None:
        started()
        bar.update(tasks["panos"], completed=k, total=n, description=name)

    paths = {k: v for k, v in (("sd2-inpaint", sd2_inpaint), ("sd2-clip", sd2_clip)) if v is not None}
    try:
        summary = run_outpaint(
            out, model=model, preset=preset, random_weights=random_weights, conditioner=conditioner,
            inputs=inputs or [], prompt=prompt, prompt_up=prompt_up, prompt_down=prompt_down, batch=batch, procedure=procedure, steps=steps, guidance=guidance,
            scheduler=scheduler, size=size, views=views, seed=seed, video=video, cube=cube, device=device,
            dtype=dtype, overwrite=overwrite, paths=paths, progress=progress, view_progress=view_progress,
            trajectory=trajectory, mask=mask, keyframe_every=keyframe_every, strength=strength, band=band,
            independent=independent, lossless=lossless)
    except OutpaintError as e:
        raise fail(str(e), 2) from None
    finally:
        if tasks:
            bar.stop()
    if summary.single:
        state = "already done (same inputs and options; --overwrite redoes it)" if summary.skipped else "written"
        made = "pano.mp4" if summary.video else "pano.png"
        console.print(f"outpaint: {out}/{made} {state}", highlight=False)
        return
    for name, reason in summary.failed:
        err_console.print(f"[red]failed[/] {escape(name)}: {escape(reason)}", highlight=False, soft_wrap=True)
    world = summary.num_processes
    console.print(f"outpaint: {len(summary.done)} done, {len(summary.skipped)} skipped, {len(summary.failed)} failed"
                  + (f" (process {summary.process_index + 1} of {world})" if world > 1 else "") + f" -> {out}",
                  highlight=False)
    if summary.failed:
        raise typer.Exit(1)
