"""Reference baselines for the benchmark table (no learning involved).

``input_only``: the panorama that knows nothing beyond the input view. The NFoV view at
yaw 0 / pitch 0 is cut from the reference panorama and pasted back; everything else is a
flat grey (0.5). Any outpainting method should beat it on every distribution metric;
on the input region it is the fidelity ceiling (masked PSNR/SSIM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from opama_model.spherical import equi_to_pers, pers_to_equi
from opama_tools.io import atomic_path

__all__ = ["input_only_panorama", "write_input_only_baseline"]


def input_only_panorama(pano: np.ndarray, fov: float = 90.0, view_size: int = 512, fill: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8 panorama → the input-only baseline, same shape and dtype.

    The view is ``view_size`` px square at yaw 0, pitch 0, horizontal ``fov`` degrees.
    """
    x = torch.from_numpy(np.ascontiguousarray(pano[..., :3])).permute(2, 0, 1)[None].float() / 255.0
    h, w = x.shape[-2:]
    view = equi_to_pers(x, 0.0, 0.0, fov, (view_size, view_size))
    pasted, mask = pers_to_equi(view, 0.0, 0.0, fov, (h, w), feather=0.0)
    out = pasted * mask + fill * (1 - mask)
    return (out[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def write_input_only_baseline(
    ref_dir: str | Path, out_dir: str | Path, fov: float = 90.0, view_size: int = 512,
    on_file: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write :func:`input_only_panorama` of every PNG under ``ref_dir`` into ``out_dir`` (same relative
    paths, atomic writes; an output newer than its reference is kept). Returns the written/kept paths."""
    import imageio.v3 as iio

    from opama_tools.eval.evaluate import load_image

    ref_dir, out_dir = Path(ref_dir), Path(out_dir)
    written = []
    for src in sorted(ref_dir.rglob("*.png")):
        if any(part.startswith(".") for part in src.relative_to(ref_dir).parts):
            continue  # hidden (e.g. another writer's temp file)
        dst = out_dir / src.relative_to(ref_dir)
        if not dst.exists() or dst.stat().st_mtime_ns < src.stat().st_mtime_ns:  # new or changed reference
            img = load_image(src)  # 8-bit RGB: 16-bit scaled, grey expanded
            with atomic_path(dst) as tmp:
                iio.imwrite(tmp, input_only_panorama(img, fov, view_size), extension=".png")
        written.append(dst)
        if on_file is not None:
            on_file(dst)
    return written
