"""Procedural 360° HDR panoramas, ray-cast from analytic scenes.

Every equirect pixel (and every perspective-view pixel) is rendered by casting
rays from the camera at the origin into an analytic scene, so:

* the panorama is seamless across the ±180° edge by construction (both edge
  columns look at neighbouring directions of the same scene);
* the same scene can be rendered directly as a perspective view at any
  ``(yaw, pitch, fov)`` — the ground truth that geometry tests compare against;
* values are float32 **linear RGB radiance** (HDR: the sun reaches thousands,
  lamps and windows hundreds, diffuse surfaces ~0.05-5).

Scenes are deterministic functions of a seed. Two kinds exist:

* ``outdoor``: sky gradient, a sun disc with glow, a textured ground plane with
  aerial-perspective haze, and axis-aligned box buildings lit by the sun;
* ``indoor``: a room box (floor, four walls, ceiling) with wood-like floor,
  bright windows on the walls and emissive ceiling lamps lighting the room.

Angles follow :mod:`opama_model.spherical` (degrees, yaw right, pitch up).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np

from opama_model.spherical import rotation_matrix

SceneKind = Literal["outdoor", "indoor"]

__all__ = [
    "Box",
    "Scene",
    "make_scene",
    "visible_objects",
    "read_scene_records",
    "render_equirect",
    "render_perspective",
    "generate_dataset",
]

_COLOURS = {
    "grey": (0.45, 0.45, 0.47),
    "white": (0.75, 0.74, 0.70),
    "brick red": (0.50, 0.22, 0.16),
    "sandstone": (0.62, 0.50, 0.34),
    "dark blue": (0.12, 0.18, 0.35),
    "green": (0.20, 0.42, 0.22),
    "beige": (0.70, 0.62, 0.48),
    "pale yellow": (0.78, 0.72, 0.45),
    "light blue": (0.48, 0.60, 0.75),
}
_GROUNDS = {
    "grassy": (0.12, 0.30, 0.08),
    "sandy": (0.55, 0.46, 0.32),
    "paved": (0.30, 0.30, 0.31),
    "snowy": (0.85, 0.87, 0.90),
}


@dataclass
class Box:
    """Axis-aligned box, metres: ``lo`` and ``hi`` corners (x right, y up, z forward)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    colour: str = "grey"


@dataclass
class Scene:
    """An analytic scene seen from a camera at the origin.

    Lengths in metres, angles in degrees, radiances linear (arbitrary units, ~1 = diffuse white in daylight).
    """

    kind: SceneKind
    seed: int
    camera_height: float
    description: str = ""
    # outdoor
    sun_yaw: float = 0.0
    sun_pitch: float = 45.0
    sun_radiance: float = 5000.0
    sun_radius: float = 1.5
    sky_zenith: tuple[float, float, float] = (0.15, 0.30, 0.80)
    sky_horizon: tuple[float, float, float] = (0.70, 0.80, 0.95)
    ground: str = "grassy"
    buildings: list[Box] = field(default_factory=list)
    # indoor
    room_lo: tuple[float, float, float] = (-3.0, -1.5, -3.0)
    room_hi: tuple[float, float, float] = (3.0, 1.2, 3.0)
    wall_colours: tuple[str, str, str, str] = ("white", "white", "white", "white")
    floor_colour: tuple[float, float, float] = (0.35, 0.22, 0.12)
    windows: list[dict] = field(default_factory=list)
    lamps: list[tuple[float, float, float]] = field(default_factory=list)
    lamp_radiance: float = 800.0
    lamp_radius: float = 0.15
    tex_freqs: list[tuple[float, float, float]] = field(default_factory=list)

    # ------------------------------------------------------------------ API
    def to_dict(self) -> dict:
        """The scene as JSON-ready nested dicts and lists (``scenes.jsonl``'s ``scene``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        """The scene of a :meth:`to_dict` dict (lists become tuples and boxes; unknown keys are ignored).

        Raises ``ValueError`` naming the missing fields, or saying what is malformed.
        """
        if not isinstance(d, dict):
            raise ValueError("a scene must be a JSON object")
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        missing = [f.name for f in fields
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"its 'scene' lacks the field(s) {', '.join(missing)}")
        kw = {k: v for k, v in d.items() if k in names}
        try:
            kw["buildings"] = [Box(tuple(b["lo"]), tuple(b["hi"]), b.get("colour", "grey"))
                               for b in kw.get("buildings", [])]
            for k in ("room_lo", "room_hi", "wall_colours", "floor_colour", "sky_zenith", "sky_horizon"):
                if k in kw:
                    kw[k] = tuple(kw[k])
            kw["lamps"] = [tuple(lp) for lp in kw.get("lamps", [])]
            kw["tex_freqs"] = [tuple(t) for t in kw.get("tex_freqs", [])]
            kw["windows"] = [{**w, "centre": tuple(w["centre"])} if "centre" in w else dict(w)
                             for w in kw.get("windows", [])]
            return cls(**kw)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"its 'scene' is malformed ({type(e).__name__}: {text})") from None

    def sun_direction(self) -> np.ndarray:
        """Unit world direction ``(3,)`` float64 towards the sun's centre (from ``sun_yaw``/``sun_pitch``, degrees)."""
        lon, lat = math.radians(self.sun_yaw), math.radians(self.sun_pitch)
        return np.array([math.cos(lat) * math.sin(lon), math.sin(lat), math.cos(lat) * math.cos(lon)])

    def radiance(self, dirs: np.ndarray) -> np.ndarray:
        """Linear RGB radiance ``(..., 3)`` float32 seen along unit directions ``(..., 3)``."""
        shape = dirs.shape[:-1]
        d = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
        out = self._outdoor(d) if self.kind == "outdoor" else self._indoor(d)
        return out.reshape(*shape, 3).astype(np.float32)

    def nearest_hits(self, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What each unit direction ``(..., 3)`` hits first, as the renderer sees it: ``(t, label)``.

        ``t``: the hit distance in metres (``inf`` where nothing is hit). ``label``: outdoor
        -2 sky, -1 ground, ``k >= 0`` building ``k``; indoor the room surface id 0 floor,
        1 ceiling, 2 wall +z, 3 wall -z, 4 wall +x, 5 wall -x.
        """
        shape = dirs.shape[:-1]
        d = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
        if self.kind == "outdoor":
            t = np.full(d.shape[0], np.inf)
            label = np.full(d.shape[0], -2)
            for k, hit, t_k in self._outdoor_hits(d):
                label[hit] = k
                t[hit] = t_k[hit]
        else:
            t, _, _, label = self._room_hits(d)
        return t.reshape(shape), label.reshape(shape)

    # ---------------------------------------------------------- internals
    def _texture(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Smooth band-limited texture in [-1, 1] from a sum of seeded sinusoids."""
        t = np.zeros_like(u)
        for fu, fv, ph in self.tex_freqs:
            t += np.sin(fu * u + fv * v + ph)
        return t / max(len(self.tex_freqs), 1)

    def _sky(self, d: np.ndarray) -> np.ndarray:
        s = self.sun_direction()
        el = np.clip(d[:, 1], 0.0, 1.0)[:, None]
        t = np.sqrt(el)
        sky = (1 - t) * np.array(self.sky_horizon) + t * np.array(self.sky_zenith)
        cosang = np.clip(d @ s, -1.0, 1.0)
        ang = np.degrees(np.arccos(cosang))
        glow = 2.0 * np.exp(-ang / 8.0) + 20.0 * np.exp(-ang / 1.5)
        sky = sky * (1.0 + glow[:, None])
        # Sun disc with a soft one-pixel-ish limb so supersampling converges.
        disc = np.clip((self.sun_radius - ang) / (0.25 * self.sun_radius) + 0.5, 0.0, 1.0)
        sky = sky + disc[:, None] * self.sun_radiance * np.array([1.0, 0.95, 0.85])
        return sky

    def _lit(self, albedo: np.ndarray, normal: np.ndarray) -> np.ndarray:
        """Diffuse outdoor shading: sun (irradiance ~ 3 at normal incidence) + sky ambient."""
        s = self.sun_direction()
        ndl = np.clip(normal @ s, 0.0, 1.0)[:, None]
        sun_up = max(math.sin(math.radians(self.sun_pitch)), 0.0)
        return albedo * (3.0 * ndl * (0.3 + 0.7 * sun_up) + 0.6 * np.array(self.sky_zenith) + 0.25)

    def _outdoor_hits(self, d: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Ray-cast ``d`` ``(N, 3)`` against the ground, then each building in order.

        Yields ``(label, hit, t)``: label -1 ground, ``k`` building ``k``; ``t`` the object's
        distance along every direction; ``hit`` where it is the nearest so far (a later
        yield overrides an earlier one).
        """
        t_best = np.full(d.shape[0], np.inf)
        # Ground plane y = -camera_height.
        down = d[:, 1] < -1e-6
        t_g = np.where(down, self.camera_height / np.maximum(-d[:, 1], 1e-12), np.inf)
        hit_g = np.isfinite(t_g)
        yield -1, hit_g, t_g
        t_best[hit_g] = t_g[hit_g]
        # Buildings (slab test, camera outside every box).
        for k, b in enumerate(self.buildings):
            lo, hi = np.array(b.lo), np.array(b.hi)
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / d
                t1, t2 = lo * inv, hi * inv
            tmin = np.nanmax(np.minimum(t1, t2), axis=1)
            tmax = np.nanmin(np.maximum(t1, t2), axis=1)
            hit = (tmax >= tmin) & (tmin > 0) & (tmin < t_best)
            yield k, hit, tmin
            t_best[hit] = tmin[hit]

    def _outdoor(self, d: np.ndarray) -> np.ndarray:
        out = self._sky(d)
        for k, hit, t in self._outdoor_hits(d):
            if not hit.any():
                continue
            if k < 0:
                out[hit] = self._shade_ground(d[hit] * t[hit, None], t[hit])
            else:
                out[hit] = self._shade_building(self.buildings[k], d[hit] * t[hit, None], t[hit])
        return out

    def _shade_ground(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        tex = self._texture(p[:, 0], p[:, 2])
        albedo = np.array(_GROUNDS.get(self.ground, _GROUNDS["grassy"])) * (1.0 + 0.35 * tex[:, None])
        col = self._lit(albedo, np.tile([0.0, 1.0, 0.0], (p.shape[0], 1)))
        haze = np.exp(-t / 250.0)[:, None]
        return haze * col + (1 - haze) * np.array(self.sky_horizon) * 1.2

    def _shade_building(self, b: Box, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        lo, hi = np.array(b.lo), np.array(b.hi)
        axis = np.argmin(
            np.stack([np.minimum(np.abs(p[:, k] - lo[k]), np.abs(p[:, k] - hi[k])) for k in range(3)], 1), 1
        )
        normal = np.zeros_like(p)
        centre = (lo + hi) / 2
        normal[np.arange(len(p)), axis] = np.sign(p[np.arange(len(p)), axis] - centre[axis])
        # Smooth floors-and-windows pattern on the facade.
        fac_u = np.where(axis == 0, p[:, 2], p[:, 0])
        rows = 0.5 + 0.5 * np.cos(2 * math.pi * p[:, 1] / 3.0)
        cols = 0.5 + 0.5 * np.cos(2 * math.pi * fac_u / 2.5)
        pattern = 1.0 - 0.45 * (rows * cols) ** 2
        albedo = np.array(_COLOURS.get(b.colour, _COLOURS["grey"])) * pattern[:, None]
        col = self._lit(albedo, normal)
        haze = np.exp(-t / 250.0)[:, None]
        return haze * col + (1 - haze) * np.array(self.sky_horizon) * 1.2

    def _room_hits(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Where ``d`` ``(N, 3)`` leaves the room: distance, axis of the face, its side (+), surface id."""
        lo, hi = np.array(self.room_lo), np.array(self.room_hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_axes = np.where(d > 0, hi / d, np.where(d < 0, lo / d, np.inf))
        axis = np.argmin(t_axes, axis=1)
        t = t_axes[np.arange(len(d)), axis]
        positive = d[np.arange(len(d)), axis] > 0
        # Surface id: 0 floor, 1 ceiling, 2 wall +z, 3 wall -z, 4 wall +x, 5 wall -x.
        sid = np.select(
            [(axis == 1) & ~positive, (axis == 1) & positive, (axis == 2) & positive,
             (axis == 2) & ~positive, (axis == 0) & positive],
            [0, 1, 2, 3, 4],
            5,
        )
        return t, axis, positive, sid

    def _indoor(self, d: np.ndarray) -> np.ndarray:
        t, axis, positive, sid = self._room_hits(d)
        p = d * t[:, None]
        albedo = np.empty_like(p)
        tex = self._texture(p[:, 0] * 4, p[:, 2] * 0.7)
        floor = sid == 0
        albedo[floor] = np.array(self.floor_colour) * (1.0 + 0.3 * tex[floor, None])
        albedo[sid == 1] = (0.85, 0.85, 0.83)
        for k, wall in enumerate((2, 3, 4, 5)):
            m = sid == wall
            albedo[m] = np.array(_COLOURS.get(self.wall_colours[k], _COLOURS["white"])) * (
                1.0 + 0.08 * tex[m, None]
            )
        normal = np.zeros_like(p)
        normal[np.arange(len(d)), axis] = np.where(positive, -1.0, 1.0)
        # Diffuse light from lamps (point lights, no shadows) and windows (area lights, approx.).
        irr = np.full((len(d), 1), 0.15)
        for lp in self.lamps:
            v = np.array(lp) - p
            dist2 = np.maximum((v * v).sum(1), 1e-4)
            cos = np.clip((v * normal).sum(1) / np.sqrt(dist2), 0, 1)
            irr += (self.lamp_radiance * self.lamp_radius**2 * cos / dist2)[:, None] * 0.8
        for w in self.windows:
            c = np.array(w["centre"])
            v = c - p
            dist2 = np.maximum((v * v).sum(1), 1e-2)
            cos = np.clip((v * normal).sum(1) / np.sqrt(dist2), 0, 1)
            irr += (w["radiance"] * w["w"] * w["h"] * cos / dist2 / math.pi)[:, None] * 0.4
        out = albedo * irr * np.array([1.0, 0.97, 0.92])
        # Windows: bright rectangles on walls (soft edge of ~1 cm for anti-aliasing).
        for w in self.windows:
            m = sid == w["wall"]
            if not m.any():
                continue
            c = np.array(w["centre"])
            u_ax = 0 if w["wall"] in (2, 3) else 2
            du = np.abs(p[m, u_ax] - c[u_ax]) - w["w"] / 2
            dv = np.abs(p[m, 1] - c[1]) - w["h"] / 2
            inside = np.clip(0.5 - np.maximum(du, dv) / 0.02, 0, 1)[:, None]
            glass = w["radiance"] * np.array(self.sky_horizon) * (0.8 + 0.2 * np.clip(d[m, 1:2] + 0.5, 0, 1))
            out[m] = (1 - inside) * out[m] + inside * glass
        # Lamps: emissive discs on the ceiling.
        ceil = sid == 1
        for lp in self.lamps:
            r = np.sqrt((p[ceil, 0] - lp[0]) ** 2 + (p[ceil, 2] - lp[2]) ** 2)
            inside = np.clip(0.5 - (r - self.lamp_radius) / 0.02, 0, 1)[:, None]
            out[ceil] = (1 - inside) * out[ceil] + inside * self.lamp_radiance * np.array([1.0, 0.9, 0.75])
        return out


def _in_frustum(points: np.ndarray, yaw: float, pitch: float, fov: float) -> np.ndarray:
    """Which world points ``(N, 3)`` (camera at the origin) fall inside a square view's frustum."""
    rot = rotation_matrix(yaw, pitch).numpy()
    cam = points @ rot  # world -> camera: R^T p, row-vector form
    t = math.tan(math.radians(fov) / 2)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (z > 1e-9) & (np.abs(cam[:, 0]) <= t * z) & (np.abs(cam[:, 1]) <= t * z)


def visible_objects(scene: Scene, yaw: float, pitch: float, fov: float, samples: int = 32) -> dict:
    """What a square view at ``yaw``/``pitch``/``fov`` (degrees) of a synthetic scene shows.

    Coverage fractions come from a ``samples x samples`` grid of pixel-centre rays (the
    geometry of :func:`opama_model.spherical.perspective_directions`, nearest hit as in the
    renderer). Outdoor: ``{"sky", "ground", "buildings": {index: fraction}, "sun": bool}``
    (sun: its centre inside the frustum and not hidden by a building). Indoor:
    ``{"floor", "ceiling", "walls": {surface id: fraction}, "windows": [indices],
    "lamps": [indices]}`` (a window counts when any of a 5x5 grid of points on it is inside
    the frustum; a lamp when its centre is; nothing occludes inside the convex room).
    """
    import torch

    from opama_model.spherical import perspective_directions

    d = perspective_directions(yaw, pitch, fov, (samples, samples), dtype=torch.float64)[0]
    d = d.reshape(-1, 3).numpy()
    n = d.shape[0]
    _, lab = scene.nearest_hits(d)  # outdoor: -2 sky, -1 ground, k building k; indoor: surface id
    if scene.kind == "outdoor":
        b = {k: float((lab == k).sum()) / n for k in range(len(scene.buildings)) if (lab == k).any()}
        sun_dir = scene.sun_direction()[None]
        sun = bool(_in_frustum(sun_dir, yaw, pitch, fov)[0] and scene.nearest_hits(sun_dir)[1][0] == -2)
        return {"sky": float((lab == -2).sum()) / n, "ground": float((lab == -1).sum()) / n, "buildings": b, "sun": sun}
    walls = {w: float((lab == w).sum()) / n for w in (2, 3, 4, 5) if (lab == w).any()}
    windows = []
    for k, w in enumerate(scene.windows):
        c = np.array(w["centre"], dtype=np.float64)
        u_ax = 0 if w["wall"] in (2, 3) else 2
        g = np.linspace(-0.5, 0.5, 5)
        uu, vv = np.meshgrid(g * w["w"], g * w["h"], indexing="ij")
        pts = np.repeat(c[None], uu.size, 0)
        pts[:, u_ax] += uu.ravel()
        pts[:, 1] += vv.ravel()
        if _in_frustum(pts, yaw, pitch, fov).any():
            windows.append(k)
    lamps = []
    if scene.lamps:
        inside = _in_frustum(np.array(scene.lamps, dtype=np.float64), yaw, pitch, fov)
        lamps = [k for k in range(len(scene.lamps)) if inside[k]]
    return {"floor": float((lab == 0).sum()) / n, "ceiling": float((lab == 1).sum()) / n, "walls": walls,
            "windows": windows, "lamps": lamps}


def _describe_direction(yaw: float) -> str:
    names = ["in front", "front right", "to the right", "behind on the right",
             "behind", "behind on the left", "to the left", "front left"]
    return names[int(((yaw % 360) + 22.5) // 45) % 8]


def make_scene(seed: int, kind: SceneKind | Literal["random"] = "random") -> Scene:
    """A deterministic random scene for ``seed``; ``kind='random'`` picks indoor/outdoor from the seed."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        kind = "outdoor" if rng.random() < 0.5 else "indoor"
    tex = [(float(rng.uniform(0.3, 2.5)) * rng.choice([-1, 1]), float(rng.uniform(0.3, 2.5)),
            float(rng.uniform(0, 2 * math.pi))) for _ in range(6)]
    if kind == "outdoor":
        sun_pitch = float(rng.uniform(8, 70))
        sun_yaw = float(rng.uniform(-180, 180))
        ground = str(rng.choice(list(_GROUNDS)))
        n_b = int(rng.integers(1, 6))
        buildings = []
        colours = []
        for _ in range(n_b):
            ang = rng.uniform(-math.pi, math.pi)
            dist = rng.uniform(14, 60)
            cx, cz = dist * math.sin(ang), dist * math.cos(ang)
            hw, hd = rng.uniform(3, 10), rng.uniform(3, 10)
            height = rng.uniform(6, 35)
            colour = str(rng.choice(list(_COLOURS)))
            colours.append(colour)
            buildings.append(Box((cx - hw, -1.6, cz - hd), (cx + hw, -1.6 + height, cz + hd), colour))
        cam_h = 1.6
        overcast = rng.random() < 0.25
        zen = (0.55, 0.58, 0.62) if overcast else (0.12, 0.28, 0.75)
        hor = (0.75, 0.77, 0.80) if overcast else (0.65, 0.78, 0.95)
        sun_rad = float(rng.uniform(300, 800) if overcast else rng.uniform(2000, 20000))
        sky_word = "an overcast grey sky" if overcast else "a clear blue sky"
        sun_word = "low" if sun_pitch < 25 else ("high" if sun_pitch > 50 else "")
        uniq = sorted(set(colours), key=colours.index)
        bword = "building" if n_b == 1 else "buildings"
        desc = (
            f"an outdoor panorama of {n_b} {' and '.join(uniq)} {bword} on {ground} ground "
            f"under {sky_word}, the sun {sun_word + ' ' if sun_word else ''}{_describe_direction(sun_yaw)}"
        )
        return Scene(
            kind="outdoor", seed=seed, camera_height=cam_h, description=desc, sun_yaw=sun_yaw,
            sun_pitch=sun_pitch, sun_radiance=sun_rad, sky_zenith=zen, sky_horizon=hor, ground=ground,
            buildings=buildings, tex_freqs=tex,
        )
    # indoor
    half_x, half_z = rng.uniform(2.0, 5.0), rng.uniform(2.0, 5.0)
    off_x, off_z = rng.uniform(-0.5, 0.5) * half_x, rng.uniform(-0.5, 0.5) * half_z
    cam_h = float(rng.uniform(1.2, 1.7))
    ceiling = float(rng.uniform(2.4, 3.5)) - cam_h
    lo = (-half_x - off_x, -cam_h, -half_z - off_z)
    hi = (half_x - off_x, ceiling, half_z - off_z)
    wall_colours = tuple(str(c) for c in rng.choice(["white", "beige", "pale yellow", "light blue", "grey"], 4))
    floor = (float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.12, 0.3)), float(rng.uniform(0.05, 0.15)))
    windows = []
    for _ in range(int(rng.integers(1, 4))):
        wall = int(rng.integers(2, 6))
        w, h = float(rng.uniform(0.8, 2.0)), float(rng.uniform(0.8, 1.4))
        cy = float(rng.uniform(-0.2, 0.4))
        if wall in (2, 3):
            zc = hi[2] if wall == 2 else lo[2]
            xc = float(rng.uniform(lo[0] + w / 2 + 0.2, hi[0] - w / 2 - 0.2))
            centre = (xc, cy, zc)
        else:
            xc = hi[0] if wall == 4 else lo[0]
            zc_ = float(rng.uniform(lo[2] + w / 2 + 0.2, hi[2] - w / 2 - 0.2))
            centre = (xc, cy, zc_)
        windows.append({"wall": wall, "centre": centre, "w": w, "h": h, "radiance": float(rng.uniform(40, 300))})
    lamps = []
    for _ in range(int(rng.integers(1, 4))):
        lamps.append((float(rng.uniform(lo[0] + 0.5, hi[0] - 0.5)), ceiling,
                      float(rng.uniform(lo[2] + 0.5, hi[2] - 0.5))))
    area = (hi[0] - lo[0]) * (hi[2] - lo[2])
    size = "small" if area < 20 else ("large" if area > 50 else "medium-sized")
    main_wall = max(wall_colours, key=wall_colours.count)  # ties: the first wall (not set order: hash-seeded)
    nw, nl = len(windows), len(lamps)
    desc = (
        f"an indoor panorama of a {size} room with {main_wall} walls, a wooden floor, "
        f"{nw} bright window{'s' if nw > 1 else ''} and {nl} ceiling lamp{'s' if nl > 1 else ''}"
    )
    return Scene(
        kind="indoor", seed=seed, camera_height=cam_h, description=desc, room_lo=lo, room_hi=hi,
        wall_colours=wall_colours, floor_colour=floor, windows=windows, lamps=lamps,
        lamp_radiance=float(rng.uniform(400, 3000)), tex_freqs=tex,
    )


def _offsets(supersample: int) -> np.ndarray:
    """Stratified sub-pixel offsets in pixel units, centred on 0."""
    k = (np.arange(supersample) + 0.5) / supersample - 0.5
    return k


def render_equirect(scene: Scene, height: int, width: int, supersample: int = 2, rows_per_chunk: int = 64) -> np.ndarray:
    """Ray-cast ``scene`` into an equirect ``(H, W, 3)`` float32 linear RGB (box-filtered, ``supersample**2`` rays/pixel)."""
    if width != 2 * height:
        raise ValueError(f"equirect must be 2:1, got {height}x{width}")
    out = np.empty((height, width, 3), dtype=np.float32)
    offs = _offsets(supersample)
    j = np.arange(width, dtype=np.float64)
    for r0 in range(0, height, rows_per_chunk):
        i = np.arange(r0, min(height, r0 + rows_per_chunk), dtype=np.float64)
        acc = np.zeros((len(i), width, 3), dtype=np.float64)
        for oy in offs:
            lat = (0.5 - (i + 0.5 + oy) / height) * math.pi
            for ox in offs:
                lon = ((j + 0.5 + ox) / width - 0.5) * 2 * math.pi
                la, lo = np.meshgrid(lat, lon, indexing="ij")
                c = np.cos(la)
                d = np.stack((c * np.sin(lo), np.sin(la), c * np.cos(lo)), -1)
                acc += scene.radiance(d)
        out[r0 : r0 + len(i)] = acc / supersample**2
    return out


def render_perspective(
    scene: Scene,
    yaw: float,
    pitch: float,
    fov: float,
    out_hw: tuple[int, int],
    roll: float = 0.0,
    supersample: int = 2,
) -> np.ndarray:
    """Ray-cast a perspective view ``(h, w, 3)`` float32 at yaw/pitch/roll/fov in degrees.

    Pixel geometry is that of :func:`opama_model.spherical.perspective_directions`.
    """
    h, w = out_hw
    half = math.tan(math.radians(fov) / 2)
    step = 2 * half / max(w - 1, 1)
    rot = rotation_matrix(yaw, pitch, roll).numpy()
    acc = np.zeros((h, w, 3), dtype=np.float64)
    offs = _offsets(supersample)
    for oy in offs:
        ys = ((h - 1) / 2 - (np.arange(h) + oy)) * step
        for ox in offs:
            xs = (np.arange(w) + ox - (w - 1) / 2) * step
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            cam = np.stack((xx, yy, np.ones_like(xx)), -1)
            cam /= np.linalg.norm(cam, axis=-1, keepdims=True)
            acc += scene.radiance(cam @ rot.T)
    return (acc / supersample**2).astype(np.float32)


def read_scene_records(path: str | Path, hint: str = "") -> list[dict]:
    """The records of a ``scenes.jsonl`` (one JSON object with an ``image`` file name per line;
    blank lines skipped), in file order. ``ValueError`` naming the file (and line) for anything
    else; ``hint`` (e.g. what to do about it) ends each message after ``"; "``."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a scenes JSONL file (not UTF-8 text at byte {e.start}){tail}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e}){tail}") from None
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i}: not valid JSON ({e.msg} at column {e.colno}){tail}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: line {i}: not a scene record (a JSON object expected){tail}")
        if not isinstance(rec.get("image"), str) or not rec["image"]:
            raise ValueError(f"{path}: line {i}: scene record without an 'image' file name{tail}")
        records.append(rec)
    return records


def generate_dataset(
    out_dir: str | Path,
    n: int,
    height: int = 512,
    width: int | None = None,
    seed: int = 0,
    kind: SceneKind | Literal["random"] = "random",
    supersample: int = 2,
    half: bool = False,
    overwrite: bool = False,
    progress: Iterable | None = None,
) -> list[Path]:
    """Write ``n`` synthetic HDR panoramas ``synth_XXXX.exr`` and ``scenes.jsonl`` into ``out_dir``.

    Scene ``k`` uses seed ``seed + k``. Each EXR carries its description in the
    ``comment`` header attribute; ``scenes.jsonl`` holds one line per panorama
    ``{"image", "seed", "kind", "caption", "scene"}``. Existing EXRs are kept
    unless ``overwrite`` (each file is written atomically).
    """
    from opama_tools.data.exr import write_exr
    from opama_tools.io import ensure_output_dir

    out = ensure_output_dir(Path(out_dir))  # OutputPathError (a ValueError) naming the folder
    meta = out / "scenes.jsonl"
    existing: dict[str, dict] = {}
    if meta.exists():  # nothing is overwritten when it is not a scenes file
        existing = {r["image"]: r for r in read_scene_records(meta, "move it away or choose another folder")}
    width = width or 2 * height
    paths: list[Path] = []
    records = []
    for k in range(n):
        scene = make_scene(seed + k, kind)
        path = out / f"synth_{seed + k:04d}.exr"
        if overwrite or not path.exists():
            img = render_equirect(scene, height, width, supersample=supersample)
            write_exr(path, img, half=half, comment=scene.description)
        paths.append(path)
        records.append(
            {"image": path.name, "seed": seed + k, "kind": scene.kind, "caption": scene.description,
             "scene": scene.to_dict()}
        )
        if progress is not None:
            progress(k + 1)
    for rec in records:
        existing[rec["image"]] = rec
    from opama_tools.io import atomic_write_text

    atomic_write_text(meta, "".join(json.dumps(r) + "\n" for r in existing.values()))
    return paths
