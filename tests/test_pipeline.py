"""OPaMaPipeline on the tiny preset: coverage, known pixels, determinism, UNet passes, residuals, CFG."""

import numpy as np
import pytest
import torch

from opama_model.conditioner import pad_tokens
from opama_model.pipeline import (
    PROCEDURES,
    OPaMaPipeline,
    expected_unet_passes,
    make_scheduler,
    paste_inputs,
    plan_views,
)
from opama_model.presets import build_components
from opama_model.views import AOG21

H, W = 64, 128  # tiny views are 64 px: a small 2:1 canvas keeps each run to a few seconds
SHORT = ((0.0, 25.0), (45.0, 0.0))  # a short schedule; completion views cover the rest


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is faster on one thread on a shared machine
    p = OPaMaPipeline.from_components(build_components("tiny"))
    p.set_progress_bar_config(disable=True)
    yield p
    torch.set_num_threads(threads)


def photo(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, size, size, generator=g) * 2 - 1


def run(pipe, **kw):
    args = dict(images=[photo()], prompt="a room", height=H, width=W, num_inference_steps=2, schedule=SHORT,
                output_type="np")
    args.update(kw)
    return pipe(**args)


class Spy:
    """Forward pre-hook on the UNet: what every call received."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        res = kwargs.get("down_intrablock_additional_residuals")
        self.calls.append(dict(rows=args[0].shape[0], n_res=None if res is None else len(res),
                               tokens=kwargs["encoder_hidden_states"].shape[1],
                               mask=kwargs.get("encoder_attention_mask") is not None))

    def close(self):
        self.handle.remove()


def test_plan_covers_every_pixel_with_completion_views():
    # A schedule that leaves holes (AOG-Net's order without its last, downward views) plus
    # completion views covers every canvas pixel; the plan's new pixels tile the unknown region.
    h, w, size = 128, 256, 32
    known0 = paste_inputs([torch.zeros(3, size, size)], [(0, 0, 90)], (h, w))[1]
    _, known_18 = plan_views(known0, AOG21[:18], 90.0, size, complete=False)
    holes = int((~known_18).sum())
    assert holes > 0
    steps, known = plan_views(known0, AOG21[:18], 90.0, size)
    assert bool(known.all())
    extra = [s for s in steps if s.kind == "completion"]
    assert len(extra) >= 1 and sum(s.new_pixels for s in extra) == holes
    assert sum(s.new_pixels for s in steps) == h * w - int(known0.sum())
    # the full published order at this size: covered, with or without completion views
    steps21, known21 = plan_views(known0, AOG21, 90.0, size)
    assert bool(known21.all()) and [s.kind for s in steps21[:21]] == ["schedule"] * 21


def test_output_filled_2to1_known_bit_identical_and_seeded(pipe):
    img = photo(3)
    a = run(pipe, images=[img], seed=5)
    pano, mask = a.images[0], a.input_mask
    assert pano.shape == (H, W, 3) and pano.dtype == np.uint8
    canvas, known = paste_inputs([img], [(0, 0, 90)], (H, W))
    pasted = torch.round((canvas[0] + 1) * 127.5).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(mask, known[0, 0].numpy()) and mask.sum() > 0
    assert np.array_equal(pano[mask], pasted[mask])  # known region bit-identical
    # every pixel filled: the inputs plus each step's new pixels tile the canvas
    assert int(mask.sum()) + sum(v["new_pixels"] for v in a.info["views"]) == H * W
    assert a.info["completion_views"] >= 1
    b = run(pipe, images=[img], seed=5)
    assert np.array_equal(pano, b.images[0])  # same seed -> identical output
    c = run(pipe, images=[img], seed=6)
    assert not np.array_equal(pano[~mask], c.images[0][~mask])


def test_seam_no_worse_than_interior(pipe):
    from opama_tools.eval.metrics.panorama import seam_score

    out = run(pipe, output_type="pt", seed=1).images
    x = (out + 1) / 2
    seam = float(seam_score(x)[0])
    # the same statistic across an interior column boundary (a cut at the panorama centre)
    inner = float(seam_score(torch.roll(x, W // 2, dims=-1))[0])
    assert seam <= max(1.5 * inner, 1.5), (seam, inner)


@pytest.mark.parametrize("procedure", ["reference", "fast"])
def test_unet_passes_counted_and_match_the_plan(pipe, procedure):
    # fast's batched_cfg="auto" is separate calls on CPU: the batched path is forced here, the
    # auto choice is tested in tests/test_pipeline_reuse.py
    extra = dict(batched_cfg=True) if procedure == "fast" else {}
    spy = Spy(pipe.unet)
    try:
        out = run(pipe, procedure=procedure, **extra)
    finally:
        spy.close()
    info = out.info
    assert info["unet_passes"] == len(spy.calls) == info["unet_passes_expected"]
    assert info["unet_rows"] == sum(c["rows"] for c in spy.calls) == info["unet_rows_expected"]
    known0 = paste_inputs([photo()], [(0, 0, 90)], (H, W))[1]
    steps, _ = plan_views(known0, SHORT, 90.0, pipe.view_size)
    sched = make_scheduler(PROCEDURES[procedure].scheduler, pipe.scheduler.config)
    sched.set_timesteps(2)
    n = len(sched.timesteps)
    calls, _ = expected_unet_passes(steps, PROCEDURES[procedure].__class__(
        **{**PROCEDURES[procedure].__dict__, "steps": 2, **extra}), n)
    assert calls == info["unet_passes"]
    if procedure == "reference":  # separate conditional + null calls at every step
        assert info["unet_passes"] == info["generated_views"] * n * 2
        assert all(c["rows"] == 1 for c in spy.calls)
        assert {c["tokens"] for c in spy.calls} == {7, 84}
    else:  # batched guidance in the first half, conditional only afterwards
        assert [c["rows"] for c in spy.calls[:2]] == [2, 1]
        assert spy.calls[0]["mask"] and not spy.calls[1]["mask"]


def test_gma_residuals_reach_every_unet_call(pipe):
    # diffusers pops from the residual list: a list shared between calls arrives empty at the
    # second call (the reference's bug). Every call must receive one residual per down block.
    n_blocks = len(pipe.unet.config.down_block_types)
    spy = Spy(pipe.unet)
    try:
        run(pipe, procedure="reference", schedule=((0.0, 25.0),))
    finally:
        spy.close()
    assert len(spy.calls) > 4
    assert all(c["n_res"] == n_blocks for c in spy.calls), [c["n_res"] for c in spy.calls]


def test_padded_null_tokens_equal_seven_tokens(pipe):
    # Batched guidance pads the 7 null tokens to the conditional length and masks the padding.
    unet, cond = pipe.unet, pipe.conditioner
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 9, 16, 16, generator=g)
    res = [torch.randn(1, c, 16 // 2 ** i, 16 // 2 ** i, generator=g) * 0.1
           for i, c in enumerate(unet.config.block_out_channels)]
    null = cond.null_condition(1).detach()
    with torch.inference_mode():
        a = unet(x, 500, encoder_hidden_states=null, down_intrablock_additional_residuals=list(res)).sample
        padded, mask = pad_tokens(null, 84)
        b = unet(x, 500, encoder_hidden_states=padded, encoder_attention_mask=mask,
                 down_intrablock_additional_residuals=list(res)).sample
        c = unet(x, 500, encoder_hidden_states=padded, down_intrablock_additional_residuals=list(res)).sample
    assert padded.shape[1] == 84
    # fp32 attention over 7 vs 84 keys (masked: weight exp(-1e4) = 0): only summation order differs
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert (c - a).abs().max() > 1e-3  # without the mask the padding changes the result


def test_batched_guidance_equals_separate_calls(pipe):
    a = run(pipe, procedure="fast", output_type="pt", schedule=((0.0, 25.0),), batched_cfg=True).images
    b = run(pipe, procedure="fast", output_type="pt", schedule=((0.0, 25.0),), batched_cfg=False).images
    # 8-bit outputs; float differences ~1e-6 may flip a rounding: at most one level, rarely
    diff = (a - b).abs() * 127.5
    assert float(diff.max()) <= 1.0 + 1e-4 and float((diff > 0.5).float().mean()) < 0.01


def test_text_only_starts_from_the_empty_canvas(pipe):
    out = run(pipe, images=None, prompt="a beach at sunset")
    assert not out.input_mask.any()
    first = out.info["views"][0]
    assert (first["kind"], first["yaw"], first["pitch"], first["generated"]) == ("first", 0.0, 0.0, True)
    assert sum(v["new_pixels"] for v in out.info["views"]) == H * W
    assert out.info["inputs"] == []


def test_two_photos_are_pasted_and_blended_between(pipe):
    a, b = photo(1), photo(2)
    dirs = [(-60.0, 0.0, 90.0), (60.0, 0.0, 90.0)]
    out = run(pipe, images=[a, b], directions=dirs, prompt="")
    canvas, known = paste_inputs([a, b], dirs, (H, W))
    pasted = torch.round((canvas[0] + 1) * 127.5).to(torch.uint8).permute(1, 2, 0).numpy()
    mask = out.input_mask
    assert np.array_equal(mask, known[0, 0].numpy())
    assert np.array_equal(out.images[0][mask], pasted[mask])
    cols = mask.any(axis=0)
    assert cols[W // 4 - 2] and cols[3 * W // 4 + 1]  # around yaw -60 and +60 ...
    assert not mask[:, W - 3:].any()  # ... not behind
    assert [i["yaw"] for i in out.info["inputs"]] == [-60.0, 60.0]


def test_bad_canvas_and_directions(pipe):
    with pytest.raises(ValueError, match="2:1"):
        pipe(images=[photo()], height=64, width=100)
    with pytest.raises(ValueError, match="pitch"):
        pipe(images=[photo()], directions=[(0, 95, 90)], height=H, width=W)
    with pytest.raises(ValueError, match="fov"):
        pipe(images=[photo()], directions=[(0, 0, 180)], height=H, width=W)
    # a photo larger in pixels than the canvas is resampled to its footprint, not refused
    big = pipe(images=[photo(size=80)], height=H, width=W, num_inference_steps=1, schedule=SHORT, output_type="np")
    assert big.input_mask.any() and big.images[0].shape == (H, W, 3)


def test_save_pretrained_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    q = OPaMaPipeline.from_pretrained(tmp_path / "p")
    assert type(q.conditioner) is type(pipe.conditioner)
    for a, b in ((pipe.conditioner, q.conditioner), (pipe.unet, q.unet)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_samplers_take_only_the_noise_schedule(pipe):
    # The model's (training) scheduler is a DDPMScheduler with "leading" spacing; the samplers keep
    # their own defaults, as the reference's from_pretrained of the SD-2 scheduler folder.
    ref = make_scheduler(PROCEDURES["reference"].scheduler, pipe.scheduler.config)
    ref.set_timesteps(25)
    assert type(ref).__name__ == "DPMSolverMultistepScheduler" and ref.config.algorithm_type == "dpmsolver++"
    assert len(ref.timesteps) == 25 and int(ref.timesteps[0]) == 999
    aog = make_scheduler(PROCEDURES["aog"].scheduler, pipe.scheduler.config)
    aog.set_timesteps(50)
    assert type(aog).__name__ == "PNDMScheduler" and len(aog.timesteps) == 51  # PLMS warm-up: one extra pass
    fast = make_scheduler(PROCEDURES["fast"].scheduler, pipe.scheduler.config)
    fast.set_timesteps(PROCEDURES["fast"].steps)
    assert fast.config.use_karras_sigmas and int(fast.timesteps[0]) == 999 and int(fast.timesteps[-1]) == 0
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("nope", pipe.scheduler.config)


def test_transparent_pixels_are_unknown_and_opaque_ones_exact(pipe):
    """RGBA photo: alpha < 255 is unknown (regenerated; a later photo may fill it); the opaque pixels are
    pasted exactly as the same photo without alpha, and the output keeps them bit for bit."""
    rgb = (np.random.RandomState(3).rand(64, 64, 3) * 255).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((64, 64, 1), 255, np.uint8)], -1)
    rgba[:, 40:, 3] = 0  # the right part transparent
    rgba[10, 10, 3] = 254  # not fully opaque: unknown too
    c_rgb, k_rgb = paste_inputs([rgb], [(0, 0, 90)], (H, W))
    c_a, k_a = paste_inputs([rgba], [(0, 0, 90)], (H, W))
    assert (k_a <= k_rgb).all() and k_a.sum() < k_rgb.sum()
    assert not k_a[0, 0, H // 2, W // 2 + 5:W // 2 + 16].any() and k_rgb[0, 0, H // 2, W // 2 + 5:W // 2 + 16].all()
    assert torch.equal(c_a[k_a.expand_as(c_a)], c_rgb[k_a.expand_as(c_rgb)])
    # a PIL RGBA image is the same input
    from PIL import Image

    assert torch.equal(paste_inputs([Image.fromarray(rgba, "RGBA")], [(0, 0, 90)], (H, W))[1], k_a)
    # a second photo fills what the first leaves transparent
    other = np.zeros((64, 64, 3), np.uint8)
    c2, k2 = paste_inputs([rgba, other], [(0, 0, 90), (0, 0, 90)], (H, W))
    assert torch.equal(k2, k_rgb) and torch.equal(c2[k_a.expand_as(c2)], c_a[k_a.expand_as(c_a)])
    out = run(pipe, images=[rgba], num_inference_steps=1)
    assert np.array_equal(out.input_mask, k_a[0, 0].numpy())
    pasted = torch.round((c_a[0] + 1) * 127.5).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(out.images[0][out.input_mask], pasted[out.input_mask])
