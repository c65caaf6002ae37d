"""Captions of synthetic scenes from their geometry: no weights, no image decoding.

``scenes.jsonl`` (written by :func:`opama_tools.data.synthetic.generate_dataset`) holds one
record per panorama ``{"image", "seed", "kind", "caption", "scene"}``; :func:`read_scenes`
reads it, :func:`scene_from_record` rebuilds the :class:`~opama_tools.data.synthetic.Scene`
and :func:`scene_view_caption` describes what a square view (degrees: yaw right, pitch up,
horizontal ``fov``) shows, from :func:`opama_tools.data.synthetic.visible_objects`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from opama_tools.data.synthetic import Scene, make_scene, read_scene_records, visible_objects

__all__ = ["scene_from_record", "scene_view_caption", "read_scenes"]


def scene_from_record(rec: dict) -> Scene:
    """The :class:`~opama_tools.data.synthetic.Scene` of one ``scenes.jsonl`` record.

    Uses the stored ``scene`` dict (:meth:`Scene.from_dict`); falls back to ``make_scene(seed,
    kind)`` when absent. Raises ``ValueError`` saying what is missing or malformed.
    """
    d = rec.get("scene")
    if isinstance(d, dict):
        return Scene.from_dict(d)
    if "seed" in rec:
        try:
            return make_scene(int(rec["seed"]), rec.get("kind", "random"))
        except (TypeError, ValueError) as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"its 'seed'/'kind' are unusable ({text})") from None
    raise ValueError("record has neither 'scene' nor 'seed'")


_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _count(n: int, noun: str) -> str:
    word = _NUMBERS[n] if n < len(_NUMBERS) else str(n)
    if n == 1:
        return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    return f"{word} {noun}s"


def _join(parts: Sequence[str]) -> str:
    parts = list(parts)
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def scene_view_caption(scene, yaw: float, pitch: float = 0.0, fov: float = 90.0, *, min_fraction: float = 0.01) -> str:
    """A caption of what a square view (degrees) of a synthetic scene shows, from its geometry.

    Objects covering less than ``min_fraction`` of the view are left out (windows, lamps and
    the sun are point-like and are mentioned whenever inside the frustum).
    """
    vis = visible_objects(scene, yaw, pitch, fov)
    if scene.kind == "outdoor":
        overcast = scene.sky_zenith[2] - scene.sky_zenith[0] < 0.2
        sky = "an overcast grey sky" if overcast else "a clear blue sky"
        blds = sorted(((f, k) for k, f in vis["buildings"].items() if f >= min_fraction), reverse=True)
        colours: list[str] = []
        for _, k in blds:
            c = scene.buildings[k].colour
            if c not in colours:
                colours.append(c)
        if len(blds) == 1:
            bword = f"{'an' if colours[0][0] in 'aeiou' else 'a'} {colours[0]} building"
        elif blds:
            bword = f"{_NUMBERS[len(blds)] if len(blds) < 10 else len(blds)} {' and '.join(colours)} buildings"
        else:
            bword = ""
        ground = f"{scene.ground} ground"
        has_ground = vis["ground"] >= min_fraction
        has_sky = vis["sky"] >= min_fraction
        if bword:
            text = f"a view of {bword}"
            if has_ground:
                text += f" on {ground}"
            if has_sky:
                text += f" under {sky}"
        elif has_ground and has_sky:
            text = f"a view of {ground} under {sky}"
        elif has_sky:
            text = f"a view of {sky}"
        else:
            text = f"a view of {ground}"
        if vis["sun"]:
            sp = scene.sun_pitch
            text += ", with the sun " + ("low over the horizon" if sp < 25 else "high in the sky" if sp > 50 else "in the sky")
        return text
    walls = sorted(((f, w) for w, f in vis["walls"].items() if f >= max(min_fraction, 0.05)), reverse=True)
    wall_colours: list[str] = []
    for _, w in walls:
        c = scene.wall_colours[w - 2]
        if c not in wall_colours:
            wall_colours.append(c)
    parts = []
    if len(walls) == 1:
        parts.append(f"a {wall_colours[0]} wall")
    elif walls:
        parts.append(f"{' and '.join(wall_colours)} walls")
    if vis["windows"]:
        parts.append(_count(len(vis["windows"]), "bright window"))
    if vis["floor"] >= max(min_fraction, 0.05):
        parts.append("a wooden floor")
    if vis["lamps"]:
        parts.append(_count(len(vis["lamps"]), "ceiling lamp"))
    elif vis["ceiling"] >= max(min_fraction, 0.05):
        parts.append("a white ceiling")
    return "a view of " + (_join(parts) if parts else "a room")



def read_scenes(scenes_jsonl: str | os.PathLike) -> dict[str, dict]:
    """``scenes.jsonl`` of the synthetic generator → ``{file stem: record}``.

    Raises ``ValueError`` naming the file (and line) for anything that is not a scene record
    (:func:`opama_tools.data.synthetic.read_scene_records`) or when it holds none.
    """
    scenes = {Path(r["image"]).stem: r for r in read_scene_records(scenes_jsonl)}
    if not scenes:
        raise ValueError(f"{Path(scenes_jsonl)}: no scene records (empty file)")
    return scenes
