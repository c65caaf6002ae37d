"""HDR → display tonemapping operators: small pure functions on float32 linear RGB.

Every operator maps linear radiance ``x >= 0`` (any shape; operators that need a
luminance take ``channel_axis``, default ``-1`` for ``(H, W, 3)``) to display values in
``[0, 1]``; the caller quantises (``round(255 * out)``). They never modify their input
unless given ``out=``. An optional exposure ``x * 2**EV`` (:func:`apply_exposure`) is
applied by :func:`tonemap` before any operator.

Operators (formulas in each docstring):

* ``percentile`` (default; AOG-Net / OPa-Ma): ``clip(alpha * x^(1/2.4), 0, 1)`` with the
  50th percentile of the non-zero gamma-corrected values mapped to 0.5. The median is
  computed **exactly** (same value as ``np.percentile(v[v > 0], 50)``, linear
  interpolation) by selection, see :func:`positive_quantile`.
* ``reinhard``: global Reinhard et al. (2002) with white point, then the sRGB OETF.
* ``aces``: Narkowicz's filmic fit of the ACES RRT+ODT, then the sRGB OETF.
* ``exposure``: fixed exposure, clip, sRGB OETF.

:func:`repair_hdr` replaces NaN / +Inf / negative values in place and counts them.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = [
    "OPERATORS",
    "aces",
    "apply_exposure",
    "exposure",
    "percentile",
    "percentile_alpha",
    "positive_quantile",
    "reinhard",
    "repair_hdr",
    "select_kth",
    "srgb_oetf",
    "tonemap",
]

REC709_LUMA = (0.2126, 0.7152, 0.0722)
_CHUNK = 1 << 16  # elements per in-cache chunk of the streaming passes


# --------------------------------------------------------------------------- helpers
def srgb_oetf(x: np.ndarray) -> np.ndarray:
    """sRGB opto-electronic transfer function (IEC 61966-2-1) on linear values in ``[0, 1]``.

    ``v = 12.92 x`` for ``x <= 0.0031308``, else ``v = 1.055 x^(1/2.4) - 0.055``.
    Returns a new float32 array (input clipped to ``[0, 1]`` first).
    """
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, np.float32(1 / 2.4)) - 0.055).astype(np.float32)


def apply_exposure(x: np.ndarray, ev: float) -> np.ndarray:
    """Exposure compensation in stops: ``x * 2**ev`` (new float32 array; ``ev = 0`` copies)."""
    return np.asarray(x, dtype=np.float32) * np.float32(2.0**ev)


def repair_hdr(x: np.ndarray, channel_axis: int | None = -1) -> dict[str, int]:
    """Replace bad values **in place** and count them: NaN → 0, +Inf → the largest finite
    value of the image (0 if none), negatives (including -Inf) → 0.

    Returns ``{"nan": n, "posinf": n, "negative": n}``: the number of **pixels** with at
    least one such channel along ``channel_axis`` (None: count single values). A clean
    image costs two reductions (min and max) and no copy.
    """
    counts = {"nan": 0, "posinf": 0, "negative": 0}
    if x.size == 0:
        return counts
    lo, hi = float(x.min()), float(x.max())  # NaN propagates through min/max
    if math.isfinite(lo) and math.isfinite(hi) and lo >= 0.0:
        return counts

    def n_pixels(mask: np.ndarray) -> int:
        return int(np.count_nonzero(mask if channel_axis is None else mask.any(axis=channel_axis)))

    nan = np.isnan(x)
    counts["nan"] = n_pixels(nan)
    x[nan] = 0.0
    pinf = np.isposinf(x)
    counts["posinf"] = n_pixels(pinf)
    neg = x < 0  # -Inf included
    counts["negative"] = n_pixels(neg)
    x[neg] = 0.0
    if pinf.any():
        x[pinf] = float(np.max(x, where=~pinf, initial=0.0))
    return counts


def select_kth(values: np.ndarray, ks: list[int], sample: int = 1 << 16, seed: int = 0) -> list[float]:
    """Exact order statistics: the ``k``-th smallest (0-based) element of ``values`` for each ``k``.

    Method (Floyd–Rivest-style selection, exact): sort a random sample of ``sample``
    elements to bracket the wanted ranks in ``[a, b]`` with a ±6σ margin, count the
    elements ``< a`` and extract those in ``[a, b]`` (two streaming passes, no sort), then
    ``np.partition`` the small band. The bracket is **verified by counting**; if it does
    not contain every wanted rank (probability < 1e-8) the function falls back to
    ``np.partition`` of the whole array, so the result always equals
    ``np.sort(values.ravel())[k]``.
    """
    flat = values.reshape(-1)
    n = flat.size
    ks = [int(k) for k in ks]
    if any(k < 0 or k >= n for k in ks):
        raise IndexError(f"rank out of range for {n} values: {ks}")
    if n <= 4 * sample:
        part = np.partition(flat, sorted(set(ks)))
        return [float(part[k]) for k in ks]
    rng = np.random.default_rng(seed)
    samp = np.sort(flat[rng.integers(0, n, sample)])
    k_lo, k_hi = min(ks), max(ks)
    margin = lambda p: 6.0 * math.sqrt(sample * p * (1 - p)) + 2  # noqa: E731
    i_lo = int(math.floor(k_lo / n * sample - margin(k_lo / n)))
    i_hi = int(math.ceil(k_hi / n * sample + margin(k_hi / n)))
    a = samp[i_lo] if i_lo >= 0 else None
    b = samp[i_hi] if i_hi < sample else None
    if a is None and b is None:
        band, below = flat, 0
    else:
        lo_v = -np.inf if a is None else a
        hi_v = np.inf if b is None else b
        below, parts = 0, []
        for i in range(0, n, _CHUNK):  # one streaming pass in cache-sized chunks
            c = flat[i : i + _CHUNK]
            m = c >= lo_v
            below += c.size - int(np.count_nonzero(m))
            np.logical_and(m, c <= hi_v, out=m)
            parts.append(c[m])
        band = np.concatenate(parts)
    if below <= k_lo and k_hi < below + band.size:
        rel = sorted({k - below for k in ks})
        part = np.partition(band, rel)
        return [float(part[k - below]) for k in ks]
    part = np.partition(flat, sorted(set(ks)))  # bracket missed: exact fallback
    return [float(part[k]) for k in ks]


def positive_quantile(x: np.ndarray, q: float = 0.5, transform: Callable[[float], float] | None = None) -> float | None:
    """Exact ``np.percentile(t(x)[x > 0], 100 q)`` (linear interpolation) for ``x >= 0``,
    where ``t`` is a monotone non-decreasing ``transform`` (identity if None).

    Because ``t`` is monotone, the order statistics of ``t(x)`` are ``t`` of those of ``x``,
    so only the (one or two) order statistics bracketing rank ``q (n - 1)`` among the
    ``n`` positive values are selected (:func:`select_kth`, exact) and interpolated after
    ``t``. Zeros are the smallest values, so their count only offsets the ranks and no
    masked copy of the positives is made. Returns None if no value is positive.
    """
    flat = x.reshape(-1)
    n_pos = int(np.count_nonzero(flat))
    if n_pos == 0:
        return None
    zeros = flat.size - n_pos
    pos = q * (n_pos - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n_pos - 1)
    frac = pos - lo
    vals = select_kth(flat, [zeros + lo, zeros + hi])
    t = transform or (lambda v: v)
    v_lo, v_hi = t(vals[0]), t(vals[1])
    return v_lo + (v_hi - v_lo) * frac


# --------------------------------------------------------------------------- operators
def percentile_alpha(x: np.ndarray, gamma: float = 2.4, target: float = 0.5, q: float = 0.5) -> tuple[float, float]:
    """Scale of the percentile operator: ``alpha = target / (m + 1e-10)``, where ``m`` is the
    ``q``-quantile (50th percentile) of the non-zero values of ``x^(1/gamma)``, exact.

    Returns ``(alpha, m)``; ``m = 0`` (and ``alpha = target / 1e-10``) for an all-zero image.
    """
    m = positive_quantile(x, q, transform=lambda v: float(v) ** (1.0 / gamma))
    m = 0.0 if m is None else m
    return target / (m + 1e-10), m


def percentile(x: np.ndarray, gamma: float = 2.4, target: float = 0.5, alpha: float | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """AOG-Net's tonemap: ``out = clip(alpha * x^(1/gamma), 0, 1)``,
    ``alpha = target / (median(x^(1/gamma) | x > 0) + 1e-10)`` (gamma 2.4, target 0.5).

    ``x >= 0`` float32, any shape. The median is exact (:func:`percentile_alpha`); pass
    ``alpha`` to reuse one. Computed as ``min(exp(log(min(x, c)) / gamma + log(alpha)), 1)``
    with ``c = alpha^-gamma`` (the upper clip moved before the power, where it is a plain
    threshold; identical up to float rounding, ~5e-7 relative: numpy's float32 log/exp
    are vectorised, its float32 power is not), in cache-sized chunks. ``out=x`` works in
    place. Inputs must be ``>= 0`` (:func:`repair_hdr`), like the formula's ``x^(1/gamma)``.
    """
    x = np.asarray(x, dtype=np.float32)
    if alpha is None:
        alpha, _ = percentile_alpha(x, gamma, target)
    if out is None:
        out = np.empty_like(x)
    elif out.shape != x.shape or out.dtype != np.float32:
        raise ValueError("out must be a float32 array of the shape of x")
    elif not out.flags.c_contiguous:  # chunks below are views of out: need contiguous memory
        out[...] = percentile(x, gamma, target, alpha=alpha)
        return out
    ceiling = np.float32(min(alpha ** (-gamma), float(np.finfo(np.float32).max)))
    inv_gamma, log_alpha, one = np.float32(1.0 / gamma), np.float32(math.log(alpha)), np.float32(1.0)
    src, dst = x.reshape(-1), out.reshape(-1)
    with np.errstate(divide="ignore"):  # log(0) = -inf -> exp(-inf) = 0
        for i in range(0, src.size, _CHUNK):
            c = dst[i : i + _CHUNK]
            np.minimum(src[i : i + _CHUNK], ceiling, out=c)
            np.log(c, out=c)
            c *= inv_gamma
            c += log_alpha
            np.exp(c, out=c)
            np.minimum(c, one, out=c)
    return out


def reinhard(x: np.ndarray, key: float = 0.18, white: float | None = None, channel_axis: int = -1,
             eps: float = 1e-6) -> np.ndarray:
    """Global Reinhard et al. (2002) operator with white point, then the sRGB OETF.

    ``L = 0.2126 R + 0.7152 G + 0.0722 B``; ``L_avg = exp(mean(log(eps + L)))``;
    ``L_m = key / L_avg * L``; ``L_d = L_m (1 + L_m / L_w^2) / (1 + L_m)`` with
    ``L_w = white`` (in ``L_m`` units; default ``max(L_m)``, so the brightest pixel maps
    to 1); ``out = srgb_oetf(clip(x * L_d / L, 0, 1))`` (0 where ``L = 0``).
    ``x``: float32 with 3 channels along ``channel_axis``.
    """
    x = np.asarray(x, dtype=np.float32)
    w = np.asarray(REC709_LUMA, dtype=np.float32)
    shape = [1] * x.ndim
    shape[channel_axis] = 3
    lum = np.sum(x * w.reshape(shape), axis=channel_axis, keepdims=True, dtype=np.float32)
    l_avg = float(np.exp(np.mean(np.log(eps + lum.astype(np.float64)))))
    lm = lum * np.float32(key / l_avg)
    lw = float(lm.max()) if white is None else float(white)
    lw = max(lw, 1e-12)
    ld = lm * (1 + lm / np.float32(lw * lw)) / (1 + lm)
    ratio = np.divide(ld, lum, out=np.zeros_like(lum), where=lum > 0)
    return srgb_oetf(x * ratio)


def aces(x: np.ndarray) -> np.ndarray:
    """Narkowicz (2015) filmic fit of ACES, per channel, then the sRGB OETF:

    ``f(x) = x (2.51 x + 0.03) / (x (2.43 x + 0.59) + 0.14)``, ``out = srgb_oetf(clip(f(x), 0, 1))``.
    """
    x = np.asarray(x, dtype=np.float32)
    f = x * (2.51 * x + 0.03) / (x * (2.43 * x + 0.59) + 0.14)
    return srgb_oetf(f)


def exposure(x: np.ndarray) -> np.ndarray:
    """Fixed exposure: ``out = srgb_oetf(clip(x, 0, 1))`` (the EV, ``x * 2**EV``, is applied
    by :func:`tonemap` before the operator)."""
    return srgb_oetf(x)


OPERATORS = ("percentile", "reinhard", "aces", "exposure")


def tonemap(x: np.ndarray, operator: str = "percentile", ev: float = 0.0, channel_axis: int = -1,
            in_place: bool = False, **params) -> tuple[np.ndarray, dict]:
    """Apply exposure ``x * 2**ev`` then ``operator`` to linear RGB ``x >= 0`` (float32).

    Returns ``(display values in [0, 1], parameters used)``; for ``percentile`` the
    parameters include the computed ``alpha`` and ``median``. Note that ``percentile`` is
    scale invariant, so ``ev`` does not change its output. ``in_place=True`` may
    overwrite ``x`` (saves memory on 2048x4096 images).
    """
    if operator not in OPERATORS:
        raise ValueError(f"unknown tonemap operator {operator!r}; choose one of {', '.join(OPERATORS)}")
    x = np.asarray(x, dtype=np.float32)
    if ev:
        x = np.multiply(x, np.float32(2.0**ev), out=x if in_place else None)
    used: dict = {"exposure_ev": float(ev)}
    if operator == "percentile":
        gamma = float(params.get("gamma", 2.4))
        target = float(params.get("target", 0.5))
        alpha, med = percentile_alpha(x, gamma, target)
        used.update(gamma=gamma, target=target, alpha=alpha, median=med)
        return percentile(x, gamma, target, alpha=alpha, out=x if in_place else None), used
    if operator == "reinhard":
        key = float(params.get("key", 0.18))
        white = params.get("white")
        used.update(key=key, white=None if white is None else float(white))
        return reinhard(x, key=key, white=white, channel_axis=channel_axis), used
    if operator == "aces":
        return aces(x), used
    return exposure(x), used
