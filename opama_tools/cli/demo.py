from __future__ import annotations

from pathlib import Path

import typer

from opama_tools.cli.app import app, console, fail


@app.command(
    help="Run the whole pipeline on synthetic data with the tiny preset (no downloads); "
    "--data-only writes synthetic HDR panoramas and stops.\n\n"
    "Example: opama demo --out opama-demo      |      opama demo --data-only data/synth -n 8"
)
def demo(
    out: Path = typer.Option(Path("opama-demo"), "--out", help="Folder for everything the demo writes."),
    data_only: Path = typer.Option(None, "--data-only", help="Only write N synthetic .exr panoramas into this folder."),
    n: int = typer.Option(4, "-n", "--num", min=1, help="Number of synthetic panoramas."),
    height: int = typer.Option(256, "--height", min=8, help="Panorama height in pixels (width = 2 x height)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first scene (scene k uses seed + k)."),
    kind: str = typer.Option("random", "--kind", help="outdoor, indoor or random."),
) -> None:
    from opama_tools.demo import run_demo, write_synthetic

    if kind not in ("outdoor", "indoor", "random"):
        raise fail(f"--kind must be outdoor, indoor or random, got {kind!r}", 2)
    if data_only is not None:
        try:
            paths = write_synthetic(data_only, n=n, height=height, seed=seed, kind=kind)
        except ValueError as e:  # unusable folder or scenes.jsonl: one line naming it
            raise fail(str(e), 2) from None
        console.print(f"wrote {len(paths)} synthetic HDR panoramas and scenes.jsonl to {data_only}")
        return
    try:
        run_demo(out, n=n, height=height, seed=seed, kind=kind)
    except RuntimeError as e:
        raise fail(str(e), 1) from None
