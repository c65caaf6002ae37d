"""outpaint_video (temporal 360-degree video) on the tiny preset: static clips, moving content, pans,
masked edits, flicker against independent per-frame panoramas, UNet pass counts."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from opama_model.pipeline import PROCEDURES, _input_footprint, paste_inputs, to_uint8
from opama_model.spherical import equi_to_pers
from opama_model.video_pipeline import TemporalSettings, dilate_degrees, outpaint_video, summarise_video
from test_pipeline import pipe  # noqa: F401 (the tiny pipeline fixture, one thread)

H, W = 64, 128
SHORT = ((0.0, 25.0), (45.0, 0.0))  # a short schedule; completion views cover the rest
PROC = replace(PROCEDURES["fast"], steps=4)


def world_photo(yaw, obj=None, size=64):
    """A ``size`` px NFoV photo (fov 90, pitch 0) at ``yaw`` of a smooth world panorama, with a red
    block at world yaw ``obj`` degrees (None: no block)."""
    yy, xx = np.mgrid[0:256, 0:512] / np.array([256, 512])[:, None, None]
    w = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * xx), 0.5 + 0.4 * np.cos(2 * np.pi * yy + xx), 0.3 + 0.5 * yy], -1)
    if obj is not None:
        x0 = int((obj + 180) / 360 * 512)
        w[110:150, x0:x0 + 20] = [0.95, 0.1, 0.1]
    t = torch.from_numpy(w).permute(2, 0, 1)[None].float() * 2 - 1
    v = equi_to_pers(t, yaw, 0.0, 90.0, (size, size), mode="bilinear")[0, 0]
    return np.round(((v.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()).astype(np.uint8)


def run(pipe, frames, directions=None, **kw):
    args = dict(prompt="a room", height=H, width=W, procedure=PROC, schedule=SHORT)
    args.update(kw)
    return list(outpaint_video(pipe, frames, directions, **args))


def flicker(results):
    """Mean absolute frame-to-frame change (8-bit levels) of the pixels outside both frames' input masks."""
    vals = []
    for a, b in zip(results, results[1:]):
        gen = ~a.input_mask & ~b.input_mask
        vals.append(np.abs(a.image.astype(np.int16) - b.image.astype(np.int16))[gen].mean())
    return float(np.mean(vals))


def test_settings_are_validated():
    for kw in (dict(strength=0.0), dict(strength=1.5), dict(keyframe_every=-1), dict(band=-1.0),
               dict(blend_frames=0), dict(max_fov=180.0), dict(change_threshold=float("nan"))):
        name = next(iter(kw))
        with pytest.raises(ValueError, match=name):
            TemporalSettings(**kw)


def test_bad_frames_masks_and_directions_are_one_line_errors(pipe):
    eq = np.zeros((H, W, 3), np.uint8)
    cases = [
        (dict(frames=[eq], masks=np.zeros((H, W + 2), bool)), "mask of frame 0"),
        (dict(frames=[eq[:, :100]], masks=np.zeros((H, W), bool)), "frame 0"),
        (dict(frames=[eq], masks=np.zeros((H, W), bool), directions=(0, 0, 90)), "directions"),
        (dict(frames=[world_photo(0)], directions=(0, 0, 200)), "fov"),
        (dict(frames=[world_photo(0)] * 2, directions=[(0, 0, 90)]), "no direction for frame 1"),
    ]
    for kw, match in cases:
        kw.setdefault("directions", None)
        with pytest.raises(ValueError, match=match) as e:
            list(outpaint_video(pipe, kw.pop("frames"), kw.pop("directions"), "a room", procedure=PROC,
                                schedule=SHORT, **kw))
        assert "\n" not in str(e.value)


def test_frame0_is_the_image_pipeline_and_independent_frames_too(pipe):
    frames = [world_photo(0, 10), world_photo(0, 14)]
    res = run(pipe, frames, (0.0, 0.0, 90.0), seed=5, temporal=TemporalSettings(independent=True))
    for r, f in zip(res, frames):
        ref = pipe(images=[f], prompt="a room", height=H, width=W, procedure=PROC, schedule=SHORT, seed=5,
                   output_type="np")
        np.testing.assert_array_equal(r.image, ref.images[0])
        np.testing.assert_array_equal(r.input_mask, ref.input_mask)
        assert r.keyframe and r.unet_passes == ref.info["unet_passes"]


def test_static_clip_is_exactly_static_and_costs_no_unet_pass(pipe):
    res = run(pipe, [world_photo(0, 10)] * 4)
    for r in res[1:]:
        np.testing.assert_array_equal(r.image, res[0].image)
        assert r.unet_passes == 0 and r.regenerated_pixels == 0 and not r.keyframe


def test_keyframes_refresh_what_was_regenerated_and_blend_it_in(pipe):
    dirs = [(3.0 * t, 0.0, 90.0) for t in range(5)]
    frames = [world_photo(d[0], obj=30 + 5 * t) for t, d in enumerate(dirs)]
    ts = TemporalSettings(keyframe_every=2, blend_frames=2)
    res = run(pipe, frames, dirs, temporal=ts)
    assert [r.index for r in res if r.keyframe] == [0, 2, 4]
    plain = run(pipe, frames[:2], dirs[:2], temporal=TemporalSettings(keyframe_every=0))
    np.testing.assert_array_equal(res[1].image, plain[1].image)  # no keyframe yet: the same frame
    for r, f, d in zip(res, frames, dirs):
        canvas, known = paste_inputs([f], [d], (H, W))
        np.testing.assert_array_equal(r.image[r.input_mask], to_uint8(canvas)[r.input_mask])
        if r.index:
            kinds = {v["kind"] for v in r.views}
            assert ("keyframe" in kinds) == r.keyframe
            assert r.unet_passes == sum(v["unet_calls"] for v in r.views)
    # a static clip never refreshes: nothing was regenerated
    assert [r.index for r in run(pipe, [frames[0]] * 5, temporal=ts) if r.keyframe] == [0]


def test_object_moving_inside_the_view_keeps_each_frames_photo(pipe):
    frames = [world_photo(0, -12 + 4 * t) for t in range(4)]  # the block stays away from the border
    res = run(pipe, frames)
    for r, f in zip(res, frames):
        canvas, known = paste_inputs([f], [(0.0, 0.0, 90.0)], (H, W))
        np.testing.assert_array_equal(r.input_mask, known[0, 0].numpy())
        np.testing.assert_array_equal(r.image[r.input_mask], to_uint8(canvas)[r.input_mask])
    assert res[1].image[res[1].input_mask].tolist() != res[0].image[res[0].input_mask].tolist()


def test_pan_moves_the_footprint_and_costs_a_small_fraction(pipe):
    step = 360.0 / W * 2  # two canvas columns per frame
    dirs = [(step * t, 0.0, 90.0) for t in range(8)]
    # 40 px: coarser than the canvas at fov 90, pasted without shrinking (paste_inputs), so the
    # footprint is exactly that of a 40 x 40 photo
    res = run(pipe, [world_photo(d[0], size=40) for d in dirs], dirs)
    cols0 = np.nonzero(res[0].input_mask.any(0))[0].mean()
    for t, (r, d) in enumerate(zip(res, dirs)):
        np.testing.assert_array_equal(r.input_mask, _input_footprint(40, 40, d, (H, W))[0, 0].numpy())
        assert abs(np.nonzero(r.input_mask.any(0))[0].mean() - cols0 - 2 * t) < 0.5
    summary = summarise_video([r.info() for r in res], TemporalSettings(), directions=dirs)
    print("pan pass ratios", summary["mean_pass_ratio_after_first"], summary["max_pass_ratio_after_first"],
          summary["unet_passes_per_frame"])
    assert summary["frames"] == 8 and summary["keyframes"] == [0]
    assert all(r.regenerated_pixels > 0 for r in res[1:])  # the input changes every frame
    assert summary["mean_pass_ratio_after_first"] <= 0.15
    assert summary["unet_passes_total"] == sum(r.unet_passes for r in res)


def test_inpaint_keeps_every_unmasked_pixel(pipe):
    rng = np.random.default_rng(1)
    base = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    frames, masks = [], []
    for t in range(4):
        f = base.copy()
        f[20:30, 40 + 3 * t:52 + 3 * t] = [255, 0, 0]  # content moving next to the mask
        m = np.zeros((H, W), bool)
        m[16:40, 56 + t:80 + t] = True  # a moving mask
        frames.append(f)
        masks.append(m)
    res = list(outpaint_video(pipe, frames, prompt="a room", masks=masks, procedure=PROC, schedule=SHORT))
    for r, f, m in zip(res, frames, masks):
        np.testing.assert_array_equal(r.input_mask, ~m)
        np.testing.assert_array_equal(r.image[~m], f[~m])
    assert any(r.unet_passes > 0 for r in res[1:])


def test_flicker_far_below_independent_frames(pipe):
    # a pan over a static world with a block moving inside the view: the input changes every frame
    # (the footprint moves, the block moves); independent panoramas change their generated region
    dirs = [(3.0 * t, 0.0, 90.0) for t in range(6)]
    frames = [world_photo(d[0], obj=-20 + 5 * t) for t, d in enumerate(dirs)]
    temporal = run(pipe, frames, dirs, seed=2)
    independent = run(pipe, frames, dirs, seed=2, temporal=TemporalSettings(independent=True))
    f_t, f_i = flicker(temporal), flicker(independent)
    print(f"pan + block inside: flicker temporal {f_t:.4f} independent {f_i:.4f} (8-bit levels)")
    assert all(r.regenerated_pixels > 0 for r in temporal[1:])
    assert f_i > 0 and 5 * f_t <= f_i


def test_flicker_with_a_block_crossing_the_input_border(pipe):
    # the block crosses the input's right border (2 degrees per frame relative to the camera): the band
    # next to it is regenerated every frame. On the tiny random model a same-seed panorama barely
    # depends on its input, so the independent baseline is unusually steady and the ratio stays below
    # 5 (measured 2.8); asserted: lower than independent, band regenerated.
    dirs = [(3.0 * t, 0.0, 90.0) for t in range(6)]
    frames = [world_photo(d[0], obj=30 + 5 * t) for t, d in enumerate(dirs)]
    temporal = run(pipe, frames, dirs, seed=2)
    independent = run(pipe, frames, dirs, seed=2, temporal=TemporalSettings(independent=True))
    f_t, f_i = flicker(temporal), flicker(independent)
    print(f"pan + block crossing the border: flicker temporal {f_t:.4f} independent {f_i:.4f} "
          f"ratio {f_i / max(f_t, 1e-9):.2f}")
    strips = [int((a.input_mask & ~b.input_mask).sum()) for a, b in zip(temporal, temporal[1:])]
    assert any(r.regenerated_pixels > n for r, n in zip(temporal[1:], strips))  # more than the uncovered strip
    assert f_t < f_i


def test_dilation_in_degrees():
    m = torch.zeros(1, 1, H, W, dtype=torch.bool)
    m[0, 0, 32, 0] = True  # on the equator at the -180 degree edge: wraps
    d = dilate_degrees(m, 10.0)
    assert bool(d[0, 0, 32, W - 4]) and bool(d[0, 0, 32, 3]) and not bool(d[0, 0, 32, 10])
    assert bool(d[0, 0, 28, 0]) and not bool(d[0, 0, 20, 0])
