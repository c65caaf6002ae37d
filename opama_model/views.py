"""Named sets of view directions and a parser for ``"yaw,pitch;yaw,pitch"`` strings.

Every view is a ``(yaw, pitch)`` pair in degrees (conventions of :mod:`opama_model.spherical`:
yaw 0 = panorama centre, positive yaw turns right, positive pitch looks up).

* ``aog21``: AOG-Net's 21-view autoregressive order (fov 90, 512 x 512 views; OPa-Ma uses
  the same schedule). The input NFoV view is at (0, 0) and is not part of the 21 steps.
* ``ring8``: 8 views around the horizon every 45°, starting at yaw 0 and turning right.
* ``cube``: the 6 cube-face directions in F R B L U D order (``CUBE``, from
  :data:`~opama_model.spherical.CUBE_YAW_PITCH`).

Importing this module does not import torch: ``CUBE`` and ``VIEW_SETS`` (which holds it) are
built from :mod:`opama_model.spherical` on first use, so option parsing stays quick.
"""

from __future__ import annotations

import math

__all__ = ["AOG21", "AOG21_TRAIN_STEPS", "RING8", "CUBE", "VIEW_SETS", "VIEW_SET_NAMES", "parse_views",
           "format_views"]

View = tuple[float, float]

AOG21: tuple[View, ...] = (
    (0.0, 25.0), (0.0, -25.0), (45.0, 0.0), (-45.0, 0.0), (90.0, 0.0), (90.0, 25.0),
    (90.0, -25.0), (-90.0, 0.0), (-90.0, 25.0), (-90.0, -25.0), (105.0, 0.0), (-105.0, 0.0),
    (180.0, 0.0), (180.0, -25.0), (180.0, 25.0), (0.0, 45.0), (-90.0, 45.0), (90.0, 45.0),
    (0.0, -45.0), (90.0, -45.0), (-90.0, -45.0),
)
"""AOG-Net's / OPa-Ma's autoregressive order of the 21 generated views, ``(yaw, pitch)`` in
degrees in *our* convention (yaw right, pitch up). The reference code lists the same views in
equilib's convention (positive yaw turns left, positive pitch looks down), i.e. each pair here
is ``(-yaw, -pitch)`` of the published numbers: the order fills upward views first and ends on
the three views 45 degrees down (the tripod, "the stand" in the reference, which the reference's
training never uses as a target: see :data:`AOG21_TRAIN_STEPS`). ``tests/test_fidelity.py`` pins
this from the reference's own camera maths (its equilib fork), not from this table."""

AOG21_TRAIN_STEPS = 18
"""Training draws the step ``k`` from ``0 .. AOG21_TRAIN_STEPS - 1`` (the last three views are never targets)."""

RING8: tuple[View, ...] = tuple((float(y if y <= 180 else y - 360), 0.0) for y in range(0, 360, 45))
"""Yaw 0, 45, 90, 135, 180, -135, -90, -45 at pitch 0."""

CUBE: tuple[View, ...]  # cube-face directions F R B L U D, built on first use (module __getattr__)
VIEW_SETS: dict[str, tuple[View, ...]]  # name -> views, built on first use

VIEW_SET_NAMES: tuple[str, ...] = ("aog21", "ring8", "cube")
"""Names of the view sets (keys of ``VIEW_SETS``)."""


def _view_set(name: str) -> tuple[View, ...]:
    if name == "cube":
        from .spherical import CUBE_YAW_PITCH  # imports torch: only when the cube set is used

        return tuple((float(y), float(p)) for y, p in CUBE_YAW_PITCH)
    return {"aog21": AOG21, "ring8": RING8}[name]


def __getattr__(name: str):
    """``CUBE`` (cube-face directions F R B L U D) and ``VIEW_SETS`` (name -> views), built on first use."""
    if name == "CUBE":
        value = _view_set("cube")
    elif name == "VIEW_SETS":
        value = {n: _view_set(n) for n in VIEW_SET_NAMES}
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def parse_views(spec: str) -> list[View]:
    """Views from a named set (``aog21``, ``ring8``, ``cube``; case-insensitive) or a list
    ``"yaw,pitch;yaw,pitch;..."`` in degrees (spaces allowed, a trailing ``;`` ignored).

    Raises:
        ValueError: unknown name, malformed pair, non-finite angle, or ``|pitch| > 90``.
    """
    text = spec.strip()
    if not text:
        raise ValueError("empty view list")
    if text.lower() in VIEW_SET_NAMES:
        return list(_view_set(text.lower()))
    views: list[View] = []
    for k, part in enumerate(p for p in text.split(";") if p.strip()):
        fields = [f.strip() for f in part.split(",")]
        if len(fields) != 2:
            raise ValueError(
                f"view {k + 1} {part.strip()!r}: expected 'yaw,pitch' (or a named set: {', '.join(VIEW_SET_NAMES)})"
            )
        try:
            yaw, pitch = float(fields[0]), float(fields[1])
        except ValueError:
            raise ValueError(f"view {k + 1} {part.strip()!r}: yaw and pitch must be numbers (degrees)") from None
        if not (math.isfinite(yaw) and math.isfinite(pitch)):
            raise ValueError(f"view {k + 1} {part.strip()!r}: angles must be finite")
        if abs(pitch) > 90:
            raise ValueError(f"view {k + 1} {part.strip()!r}: pitch must be within [-90, 90] degrees")
        views.append((yaw, pitch))
    if not views:
        raise ValueError("empty view list")
    return views


def format_views(views: list[View] | tuple[View, ...]) -> str:
    """Inverse of :func:`parse_views` for explicit lists: ``"yaw,pitch;..."`` (``%g`` numbers)."""
    return ";".join(f"{y:g},{p:g}" for y, p in views)
