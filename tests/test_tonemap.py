import math

import numpy as np
import pytest

from opama_tools.data import tonemap as tm


def srgb(v: float) -> float:  # IEC 61966-2-1, written out independently of the module
    return 12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def test_srgb_oetf_known_values():
    x = np.array([0.0, 0.001, 0.0031308, 0.18, 0.5, 1.0, 2.0], np.float32)
    out = tm.srgb_oetf(x)
    np.testing.assert_allclose(out, [0.0, 0.01292, 0.040449936, 0.46135613, 0.7353569830524495, 1.0, 1.0], atol=2e-6)


def test_percentile_known_answer():
    # x^(1/2.4) = [0, 1, 2, 3, 4]: non-zero median (2 + 3) / 2 = 2.5 -> alpha = 0.5 / 2.5 = 0.2
    x = np.array([0.0, 1.0, 2**2.4, 3**2.4, 4**2.4], np.float32)
    alpha, med = tm.percentile_alpha(x)
    assert med == pytest.approx(2.5, rel=1e-6) and alpha == pytest.approx(0.2, rel=1e-6)
    np.testing.assert_allclose(tm.percentile(x), [0.0, 0.2, 0.4, 0.6, 0.8], atol=1e-6)
    # odd count of non-zero values, and the upper clip: [1, 2, 3, 4, 100] -> median 3 -> alpha 1/6
    y = np.array([[0.0, 1.0, 2**2.4], [3**2.4, 4**2.4, 100**2.4]], np.float32)
    np.testing.assert_allclose(tm.percentile(y), [[0, 1 / 6, 2 / 6], [3 / 6, 4 / 6, 1.0]], atol=1e-6)
    assert y[1, 2] == np.float32(100**2.4)  # pure: input untouched
    # gamma / target parameters: gamma 2 on [1, 4, 9] -> sqrt [1, 2, 3], median 2, target 0.4 -> alpha 0.2
    np.testing.assert_allclose(tm.percentile(np.array([1.0, 4.0, 9.0], np.float32), gamma=2, target=0.4),
                               [0.2, 0.4, 0.6], atol=1e-6)


def test_percentile_all_zero_is_black():
    out, params = tm.tonemap(np.zeros((2, 4, 3), np.float32))
    assert not out.any() and params["median"] == 0.0


def np_reference(x):
    """AOG-Net's operator written the plain way (np.percentile on the masked gamma image)."""
    xg = x ** (1 / 2.4)
    alpha = 0.5 / (np.percentile(xg[xg > 0], 50) + 1e-10)
    return np.clip(alpha * xg, 0, 1)


@pytest.mark.parametrize("n_zero", [0, 1, 777])
def test_percentile_matches_np_percentile(n_zero):
    rng = np.random.default_rng(n_zero)
    x = (rng.lognormal(0, 2, size=(300, 600, 3))).astype(np.float32)  # 540k values: sampled-bracket path
    x.reshape(-1)[rng.choice(x.size, n_zero, replace=False)] = 0
    _, med = tm.percentile_alpha(x)
    xg = x ** (1 / 2.4)
    assert med == pytest.approx(float(np.percentile(xg[xg > 0], 50)), rel=1e-6)
    np.testing.assert_allclose(tm.percentile(x), np_reference(x), atol=2e-6)


def test_select_kth_is_exact():
    rng = np.random.default_rng(5)
    for vals in (rng.random(300_001).astype(np.float32), rng.integers(0, 3, 400_000).astype(np.float32),
                 np.sort(rng.random(280_000)).astype(np.float32)[::-1].copy()):
        srt = np.sort(vals)
        ks = [0, 1, vals.size // 3, vals.size // 2, vals.size - 1]
        assert tm.select_kth(vals, ks) == [float(srt[k]) for k in ks]
        # a tiny sample makes the bracket miss more often: the count check must still make it exact
        for seed in range(5):
            assert tm.select_kth(vals, ks[2:4], sample=8, seed=seed) == [float(srt[k]) for k in ks[2:4]]
    with pytest.raises(IndexError):
        tm.select_kth(np.ones(4, np.float32), [4])


@pytest.mark.parametrize("q", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("n", [7, 8, 300_000])
def test_positive_quantile_matches_numpy(q, n):
    rng = np.random.default_rng(n)
    x = rng.exponential(size=n).astype(np.float32)
    x[: n // 3] = 0
    got = tm.positive_quantile(x, q, transform=math.sqrt)
    assert got == pytest.approx(float(np.percentile(np.sqrt(x[x > 0]), 100 * q)), rel=1e-6)
    assert tm.positive_quantile(np.zeros(5, np.float32)) is None


def test_reinhard_known_answer():
    # grey pixels 1 and 4: L_avg = exp((log 1 + log 4) / 2) = 2, key 0.18 -> L_m = 0.09, 0.36
    x = np.array([[[1.0, 1.0, 1.0], [4.0, 4.0, 4.0]]], np.float32)
    lw = 0.36  # default white point = max L_m
    ld = 0.09 * (1 + 0.09 / lw**2) / (1 + 0.09)
    out = tm.reinhard(x, eps=0.0)
    np.testing.assert_allclose(out[0, 0], [srgb(ld)] * 3, atol=1e-5)
    np.testing.assert_allclose(out[0, 1], [1.0] * 3, atol=1e-5)
    # explicit white point 1.0: L_d(0.36) = 0.36 * 1.36 / 1.36 = 0.36
    out = tm.reinhard(x, eps=0.0, white=1.0)
    np.testing.assert_allclose(out[0, 1], [srgb(0.36)] * 3, atol=1e-5)
    # colour is scaled by L_d / L (hue kept); channels-first layout gives the same result
    c = np.array([[[0.5, 1.0, 2.0], [4.0, 4.0, 4.0]]], np.float32)
    lin = np.array([0.5, 1.0, 2.0])
    lum = 0.2126 * 0.5 + 0.7152 * 1.0 + 0.0722 * 2.0
    lavg = math.exp((math.log(lum) + math.log(4.0)) / 2)
    lm, lm_max = 0.18 / lavg * lum, 0.18 / lavg * 4.0
    ld = lm * (1 + lm / lm_max**2) / (1 + lm)
    np.testing.assert_allclose(tm.reinhard(c, eps=0.0)[0, 0], [srgb(v) for v in lin * ld / lum], atol=1e-5)
    np.testing.assert_allclose(tm.reinhard(np.moveaxis(c, -1, 0), eps=0.0, channel_axis=0),
                               np.moveaxis(tm.reinhard(c, eps=0.0), -1, 0), atol=1e-6)


def test_aces_known_answer():
    x = np.array([0.0, 1.0, 0.18, 1e4], np.float32)
    f = lambda v: v * (2.51 * v + 0.03) / (v * (2.43 * v + 0.59) + 0.14)  # noqa: E731
    assert f(1.0) == pytest.approx(2.54 / 3.16)
    np.testing.assert_allclose(tm.aces(x), [0.0, srgb(2.54 / 3.16), srgb(f(0.18)), 1.0], atol=1e-5)


def test_exposure_operator_and_ev():
    x = np.array([0.25, 1.0, 0.0], np.float32)
    out, params = tm.tonemap(x, "exposure", ev=1.0)
    np.testing.assert_allclose(out, [srgb(0.5), 1.0, 0.0], atol=1e-6)
    assert params["exposure_ev"] == 1.0
    np.testing.assert_allclose(tm.tonemap(x, "exposure", ev=-2.0)[0], [srgb(1 / 16), srgb(0.25), 0.0], atol=1e-6)
    # EV applies before every operator; percentile is scale invariant, aces is not
    rng = np.random.default_rng(0)
    y = rng.lognormal(size=(8, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(tm.tonemap(y, "percentile", ev=3)[0], tm.tonemap(y)[0], atol=1e-5)
    np.testing.assert_allclose(tm.tonemap(y, "aces", ev=1)[0], tm.aces(2 * y), atol=1e-6)
    with pytest.raises(ValueError, match="unknown tonemap operator"):
        tm.tonemap(y, "drago")


def test_tonemap_in_place_saves_memory():
    x = np.full((4, 8, 3), 2.0, np.float32)
    out, _ = tm.tonemap(x, "percentile", in_place=True)
    assert np.shares_memory(out, x) and np.allclose(out, 0.5)


def test_repair_hdr_counts_and_values():
    x = np.ones((2, 3, 3), np.float32) * 0.5
    x[0, 0] = [np.nan, np.nan, 0.2]  # one pixel, two NaN channels -> counted once
    x[0, 1, 1] = np.inf
    x[0, 2, 0] = 7.0  # largest finite value
    x[1, 0, 2] = -3.0
    x[1, 1, 0] = -np.inf  # negative too
    counts = tm.repair_hdr(x)
    assert counts == {"nan": 1, "posinf": 1, "negative": 2}
    assert np.isfinite(x).all() and (x >= 0).all()
    np.testing.assert_array_equal(x[0, 0], np.float32([0, 0, 0.2]))
    assert x[0, 1, 1] == 7.0 and x[1, 0, 2] == 0.0 and x[1, 1, 0] == 0.0
    clean = np.ones((2, 2, 3), np.float32)
    assert tm.repair_hdr(clean) == {"nan": 0, "posinf": 0, "negative": 0} and (clean == 1).all()
    allinf = np.full((1, 2, 3), np.inf, np.float32)
    assert tm.repair_hdr(allinf)["posinf"] == 2 and not allinf.any()


def test_select_kth_falls_back_when_the_sample_misleads(monkeypatch):
    rng = np.random.default_rng(9)
    vals = rng.random(300_000).astype(np.float32)
    smallest = np.argsort(vals)[:50]

    class BiasedRng:  # a sample of only the smallest values: the bracket misses the median
        def integers(self, lo, hi, size):
            return np.resize(smallest, size)

    sizes = []
    real_partition = np.partition

    def spy(a, kth, *args, **kw):
        sizes.append(a.size)
        return real_partition(a, kth, *args, **kw)

    monkeypatch.setattr(tm.np.random, "default_rng", lambda seed=None: BiasedRng())
    monkeypatch.setattr(tm.np, "partition", spy)
    k = vals.size // 2
    assert tm.select_kth(vals, [k]) == [float(np.sort(vals)[k])]
    assert sizes[-1] == vals.size  # the exact full-array fallback ran


def test_percentile_out_non_contiguous():
    x = np.random.default_rng(4).lognormal(size=(6, 10, 4)).astype(np.float32)
    view = x[..., :3]  # RGBA -> RGB view, not contiguous
    want = tm.percentile(np.ascontiguousarray(view))
    got = tm.percentile(view, out=view)
    assert got is view
    np.testing.assert_allclose(x[..., :3], want, atol=1e-6)
