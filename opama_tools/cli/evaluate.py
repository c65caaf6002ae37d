"""``opama eval``: parse arguments, delegate to :mod:`opama_tools.eval.evaluate` and :mod:`opama_tools.eval.report`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from opama_tools.cli.app import app, console, err_console, fail
from opama_tools.eval.registry import OPTIONS, VIDEO_OPTIONS

HELP = (
    "Metrics (FID, KID, IS, OmniFID, FID-h, FAED, CLIP score, LPIPS, SC, PSNR/SSIM of the input region, the "
    "generated region on its own, seam, DS, pole) and a benchmark report.\n\n"
    "Two forms: `opama eval GEN_DIR REF_DIR OPTIONS` evaluates generated panoramas (GEN_DIR/NAME.png, or "
    "GEN_DIR/NAME/pano.png + meta.json as `opama outpaint` writes them, paired with REF_DIR/NAME.png) and writes "
    "metrics.json, per_image.csv, report.md and report.html into --out; `opama eval compare REPORT_A REPORT_B ...` "
    "prints the side-by-side table (metrics as rows, methods as columns, best marked *) and writes it as "
    "Markdown and CSV (--out, default compare); with --paired also each method minus the first report, "
    "panorama by panorama (the scenes' spread cancels), as BASE_paired.csv. Networks are never downloaded: metrics whose weights are missing "
    "are counted in one line (see `opama doctor`); when none of the requested metrics can run, one line names the "
    "missing files and where they are looked for (exit 2).\n\n"
    "360° videos: a GEN_DIR holding GEN_DIR/NAME/pano.mkv (or pano.mp4) + meta.json + input_masks.npy is "
    "evaluated against REF_DIR/NAME.mkv|mp4: the weight-free image metrics per frame, and flicker, warping "
    "error and input-border continuity (--metrics flicker,warp,border), output beside reference; a clip whose "
    "frame count differs from its reference is reported failed (exit 1), the others are scored.\n\n"
    "Example: opama eval out/generated data/laval_png --captions captions.jsonl --metrics fid,clip,region,ds --out report\n\n"
    "Example: opama eval compare report_aognet report_opama --names AOG-Net,OPa-Ma --paired --out table"
)


@app.command(name="eval", help=HELP, no_args_is_help=True)
def evaluate(
    paths: List[str] = typer.Argument(..., metavar="GEN_DIR REF_DIR | compare REPORT...", help="Folders to compare, or `compare` and report folders."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: report), or the compare table's base name (default: compare)."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="Reference captions JSONL {image, caption} (CLIP score, SC)."),
    gen_captions: Optional[Path] = typer.Option(None, "--gen-captions", help="Captions of the generated panoramas JSONL (SC without a local BLIP)."),
    metrics: str = typer.Option("all", "--metrics", help=f"Comma list of {','.join(OPTIONS)}, for videos also {','.join(VIDEO_OPTIONS)} (or all)."),
    faces: int = typer.Option(4, "--faces", help="Cube faces per panorama for FID/KID/IS/LPIPS: 4 (sides, as the papers) or 6."),
    face_size: int = typer.Option(299, "--face-size", help="Cube face size in pixels."),
    inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="clean-fid's inception-2015-12-05.pt (FID[inception], KID, IS)."),
    fid_clip_weights: Optional[str] = typer.Option(None, "--fid-clip-weights", help="CLIP ViT-B/32 for FID[clip_vit_b_32]: OpenAI ViT-B-32.pt or an open_clip folder."),
    clip_weights: Optional[str] = typer.Option(None, "--clip-weights", help="transformers CLIP folder for the CLIP score (openai/clip-vit-base-patch16)."),
    lpips_weights: Optional[str] = typer.Option(None, "--lpips-weights", help="torchvision squeezenet1_1-b8a52dc0.pth (or .safetensors) for LPIPS."),
    faed_weights: Optional[str] = typer.Option(None, "--faed-weights", help="PanFusion's faed.ckpt (or .safetensors) for FAED."),
    faed_height: int = typer.Option(512, "--faed-height", help="Panorama height FAED resizes to (PanFusion: 512)."),
    sentence_model: Optional[str] = typer.Option(None, "--sentence-model", help="sentence-transformers folder for SC (default: all-mpnet-base-v2 if cached, else all-MiniLM-L6-v2 from its wheel)."),
    captioner: Optional[str] = typer.Option(None, "--captioner", help="BLIP folder to caption generated panoramas for SC."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    input_fov: float = typer.Option(90.0, "--input-fov", help="Field of view (degrees) of the known input view at yaw 0, pitch 0."),
    input_size: int = typer.Option(512, "--input-size", help="Input view size in pixels (square)."),
    resize: bool = typer.Option(False, "--resize", help="Resample references whose size differs from the generated panorama (else an error); the report says so."),
    method: Optional[str] = typer.Option(None, "--method", help="Name of the scored method in the report (default: from meta.json)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for per-image metrics' 95% intervals."),
    set_bootstrap: int = typer.Option(50, "--set-bootstrap", help="Bootstrap resamples for FID/OmniFID/FID-h/FAED intervals (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and KID subsets."),
    names: Optional[str] = typer.Option(None, "--names", help="compare: comma list of method names, one per report (default: scored method or folder name)."),
    paired: bool = typer.Option(False, "--paired", help="compare: also each method minus the first report, panorama by panorama (mean difference, 95% bootstrap interval, wins), into BASE_paired.csv."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute even if --out already holds a report of the same inputs and options."),
) -> None:
    if paths and paths[0] == "compare":
        _compare(paths[1:], out, names, paired, bootstrap, seed)
        return
    if len(paths) != 2:
        raise fail("expected GEN_DIR REF_DIR (or: compare REPORT_A REPORT_B ...)", 2)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from opama_tools.eval.evaluate import EvalOptions, parse_metrics
    from opama_tools.eval.run import run_eval

    gen_dir, ref_dir = Path(paths[0]), Path(paths[1])
    out_dir = out or Path("report")
    prog = Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.description}"), console=err_console, transient=True)
    task = prog.add_task("", total=None)

    def on_progress(done: int, total: int, name: str) -> None:
        if not prog.live.is_started:  # started on the first pair: an early error prints alone
            prog.start()
        prog.update(task, completed=done, total=total, description=name)

    try:
        opts = EvalOptions(
            metrics=parse_metrics(metrics), faces=faces, face_size=face_size,
            captions=str(captions) if captions else None, gen_captions=str(gen_captions) if gen_captions else None,
            inception_weights=inception_weights, fid_clip_weights=fid_clip_weights, clip_weights=clip_weights,
            lpips_weights=lpips_weights, faed_weights=faed_weights, faed_height=faed_height,
            sentence_model=sentence_model, captioner=captioner, device=device, input_fov=input_fov,
            input_size=input_size, resize=resize, bootstrap=bootstrap, set_bootstrap=set_bootstrap, seed=seed,
        )
        summary = run_eval(gen_dir, ref_dir, out_dir, opts, method=method, overwrite=overwrite, progress=on_progress,
                           log=lambda m: err_console.print(f"note: {m}", highlight=False, markup=False))
    except ValueError as e:  # EvalInputError and option errors: one line naming the culprit
        raise fail(str(e), 2)
    finally:
        if prog.live.is_started:
            prog.stop()
    if summary.skipped:
        console.print(f"{out_dir}/metrics.json already holds this run (same file contents and options): "
                      "skipped (pass --overwrite to recompute).", highlight=False)
        console.print("summary: 0 done, 1 skipped, 0 failed")
        return
    res = summary.result
    _print_table(res)
    for p, r in res.failed:
        err_console.print(f"failed: {p}: {r}", highlight=False, markup=False)
    if res.gen_only or res.ref_only:
        err_console.print(
            f"[yellow]unpaired[/]: {len(res.gen_only)} only in {gen_dir}, {len(res.ref_only)} only in {ref_dir} "
            f"(listed in {out_dir}/report.md)", highlight=False)
        for p in (res.gen_only + res.ref_only)[:10]:
            err_console.print(f"  {p}", highlight=False, markup=False)
    console.print(f"summary: {summary.done} done, 0 skipped, {summary.failed} failed; report in {out_dir}/ "
                  "(report.md, report.html)", highlight=False)
    if not res.ran_any:
        raise fail(f"no metric could run: {summary.failed} files could not be read (listed above)"
                   if res.failed else "no metric could run", summary.exit_code)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _print_table(res) -> None:
    from rich.table import Table
    from rich.text import Text

    from opama_tools.eval.report import GROUP_TITLES, _ci, fmt, missing_lines, scored_line

    console.print(f"scored: {scored_line(res.scored, Path(res.config['gen_dir']).name)}", highlight=False, markup=False)
    if res.config.get("resized"):
        console.print(f"--resize: {len(res.config['resized'])} references resampled to the generated size", highlight=False)
    unit = "clips" if res.config.get("kind") == "video" else "pairs"
    t = Table(title=f"opama eval: {len(res.per_image)} {unit}")
    for h in ("metric", "value", "95% interval", "better", "n"):
        t.add_column(h, no_wrap=h not in ("95% interval", "metric"))
    group = None
    for m in res.metrics:
        if m.status != "ok":
            continue
        if m.group != group:
            group = m.group
            t.add_row(Text(GROUP_TITLES.get(group, group), style="bold"), "", "", "", "")
        t.add_row(Text("  " + m.label), fmt(m.value), _ci(vars(m)), m.better, str(m.n))
    console.print(t, soft_wrap=False)
    for line in missing_lines([vars(m) for m in res.metrics]):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _compare(reports: list[str], out: Optional[Path], names: Optional[str], paired: bool = False,
             bootstrap: int = 1000, seed: int = 0) -> None:
    from rich.table import Table
    from rich.text import Text

    from opama_tools.eval.run import run_compare

    name_list = [n.strip() for n in names.split(",")] if names is not None else None
    try:
        summary = run_compare(reports, out or Path("compare"), name_list, paired, bootstrap, seed)
    except ValueError as e:  # EvalInputError: one line naming the culprit
        raise fail(str(e), 2)
    disp, better = summary.display, summary.better
    t = Table(title="opama eval compare (* = best)")
    t.add_column("metric", overflow="fold", max_width=30)
    t.add_column("better", no_wrap=True)
    for c in disp.columns:
        t.add_column(Text(str(c)), overflow="fold", justify="right")
    for lab in disp.index:
        cells = [Text(str(x), style="bold green" if str(x).endswith("*") else "") for x in disp.loc[lab]]
        t.add_row(Text(str(lab)), better[lab], *cells)
    console.print(t, soft_wrap=False)
    if summary.paired is not None:
        _print_paired(summary.paired, summary.names[0])
    console.print("wrote " + ", ".join(str(p) for p in summary.written), highlight=False)


def _print_paired(df, baseline: str) -> None:
    from rich.table import Table

    from opama_tools.eval.report import fmt

    t = Table(title=f"paired: each method minus {baseline}, panorama by panorama (* = interval excludes 0)")
    for c in ("method", "metric", "better", "mean [95% interval]", "better on"):
        t.add_column(c, overflow="fold")
    for r in df.itertuples():
        cell = f"{fmt(r.mean, 3)} [{fmt(r.ci_low, 3)}, {fmt(r.ci_high, 3)}]" + ("*" if r.excludes_0 else "")
        t.add_row(r.method, r.metric, r.better, cell, f"{r.wins} of {r.n}")
    console.print(t, soft_wrap=False)
