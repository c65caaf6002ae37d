"""NFoV crops per second: batched torch ``equi_to_pers`` (pad once) vs a loop over ``py360convert.e2p``.

Cuts V views (default: the 21 views of AOG-Net's ``aog21`` order, fov 90, 512x512) from one
2048x4096 RGB float32 panorama and prints both sides, the ratio and the max difference.

* py360convert: one ``e2p`` call per view (numpy in, numpy out). "cold" is the first pass
  (it builds and lru-caches each view's grid), "warm" the best of the next passes.
* torch: per panorama ``pad_equirect`` once, then one ``equi_to_pers(..., padded=True)`` call
  for all V views. "cold" includes building the sampling grids, "warm" reuses the cached grids
  (like py360convert's cache). Both include the padding; the pad alone is printed too.

Usage: python benchmarks/bench_geometry.py [--device cuda] [--views 21] [--size 512] [--height 2048]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, machine_info  # noqa: E402


def make_panorama(height: int) -> np.ndarray:
    """Smooth seamless pattern + mild noise, (H, 2H, 3) float32 in [0, 1]."""
    rng = np.random.default_rng(0)
    lat = (0.5 - (np.arange(height) + 0.5) / height)[:, None] * np.pi
    lon = ((np.arange(2 * height) + 0.5) / (2 * height) - 0.5)[None, :] * 2 * np.pi
    chans = [0.5 + 0.3 * np.sin(k * lon + 3 * lat) * np.cos((k + 2) * lat) for k in (3, 5, 7)]
    img = np.stack(chans, -1).astype(np.float32)
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="torch device for the batched path (cpu or cuda)")
    ap.add_argument("--views", type=int, default=21, help="number of views (first V of aog21, then ring8 repeats)")
    ap.add_argument("--size", type=int, default=512, help="view size in pixels")
    ap.add_argument("--height", type=int, default=2048, help="panorama height (width = 2 x height)")
    ap.add_argument("--repeats", type=int, default=2, help="warm passes (best is reported)")
    args = ap.parse_args()

    import py360convert as p3

    from opama_model.spherical import equi_to_pers, pad_equirect, view_lonlat_map
    from opama_model.views import AOG21, RING8

    device = torch.device(args.device)
    views = (list(AOG21) + list(RING8) * 8)[: args.views]
    yaws, pitches = [v[0] for v in views], [v[1] for v in views]
    hw = (args.size, args.size)
    pano = make_panorama(args.height)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print("machine:", machine_info(("py360convert", "numpy"), gpu=False))
    print(f"torch device: {device} ({dev_name})")
    print(f"task: {len(views)} views of {hw[0]}x{hw[1]}, fov 90, from a {args.height}x{2 * args.height} RGB float32 panorama")

    # ---------------------------------------------------------------- py360convert loop
    def run_p3() -> tuple[float, list[np.ndarray]]:
        t = time.perf_counter()
        outs = [p3.e2p(pano, 90, y, p, hw) for y, p in zip(yaws, pitches)]
        return time.perf_counter() - t, outs

    p3_cold, ref = run_p3()
    p3_warm = min(run_p3()[0] for _ in range(args.repeats))

    # ---------------------------------------------------------------- torch batched
    def run_torch() -> tuple[float, float, torch.Tensor]:
        sync(device)
        t = time.perf_counter()
        x = torch.from_numpy(pano).to(device).permute(2, 0, 1).unsqueeze(0)
        padded = pad_equirect(x, 1)
        sync(device)
        t_pad = time.perf_counter() - t
        out = equi_to_pers(padded, yaws, pitches, 90.0, hw, padded=True)
        sync(device)
        return time.perf_counter() - t, t_pad, out

    with torch.no_grad():
        th_cold, _, out = run_torch()
        warm = [run_torch() for _ in range(args.repeats)]
    th_warm = min(w[0] for w in warm)
    pad_t = min(w[1] for w in warm)
    out = warm[-1][2]
    ours = out[0].permute(0, 2, 3, 1).float().cpu().numpy()
    max_diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, ref))
    mean_diff = float(np.mean([np.abs(a - b).mean() for a, b in zip(ours, ref)]))
    # Near a pole the longitude is ill-conditioned in float32 (both sides compute in float32).
    lat = view_lonlat_map(yaws, pitches, 90.0, hw)[:, 1].numpy()
    far = np.abs(lat) < np.radians(85)
    max_far = max(float(np.abs(a - b).max(-1)[m].max()) for a, b, m in zip(ours, ref, far))

    n = len(views)
    print()
    print(f"{'':32s}{'cold':>12s}{'warm':>12s}{'views/s (warm)':>18s}")
    print(f"{'py360convert.e2p loop':32s}{p3_cold:11.3f}s{p3_warm:11.3f}s{n / p3_warm:18.1f}")
    print(f"{'torch batched (pad once)':32s}{th_cold:11.3f}s{th_warm:11.3f}s{n / th_warm:18.1f}")
    print(f"{'  of which pad_equirect':32s}{'':12s}{pad_t:11.3f}s")
    print(f"speed-up (py360 / torch): warm {p3_warm / th_warm:.1f}x, cold {p3_cold / th_cold:.1f}x  (goal >= 8x warm on CPU)")
    print(f"max |torch - py360convert| = {max_diff:.2e}, mean = {mean_diff:.2e}, "
          f"max away from the poles (|lat| < 85°) = {max_far:.2e} (values in [0, 1])")


if __name__ == "__main__":
    main()
