"""Benchmark: what the content signature of :mod:`opama_tools.jobs` costs on a re-run.

A re-run decides "done" by hashing every source (:func:`opama_tools.jobs.source_signature`,
sha256 of the bytes) instead of comparing size and mtime. Side by side in one run, per file
(page cache warm, one process):

* stat: ``os.stat`` (the size + mtime signature the stages used before);
* sha256: :func:`opama_tools.jobs.source_signature`;
* decode: reading the image the way the stage does (:func:`opama_tools.data.exr.read_exr` for
  an EXR, :func:`opama_tools.images.read_ldr` for a PNG), which a skipped file avoids.

Prints the times, the sha256 throughput, the ratio sha256 / decode, and the machine. Usage::

    python benchmarks/bench_signature.py [--height 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    import imageio.v3 as iio

    from opama_tools.data.exr import read_exr, write_exr
    from opama_tools.images import read_ldr
    from opama_tools.jobs import source_signature

    h, w = a.height, 2 * a.height
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        exr, png = Path(d) / "p.exr", Path(d) / "p.png"
        hdr = rng.lognormal(0, 1, (h, w, 3)).astype(np.float32)
        write_exr(exr, hdr)
        yy, xx = np.mgrid[0:h, 0:w]
        ldr = np.stack([(xx * 255 // w), (yy * 255 // h), (xx + yy) % 256], -1).astype(np.uint8)
        ldr = np.clip(ldr.astype(int) + rng.integers(-8, 9, ldr.shape), 0, 255).astype(np.uint8)
        iio.imwrite(png, ldr)
        print(f"sources: {h}x{w} float32 EXR (zip) and 8-bit PNG; best of {a.repeats}")
        print(f"{'file':<10}{'MB':>8}{'stat ms':>10}{'sha256 ms':>11}{'decode ms':>11}{'sha256 MB/s':>13}"
              f"{'sha256/decode':>15}")
        for name, path, decode in (("EXR", exr, read_exr), ("PNG", png, read_ldr)):
            decode(path)  # warm the page cache and imports
            t_stat = best(lambda: os.stat(path), a.repeats)
            t_sig = best(lambda: source_signature(path), a.repeats)
            t_dec = best(lambda: decode(path), a.repeats)
            mb = path.stat().st_size / 1e6
            print(f"{name:<10}{mb:>8.1f}{t_stat * 1e3:>10.3f}{t_sig * 1e3:>11.1f}{t_dec * 1e3:>11.1f}"
                  f"{mb / t_sig:>13.0f}{t_sig / t_dec:>15.2f}")
    print(machine_info(["OpenEXR", "imageio", "PIL"], gpu=False))


if __name__ == "__main__":
    main()
