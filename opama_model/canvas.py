"""The partly known panorama ("canvas") and what the model sees of it at one view.

One definition serves training samples (:mod:`opama_model.training`) and the autoregressive
outpainting loop (:mod:`opama_model.pipeline`), as the OPa-Ma reference builds both
(``dataset.py`` and ``inference.py``):

* the canvas is an equirectangular image ``(B, 3, H, W)`` in [-1, 1] and a ``known`` mask
  ``(B, 1, H, W)`` bool (True where the pixel is input or already generated);
* at a view ``(yaw, pitch, fov)`` (degrees, our convention: yaw right, pitch up) the model gets
  the view of the *masked* canvas (unknown pixels = -1, for CLIP and the GMA), the view's unknown
  mask (1 = to generate), the UNet's masked image (unknown pixels = 0), the 6 cube faces of the
  masked canvas (F R B L U D, unknown = -1) and the GMA's 7 five-channel images (faces then the
  view; RGB + latitude/longitude in radians of the canvas frame);
* every view and face is sampled with ``nearest`` (as the reference), so masks stay binary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .gma import build_gma_input
from .spherical import equi_to_cube, equi_to_pers, view_coverage_mask

__all__ = ["ViewInputs", "cut_view", "cut_view_only", "known_after_steps", "masked_canvas", "UNKNOWN_VALUE"]

UNKNOWN_VALUE = -1.0
"""Value of unknown pixels in the views and faces given to CLIP and the GMA."""

View = tuple[float, float]


@dataclass
class ViewInputs:
    """Everything the conditioner and the UNet need at one view (``S`` = view size in px).

    Attributes:
        view: ``(B, 3, S, S)`` masked canvas at the view, [-1, 1], unknown = -1.
        unknown: ``(B, 1, S, S)`` float in {0, 1}, 1 where the view is still to be generated.
        masked_image: ``(B, 3, S, S)`` the UNet's masked image, unknown = 0.
        faces: ``(B, 6, 3, S, S)`` cube faces of the masked canvas (F R B L U D), unknown = -1.
        gma_images: ``(B, 7, 5, S, S)`` faces then the view, RGB + latitude + longitude (radians).
    """

    view: torch.Tensor
    unknown: torch.Tensor
    masked_image: torch.Tensor
    faces: torch.Tensor
    gma_images: torch.Tensor

    @property
    def clip_images(self) -> torch.Tensor:
        """``(B, 7, 3, S, S)``: the view first, then the 6 faces (the conditioner's ``image_embeds`` order)."""
        return torch.cat((self.view.unsqueeze(1), self.faces), dim=1)


def masked_canvas(canvas: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``canvas (B, 3, H, W)`` with unknown pixels set to :data:`UNKNOWN_VALUE`."""
    return torch.where(known, canvas, torch.full_like(canvas, UNKNOWN_VALUE))


def cut_view(canvas: torch.Tensor, known: torch.Tensor, yaw: float, pitch: float, fov: float, size: int,
             *, mode: str = "nearest") -> ViewInputs:
    """Cut the model's inputs at one view from a partly known canvas.

    Args:
        canvas: ``(B, 3, H, W)`` equirect in [-1, 1] (values at unknown pixels are ignored).
        known: ``(B, 1, H, W)`` bool, True where the canvas is known.
        yaw, pitch, fov: the view, degrees (fov horizontal, square view).
        size: view and face side in pixels.
        mode: sampling mode (``nearest``, as the reference).
    """
    view, unknown, masked_image = cut_view_only(canvas, known, yaw, pitch, fov, size, mode=mode)
    faces = equi_to_cube(masked_canvas(canvas, known), size, mode=mode)  # (B, 6, 3, S, S)
    gma = build_gma_input(faces, view, yaw, pitch, fov)
    return ViewInputs(view=view, unknown=unknown, masked_image=masked_image, faces=faces, gma_images=gma)


def cut_view_only(canvas: torch.Tensor, known: torch.Tensor, yaw: float, pitch: float, fov: float, size: int,
                  *, mode: str = "nearest") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The UNet's part of :func:`cut_view` (no cube faces, no GMA images): ``(view, unknown,
    masked_image)``, each ``(B, C, S, S)`` as in :class:`ViewInputs`. Same arguments."""
    if canvas.ndim != 4 or known.shape != (canvas.shape[0], 1, *canvas.shape[-2:]):
        raise ValueError(f"canvas (B, 3, H, W) and known (B, 1, H, W) expected, got {tuple(canvas.shape)} "
                         f"and {tuple(known.shape)}")
    both = torch.cat((masked_canvas(canvas, known), known.to(canvas.dtype)), dim=1)
    cut = equi_to_pers(both, yaw, pitch, fov, (size, size), mode=mode)[:, 0]  # (B, 4, S, S)
    view, known_view = cut[:, :3], cut[:, 3:4] > 0.5
    unknown = (~known_view).to(canvas.dtype)
    view = torch.where(known_view, view, torch.full_like(view, UNKNOWN_VALUE))
    return view, unknown, view * (1 - unknown)


def known_after_steps(schedule: Sequence[View], equi_hw: tuple[int, int], view_size: int, fov: float = 90.0,
                      *, inputs: Sequence[tuple[float, float, float]] = ((0.0, 0.0, 90.0),),
                      device=None) -> torch.Tensor:
    """Known region of the canvas before each step of an autoregressive schedule.

    Args:
        schedule: the generated views ``(yaw, pitch)`` in order (e.g. :data:`opama_model.views.AOG21`).
        equi_hw: canvas ``(H, W)``.
        view_size: side of the (square) views in pixels.
        fov: horizontal field of view of the generated views, degrees.
        inputs: the input photos' ``(yaw, pitch, fov)``, known from the start (default: one at
            (0, 0) with fov 90, as the reference).

    Returns:
        ``(len(schedule) + 1, 1, H, W)`` bool: entry ``k`` is the footprint of the inputs and of
        the first ``k`` schedule views (entry ``k`` is the known region when view ``k`` is generated).
    """
    hw = (view_size, view_size)
    base = torch.zeros(1, 1, *equi_hw, dtype=torch.bool, device=device)
    for y, p, f in inputs:
        base |= view_coverage_mask(y, p, f, hw, equi_hw, device=device).bool()
    out = [base]
    if schedule:
        cover = view_coverage_mask([v[0] for v in schedule], [v[1] for v in schedule], fov, hw, equi_hw,
                                   device=device).bool()
        for k in range(len(schedule)):
            out.append(out[-1] | cover[k:k + 1])
    return torch.cat(out, dim=0)
