"""Benchmark: how fast ``opama outpaint`` answers a usage error, beside what a torch import costs.

Side by side in one run, each a fresh ``python`` process, ``--repeats`` times (median):

* usage error: ``python -m opama_tools.cli outpaint --preset tiny --size 100x100 --out ...`` (exit 2);
* ``--help``: ``python -m opama_tools.cli outpaint --help`` (the CLI's own import cost);
* torch: ``python -c "import torch"``; pipeline: ``python -c "import opama_model.pipeline"``
  (torch + diffusers: what the command imported before checking its arguments).

Prints the medians, the ratios to the usage error, and the machine. Usage::

    python benchmarks/bench_cli_usage.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402


def _seconds(cmd: list[str], want: int) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != want:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}, expected {want}\n{p.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "usage error": ([py, "-m", "opama_tools.cli", "outpaint", "--preset", "tiny", "--size", "100x100",
                             "--out", str(Path(tmp) / "o")], 2),
            "outpaint --help": ([py, "-m", "opama_tools.cli", "outpaint", "--help"], 0),
            "import torch": ([py, "-c", "import torch"], 0),
            "import pipeline": ([py, "-c", "import opama_model.pipeline"], 0),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):  # interleaved: the machine's load affects every case alike
            for k, (cmd, want) in cases.items():
                times[k].append(_seconds(cmd, want))
    base = statistics.median(times["usage error"])
    print(f"{'case':<18} {'median s':>9} {'x usage error':>14}")
    for k, ts in times.items():
        m = statistics.median(ts)
        print(f"{k:<18} {m:>9.3f} {m / base:>14.1f}")
    print(machine_info(["diffusers", "typer"]))


if __name__ == "__main__":
    main()
