"""``opama demo``: the whole mission end to end on synthetic data and the tiny preset.

Stages (each calls the library function that the matching ``opama`` command calls; nothing is
demo-only except choosing the folders and drawing the final page):

1. synthetic HDR panoramas (indoor and outdoor EXR), a training and a held-out test set;
2. prepare (:func:`opama_tools.data.prepare.run_prepare`) -> 8-bit PNG at the tiny canvas size;
3. captions (:func:`opama_tools.data.caption.run_caption`) from the scene metadata (a local BLIP
   model instead when one is found);
4. the test panoramas' input views (yaw 0, pitch 0, fov 90) and a batch CSV;
5. training of the tiny preset (:func:`opama_model.training.train`) in a child process: VAE and
   UNet warm-ups (the tiny backbone is random; the UNet's warm-up is text-conditioned, the caption's
   text-encoder states as its context, so it becomes what SD-2-inpainting is), then the conditioner;
   optionally AOG-Net's too. The trained backbone is exported as a diffusers inpainting folder
   (:func:`opama_model.sd_inpaint.export_inpaint_pipeline`, ``runs/opama/sd-inpaint``);
6. outpainting of the test inputs with their captions (:func:`opama_tools.outpaint.run_outpaint`):
   trained and untrained model, ``fast`` and ``reference`` procedures, the training-free method
   (``training-free-fast``: the exported folder through the path of any SD inpainting checkpoint,
   no conditioner), in a pool of single-thread processes, plus the input-only baseline;
7. evaluation of each against the held-out references and the side-by-side table
   (:func:`opama_tools.eval.run.run_eval`, :func:`~opama_tools.eval.run.run_compare`);
8. ``report.html``: inputs, outpainted panoramas (with the drag-to-look viewer), references,
   the comparison table with bootstrap intervals, the paired comparison, fast vs reference
   time, the loss curve.

Everything stays under ``--out``. A re-run with the same settings resumes: every stage skips
what it already finished (keyed on its inputs' content). When a setting changes, the outputs
that depend on it are deleted first and redone (``DemoSettings.keys``), so no stale panorama or
report survives (e.g. ``--n-test`` redoes the test data and the results, not the training).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import queue as queue_mod
import shutil
import signal
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from opama_tools.demo.report import TRAINING_FREE
from opama_tools.io import atomic_path, atomic_write_text
from opama_tools.data.synthetic import generate_dataset

console = Console(soft_wrap=True)  # messages are lines: never hard-wrapped at the terminal width

__all__ = ["DemoSettings", "DemoError", "run_demo", "write_synthetic", "write_synthetic_video", "FAST", "STAGES"]

SETTINGS_FILE = "demo.json"
GROUPS: dict[str, tuple[str, ...]] = {
    "train-data": ("exr/train", "png/train", "captions/train.jsonl"),
    "test-data": ("exr/test", "png/test", "captions/test.jsonl", "inputs"),
    "train": ("runs",),
    "results": ("gen", "reports", "report.html", "report_assets", "stages.json"),
    "video": ("video",),
}
"""The demo's own outputs, grouped by the settings they depend on (see ``DemoSettings.keys``)."""
EXPORT_DIR = "sd-inpaint"
"""Where the demo exports ``runs/opama/model``'s backbone (under ``runs/opama``)."""
STAGES = ("data", "prepare", "caption", "inputs", "train", "outpaint", "eval", "video", "report")
"""Every stage in order; ``video`` runs only with ``DemoSettings.video`` (``opama demo --video``)."""


class DemoError(RuntimeError):
    """A stage failed (the message names the stage, and the run and its log where there is one)."""


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
    unet_warmup_context: str = "text"
    outpaint_steps: int | None = None
    procedures: tuple[str, ...] = ("fast", "reference")
    aog: bool = False
    bootstrap: int = 1000
    video: bool = False
    """Run the video stage (:mod:`opama_tools.demo.video_stage`): synthetic 360° clips outpainted as videos."""
    video_clips: int = 3
    video_frames: int = 12

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
                     lr=self.lr, ema=self.ema, aog=self.aog, prediction_type=self.prediction_type,
                     unet_warmup_context=self.unet_warmup_context)
        results = dict(train, **data_te, procedures=list(self.procedures), outpaint_steps=self.outpaint_steps,
                       bootstrap=self.bootstrap)
        video = dict(train, video_clips=self.video_clips, video_frames=self.video_frames,
                     outpaint_steps=self.outpaint_steps, bootstrap=self.bootstrap)
        return {"train-data": data_tr, "test-data": data_te, "train": train, "results": results, "video": video}


FAST = dict(n_train=4, n_test=2, steps=40, vae_steps=40, unet_steps=20, procedures=("fast",), outpaint_steps=4, bootstrap=200,
            video_clips=1, video_frames=4)
"""``--fast`` overrides: a smoke run of every stage (1 to 3 minutes on 2 cores, with the load), not a result."""


def _with_render_bar(label: str, n: int, render: Callable[[Callable[[int], None]], Any]) -> Any:
    """``render(progress)`` with a progress bar of ``n`` items titled ``label``."""
    with Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bar:
        task = bar.add_task("render", total=n)
        return render(lambda k: bar.update(task, completed=k))


def write_synthetic(out_dir: str | Path, n: int, height: int = 256, seed: int = 0, kind: str = "random") -> list[Path]:
    """Write ``n`` synthetic HDR ``.exr`` panoramas + ``scenes.jsonl`` with a progress bar."""
    return _with_render_bar("synthetic panoramas", n, lambda progress: generate_dataset(
        out_dir, n=n, height=height, seed=seed, kind=kind, progress=progress))  # type: ignore[arg-type]


def write_synthetic_video(out_dir: str | Path, n: int, frames: int = 12, height: int = 64, seed: int = 0,
                          kind: str = "outdoor") -> list[str]:
    """Write ``n`` synthetic 360° clips (reference videos, NFoV input clips, trajectories, captions and
    ``video_batch.csv``; see :func:`opama_tools.data.synthetic_video.generate_video_dataset`) with a
    progress bar; returns the clip names. ``ValueError`` (one line) for a bad option or folder."""
    from opama_tools.data.synthetic_video import generate_video_dataset

    return _with_render_bar("synthetic 360° videos", n, lambda progress: generate_video_dataset(
        out_dir, n=n, frames=frames, height=height, seed=seed, kind=kind, progress=progress))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- child processes
_QUEUE: Any = None
"""In a pool worker: the queue its progress messages go to (set by :func:`_init_worker`)."""


def _init_worker(messages: Any, threads: int) -> None:
    """Pool worker start-up: keep the message queue; ``threads > 0`` limits torch (and OpenMP) to that many."""
    global _QUEUE
    _QUEUE = messages
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the demo, which terminates the pool
    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def _post(*message: Any) -> None:
    if _QUEUE is not None:
        _QUEUE.put(message)


def _stopped(name: str) -> None:
    """Re-raise a stop that a stage function caught and reported (``"SIGINT"`` or ``"SIGTERM"``)."""
    from opama_model.fileio import Terminated

    raise KeyboardInterrupt if name == "SIGINT" else Terminated(name)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _run_pool(jobs: list[tuple[str, Callable[..., Any], tuple]], workers: int, threads: int,
              on_message: Callable[[tuple], None], on_tick: Callable[[list[str]], None] | None = None,
              logs: dict[str, Path] | None = None) -> dict[str, Any]:
    """Run ``fn(*args)`` for every ``(name, fn, args)`` in ``jobs`` in a pool of ``workers``
    spawned processes (``threads`` torch threads each; 0 = torch's default), in order.

    Messages the workers :func:`_post` reach ``on_message`` in this process; ``on_tick(running)``
    is called about every 0.3 s with the names still running; ``logs`` maps a job's name to
    its log file, named when it fails. Returns ``{name: result}``.
    An interrupt (Ctrl-C, SIGTERM) terminates the workers before it propagates.

    Raises:
        DemoError: naming every job that raised and its one-line reason.
    """
    from opama_model.fileio import stop_raises

    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(messages, threads))
    futures: dict[Future, str] = {}
    results: dict[str, Any] = {}
    failed: list[str] = []

    def drain() -> None:
        while True:
            try:
                on_message(messages.get_nowait())
            except queue_mod.Empty:
                return

    try:
        with stop_raises():
            futures = {pool.submit(fn, *args): name for name, fn, args in jobs}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.3, return_when=FIRST_COMPLETED)
                drain()
                for f in done:
                    try:
                        results[futures[f]] = f.result()
                    except Exception as e:  # noqa: BLE001 - reported with the job's name below
                        name = futures[f]
                        where = f" (see {logs[name]})" if logs and name in logs else ""
                        failed.append(f"{name}: {_one_line(e)}{where}")
                if on_tick is not None:
                    on_tick([futures[f] for f in pending if f.running()])
            drain()
    except BaseException:
        for p in set(multiprocessing.active_children()) - before:  # this pool's workers
            p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    messages.close()
    if failed:
        raise DemoError("; ".join(failed))
    return results


def _train_job(cfg: dict, data: str, captions: str) -> dict:
    """Pool job: train one run with :func:`opama_tools.train.run_train` (what ``opama train`` runs);
    progress goes to the queue. Returns a summary dict; an error comes back as one line (the
    traceback goes to stderr)."""
    from opama_model.training import TrainConfig
    from opama_tools.train import run_train

    try:
        cfg = dict(cfg, canvas_hw=tuple(cfg["canvas_hw"]))
        result = run_train(TrainConfig(**cfg), data, [captions],
                           progress=lambda p: _post("train", p.phase, p.step, p.total, p.loss)).result
    except Exception as e:
        if not getattr(e, "__module__", "").startswith("opama"):
            traceback.print_exc()
        raise RuntimeError(_one_line(e)) from None
    if result.stopped:
        raise RuntimeError(f"stopped at step {result.step} (checkpoint {result.checkpoint})")
    tail = result.losses[-20:]
    return {"step": result.step, "seconds": result.seconds, "loss": sum(tail) / len(tail) if tail else None,
            "model": str(result.model_dir), "trained": list(result.trained)}


def _outpaint_job(log_path: str, batch_csv: str, out: str, model: str | None, settings: dict) -> dict:
    """Pool job: outpaint every row of ``batch_csv`` into ``out`` with the model folder ``model``
    (None: the untrained tiny preset) by :func:`opama_tools.outpaint.run_outpaint`, as ``opama
    outpaint --batch`` does (``settings``: its keyword options). Everything the run
    prints goes to ``log_path``. Returns ``{"done", "skipped", "failed"}`` counts; failed rows
    are listed in the log and raise."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            return _outpaint_logged(batch_csv, out, model, settings)
        except Exception as e:
            traceback.print_exc()
            raise RuntimeError(_one_line(e)) from None
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _outpaint_logged(batch_csv: str, out: str, model: str | None, settings: dict) -> dict:
    from opama_tools.outpaint import run_outpaint

    what = f"model {model}" if model else "the untrained tiny preset"
    print(f"outpaint --batch {batch_csv} --out {out} with {what}; {settings}", flush=True)
    res = run_outpaint(out, model=model, preset=None if model else "tiny", batch=batch_csv,
                       progress=lambda k, n, name: print(f"{k}/{n} {name}", flush=True), **settings)
    for name, reason in res.failed:
        print(f"failed {name}: {reason}", flush=True)
    print(f"outpaint: {len(res.done)} done, {len(res.skipped)} skipped, {len(res.failed)} failed -> {out}", flush=True)
    if res.failed:
        names = ", ".join(n for n, _ in res.failed)
        raise RuntimeError(f"{len(res.failed)} of {len(res.done) + len(res.skipped) + len(res.failed)} "
                           f"panoramas failed ({names})")
    return {"done": len(res.done), "skipped": len(res.skipped), "failed": 0}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------- the stages
@dataclass
class _Run:
    s: DemoSettings
    out: Path
    times: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def methods(self) -> list[tuple[str, str, str | None]]:
        """``(name, procedure, model)`` of every outpainting run; model None = untrained tiny preset,
        ``"sd-inpaint"`` = the trained backbone without conditioner (:data:`TRAINING_FREE`)."""
        runs = []
        for proc in self.s.procedures:
            runs.append((f"trained-{proc}", proc, "opama"))
        if self.s.unet_warmup_context == "text":
            runs.append((TRAINING_FREE, "fast", "sd-inpaint"))
        runs.append(("untrained-fast", "fast", None))
        if self.s.aog:
            runs.append(("aog-trained-fast", "fast", "aog"))
        return runs

    def model_path(self, model: str | None) -> str | None:
        """The ``--model`` of a run of :attr:`methods`: a trained model folder, the exported inpainting
        folder (``"sd-inpaint"``), or None (the untrained tiny preset)."""
        if model is None:
            return None
        return str(self.out / "runs" / ("opama/" + EXPORT_DIR if model == "sd-inpaint" else model + "/model"))


def _stage_data(r: _Run) -> str:
    s = r.s
    train = write_synthetic(r.out / "exr" / "train", n=s.n_train, height=s.height, seed=s.seed)
    test = write_synthetic(r.out / "exr" / "test", n=s.n_test, height=s.height, seed=s.seed + 100_000)
    return f"{len(train)} training + {len(test)} held-out test HDR panoramas (EXR) in {r.out / 'exr'}"


def _stage_prepare(r: _Run) -> str:
    from rich.markup import escape

    from opama_tools.data.prepare import run_prepare

    for split in ("train", "test"):
        with Progress(TextColumn(f"[bold]prepare {split}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as bar:
            task = bar.add_task("", total=None)

            def on_result(row: dict) -> None:
                if row["status"] == "failed":
                    bar.console.print(f"[red]failed[/] {escape(row['error'])}", highlight=False)
                bar.update(task, advance=1)

            try:
                summary = run_prepare(r.out / "exr" / split, r.out / "png" / split, size=(r.s.height, r.s.width),
                                      workers=1, on_start=lambda n: bar.update(task, total=n), on_result=on_result)
            except (ValueError, FileNotFoundError) as e:
                raise DemoError(f"demo stage prepare: {e}") from None
        if summary.interrupted:
            _stopped(summary.interrupted)
        if summary.failed:
            raise DemoError(f"demo stage prepare: {summary.failed} panorama(s) failed (see {summary.manifest})")
    return f"8-bit PNG panoramas ({r.s.height}x{r.s.width}) in {r.out / 'png'}"


def _blip_found() -> bool:
    from opama_model.weights import locate
    from opama_tools.weights import component

    return locate(component("blip"))[0] is not None


def _stage_caption(r: _Run) -> str:
    from opama_tools.data.caption import CaptionSettings, run_caption
    from opama_tools.weights import MissingWeightsError

    blip = _blip_found()
    settings = CaptionSettings(augment=True, stride=30.0)
    for split in ("train", "test"):
        pano_dir, out_jsonl = r.out / "png" / split, r.out / "captions" / f"{split}.jsonl"
        scenes = None if blip else r.out / "exr" / split / "scenes.jsonl"
        try:
            summary = run_caption(pano_dir, out_jsonl, settings, scenes=scenes)
        except (ValueError, MissingWeightsError) as e:
            raise DemoError(f"demo stage caption: {e}") from None
        if summary.interrupted:
            _stopped(summary.interrupted)
        if summary.failed:
            first = summary.failures[0] if summary.failures else ("?", "?")
            raise DemoError(f"demo stage caption: {summary.failed} panorama(s) of {pano_dir} failed "
                            f"(first: {first[0]}: {first[1]})")
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


def _train_config(r: _Run, kind: str) -> dict:
    """The :class:`~opama_model.training.TrainConfig` fields of one demo training run (the tiny recipe)."""
    s = r.s
    run = r.out / "runs" / kind
    every = max(s.steps // 4, 1)
    return dict(out=str(run), preset="tiny", conditioner=kind, steps=s.steps, batch_size=s.batch_size, lr=s.lr,
                vae_steps=s.vae_steps, unet_steps=s.unet_steps, unet_batch=s.unet_batch, unet_lr=s.lr,
                canvas_hw=[s.height, s.width], seed=s.seed, save_every=every, keep=1, val_every=every, ema=s.ema,
                prediction_type=s.prediction_type, train_backbone=s.train_backbone,
                unet_warmup_context=s.unet_warmup_context,
                resume=any(run.glob("checkpoint-*")))


def _stage_train(r: _Run) -> str:
    """Each training run in a child process of its own, calling the library training function
    (the same training runs about 35% slower inside the demo's own process, with identical
    weights; measured on 2 cores); its progress comes back to this process's bars."""
    kinds = ["opama"] + (["aog"] if r.s.aog else [])
    todo = []
    for kind in kinds:
        if (r.out / "runs" / kind / "model" / "opama_model.json").is_file():
            console.print(f"runs/{kind}/model exists: training already done")
        else:
            todo.append(kind)
    labels = {"vae": "VAE warm-up", "unet": "UNet warm-up", "train": "conditioner"}
    for kind in todo:
        with Progress(TextColumn("[bold]train {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                      transient=False) as bar:
            tasks: dict[str, Any] = {}

            def show(msg: tuple) -> None:
                _, phase, step, total, loss = msg
                if phase not in labels:
                    return
                if phase not in tasks:
                    tasks[phase] = bar.add_task(f"{kind}: {labels[phase]}", total=total, info="")
                bar.update(tasks[phase], completed=step, info=f"loss {loss:.4f}" if loss is not None else "")

            try:
                res = _run_pool([(kind, _train_job, (_train_config(r, kind), str(r.out / "png" / "train"),
                                                     str(r.out / "captions" / "train.jsonl")))],
                                workers=1, threads=0, on_message=show)[kind]
            except DemoError as e:
                raise DemoError(f"demo stage train: {e}") from None
        console.print(f"train {kind}: {res['step']} steps in {res['seconds']:.0f} s, loss {res['loss']:.4f} "
                      f"(mean of the last 20); model in {res['model']}", highlight=False)
    exported = _export_backbone(r) if any(m[2] == "sd-inpaint" for m in r.methods) else ""
    unet = "with the UNet" if r.s.train_backbone else "on the frozen UNet"
    return (f"tiny preset: {r.s.vae_steps} VAE and {r.s.unet_steps} UNet warm-up steps (the tiny backbone is "
            f"random; UNet context: {r.s.unet_warmup_context}), then {r.s.steps} conditioner steps {unet} "
            f"({', '.join(kinds)}; {r.s.prediction_type}) in {r.out / 'runs'}{exported}")


def _export_backbone(r: _Run) -> str:
    """Export ``runs/opama/model``'s backbone as a diffusers inpainting folder (the training-free
    method's checkpoint) unless the export of this model is there already."""
    from opama_model.sd_inpaint import EXPORT_FILE, InpaintCheckpointError, export_inpaint_pipeline

    model, dst = r.out / "runs" / "opama" / "model", Path(r.model_path("sd-inpaint"))
    done = dst / EXPORT_FILE
    if done.is_file() and done.stat().st_mtime_ns >= (model / "opama_model.json").stat().st_mtime_ns:
        console.print(f"{dst} exists: export already done", highlight=False)
    else:
        try:
            export_inpaint_pipeline(model, dst)
        except (ValueError, InpaintCheckpointError) as e:
            raise DemoError(f"demo stage train: export of {model}: {e}") from None
    return f"; its backbone exported as a diffusers inpainting folder in {dst}"


def _outpaint_settings(r: _Run, proc: str) -> dict:
    """The :func:`~opama_tools.outpaint.run_outpaint` options of one demo run."""
    return dict(procedure=proc, steps=r.s.outpaint_steps or None, size=(r.s.height, r.s.width), seed=r.s.seed)


def _stage_outpaint(r: _Run) -> str:
    """The outpainting runs, in a pool of single-thread processes, one per core (the tiny
    model's small operations do not use a second thread well: on 2 cores this is 1.5x faster
    than one run after the other with 2 threads), the slow ``reference`` procedure first. Each
    run's output goes to ``gen/NAME.log``; one bar counts the finished panoramas."""
    from opama_tools.eval.baselines import write_input_only_baseline

    gen = r.out / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    methods = sorted(r.methods, key=lambda m: m[1] != "reference")
    jobs = [(name, _outpaint_job, (str(gen / f"{name}.log"), str(r.out / "inputs" / "batch.csv"), str(gen / name),
                                   r.model_path(model), _outpaint_settings(r, proc)))
            for name, proc, model in methods]
    workers = max(1, min(len(jobs), _cores()))
    n_rows = sum(1 for _ in (r.out / "png" / "test").glob("*.png"))

    def finished() -> int:  # meta.json is written last: one per finished panorama
        return sum(len(list((gen / name).glob("*/meta.json"))) for name, _, _ in methods)

    for name, _, _ in methods:
        console.print(f"[dim]outpaint {name} (log: {gen / (name + '.log')})[/]", highlight=False)
    with Progress(TextColumn("[bold]outpaint"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("outpaint", total=n_rows * len(jobs), info="")
        try:
            _run_pool(jobs, workers=workers, threads=1, on_message=lambda m: None,
                      on_tick=lambda running: bar.update(task, completed=finished(), info=", ".join(running)),
                      logs={name: gen / f"{name}.log" for name, _, _ in methods})
        except DemoError as e:
            raise DemoError(f"demo stage outpaint: {e}") from None
        bar.update(task, completed=finished(), info="")
    base = write_input_only_baseline(r.out / "png" / "test", gen / "input-only", fov=90.0, view_size=64)
    return (f"{len(r.methods)} outpainting runs, {workers} at a time (one thread each) + the input-only baseline "
            f"({len(base)} panoramas each) in {gen}")


def _eval_names(r: _Run) -> list[str]:
    return ["input-only"] + [m[0] for m in r.methods]


def _eval_one(r: _Run, name: str) -> Path:
    """Score ``gen/NAME`` against the test references into ``reports/NAME`` with
    :func:`opama_tools.eval.run.run_eval` (skipped when the report of the same inputs and
    options is there)."""
    from opama_tools.eval.evaluate import EvalOptions
    from opama_tools.eval.run import run_eval

    gen, ref, rep = r.out / "gen" / name, r.out / "png" / "test", r.out / "reports" / name
    opts = EvalOptions(captions=str(r.out / "captions" / "test.jsonl"), input_size=64, bootstrap=r.s.bootstrap)
    try:
        res = run_eval(gen, ref, rep, opts, method=name)
    except ValueError as e:  # EvalInputError: one line naming the file or option
        raise DemoError(f"demo stage eval: {name}: {e}") from None
    if res.skipped:
        console.print(f"eval {name}: {rep} already holds this run: skipped", highlight=False)
    elif res.exit_code:
        failed = res.result.failed if res.result is not None else []
        why = "; ".join(f"{p}: {w}" for p, w in failed[:3]) or "no metric could run"
        raise DemoError(f"demo stage eval: {name}: {why} (see {rep / 'report.md'})")
    else:
        console.print(f"eval {name}: {res.done} panoramas scored -> {rep}", highlight=False)
    return rep


def _stage_eval(r: _Run) -> str:
    from opama_tools.eval.run import run_compare

    reports = [_eval_one(r, name) for name in _eval_names(r)]
    try:
        run_compare(reports, r.out / "reports" / "compare", names=_eval_names(r))
    except ValueError as e:
        raise DemoError(f"demo stage eval: compare: {e}") from None
    return f"{len(reports)} reports + the side-by-side table in {r.out / 'reports'}"


def _stage_video(r: _Run) -> str:
    from opama_tools.demo.video_stage import stage_video

    return stage_video(r)


def _stage_report(r: _Run) -> str:
    from opama_tools.demo.report import write_demo_report

    page = write_demo_report(r.out, _eval_names(r), r.times, r.notes, r.s.keys()["results"])
    return f"open {page}"


_STAGE_FUNCS: dict[str, Callable[[_Run], str]] = {
    "data": _stage_data, "prepare": _stage_prepare, "caption": _stage_caption, "inputs": _stage_inputs,
    "train": _stage_train, "outpaint": _stage_outpaint, "eval": _stage_eval, "video": _stage_video,
    "report": _stage_report,
}
_TITLES = {
    "data": "synthetic HDR panoramas", "prepare": "prepare (EXR -> PNG)", "caption": "captions",
    "inputs": "input views of the test panoramas", "train": "train (tiny preset)",
    "outpaint": "outpaint (trained / training-free / untrained, fast / reference)", "eval": "eval + compare",
    "video": "360° video (temporal vs per-frame)",
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
    stages = [st for st in STAGES if st != "video" or settings.video]
    for k, name in enumerate(stages, start=1):
        console.rule(f"[bold]{k}/{len(stages)} {_TITLES[name]}[/]  [dim]{time.perf_counter() - t_all:.0f} s so far[/]")
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
