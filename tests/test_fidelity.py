"""Fidelity to the OPa-Ma reference code: the view convention derived from the reference's own
camera maths (not from opama's table), and the sd2 conditioner's parameter counts."""

import math

import numpy as np
import pytest
import torch

from opama_model.conditioner import OPaMaConditioner
from opama_model.presets import conditioner_kwargs
from opama_model.spherical import equi_to_pers, equirect_lonlat
from opama_model.views import AOG21, AOG21_TRAIN_STEPS

# ``gen_coord_list`` of the reference's dataset.py (PengleiGao/OPaMa, same in AOG-NET-360), as published
PUBLISHED = [
    (0, -25), (0, 25), (-45, 0), (45, 0), (-90, 0), (-90, -25), (-90, 25), (90, 0), (90, -25), (90, 25),
    (-105, 0), (105, 0), (180, 0), (180, 25), (180, -25), (0, -45), (90, -45), (-90, -45), (0, 45), (-90, 45),
    (90, 45),
]


def reference_sample_position(yaw_deg, pitch_deg, u, v, fov_deg=90.0, equi_hw=(1800, 3600)):
    """Where the reference's ``get_nfov(image, yaw, pitch)`` samples the panorama for the ray through
    tangent-plane point ``(u, v)`` of the view (``u`` along the view's pixel columns, ``v`` along its
    rows; ``(0, 0)`` = the principal point), as continuous ``(row, column)`` of the equirect image.

    This is the camera maths of the equilib fork the reference installs (zhuqiangLu/equilib,
    ``equi2pers`` with ``z_down=False`` as ``get_nfov`` calls it), restated:
    a pixel ``(x, y)`` becomes ``K^-1 (x, y, 1)`` with ``K = [[f, 0, w/2], [0, f, h/2], [0, 0, 1]]``;
    the global-from-camera permutation ``R_XY @ R_YZ`` sends ``(a, b, c)`` to ``(c, a, b)``; the
    rotation is ``R_z(yaw') @ R_y(pitch') @ R_x(roll)`` where ``z_down=False`` negates both angles;
    then ``phi = asin(z / |M|)``, ``theta = atan2(y, x)``, ``row = (phi - pi/2) H / pi + 0.5`` and
    ``column = (theta - pi) W / (2 pi) + 0.5``, both modulo the image size.
    """
    h_eq, w_eq = equi_hw
    p, q = -math.radians(pitch_deg), -math.radians(yaw_deg)  # z_down=False flips pitch and yaw
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rz = np.array([[math.cos(q), -math.sin(q), 0], [math.sin(q), math.cos(q), 0], [0, 0, 1]])
    g2c = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    w = h = 512
    f = w / (2 * math.tan(math.radians(fov_deg) / 2))
    k = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    pix = np.array([w / 2 + u * f, h / 2 + v * f, 1.0])  # the pixel whose ray has tangent (u, v)
    m = rz @ ry @ g2c @ np.linalg.inv(k) @ pix
    phi = math.asin(m[2] / np.linalg.norm(m))
    theta = math.atan2(m[1], m[0])
    row = ((phi - math.pi / 2) * h_eq / math.pi + 0.5) % h_eq
    col = ((theta - math.pi) * w_eq / (2 * math.pi) + 0.5) % w_eq
    return row, col


def _to_latlon(row, col, equi_hw=(1800, 3600)):
    """Equirect image position -> (latitude, longitude) in degrees, row 0 = top of the image (the
    sky: the reference reads panoramas with PIL), column 0 = the left edge (-180 deg)."""
    h, w = equi_hw
    return 90.0 - row / h * 180.0, col / w * 360.0 - 180.0


def _ang(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_reference_camera_maths_positive_pitch_looks_down_positive_yaw_left():
    """The reference's 2nd view, published (0, 25), looks 25 deg *down*; (45, 0) looks at
    longitude -45 deg (left of the panorama centre)."""
    lat, lon = _to_latlon(*reference_sample_position(0, 25, 0.0, 0.0))
    assert abs(lat + 25.0) < 0.1 and _ang(lon, 0.0) < 0.1
    lat, lon = _to_latlon(*reference_sample_position(45, 0, 0.0, 0.0))
    assert abs(lat) < 0.1 and _ang(lon, -45.0) < 0.1
    # the view image is not mirrored: its right-hand columns lie further right (east), its lower
    # rows further down
    _, lon_r = _to_latlon(*reference_sample_position(45, 0, 0.5, 0.0))
    lat_d, _ = _to_latlon(*reference_sample_position(45, 0, 0.0, 0.5))
    assert lon_r > -45.0 + 20 and lat_d < -20
    # the last three views of the order look 45 deg down: the tripod ("the stand"), never a target
    lats = [_to_latlon(*reference_sample_position(y, p, 0.0, 0.0))[0] for y, p in PUBLISHED]
    assert all(abs(x + 45.0) < 0.1 for x in lats[-3:]) and len(PUBLISHED) - 3 == AOG21_TRAIN_STEPS
    assert all(x > 0 for x in lats[:1]) and lats[1] < 0  # it fills upward first


def test_aog21_is_the_reference_order_in_our_convention():
    """Each view of views.AOG21 looks where the reference's view of the same index looks."""
    assert len(AOG21) == len(PUBLISHED) == 21
    for k, ((yaw, pitch), pub) in enumerate(zip(AOG21, PUBLISHED)):
        lat, lon = _to_latlon(*reference_sample_position(*pub, 0.0, 0.0))
        assert abs(pitch - lat) < 0.1 and _ang(yaw, lon) < 0.1, (k, (yaw, pitch), pub, (lat, lon))
        assert (yaw, pitch) == (-pub[0] if abs(pub[0]) != 180 else 180, -pub[1])  # (-yaw, -pitch)


@pytest.mark.parametrize("k", [1, 3, 5, 13, 16, 20])
def test_our_cut_matches_the_reference_camera_pixel_by_pixel(k):
    """Cut view k with opama's equi_to_pers from a panorama whose pixels hold their own latitude and
    longitude; every probed pixel sees where the reference's camera maths says it should."""
    h = 512
    lon, lat = equirect_lonlat(h, 2 * h, dtype=torch.float64)
    equi = torch.stack((lat, torch.sin(lon), torch.cos(lon)))[None]
    s = 33  # odd: pixel 16 is the centre; fov spans the centres of the edge pixels (tangent +-1)
    yaw, pitch = AOG21[k]
    view = equi_to_pers(equi, yaw, pitch, 90.0, (s, s))[0, 0]
    for i in (0, 8, 16, 24, 32):
        for j in (0, 8, 16, 24, 32):
            u, v = 2 * j / (s - 1) - 1, 2 * i / (s - 1) - 1
            want_lat, want_lon = _to_latlon(*reference_sample_position(*PUBLISHED[k], u, v))
            if abs(want_lat) > 89.5:  # the exact pole: the reference's row modulo H wraps -90 to +90
                continue
            got_lat = math.degrees(float(view[0, i, j]))
            got_lon = math.degrees(math.atan2(float(view[1, i, j]), float(view[2, i, j])))
            assert abs(got_lat - want_lat) < 0.5, (k, i, j, got_lat, want_lat)
            if abs(want_lat) < 85:  # longitude is undefined at the poles
                assert _ang(got_lon, want_lon) < 0.5 / max(math.cos(math.radians(want_lat)), 0.1), (k, i, j)


def test_sd2_conditioner_parameter_counts_equal_the_reference():
    """Part by part, on the meta device (no memory): VCR stack + proj + gate 54,396,928; type
    embeddings 86,016; GMA 144,702,560; null table 7,168 (the 7 of the reference's 77 x 1024 rows
    that it reads)."""
    with torch.device("meta"):
        m = OPaMaConditioner(**conditioner_kwargs("sd2", "opama"))
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    v = m.vcr
    assert isinstance(v.image_proj, torch.nn.Identity) and isinstance(v.text_proj, torch.nn.Identity)
    assert n(v.layers) + n(v.proj) + n(v.gate) == 54_396_928
    assert v.vision_embedding.numel() + v.text_embedding.numel() == 86_016
    assert n(m.gma) == 144_702_560
    assert m.null_tokens.numel() == 7_168
    assert n(m) == 54_396_928 + 86_016 + 144_702_560 + 7_168
    # the options beyond the reference change no parameter count except the ring layers
    with torch.device("meta"):
        std = OPaMaConditioner(**conditioner_kwargs("sd2", "opama"), gma_residual="standard")
    assert n(std) == n(m)


def test_sd2_aog_parameter_counts_equal_the_reference_less_its_unused_tensors():
    """AOG-Net's reference (zhuqiangLu/AOG-NET-360) allocates, at SD-2 width 1024: tgt 5 x 1024;
    adain FF(2048, 512) x 2 + Linear(2048, 1024) + FF(1024, 512) x 2; 2 type rows; pos_embed
    200 x 1024; projector = CusTransformer(1024, depth 8): per layer 3 LayerNorms, self- and
    cross-attention (4 bias-free 1024^2 linears each), FF(1024, 1024); the diffusers T2IAdapter;
    adapter_transformer = CusTransformer(1280, depth 8); uncond_embed 77 x 1024. opama leaves out
    what the reference never reads: the projector's cross-attention and the LayerNorm after it (it
    is never given a memory),
    pos_embed rows 88-199 and uncond_embed rows 5-76."""
    from diffusers import T2IAdapter

    from opama_model.conditioner import AOGConditioner

    d = 1024

    def cus_transformer(dim, depth, cross=True):
        return depth * ((3 if cross else 2) * 2 * dim + (2 if cross else 1) * 4 * dim * dim + 2 * dim * dim)

    with torch.device("meta"):
        adapter = sum(p.numel() for p in T2IAdapter(in_channels=5).parameters())
        m = AOGConditioner(**conditioner_kwargs("sd2", "aog"))
    reference = (5 * d + 2 * (2 * 2 * d * 512) + (2 * d * d + d) + 2 * (2 * d * 512) + 2 * d + 200 * d
                 + cus_transformer(d, 8) + adapter + cus_transformer(1280, 8) + 77 * d)
    unused = 8 * (4 * d * d + 2 * d) + (200 - 88) * d + (77 - 5) * d  # cross-attention + its LayerNorm
    assert sum(p.numel() for p in m.parameters()) == reference - unused
    assert sum(p.numel() for p in m.global_branch.transformer.parameters()) == cus_transformer(d, 8, cross=False)
    assert sum(p.numel() for p in m.local_branch.fusion.parameters()) == cus_transformer(1280, 8)
