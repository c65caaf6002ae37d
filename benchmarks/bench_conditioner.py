"""OPa-Ma (VCR + GMA) vs AOG-Net (global transformer + T2I-Adapter + cross-attention): forward+backward
time and peak memory.

Two comparisons:

1. **Scaling of the global fusion** (the paper's efficiency claim). Both conditioners fuse the 7
   images (6 cube faces + the view) at one token grid g x g per image, g in --sizes (default 16, 32,
   64; the reference GMA's first stage runs at 64x64), images of 8g px, width --width:
   OPa-Ma: one GMA stage with its bidirectional per-image Mamba layers and the cross-image
   ("global") Mamba layers, + VCR; AOG-Net: one T2I-Adapter level + the cross-attention where the
   view's g^2 tokens attend to the faces' 6 g^2 tokens, + its global transformer. Attention is
   timed twice: PyTorch's default ``scaled_dot_product_attention`` kernel (fused, memory-efficient
   where available) and the ``math`` kernel that materialises the attention matrix (what a plain
   ``softmax(QK^T)V`` implementation does).
2. **As published**: the full conditioners of the sd2 preset (GMA scans all four stages 64, 32, 16,
   8 per image; AOG-Net attends only at its adapter's last level, 8x8 per image). On CPU the widths
   are divided by --published-scale (default 16; token grids unchanged) so it runs in minutes; use
   ``--device cuda --published-scale 1`` for the real widths.

Memory: on CPU the peak resident-set growth of a fresh worker process during the steps (each
measurement runs in its own process) and the bytes saved for backward (activations held between
forward and backward, measured with ``torch.autograd.graph.saved_tensors_hooks``, parameters
excluded); on CUDA ``torch.cuda.max_memory_allocated`` growth. Times: the fastest of --repeats steps
after one warm-up step (the least disturbed by other load on a shared machine).

Example: python benchmarks/bench_conditioner.py --sizes 16 32 64 --width 32
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
from _common import machine_info  # noqa: E402


# ----------------------------------------------------------------------------- models
def scaling_models(kind: str, width: int, heads: int):
    from opama_model.conditioner import AOGConditioner, OPaMaConditioner

    common = dict(cross_attention_dim=width, image_embed_dim=width, text_embed_dim=width, text_len=77,
                  unet_channels=(width,), downscale_factor=8)
    if kind == "opama":
        return OPaMaConditioner(**common, vcr_depth=8, gma_stem_channels=(width // 4, width // 2, width),
                                gma_local_depth=2, gma_global_depth=2, gma_global_stages=(0,))
    return AOGConditioner(**common, num_queries=5, global_depth=8, global_heads=heads, adapter_num_res_blocks=2,
                          fusion_heads=heads, fusion_depth=1)


def published_models(kind: str, scale: int):
    from opama_model.conditioner import AOGConditioner, OPaMaConditioner
    from opama_model.presets import conditioner_kwargs

    kw = conditioner_kwargs("sd2", kind)
    for k in ("cross_attention_dim", "image_embed_dim", "text_embed_dim"):
        kw[k] //= scale
    kw["unet_channels"] = tuple(c // scale for c in kw["unet_channels"])
    if kind == "opama":
        kw["gma_stem_channels"] = tuple(c // scale for c in kw["gma_stem_channels"])
        return OPaMaConditioner(**kw)
    return AOGConditioner(**kw)


# ----------------------------------------------------------------------------- worker
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def saved_bytes(model, inputs) -> int:
    """Bytes of distinct non-parameter tensors saved for backward during one forward."""
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in params:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*inputs)
    del out
    return sum(seen.values())


def worker(spec: dict) -> dict:
    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    if spec["mode"] == "scaling":
        model = scaling_models(spec["kind"], spec["width"], spec["heads"])
        size, width = 8 * spec["grid"], spec["width"]
    else:
        model = published_models(spec["kind"], spec["scale"])
        size, width = 512, 1024 // spec["scale"]
    model.to(dev).train()
    b = spec["batch"]
    images = torch.randn(b, 7, 5, size, size, device=dev)
    embeds = torch.randn(b, 7, width, device=dev)
    text = torch.randn(b, 77, width, device=dev)

    def step():
        out = model(images, embeds, text)
        loss = out.encoder_hidden_states.square().mean()
        loss = loss + sum(r.square().mean() for r in out.down_intrablock_additional_residuals)
        loss.backward()
        model.zero_grad(set_to_none=False)

    from contextlib import nullcontext

    ctx = nullcontext()
    if spec["attn"] == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        ctx = sdpa_kernel(SDPBackend.MATH)
    with ctx:
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = rss_bytes()
        step()  # warm-up (also allocates the gradients)
        times = []
        for _ in range(spec["repeats"]):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        saved = saved_bytes(model, (images, embeds, text))
    n_params = sum(p.numel() for p in model.parameters())
    return dict(spec, time_s=min(times), peak_mib=peak / 2**20, saved_mib=saved / 2**20,
                params_m=n_params / 1e6)


def run(spec: dict) -> dict:
    """One measurement in a fresh process (clean peak memory)."""
    env = dict(os.environ, OPAMA_BENCH_WORKER="1")
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                       env=env)
    if p.returncode != 0:
        return dict(spec, error=(p.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(p.stdout.strip().splitlines()[-1])


def fmt(r: dict) -> str:
    if "error" in r:
        return f"{'error: ' + r['error'][:40]:>34}"
    return f"{r['time_s']:8.3f} s {r['peak_mib']:9.1f} {r['saved_mib']:9.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64], help="token grid per image")
    ap.add_argument("--width", type=int, default=32, help="channels of the fused level (scaling part)")
    ap.add_argument("--heads", type=int, default=4, help="attention heads of AOG-Net's modules (scaling part)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--published-scale", type=int, default=None,
                    help="divide the sd2 widths by this in the as-published part (default 16 on CPU, 1 on CUDA)")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-published", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    scale = a.published_scale or (1 if a.device == "cuda" else 16)
    print(machine_info())
    print("scan backend:", os.environ.get("OPAMA_SCAN", "auto"), "| batch", a.batch, "| repeats", a.repeats)
    base = dict(device=a.device, batch=a.batch, repeats=a.repeats)
    if not a.skip_scaling:
        print(f"\n## 1. Global fusion of 7 images at g x g tokens each (width {a.width}, AOG heads {a.heads}, "
              f"images 8g px)")
        print("time = one forward+backward; peak = peak memory growth (MiB); saved = activations kept for backward (MiB)")
        head = f"{'g':>3} {'tokens':>7} | {'OPa-Ma (Mamba)':^34} | {'AOG attention, default SDPA':^34} | " \
               f"{'AOG attention, math kernel':^34} | ratios AOG/OPa-Ma: peak sdpa, peak math, time math"
        print(head)
        print(f"{'':>3} {'':>7} | " + " | ".join([f"{'time':>10} {'peak':>9} {'saved':>9}   "] * 3))
        rows = []
        for g in a.sizes:
            sp = dict(base, mode="scaling", grid=g, width=a.width, heads=a.heads)
            o = run(dict(sp, kind="opama", attn="default"))
            s = run(dict(sp, kind="aog", attn="default"))
            m = run(dict(sp, kind="aog", attn="math"))
            rows.append((g, o, s, m))

            def ratio(x, y, key):
                return f"{x[key] / y[key]:6.2f}x" if "error" not in x and "error" not in y else "   n/a"

            print(f"{g:>3} {7 * g * g:>7} | {fmt(o)} | {fmt(s)} | {fmt(m)} | "
                  f"{ratio(s, o, 'peak_mib')} {ratio(m, o, 'peak_mib')} {ratio(m, o, 'time_s')}", flush=True)
        ok = [r for r in rows if all("error" not in x for x in r[1:])]
        if len(ok) >= 2:
            (g0, o0, _, m0), (g1, o1, _, m1) = ok[0], ok[-1]
            tok = (g1 / g0) ** 2
            print(f"growth from g={g0} to g={g1} ({tok:.0f}x tokens): OPa-Ma peak x{o1['peak_mib'] / o0['peak_mib']:.1f}, "
                  f"saved x{o1['saved_mib'] / o0['saved_mib']:.1f}; AOG math peak x{m1['peak_mib'] / m0['peak_mib']:.1f}, "
                  f"saved x{m1['saved_mib'] / m0['saved_mib']:.1f}")
    if not a.skip_published:
        print(f"\n## 2. As published: full sd2-preset conditioners, 512 px images, widths / {scale} "
              f"(GMA: 4 stages at 64/32/16/8; AOG-Net: attention only at 8x8)")
        print(f"{'conditioner':<34} {'params':>9} {'time':>10} {'peak MiB':>9} {'saved MiB':>9}")
        res = {}
        for kind, attn in (("opama", "default"), ("aog", "default"), ("aog", "math")):
            r = run(dict(base, mode="published", scale=scale, kind=kind, attn=attn))
            res[(kind, attn)] = r
            name = "OPa-Ma (VCR + GMA)" if kind == "opama" else f"AOG-Net ({attn} attention)"
            if "error" in r:
                print(f"{name:<34} {r['error']}")
            else:
                print(f"{name:<34} {r['params_m']:8.1f}M {r['time_s']:8.3f} s {r['peak_mib']:9.1f} {r['saved_mib']:9.1f}",
                      flush=True)
        o, s = res[("opama", "default")], res[("aog", "default")]
        if "error" not in o and "error" not in s:
            print(f"OPa-Ma / AOG-Net as published: time {o['time_s'] / s['time_s']:.2f}x, "
                  f"peak {o['peak_mib'] / s['peak_mib']:.2f}x, saved {o['saved_mib'] / s['saved_mib']:.2f}x")


if __name__ == "__main__":
    main()
