"""What ``opama doctor`` reports: pretrained components found locally, and the runtime."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from opama_tools.weights import COMPONENTS, locate

__all__ = ["ComponentStatus", "component_status", "inpaint_checkpoints", "runtime_status"]


@dataclass
class ComponentStatus:
    key: str
    title: str
    what: str
    looked: str
    found: str | None
    source: str
    needed_by: str


def component_status() -> list[ComponentStatus]:
    """One row per pretrained component: where it is looked for and whether it was found."""
    rows = []
    for c in COMPONENTS:
        path, source = locate(c)
        what = c.repo_id or "file"
        looked = f"{c.flag} PATH; ${c.env}" + (f" = {os.environ[c.env]}" if os.environ.get(c.env) else "")
        looked += f"; cache: {c.cache_hint()}"
        rows.append(
            ComponentStatus(c.key, c.title, what, looked, str(path) if path else None, source, ", ".join(c.needed_by))
        )
    return rows


def inpaint_checkpoints() -> list[tuple[str, str]]:
    """``(repo_id, snapshot folder)`` of the SD inpainting checkpoints in the local Hugging Face cache
    (``opama outpaint --model REPO_ID``: the training-free method)."""
    from opama_model.sd_inpaint import cached_inpaint_checkpoints

    return [(r, str(p)) for r, p in cached_inpaint_checkpoints()]


def runtime_status() -> dict[str, str]:
    """Versions and capabilities: torch, CUDA, mamba-ssm kernels, HF offline mode."""
    info: dict[str, str] = {}
    try:
        import torch

        info["torch"] = torch.__version__
        info["CUDA available"] = (
            f"yes ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "no"
        )
    except Exception as e:  # pragma: no cover - torch is a hard dependency
        info["torch"] = f"not importable: {e}"
    try:
        importlib.import_module("selective_scan_cuda")
        importlib.import_module("mamba_ssm")
        info["mamba-ssm kernels"] = "importable"
    except Exception as e:
        info["mamba-ssm kernels"] = f"not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    info["selective scan backend"] = os.environ.get("OPAMA_SCAN", "auto (chunked on CPU, cuda kernel when importable)")
    info["HF offline"] = "HF_HUB_OFFLINE=" + os.environ.get("HF_HUB_OFFLINE", "unset (opama never downloads anyway)")
    return info
