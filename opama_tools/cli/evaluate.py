"""``opama eval``: parse arguments, delegate to :mod:`opama_tools.eval.evaluate` and :mod:`opama_tools.eval.report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from opama_tools.cli.app import app, console, err_console, fail

HELP = (
    "Metrics (FID, KID, IS, OmniFID, FID-h, FAED, CLIP score, LPIPS, SC, PSNR/SSIM of the input region, the "
    "generated region on its own, seam, DS, pole) and a benchmark report.\n\n"
    "Two forms: `opama eval GEN_DIR REF_DIR OPTIONS` evaluates generated panoramas (GEN_DIR/NAME.png, or "
    "GEN_DIR/NAME/pano.png + meta.json as `opama outpaint` writes them, paired with REF_DIR/NAME.png) and writes "
    "metrics.json, per_image.csv, report.md and report.html into --out; `opama eval compare REPORT_A REPORT_B ...` "
    "prints the side-by-side table (metrics as rows, methods as columns, best marked *) and writes it as "
    "Markdown and CSV (--out, default compare); with --paired also each method minus the first report, "
    "panorama by panorama (the scenes' spread cancels), as BASE_paired.csv. Networks are never downloaded: metrics whose weights are missing "
    "are counted in one line (see `opama doctor`).\n\n"
    "Example: opama eval out/generated data/laval_png --captions captions.jsonl --metrics fid,clip,region,ds --out report\n\n"
    "Example: opama eval compare report_aognet report_opama --names AOG-Net,OPa-Ma --paired --out table"
)


@app.command(name="eval", help=HELP, no_args_is_help=True)
def evaluate(
    paths: List[str] = typer.Argument(..., metavar="GEN_DIR REF_DIR | compare REPORT...", help="Folders to compare, or `compare` and report folders."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: report), or the compare table's base name (default: compare)."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="Reference captions JSONL {image, caption} (CLIP score, SC)."),
    gen_captions: Optional[Path] = typer.Option(None, "--gen-captions", help="Captions of the generated panoramas JSONL (SC without a local BLIP)."),
    metrics: str = typer.Option("all", "--metrics", help="Comma list of fid,kid,is,omnifid,fidh,faed,clip,lpips,sc,psnr,ssim,region,seam,ds,pole (or all)."),
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
    gen_dir, ref_dir = Path(paths[0]), Path(paths[1])
    for d in (gen_dir, ref_dir):
        if not d.is_dir():
            raise fail(f"{d}: not a folder", 2)
    for f in (captions, gen_captions):
        if f is not None and not f.is_file():
            raise fail(f"{f}: caption file not found", 2)

    from opama_tools.eval.evaluate import EvalInputError, EvalOptions, collect_inputs, evaluate as run_eval, parse_metrics
    from opama_tools.eval.report import check_out_dir, write_report

    out_dir = out or Path("report")
    try:
        check_out_dir(out_dir)
        opts = EvalOptions(
            metrics=parse_metrics(metrics), faces=faces, face_size=face_size,
            captions=str(captions) if captions else None, gen_captions=str(gen_captions) if gen_captions else None,
            inception_weights=inception_weights, fid_clip_weights=fid_clip_weights, clip_weights=clip_weights,
            lpips_weights=lpips_weights, faed_weights=faed_weights, faed_height=faed_height,
            sentence_model=sentence_model, captioner=captioner, device=device, input_fov=input_fov,
            input_size=input_size, resize=resize, bootstrap=bootstrap, set_bootstrap=set_bootstrap, seed=seed,
        )
        opts.validate()
        inputs = collect_inputs(gen_dir, ref_dir, opts, method)
    except ValueError as e:  # EvalInputError and option errors: one line naming the culprit
        raise fail(str(e), 2)
    if not overwrite and _same_run_done(out_dir, inputs.fingerprint):
        console.print(f"{out_dir}/metrics.json already holds this run (same files, sizes, mtimes and options): "
                      "skipped (pass --overwrite to recompute).", highlight=False)
        console.print("summary: 0 done, 1 skipped, 0 failed")
        return

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.description}"), console=err_console, transient=True)
    task = prog.add_task("", total=len(inputs.pairs))

    def on_progress(done: int, total: int, name: str) -> None:
        if not prog.live.is_started:  # started on the first pair: an early error prints alone
            prog.start()
        prog.update(task, completed=done, total=total, description=name)

    try:
        res = run_eval(gen_dir, ref_dir, opts, progress=on_progress, inputs=inputs,
                       log=lambda m: err_console.print(f"note: {m}", highlight=False, markup=False))
    except EvalInputError as e:
        raise fail(str(e), 2)
    finally:
        if prog.live.is_started:
            prog.stop()
    try:
        write_report(res, out_dir)
    except OSError as e:
        raise fail(f"--out {out_dir}: cannot write the report ({e.strerror or e})", 2)
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
    console.print(f"summary: {n_done} done, 0 skipped, {len(res.failed)} failed; report in {out_dir}/ (report.md, report.html)",
                  highlight=False)
    if not res.ran_any:
        raise fail("no metric could run (see the line above)", 1)
    if res.failed:
        raise typer.Exit(1)


def _same_run_done(out_dir: Path, fingerprint: str) -> bool:
    """True when ``out_dir/metrics.json`` was computed from the same inputs (content key) and options."""
    p = out_dir / "metrics.json"
    if not p.is_file():
        return False
    try:
        cfg = json.loads(p.read_text()).get("config", {})
    except Exception:
        return False
    return cfg.get("fingerprint") == fingerprint


def _print_table(res) -> None:
    from rich.table import Table
    from rich.text import Text

    from opama_tools.eval.report import GROUP_TITLES, _ci, fmt, missing_lines, scored_line

    console.print(f"scored: {scored_line(res.scored, Path(res.config['gen_dir']).name)}", highlight=False, markup=False)
    if res.config.get("resized"):
        console.print(f"--resize: {len(res.config['resized'])} references resampled to the generated size", highlight=False)
    t = Table(title=f"opama eval: {len(res.per_image)} pairs")
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

    from opama_tools.eval.paired import paired_table
    from opama_tools.eval.report import check_out_dir, compare_reports, write_compare

    if len(reports) < 1:
        raise fail("compare needs at least one report folder", 2)
    for r in reports:
        p = Path(r)
        if not ((p / "metrics.json").is_file() or (p.is_file() and p.name.endswith(".json"))):
            raise fail(f"{r}: no metrics.json (not an opama eval report)", 2)
    name_list = [n.strip() for n in names.split(",")] if names is not None else None
    base = out or Path("compare")
    try:
        check_out_dir(base.parent if str(base.parent) else Path("."))
        disp, vals, better = compare_reports(reports, name_list)
        pairs = paired_table(reports, list(disp.columns), reps=bootstrap, seed=seed) if paired else None
    except ValueError as e:
        raise fail(str(e), 2)
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise fail(f"cannot read the reports: {e}", 2)
    t = Table(title="opama eval compare (* = best)")
    t.add_column("metric", overflow="fold", max_width=30)
    t.add_column("better", no_wrap=True)
    for c in disp.columns:
        t.add_column(Text(str(c)), overflow="fold", justify="right")
    for lab in disp.index:
        cells = [Text(str(x), style="bold green" if str(x).endswith("*") else "") for x in disp.loc[lab]]
        t.add_row(Text(str(lab)), better[lab], *cells)
    console.print(t, soft_wrap=False)
    try:
        paths = write_compare(disp, vals, better, base)
    except OSError as e:
        raise fail(f"--out {base}: cannot write ({e.strerror or e})", 2)
    if pairs is not None:
        paths.append(_write_paired(pairs, list(disp.columns)[0], base))
    console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False)


def _write_paired(df, baseline: str, base: Path) -> Path:
    from rich.table import Table

    from opama_tools.eval.report import fmt
    from opama_tools.io import atomic_path

    t = Table(title=f"paired: each method minus {baseline}, panorama by panorama (* = interval excludes 0)")
    for c in ("method", "metric", "better", "mean [95% interval]", "better on"):
        t.add_column(c, overflow="fold")
    for r in df.itertuples():
        cell = f"{fmt(r.mean, 3)} [{fmt(r.ci_low, 3)}, {fmt(r.ci_high, 3)}]" + ("*" if r.excludes_0 else "")
        t.add_row(r.method, r.metric, r.better, cell, f"{r.wins} of {r.n}")
    console.print(t, soft_wrap=False)
    dst = base.parent / f"{base.name.removesuffix('.md').removesuffix('.csv')}_paired.csv"
    try:
        with atomic_path(dst) as tmp:
            df.to_csv(tmp, index=False)
    except OSError as e:
        raise fail(f"--out {base}: cannot write ({e.strerror or e})", 2)
    return dst
