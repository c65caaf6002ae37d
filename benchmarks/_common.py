"""What the benchmark scripts share: the description of the machine they ran on.

The scripts run as ``python benchmarks/bench_x.py``; each puts this folder on ``sys.path``
and imports ``from _common import machine_info``.
"""

from __future__ import annotations

import importlib
import os
import platform
from typing import Sequence

# Distribution names where they differ from the module's.
_LABELS = {"PIL": "Pillow"}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``, else ``"?"``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _version(module: str) -> str | None:
    """``module``'s version, ``"?"`` when it has none, ``None`` when it is not installed."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    v = getattr(mod, "__version__", None)
    if v is None:
        try:
            from importlib.metadata import version

            v = version(module)
        except Exception:
            v = "?"
    return str(v)


def machine_info(packages: Sequence[str] = (), *, gpu: bool = True, torch_note: str = "") -> str:
    """One line: CPU model, cores (usable ones when fewer), load average, python, torch (threads),
    the versions of ``packages`` that are installed (module names), and the GPU when ``gpu``.
    ``torch_note`` is appended after torch's version (e.g. "not used by either side")."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    parts = [f"CPU: {cpu_model()}, {cores} cores" + (f" ({usable} usable)" if usable != cores else "")]
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    parts.append(f"python {platform.python_version()}")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads"
                     + (f"; {torch_note})" if torch_note else ")"))
    for m in packages:
        v = _version(m)
        if v is not None:
            parts.append(f"{_LABELS.get(m, m)} {v}")
    if gpu and torch is not None:
        parts.append(f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    return "; ".join(parts)
