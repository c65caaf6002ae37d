from __future__ import annotations

from pathlib import Path

import typer

from opama_tools.cli.app import app, console, fail


@app.command(
    help="The whole mission end to end on synthetic data with the tiny preset, no downloads: synthetic HDR "
    "panoramas -> prepare -> captions -> train -> outpaint (trained / training-free / untrained, fast / reference) -> eval -> "
    "report.html; --video adds a 360° video stage (temporal vs per-frame video outpainting, flicker and warping "
    "error). A re-run resumes; other settings start afresh. --data-only writes synthetic HDR panoramas "
    "and stops; with --video, synthetic 360° clips (reference videos, NFoV input clips, trajectories).\n\n"
    "Example: opama demo --out opama-demo      |      opama demo --fast      |      opama demo --video      |      "
    "opama demo --data-only data/synth -n 8"
    "      |      opama demo --data-only data/synth-video --video -n 4"
)
def demo(
    out: Path = typer.Option(Path("opama-demo"), "--out", help="Folder for everything the demo writes."),
    n_train: int = typer.Option(None, "--n-train", min=1, help="Synthetic training panoramas (default 24; --fast 4)."),
    n_test: int = typer.Option(None, "--n-test", min=1, help="Held-out test panoramas (default 6; --fast 2)."),
    steps: int = typer.Option(None, "--steps", min=1, help="Training steps of the conditioner after the VAE and UNet warm-ups (default 150; --fast 40)."),
    fast: bool = typer.Option(False, "--fast", help="A smoke run of every stage (a few minutes on 2 cores), not a result."),
    aog: bool = typer.Option(False, "--aog", help="Also train and outpaint with the AOG-Net conditioner."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scenes, the training and the outpainting."),
    data_only: Path = typer.Option(None, "--data-only", help="Only write N synthetic .exr panoramas (with --video: 360° clips) into this folder."),
    n: int = typer.Option(4, "-n", "--num", min=1, help="With --data-only: number of synthetic panoramas."),
    height: int = typer.Option(None, "--height", min=8, help="With --data-only: panorama height in pixels (width = 2 x height; default 256, --video 64, even)."),
    kind: str = typer.Option(None, "--kind", help="With --data-only: outdoor, indoor or random (default random; --video outdoor: indoor clips only turn the camera)."),
    video: bool = typer.Option(False, "--video", help="Add the 360° video stage (synthetic clips outpainted by the trained model, "
                               "temporal vs per frame, scored against the reference videos; a few more minutes). With "
                               "--data-only: write synthetic 360° videos (a moving object and sun, a turning camera) instead of panoramas."),
    frames: int = typer.Option(None, "--frames", min=1, help="With --video: frames per clip (default 12; --fast 4)."),
) -> None:
    from opama_tools.demo.run import FAST, DemoError, DemoSettings, run_demo, write_synthetic, write_synthetic_video

    kind = kind or ("outdoor" if video else "random")
    if kind not in ("outdoor", "indoor", "random"):
        raise fail(f"--kind must be outdoor, indoor or random, got {kind!r}", 2)
    if data_only is not None and video:
        h = height or 64
        if h % 2:
            raise fail(f"--height {h}: video frames need an even height (H.264)", 2)
        try:
            frames = frames or 12
            names = write_synthetic_video(data_only, n=n, frames=frames, height=h, seed=seed, kind=kind)
        except ValueError as e:  # unusable folder or captions.jsonl: one line naming it
            raise fail(str(e), 2) from None
        console.print(f"wrote {len(names)} synthetic 360° clips ({frames} frames, {h}x{2 * h}) with their NFoV "
                      f"input clips, trajectories, captions.jsonl and video_batch.csv to {data_only}")
        return
    height = height or 256
    if data_only is not None:
        try:
            paths = write_synthetic(data_only, n=n, height=height, seed=seed, kind=kind)
        except ValueError as e:  # unusable folder or scenes.jsonl: one line naming it
            raise fail(str(e), 2) from None
        console.print(f"wrote {len(paths)} synthetic HDR panoramas and scenes.jsonl to {data_only}")
        return
    kw = dict(FAST) if fast else {}
    kw.update({k: v for k, v in (("n_train", n_train), ("n_test", n_test), ("steps", steps), ("video_frames", frames))
               if v is not None})
    from opama_model.fileio import Terminated

    try:
        run_demo(DemoSettings(out=str(out), seed=seed, aog=aog, video=video, **kw))
    except (DemoError, OSError) as e:
        raise fail(str(e), 1) from None
    except (KeyboardInterrupt, Terminated) as e:
        code = 130 if isinstance(e, KeyboardInterrupt) else 143
        raise fail(f"demo stopped; re-run the same command to resume from {out}", code) from None
