"""The training sample matches the reference's definition (dataset.py), the caption composition,
and the world-size-independent sample order / draws."""

import math

import numpy as np
import pytest
import torch

from opama_model.spherical import equi_to_pers
from opama_model.training.data import StreamSampler
from opama_model.training.sample import (SampleSettings, compose_caption, known_masks, make_sample, seeded_rng)
from opama_model.training.step import draw_step
from opama_model.views import AOG21

S = 32
HW = (64, 128)


def _footprint(views, hw, size):
    """Independent footprint of square fov-90 views (pixel areas, py360convert's fov convention):
    equirect pixel centres whose direction lies inside the view's frustum."""
    h, w = hw
    j, i = np.meshgrid(np.arange(w), np.arange(h))
    lon = ((j + 0.5) / w - 0.5) * 2 * np.pi
    lat = (0.5 - (i + 0.5) / h) * np.pi
    d = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], -1)
    edge = math.tan(math.radians(45)) * size / (size - 1)
    out = np.zeros(hw, bool)
    for yaw, pitch in views:
        y, p = math.radians(yaw), math.radians(pitch)
        f = np.array([math.cos(p) * math.sin(y), math.sin(p), math.cos(p) * math.cos(y)])
        r = np.array([math.cos(y), 0.0, -math.sin(y)])
        u = np.cross(f, r)
        df, dr, du = d @ f, d @ r, d @ u
        out |= (df > 0) & (np.abs(dr) <= edge * df) & (np.abs(du) <= edge * df)
    return out


def _area_fraction(mask):
    h = mask.shape[-2]
    lat = (0.5 - (np.arange(h) + 0.5) / h) * np.pi
    wgt = np.cos(lat)[:, None] * np.ones(mask.shape[-1])
    return float((mask * wgt).sum() / wgt.sum())


@pytest.mark.parametrize("k", [0, 17])
def test_known_region_is_input_view_plus_first_k_views(k):
    hw, size = (128, 256), 32
    known = known_masks(hw, size)[k, 0].numpy()
    ref = _footprint([(0.0, 0.0)] + list(AOG21[:k]), hw, size)
    assert (known == ref).mean() > 0.995  # only boundary pixels may differ
    frac = _area_fraction(known)
    if k == 0:
        # a 90 x 90 degree view covers 4 asin(sin 45 sin 45) = 2 pi / 3 sr: 1/6 of the sphere
        assert frac == pytest.approx(1 / 6, abs=0.01)
    else:
        assert frac == pytest.approx(_area_fraction(ref), abs=0.005)
        assert 0.5 < frac < 0.98  # the last 3 (downward) views are never known at training
    assert known_masks(hw, size).shape[0] == 18


def _pano(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, *HW, generator=g) * 2 - 1
    return x


@pytest.mark.parametrize("k", [0, 5, 17])
def test_no_known_pixel_in_the_targets_mask_and_known_pixels_are_ground_truth(k):
    st = SampleSettings(view_size=S, canvas_hw=HW)
    s = make_sample(_pano(k), k, 0, st)
    unknown = s["unknown"][0] > 0.5
    assert 0 < unknown.float().mean() < 1
    view = s["clip_images"][0]
    # unknown pixels: -1 for CLIP/GMA, 0 in the UNet's masked image
    assert torch.all(view[:, unknown] == -1)
    assert torch.all(s["masked_image"][:, unknown] == 0)
    assert torch.all(s["gma_images"][6, :3] == view)
    # known pixels are the ground truth (nearest sampling of the same panorama)
    assert torch.equal(s["masked_image"][:, ~unknown], s["target"][:, ~unknown])
    # the unknown mask is the view of the canvas's unknown region at view k
    known = known_masks(HW, S)[k:k + 1].float()
    ref = equi_to_pers(known, *AOG21[k], 90.0, (S, S), mode="nearest")[0, 0, 0] < 0.5
    assert torch.equal(unknown, ref)


def test_target_is_view_k_of_the_rotated_panorama_and_spherical_channels_stay_in_canvas_frame():
    st = SampleSettings(view_size=S, canvas_hw=HW)
    pano = _pano(1)
    a = make_sample(pano, 3, 90, st)  # 90 degrees = 32 columns of 128: an exact roll
    rolled = torch.roll(pano, shifts=-32, dims=-1).unsqueeze(0)
    ref = equi_to_pers(rolled, *AOG21[3], 90.0, (S, S), mode="nearest")[0, 0]
    assert torch.equal(a["target"], ref)
    b = make_sample(pano, 3, 0, st)
    assert torch.equal(a["gma_images"][:, 3:], b["gma_images"][:, 3:])  # lat/lon do not rotate
    assert not torch.equal(a["target"], b["target"])


def test_empty_canvas_sample_knows_nothing():
    st = SampleSettings(view_size=S, canvas_hw=HW, empty_canvas_prob=1.0)
    s = make_sample(_pano(2), -1, 10, st)
    assert torch.all(s["unknown"] == 1)
    assert torch.all(s["clip_images"] == -1)
    assert torch.all(s["masked_image"] == 0)


def test_caption_is_global_plus_0_to_4_view_captions():
    views = [f"view {i}" for i in range(12)]
    counts = set()
    for seed in range(200):
        cap = compose_caption("a room", views, seeded_rng(seed))
        parts = cap.split(", ")
        assert parts[0] == "a room"
        assert len(set(parts[1:])) == len(parts) - 1 and set(parts[1:]) <= set(views)
        counts.add(len(parts) - 1)
    assert counts == {0, 1, 2, 3, 4}
    assert compose_caption("a room", [], seeded_rng(0)) == "a room"
    assert compose_caption(None, ["only"], seeded_rng(0)) == ""  # min(5, 1) -> 0 view captions


def test_sample_order_and_draws_do_not_depend_on_the_number_of_processes():
    one = StreamSampler(7, seed=3, local_batch=4, world=1)
    two = [StreamSampler(7, seed=3, local_batch=2, world=2, rank=r) for r in range(2)]
    it1, it2 = iter(one), [iter(s) for s in two]
    for _ in range(5):  # 5 global micro-batches, crossing epochs
        glob = [next(it1) for _ in range(4)]
        split = [next(it2[0]) for _ in range(2)] + [next(it2[1]) for _ in range(2)]
        assert glob == split
    # resuming at micro-batch 3 continues the same stream
    again = iter(StreamSampler(7, seed=3, local_batch=4, world=1, start_micro=3))
    ref = iter(StreamSampler(7, seed=3, local_batch=4, world=1))
    for _ in range(12):
        next(ref)
    assert [next(again) for _ in range(8)] == [next(ref) for _ in range(8)]
    d1 = draw_step(0, 5, [0, 1, 2, 3], (4, 8, 8), 1000)
    d2 = draw_step(0, 5, [2, 3], (4, 8, 8), 1000)
    assert torch.equal(d1.noise[2:], d2.noise) and torch.equal(d1.timesteps[2:], d2.timesteps)
    assert torch.equal(d1.modes[2:], d2.modes)


def test_guidance_dropout_is_per_sample_with_the_reference_rates():
    d = draw_step(0, 0, list(range(4000)), (1, 1, 1), 1000)
    rates = torch.bincount(d.modes, minlength=3).float() / 4000
    assert rates[0] == pytest.approx(0.2, abs=0.025)
    assert rates[1] == pytest.approx(0.4, abs=0.03)
    assert rates[2] == pytest.approx(0.4, abs=0.03)
    assert d.timesteps.min() >= 0 and d.timesteps.max() <= 999


@pytest.mark.parametrize("hw,size", [((64, 128), 32), ((128, 256), 32)])
def test_sample_from_index_maps_equals_the_direct_construction(hw, size):
    """make_sample evaluates the rotation only at the pixels that nearest sampling picks; it must give
    what rotating, masking and cutting the whole canvas gives (whole-column and fractional yaws, empty
    canvas, first and last step, the UNet-only sample)."""
    from opama_model.training.sample import make_sample_reference, sample_index_maps

    st = SampleSettings(view_size=size, canvas_hw=hw)
    pano = torch.rand(3, *hw, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for k in (-1, 0, 9, 17):
        for yaw in (0, 1, 45, 90, 271, 359):
            for unet_only in (False, True):
                a = make_sample(pano, k, yaw, st, unet_only=unet_only)
                b = make_sample_reference(pano, k, yaw, st, unet_only=unet_only)
                assert a.keys() == b.keys()
                for key in a:
                    assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (k, yaw, key)
    maps = sample_index_maps(hw, size, ((0.0, 0.0),))
    assert maps["faces"].shape == (6, size, size) and maps[(0.0, 0.0)].shape == (size, size)
    assert int(maps["faces"].max()) < hw[0] * hw[1] and int(maps["faces"].min()) >= 0
