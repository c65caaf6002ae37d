"""Reuses of the ``fast`` procedure against recomputing (tiny preset): face reuse (CLIP embeddings
and GMA per-image features), batched_cfg="auto", residuals cast once per view.

Tolerance 1e-5: the reused path computes the same functions on smaller batches (1 + changed
faces instead of 7), so only float summation order can differ (~1e-7 relative in fp32); a wrong
face, a stale cache entry or a wrong image embedding moves outputs by ~1e-2 or more.
"""

import pytest
import torch

from opama_model.canvas import cut_view
from opama_model.pipeline import PROCEDURES, FaceCache, resolve_batched_cfg

from test_pipeline import photo, pipe  # noqa: F401 (pipe: the tiny pipeline fixture)

H, W = 64, 128
SHORT = ((0.0, 25.0), (45.0, 0.0), (90.0, 0.0))
TOL = 1e-5


def canvas_with_views(pipe, views):
    """A canvas with a photo at (0, 0) and ``views`` filled with random pixels, and its known mask."""
    from opama_model.pipeline import paste_inputs
    from opama_model.spherical import pers_to_equi

    canvas, known = paste_inputs([photo()], [(0, 0, 90)], (H, W))
    for k, (yaw, pitch) in enumerate(views):
        pasted, cover = pers_to_equi(photo(10 + k).unsqueeze(0).unsqueeze(0), yaw, pitch, 90.0, (H, W), feather=0.0)
        new = (cover > 0) & ~known
        canvas = torch.where(new, pasted, canvas)
        known = known | new
    return canvas, known


@torch.inference_mode()
def test_face_cache_equals_recomputing_view_by_view(pipe):
    """Along a sequence of views (some faces change, some do not) the cached conditioning equals
    the conditioner's own forward on all 7 images, and faces are really reused."""
    text = pipe._encode_text("a room")
    cache = FaceCache()
    fills = [(), ((0.0, 25.0),), ((0.0, 25.0),), ((0.0, 25.0), (90.0, 0.0)), ((0.0, 25.0), (90.0, 0.0), (180, -60))]
    views = [(0.0, 25.0), (45.0, 0.0), (45.0, 0.0), (90.0, 0.0), (-90.0, 0.0)]
    for fill, (yaw, pitch) in zip(fills, views):
        canvas, known = canvas_with_views(pipe, fill)
        inp = cut_view(canvas, known, yaw, pitch, 90.0, pipe.view_size)
        tok_ref, res_ref = pipe._condition(inp, text)
        tok, res = pipe._condition(inp, text, cache)
        assert tok.shape == tok_ref.shape and len(res) == len(res_ref)
        assert (tok - tok_ref).abs().max() <= TOL
        for a, b in zip(res, res_ref):
            assert a.shape == b.shape and (a - b).abs().max() <= TOL * max(1.0, float(b.abs().max()))
    # third view repeats the second's canvas: all 6 faces reused (CLIP and GMA) at least there
    assert cache.reused >= 12


@torch.inference_mode()
def test_face_cache_notices_a_changed_face(pipe):
    """A face that changed is recomputed: a stale cache entry would differ by far more than TOL."""
    text = pipe._encode_text("a room")
    cache = FaceCache()
    canvas, known = canvas_with_views(pipe, ())
    inp = cut_view(canvas, known, 0.0, 25.0, 90.0, pipe.view_size)
    pipe._condition(inp, text, cache)
    canvas2, known2 = canvas_with_views(pipe, ((180.0, 0.0),))  # fills the back face
    inp2 = cut_view(canvas2, known2, 0.0, 25.0, 90.0, pipe.view_size)
    assert not torch.equal(inp.faces[:, 2], inp2.faces[:, 2])
    tok_ref, res_ref = pipe._condition(inp2, text)
    tok, res = pipe._condition(inp2, text, cache)
    assert (tok - tok_ref).abs().max() <= TOL
    for a, b in zip(res, res_ref):
        assert (a - b).abs().max() <= TOL * max(1.0, float(b.abs().max()))
    stale_tok, _ = pipe._condition(inp, text)
    assert (stale_tok - tok_ref).abs().max() > 100 * TOL  # the check above could fail


@torch.inference_mode()
def test_gma_cross_stages_reuse_faces_before_the_first_changed_one(pipe):
    """Only the down face (index 5) changes: the cross-image stages keep faces 0-4 (causal scan
    across F R B L U D, view) and the result still equals the full GMA."""
    gma = pipe.conditioner.gma
    assert any(len(st.cross) for st in gma.stages)  # the tiny GMA has a cross-image stage
    canvas, known = canvas_with_views(pipe, ())
    a = cut_view(canvas, known, 0.0, 25.0, 90.0, pipe.view_size).gma_images.float()
    b = a.clone()
    b[:, 5, :3] = photo(7)  # new pixels on the down face only
    changed = [5]
    cache = FaceCache()
    cache.gma_residuals(gma, a)
    calls = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
             for st in gma.stages if len(st.cross) for blk in st.layers[:1]]
    try:
        got = cache.gma_residuals(gma, b)
    finally:
        for h in hooks:
            h.remove()
    want = gma(b)
    for x, y in zip(got, want):
        assert (x - y).abs().max() <= TOL * max(1.0, float(y.abs().max()))
    stale = gma(a)  # the check above could fail: the change reaches the view's features
    assert max(float((x - y).abs().max()) for x, y in zip(stale, want)) > 100 * TOL
    # per-image blocks of the cross stages ran on the images from the first changed one only
    assert calls and all(c == 7 - changed[0] for c in calls), calls


def test_fast_panorama_with_and_without_reuse(pipe):
    """Whole fast panoramas: face reuse on vs off differ by <= 1e-5 and reuse happened."""
    args = dict(images=[photo()], prompt="a room", height=H, width=W, num_inference_steps=2, schedule=SHORT,
                output_type="pt", procedure="fast")
    on = pipe(**args)
    off = pipe(**args, reuse_faces=False)
    assert on.info["reuse_faces"] and not off.info["reuse_faces"]
    assert on.info["faces_reused"] > 0 and off.info["faces_reused"] == 0
    # outputs are quantised to 8-bit levels: a difference <= 1e-5 before rounding may flip a level
    # at a rounding boundary, so compare levels with one level of slack and nearly all equal
    d = (on.images - off.images).abs()
    assert float(d.max()) <= 1 / 127.5 + 1e-6
    assert float((d > 0).float().mean()) < 1e-3


def test_reference_and_aog_recompute_every_view():
    assert not PROCEDURES["reference"].reuse_faces and not PROCEDURES["aog"].reuse_faces
    assert PROCEDURES["fast"].reuse_faces and PROCEDURES["fast"].batched_cfg == "auto"


def test_batched_cfg_auto_resolves_per_device(pipe):
    assert resolve_batched_cfg("auto", "cpu") is False
    assert resolve_batched_cfg("auto", torch.device("cuda", 0)) is True
    assert resolve_batched_cfg(True, "cpu") is True and resolve_batched_cfg(False, "cuda") is False
    with pytest.raises(ValueError, match="batched_cfg"):
        resolve_batched_cfg("yes", "cpu")
    out = pipe(images=[photo()], prompt="a room", height=H, width=W, num_inference_steps=2,
               schedule=((0.0, 25.0),), output_type="pt", procedure="fast")
    assert out.info["batched_cfg"] is False  # CPU
    assert out.info["unet_passes"] == out.info["unet_passes_expected"]
    assert out.info["unet_rows"] == out.info["unet_rows_expected"]
