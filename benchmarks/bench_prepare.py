"""Benchmark: ``opama prepare``'s per-image path vs a plain numpy/Pillow reference.

Both sides turn the same synthetic 2048x4096 float32 EXR into a 1024x2048 PNG with the
percentile operator (AOG-Net's), one process each (= images/s per worker):

* prepare: :func:`opama_tools.data.prepare.process_file` (bad-value check, exact median by
  sampled-bracket selection on the raw values, fused in-place clip/pow/scale, Lanczos-3
  resize as two sparse products with wrapped columns, atomic PNG write);
* reference: ``read_exr`` → ``x ** (1/2.4)`` → ``np.percentile(xg[xg > 0], 50)`` →
  ``clip(alpha * xg)`` → Pillow float Lanczos per channel on a column-wrapped copy →
  the same rounding → ``imageio.imwrite``.

Prints both rates, the ratio, a per-stage breakdown, the largest pixel difference
between the two PNGs, and the machine. Usage::

    python benchmarks/bench_prepare.py [--n 3] [--data DIR] [--repeats 2]

The synthetic EXRs (ray-cast, ~20 s each the first time) are cached in ``--data``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402


def make_data(folder: Path, n: int, compression: str) -> list[Path]:
    from opama_tools.data.exr import write_exr
    from opama_tools.data.synthetic import make_scene, render_equirect

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        p = folder / f"bench_{k:02d}_{compression}.exr"
        if not p.exists():
            t = time.perf_counter()
            img = render_equirect(make_scene(100 + k), 2048, 4096, supersample=1)
            write_exr(p, img, compression=compression)
            print(f"  rendered {p.name} in {time.perf_counter() - t:.1f} s")
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- reference
def reference(src: Path, dst: Path, out_h: int = 1024, out_w: int = 2048) -> dict:
    """The plain approach; returns stage times in seconds."""
    import imageio.v3 as iio
    from PIL import Image

    from opama_tools.data.exr import read_exr

    t0 = time.perf_counter()
    x = read_exr(src)
    t1 = time.perf_counter()
    xg = x ** (1 / 2.4)
    alpha = 0.5 / (np.percentile(xg[xg > 0], 50) + 1e-10)
    y = np.clip(alpha * xg, 0, 1)
    t2 = time.perf_counter()
    H, W, C = y.shape
    pad = int(math.ceil(3 * max(W / out_w, 1))) + 2
    padded = np.concatenate([y[:, -pad:], y, y[:, :pad]], axis=1)
    r = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(padded[..., c])).resize(
        (out_w, out_h), Image.Resampling.LANCZOS, box=(pad, 0, pad + W, H))) for c in range(C)], -1)
    t3 = time.perf_counter()
    u8 = np.floor(np.clip(r, 0, 1) * 255 + 0.5).astype(np.uint8)
    iio.imwrite(dst, u8)
    t4 = time.perf_counter()
    return {"read": t1 - t0, "tonemap": t2 - t1, "resize": t3 - t2, "write": t4 - t3, "total": t4 - t0}


def prepare_stages(src: Path, dst: Path, out_h: int = 1024, out_w: int = 2048) -> dict:
    """The stages of ``process_file`` called one by one, for the breakdown only."""
    from opama_tools.data.exr import read_exr
    from opama_tools.data.prepare import _write_png, resize_equirect, to_uint8
    from opama_tools.data.tonemap import repair_hdr, tonemap

    t0 = time.perf_counter()
    x = read_exr(src)
    t1 = time.perf_counter()
    repair_hdr(x)
    y, _ = tonemap(x, "percentile", in_place=True)
    t2 = time.perf_counter()
    r = resize_equirect(y, out_h, out_w)
    t3 = time.perf_counter()
    _write_png(dst, to_uint8(r))
    t4 = time.perf_counter()
    return {"read": t1 - t0, "tonemap": t2 - t1, "resize": t3 - t2, "write": t4 - t3, "total": t4 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="number of 2048x4096 panoramas")
    ap.add_argument("--repeats", type=int, default=2, help="passes over the images (median reported)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "opama_bench_prepare")
    ap.add_argument("--compression", default="zip", choices=["zip", "none", "piz"], help="EXR compression of the inputs")
    args = ap.parse_args()

    import imageio.v3 as iio

    from opama_tools.data.prepare import PrepareConfig, process_file

    print("machine:", machine_info(("numpy", "scipy", "PIL", "OpenEXR"), gpu=False,
                                   torch_note="not used by either side"))
    srcs = make_data(args.data, args.n, args.compression)
    out = args.data / "out"
    out.mkdir(exist_ok=True)
    cfg = PrepareConfig(size=(1024, 2048), operator="percentile", overwrite=True)

    ours, ref, ours_st, ref_st = [], [], [], []
    max_diff = 0
    process_file(srcs[0], out / "warm.png", cfg)  # warm caches (weights, imports) for both sides
    reference(srcs[0], out / "warm_ref.png")
    for _ in range(args.repeats):
        for p in srcs:
            a, b = out / f"{p.stem}_prepare.png", out / f"{p.stem}_ref.png"
            t = time.perf_counter()
            row = process_file(p, a, cfg)
            ours.append(time.perf_counter() - t)
            assert row["status"] == "done", row
            ref_st.append(reference(p, b))
            ref.append(ref_st[-1]["total"])
            ours_st.append(prepare_stages(p, out / f"{p.stem}_stages.png"))
            d = np.abs(iio.imread(a).astype(int) - iio.imread(b).astype(int))
            max_diff = max(max_diff, int(d.max()))

    t_ours, t_ref = statistics.median(ours), statistics.median(ref)
    print(f"inputs: {args.n} synthetic 2048x4096 float32 EXR ({args.compression} compression) -> 1024x2048 PNG, "
          f"operator percentile, 1 process, median of {len(ours)} runs")
    print(f"prepare (opama)      : {1 / t_ours:6.3f} images/s per worker  ({t_ours * 1000:7.1f} ms/image)")
    print(f"reference (np.percentile + Pillow): {1 / t_ref:6.3f} images/s per worker  ({t_ref * 1000:7.1f} ms/image)")
    print(f"speed-up             : {t_ref / t_ours:6.2f}x")
    print(f"max pixel difference : {max_diff}/255 (over every pixel of every image)")
    print("stage breakdown, median ms:   read   tonemap   resize   write(+uint8)")
    for name, st in (("prepare", ours_st), ("reference", ref_st)):
        med = {k: statistics.median(s[k] for s in st) * 1000 for k in st[0]}
        print(f"  {name:10s}               {med['read']:7.1f} {med['tonemap']:8.1f} {med['resize']:8.1f} {med['write']:8.1f}")


if __name__ == "__main__":
    main()
