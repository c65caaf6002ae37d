"""Discontinuity Score (arXiv 2407.18207): a hand-computed 8x16 case, seamless ≈ 1, a seam ≫ 1,
invariance to horizontal rolls of a seamless panorama, stability across resolutions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from opama_tools.eval.metrics.ds import DS_C, discontinuity_score


def periodic_texture(seed: int, height: int = 256, sigma: float = 4.0) -> torch.Tensor:
    """``(1, 3, H, 2H)`` seamless (periodic) Gaussian random texture, std 0.12 around 0.5.

    White noise low-pass filtered in the Fourier domain (Gaussian of ``sigma`` px), so
    column ``W-1`` continues into column 0 exactly like any interior pair of columns.
    """
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(1, 3, height, 2 * height, generator=g, dtype=torch.float64)
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(2 * height, dtype=torch.float64)[None, :]
    s = torch.fft.ifft2(torch.fft.fft2(n) * torch.exp(-2 * (math.pi * sigma) ** 2 * (fx**2 + fy**2))).real
    return (s / s.std() * 0.12 + 0.5).clamp(0, 1)


def test_hand_computed_8x16():
    # R = G = B = v / 255 so grey = (0.2989 + 0.5870 + 0.1140) v = 0.9999 v (8-bit units).
    # Even rows: v = 10 j, odd rows: v = 5 j (j = column 0..15).
    # Strip columns W-3..2 = 13, 14, 15, 0, 1, 2:
    #   even rows: 130 140 150 0 10 20  -> central differences at strip 1..4: 20, -140, -140, 20
    #   odd rows:   65  70  75 0  5 10  -> 10, -70, -70, 10
    # Scharr / 16 mixes rows 3:10:3 (edge rows replicated):
    #   row 0 (even; above = itself, below odd): |â1| = (13*20 + 3*10) / 16 = 18.125, |â2| = 7 |â1|
    #   rows 2, 4, 6 (even, odd neighbours):     (10*20 + 6*10) / 16 = 16.25
    #   rows 1, 3, 5 (odd, even neighbours):     (10*10 + 6*20) / 16 = 13.75
    #   row 7 (odd; above even, below itself):   (3*20 + 13*10) / 16 = 11.875
    # and |â3| = |â2|, |â4| = |â1| by symmetry. DS = 1/(2L) Σ_y 2 |â2| / (|â1| + c) with L = H = 8.
    v = torch.zeros(8, 16, dtype=torch.float64)
    j = torch.arange(16, dtype=torch.float64)
    v[0::2] = 10 * j
    v[1::2] = 5 * j
    x = (v / 255).expand(1, 3, 8, 16)
    a1 = [18.125, 13.75, 16.25, 13.75, 16.25, 13.75, 16.25, 11.875]
    expected = sum(2 * 7 * 0.9999 * a / (0.9999 * a + DS_C) for a in a1) / (2 * 8)
    got = float(discontinuity_score(x, size=None)[0])
    assert got == pytest.approx(expected, rel=1e-12)
    assert got == pytest.approx(6.55611, abs=1e-5)  # that sum evaluated: (7 * 0.9999 a / (0.9999 a + 1)) averaged over rows


def test_seamless_is_about_one_and_a_seam_is_far_above():
    for seed in range(3):
        x = periodic_texture(seed)
        seamless = float(discontinuity_score(x)[0])
        assert 0.7 < seamless < 1.3, seamless
        # right half from another texture: the ±180° border no longer continues
        seam = torch.cat((x[..., :256], periodic_texture(seed + 10)[..., 256:]), dim=-1)
        assert float(discontinuity_score(seam)[0]) > 4 * seamless


def test_invariant_to_horizontal_roll_of_a_seamless_panorama():
    x = periodic_texture(1)
    base = float(discontinuity_score(x)[0])
    vals = [float(discontinuity_score(torch.roll(x, s, dims=-1))[0]) for s in (1, 37, 128, 300, 511)]
    # a roll moves the border to other columns of the same statistics: same level, never a seam
    assert all(abs(v - base) < 0.15 for v in vals), (base, vals)
    # a roll by the full width is the identity; batch results equal single results
    assert float(discontinuity_score(torch.roll(x, 512, dims=-1))[0]) == base
    both = discontinuity_score(torch.cat((x, torch.roll(x, 37, dims=-1))))
    assert float(both[0]) == base and float(both[1]) == pytest.approx(vals[1], rel=1e-12)


def test_resolution_stable():
    hi = periodic_texture(2, height=512, sigma=8.0)
    seam_hi = torch.cat((hi[..., :512], periodic_texture(7, height=512, sigma=8.0)[..., 512:]), dim=-1)
    for img in (hi, seam_hi):
        ref = float(discontinuity_score(img)[0])
        for hw in ((384, 768), (256, 512)):
            low = F.interpolate(img, size=hw, mode="bilinear", align_corners=False, antialias=True)
            assert float(discontinuity_score(low)[0]) == pytest.approx(ref, rel=0.1), hw


def test_flat_image_and_uint8_quantisation():
    flat = torch.full((1, 3, 64, 128), 0.4, dtype=torch.float64)
    assert float(discontinuity_score(flat)[0]) == 0.0  # no gradient anywhere: every ratio 0 / c
    x = periodic_texture(0)
    q = (x * 255).round() / 255
    assert float(discontinuity_score(q)[0]) == pytest.approx(float(discontinuity_score(x)[0]), abs=0.05)
