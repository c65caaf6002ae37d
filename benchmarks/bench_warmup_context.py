"""Benchmark: seconds per step of the tiny UNet warm-up with ``--unet-context text`` beside ``null``.

Side by side in one process, alternating ``--rounds`` times: :func:`opama_model.training.warmup.unet_warmup`
on the tiny preset (random weights, seed 0) at the demo's settings (128 x 256 canvas, batch 8), for
``--steps`` steps with the conditioner's null tokens as context, then with the captions' text-encoder
states (what the demo now uses). The panoramas are ``--n`` random images with captions, so only the
cost is measured, not what is learned. Prints the median seconds per step of each, the ratio
text / null and the machine. Usage::

    python benchmarks/bench_warmup_context.py [--steps 10] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from opama_model.presets import build_components
    from opama_model.training.data import PanoramaDataset, PanoramaRecord
    from opama_model.training.sample import SampleSettings
    from opama_model.training.warmup import unet_warmup

    torch.set_num_threads(args.threads)
    hw = (128, 256)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        recs = []
        for k in range(args.n):
            f = Path(tmp) / f"p{k}.png"
            Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(f)
            recs.append(PanoramaRecord(str(f), f"a room with a window and a lamp {k}",
                                       tuple(f"view {j} of a room with white walls" for j in range(12))))
        ds = PanoramaDataset(recs, SampleSettings(view_size=64, canvas_hw=hw), seed=0)
        ds.panorama(0)
        times: dict[str, list[float]] = {"null": [], "text": []}
        for _ in range(args.rounds):
            for ctx in ("null", "text"):
                comps = build_components("tiny", random_weights=True, seed=0)
                t0 = time.perf_counter()
                unet_warmup(comps, ds, torch.device("cpu"), steps=args.steps, lr=2e-3, batch=args.batch,
                            context=ctx)
                times[ctx].append((time.perf_counter() - t0) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"UNet warm-up, tiny preset, canvas {hw[0]}x{hw[1]}, batch {args.batch}, {args.steps} steps x "
          f"{args.rounds} rounds (alternating)")
    for k in ("null", "text"):
        print(f"  context {k}: {med[k]:.3f} s/step (rounds: {', '.join(f'{x:.3f}' for x in times[k])})")
    print(f"  ratio text / null: {med['text'] / med['null']:.3f}")
    print(machine_info(("diffusers", "transformers"), gpu=False))


if __name__ == "__main__":
    main()
