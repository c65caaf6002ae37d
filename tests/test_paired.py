"""Paired comparison of two methods' per-image metrics (opama_tools.eval.paired)."""

import numpy as np
import pandas as pd
import pytest

from opama_tools.eval.evaluate import mean_ci
from opama_tools.eval.paired import paired_difference, paired_differences


def _table(values, images=None, key="gen_colour"):
    images = images or [f"p{i}.png" for i in range(len(values))]
    return pd.DataFrame({"image": images, key: values})


def test_constant_shift_is_exact():
    b = _table([0.05, 0.2, 0.11, 0.16])
    a = _table([0.04, 0.19, 0.10, 0.15])
    d = paired_difference(a, b, "gen_colour", "lower", reps=200)
    assert d.n == 4 and d.wins == 4
    assert d.mean == pytest.approx(-0.01) and d.ci_low == pytest.approx(-0.01) and d.ci_high == pytest.approx(-0.01)
    assert d.a_better
    # the same numbers read as "higher is better": a is worse everywhere
    h = paired_difference(a, b, "gen_colour", "higher", reps=200)
    assert h.wins == 0 and not h.a_better


def test_pairs_by_image_and_matches_the_reports_bootstrap():
    rng = np.random.default_rng(3)
    va, vb = rng.random(9), rng.random(9)
    names = [f"s{i}.png" for i in range(9)]
    a = _table(list(va) + [0.5], names + ["only-in-a.png"])
    b = _table(list(vb[::-1]), names[::-1])  # other row order
    a.loc[2, "gen_colour"] = np.nan  # not finite: left out
    d = paired_difference(a, b, "gen_colour", "lower", reps=500, seed=7)
    keep = [i for i in range(9) if i != 2]
    diff = va[keep] - vb[keep]
    mean, lo, hi, n = mean_ci(diff, 500, 7)
    assert (d.n, d.mean, d.ci_low, d.ci_high) == (n, mean, lo, hi) and n == 8
    assert d.wins == int((diff < 0).sum())


def test_paired_finds_what_overlapping_intervals_hide():
    """Scenes with a wide spread of difficulty, method a a little better on every one: the two
    unpaired intervals overlap, the paired interval lies below 0."""
    rng = np.random.default_rng(0)
    scene = rng.uniform(0.04, 0.2, 8)
    b = _table(list(scene))
    a = _table(list(scene - 0.02 + rng.normal(0, 0.003, 8)))
    _, _, hi_a, _ = mean_ci(a["gen_colour"].to_numpy(), 1000, 0)
    _, lo_b, _, _ = mean_ci(b["gen_colour"].to_numpy(), 1000, 0)
    assert hi_a > lo_b  # unpaired: overlapping
    d = paired_difference(a, b, "gen_colour", "lower")
    assert d.a_better and d.ci_high < 0 and d.wins == 8


def test_bad_arguments():
    t = _table([0.1, 0.2])
    with pytest.raises(ValueError, match="better"):
        paired_difference(t, t, "gen_colour", "1.0")
    with pytest.raises(ValueError, match="gen_psnr"):
        paired_difference(t, t, "gen_psnr", "higher")
    # paired_differences skips metrics a table lacks
    assert [x.key for x in paired_differences(t, t, {"gen_colour": "lower", "gen_psnr": "higher"})] == ["gen_colour"]
