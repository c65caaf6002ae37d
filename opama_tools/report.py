"""Benchmark report of ``opama eval``, and ``opama eval compare``.

``write_report(result, out_dir)`` writes, each atomically:

* ``metrics.json``: the table (value, 95% interval, method, network, status, what is
  missing), the pairing (unpaired and failed files) and the options;
* ``per_image.csv``: one row per evaluated pair (pandas);
* ``report.md`` and ``report.html``: the table, notes on unavailable metrics, the
  sample grid and the plots;
* ``samples.png``: input (reference masked to the input view) / generated / reference;
* ``per_image.png``: histograms of the per-image metrics (matplotlib).

``compare_reports([...])`` reads several ``metrics.json`` and builds the paper-style
side-by-side table (one row per method, one column per metric).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from opama_tools.io import atomic_path, atomic_write_text

__all__ = ["REPORT_FILES", "write_report", "fmt", "load_report", "compare_reports", "write_compare"]

REPORT_FILES = ("metrics.json", "per_image.csv", "report.md", "report.html")


def fmt(v: float | None, digits: int = 4) -> str:
    """Compact number for tables (``inf``/``nan``/``None`` spelled out)."""
    if v is None:
        return "—"
    if isinstance(v, float) and math.isnan(v):
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"


def _ci(m: dict) -> str:
    if m.get("ci_low") is None or m.get("ci_high") is None:
        return "—"
    lo, hi = m["ci_low"], m["ci_high"]
    if any(isinstance(x, float) and math.isnan(x) for x in (lo, hi)):
        return "—"
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _table_rows(metrics: list[dict]) -> list[list[str]]:
    rows = []
    for m in metrics:
        if m["status"] == "ok":
            rows.append([m["label"], fmt(m["value"]), _ci(m), m["ci_method"], m["better"], str(m["n"]), m.get("detail", "")])
        else:
            rows.append([m["label"], m["status"], "", "", m["better"], "", m.get("detail", "")])
    return rows


HEAD = ["metric", "value", "95% interval", "interval", "better", "n", "notes"]


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


def _sample_grid(result, out: Path) -> bool:
    """``samples.png``: rows = samples; columns = input (masked reference) / generated / reference."""
    if not result.samples:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from opama_tools.evaluate import load_image
    from opama_tools.metrics.panorama import input_coverage_mask

    cfg = result.config
    n = len(result.samples)
    fig, axes = plt.subplots(n, 3, figsize=(12, 2.2 * n), squeeze=False)
    for i, rel in enumerate(result.samples):
        try:
            g = load_image(Path(cfg["gen_dir"]) / rel)
            r = load_image(Path(cfg["ref_dir"]) / rel)
        except Exception:
            continue
        m = input_coverage_mask(r.shape[0], r.shape[1], cfg["input_yaw"], cfg["input_pitch"], cfg["input_fov"],
                                (cfg["input_size"], cfg["input_size"])).numpy()
        inp = np.where(m[..., None], r, np.uint8(40))
        for j, (img, title) in enumerate(((inp, "input"), (g, "generated"), (r, "reference"))):
            axes[i, j].imshow(img)
            axes[i, j].set_axis_off()
            axes[i, j].set_title(f"{title}: {rel}" if j == 1 else title, fontsize=8)
    fig.tight_layout()
    _save_fig(fig, out / "samples.png")
    plt.close(fig)
    return True


def _plots(result, out: Path) -> bool:
    """``per_image.png``: histograms of every numeric per-image column."""
    df = result.per_image
    cols = [c for c in df.columns if c != "image" and df[c].dtype.kind in "fi" and df[c].notna().any()]
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


def write_report(result, out_dir: str | Path) -> list[Path]:
    """Write every report file into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    written = []
    atomic_write_text(out / "metrics.json", json.dumps(data, indent=2, default=float) + "\n")
    written.append(out / "metrics.json")
    with atomic_path(out / "per_image.csv") as tmp:
        result.per_image.to_csv(tmp, index=False)
    written.append(out / "per_image.csv")
    has_grid = _sample_grid(result, out)
    has_plot = _plots(result, out)
    written += [out / p for p, ok in (("samples.png", has_grid), ("per_image.png", has_plot)) if ok]

    rows = _table_rows(data["metrics"])
    unavailable = [m for m in data["metrics"] if m["status"] == "unavailable"]
    pairing = (
        f"{data['pairs']} pairs; {len(result.gen_only)} only in GEN_DIR; {len(result.ref_only)} only in REF_DIR; "
        f"{len(result.failed)} failed to load"
    )
    md = [
        "# opama eval report",
        "",
        f"- generated: `{result.config['gen_dir']}`",
        f"- reference: `{result.config['ref_dir']}`",
        f"- {pairing}",
        f"- cube faces: {result.config['faces']} x {result.config['face_size']} px; device {result.config['device']}; "
        f"{result.seconds:.1f} s",
        "",
        _md_table(HEAD, rows),
        "",
        "Learned metrics carry their network in brackets; the papers' FID is `FID[clip_vit_b_32]` and "
        "their SC uses all-mpnet-base-v2, so other networks give different metrics.",
    ]
    if unavailable:
        md += ["", "## Unavailable metrics", ""]
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
        f"<p>generated: <code>{html.escape(result.config['gen_dir'])}</code><br>reference: "
        f"<code>{html.escape(result.config['ref_dir'])}</code><br>{html.escape(pairing)}</p>",
        _html_table(HEAD, rows),
    ]
    if unavailable:
        parts.append("<h2>Unavailable metrics</h2><ul>" + "".join(
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


def compare_reports(paths: list[str | Path], names: list[str] | None = None):
    """Side-by-side table: one row per report, one column per metric label (``value`` or status).

    Returns ``(pandas.DataFrame of display strings, pandas.DataFrame of floats)``; the
    column order follows the first report, then metrics only later reports have.
    """
    import pandas as pd

    labels: list[str] = []
    disp, vals, idx = [], [], []
    for i, p in enumerate(paths):
        d = load_report(p)
        name = names[i] if names and i < len(names) else Path(p).name if Path(p).is_dir() else Path(p).parent.name
        idx.append(name)
        drow, vrow = {}, {}
        for m in d["metrics"]:
            if m["label"] not in labels:
                labels.append(m["label"])
            if m["status"] == "ok":
                ci = _ci(m)
                drow[m["label"]] = fmt(m["value"]) + ("" if ci == "—" else f" {ci}")
                vrow[m["label"]] = m["value"]
            else:
                drow[m["label"]] = m["status"]
                vrow[m["label"]] = float("nan")
        disp.append(drow)
        vals.append(vrow)
    d_df = pd.DataFrame(disp, index=idx).reindex(columns=labels).fillna("—")
    v_df = pd.DataFrame(vals, index=idx).reindex(columns=labels)
    d_df.index.name = v_df.index.name = "method"
    return d_df, v_df


def write_compare(display, values, out: str | Path) -> list[Path]:
    """``out`` + ``.md`` (display table) and ``.csv`` (numbers); returns the paths."""
    base = Path(out)
    if base.suffix in (".md", ".csv"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    md = _md_table(["method"] + list(display.columns), [[i] + list(r) for i, r in zip(display.index, display.values)])
    atomic_write_text(base.with_suffix(".md"), md + "\n")
    with atomic_path(base.with_suffix(".csv")) as tmp:
        values.to_csv(tmp)
    return [base.with_suffix(".md"), base.with_suffix(".csv")]
