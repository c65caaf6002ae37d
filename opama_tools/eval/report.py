"""Benchmark report of ``opama eval``, and ``opama eval compare``.

``write_report(result, out_dir)`` writes, each atomically:

* ``metrics.json``: what was scored (method, model id, procedure from the outpainting
  ``meta.json``), the table (value, 95% interval, method, network, status, what is
  missing), the pairing (unpaired and failed files), the options, and the job layer's done
  fields ``source`` and ``settings`` (:mod:`opama_tools.jobs`: the inputs' content signature
  and the settings key), which make it the run's done record;
* ``per_image.csv``: one row per evaluated pair (pandas; for videos one per clip, and
  ``per_frame.csv`` one per frame);
* ``report.md`` and ``report.html``: what was scored, the table of the metrics that ran
  (grouped: input region, generated region, whole panorama, text, seam and poles), one
  line for the metrics whose networks are missing, the sample grid and the plots;
* ``samples.png``: input (reference masked to the input view) / generated / reference;
* ``per_image.png``: histograms of the per-image metrics (matplotlib).

``compare_reports([...])`` reads several ``metrics.json`` and builds the side-by-side
table: one row per metric, one column per method, the best value of each row marked.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from opama_tools.eval import registry
from opama_tools.eval.registry import GROUP_TITLES
from opama_tools.io import atomic_path, atomic_write_text

__all__ = ["REPORT_FILES", "write_report", "fmt", "load_report", "compare_reports", "write_compare", "missing_lines",
           "scored_line", "best_mask", "GROUP_TITLES", "check_out_dir"]

REPORT_FILES = ("metrics.json", "per_image.csv", "report.md", "report.html")


def fmt(v: float | None, digits: int = 4) -> str:
    """Compact number for tables: ``digits`` significant digits, one decimal from 1000 up
    (``inf``/``nan``/``None`` spelled out)."""
    if v is None:
        return "—"
    if isinstance(v, float) and math.isnan(v):
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.1f}"


def _ci(m: dict) -> str:
    if m.get("ci_low") is None or m.get("ci_high") is None:
        return "—"
    lo, hi = m["ci_low"], m["ci_high"]
    if any(isinstance(x, float) and math.isnan(x) for x in (lo, hi)):
        return "—"
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _table_rows(metrics: list[dict]) -> list[list[str]]:
    """Rows of the metrics that ran (status ``ok``), in the result's (grouped) order."""
    return [[GROUP_TITLES.get(m.get("group", ""), ""), m["label"], fmt(m["value"]), _ci(m), m["better"], str(m["n"]),
             m.get("detail", "")] for m in metrics if m["status"] == "ok"]


HEAD = ["group", "metric", "value", "95% interval", "better", "n", "notes"]

_NEEDS_CAPTIONS_HINT = "--captions"


def missing_lines(metrics: list[dict]) -> list[str]:
    """One line for the metrics whose networks are missing, one for those that need captions,
    one per metric that failed."""
    weights = [m for m in metrics if m["status"] == "unavailable" and _NEEDS_CAPTIONS_HINT not in m.get("detail", "")]
    caps = [m for m in metrics if m["status"] == "unavailable" and _NEEDS_CAPTIONS_HINT in m.get("detail", "")]
    out = []
    if weights:
        out.append(f"{len(weights)} learned metric{'s' if len(weights) != 1 else ''} need weights: `opama doctor`")
    if caps:
        out.append(f"{', '.join(m['label'] for m in caps)}: need the reference captions (--captions CAPTIONS.jsonl)")
    out += [f"{m['label']} failed: {m.get('detail', '')}" for m in metrics if m["status"] == "failed"]
    return out


def scored_line(scored: dict, fallback: str) -> str:
    """``method X; model id Y; procedure Z`` from the outpainting meta.json summary."""
    parts = [f"{k.replace('_', ' ')} {scored[k]}" for k in ("method", "model_id", "procedure") if scored.get(k)]
    if not parts:
        return f"{fallback} (no meta.json beside the generated panoramas)"
    n = scored.get("with_meta")
    return "; ".join(parts) + (f" (from {n} meta.json)" if n else "")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _save_fig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")


def _sample_figure(rows, out: Path) -> bool:
    """``samples.png``: one row per ``(title, input mask, generated, reference)`` (uint8 ``(H, W, 3)``
    images, bool mask); columns input (the reference outside the mask greyed) / generated / reference."""
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 2.2 * len(rows)), squeeze=False)
    for i, (title, m, g, r) in enumerate(rows):
        inp = np.where(m[..., None], r, np.uint8(40))
        for j, (img, what) in enumerate(((inp, "input"), (g, "generated"), (r, "reference"))):
            axes[i, j].imshow(img)
            axes[i, j].set_axis_off()
            axes[i, j].set_title(f"{what}: {title}" if j == 1 else what, fontsize=8)
    fig.tight_layout()
    _save_fig(fig, out / "samples.png")
    plt.close(fig)
    return True


def _sample_grid(result, out: Path) -> bool:
    """``samples.png`` of an image evaluation: rows = samples (:func:`_sample_figure`)."""
    if not result.samples:
        return False
    from opama_tools.eval.evaluate import load_image
    from opama_tools.eval.metrics.panorama import input_coverage_mask

    cfg = result.config
    rows = []
    for rel, gen_path, ref_path in result.samples:
        try:
            g = load_image(gen_path)
            r = load_image(ref_path)
        except Exception:
            continue
        if r.shape != g.shape:  # --resize: show the reference at the generated size
            from PIL import Image

            r = np.asarray(Image.fromarray(r).resize((g.shape[1], g.shape[0]), Image.BILINEAR))
        m = input_coverage_mask(r.shape[0], r.shape[1], cfg["input_yaw"], cfg["input_pitch"], cfg["input_fov"],
                                (cfg["input_size"], cfg["input_size"])).numpy()
        rows.append((rel, m, g, r))
    return _sample_figure(rows, out)


def _video_sample_grid(result, out: Path) -> bool:
    """``samples.png`` of a video evaluation: one row per ``result.sample_frames`` entry ``(title, input
    mask, generated frame, reference frame)`` (:func:`_sample_figure`)."""
    return _sample_figure(getattr(result, "sample_frames", None) or [], out)


def _plots(result, out: Path) -> bool:
    """``per_image.png``: histograms of every numeric per-image column."""
    df = result.per_image
    cols = [c for c in df.columns if c not in ("image", "frames") and df[c].dtype.kind in "fi" and df[c].notna().any()]
    if not cols or len(df) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = len(cols)
    ncol = min(3, k)
    nrow = math.ceil(k / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 2.6 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        v = df[c].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=min(30, max(5, len(v) // 3)), color="#4477aa")
        ax.axvline(float(np.mean(v)), color="#cc3311", lw=1)
        ax.set_title(c, fontsize=9)
    for ax in list(axes.flat)[k:]:
        ax.set_axis_off()
    fig.tight_layout()
    _save_fig(fig, out / "per_image.png")
    plt.close(fig)
    return True


def check_out_dir(path: str | Path) -> None:
    """``ValueError`` naming ``path`` unless it is (or can become) a writable folder."""
    import os

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p}: exists and is not a folder")
    q = p
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        raise ValueError(f"--out {p}: {q} is a file, not a folder")
    if not os.access(q, os.W_OK | os.X_OK):
        raise ValueError(f"--out {p}: {q} is not writable")


def _video_line(cfg: dict) -> str:
    """The report's line about a video evaluation (pairs are clips)."""
    n = cfg.get("clips", 0)
    line = (f"videos: {n} clip{'' if n == 1 else 's'}, {cfg.get('frames', 0)} frames; input masks per frame "
            "(input_masks.npy, else input_mask.png, else the input view); per-frame metrics are means over "
            f"all frames, temporal ones over frame pairs; 95% interval: {cfg.get('interval') or 'bootstrap'}; "
            f"static pixels of the warping error: reference change <= {cfg.get('static_threshold')}; "
            "per_frame.csv has every frame")
    skipped = cfg.get("not_for_videos") or []
    return line + (f"; not computed for videos: {', '.join(skipped)}" if skipped else "")


def write_report(result, out_dir: str | Path) -> list[Path]:
    """Write every report file into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    written = []
    # metrics.json is the done record (it holds the inputs' signature and settings key): an older one is removed
    # first and the new one written last, so an interrupted write never passes for a finished run.
    if (out / "metrics.json").is_file():
        (out / "metrics.json").unlink()
    with atomic_path(out / "per_image.csv") as tmp:
        result.per_image.to_csv(tmp, index=False)
    written.append(out / "per_image.csv")
    per_frame = getattr(result, "per_frame", None)
    if per_frame is not None:  # videos: one row per frame
        with atomic_path(out / "per_frame.csv") as tmp:
            per_frame.to_csv(tmp, index=False)
    has_grid = _video_sample_grid(result, out) if per_frame is not None else _sample_grid(result, out)
    has_plot = _plots(result, out)
    for name, ok in (("samples.png", has_grid), ("per_image.png", has_plot), ("per_frame.csv", per_frame is not None)):
        if ok:
            written.append(out / name)
        elif (out / name).is_file():  # from an earlier run: would be stale
            (out / name).unlink()

    rows = _table_rows(data["metrics"])
    missing = missing_lines(data["metrics"])
    unavailable = [m for m in data["metrics"] if m["status"] == "unavailable"]
    cfg = result.config
    pairing = (
        f"{data['pairs']} pairs; {len(result.gen_only)} only in GEN_DIR; {len(result.ref_only)} only in REF_DIR; "
        f"{len(result.failed)} failed to load"
    )
    scored = scored_line(result.scored, Path(cfg["gen_dir"]).name)
    resized = cfg.get("resized") or []
    md = [
        "# opama eval report",
        "",
        f"- scored: {scored}",
        f"- generated: `{cfg['gen_dir']}`",
        f"- reference: `{cfg['ref_dir']}`",
        f"- {pairing}",
        f"- input view: yaw {cfg['input_yaw']}°, pitch {cfg['input_pitch']}°, fov {cfg['input_fov']}°, "
        f"{cfg['input_size']} px; cube faces: {cfg['faces']} x {cfg['face_size']} px; device {cfg['device']}; "
        f"{result.seconds:.1f} s",
    ]
    video = _video_line(cfg) if cfg.get("kind") == "video" else ""
    if video:
        md.append(f"- {video}")
    if resized:
        md.append(f"- **--resize**: {len(resized)} references resampled to the generated size")
    md += ["", _md_table(HEAD, rows) if rows else "_no metric ran_", ""]
    md += [f"- {line}" for line in missing]
    md += [
        "",
        "Learned metrics carry their network in brackets; the papers' FID is `FID[clip_vit_b_32]` and "
        "their SC uses all-mpnet-base-v2, so other networks give different metrics. OmniFID pools the side "
        "faces per face (each face one sample); OmniFID-pano averages the 4 side-face features per panorama.",
    ]
    if unavailable:
        md += ["", "## What the missing metrics need", ""]
        md += [f"- **{m['label']}**: {m['detail']}" for m in unavailable]
    if result.gen_only or result.ref_only or result.failed:
        md += ["", "## Unpaired / failed files", ""]
        md += [f"- only in GEN_DIR: `{p}`" for p in result.gen_only]
        md += [f"- only in REF_DIR: `{p}`" for p in result.ref_only]
        md += [f"- failed: `{p}`: {r}" for p, r in result.failed]
    if has_grid:
        md += ["", "## Samples (input / generated / reference)", "", "![samples](samples.png)"]
    if has_plot:
        md += ["", "## Per-image distributions", "", "![per-image](per_image.png)"]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    written.append(out / "report.md")

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>opama eval report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}</style></head><body>",
        "<h1>opama eval report</h1>",
        f"<p>scored: {html.escape(scored)}<br>generated: <code>{html.escape(cfg['gen_dir'])}</code><br>reference: "
        f"<code>{html.escape(cfg['ref_dir'])}</code><br>{html.escape(pairing)}"
        + (f"<br>{html.escape(video)}" if video else "")
        + (f"<br><b>--resize</b>: {len(resized)} references resampled to the generated size" if resized else "")
        + "</p>",
        _html_table(HEAD, rows),
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in missing) + "</ul>" if missing else "",
    ]
    if unavailable:
        parts.append("<h2>What the missing metrics need</h2><ul>" + "".join(
            f"<li><b>{html.escape(m['label'])}</b>: {html.escape(m['detail'])}</li>" for m in unavailable) + "</ul>")
    if result.gen_only or result.ref_only or result.failed:
        items = [f"only in GEN_DIR: {p}" for p in result.gen_only] + [f"only in REF_DIR: {p}" for p in result.ref_only]
        items += [f"failed: {p}: {r}" for p, r in result.failed]
        parts.append("<h2>Unpaired / failed files</h2><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
    if has_grid:
        parts.append("<h2>Samples (input / generated / reference)</h2><img src='samples.png' style='max-width:100%'>")
    if has_plot:
        parts.append("<h2>Per-image distributions</h2><img src='per_image.png' style='max-width:100%'>")
    parts.append("</body></html>")
    atomic_write_text(out / "report.html", "\n".join(parts) + "\n")
    written.append(out / "report.html")
    atomic_write_text(out / "metrics.json", json.dumps(data, indent=2, default=float) + "\n")
    written.append(out / "metrics.json")
    return written


def load_report(path: str | Path) -> dict:
    """``metrics.json`` of a report folder (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    data = json.loads(p.read_text())
    if "metrics" not in data:
        raise ValueError(f"{p}: not an opama eval metrics.json")
    return data


def _better_of(metrics_by_label: list[dict[str, dict]], label: str) -> str:
    """The registry's direction of ``label``; for a label it does not declare, what the reports say."""
    said = next((d[label]["better"] for d in metrics_by_label if label in d and d[label].get("better")), "")
    return registry.direction(label, said)


def best_mask(values: list[float], better: str) -> list[bool]:
    """Which of ``values`` are best for the direction ``better`` (lower | higher | 1.0); NaN never.

    Ties are all marked; nothing is marked with fewer than two finite values or an unknown direction.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    if ok.sum() < 2 or better not in registry.DIRECTIONS:
        return [False] * len(values)
    score = registry.badness(v, better)
    best = np.min(score[ok])
    return [bool(o and np.isclose(s_, best, rtol=1e-12, atol=0.0)) for o, s_ in zip(ok, score)]


def compare_reports(paths: list[str | Path], names: list[str] | None = None):
    """Side-by-side table of several reports: one row per metric, one column per method.

    ``names`` (one per report) default to the scored method of each report (from the
    outpainting ``meta.json``) or the report folder's name. Returns ``(display, values,
    better)``: a DataFrame of display strings with the best value per row marked ``*``,
    a DataFrame of floats (NaN where a metric did not run), and a Series with each row's
    direction (lower | higher | 1.0). Row order follows the first report, then metrics only
    later reports have. ``ValueError`` when the names do not match the reports one for one.
    """
    import pandas as pd

    if names is not None and len(names) != len(paths):
        raise ValueError(f"--names has {len(names)} name{'s' if len(names) != 1 else ''} for {len(paths)} reports")
    datas = [load_report(p) for p in paths]
    if names is None:
        names = []
        for p, d in zip(paths, datas):
            folder = Path(p).name if Path(p).is_dir() else Path(p).parent.name
            names.append(str(d.get("scored", {}).get("method") or folder))
        if len(set(names)) < len(names):
            names = [Path(p).name if Path(p).is_dir() else Path(p).parent.name for p in paths]
    if len(set(names)) < len(names):
        raise ValueError(f"--names: method names must differ, got {', '.join(names)}")
    by_label = [{m["label"]: m for m in d["metrics"]} for d in datas]
    labels: list[str] = []
    for d in datas:
        for m in d["metrics"]:
            if m["status"] == "ok" and m["label"] not in labels:
                labels.append(m["label"])
    vals = pd.DataFrame(
        [[by_label[j][lab]["value"] if lab in by_label[j] and by_label[j][lab]["status"] == "ok" else np.nan
          for j in range(len(paths))] for lab in labels],
        index=pd.Index(labels, name="metric"), columns=names, dtype=float,
    )
    # rows measured on the references are the same data for every method: nothing to mark
    better = pd.Series(["reference" if registry.on_reference(lab) else _better_of(by_label, lab) for lab in labels],
                       index=vals.index, name="better")
    disp = vals.copy().astype(object)
    for lab in labels:
        marks = best_mask(list(vals.loc[lab]), better[lab])
        for j, name in enumerate(names):
            v = vals.loc[lab, name]
            disp.loc[lab, name] = "—" if not np.isfinite(v) else fmt(float(v)) + ("*" if marks[j] else "")
    return disp, vals, better


def write_compare(display, values, better, out: str | Path) -> list[Path]:
    """``out.md`` (display table, best in bold) and ``out.csv`` (numbers + direction + best method)."""
    base = Path(out)
    if base.suffix in (".md", ".csv"):
        base = base.with_suffix("")
    head = ["metric", "better"] + [str(c) for c in display.columns]
    rows = []
    for lab in display.index:
        cells = [str(x) for x in display.loc[lab]]
        cells = [f"**{c[:-1]}**" if c.endswith("*") else c for c in cells]
        rows.append([lab, better[lab]] + cells)
    md = _md_table(head, rows) + "\n\nBest value per row in bold (`better`: lower, higher, or 1.0 = closest to 1).\n"
    csv = values.copy()
    csv.insert(0, "better", better)
    csv["best"] = [";".join(str(c) for c, b in zip(display.columns, display.loc[lab]) if str(b).endswith("*"))
                   for lab in display.index]
    atomic_write_text(base.with_suffix(".md"), md)
    with atomic_path(base.with_suffix(".csv")) as tmp:
        csv.to_csv(tmp)
    return [base.with_suffix(".md"), base.with_suffix(".csv")]
