"""``opama demo``: the whole mission end to end on synthetic data and the tiny preset.

Stages (each one runs the real ``opama`` subcommand, the same code a user types; nothing is
demo-only except choosing the folders and drawing the final page):

1. synthetic HDR panoramas (indoor and outdoor EXR), a training and a held-out test set;
2. ``prepare`` -> 8-bit PNG at the tiny canvas size;
3. ``caption --from-metadata`` (BLIP instead when a BLIP model is found locally);
4. the test panoramas' input views (yaw 0, pitch 0, fov 90) and a batch CSV;
5. ``train`` of the tiny preset (conditioner + UNet, after a short VAE warm-up: the tiny
   backbone is random), optionally the AOG-Net conditioner too;
6. ``outpaint`` of the test inputs with their captions: trained and untrained model, ``fast``
   and ``reference`` procedures, plus the input-only baseline;
7. ``eval`` of each against the held-out references and ``eval compare``;
8. ``report.html``: inputs, outpainted panoramas (with the drag-to-look viewer), references,
   the comparison table with bootstrap intervals, fast vs reference time, the loss curve.

Everything stays under ``--out``. A re-run with the same settings resumes: every command
skips what it already finished (keyed on its inputs' content). When a setting changes, the
outputs that depend on it are deleted first and redone (``DemoSettings.keys``), so no stale
panorama or report survives (e.g. ``--n-test`` redoes the test data and the results, not the
training).
"""

from __future__ import annotations

import csv
import html
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from opama_tools.io import atomic_path, atomic_write_text
from opama_tools.data.synthetic import generate_dataset

console = Console(soft_wrap=True)  # messages are lines: never hard-wrapped at the terminal width

__all__ = ["DemoSettings", "DemoError", "run_demo", "write_synthetic", "run_cli", "FAST", "STAGES"]

SETTINGS_FILE = "demo.json"
GROUPS: dict[str, tuple[str, ...]] = {
    "train-data": ("exr/train", "png/train", "captions/train.jsonl"),
    "test-data": ("exr/test", "png/test", "captions/test.jsonl", "inputs"),
    "train": ("runs",),
    "results": ("gen", "reports", "report.html", "report_assets", "stages.json"),
}
"""The demo's own outputs, grouped by the settings they depend on (see ``DemoSettings.keys``)."""
STAGES = ("data", "prepare", "caption", "inputs", "train", "outpaint", "eval", "report")


class DemoError(RuntimeError):
    """A stage failed (message names the stage and its exit code)."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo does. Sizes: the tiny preset's views are 64 px at fov 90, so a 128 x 256
    canvas samples the views at their own resolution."""

    out: str = "opama-demo"
    n_train: int = 24
    n_test: int = 6
    steps: int = 150
    vae_steps: int = 600
    unet_steps: int = 600
    unet_batch: int = 8
    train_backbone: bool = False
    height: int = 128
    seed: int = 0
    batch_size: int = 2
    lr: float = 2e-3
    ema: float = 0.0
    prediction_type: str = "v_prediction"
    outpaint_steps: int | None = None
    procedures: tuple[str, ...] = ("fast", "reference")
    aog: bool = False
    bootstrap: int = 1000

    @property
    def width(self) -> int:
        return 2 * self.height

    def keys(self) -> dict[str, dict]:
        """The settings each output group depends on; a group whose key changed is redone,
        and so is every group built on it."""
        data_tr = dict(n_train=self.n_train, height=self.height, seed=self.seed)
        data_te = dict(n_test=self.n_test, height=self.height, seed=self.seed)
        train = dict(data_tr, steps=self.steps, vae_steps=self.vae_steps, unet_steps=self.unet_steps,
                     unet_batch=self.unet_batch, train_backbone=self.train_backbone, batch_size=self.batch_size,
                     lr=self.lr, ema=self.ema, aog=self.aog, prediction_type=self.prediction_type)
        results = dict(train, **data_te, procedures=list(self.procedures), outpaint_steps=self.outpaint_steps,
                       bootstrap=self.bootstrap)
        return {"train-data": data_tr, "test-data": data_te, "train": train, "results": results}


FAST = dict(n_train=4, n_test=2, steps=40, vae_steps=40, unet_steps=20, procedures=("fast",), outpaint_steps=4, bootstrap=200)
"""``--fast`` overrides: a smoke run of every stage (under 2 minutes on 2 cores), not a result."""


def write_synthetic(out_dir: str | Path, n: int, height: int = 256, seed: int = 0, kind: str = "random") -> list[Path]:
    """Write ``n`` synthetic HDR ``.exr`` panoramas + ``scenes.jsonl`` with a progress bar."""
    with Progress(
        TextColumn("[bold]synthetic panoramas"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bar:
        task = bar.add_task("render", total=n)
        return generate_dataset(
            out_dir, n=n, height=height, seed=seed, kind=kind,  # type: ignore[arg-type]
            progress=lambda k: bar.update(task, completed=k),
        )


def run_cli(args: Sequence[str]) -> int:
    """Run ``opama ARGS`` in this process (the real command); returns its exit code."""
    from typer.main import get_command

    from opama_tools.cli import app

    console.print(f"[dim]$ opama {' '.join(str(a) for a in args)}[/]", highlight=False)
    try:
        get_command(app).main(args=[str(a) for a in args], prog_name="opama", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        return 130
    return 0


def _cli(stage: str, args: Sequence[str]) -> None:
    code = run_cli(args)
    if code != 0:
        raise DemoError(f"demo stage {stage}: `opama {args[0]}` failed with exit code {code}")


def _cli_process(stage: str, args: Sequence[str]) -> None:
    """Run ``opama ARGS`` as a child process (``python -m opama_tools.cli``, the real command; its
    output and progress bars go to this terminal). Used for training: inside the demo's own
    process the same training took 435 s instead of 320 s (bit-identical weights; measured on
    2 cores), in a fresh process it runs as fast as a user's ``opama train``."""
    import subprocess
    import sys

    args = [str(a) for a in args]
    console.print(f"[dim]$ opama {' '.join(args)}[/]", highlight=False)
    sys.stdout.flush()
    code = subprocess.run([sys.executable, "-m", "opama_tools.cli", *args]).returncode
    if code != 0:
        raise DemoError(f"demo stage {stage}: `opama {args[0]}` failed with exit code {code}")


# --------------------------------------------------------------------------- the stages
@dataclass
class _Run:
    s: DemoSettings
    out: Path
    times: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def methods(self) -> list[tuple[str, str, str | None]]:
        """``(name, procedure, model)`` of every outpainting run; model None = untrained tiny preset."""
        runs = []
        for proc in self.s.procedures:
            runs.append((f"trained-{proc}", proc, "opama"))
        runs.append(("untrained-fast", "fast", None))
        if self.s.aog:
            runs.append(("aog-trained-fast", "fast", "aog"))
        return runs


def _stage_data(r: _Run) -> str:
    s = r.s
    train = write_synthetic(r.out / "exr" / "train", n=s.n_train, height=s.height, seed=s.seed)
    test = write_synthetic(r.out / "exr" / "test", n=s.n_test, height=s.height, seed=s.seed + 100_000)
    return f"{len(train)} training + {len(test)} held-out test HDR panoramas (EXR) in {r.out / 'exr'}"


def _stage_prepare(r: _Run) -> str:
    for split in ("train", "test"):
        _cli("prepare", ["prepare", r.out / "exr" / split, r.out / "png" / split,
                         "--size", f"{r.s.height}x{r.s.width}", "--workers", "1"])
    return f"8-bit PNG panoramas ({r.s.height}x{r.s.width}) in {r.out / 'png'}"


def _blip_found() -> bool:
    from opama_model.weights import locate
    from opama_tools.weights import component

    return locate(component("blip"))[0] is not None


def _stage_caption(r: _Run) -> str:
    blip = _blip_found()
    for split in ("train", "test"):
        args = ["caption", r.out / "png" / split, r.out / "captions" / f"{split}.jsonl", "--augment", "--stride", "30"]
        if not blip:
            args += ["--from-metadata", r.out / "exr" / split / "scenes.jsonl"]
        _cli("caption", args)
    return ("captions from the local BLIP model" if blip else
            "captions from the scene metadata (no BLIP found locally: `opama doctor`)") + \
        f", global + 12 per-view, in {r.out / 'captions'}"


def _read_captions(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("caption"):
                out[Path(rec["image"]).stem] = rec["caption"]
    return out


def _stage_inputs(r: _Run) -> str:
    """The input photo of each test panorama: the view at yaw 0, pitch 0, fov 90 (64 px: the tiny
    preset's view size), and the batch CSV ``opama outpaint --batch`` reads."""
    import imageio.v3 as iio
    import torch

    from opama_model.spherical import equi_to_pers

    caps = _read_captions(r.out / "captions" / "test.jsonl")
    rows = []
    for png in sorted((r.out / "png" / "test").glob("*.png")):
        dst = r.out / "inputs" / png.name
        if not dst.exists():
            pano = torch.from_numpy(np.asarray(iio.imread(png))[..., :3].copy()).permute(2, 0, 1)[None].float() / 255
            view = equi_to_pers(pano, 0.0, 0.0, 90.0, (64, 64))[0, 0]
            with atomic_path(dst) as tmp:
                iio.imwrite(tmp, (view.permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy(),
                            extension=".png")
        rows.append({"image": png.name, "prompt": caps.get(png.stem, ""), "yaw": 0, "pitch": 0, "fov": 90,
                     "name": png.stem})
    with atomic_path(r.out / "inputs" / "batch.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["image", "prompt", "yaw", "pitch", "fov", "name"])
            w.writeheader()
            w.writerows(rows)
    return f"{len(rows)} input views (yaw 0, pitch 0, fov 90, 64 px) + batch.csv in {r.out / 'inputs'}"


def _train_args(r: _Run, kind: str) -> list:
    s = r.s
    run = r.out / "runs" / kind
    args = ["train", "--preset", "tiny", "--conditioner", kind, "--data", r.out / "png" / "train",
            "--captions", r.out / "captions" / "train.jsonl", "--out", run, "--steps", s.steps,
            "--batch-size", s.batch_size, "--lr", s.lr, "--vae-steps", s.vae_steps, "--unet-steps", s.unet_steps,
            "--unet-batch", s.unet_batch, "--unet-lr", s.lr,
            "--canvas", f"{s.height}x{s.width}", "--seed", s.seed, "--save-every", max(s.steps // 4, 1),
            "--keep", 1, "--val-every", max(s.steps // 4, 1), "--ema", s.ema, "--prediction-type", s.prediction_type]
    if s.train_backbone:
        args.append("--train-backbone")
    if any(run.glob("checkpoint-*")):
        args.append("--resume")
    return args


def _stage_train(r: _Run) -> str:
    kinds = ["opama"] + (["aog"] if r.s.aog else [])
    for kind in kinds:
        if (r.out / "runs" / kind / "model" / "opama_model.json").is_file():
            console.print(f"runs/{kind}/model exists: training already done")
            continue
        _cli_process("train", _train_args(r, kind))
    unet = "with the UNet" if r.s.train_backbone else "on the frozen UNet"
    return (f"tiny preset: {r.s.vae_steps} VAE and {r.s.unet_steps} UNet warm-up steps (the tiny backbone is "
            f"random), then {r.s.steps} conditioner steps {unet} ({', '.join(kinds)}; {r.s.prediction_type}) "
            f"in {r.out / 'runs'}")


def _outpaint_args(r: _Run, name: str, proc: str, model: str | None) -> list[str]:
    args = ["outpaint", "--batch", r.out / "inputs" / "batch.csv", "--out", r.out / "gen" / name,
            "--procedure", proc, "--size", f"{r.s.height}x{r.s.width}", "--seed", r.s.seed]
    args += ["--model", r.out / "runs" / model / "model"] if model else ["--preset", "tiny"]
    if r.s.outpaint_steps:
        args += ["--steps", r.s.outpaint_steps]
    return [str(a) for a in args]


def _run_parallel(r: _Run, jobs: list[tuple[str, list[str]]], workers: int) -> None:
    """Run ``opama ARGS`` for every ``(name, args)`` in ``jobs``, ``workers`` at a time, each in
    its own process with one torch thread (``python -m opama_tools.cli``, the real command; its
    output goes to ``gen/NAME.log``). One progress bar counts the finished panoramas (their
    ``meta.json``, written last). Raises :class:`DemoError` naming every failed run and its log."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    n_rows = sum(1 for _ in (r.out / "png" / "test").glob("*.png"))
    (r.out / "gen").mkdir(parents=True, exist_ok=True)
    todo, running, failed = list(jobs), [], []

    def done() -> int:
        return sum(len(list((r.out / "gen" / name).glob("*/meta.json"))) for name, _ in jobs)

    try:
        with Progress(TextColumn("[bold]outpaint"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), console=console, transient=False) as bar:
            task = bar.add_task("outpaint", total=n_rows * len(jobs), info="")
            while todo or running:
                while todo and len(running) < workers:
                    name, args = todo.pop(0)
                    console.print(f"[dim]$ opama {' '.join(args)}   (log: {r.out / 'gen' / (name + '.log')})[/]",
                                  highlight=False)
                    log = open(r.out / "gen" / f"{name}.log", "w", encoding="utf-8")
                    proc = subprocess.Popen([sys.executable, "-m", "opama_tools.cli", *args], stdout=log,
                                            stderr=subprocess.STDOUT, env=env)
                    running.append((name, proc, log))
                time.sleep(0.5)
                for item in list(running):
                    name, proc, log = item
                    if proc.poll() is not None:
                        log.close()
                        running.remove(item)
                        if proc.returncode != 0:
                            failed.append(f"{name} (exit code {proc.returncode}, see {r.out / 'gen' / (name + '.log')})")
                bar.update(task, completed=done(), info=", ".join(n for n, _, _ in running))
    finally:
        for _, proc, log in running:  # interrupted: stop what still runs
            proc.terminate()
            proc.wait()
            log.close()
    if failed:
        raise DemoError("demo stage outpaint: `opama outpaint` failed for " + "; ".join(failed))


def _stage_outpaint(r: _Run) -> str:
    """The outpainting runs; on a machine with 2 or more cores, as parallel processes of one
    thread each (the tiny model's small operations do not use a second thread well: 1.5x faster
    on 2 cores), the slow ``reference`` procedure first."""
    import os

    from opama_tools.eval.baselines import write_input_only_baseline

    jobs = [(name, _outpaint_args(r, name, proc, model)) for name, proc, model in r.methods]
    jobs.sort(key=lambda j: "reference" not in j[1])
    workers = min(len(jobs), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers > 1:
        _run_parallel(r, jobs, workers)
    else:
        for _, args in jobs:
            _cli("outpaint", args)
    base = write_input_only_baseline(r.out / "png" / "test", r.out / "gen" / "input-only", fov=90.0, view_size=64)
    how = f", {workers} at a time (one thread each)" if workers > 1 else ""
    return (f"{len(r.methods)} outpainting runs{how} + the input-only baseline ({len(base)} panoramas each) "
            f"in {r.out / 'gen'}")


def _eval_names(r: _Run) -> list[str]:
    return ["input-only"] + [m[0] for m in r.methods]


def _stage_eval(r: _Run) -> str:
    reports = []
    for name in _eval_names(r):
        rep = r.out / "reports" / name
        _cli("eval", ["eval", r.out / "gen" / name, r.out / "png" / "test", "--captions",
                      r.out / "captions" / "test.jsonl", "--input-size", 64, "--bootstrap", r.s.bootstrap,
                      "--method", name, "--out", rep])
        reports.append(rep)
    _cli("eval", ["eval", "compare", *reports, "--names", ",".join(_eval_names(r)), "--out",
                  r.out / "reports" / "compare"])
    return f"{len(reports)} reports + the side-by-side table in {r.out / 'reports'}"


def _stage_report(r: _Run) -> str:
    from opama_tools.demo.report import write_demo_report

    page = write_demo_report(r.out, _eval_names(r), r.times, r.notes, r.s.keys()["results"])
    return f"open {page}"


_STAGE_FUNCS: dict[str, Callable[[_Run], str]] = {
    "data": _stage_data, "prepare": _stage_prepare, "caption": _stage_caption, "inputs": _stage_inputs,
    "train": _stage_train, "outpaint": _stage_outpaint, "eval": _stage_eval, "report": _stage_report,
}
_TITLES = {
    "data": "synthetic HDR panoramas", "prepare": "prepare (EXR -> PNG)", "caption": "captions",
    "inputs": "input views of the test panoramas", "train": "train (tiny preset)",
    "outpaint": "outpaint (trained / untrained, fast / reference)", "eval": "eval + compare",
    "report": "report.html",
}


def _clear_changed_groups(out: Path, keys: dict[str, dict]) -> list[str]:
    """Delete the output groups of ``out`` whose settings differ from the last run's; returns their names."""
    f = out / SETTINGS_FILE
    old: dict = {}
    if f.is_file():
        try:
            old = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = {}
    changed = [g for g in GROUPS if not isinstance(old, dict) or old.get(g) != keys[g]]
    for g in changed:
        for rel in GROUPS[g]:
            p = out / rel
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(f, json.dumps(keys, indent=2) + "\n")
    return [g for g in changed if old]


def run_demo(settings: DemoSettings) -> dict[str, float]:
    """Run every stage under ``settings.out``; returns the seconds per stage.

    Raises:
        DemoError: naming the first stage that failed.
    """
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out}: exists and is not a folder")
    cleared = _clear_changed_groups(out, settings.keys())
    if cleared:
        console.print(f"[yellow]settings changed since the last run in {out}: redoing {', '.join(cleared)}[/]")
    r = _Run(settings, out)
    t_all = time.perf_counter()
    for k, name in enumerate(STAGES, start=1):
        console.rule(f"[bold]{k}/{len(STAGES)} {_TITLES[name]}[/]  [dim]{time.perf_counter() - t_all:.0f} s so far[/]")
        t0 = time.perf_counter()
        if name == "report":
            r.times["total (before the report)"] = time.perf_counter() - t_all
        line = _STAGE_FUNCS[name](r)
        r.times[name] = time.perf_counter() - t0
        r.notes[name] = line
        console.print(f"[green]✓[/] {name} ({r.times[name]:.1f} s): {line}", highlight=False)
    total = time.perf_counter() - t_all
    atomic_write_text(out / "stages.json", json.dumps({"seconds": r.times, "total_s": total, "notes": r.notes},
                                                      indent=2) + "\n")
    console.print(f"\n[bold green]demo done[/] in {total:.0f} s: open {out / 'report.html'}", highlight=False)
    return r.times
