"""Checking input directions ``(yaw, pitch, fov)`` in degrees (light: no torch import)."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["Direction", "check_direction"]

Direction = tuple[float, float, float]  # yaw, pitch, fov (degrees)


def check_direction(direction: Sequence[float]) -> Direction:
    """``(yaw, pitch, fov)`` checked: yaw in [-360, 360], pitch in [-90, 90], fov in (0, 180) degrees."""
    if len(direction) != 3:
        raise ValueError(f"direction must be (yaw, pitch, fov) in degrees, got {tuple(direction)}")
    yaw, pitch, fov = (float(v) for v in direction)
    if not all(math.isfinite(v) for v in (yaw, pitch, fov)):
        raise ValueError(f"direction {yaw:g},{pitch:g},{fov:g}: angles must be finite")
    if not -360 <= yaw <= 360:
        raise ValueError(f"direction {yaw:g},{pitch:g},{fov:g}: yaw must be within [-360, 360] degrees")
    if not -90 <= pitch <= 90:
        raise ValueError(f"direction {yaw:g},{pitch:g},{fov:g}: pitch must be within [-90, 90] degrees")
    if not 0 < fov < 180:
        raise ValueError(f"direction {yaw:g},{pitch:g},{fov:g}: fov must be within (0, 180) degrees")
    return yaw, pitch, fov
