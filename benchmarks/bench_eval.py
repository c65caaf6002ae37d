"""Throughput of the `opama eval` metric pass: images/s over 200 synthetic 512x1024 panoramas.

Side A: the weight-free metrics of the input region (seam, pole, masked PSNR/SSIM).
Side A+: the same plus DS and the generated-region group (PSNR/SSIM outside the input view,
colour / gradient histogram distances per latitude band): what the new groups cost.
Side B: every metric, with tiny randomly initialised stand-ins for the networks (saved in
the real formats and loaded through the real loaders): cube/NFoV cutting, clean-fid
preprocessing, FID/KID/IS/OmniFID/FID-h/FAED/LPIPS/CLIP score. With the real Inception/CLIP
networks side B is slower by their forward cost; this measures everything around them.

Panoramas are rendered once (opama_tools.data.synthetic) and cached under the system temp
folder (opama-bench-eval/). Run: python benchmarks/bench_eval.py [--n 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402


def make_data(root: Path, n: int, height: int) -> tuple[Path, Path]:
    from PIL import Image

    from test_metrics_helpers import tonemap8
    from opama_tools.data.synthetic import make_scene, render_equirect

    gen, ref = root / "gen", root / "ref"
    gen.mkdir(parents=True, exist_ok=True)
    ref.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    made = 0
    for k in range(n):
        rp, gp = ref / f"p{k:04d}.png", gen / f"p{k:04d}.png"
        if rp.exists() and gp.exists():
            continue
        r = tonemap8(render_equirect(make_scene(k), height, 2 * height, supersample=1))
        g = np.roll(r, int(rng.integers(0, 2 * height)), axis=1).astype(np.int16) + rng.integers(-12, 13, r.shape)
        Image.fromarray(r).save(rp)
        Image.fromarray(np.clip(g, 0, 255).astype(np.uint8)).save(gp)
        made += 1
    if made:
        print(f"rendered {made} panorama pairs in {time.perf_counter() - t:.1f} s (cached in {root})")
    return gen, ref


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--skip-b", action="store_true", help="only the weight-free sides A and A+")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from opama_tools.eval.evaluate import EvalOptions, evaluate
    from test_metrics_helpers import (
        save_tiny_faed, save_tiny_hf_clip, save_tiny_inception, save_tiny_open_clip, save_tiny_squeezenet,
    )

    root = Path(tempfile.gettempdir()) / "opama-bench-eval" / f"{args.n}x{args.height}"
    gen, ref = make_data(root, args.n, args.height)
    nets = Path(tempfile.mkdtemp(prefix="opama-bench-nets-"))
    learned = dict(
        inception_weights=str(save_tiny_inception(nets / "tiny-inception.pt")),
        fid_clip_weights=str(save_tiny_open_clip(nets / "tiny-open-clip")),
        clip_weights=str(save_tiny_hf_clip(nets / "tiny-hf-clip")),
        lpips_weights=str(save_tiny_squeezenet(nets / "tiny-squeeze.safetensors")),
        faed_weights=str(save_tiny_faed(nets / "faed.ckpt")),  # the real architecture, random weights
    )
    caps = nets / "caps.jsonl"
    caps.write_text("".join(f'{{"image": "p{k:04d}.png", "caption": "a room with a window"}}\n' for k in range(args.n)))

    runs = {
        "A weight-free (seam, pole, psnr, ssim)": EvalOptions(metrics=("seam", "pole", "psnr", "ssim"), device="cpu",
                                                               set_bootstrap=0),
        "A+ weight-free + DS + generated region": EvalOptions(
            metrics=("seam", "pole", "psnr", "ssim", "ds", "region"), device="cpu", set_bootstrap=0),
        "B all metrics, tiny networks": EvalOptions(
            metrics=("fid", "kid", "is", "omnifid", "fidh", "faed", "clip", "lpips", "psnr", "ssim", "region", "seam",
                     "ds", "pole"),
            captions=str(caps), device="cpu", set_bootstrap=0, faed_height=min(512, args.height), **learned),
    }
    if args.skip_b:
        runs = {k: v for k, v in runs.items() if not k.startswith("B")}
    print(machine_info())
    print(f"{args.n} panoramas of {args.height}x{2 * args.height}, 4 cube faces of 299 px (+U, D, 4 diagonal views for OmniFID/FID-h)")
    rates = {}
    for name, opt in runs.items():
        t = time.perf_counter()
        res = evaluate(gen, ref, opt)
        dt = time.perf_counter() - t
        n = len(res.per_image)
        rates[name] = n / dt
        ok = sum(m.status == "ok" for m in res.metrics)
        print(f"{name}: {n} pairs in {dt:.1f} s = {n / dt:.2f} images/s ({ok} metric rows ok)")
    r = list(rates.values())
    print(f"ratio A/A+: {r[0] / r[1]:.2f}x (the cost of DS and the generated-region group)")
    if len(r) > 2:
        print(f"ratio A/B: {r[0] / r[2]:.2f}x (the cost of cutting views and running the learned-metric pipeline)")


if __name__ == "__main__":
    main()
