"""The GMA's forward under the chunked scan's CUDA plans, before and now, side by side.

On a GPU the GMA is most of ``fast``'s per-view overhead (docs/performance.md: 0.16-0.21 s per view
on an H200, no mamba-ssm kernels there), and the chunked scan issues thousands of small ops per
forward. ``carry="loop"`` steps through the chunks of each block one by one (2 ops per chunk);
``carry="log"`` (the CUDA default, :func:`opama_model.scan._affine_carry`) does it in ``log2``
rounds; without gradients CUDA also takes 4x larger blocks (fewer blocks, fewer per-block ops).
This script builds the sd2 GMA (random weights), runs one forward of 7 images under
``torch.no_grad`` with the plan before, the log carry alone, and both, and prints for each: the
number of ops that reach a kernel
(aten calls other than views, counted with a ``TorchDispatchMode``), the best seconds of
``--repeat`` runs, and the largest difference of the outputs from the plan before.

    python benchmarks/bench_gma_carry.py                        # CPU, with the GPU's block plan
    python benchmarks/bench_gma_carry.py --device cuda --dtype fp16

On CPU the scan's block budget is set to the CUDA ones (unless ``--cpu-plan``) so that the op
counts are the ones a GPU would issue; the CPU seconds are then NOT what the CPU default runs, and
say nothing about GPU seconds. ``--quick``: 256-px images (L = 1024 at the first stage).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine_info  # noqa: E402

from opama_model import scan  # noqa: E402
from opama_model.gma import GMA  # noqa: E402
from opama_model.presets import get_preset  # noqa: E402

_VIEWS = {"view", "_unsafe_view", "as_strided", "select", "slice", "permute", "transpose", "t", "unsqueeze",
          "squeeze", "expand", "reshape", "_reshape_alias", "alias", "detach", "unbind", "split", "chunk",
          "narrow", "diagonal", "view_as", "flatten", "unflatten", "unfold", "lift_fresh", "split_with_sizes"}


class OpCount(TorchDispatchMode):
    """Counts aten calls that are not views (what launches a kernel on a GPU)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__.rstrip("_") not in _VIEWS:
            self.n += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="256-px images instead of 512")
    ap.add_argument("--cpu-plan", action="store_true", help="on CPU, keep the CPU block budget")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    print(machine_info(gpu=device.type == "cuda"), flush=True)
    torch.manual_seed(0)
    size = 256 if a.quick else get_preset("sd2").image_size
    gma = GMA(**get_preset("sd2").gma).to(device, dtype).eval()
    x = torch.randn(1, 7, 5, size, size, device=device, dtype=dtype)
    plan_note = "CPU block budget" if device.type == "cpu" and a.cpu_plan else "GPU block budget"
    print(f"sd2 GMA, 7 images of {size} px, {a.dtype}, {device}, {plan_note}", flush=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    configs = [("loop", 1 << 24, "the CUDA plan before"), ("log", 1 << 24, "log carry only"),
               ("log", scan._BLOCK_ELEMS_CUDA_INFER, "the CUDA default without gradients now")]
    rows, outs = [], []
    for carry, budget, what in configs:
        os.environ["OPAMA_SCAN_CARRY"] = carry
        if device.type == "cuda":
            scan._BLOCK_ELEMS_CUDA_INFER = budget
        elif not a.cpu_plan:
            scan._BLOCK_ELEMS_CPU = budget  # the GPU's blocks, so the op counts are the GPU's
        with torch.no_grad():
            counter = OpCount()
            with counter:
                outs.append([f.float().cpu() for f in gma(x)])
            best = float("inf")
            for _ in range(a.repeat):
                sync()
                t0 = time.perf_counter()
                gma(x)
                sync()
                best = min(best, time.perf_counter() - t0)
        rows.append((counter.n, best))
        print(f"carry={carry:<5} block {budget >> 20:>3d} Mi elems  ops {counter.n:>7,d}   best of {a.repeat}: "
              f"{best:8.3f} s   ({what})", flush=True)
    os.environ.pop("OPAMA_SCAN_CARRY", None)
    (n0, t0) = rows[0]
    print()
    for (carry, budget, what), (n, t), o in list(zip(configs, rows, outs))[1:]:
        diff = max(float((p - q).abs().max() / q.abs().max().clamp_min(1e-30)) for p, q in zip(o, outs[0]))
        print(f"{what} / before: ops {n / n0:.3f}x ({n0 - n:,d} fewer), seconds {t / t0:.3f}x; outputs: largest "
              f"relative difference {diff:.1e}", flush=True)

if __name__ == "__main__":
    main()
