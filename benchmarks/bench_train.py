"""Training step of ``opama train``: samples/s, peak memory per step, OPa-Ma vs AOG-Net conditioner,
and the share of the step spent in the frozen parts vs the conditioner.

One training step (batch --batch, tiny preset on CPU by default; ``--preset sd2 --device cuda`` builds
the sd2 architecture with random weights) is split into phases, each timed with the device
synchronised:

* ``frozen encoders``: VAE encodes of the target and the masked image, CLIP text and image (7 images
  per sample) encoders (no grad);
* ``conditioner fwd`` / ``conditioner bwd``;
* ``UNet fwd`` / ``UNet bwd`` (the frozen UNet still back-propagates to the conditioner's residuals
  and tokens; measured by a backward from the loss to the conditioner's outputs as leaves);
* ``optimizer``: AdamW step over the conditioner.

"frozen share" = (encoders + UNet fwd + UNet bwd) / step. Samples (the reference's dataset.py
sample: rotation, masks, views, cube faces) are built outside the timed step (data-loader workers do
that in training) and reported separately. Memory: each configuration runs in its own process; on
CPU the peak resident-set growth from the warm-up step on (models built), on CUDA ``torch.cuda.max_memory_allocated``
growth. Times: median of --repeats steps after one warm-up step.

Example: python benchmarks/bench_train.py --batch 2 --repeats 5
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

from opama_tools.images import parse_size  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def worker(args) -> dict:
    import numpy as np
    import torch.nn.functional as F

    from opama_model.presets import build_components
    from opama_model.training.sample import SampleSettings, canvas_size, make_sample
    from opama_model.training.step import MODE_CAPTION, MODE_NULL, draw_step, encode_latents

    device = torch.device(args.device)
    comps = build_components(args.preset, random_weights=True, conditioner=args.conditioner, device=device)
    cond = comps.conditioner.to(device)
    cond.train()
    cond.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in cond.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    s = comps.preset.image_size
    hw = args.canvas_hw or canvas_size(s)
    st = SampleSettings(view_size=s, canvas_hw=hw)
    g = torch.Generator().manual_seed(0)
    pano = torch.rand(3, *hw, generator=g) * 2 - 1
    t0 = time.perf_counter()
    items = [make_sample(pano, k % 18, 17 * k, st) for k in range(args.batch)]
    t_sample = (time.perf_counter() - t0) / args.batch
    batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
    captions = ["a room with a window, a wooden floor"] * args.batch
    lat_shape = (4, comps.preset.latent_size, comps.preset.latent_size)
    # half the samples null, as a mixed batch of the per-sample guidance dropout would be
    modes = [MODE_NULL if j % 2 else MODE_CAPTION for j in range(args.batch)] if args.batch > 1 else [MODE_CAPTION]
    draws = draw_step(0, 0, list(range(args.batch)), lat_shape, 1000, modes=modes).to(device)
    sched = comps.scheduler

    def step(record):
        tm = {}

        def mark(name, t):
            _sync(device)
            tm[name] = tm.get(name, 0.0) + time.perf_counter() - t
            return time.perf_counter()

        _sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            lat = encode_latents(comps.vae, batch["target"], draws.eps_target).float()
            masked = encode_latents(comps.vae, batch["masked_image"], draws.eps_masked).float()
            text = comps.encode_text(captions)
            emb = comps.encode_images(batch["clip_images"].flatten(0, 1)).reshape(args.batch, 7, -1)
        t = mark("frozen encoders", t)
        noise = draws.noise + 0.1 * draws.offset
        x = torch.cat((sched.add_noise(lat, noise, draws.timesteps),
                       F.interpolate(batch["unknown"], size=lat.shape[-2:]), masked), 1)
        tokens, res, mask = cond(batch["gma_images"], emb, text, unconditional=draws.modes == MODE_NULL,
                                 return_dict=False)
        t = mark("conditioner fwd", t)
        leaves = [tokens.detach().requires_grad_(True)] + [r.detach().requires_grad_(True) for r in res]
        pred = comps.unet(x, draws.timesteps, encoder_hidden_states=leaves[0], encoder_attention_mask=mask,
                          down_intrablock_additional_residuals=list(leaves[1:])).sample
        loss = (pred.float() - noise).pow(2).mean()
        t = mark("UNet fwd", t)
        grads = torch.autograd.grad(loss, leaves)
        t = mark("UNet bwd", t)
        torch.autograd.backward([tokens] + list(res), list(grads))
        t = mark("conditioner bwd", t)
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark("optimizer", t)
        return tm

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step(False)  # warm-up (its peak counts: it allocates what every step needs)
    times = [step(True) for _ in range(args.repeats)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    med = {k: float(np.median([t[k] for t in times])) for k in times[0]}
    total = sum(med.values())
    return dict(conditioner=args.conditioner, phases=med, step=total, samples_per_s=args.batch / total,
                sample_build=t_sample, peak_bytes=max(peak, 0),
                cond_params=sum(p.numel() for p in cond.parameters()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "sd2"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--canvas", default=None, help="HxW (default: 4 x 8 view sizes)")
    ap.add_argument("--conditioners", nargs="+", default=["opama", "aog"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        args.canvas_hw = parse_size(args.canvas, option="--canvas")
    except ValueError as e:
        ap.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        args.conditioner = args.worker
        print(json.dumps(worker(args)))
        return
    print(machine_info(["diffusers", "accelerate"]))
    print(f"preset {args.preset}, device {args.device}, batch {args.batch}, median of {args.repeats} steps")
    rows = []
    for kind in args.conditioners:
        cmd = [sys.executable, __file__, "--worker", kind, "--preset", args.preset, "--device", args.device,
               "--batch", str(args.batch), "--repeats", str(args.repeats), "--threads", str(args.threads)]
        if args.canvas:
            cmd += ["--canvas", args.canvas]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            print(f"{kind}: failed\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if not rows:
        sys.exit(1)
    phases = list(rows[0]["phases"])
    w = 18
    print(f"{'':<22}" + "".join(f"{r['conditioner']:>{w}}" for r in rows) + (f"{'ratio':>{w}}" if len(rows) == 2 else ""))

    def line(name, vals, fmt, ratio=True):
        s = f"{name:<22}" + "".join(f"{fmt(v):>{w}}" for v in vals)
        if len(vals) == 2 and ratio and vals[1]:
            s += f"{vals[0] / vals[1]:>{w}.2f}"
        print(s)

    for ph in phases:
        line(ph + " (ms)", [1000 * r["phases"][ph] for r in rows], lambda v: f"{v:.1f}")
    line("step (ms)", [1000 * r["step"] for r in rows], lambda v: f"{v:.1f}")
    line("samples/s", [r["samples_per_s"] for r in rows], lambda v: f"{v:.2f}")
    frozen = [(r["phases"]["frozen encoders"] + r["phases"]["UNet fwd"] + r["phases"]["UNet bwd"]) / r["step"]
              for r in rows]
    cshare = [(r["phases"]["conditioner fwd"] + r["phases"]["conditioner bwd"] + r["phases"]["optimizer"]) / r["step"]
              for r in rows]
    line("frozen share", frozen, lambda v: f"{100 * v:.0f}%", ratio=False)
    line("conditioner share", cshare, lambda v: f"{100 * v:.0f}%", ratio=False)
    line("peak memory (MiB)", [r["peak_bytes"] / 2**20 for r in rows], lambda v: f"{v:.0f}")
    line("conditioner params", [r["cond_params"] for r in rows], lambda v: f"{v:,}")
    line("sample build (ms)", [1000 * r["sample_build"] for r in rows], lambda v: f"{v:.1f}")
    print("ratio = first / second column (opama / aog). The sample is built by data-loader workers, outside the step.")


if __name__ == "__main__":
    main()
