"""LPIPS with the SqueezeNet backbone (the papers' choice), from a local backbone file.

torchmetrics ships LPIPS' linear layers (``lpips_models/squeeze.pth``) but would
download the torchvision SqueezeNet-1.1 backbone. Here torchmetrics' ``_LPIPS`` is
built with a random backbone and the torchvision state dict is loaded into it from a
local file: ``squeezenet1_1-b8a52dc0.pth`` from torchvision's cache (or any
``.pth``/``.safetensors`` holding ``features.*`` tensors). Inputs are ``[0, 1]``
images ``(N, 3, H, W)``; the score is per pair, lower = more similar.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from opama_tools.eval.metrics.features import MetricUnavailable, load_state_dict_file, resolve_weights

__all__ = ["Lpips", "load_lpips"]


class Lpips(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, name: str, path: Path):
        super().__init__()
        self.net = net.eval()
        self.name = name
        self.path = path

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pair LPIPS ``(N,)`` of ``[0, 1]`` images ``(N, 3, H, W)``."""
        return self.net(a.float(), b.float(), normalize=True).reshape(a.shape[0]).double()


def load_lpips(explicit: str | os.PathLike | None = None) -> Lpips:
    """LPIPS(squeeze) with the backbone from ``--lpips-weights`` / ``$OPAMA_LPIPS`` / torchvision's cache."""
    import torchvision
    from torchmetrics.functional.image.lpips import _LPIPS

    p = resolve_weights("lpips", explicit, "--lpips-weights")
    try:
        sd = load_state_dict_file(p)
        tv = torchvision.models.squeezenet1_1(weights=None)
        tv.load_state_dict(sd, strict=True)
    except Exception as e:
        raise MetricUnavailable(f"{p}: not a torchvision SqueezeNet-1.1 state dict ({type(e).__name__}: {e})") from e
    net = _LPIPS(pretrained=True, net="squeeze", pnet_rand=True)  # linear layers from torchmetrics' package
    for sl in net.net.slices:
        for child in list(sl._modules):
            sl._modules[child] = tv.features[int(child)]
    for q in net.parameters():
        q.requires_grad_(False)
    name = "squeezenet1_1" if p.name == "squeezenet1_1-b8a52dc0.pth" else f"custom:{p.stem}"
    return Lpips(net.eval(), name, p)
