"""VCR and GMA: shapes, the reference structure's dependencies, coordinates, the ring-scan option."""

import math

import pytest
import torch

from opama_model.gma import GMA, VIEW_INDEX, build_gma_input, gma_coordinates
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
    # g's weight starts at zero: a = 0.5, out = 0.5 * Linear(h) + 0.5 * input
    x = torch.cat((m.image_proj(img), txt), dim=1)
    hidden, residual = x + torch.cat((m.image_type, m.text_type)), None
    for blk in m.blocks:
        hidden, residual = blk(hidden, residual)
    h = m.norm_f(hidden + residual)
    assert torch.allclose(out, 0.5 * m.out_proj(h) + 0.5 * x, atol=1e-6)
    # the gate is trainable: it gets a gradient
    out.square().mean().backward()
    assert m.gate.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        m(torch.randn(2, 6, 24), txt)


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
    # the reference SD-2 layout: 512 px, stem x8 to 320 x 64 x 64, stages 320/640/1280/1280
    with torch.device("meta"):
        ref = GMA()
    assert ref.downscale_factor == 8 and [s.local_layers[0].fwd.d_model for s in ref.stages] == [320, 640, 1280, 1280]
    assert [len(s.global_layers) for s in ref.stages] == [0, 2, 2, 2]
    assert [len(s.local_layers) for s in ref.stages] == [2, 2, 2, 2]


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
