"""VCR and GMA: shapes, the reference structure's dependencies, coordinates, the ring-scan option."""

import math

import pytest
import torch

from opama_model.gma import GMA, VIEW_INDEX, ImageNorm, build_gma_input, gma_coordinates
from opama_model.mamba import Mamba
from opama_model.spherical import equi_to_cube, equi_to_pers, equirect_lonlat
from opama_model.vcr import VCR


def _vcr(**kw):
    torch.manual_seed(0)
    return VCR(16, 24, 16, depth=2, d_state=4, **kw)


def test_vcr_shapes_and_initial_gate():
    m = _vcr()
    img, txt = torch.randn(2, 7, 24), torch.randn(2, 77, 16)
    out = m(img, txt)
    assert out.shape == (2, 84, 16) and torch.isfinite(out).all()
    # reference CusMamba: no final norm, residual + hidden goes straight to proj and gate; the
    # gate's weight starts at zero: a = 0.5, out = 0.5 * proj(h) + 0.5 * input (before the type
    # embeddings)
    assert not any(isinstance(mod, torch.nn.LayerNorm) for name, mod in m.named_modules() if "layers" not in name)
    x = torch.cat((m.image_proj(img), txt), dim=1)
    hidden, residual = x + torch.cat((m.vision_embedding, m.text_embedding)), None
    for blk in m.layers:
        hidden, residual = blk(hidden, residual)
    h = hidden + residual
    torch.testing.assert_close(out, 0.5 * m.proj(h) + 0.5 * x, rtol=0, atol=1e-6)
    # the gate is trainable: it gets a gradient
    out.square().mean().backward()
    assert m.gate.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        m(torch.randn(2, 6, 24), txt)


def test_vcr_type_embeddings_like_nn_embedding():
    """The reference's ``vision_embedding`` / ``text_embedding`` are ``nn.Embedding``: N(0, 1)."""
    torch.manual_seed(0)
    m = VCR(256, 256, 256, depth=0)
    t = torch.cat((m.vision_embedding, m.text_embedding)).detach()
    assert t.shape == (84, 256)
    assert abs(float(t.mean())) < 0.02 and abs(float(t.std()) - 1.0) < 0.02
    assert float(m.gate.weight.detach().abs().sum()) == 0.0 and m.gate.bias is None and m.proj.bias is not None


def test_vcr_is_one_directional():
    """One-directional Mamba stack: token i depends on tokens <= i only (visual tokens come first,
    so every text token sees all 7 images, and the images do not see the text)."""
    m = _vcr()
    img, txt = torch.randn(1, 7, 24), torch.randn(1, 77, 16)
    a = m(img, txt)
    txt2 = txt.clone()
    txt2[:, 40] += 1.0
    b = m(img, txt2)
    assert torch.allclose(a[:, : 7 + 40], b[:, : 7 + 40], atol=1e-6)
    assert (a[:, 7 + 40:] - b[:, 7 + 40:]).abs().amax() > 1e-3
    img2 = img.clone()
    img2[:, 1] += 1.0  # first cube face
    c = m(img2, txt)
    assert torch.allclose(a[:, :1], c[:, :1], atol=1e-6)
    assert (a[:, 7:] - c[:, 7:]).abs().amax(dim=-1).min() > 0  # every text token sees the faces


def _gma(**kw):
    torch.manual_seed(0)
    return GMA((8, 16, 16), (4, 8), local_depth=1, global_depth=1, d_state=4, **kw)


def test_gma_shapes_match_unet_down_blocks():
    m = _gma()
    x = torch.randn(2, 7, 5, 32, 32)
    out = m(x)
    assert [tuple(o.shape) for o in out] == [(2, 8, 8, 8), (2, 16, 4, 4), (2, 16, 2, 2)]
    assert all(torch.isfinite(o).all() for o in out)
    # the view's slice (last image) of every stage is the output
    full = m.forward_all(x)
    assert all(torch.equal(o, f[:, VIEW_INDEX]) for o, f in zip(out, full)) and VIEW_INDEX == 6
    # the reference SD-2 layout: 512 px, stem x8 to 320 x 64 x 64, stages 320/640/1280/1280; per
    # stage 2 pairs (4 Blocks), 2 cross-image Blocks in stages 2-4; a 1x1 conv only where the
    # channel count changes; avg-pool before stages 2-4
    with torch.device("meta"):
        ref = GMA()
    assert ref.downscale_factor == 8 and [s.layers[0].mixer.d_model for s in ref.stages] == [320, 640, 1280, 1280]
    assert [len(s.layers) for s in ref.stages] == [4, 4, 4, 4]
    assert [len(s.cross) for s in ref.stages] == [0, 2, 2, 2]
    assert [s.in_conv is not None for s in ref.stages] == [False, True, True, False]
    assert [s.pool is not None for s in ref.stages] == [False, True, True, True]
    assert all(s.pool.kernel_size == 2 and s.pool.stride == 2 and s.pool.ceil_mode for s in ref.stages[1:])
    assert tuple(ref.image_embed.shape) == (7, 320)
    # each direction is its own Block with its own LayerNorm
    norms = [blk.norm for s in ref.stages for blk in (*s.layers, *s.cross)]
    assert len({id(n) for n in norms}) == len(norms) == 4 * 4 + 3 * 2


def test_image_norm_is_the_reference_stem_norm():
    """Per sample over all of C x H x W: mean, *unbiased* std, eps added to the std; per-channel
    affine with gamma ~ U[0, 1), beta = 0."""
    torch.manual_seed(0)
    norm = ImageNorm(64, eps=1e-5)
    g = norm.gamma.detach()
    assert g.min() >= 0 and g.max() < 1 and 0.3 < float(g.mean()) < 0.7 and torch.equal(norm.beta, torch.zeros(64))
    x = torch.randn(3, 64, 5, 7, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.01])[:, None, None, None] + 2
    norm = norm.double()
    y = norm(x)
    for i in range(3):
        v = x[i].flatten()
        mu = v.mean()
        sd = torch.sqrt(((v - mu) ** 2).sum() / (v.numel() - 1))
        want = (x[i] - mu) / (sd + 1e-5) * norm.gamma[:, None, None] + norm.beta[:, None, None]
        torch.testing.assert_close(y[i], want, rtol=1e-12, atol=1e-12)
    # not a per-pixel channel LayerNorm: a per-pixel shift of all channels is not removed
    shift = torch.zeros_like(x)
    shift[:, :, 0, 0] = 5.0
    assert (norm(x + shift) - y)[:, :, 1:, 1:].abs().amax() > 1e-3


def _zero_mixers(m):
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, Mamba):
                mod.out_proj.weight.zero_()  # Mamba(...) == 0 (out_proj has no bias)


@pytest.mark.parametrize("residual,factors", [("reference", (4, 9)), ("standard", (1, 1))])
def test_gma_residual_stream_amplification(residual, factors):
    """Reference (Vision-Mamba style): the residual outputs of the parallel branches are summed after
    every pair, so with zeroed mixers a stage returns 4x its input (2 pairs), 9x with the
    cross-image blocks (stages 2-4). ``residual="standard"`` (beyond the reference): identity."""
    torch.manual_seed(0)
    m = GMA((8, 16, 16), (4, 8), local_depth=2, global_depth=2, d_state=4, residual=residual).double()
    _zero_mixers(m)
    x = torch.randn(1, 7, 5, 32, 32, dtype=torch.float64)
    feats = m.forward_all(x)
    stem = m.stem(x.flatten(0, 1)).unflatten(0, (1, 7)) + m.image_embed[None, :, :, None, None]
    torch.testing.assert_close(feats[0], factors[0] * stem, rtol=1e-12, atol=1e-12)
    for k in (1, 2):
        st = m.stages[k]
        inp = st.pool(feats[k - 1].flatten(0, 1))
        if st.in_conv is not None:
            inp = st.in_conv(inp)
        torch.testing.assert_close(feats[k], factors[1] * inp.unflatten(0, (1, 7)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="residual"):
        GMA((8, 16), (8,), residual="other")
    with pytest.raises(ValueError, match="global_depth"):
        GMA((8, 16), (8,), local_depth=1, global_depth=2)


def test_gma_stage_branches_run_in_parallel_on_the_same_input():
    """Hooks record every Block's inputs and outputs in a global stage: the forward, flipped and
    cross-image Blocks of a pair see the same (hidden, residual) (flipped / regrouped over the 7
    images per position, view last); the next pair's input is the sum of their outputs."""
    torch.manual_seed(0)
    m = GMA((8, 16), (4, 8), local_depth=2, global_depth=2, d_state=4).double()
    st = m.stages[1]
    seen = {}

    def hook(name):
        def f(mod, args, out):
            seen[name] = (args[0].detach(), None if len(args) < 2 or args[1] is None else args[1].detach(),
                          out[0].detach(), out[1].detach())
        return f

    for i, blk in enumerate(st.layers):
        blk.register_forward_hook(hook(f"l{i}"))
    for i, blk in enumerate(st.cross):
        blk.register_forward_hook(hook(f"c{i}"))
    x = torch.randn(2, 7, 5, 16, 16, dtype=torch.float64)
    feats = m.forward_all(x)
    b, n, c, h, w = feats[1].shape
    tok = st.in_conv(st.pool(feats[0].flatten(0, 1))).flatten(2).transpose(1, 2)  # (b n, h w, c)

    def to_cross(t):
        return t.reshape(b, n, h * w, c).permute(0, 2, 1, 3).reshape(b * h * w, n, c)

    def from_cross(t):
        return t.reshape(b, h * w, n, c).permute(0, 2, 1, 3).reshape(b * n, h * w, c)

    hid, res = tok, None
    for i in range(2):
        f, bw, cr = seen[f"l{2 * i}"], seen[f"l{2 * i + 1}"], seen[f"c{i}"]
        assert torch.equal(f[0], hid) and torch.equal(bw[0], hid.flip(1)) and torch.equal(cr[0], to_cross(hid))
        if res is None:
            assert f[1] is None and bw[1] is None and cr[1] is None
        else:
            assert torch.equal(f[1], res) and torch.equal(bw[1], res.flip(1)) and torch.equal(cr[1], to_cross(res))
        hid = f[2] + bw[2].flip(1) + from_cross(cr[2])
        res = f[3] + bw[3].flip(1) + from_cross(cr[3])
    want = (res + hid).reshape(b, n, h, w, c).permute(0, 1, 4, 2, 3)
    torch.testing.assert_close(feats[1], want, rtol=1e-12, atol=1e-12)


def _reach(m, x, stage, out_img=VIEW_INDEX):
    """Per input image, ``sum |d out[stage][:, out_img] / d x[:, src]|``: which images reach ``out_img``."""
    x = x.clone().requires_grad_(True)
    m.forward_all(x)[stage][:, out_img].sum().backward()
    return x.grad.abs().sum(dim=(0, 2, 3, 4)).tolist()


def test_gma_global_step_reaches_the_view():
    """Stage 0 has no global step: the view's features ignore the faces there; from stage 1 on
    the cross-image Mamba carries every face into the view (the global state)."""
    m = _gma()
    x = torch.randn(1, 7, 5, 32, 32)
    g0 = _reach(m, x, 0)
    assert g0[:6] == [0.0] * 6 and g0[VIEW_INDEX] > 0
    assert all(v > 0 for v in _reach(m, x, 1))
    # the view is last in the cross-image sequence: a face sees only the images before it
    g2 = _reach(m, x, 2, out_img=1)
    assert g2[0] > 0 and g2[1] > 0 and g2[2:] == [0.0] * 5


def test_gma_ring_scan_connects_side_faces():
    """Beyond the reference: with ring_scan the side faces F, R, B, L form one circular sequence per
    row, so in stage 0 face F depends on face L (its left neighbour) and on B, across the seam."""
    x = torch.randn(1, 7, 5, 32, 32)
    plain = _reach(_gma(), x, 0, out_img=0)
    assert plain[0] > 0 and plain[1:] == [0.0] * 6
    ring = _reach(_gma(ring_scan=True), x, 0, out_img=0)
    assert all(v > 0 for v in ring[:4])  # F, R, B, L
    assert ring[4:] == [0.0] * 3  # U, D and the view are not on the horizon ring


def test_gma_coordinates_match_the_projection():
    """The lat/lon channels are what equi_to_cube / equi_to_pers sample: project an equirect whose
    pixels hold their own (lat, sin lon, cos lon) and compare."""
    h = 256
    lon, lat = equirect_lonlat(h, 2 * h)
    equi = torch.stack((lat, torch.sin(lon), torch.cos(lon)))[None]
    s = 32
    ll = gma_coordinates([0.0, 30.0], [0.0, -25.0], [90.0, 75.0], s)
    assert ll.shape == (2, 7, 2, s, s)
    faces = equi_to_cube(equi, s)[0]  # (6, 3, s, s)
    views = equi_to_pers(equi, [0.0, 30.0], [0.0, -25.0], [90.0, 75.0], (s, s))[0]
    for got, ref in ((ll[0, :6], faces), (ll[:, 6], views)):
        assert (got[:, 0] - ref[:, 0]).abs().max() < 0.02  # ~ one equirect pixel (pi/256)
        assert (torch.sin(got[:, 1]) - ref[:, 1]).abs().max() < 0.02
        assert (torch.cos(got[:, 1]) - ref[:, 2]).abs().max() < 0.02
    assert abs(ll[0, 1, 1, s // 2, s // 2].item() - math.pi / 2) < 0.1  # face R looks at lon 90 deg
    imgs = build_gma_input(torch.zeros(2, 6, 3, s, s), torch.ones(2, 3, s, s), [0.0, 30.0], [0.0, -25.0], 90.0)
    assert imgs.shape == (2, 7, 5, s, s) and torch.equal(imgs[:, 6, :3], torch.ones(2, 3, s, s))
