"""Benchmark the selective scan: opama's ``chunked`` (and ``cuda``) against the alternatives.

Scan level (u, delta, A, B, C with softplus(delta)): ``chunked``, ``cuda`` (mamba-ssm, CUDA only),
``ref`` (opama's sequential loop, the reference) and mambapy's ``pscan`` (Blelloch scan over
materialised (B, L, D, N) tensors). Mixer level (the same weights, input (B, L, D/2), d_inner = D):
opama's ``Mamba`` (chunked) against transformers' ``MambaMixer`` slow path (the sequential loop with
per-step indexing that a CPU user gets) and its ``use_mambapy=True`` path.

Every measurement runs in its own subprocess so that peak memory is clean: CPU = peak RSS minus RSS
before the call (sampled every 0.5 ms), CUDA = ``max_memory_allocated`` minus the allocation before.
Times are the best of ``--repeat`` runs, wall clock and (CPU) process CPU time; on a shared machine
CPU time is the steadier number (ratios and the goal check use it; on CUDA both columns are wall
time). Errors: max abs difference of the output and of every input gradient against ``ref`` (scan
level) or against opama's ``Mamba`` with the ``ref`` backend (mixer level); "rel" divides by the
reference's max abs value. ``ref`` always runs (it is the reference for the error columns).

Usage::

    python benchmarks/bench_scan.py            # B=2, D in {64, 256}, N=16, L in {1024, 4096, 16384}
    python benchmarks/bench_scan.py --quick    # D=64, L in {1024, 4096}
    python benchmarks/bench_scan.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

SCAN_METHODS = ("chunked", "cuda", "ref", "pscan")
MIXER_METHODS = ("mixer:opama", "mixer:hf-slow", "mixer:hf-mambapy")


# ----------------------------------------------------------------------------------------------
# worker (one method, one size), run in a subprocess
# ----------------------------------------------------------------------------------------------


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class _PeakRSS:
    """Samples RSS in a thread (torch ops release the GIL) and keeps the maximum."""

    def __enter__(self):
        self.base = _rss()
        self.peak = self.base
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, _rss())

    @property
    def used(self):
        return self.peak - self.base


def _inputs(b, d, n, L, device, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, L, generator=g)
    delta = torch.randn(b, d, L, generator=g) * 0.5 - 1.0
    A = -(torch.rand(d, n, generator=g) * 3 + 0.1)
    B = torch.randn(b, n, L, generator=g)
    C = torch.randn(b, n, L, generator=g)
    return [t.to(device).requires_grad_() for t in (u, delta, A, B, C)]


def _scan_fn(method):
    import torch
    import torch.nn.functional as F

    if method in ("chunked", "ref", "cuda"):
        from opama_model.scan import selective_scan

        return lambda u, delta, A, B, C: selective_scan(u, delta, A, B, C, delta_softplus=True, backend=method)
    if method == "pscan":
        from mambapy.pscan import pscan

        def f(u, delta, A, B, C):  # mambapy's selective_scan, on our layout
            dt = F.softplus(delta).transpose(1, 2)  # (b, l, d)
            deltaA = torch.exp(dt.unsqueeze(-1) * A)  # (b, l, d, n)
            BX = (dt * u.transpose(1, 2)).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)
            hs = pscan(deltaA, BX)
            return (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)

        return f
    raise ValueError(method)


def _mixer(method, D, n, device):
    import torch

    from opama_model.mamba import Mamba

    torch.manual_seed(0)
    ours = Mamba(D // 2, d_state=n, scan_backend="ref" if method == "mixer:ref" else "chunked").to(device)
    if method in ("mixer:opama", "mixer:ref"):
        return ours
    import transformers
    from transformers.models.mamba.modeling_mamba import MambaMixer

    transformers.logging.set_verbosity_error()
    cfg = transformers.MambaConfig(hidden_size=D // 2, state_size=n, expand=2, conv_kernel=4,
                                   time_step_rank=ours.dt_rank, use_conv_bias=True, use_bias=False,
                                   use_mambapy=(method == "mixer:hf-mambapy"))
    theirs = MambaMixer(cfg, layer_idx=0).to(device)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return theirs


def worker(spec: dict) -> dict:
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    b, D, n, L, method = spec["b"], spec["D"], spec["n"], spec["L"], spec["method"]
    if method.startswith("mixer:"):
        m = _mixer(method, D, n, device)
        x = torch.randn(b, L, D // 2, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
        ins, names = [x] + list(m.parameters()), ["x"] + [k for k, _ in m.named_parameters()]

        def fwd():
            return m(x)
    else:
        ins, names = _inputs(b, D, n, L, device), ["u", "delta", "A", "B", "C"]
        fn = _scan_fn(method)

        def fwd():
            return fn(*ins)

    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    w = None

    def fwd_bwd():
        nonlocal w
        for t in ins:
            t.grad = None
        y = fwd()
        if w is None:
            w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device)
        (y * w).sum().backward()
        return y

    def timed(f, reps):
        best_wall = best_cpu = float("inf")
        for _ in range(reps):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            out = f()
            sync()
            best_wall = min(best_wall, time.perf_counter() - t0)
            # on CUDA the host CPU time means nothing: report wall time in both columns
            best_cpu = best_wall if cuda else min(best_cpu, time.process_time() - c0)
        return out, best_wall, best_cpu

    res = {}
    grads = {}
    if spec["backward"]:
        # peak memory of the first (cold) forward + backward, before anything is cached or retained
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            y = fwd_bwd()
            torch.cuda.synchronize()
            cold = time.perf_counter() - t0
            res["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            with _PeakRSS() as pk:
                y = fwd_bwd()
            cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
            res["peak_mb"] = pk.used / 2**20
        grads = {f"grad.{k}": t.grad.clone() for k, t in zip(names, ins) if t.grad is not None}
        if spec["warm"]:
            _, res["fwdbwd_s"], res["fwdbwd_cpu_s"] = timed(fwd_bwd, spec["repeat"])
        else:  # the slow references: the cold run is the measurement
            res["fwdbwd_s"] = cold
            res["fwdbwd_cpu_s"] = cold if cuda else cold_cpu
    with torch.no_grad():
        if spec["warm"]:
            fwd()
        y, res["fwd_s"], res["fwd_cpu_s"] = timed(fwd, spec["repeat"] if spec["warm"] else 1)
    tensors = {"out": y.detach()} | {k: v.detach() for k, v in grads.items()}
    save_file({k: v.float().contiguous().cpu() for k, v in tensors.items()}, spec["save"])
    return res


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


def run_one(spec, timeout):
    with tempfile.TemporaryDirectory() as td:
        spec = dict(spec, save=str(Path(td) / "out.safetensors"))
        try:
            p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"skip": f"over the {timeout:.0f} s time cap"}, None
        if p.returncode != 0:
            return {"skip": "failed: " + (p.stderr.strip().splitlines() or ["?"])[-1][:120]}, None
        from safetensors.torch import load_file

        return json.loads(p.stdout.strip().splitlines()[-1]), load_file(spec["save"])


def diff(t, ref):
    if t is None or ref is None:
        return None, None
    worst_abs, worst_rel = 0.0, 0.0
    for k, r in ref.items():
        if k not in t:
            continue
        a = float((t[k] - r).abs().max())
        worst_abs = max(worst_abs, a)
        worst_rel = max(worst_rel, a / max(float(r.abs().max()), 1e-30))
    return worst_abs, worst_rel


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="D=64, L in {1024, 4096} only")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best is kept)")
    ap.add_argument("--D", type=int, nargs="*", default=None, help="channel counts (default 64 256)")
    ap.add_argument("--L", type=int, nargs="*", default=None, help="lengths (default 1024 4096 16384)")
    ap.add_argument("--methods", nargs="*", default=list(SCAN_METHODS + MIXER_METHODS))
    ap.add_argument("--cap", type=float, default=300.0, help="time cap per measurement, seconds")
    ap.add_argument("--slow-max", type=float, default=2 * 64 * 1024 ** 2,
                    help="run transformers' slow path forward+backward only when B*D*L^2 <= this "
                         "(its per-step indexing makes the backward quadratic: ~4 min at B=2, D=64, L=4096)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return

    import psutil
    import torch

    threads = a.threads or torch.get_num_threads()
    Ds = a.D or ([64] if a.quick else [64, 256])
    Ls = a.L or ([1024, 4096] if a.quick else [1024, 4096, 16384])
    b, n = 2, 16
    print(machine_info(("transformers", "mambapy"), gpu=a.device == "cuda"))
    if a.device == "cpu" and os.getloadavg()[0] > (os.cpu_count() or 1) and threads > 1:
        print(f"note: the machine is busy (load {os.getloadavg()[0]:.1f}); --threads 1 gives steadier numbers")
    print(f"device {a.device}, torch threads {threads}, B={b}, N={n}, best of {a.repeat}; "
          "times in ms; peak = extra memory of one forward+backward (MiB)")
    cuda_ok = False
    if a.device == "cuda":
        from opama_model.scan import cuda_scan_available

        cuda_ok = torch.cuda.is_available() and cuda_scan_available()
    hdr = (f"{'method':18s} {'D':>4s} {'L':>6s} {'fwd':>9s} {'fwd cpu':>9s} {'fwd+bwd':>9s} {'f+b cpu':>9s} "
           f"{'peak':>8s} {'max|diff|':>9s} {'rel':>8s} {'f+b vs chunked':>14s}")
    summary = []
    for D in Ds:
        for L in Ls:
            print()
            print(hdr)
            ref_out = {}
            rows = {}
            order = ["ref", "mixer:ref"] + [m for m in a.methods if m not in ("ref", "mixer:ref")]
            for method in order:
                if method == "mixer:ref" and not any(m.startswith("mixer:") for m in a.methods):
                    continue
                if method == "cuda" and not cuda_ok:
                    continue
                spec = dict(method=method, b=b, D=D, n=n, L=L, device=a.device, threads=threads,
                            repeat=a.repeat, warm=True, backward=True)
                # the reference loops: time one cold run only (they are the slow side)
                if method in ("ref", "mixer:ref", "mixer:hf-slow"):
                    spec["warm"] = False
                big = b * D * L * n * 4 * 8  # ~8 materialised (B, L, D, N) float32 tensors
                if method in ("ref", "pscan", "mixer:hf-slow", "mixer:hf-mambapy", "mixer:ref") and \
                        a.device == "cpu" and big > 0.5 * psutil.virtual_memory().available:
                    rows[method] = ({"skip": "needs more memory than half of what is free"}, None)
                    continue
                if method == "mixer:hf-slow" and b * D * L * L > a.slow_max:
                    spec["backward"] = False
                res, out = run_one(spec, a.cap)
                if method == "mixer:hf-slow" and not spec["backward"] and "skip" not in res:
                    res["note"] = "fwd only (backward: minutes, see --slow-max)"
                rows[method] = (res, out)
                if method in ("ref", "mixer:ref"):
                    ref_out[method] = out
                    if method == "mixer:ref":
                        continue
                ref = ref_out.get("mixer:ref" if method.startswith("mixer:") else "ref")
                if ref is None and method != "ref":
                    ref = rows.get("chunked", (None, None))[1]  # ref skipped: compare against chunked
                dabs, drel = diff(out, ref) if method != "ref" else (0.0, 0.0)
                base = rows.get("mixer:opama" if method.startswith("mixer:") else "chunked", ({}, None))[0]
                if "skip" in res:
                    print(f"{method:18s} {D:4d} {L:6d}   skipped: {res['skip']}")
                    continue

                def ms(k):
                    return f"{res[k] * 1e3:9.1f}" if k in res else f"{'-':>9s}"

                ratio = ""
                if "fwdbwd_cpu_s" in res and "fwdbwd_cpu_s" in base:
                    ratio = f"{res['fwdbwd_cpu_s'] / base['fwdbwd_cpu_s']:13.1f}x"
                peak = f"{res['peak_mb']:8.1f}" if "peak_mb" in res else f"{'-':>8s}"
                dd = f"{dabs:9.2e} {drel:8.1e}" if dabs is not None else f"{'-':>9s} {'-':>8s}"
                print(f"{method:18s} {D:4d} {L:6d} {ms('fwd_s')} {ms('fwd_cpu_s')} {ms('fwdbwd_s')} "
                      f"{ms('fwdbwd_cpu_s')} {peak} {dd} {ratio} {res.get('note', '')}", flush=True)
            # goal check at L >= 4096: chunked forward+backward faster than every alternative
            pairs = (("chunked", ("ref", "pscan")), ("mixer:opama", ("mixer:hf-slow", "mixer:hf-mambapy")))
            for mine_key, alts in pairs:
                mine = rows.get(mine_key, ({"skip": ""}, None))[0]
                if L < 4096 or "skip" in mine:
                    continue
                others = {m: rows[m][0] for m in alts if m in rows and "skip" not in rows[m][0]}
                beaten = [m for m, r in others.items()
                          if "fwdbwd_cpu_s" in r and r["fwdbwd_cpu_s"] <= mine["fwdbwd_cpu_s"]]
                capped = [m for m, r in others.items() if "fwdbwd_cpu_s" not in r]
                summary.append(f"D={D} L={L}: {mine_key} fwd+bwd {mine['fwdbwd_cpu_s'] * 1e3:.0f} ms CPU: "
                               + (f"faster than {', '.join(sorted(others))}" if not beaten
                                  else f"NOT faster than {', '.join(beaten)}")
                               + (f" ({', '.join(capped)}: backward not run, minutes)" if capped else ""))
    if summary:
        print()
        print("goal: forward+backward (CPU time) faster than every alternative at L >= 4096")
        for s in summary:
            print("  " + s)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
