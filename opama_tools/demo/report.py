"""The demo's one page, ``OUT/report.html``: what each stage produced, the comparison table
with bootstrap intervals, fast vs reference time, the training loss curve and a gallery
(input, outpainted panoramas with their drag-to-look viewers, reference).

It only reads what the stages wrote (``opama eval`` reports, outpainting ``meta.json``,
``runs/*/log.csv``); it computes no metric of its own, only the paired differences of the
reports' per-image values (:mod:`opama_tools.eval.paired`, as ``opama eval compare --paired``).
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Sequence

from opama_tools.eval import registry
from opama_tools.eval.report import best_mask, fmt, load_report, missing_lines
from opama_tools.io import atomic_path, atomic_write_text

__all__ = ["TRAINING_FREE", "METHOD_LABELS", "TRAINING_FREE_NOTE", "comparison_rows", "timing_rows", "write_demo_report", "significant_pairs", "paired_results", "paired_rows",
           "verdict", "verdicts", "PAIRED_KEYS", "VERDICT_KEY"]

TRAINING_FREE = "training-free-fast"
"""The training-free method's run (the demo's trained backbone without its conditioner)."""
METHOD_LABELS = {
    "input-only": "the input view pasted on a grey canvas (no model)",
    "trained-fast": "OPa-Ma, the tiny preset with its trained conditioner, fast procedure",
    "trained-reference": "the same model, the reference procedure",
    TRAINING_FREE: "SD-inpaint (no conditioner): the same trained backbone exported as a diffusers inpainting "
                   "folder and run as any Stable Diffusion inpainting checkpoint, fast procedure",
    "untrained-fast": "the tiny preset with random weights, fast procedure",
    "aog-trained-fast": "AOG-Net's conditioner trained on the same backbone, fast procedure",
}
"""What each of the demo's method names is (a legend under the table)."""
TRAINING_FREE_NOTE = (
    "The training-free row runs the demo's own text-conditioned tiny UNet, VAE and text encoder without the "
    "conditioner, through the path any SD inpainting checkpoint takes; its paired difference against trained "
    "OPa-Ma is what the conditioner adds here. At the demo's scale (a tiny random-initialised model, minutes of "
    "training on synthetic scenes, a handful of test panoramas) that is weak evidence either way, not a "
    "measurement of the conditioner against SD-2-inpainting.")
VERDICT_KEY = "gen_colour"
"""The metric the page's verdict is stated on (:func:`verdict`)."""
PAIRED_KEYS = (VERDICT_KEY, *(m.key for m in registry.METRICS if m.region == "generated" and not m.learned
                              and m.scope == "image" and m.key != VERDICT_KEY))
"""Weight-free per-image generated-region metrics compared panorama by panorama (:func:`paired_rows`),
the verdict's metric first."""


def comparison_rows(reports: dict[str, dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """``(labels, cells, better)`` of every metric that ran in any report: one row per metric,
    one cell ``value [lo, hi]`` per method (``—`` where it did not run), best value in bold."""
    names = list(reports)
    by = {n: {m["label"]: m for m in d["metrics"] if m["status"] == "ok"} for n, d in reports.items()}
    labels: list[str] = []
    for n in names:
        labels += [lab for lab in by[n] if lab not in labels]
    rows, better = [], []
    for lab in labels:
        ms = [by[n].get(lab) for n in names]
        # rows measured on the references are the same data for every method: nothing to mark
        direction = "reference" if registry.on_reference(lab) else registry.direction(
            lab, next((m.get("better", "") for m in ms if m), ""))
        vals = [float(m["value"]) if m and m.get("value") is not None else math.nan for m in ms]
        marks = best_mask(vals, direction)
        cells = []
        for m, v, best in zip(ms, vals, marks):
            if m is None or not math.isfinite(v):
                cells.append("—")
                continue
            ci = ""
            if m.get("ci_low") is not None and m.get("ci_high") is not None:
                ci = f" [{fmt(m['ci_low'], 3)}, {fmt(m['ci_high'], 3)}]"
            text = html.escape(fmt(v) + ci)
            cells.append(f"<b>{text}</b>" if best else text)
        rows.append(cells)
        better.append(direction)
    return labels, rows, better


def significant_pairs(reports: dict[str, dict], a: str, b: str) -> list[str]:
    """Metrics where method ``a`` beats ``b`` with non-overlapping 95% bootstrap intervals."""
    ma = {m["label"]: m for m in reports[a]["metrics"] if m["status"] == "ok"}
    mb = {m["label"]: m for m in reports[b]["metrics"] if m["status"] == "ok"}
    out = []
    for lab, x in ma.items():
        y = mb.get(lab)
        if y is None or None in (x.get("ci_low"), x.get("ci_high"), y.get("ci_low"), y.get("ci_high")):
            continue
        if registry.beats((x["ci_low"], x["ci_high"]), (y["ci_low"], y["ci_high"]),
                          registry.direction(lab, x.get("better", ""))):
            out.append(lab)
    return out


def paired_results(out: Path, reports: dict[str, dict], pairs: Sequence[tuple[str, str]], reps: int = 1000,
                   seed: int = 0) -> list[dict]:
    """One dict per ``(a, b)`` pair and :data:`PAIRED_KEYS` metric that both reports have: ``a``,
    ``b`` and the row of :func:`opama_tools.eval.paired.paired_table` (as ``opama eval compare b a
    --paired``): ``metric`` (label), ``key``, ``better``, ``n``, ``mean``, ``ci_low``, ``ci_high``
    (of ``a - b`` over the panoramas both scored), ``wins`` (panoramas where ``a`` is better) and
    ``excludes_0``. Reports are read from ``out/reports/NAME/``."""
    from opama_tools.eval.paired import paired_table

    rows = []
    for a, b in pairs:
        dirs = [out / "reports" / n for n in (b, a)]
        if a not in reports or b not in reports or not all((d / "per_image.csv").is_file() for d in dirs):
            continue
        df = paired_table(dirs, [b, a], reps=reps, seed=seed).set_index("key")
        for k in (k for k in PAIRED_KEYS if k in df.index):
            d = df.loc[k]
            rows.append(dict(a=a, b=b, key=k, metric=d["metric"], better=d["better"], n=int(d["n"]),
                             mean=float(d["mean"]), ci_low=float(d["ci_low"]), ci_high=float(d["ci_high"]),
                             wins=int(d["wins"]), excludes_0=bool(d["excludes_0"])))
    return rows


def paired_rows(out: Path, reports: dict[str, dict], pairs: Sequence[tuple[str, str]], reps: int = 1000,
                seed: int = 0, results: list[dict] | None = None) -> list[list[str]]:
    """The table of :func:`paired_results` (``results`` if already computed): ``a``, ``b``, the metric,
    ``mean(a - b) [95% interval]``, on how many panoramas ``a`` is better, and whether the interval
    excludes 0 on ``a``'s better side."""
    results = paired_results(out, reports, pairs, reps, seed) if results is None else results
    return [[d["a"], d["b"], d["metric"], f"{fmt(d['mean'], 3)} [{fmt(d['ci_low'], 3)}, {fmt(d['ci_high'], 3)}]",
             f"{d['wins']} of {d['n']}", "yes" if d["excludes_0"] else "no"] for d in results]


def verdict(d: dict) -> str:
    """The sentence a paired result (a dict of :func:`paired_results`) supports.

    ``a`` is better (or ``b`` is) only when the 95% interval of the mean difference ``a - b``
    lies wholly on that side of 0; otherwise the two are not distinguishable on these panoramas.
    Example: ``trained-fast vs input-only: colour distance (generated) paired difference -0.045
    [-0.072, -0.018], better on 5 of 6: trained-fast is closer to the references``.
    """
    m = registry.lookup(d["key"])
    closer = "closer to the references" if m is not None and m.region == "generated" else "better"
    head = (f"{d['a']} vs {d['b']}: {d['metric']} paired difference {fmt(d['mean'], 3)} "
            f"[{fmt(d['ci_low'], 3)}, {fmt(d['ci_high'], 3)}], better on {d['wins']} of {d['n']}")
    if not (math.isfinite(d["ci_low"]) and math.isfinite(d["ci_high"])):
        return f"{head}: not distinguishable (too few panoramas for an interval)"
    if registry.interval_better(d["ci_low"], d["ci_high"], d["better"]):
        return f"{head}: {d['a']} is {closer}"
    if registry.interval_better(-d["ci_high"], -d["ci_low"], d["better"]):
        return f"{head}: {d['b']} is {closer}"
    return f"{head}: not distinguishable (the interval includes 0)"


def verdicts(results: list[dict]) -> list[str]:
    """:func:`verdict` of every :data:`VERDICT_KEY` result, in order."""
    return [verdict(d) for d in results if d["key"] == VERDICT_KEY]


def timing_rows(out: Path, names: Sequence[str]) -> list[list[str]]:
    """Per outpainting run: panoramas, mean seconds and UNet passes per panorama (from meta.json)."""
    rows = []
    for name in names:
        metas = []
        for f in sorted((out / "gen" / name).glob("*/meta.json")):
            try:
                metas.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        if not metas:
            continue
        secs = [m.get("seconds", {}).get("panorama", math.nan) for m in metas]
        passes = [m.get("unet_passes", math.nan) for m in metas]
        proc = metas[0].get("procedure", "?")
        sched = metas[0].get("scheduler", "")
        steps = metas[0].get("steps", "")
        rows.append([name, str(proc), f"{sched} {steps}".strip(), str(len(metas)),
                     f"{sum(secs) / len(secs):.2f}", f"{sum(passes) / len(passes):.0f}"])
    return rows


def _loss_plot(out: Path, dst: Path) -> bool:
    log = out / "runs" / "opama" / "log.csv"
    if not log.is_file():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(log, newline="") as f:
        for r in csv.DictReader(f):
            for key, col in (("train loss", "loss"), ("validation loss", "val_loss")):
                phase = r.get("phase", "train")
                if phase != "train" or not r.get(col):
                    continue
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(r["step"]))
                ys.append(float(r[col]))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 3))
    for key, (xs, ys) in series.items():
        if key == "train loss" and len(ys) > 20:  # running mean: the per-step loss is noisy
            k = max(len(ys) // 30, 5)
            ys = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
            key = f"train loss (running mean of {k})"
        ax.plot(xs, ys, label=key, marker="o" if "validation" in key else None)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (epsilon)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return True


def _overview_figure(out: Path, names: Sequence[str], dst: Path, rows: int = 2) -> bool:
    """One picture of the first ``rows`` test panoramas: the input on the canvas (the input-only run), each
    method of ``names`` that has a panorama, and the reference; ``dst`` (PNG). False when nothing to show."""
    refs = sorted((out / "png" / "test").glob("*.png"))[:rows]
    cols = [("input view on the canvas", lambda stem: out / "gen" / "input-only" / f"{stem}.png")]
    cols += [(n, lambda stem, n=n: out / "gen" / n / stem / "pano.png") for n in names]
    cols.append(("reference (held out)", lambda stem: out / "png" / "test" / f"{stem}.png"))
    cols = [(t, f) for t, f in cols if refs and all(f(r.stem).is_file() for r in refs)]
    if not refs or len(cols) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from opama_tools.images import read_ldr, to_uint8

    fig, axes = plt.subplots(len(refs), len(cols), figsize=(2.6 * len(cols), 1.45 * len(refs)), squeeze=False)
    for i, ref in enumerate(refs):
        for j, (title, f) in enumerate(cols):
            ax = axes[i][j]
            ax.imshow(to_uint8(read_ldr(f(ref.stem))))
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout(pad=0.3)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], escape: bool = True) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c) if escape else c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def write_demo_report(out: str | Path, names: Sequence[str], times: dict[str, float], notes: dict[str, str],
                      settings: dict) -> Path:
    """Write ``out/report.html`` (and ``out/report_assets/``: ``loss.png``, the training loss, and
    ``overview.png``, two test panoramas by every method); returns the page's path."""
    out = Path(out)
    reports = {n: load_report(out / "reports" / n) for n in names if (out / "reports" / n / "metrics.json").is_file()}
    labels, cells, better = comparison_rows(reports)
    # rows scored on the references themselves are the same for every method: one line for them
    ref_rows = [(lab, c) for lab, b, c in zip(labels, better, cells) if b == "reference"]
    cmp_rows = [[html.escape(lab), html.escape(b)] + c for lab, b, c in zip(labels, better, cells)
                if b != "reference"]
    ref_line = ("On the references themselves: " + "; ".join(f"{html.escape(lab)} {c[0]}" for lab, c in ref_rows)
                if ref_rows else "")
    missing = missing_lines(next(iter(reports.values()))["metrics"]) if reports else []
    sig = []
    for a in [n for n in names if n.startswith("trained")]:
        for b in ("untrained-fast", "input-only"):
            if a in reports and b in reports:
                labs = significant_pairs(reports, a, b)
                sig.append(f"{a} beats {b} with non-overlapping 95% intervals on: "
                           + (", ".join(labs) if labs else "no metric"))
    trained = [n for n in names if n.startswith("trained")]
    pairs = [(a, b) for a in trained for b in ("input-only", "untrained-fast")]
    free = TRAINING_FREE in reports
    if free:  # what the conditioner adds over its own backbone, and the backbone alone against grey
        pairs += [("trained-fast", TRAINING_FREE), (TRAINING_FREE, "input-only")]
    paired_res = paired_results(out, reports, pairs, reps=int(settings.get("bootstrap", 1000)))
    paired = paired_rows(out, reports, [], results=paired_res)
    verdict_lines = verdicts(paired_res)
    gen_names = [n for n in names if n != "input-only"]
    timing = timing_rows(out, gen_names)
    has_loss = _loss_plot(out, out / "report_assets" / "loss.png")
    shown = [n for n in ("trained-fast", TRAINING_FREE, "untrained-fast") if n in gen_names]
    has_overview = _overview_figure(out, shown, out / "report_assets" / "overview.png")
    stage_rows = [[k, f"{v:.1f}", notes.get(k, "")] for k, v in times.items()]

    gallery = []
    for ref in sorted((out / "png" / "test").glob("*.png")):
        stem = ref.stem
        figs = [f'<figure><img src="inputs/{html.escape(ref.name)}" class="in"><figcaption>input (fov 90)</figcaption></figure>']
        for n in gen_names:
            p = out / "gen" / n / stem / "pano.png"
            if p.is_file():
                viewer = out / "gen" / n / stem / "index.html"
                img = f'<img src="gen/{html.escape(n)}/{html.escape(stem)}/pano.png">'
                if viewer.is_file():
                    img = f'<a href="gen/{html.escape(n)}/{html.escape(stem)}/index.html" title="drag to look around">{img}</a>'
                figs.append(f"<figure>{img}<figcaption>{html.escape(n)}</figcaption></figure>")
        figs.append(f'<figure><img src="png/test/{html.escape(ref.name)}"><figcaption>reference</figcaption></figure>')
        gallery.append(f"<h3>{html.escape(stem)}</h3><div class='row'>{''.join(figs)}</div>")
    first_viewer = next((f"gen/{n}/{p.parent.name}/index.html" for n in gen_names
                         for p in sorted((out / "gen" / n).glob("*/index.html"))[:1]), None)

    css = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
           "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}.row{display:flex;gap:8px;"
           "flex-wrap:wrap}figure{margin:0}figure img{height:120px}figure img.in{height:120px}"
           "figcaption{font-size:12px;color:#444}iframe{width:100%;height:360px;border:0}")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>opama demo</title><style>{css}</style></head><body>",
        "<h1>opama demo: text-guided 360° outpainting, end to end</h1>",
        "<p>Synthetic HDR panoramas, the <b>tiny</b> randomly initialised preset trained for minutes on a CPU. "
        "This shows every stage working together; it is <b>not</b> evidence about OPa-Ma's quality at full scale.</p>",
        *(["<h2>Verdict</h2>",
           "<p>From the paired comparison below (per test panorama, a's value minus b's; a side wins only when "
           "the 95% interval of the mean difference excludes 0):</p>",
           "<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdict_lines) + "</ul>"]
          if verdict_lines else []),
        *([f"<p>{html.escape(TRAINING_FREE_NOTE)}</p>"] if free else []),
        "<h2>Stages</h2>", _table(["stage", "seconds", "what it produced"], stage_rows),
        "<h2>Comparison on the held-out test panoramas</h2>",
        "<p>Mean over panoramas with its 95% bootstrap interval; best value per row in bold "
        "(<i>better</i>: lower, higher, or 1.0 = closest to 1).</p>",
        "<p>" + "; ".join(f"<b>{html.escape(n)}</b>: {html.escape(METHOD_LABELS[n])}" for n in reports
                          if n in METHOD_LABELS) + ".</p>",
        _table(["metric", "better", *reports.keys()], cmp_rows, escape=False),
        f"<p>{ref_line}</p>" if ref_line else "",
        "".join(f"<p>{html.escape(s)}</p>" for s in sig),
        *(["<h3>Paired, panorama by panorama</h3>",
           "<p>Per test panorama, method a's value minus method b's; the mean difference with its 95% bootstrap "
           "interval over panoramas. The scenes' own spread, which widens both unpaired intervals above, "
           "cancels here.</p>",
           _table(["a", "b", "metric", "mean a − b [95% interval]", "a better on", "interval excludes 0"], paired)]
          if paired else []),
        "".join(f"<p><i>{html.escape(m)}</i></p>" for m in missing),
        "<h2>Time per panorama</h2>",
        _table(["run", "procedure", "solver, steps", "panoramas", "seconds / panorama", "UNet passes / panorama"], timing),
    ]
    from opama_tools.demo.video_stage import video_section

    parts += video_section(out)
    if has_overview:
        parts += ["<h2>At a glance</h2>", "<img src='report_assets/overview.png' style='max-width:100%'>"]
    if has_loss:
        parts += ["<h2>Training loss</h2>", "<img src='report_assets/loss.png'>"]
    if first_viewer:
        parts += ["<h2>Look around</h2>", f"<iframe src='{html.escape(first_viewer)}'></iframe>",
                  "<p>Click any panorama below to open its own viewer (drag to look around).</p>"]
    parts += ["<h2>Gallery</h2>", *gallery,
              f"<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=2))}</pre></body></html>"]
    page = out / "report.html"
    atomic_write_text(page, "\n".join(parts))
    return page
