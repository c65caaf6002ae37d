"""The demo's video stage (``opama demo --video``): synthetic 360-degree clips outpainted as videos.

1. ``video/data``: synthetic outdoor clips (a moving box, a moving sun, a turning camera;
   :func:`opama_tools.data.synthetic_video.generate_video_dataset`) at the demo's canvas size:
   reference equirect videos, the NFoV input clips and their trajectories.
2. ``video/gen/temporal`` and ``video/gen/per-frame``: the demo's trained OPa-Ma model (``fast``)
   on every clip, with the temporal method (:mod:`opama_model.video_pipeline`, its defaults) and
   with the per-frame baseline (every frame a full panorama, the same seed: ``--independent``),
   through :func:`opama_tools.outpaint.run_outpaint` (``lossless``: ``pano.mkv`` is scored).
3. ``video/reports/METHOD``: :func:`opama_tools.eval.run.run_eval` against the reference videos
   (flicker and warping error of the generated region beside the reference's own, input-border
   continuity, per-frame image metrics), and ``video/results.md``: the table side by side with the
   UNet passes per frame after the first relative to a full panorama.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["VIDEO_METHODS", "stage_video", "video_table", "video_section"]

VIDEO_METHODS: tuple[tuple[str, bool], ...] = (("temporal", False), ("per-frame", True))
"""``(name, independent)`` of the video stage's two outpainting runs."""

TABLE_METRICS: tuple[str, ...] = ("flicker", "flicker_ref", "warp_error", "warp_error_ref", "border", "gen_colour")
"""Report keys of the video table, in order (declared in :mod:`opama_tools.eval.registry`)."""


def _clip_batches(data: Path, root: Path) -> list[tuple[str, Path]]:
    """One single-row batch CSV per clip of ``data/video_batch.csv`` (absolute paths), so the clips
    of the slow per-frame baseline run in parallel processes; returns ``(name, csv)``."""
    with open(data / "video_batch.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        row = dict(row, image=str((data / row["image"]).resolve()),
                   trajectory=str((data / row["trajectory"]).resolve()))
        path = root / "batches" / f"{row['name']}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            w.writerow(row)
        out.append((row["name"], path))
    return out


def stage_video(r: Any) -> str:
    """Run the video stage for the demo run ``r`` (its settings ``r.s``, folder ``r.out``); returns its line."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from opama_tools.demo import run as demo

    s = r.s
    root = r.out / "video"
    data = root / "data"
    names = demo.write_synthetic_video(data, n=s.video_clips, frames=s.video_frames, height=s.height,
                                       seed=s.seed + 200_000, kind="outdoor")
    model = str(r.out / "runs" / "opama" / "model")
    gen = root / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    settings = demo._outpaint_settings(r, "fast")
    jobs = []
    batches = _clip_batches(data, root)
    for method, independent in sorted(VIDEO_METHODS, key=lambda m: not m[1]):  # the slow baseline first
        for name, batch in batches:
            job = f"{method}/{name}"
            jobs.append((job, demo._outpaint_job, (str(gen / f"{method}-{name}.log"), str(batch), str(gen / method),
                                                   model, dict(settings, lossless=True, independent=independent))))

    def finished() -> int:
        return sum(len(list((gen / m).glob("*/meta.json"))) for m, _ in VIDEO_METHODS)

    with Progress(TextColumn("[bold]video outpaint"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=demo.console,
                  transient=False) as bar:
        task = bar.add_task("video", total=len(jobs), info="")
        try:
            demo._run_pool(jobs, workers=max(1, min(len(jobs), demo._cores())), threads=1, on_message=lambda m: None,
                           on_tick=lambda running: bar.update(task, completed=finished(), info=", ".join(running)),
                           logs={j[0]: Path(j[2][0]) for j in jobs})
        except demo.DemoError as e:
            raise demo.DemoError(f"demo stage video: {e}") from None
        bar.update(task, completed=finished(), info="")
    reports = {}
    for method, _ in VIDEO_METHODS:
        reports[method] = _eval_video(r, gen / method, data / "refs", root / "reports" / method, method)
    table = video_table(reports, gen)
    from opama_tools.io import atomic_write_text

    atomic_write_text(root / "results.md", table)
    demo.console.print(table, highlight=False, markup=False)
    return (f"{len(names)} synthetic clips of {s.video_frames} frames outpainted with the temporal method and "
            f"per frame, scored against the reference videos: {root / 'results.md'}")


def _eval_video(r: Any, gen: Path, ref: Path, rep: Path, name: str) -> Path:
    from opama_tools.demo import run as demo
    from opama_tools.eval.evaluate import EvalOptions
    from opama_tools.eval.run import run_eval

    try:
        res = run_eval(gen, ref, rep, EvalOptions(bootstrap=r.s.bootstrap), method=name)
    except ValueError as e:
        raise demo.DemoError(f"demo stage video: eval {name}: {e}") from None
    if not res.skipped and res.exit_code:
        raise demo.DemoError(f"demo stage video: eval {name}: see {rep / 'report.md'}")
    return rep


def _metric_values(report: Path) -> dict[str, dict]:
    """``{key: {"value", "ci"}}`` of a report's ``metrics.json``."""
    meta = json.loads((report / "metrics.json").read_text())
    out = {}
    for m in meta.get("metrics", []):
        if m.get("value") is not None:
            out[m["key"]] = m
    return out


def _pass_ratio(folder: Path) -> tuple[float, float]:
    """Mean over clips of the mean UNet passes per frame after the first / a full panorama's, and
    the mean seconds per frame."""
    ratios, secs = [], []
    for path in sorted(folder.glob("*/meta.json")):
        meta = json.loads(path.read_text())
        v = meta["video"]
        ratios.append(v["mean_pass_ratio_after_first"] or 0.0)
        secs.append(meta["seconds"].get("video", 0.0) / max(1, v["frames"]))
    n = max(1, len(ratios))
    return sum(ratios) / n, sum(secs) / n


def video_table(reports: dict[str, Path], gen: Path) -> str:
    """A markdown table of the video stage: one row per method, the metrics of :data:`TABLE_METRICS`
    (mean [95% interval]) and the UNet passes per frame after the first / a full panorama's."""
    from opama_tools.eval import registry

    head = ["method", *(registry.lookup(k).label for k in TABLE_METRICS), "UNet passes / frame (× full)",
            "s / frame"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, rep in reports.items():
        vals = _metric_values(rep)
        cells = [method]
        for k in TABLE_METRICS:
            m = vals.get(k)
            if m is None:
                cells.append("—")
                continue
            lo, hi = m.get("ci_low"), m.get("ci_high")
            cell = f"{m['value']:.4g}"
            if lo is not None and hi is not None:
                cell += f" [{lo:.4g}, {hi:.4g}]"
            cells.append(cell)
        ratio, secs = _pass_ratio(gen / method)
        cells += [f"{ratio:.3f}", f"{secs:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


VIDEO_NOTE = (
    "Synthetic outdoor clips (a box moving across the input view, the sun turning and sinking, the camera "
    "turning; world-fixed panoramas), outpainted by the trained tiny model: the temporal method (frame 0 a "
    "full panorama, later frames regenerate only what changed, partially noised from the previous result) "
    "against every frame outpainted on its own with the same seed. Flicker: mean absolute frame-to-frame "
    "change of the generated region; the reference's own flicker on the same pixels is natural motion "
    "(the moving box and sun), which a method should neither exceed with noise nor freeze entirely. "
    "Intervals: bootstrap over clips. A tiny model trained for minutes: this shows the machinery, not "
    "quality at scale.")


def video_section(out: str | Path) -> list[str]:
    """HTML parts of the demo page's "360° video" section from ``out/video/results.md`` (empty when the
    video stage has not run): the table, a note, and a player per clip and method."""
    import html

    out = Path(out)
    table = out / "video" / "results.md"
    if not table.is_file():
        return []
    lines = [ln.strip().strip("|").split("|") for ln in table.read_text().splitlines() if ln.startswith("|")]
    head, rows = [c.strip() for c in lines[0]], [[c.strip() for c in r] for r in lines[2:]]
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    parts = ["<h2>360° video: temporal vs per frame</h2>", f"<p>{html.escape(VIDEO_NOTE)}</p>",
             f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"]
    links = []
    for method, _ in VIDEO_METHODS:
        for viewer in sorted((out / "video" / "gen" / method).glob("*/index.html")):
            rel = viewer.relative_to(out).as_posix()
            links.append(f"<a href='{html.escape(rel)}'>{html.escape(method)}: {html.escape(viewer.parent.name)}</a>")
    if links:
        first = next(iter(sorted((out / "video" / "gen" / "temporal").glob("*/index.html"))), None)
        if first is not None:
            parts.append(f"<iframe src='{html.escape(first.relative_to(out).as_posix())}'></iframe>")
        parts.append("<p>Players (drag to look around while the video plays): " + " · ".join(links) + "</p>")
    return parts
