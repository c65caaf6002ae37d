"""Spherical geometry: agreement with py360convert, ground truth from the ray-caster, round trips."""

from __future__ import annotations

import math

import numpy as np
import py360convert as p3
import pytest
import torch

from opama_model.spherical import (
    CUBE_FACES,
    cube_lonlat_map,
    cube_to_equi,
    equi_to_cube,
    equi_to_pers,
    equirect_directions,
    equirect_lonlat_map,
    pad_equirect,
    pers_to_equi,
    perspective_directions,
    rotate_equi,
    view_coverage_mask,
    view_lonlat_map,
)
from opama_model.views import AOG21, CUBE, RING8, VIEW_SETS, format_views, parse_views
from opama_tools.data.synthetic import make_scene, render_equirect, render_perspective


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def tonemap(x):
    return x / (1 + x)


def to_t(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) numpy -> (1, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0)


def smooth_equi(h: int, w: int) -> torch.Tensor:
    """A smooth, seamless (1, 3, H, W) image in [0.1, 0.9] defined on the sphere."""
    x, y, z = equirect_directions(h, w, dtype=torch.float64).unbind(-1)
    img = torch.stack((0.5 + 0.4 * torch.sin(2 * x + y), 0.5 + 0.4 * torch.cos(3 * z - x * y), 0.5 + 0.3 * x * y * z + 0.2 * y))
    return img.float().unsqueeze(0)


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(0).random((64, 128, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def scenes():
    """Outdoor and indoor synthetic scenes and their ray-cast 256x512 equirects (linear HDR)."""
    out = {}
    for kind in ("outdoor", "indoor"):
        sc = make_scene(3, kind)
        out[kind] = (sc, to_t(render_equirect(sc, 256, 512, supersample=2)))
    return out


@pytest.fixture(scope="module")
def outdoor_small():
    """Tonemapped outdoor scene at 128x256 for round trips."""
    sc = make_scene(3, "outdoor")
    return tonemap(to_t(render_equirect(sc, 128, 256, supersample=2)))


# ------------------------------------------------------------------ py360convert agreement
E2P_CASES = [
    # yaw, pitch, roll, fov, (h, w)
    (0, 0, 0, 90, (32, 32)),
    (180, 10, 0, 80, (24, 40)),      # straddles the seam, non-square (square pixels)
    (-170, -60, 0, 100, (32, 32)),
    (30, 20, 15, 90, (32, 32)),      # roll
    (45, 88, 0, 60, (16, 16)),       # near the zenith
    (-120, -87, -30, 90, (20, 28)),  # near the nadir, roll
    (179.9, 0, 0, 120, (16, 48)),
]


@pytest.mark.parametrize("yaw,pitch,roll,fov,hw", E2P_CASES)
def test_equi_to_pers_matches_py360convert(noise, yaw, pitch, roll, fov, hw):
    h, w = hw
    # opama has square pixels: vertical fov follows from the aspect ratio.
    vfov = math.degrees(2 * math.atan(math.tan(math.radians(fov) / 2) * (h - 1) / (w - 1)))
    ref = p3.e2p(noise, (fov, vfov), yaw, pitch, hw, in_rot_deg=roll)
    ours = equi_to_pers(to_t(noise), yaw, pitch, fov, hw, roll)[0, 0].permute(1, 2, 0).numpy()
    assert np.abs(ours - ref).max() < 2e-4


def test_equi_to_pers_batched_over_images_and_views(noise):
    imgs = np.stack([noise, noise[::-1].copy()])
    yaws, pitches = [0, 90, -135], [0, 30, -45]
    out = equi_to_pers(torch.from_numpy(imgs).permute(0, 3, 1, 2), yaws, pitches, 90, (16, 16))
    assert out.shape == (2, 3, 3, 16, 16)
    for b in range(2):
        for v in range(3):
            ref = p3.e2p(imgs[b], 90, yaws[v], pitches[v], (16, 16))
            assert np.abs(out[b, v].permute(1, 2, 0).numpy() - ref).max() < 2e-4


def test_roll_sign_is_py360convert_in_rot_deg(noise):
    ours = equi_to_pers(to_t(noise), 20, 10, 90, (32, 32), roll=25)[0, 0].permute(1, 2, 0).numpy()
    same = p3.e2p(noise, 90, 20, 10, (32, 32), in_rot_deg=25)
    opposite = p3.e2p(noise, 90, 20, 10, (32, 32), in_rot_deg=-25)
    assert np.abs(ours - same).max() < 2e-4
    assert np.abs(ours - opposite).mean() > 0.1
    # Positive roll: the camera turns clockwise, its right side looks lower, so the horizon
    # rises towards the right of the image (content turns anticlockwise).
    _, lat = equirect_lonlat_map(64, 128)
    sky = (lat > 0).float()[None, None].expand(1, 3, -1, -1)
    v = equi_to_pers(sky, 0, 0, 90, (33, 33), roll=20)[0, 0, 0]
    assert v[:, -1].sum() < v[:, 0].sum() - 5


def test_equi_to_cube_matches_py360convert_e2c(noise):
    ours = equi_to_cube(to_t(noise), 16)
    assert ours.shape == (1, 6, 3, 16, 16)
    ref = p3.e2c(noise, 16, cube_format="dict")
    for k, name in enumerate(CUBE_FACES):
        assert np.abs(ours[0, k].permute(1, 2, 0).numpy() - ref[name]).max() < 2e-4


def test_cube_to_equi_agrees_with_py360convert_c2e():
    diffs = []
    for h in (64, 128):
        truth = smooth_equi(h, 2 * h)
        cube = equi_to_cube(truth, h // 2)
        ours = cube_to_equi(cube, (h, 2 * h))
        faces = [cube[0, k].permute(1, 2, 0).numpy() for k in range(6)]
        ref = torch.from_numpy(p3.c2e(faces, h, 2 * h, cube_format="list")).permute(2, 0, 1)[None]
        d = (ours - ref).abs()
        # c2e samples the equirect at linspace(-pi, pi, W) and scales faces by f, not f - 1:
        # sub-pixel offsets, so the two agree to interpolation error and converge with resolution.
        assert d.mean() < 0.01 and d.max() < 0.07
        diffs.append(float(d.mean()))
        assert (ours - truth).abs().max() < 0.005  # and ours is the exact inverse geometry
    assert diffs[1] < 0.6 * diffs[0]


# --------------------------------------------------------------------- seam and poles
def test_pad_equirect_wraps_seam_and_continues_over_poles():
    h, w = 4, 8
    x = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    p = pad_equirect(x, 1)[0, 0]
    assert torch.equal(p[1:-1, 1:-1], x[0, 0])
    assert torch.equal(p[1:-1, 0], x[0, 0, :, -1]) and torch.equal(p[1:-1, -1], x[0, 0, :, 0])
    assert torch.equal(p[0, 1:-1], torch.roll(x[0, 0, 0], w // 2))
    assert torch.equal(p[-1, 1:-1], torch.roll(x[0, 0, -1], w // 2))
    assert p[0, 0] == p[0, w] and p[0, -1] == p[0, 1]


def test_view_across_seam_equals_view_on_half_turned_panorama(noise):
    t = to_t(noise)
    turned = torch.roll(t, 64, dims=-1)  # lon + 180°
    for yaw, pitch in ((180, 0), (-175, 30), (178, -70)):
        a = equi_to_pers(t, yaw, pitch, 90, (32, 32))
        b = equi_to_pers(turned, yaw - 180, pitch, 90, (32, 32))
        assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("yaw,pitch", [(180, 0), (0, 90), (73, -90), (-179.5, 60)])
def test_no_black_or_smeared_pixels_at_seam_and_poles(yaw, pitch):
    ones = torch.ones(1, 3, 32, 64)
    v = equi_to_pers(ones, yaw, pitch, 120, (24, 24))
    assert torch.allclose(v, torch.ones_like(v), atol=1e-6)
    # bicubic reads two pixels around: its wider padding keeps the seam clean too
    vb = equi_to_pers(ones, yaw, pitch, 120, (24, 24), mode="bicubic")
    assert torch.allclose(vb, torch.ones_like(vb), atol=1e-5)


def test_zenith_view_of_latitude_only_image_is_rotationally_symmetric():
    _, lat = equirect_lonlat_map(128, 256)
    img = torch.cos(3 * lat)[None, None]
    for pitch in (90, -90):
        v = equi_to_pers(img, 0, pitch, 90, (33, 33))[0, 0, 0]
        assert (v - torch.rot90(v, 1, (0, 1))).abs().max() < 2e-3
        assert (v - v.flip(1)).abs().max() < 2e-3


# ------------------------------------------------------------ ground truth: the ray-caster
GT_VIEWS = [
    # yaw, pitch, fov, roll
    (0, 0, 90, 0),
    (180, 0, 90, 0),      # centred on the seam
    (-170, 10, 70, 0),    # across the seam
    (40, 80, 90, 0),      # near the zenith
    (-60, -85, 90, 0),    # near the nadir
    (30, 20, 90, 25),     # rolled
]


def _cut_box_filtered(equi: torch.Tensor, yaw, pitch, fov, size, roll, k=2) -> torch.Tensor:
    """View cut at k x k sub-pixels and box-averaged in linear HDR, like the ray-caster's supersampling."""
    step = 2 * math.tan(math.radians(fov) / 2) / (size - 1)
    extent = ((size - 1) / 2 + 0.5 - 0.5 / k) * step  # outermost sub-pixel centre
    fov_k = 2 * math.degrees(math.atan(extent))
    v = equi_to_pers(equi, yaw, pitch, fov_k, (size * k, size * k), roll)[:, 0]
    return torch.nn.functional.avg_pool2d(v, k)


@pytest.mark.parametrize("kind", ["outdoor", "indoor"])
def test_views_match_raycast_ground_truth(scenes, kind):
    scene, equi = scenes[kind]
    for yaw, pitch, fov, roll in GT_VIEWS:
        truth = tonemap(to_t(render_perspective(scene, yaw, pitch, fov, (32, 32), roll, supersample=4)))
        box = tonemap(_cut_box_filtered(equi, yaw, pitch, fov, 32, roll))
        assert psnr(box, truth) >= 30, (kind, yaw, pitch, psnr(box, truth))
        if kind == "outdoor":  # no 300:1 window edges: the plain bilinear cut matches as well
            plain = tonemap(equi_to_pers(equi, yaw, pitch, fov, (32, 32), roll)[:, 0])
            assert psnr(plain, truth) >= 30, (yaw, pitch, psnr(plain, truth))


def test_wrong_conventions_would_fail_the_ground_truth(scenes):
    """The ground-truth check can fail: a mirrored yaw or an inverted roll is far off."""
    scene, equi = scenes["outdoor"]
    truth = tonemap(to_t(render_perspective(scene, 60, 10, 90, (32, 32), 20, supersample=4)))
    good = tonemap(_cut_box_filtered(equi, 60, 10, 90, 32, 20))
    assert psnr(good, truth) >= 30
    assert psnr(tonemap(_cut_box_filtered(equi, -60, 10, 90, 32, 20)), truth) < 25
    assert psnr(tonemap(_cut_box_filtered(equi, 60, 10, 90, 32, -20)), truth) < 25


# ------------------------------------------------------------------------ round trips
def test_equi_cube_equi_round_trip(outdoor_small):
    cube = equi_to_cube(outdoor_small, 64)  # face width W/4: matched equatorial sampling
    back = cube_to_equi(cube, (128, 256))
    assert back.shape == outdoor_small.shape
    assert psnr(back, outdoor_small) >= 35


@pytest.mark.parametrize("views,fov,size", [(CUBE, 110, 80), (tuple(AOG21) + ((0, 0), (0, 90), (0, -90)), 90, 64)])
def test_equi_views_equi_round_trip(outdoor_small, views, fov, size):
    yaws, pitches = [v[0] for v in views], [v[1] for v in views]
    cut = equi_to_pers(outdoor_small, yaws, pitches, fov, (size, size))
    back, mask = pers_to_equi(cut, yaws, pitches, fov, (128, 256))
    assert bool((mask == 1).all())  # the views cover the whole sphere
    assert psnr(back, outdoor_small) >= 35


def test_rotate_yaw_then_minus_yaw_is_identity(outdoor_small):
    x = outdoor_small
    step = 360 / x.shape[-1]
    for k in (1, 37, 128, -5):
        r = rotate_equi(x, k * step)
        assert torch.equal(r, torch.roll(x, -k, dims=-1))  # exact circular roll of columns
        assert torch.equal(rotate_equi(r, -k * step), x)
        assert torch.equal(rotate_equi(r, k * step, inverse=True), x)
    u8 = (x * 255).to(torch.uint8)
    assert torch.equal(rotate_equi(rotate_equi(u8, 90), -90), u8)
    assert psnr(rotate_equi(rotate_equi(x, 12.3), -12.3), x) >= 35  # not a multiple: resampled


def test_rotate_matches_views_and_inverts(outdoor_small):
    x = outdoor_small
    yaw, pitch, roll = 35.0, 25.0, 10.0
    rotated = rotate_equi(x, yaw, pitch, roll)
    a = equi_to_pers(rotated, 0, 0, 80, (24, 24))
    b = equi_to_pers(x, yaw, pitch, 80, (24, 24), roll)
    assert psnr(a, b) >= 35
    assert psnr(rotate_equi(rotated, yaw, pitch, roll, inverse=True), x) >= 35
    # the same yaw as a column roll and as a resampling agree
    assert (rotate_equi(x, 45.0, mode="bilinear") - rotate_equi(x, 45.0, 1e-9)).abs().max() < 1e-4


# ------------------------------------------------------------------ pasting and masks
def test_pers_to_equi_single_view_and_coverage_mask(outdoor_small):
    x = outdoor_small
    cut = equi_to_pers(x, 170, -20, 100, (48, 64))
    back, mask = pers_to_equi(cut, 170, -20, 100, (128, 256))
    cov = view_coverage_mask(170, -20, 100, (48, 64), (128, 256))
    assert cov.shape == (1, 1, 128, 256)
    assert torch.equal(mask, cov)
    assert mask[..., 0].any() and mask[..., -1].any()  # crosses the seam: both edges covered
    assert float(back[mask.expand_as(back) == 0].abs().max()) == 0.0
    # interior of the footprint is reproduced (the rim mixes border pixels)
    inner = view_coverage_mask(170, -20, 90, (48, 64), (128, 256)).bool().expand_as(back)
    assert psnr(back[inner], x[inner]) >= 35
    # footprint area ~ solid angle of the view
    dirs = perspective_directions(170, -20, 100, (48, 64))
    assert dirs.shape == (1, 48, 64, 3)
    lat = torch.asin(equirect_directions(128, 256)[..., 1])
    area = float((cov[0, 0] * torch.cos(lat)).sum() * (math.pi / 128) * (2 * math.pi / 256))
    t = math.tan(math.radians(50))
    half_w, half_h = t * 32 / 31.5, t * 24 / 31.5  # the footprint reaches the outer pixel edges
    exact = 4 * math.asin(math.sin(math.atan(half_w)) * math.sin(math.atan(half_h)))
    assert abs(area - exact) / exact < 0.03


def test_pers_to_equi_window_holds_every_footprint():
    """pers_to_equi only projects a window around each view: it must never clip a footprint."""
    rng = np.random.default_rng(1)
    cases = [(0, 90, 90, 0, (16, 16)), (180, -60, 150, 0, (12, 20)), (-179, 40, 170, 30, (20, 12)),
             (90, 70, 60, -45, (16, 16)), (10, -89, 30, 0, (8, 8))]
    cases += [(float(rng.uniform(-180, 180)), float(rng.uniform(-90, 90)), float(rng.uniform(20, 160)),
               float(rng.uniform(-60, 60)), (int(rng.integers(6, 24)), int(rng.integers(6, 24)))) for _ in range(25)]
    for yaw, pitch, fov, roll, hw in cases:
        _, mask = pers_to_equi(torch.ones(1, 1, *hw), yaw, pitch, fov, (48, 96), roll)
        ref = view_coverage_mask(yaw, pitch, fov, hw, (48, 96), roll)[0]
        assert torch.equal(mask[0], ref), (yaw, pitch, fov, roll, hw)


def test_pers_to_equi_feathers_overlaps():
    h = w = 32
    zeros, ones = torch.zeros(1, 1, 3, h, w), torch.ones(1, 1, 3, h, w)
    views = torch.cat((zeros, ones), dim=1)
    out, mask = pers_to_equi(views, [-30, 30], 0, 90, (64, 128))
    row = out[0, 0, 32]
    covered = mask[0, 0, 32].bool()
    vals = row[covered]
    # along the equator the blend rises monotonically from the 0-view to the 1-view
    assert vals.min() == 0 and vals.max() == 1
    assert bool((vals[1:] >= vals[:-1] - 1e-6).all())
    mid = vals[(vals > 0) & (vals < 1)]
    assert mid.numel() >= 4  # a ramp, not a hard cut
    hard, _ = pers_to_equi(views, [-30, 30], 0, 90, (64, 128), feather=0)
    hv = hard[0, 0, 32][covered]
    assert set(torch.unique(hv).tolist()) <= {0.0, 0.5, 1.0}


def test_pers_to_equi_is_differentiable():
    v = torch.rand(2, 2, 3, 16, 16, requires_grad=True)
    out, _ = pers_to_equi(v, [0, 90], [0, 10], 90, (32, 64))
    out.sum().backward()
    assert v.grad is not None and float(v.grad.abs().sum()) > 0
    e = torch.rand(1, 3, 32, 64, requires_grad=True)
    equi_to_pers(e, [0, 180], 0, 90, (8, 8)).sum().backward()
    assert float(e.grad.abs().sum()) > 0
    c = torch.rand(1, 6, 3, 8, 8, requires_grad=True)
    cube_to_equi(c, (16, 32)).sum().backward()
    assert bool((c.grad.sum(dim=(2, 3, 4)) > 0).all())  # every face contributes


# -------------------------------------------------------------------- lon/lat maps
def test_lonlat_maps():
    m = equirect_lonlat_map(64, 128)
    assert m.shape == (2, 64, 128)
    assert abs(float(m[0, 0, 0]) + math.pi * (1 - 1 / 128)) < 1e-6  # left edge: -pi + half a column
    assert float(m[1, 0, 0]) > 0 and float(m[1, -1, 0]) < 0          # top looks up
    vm = view_lonlat_map([30, -150], [10, -40], 90, (33, 33))
    assert vm.shape == (2, 2, 33, 33)
    assert torch.allclose(vm[0, :, 16, 16], torch.tensor([math.radians(30), math.radians(10)]), atol=1e-6)
    assert torch.allclose(vm[1, :, 16, 16], torch.tensor([math.radians(-150), math.radians(-40)]), atol=1e-6)
    assert float(vm[0, 0, 16, -1]) > float(vm[0, 0, 16, 0])  # longitude grows to the right
    # the view map is the equirect map seen through the view (away from the seam)
    seen = equi_to_pers(m[None], 30, 10, 90, (33, 33))[0, 0]
    assert (seen - vm[0]).abs().max() < 0.02
    cm = cube_lonlat_map(17)
    assert cm.shape == (6, 2, 17, 17)
    centres = cm[:, :, 8, 8]
    assert torch.allclose(centres[:4, 0], torch.tensor([0, math.pi / 2, math.pi, -math.pi / 2]), atol=1e-6)
    assert torch.allclose(centres[4:, 1], torch.tensor([math.pi / 2, -math.pi / 2]), atol=1e-6)


# --------------------------------------------------------------------------- views
def test_view_sets_and_parser():
    assert len(AOG21) == 21 and AOG21[0] == (0.0, 25.0) and AOG21[12] == (180.0, 0.0) and AOG21[-1] == (-90.0, -45.0)
    assert len(set(AOG21)) == 21
    assert [y for y, _ in RING8] == [0, 45, 90, 135, 180, -135, -90, -45]
    assert list(CUBE) == [(0, 0), (90, 0), (180, 0), (-90, 0), (0, 90), (0, -90)]
    assert parse_views("AOG21") == list(AOG21) and set(VIEW_SETS) == {"aog21", "ring8", "cube"}
    assert parse_views(" 0,0; 90 ,-12.5;180,0; ") == [(0, 0), (90, -12.5), (180, 0)]
    assert parse_views(format_views(AOG21)) == list(AOG21)
    for bad in ("", "0", "0,0,0", "a,b", "0,91", "nan,0", "ring9"):
        with pytest.raises(ValueError):
            parse_views(bad)
