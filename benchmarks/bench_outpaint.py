"""``opama outpaint`` procedures side by side: UNet passes, wall time, peak memory; what each ``fast`` choice buys.

Three parts, one run:

1. **Per panorama** (each procedure in a fresh worker process): ``reference`` (OPa-Ma's DPM-Solver++
   25 steps, separate guidance calls), ``aog`` (AOG-Net's PNDM 50) and ``fast``; UNet passes
   (counted calls and batch rows), wall seconds of the panorama and of the UNet loop, peak memory
   (CPU: resident-set growth of the worker during the panorama; CUDA: ``max_memory_allocated``).
   Tiny preset on CPU by default (canvas 256x512, 64 px views); ``--preset sd2 --device cuda``
   builds the sd2 architecture with random weights (2048x4096 canvas, 512 px views, fp16).
2. **Each fast choice, measured** on one view (the first of the schedule, the same conditioning
   and initial noise): batched vs separate guidance calls, ``inference_mode`` vs ``no_grad``,
   the solver/steps and the guided fraction (distance of the final latent to a converged
   200-step DPM-Solver++ solution, relative to the latent's RMS: the integration error of the
   same ODE; with random weights it says nothing about image quality), and on CUDA fp32 vs
   fp16 vs bf16 and channels-last.
3. **Quality** with ``--model DIR`` (a trained model folder): ``--n`` held-out synthetic panoramas
   (scene seeds 100000+), input view (0, 0, 90) cut from each, ``fast`` and ``reference``
   panoramas, scored by ``opama eval``'s weight-free metrics (seam, pole, masked PSNR/SSIM of the
   known region; run as ``python -m opama_tools.cli eval``), plus each procedure's whole-panorama
   PSNR to the ground truth and fast's PSNR to reference, with bootstrap 95% intervals.

Example: python benchmarks/bench_outpaint.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine_info  # noqa: E402

PROCS = ("reference", "aog", "fast")


def build(preset: str, device: str, dtype: str):
    from opama_tools.outpaint import load_model

    return load_model(preset=preset, random_weights=True, device=device, dtype=dtype)


def input_view(size: int, seed: int = 0) -> torch.Tensor:
    """A smooth random photo ``(3, size, size)`` in [-1, 1] (low-frequency noise, upsampled)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(-1, 1)


# ----------------------------------------------------------------------------- part 1 (worker)
def worker(spec: dict) -> dict:
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    m = build(spec["preset"], spec["device"], spec["dtype"])
    pipe = m.pipeline
    img = input_view(pipe.view_size)
    # warm-up (lazy initialisations, kernels): one view, one step
    pipe([img], prompt="warm up", procedure=spec["procedure"], num_inference_steps=1, schedule=((0.0, 25.0),),
         height=pipe.view_size, width=2 * pipe.view_size, output_type="np")
    cuda = spec["device"].startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/status") as f:
            base = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
    t0 = time.perf_counter()
    out = pipe([img], prompt="a bright living room with a large window", procedure=spec["procedure"],
               seed=0, output_type="np")
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    i = out.info
    return dict(procedure=spec["procedure"], scheduler=i["scheduler"], steps=i["steps"],
                views=i["generated_views"], completion=i["completion_views"], unet_passes=i["unet_passes"],
                unet_rows=i["unet_rows"], wall=wall, unet_s=i["seconds"].get("denoise", 0.0),
                peak_mb=max(peak, 0) / 2**20, size=i["size"], dtype=i["dtype"])


def run_worker(spec: dict) -> dict:
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    if p.returncode != 0:
        raise SystemExit(f"worker {spec['procedure']} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def part_procedures(args) -> None:
    rows = [run_worker(dict(procedure=p, preset=args.preset, device=args.device, dtype=args.dtype,
                            threads=args.threads)) for p in PROCS]
    ref = rows[0]
    print(f"\n## 1. Per panorama ({args.preset}, canvas {rows[0]['size'][0]}x{rows[0]['size'][1]}, "
          f"{rows[0]['dtype']}, {args.device})")
    print(f"{'procedure':<10} {'scheduler':<15} {'steps':>5} {'views':>5} {'UNet calls':>10} {'rows':>6} "
          f"{'UNet s':>8} {'wall s':>8} {'peak MB':>8} {'UNet time vs reference':>23}")
    for r in rows:
        print(f"{r['procedure']:<10} {r['scheduler']:<15} {r['steps']:>5} {r['views']:>5} {r['unet_passes']:>10} "
              f"{r['unet_rows']:>6} {r['unet_s']:>8.2f} {r['wall']:>8.2f} {r['peak_mb']:>8.1f} "
              f"{ref['unet_s'] / max(r['unet_s'], 1e-9):>22.2f}x")
    f = rows[2]
    print(f"fast vs reference: {ref['unet_passes'] / f['unet_passes']:.2f}x fewer UNet calls, "
          f"{ref['unet_rows'] / f['unet_rows']:.2f}x fewer rows, {ref['unet_s'] / f['unet_s']:.2f}x less UNet time, "
          f"{ref['wall'] / f['wall']:.2f}x less wall time")


# ----------------------------------------------------------------------------- part 2
def _view_setup(pipe):
    from opama_model.canvas import cut_view
    from opama_model.pipeline import paste_inputs

    s = pipe.view_size
    with torch.inference_mode():
        canvas, known = paste_inputs([input_view(s)], [(0, 0, 90)], (4 * s, 8 * s), device=pipe.device)
        inp = cut_view(canvas, known, 0.0, 25.0, 90.0, s)
        text = pipe._encode_text("a bright living room with a large window")
        tokens, res = pipe._condition(inp, text)
        masked = pipe._vae_encode(inp.masked_image)
        lat_mask = torch.nn.functional.interpolate(inp.unknown, size=masked.shape[-2:])
    return tokens, res, lat_mask, masked


def _denoise(pipe, setup, scheduler, steps, guidance=2.5, batched=False, fraction=1.0, mode="inference"):
    from opama_model.pipeline import Procedure, _guided_steps, make_scheduler

    proc = Procedure("x", scheduler, steps, guidance, batched_cfg=batched, guidance_fraction=fraction)
    sched = make_scheduler(scheduler, pipe.scheduler.config)
    sched.set_timesteps(steps)
    guided = _guided_steps(len(sched.timesteps), guidance, fraction)
    gen = torch.Generator().manual_seed(0)
    ctx = torch.inference_mode() if mode == "inference" else torch.no_grad()
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    with ctx:
        sync()
        t = time.perf_counter()
        lat = pipe._denoise(sched, proc, guided, *setup, gen)
        sync()
    return lat, time.perf_counter() - t


def gmm_solver_study(base_config, dim: int = 1024, k: int = 8, samples: int = 32) -> None:
    """Solver error on an analytic denoiser: data = a mixture of 8 Gaussians in 1024 dimensions (a 4x16x16
    latent), the exact epsilon of that mixture as the "UNet", the caption = 2 of the 8 modes, guidance 2.5
    against the whole mixture. Error = RMS distance of the final samples to a 500-step DPM-Solver++ solution
    of the same guided ODE from the same noise, relative to the samples' RMS. A smooth, exactly known ODE:
    it ranks solvers, steps and guidance truncation; it is not a trained image model."""
    from opama_model.pipeline import _guided_steps, make_scheduler

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(k, dim, generator=g)
    s2 = 0.25
    alphas = make_scheduler("ddim", base_config).alphas_cumprod.double()
    cond, every = [0, 1], list(range(k))

    def eps(x, t, comps):
        ab = float(alphas[int(t)])
        m = mu[comps].double()
        var = ab * s2 + 1 - ab
        d = x.double()[:, None, :] - ab ** 0.5 * m[None]
        w = torch.softmax(-(d ** 2).sum(-1) / (2 * var), dim=-1)
        x0 = ((m[None] + (ab ** 0.5 * s2 / var) * d) * w[..., None]).sum(1)
        return ((x.double() - ab ** 0.5 * x0) / (1 - ab) ** 0.5).float()

    def solve(name, steps, frac, scale=2.5):
        sched = make_scheduler(name, base_config)
        sched.set_timesteps(steps)
        x = torch.randn(samples, dim, generator=torch.Generator().manual_seed(1)) * sched.init_noise_sigma
        guided = _guided_steps(len(sched.timesteps), scale, frac)
        for i, t in enumerate(sched.timesteps):
            xin = sched.scale_model_input(x, t)
            e = eps(xin, t, cond)
            if i < guided:
                e_u = eps(xin, t, every)
                e = e_u + scale * (e - e_u)
            x = sched.step(e, t, x).prev_sample
        return x, len(sched.timesteps) + guided

    conv, _ = solve("dpm++2m", 500, 1.0)
    rms = float(conv.pow(2).mean().sqrt())
    err = lambda x: float((x - conv).pow(2).mean().sqrt()) / rms  # noqa: E731
    print("solver error on an analytic mixture-of-Gaussians denoiser (guidance 2.5; relative to a 500-step "
          "solution); UNet rows per view:")
    print(f"  (for scale: no guidance at all is {err(solve('dpm++2m', 500, 1.0, 1.0)[0]):.4f} away)")
    configs = [("dpm++2m", 25, 1.0), ("pndm", 50, 1.0), ("ddim", 25, 1.0), ("dpm++2m", 12, 1.0),
               ("unipc", 12, 1.0), ("unipc", 10, 1.0), ("dpm++2m-karras", 12, 1.0), ("dpm++2m-karras", 10, 1.0),
               ("dpm++2m-karras", 8, 1.0), ("dpm++2m-karras", 6, 1.0), ("dpm++2m-karras", 10, 0.5),
               ("dpm++2m-karras", 10, 0.3)]
    for name, steps, frac in configs:
        x, rows = solve(name, steps, frac)
        tag = {("dpm++2m", 25, 1.0): "  <- reference", ("pndm", 50, 1.0): "  <- aog",
               ("dpm++2m-karras", 10, 0.5): "  <- fast"}.get((name, steps, frac), "")
        print(f"  {name:<15} {steps:>3} steps, guided fraction {frac:.1f}: error {err(x):.4f}, rows {rows:>3}{tag}")


def part_choices(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    m = build(args.preset, args.device, args.dtype)
    pipe = m.pipeline
    setup = _view_setup(pipe)
    best = lambda f: min(f() for _ in range(args.repeats))  # noqa: E731
    print(f"\n## 2. Each fast choice, one view ({args.preset}, {pipe.unet.dtype}, {args.device}; "
          f"fastest of {args.repeats})")
    _denoise(pipe, setup, "dpm++2m", 2)  # warm-up
    sep = best(lambda: _denoise(pipe, setup, "dpm++2m", 25)[1])
    bat = best(lambda: _denoise(pipe, setup, "dpm++2m", 25, batched=True)[1])
    print(f"guidance calls, DPM++ 25 steps: separate {sep:.3f} s, batched (padded null + mask) {bat:.3f} s "
          f"-> {sep / bat:.2f}x")
    ng = best(lambda: _denoise(pipe, setup, "dpm++2m", 25, batched=True, mode="no_grad")[1])
    print(f"torch.no_grad {ng:.3f} s vs torch.inference_mode {bat:.3f} s -> {ng / bat:.2f}x")
    gmm_solver_study(pipe.scheduler.config)
    if pipe.device.type == "cuda":
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            for cl in (False, True):
                pipe.unet.to(dtype=dt)
                pipe.unet.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                t = best(lambda: _denoise(pipe, setup, "dpm++2m-karras", 10, batched=True, fraction=0.5)[1])
                print(f"  UNet {str(dt).replace('torch.', ''):<8} channels_last={cl!s:<5}: {t:.3f} s per view")
    else:
        u = pipe.unet
        x = torch.randn(2, 9, *setup[3].shape[-2:])
        ehs = torch.cat((setup[0], setup[0]))
        res = [torch.cat((r, r)) for r in setup[1]]
        times = {}

        def call(dt):
            t0 = time.perf_counter()
            with torch.inference_mode():
                u(x.to(dt), 500, encoder_hidden_states=ehs.to(dt),
                  down_intrablock_additional_residuals=[r.to(dt) for r in res])
            return time.perf_counter() - t0

        for dt in (torch.float32, torch.bfloat16):
            u.to(dtype=dt)
            call(dt)
            times[dt] = best(lambda: call(dt))
        u.to(dtype=torch.float32)
        print(f"  CPU UNet call (batch 2): fp32 {times[torch.float32] * 1e3:.1f} ms, bf16 "
              f"{times[torch.bfloat16] * 1e3:.1f} ms -> fast keeps fp32 on CPU (half precision only on CUDA)")


# ----------------------------------------------------------------------------- part 3
def _bootstrap(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (reps, len(values)))].mean(1)
    return float(values.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return min(100.0, 10 * np.log10(255.0**2 / max(mse, 1e-12)))


def part_quality(args) -> None:
    from PIL import Image

    from opama_model.spherical import equi_to_pers
    from opama_tools.outpaint import load_model
    from opama_tools.data.synthetic import make_scene, render_equirect
    from opama_tools.data.tonemap import tonemap

    if args.threads:
        torch.set_num_threads(args.threads)
    m = load_model(args.model, device=args.device, dtype=args.dtype)
    pipe = m.pipeline
    s = pipe.view_size
    h, w = 4 * s, 8 * s
    root = Path(args.work or tempfile.mkdtemp(prefix="bench_outpaint_"))
    for sub in ("gt", "fast", "reference"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    psnr = {"fast": [], "reference": [], "fast_vs_reference": []}
    for k in range(args.n):
        name = f"held_{k:03d}"
        hdr = render_equirect(make_scene(100000 + k), h, w)
        gt = np.clip(tonemap(hdr, "percentile") * 255 + 0.5, 0, 255).astype(np.uint8)
        Image.fromarray(gt).save(root / "gt" / f"{name}.png")
        view = equi_to_pers(torch.from_numpy(gt).permute(2, 0, 1)[None].float() / 127.5 - 1, 0, 0, 90, (s, s))[0, 0]
        outs = {}
        for proc in ("fast", "reference"):
            outs[proc] = pipe([view], prompt="", procedure=proc, seed=k, output_type="np").images[0]
            Image.fromarray(outs[proc]).save(root / proc / f"{name}.png")
            psnr[proc].append(_psnr(outs[proc], gt))
        psnr["fast_vs_reference"].append(_psnr(outs["fast"], outs["reference"]))
    print(f"\n## 3. Quality, {args.n} held-out synthetic panoramas ({h}x{w}), model {m.model_id}")
    metrics = {}
    for proc in ("fast", "reference"):
        out = root / f"eval_{proc}"
        cmd = [sys.executable, "-m", "opama_tools.cli", "eval", str(root / proc), str(root / "gt"),
               "--metrics", "seam,pole,psnr,ssim", "--input-size", str(s), "--device", "cpu", "--out", str(out)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"opama eval failed:\n{p.stderr[-2000:]}")
        metrics[proc] = {r["key"]: r for r in json.loads((out / "metrics.json").read_text())["metrics"]}
    keys = [k for k in metrics["fast"] if metrics["fast"][k]["status"] == "ok"]
    print(f"{'metric':<28} {'fast (95% CI)':>28} {'reference (95% CI)':>28}")
    for k in keys:
        cells = []
        for proc in ("fast", "reference"):
            r = metrics[proc][k]
            cells.append(f"{r['value']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]" if r["ci_low"] is not None
                         else f"{r['value']:.4f}")
        print(f"{metrics['fast'][k]['label']:<28} {cells[0]:>28} {cells[1]:>28}")
    for key, label in (("fast", "PSNR to ground truth, fast"), ("reference", "PSNR to ground truth, reference"),
                       ("fast_vs_reference", "PSNR fast vs reference")):
        mean, lo, hi = _bootstrap(np.asarray(psnr[key]))
        print(f"{label:<34} {mean:.2f} dB [{lo:.2f}, {hi:.2f}]")
    print(f"panoramas and reports in {root}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="tiny", help="tiny (CPU) or sd2 (random weights; use --device cuda)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="1,2", help="comma list of 1 (procedures), 2 (choices), 3 (quality, --model)")
    ap.add_argument("--model", help="trained model folder for part 3 (quality of fast vs reference)")
    ap.add_argument("--n", type=int, default=8, help="held-out panoramas for part 3")
    ap.add_argument("--work", help="folder for part 3's panoramas and reports (default: a temp folder)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_info(("diffusers",)))
    parts = {p.strip() for p in args.parts.split(",")}
    if args.model:
        parts.add("3")
    if "1" in parts:
        part_procedures(args)
    if "2" in parts:
        part_choices(args)
    if "3" in parts:
        if not args.model:
            raise SystemExit("part 3 needs --model DIR (a trained model folder)")
        part_quality(args)


if __name__ == "__main__":
    main()
