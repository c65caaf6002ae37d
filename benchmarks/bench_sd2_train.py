"""One ``opama train`` step of the sd2 preset: seconds and peak memory, without and with gradient
checkpointing, split into weights, optimiser state and activations.

:func:`measure_train_step` builds the preset (random weights unless real ones are asked for and
found), stores the frozen parts in the mixed-precision dtype as ``opama train`` does, builds one
training sample at ``canvas`` and runs one full training step (frozen encoders, conditioner and
UNet forward, backward into the conditioner, AdamW step) exactly as the trainer
(:func:`opama_model.training.step.diffusion_loss`). By default the measurement runs in a fresh
child process, so its peak memory is its own.

Memory (bytes):

* ``weights``: every parameter and buffer (frozen parts in their stored dtype, conditioner fp32);
* ``grads``: the conditioner's gradients (fp32);
* ``optimizer``: AdamW's state after the step (two fp32 moments per trainable parameter);
* ``saved_for_backward``: storage of the tensors autograd kept for the backward pass (counted with
  ``torch.autograd.graph.saved_tensors_hooks``, each storage once; with checkpointing only what is
  kept outside the recomputed blocks);
* ``peak``: CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set
  (``ru_maxrss``), ``step_peak_above_model`` the part above the built model and sample.

``main()`` measures one step without and with ``--gradient-checkpointing`` in the same run and
prints the ratios. Example (CPU, bf16 frozen parts, small canvas)::

    flock /tmp/sd2.lock python benchmarks/bench_sd2_train.py --mixed-precision bf16 --canvas 512x1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine_info  # noqa: E402

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = (t.device, t.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def _rss() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(preset: str, random_weights: bool, batch: int, gradient_checkpointing: bool, mixed_precision: str,
             device: str, canvas: tuple[int, int] | None, seed: int = 0) -> dict:
    from opama_model.presets import build_components
    from opama_model.training.sample import SampleSettings, canvas_size, make_sample
    from opama_model.training.step import MODE_CAPTION, Parts, diffusion_loss, draw_step
    from opama_model.training.trainer import cast_frozen_, enable_checkpointing, make_optimizer, optimizer_groups

    dev = torch.device(device)
    t0 = time.perf_counter()
    comps = build_components(preset, random_weights=random_weights, conditioner="opama", seed=seed)
    cast_frozen_(comps, _DTYPES.get(mixed_precision))
    comps.to(device=dev)
    cond = comps.conditioner
    cond.requires_grad_(True)
    cond.train()
    if gradient_checkpointing:
        enable_checkpointing(comps, cond)
    t_build = time.perf_counter() - t0
    modules = [comps.unet, comps.vae, comps.text_encoder, comps.image_encoder, cond]
    weights = _bytes([t for m in modules for t in list(m.parameters()) + list(m.buffers())])
    frozen_weights = _bytes([t for m in modules[:-1] for t in list(m.parameters()) + list(m.buffers())])
    opt = make_optimizer("adamw", optimizer_groups({"conditioner": cond}, 0.01, False), 1e-4, (0.9, 0.999))

    s = comps.preset.image_size
    hw = tuple(canvas) if canvas else canvas_size(s)
    st = SampleSettings(view_size=s, canvas_hw=hw)
    g = torch.Generator().manual_seed(seed)
    pano = torch.rand(3, *hw, generator=g) * 2 - 1
    t0 = time.perf_counter()
    items = [make_sample(pano, (5 + j) % 18, 37 + 17 * j, st) for j in range(batch)]
    t_sample = (time.perf_counter() - t0) / batch
    from torch.utils.data import default_collate

    b = default_collate([dict(it, caption="a room with a window, a wooden floor") for it in items])
    lat = (4, comps.preset.latent_size, comps.preset.latent_size)
    draws = draw_step(seed, 0, list(range(batch)), lat, int(comps.scheduler.config.num_train_timesteps),
                      modes=[MODE_CAPTION] * batch)
    parts = Parts(comps, cond, comps.unet)
    del pano

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = _rss()
    base_cuda = torch.cuda.memory_allocated() if dev.type == "cuda" else 0
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    autocast = (torch.autocast(dev.type, dtype=_DTYPES[mixed_precision]) if mixed_precision in _DTYPES
                else torch.autocast(dev.type, enabled=False))
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast:
            loss = diffusion_loss(parts, b, draws, device=dev).mean()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_fwd = time.perf_counter() - t0
    saved_bytes = _bytes(t for t in saved if isinstance(t, torch.Tensor))
    saved.clear()
    t1 = time.perf_counter()
    loss.backward()
    grads = _bytes(p.grad for p in cond.parameters())
    opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_bwd = time.perf_counter() - t1
    step_s = time.perf_counter() - t0
    opt_bytes = _bytes(v for st_ in opt.state.values() for v in st_.values() if isinstance(v, torch.Tensor))
    out = dict(preset=preset, random_weights=random_weights, batch=batch,
               gradient_checkpointing=gradient_checkpointing, mixed_precision=mixed_precision, device=device,
               canvas=list(hw), build_s=t_build, sample_s=t_sample, forward_s=t_fwd, backward_and_opt_s=t_bwd,
               step_s=step_s, loss=float(loss.detach()), weights_bytes=weights, frozen_weights_bytes=frozen_weights,
               conditioner_params=sum(p.numel() for p in cond.parameters()), grads_bytes=grads,
               optimizer_bytes=opt_bytes, saved_for_backward_bytes=saved_bytes, threads=torch.get_num_threads())
    if dev.type == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
        out["step_peak_above_model"] = out["peak_bytes"] - base_cuda
    else:
        out["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out["step_peak_above_model"] = out["peak_bytes"] - base_rss
    return out


def measure_sample_build(canvas: tuple[int, int] = (2048, 4096), view_size: int = 512, n: int = 4,
                         seed: int = 0) -> dict:
    """Seconds to build one training sample (:func:`opama_model.training.sample.make_sample`, index maps)
    and the direct full-canvas construction (``make_sample_reference``) side by side, same draws:
    ``first_*`` includes what a fresh worker computes once (known masks; index maps for ``fast``),
    ``*_s`` the median of ``n`` later samples. Also checks that both give equal tensors."""
    import statistics

    from opama_model.training import sample as smp

    st = smp.SampleSettings(view_size=view_size, canvas_hw=tuple(canvas))
    pano = torch.rand(3, *canvas, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    rng = smp.seeded_rng(seed, 99)
    draws = [smp.draw_sample_params(rng, st) for _ in range(n + 1)]
    out = {}
    results = {}
    for name, fn in (("reference", smp.make_sample_reference), ("fast", smp.make_sample)):
        smp.known_masks.cache_clear()
        smp.sample_index_maps.cache_clear()
        times = []
        for k, yaw in draws:
            t0 = time.perf_counter()
            r = fn(pano, k, yaw, st)
            times.append(time.perf_counter() - t0)
        results[name] = r
        out[f"first_{name}_s"] = times[0]
        out[f"{name}_s"] = statistics.median(times[1:])
    a, b = results["fast"], results["reference"]
    out["max_abs_diff"] = max(float((a[key].float() - b[key].float()).abs().max()) for key in a)
    out["canvas"] = list(canvas)
    return out


def measure_train_step(preset: str = "sd2", random_weights: bool = True, batch: int = 1,
                       gradient_checkpointing: bool = False, mixed_precision: str = "no", device: str = "cpu",
                       canvas: tuple[int, int] | None = None, *, isolate: bool = True, threads: int = 0) -> dict:
    """Time and memory of one training step (module docstring for the keys; bytes and seconds).

    Args:
        preset: ``"sd2"`` (or ``"tiny"``).
        random_weights: build the architecture with random weights (no download needed).
        batch: samples per step.
        gradient_checkpointing: as ``opama train --gradient-checkpointing``.
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (autocast, frozen parts stored in it).
        device: ``"cpu"`` or ``"cuda"``.
        canvas: ``(H, W)`` of the training canvas (None: the preset's, 2048 x 4096 for sd2).
        isolate: run in a fresh child process (True), so the peak memory is this step's alone.
        threads: torch CPU threads in the child (0: torch's default).
    """
    args = dict(preset=preset, random_weights=random_weights, batch=batch,
                gradient_checkpointing=gradient_checkpointing, mixed_precision=mixed_precision, device=device,
                canvas=list(canvas) if canvas else None)
    if not isolate:
        return _measure(**args)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(args), "--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if r.returncode != 0:
        raise RuntimeError(f"train step measurement failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="sd2", choices=["tiny", "sd2"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    ap.add_argument("--canvas", default=None, help="HxW (default: the preset's, 2048x4096 for sd2)")
    ap.add_argument("--real-weights", action="store_true", help="use the real sd2 weights (must be on this machine)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--samples-only", action="store_true",
                    help="only time the sample build (before/after the index maps) at --canvas (default 2048x4096)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        kw = json.loads(args.worker)
        print(json.dumps(_measure(**kw)))
        return
    canvas = tuple(int(v) for v in args.canvas.lower().split("x")) if args.canvas else None
    print(machine_info(["diffusers", "accelerate"]))
    if args.samples_only:
        hw = canvas or (2048, 4096)
        r = measure_sample_build(hw, 512 if args.preset == "sd2" else 64)
        print(f"sample build at {hw[0]}x{hw[1]} (view {512 if args.preset == 'sd2' else 64} px), one process:")
        print(f"{'':<28}{'direct':>12}{'index maps':>12}{'ratio':>10}")
        for key, label in (("first_{}_s", "first sample (s)"), ("{}_s", "later samples, median (s)")):
            va, vb = r[key.format("reference")], r[key.format("fast")]
            print(f"{label:<28}{va:>12.3f}{vb:>12.3f}{va / vb:>10.1f}")
        print(f"max |difference| between the two constructions: {r['max_abs_diff']:.3g}")
        return
    print(f"preset {args.preset}, device {args.device}, batch {args.batch}, mixed precision {args.mixed_precision}, "
          f"canvas {canvas or 'default'}, one step per configuration, each in its own process")
    rows = []
    for ckpt in (False, True):
        r = measure_train_step(args.preset, not args.real_weights, args.batch, ckpt, args.mixed_precision,
                               args.device, canvas, threads=args.threads)
        print(json.dumps(r), flush=True)
        rows.append(r)
    a, b = rows
    w = 16
    print(f"{'':<30}{'no ckpt':>{w}}{'checkpointing':>{w}}{'ratio':>{w}}")

    def line(name, key, fmt, scale=1.0):
        va, vb = a[key] * scale, b[key] * scale
        ratio = f"{vb / va:.2f}" if va else "-"
        print(f"{name:<30}{fmt(va):>{w}}{fmt(vb):>{w}}{ratio:>{w}}")

    line("step (s)", "step_s", lambda v: f"{v:.1f}")
    line("forward (s)", "forward_s", lambda v: f"{v:.1f}")
    line("backward + AdamW (s)", "backward_and_opt_s", lambda v: f"{v:.1f}")
    line("peak memory (GiB)", "peak_bytes", _gib)
    line("step peak above model (GiB)", "step_peak_above_model", _gib)
    line("saved for backward (GiB)", "saved_for_backward_bytes", _gib)
    line("weights (GiB)", "weights_bytes", _gib)
    line("  of which frozen (GiB)", "frozen_weights_bytes", _gib)
    line("conditioner grads (GiB)", "grads_bytes", _gib)
    line("AdamW state (GiB)", "optimizer_bytes", _gib)
    line("sample build (s)", "sample_s", lambda v: f"{v:.2f}")
    print("ratio = checkpointing / no checkpointing. CPU peak = process peak resident set (ru_maxrss).")


if __name__ == "__main__":
    main()
