"""The one device resolver for every ``--device`` option: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""

from __future__ import annotations

import re

__all__ = ["DEVICE_HELP", "check_device_name", "resolve_device"]

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str, option: str = "--device") -> str:
    """The name, lower-cased, if it has a device's form (no torch import); else ``ValueError``."""
    n = str(name).strip().lower()
    if not _NAME.match(n):
        raise ValueError(f"{option} {name!r}: not a device (use {DEVICE_HELP})")
    return n


def resolve_device(name: str, option: str = "--device"):
    """``torch.device`` for ``name``: ``auto`` = CUDA if this machine has it, else CPU (``mps`` only by name).

    Raises:
        ValueError: one line: an unknown name, or a device this machine does not have.
    """
    n = check_device_name(name, option)
    import torch

    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if n == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(n)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {n}: CUDA is not available on this machine")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {n}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif d.type == "mps" and not mps:
        raise ValueError(f"{option} {n}: MPS is not available on this machine")
    return d
