"""The demo page's verdict, computed from the paired comparison of constructed per-image tables."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest

from opama_tools.demo.report import PAIRED_KEYS, VERDICT_KEY, paired_results, verdict, verdicts, write_demo_report
from opama_tools.eval.evaluate import mean_ci
from opama_tools.eval.report import fmt, load_report

N = 6


def _report(out, name: str, colour: np.ndarray, psnr: np.ndarray) -> None:
    """A minimal ``opama eval`` report folder: metrics.json (two generated-region rows) and per_image.csv."""
    d = out / "reports" / name
    d.mkdir(parents=True)
    images = [f"scene{i}.png" for i in range(len(colour))]
    pd.DataFrame({"image": images, "gen_colour": colour, "gen_psnr": psnr}).to_csv(d / "per_image.csv", index=False)
    rows = []
    for key, label, better, v in (("gen_colour", "colour distance (generated)", "lower", colour),
                                  ("gen_psnr", "PSNR (generated, dB)", "higher", psnr)):
        m, lo, hi, n = mean_ci(v, 200, 0)
        rows.append(dict(key=key, label=label, status="ok", value=m, ci_low=lo, ci_high=hi, better=better, n=n,
                         group="generated", detail=""))
    (d / "metrics.json").write_text(json.dumps({"metrics": rows, "scored": {}, "config": {}}))


@pytest.fixture()
def demo(tmp_path):
    rng = np.random.default_rng(0)
    scene = rng.uniform(0.05, 0.25, N)  # scenes of very different difficulty
    psnr = rng.uniform(10, 20, N)
    _report(tmp_path, "input-only", scene, psnr)
    _report(tmp_path, "trained-fast", scene - 0.045 + rng.normal(0, 0.004, N), psnr + 1.0)  # a clear win
    _report(tmp_path, "untrained-fast", scene + np.array([0.01, -0.01] * (N // 2)), psnr)  # a tie
    reports = {n: load_report(tmp_path / "reports" / n) for n in ("input-only", "trained-fast", "untrained-fast")}
    return tmp_path, reports, scene


def test_verdict_clear_win_and_tie(demo):
    out, reports, scene = demo
    res = paired_results(out, reports, [("trained-fast", "input-only"), ("untrained-fast", "input-only")], reps=200)
    assert [d["key"] for d in res] == [k for k in PAIRED_KEYS if k in ("gen_colour", "gen_psnr")] * 2
    win, tie = [d for d in res if d["key"] == VERDICT_KEY]

    a = pd.read_csv(out / "reports" / "trained-fast" / "per_image.csv")["gen_colour"].to_numpy()
    mean, lo, hi, n = mean_ci(a - scene, 200, 0)
    assert (win["mean"], win["ci_low"], win["ci_high"], win["n"], win["wins"]) == pytest.approx((mean, lo, hi, N, N))
    assert hi < 0
    assert verdict(win) == (f"trained-fast vs input-only: colour distance (generated) paired difference "
                            f"{fmt(mean, 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}], better on {N} of {N}: "
                            "trained-fast is closer to the references")
    assert tie["ci_low"] < 0 < tie["ci_high"] and tie["wins"] == N // 2
    assert verdict(tie).endswith(f"better on {N // 2} of {N}: not distinguishable (the interval includes 0)")
    # the same numbers the other way round: the baseline is the closer one
    flipped = dict(win, a="input-only", b="trained-fast", mean=-win["mean"], ci_low=-win["ci_high"],
                   ci_high=-win["ci_low"], wins=0)
    assert verdict(flipped).endswith("better on 0 of 6: trained-fast is closer to the references")
    # a higher-is-better metric reads the sign the other way
    psnr = next(d for d in res if d["key"] == "gen_psnr" and d["a"] == "trained-fast")
    assert psnr["mean"] == pytest.approx(1.0) and verdict(psnr).endswith("trained-fast is closer to the references")
    assert verdicts(res) == [verdict(win), verdict(tie)]
    few = dict(tie, n=1, ci_low=float("nan"), ci_high=float("nan"))
    assert verdict(few).endswith("not distinguishable (too few panoramas for an interval)")


def test_the_page_states_the_verdict(demo):
    out, _, _ = demo
    page = write_demo_report(out, ["input-only", "trained-fast", "untrained-fast"], {"eval": 1.0}, {},
                             {"bootstrap": 200}).read_text()
    verdict_part = page.split("<h2>Verdict</h2>")[1].split("<h2>")[0]
    assert "trained-fast vs input-only: colour distance (generated) paired difference" in verdict_part
    assert "trained-fast is closer to the references" in verdict_part
    assert "trained-fast vs untrained-fast" in verdict_part
    assert page.count("<li>") >= 2


def test_the_page_compares_the_training_free_row_with_trained_opama(demo):
    """With a training-free run: its paired difference against trained OPa-Ma (what the conditioner adds)
    and against grey, in the verdict and the paired table, the legend and the sentence on what it shows."""
    from opama_tools.demo.report import TRAINING_FREE, TRAINING_FREE_NOTE

    out, _, scene = demo
    page_without = write_demo_report(out, ["input-only", "trained-fast", "untrained-fast"], {}, {},
                                     {"bootstrap": 200}).read_text()
    assert TRAINING_FREE not in page_without and "weak evidence" not in page_without
    free = scene - 0.02 + np.array([0.01, -0.01] * (N // 2))
    _report(out, TRAINING_FREE, free, np.full(N, 15.0))
    names = ["input-only", "trained-fast", TRAINING_FREE, "untrained-fast"]
    page = write_demo_report(out, names, {}, {}, {"bootstrap": 200}).read_text()
    verdict_part = html.unescape(page.split("<h2>Verdict</h2>")[1].split("<h2>")[0])
    reports = {n: load_report(out / "reports" / n) for n in names}
    res = paired_results(out, reports, [("trained-fast", TRAINING_FREE), (TRAINING_FREE, "input-only")], reps=200)
    lines = verdicts(res)
    assert lines[0].startswith(f"trained-fast vs {TRAINING_FREE}: colour distance (generated) paired difference")
    assert lines[1].startswith(f"{TRAINING_FREE} vs input-only: colour distance (generated) paired difference")
    assert all(line in verdict_part for line in lines)
    trained = pd.read_csv(out / "reports" / "trained-fast" / "per_image.csv")["gen_colour"].to_numpy()
    mean, lo, hi, _ = mean_ci(trained - free, 200, 0)
    assert res[0]["key"] == VERDICT_KEY and (res[0]["mean"], res[0]["ci_low"]) == pytest.approx((mean, lo))
    assert TRAINING_FREE_NOTE in verdict_part
    assert f"<td>trained-fast</td><td>{TRAINING_FREE}</td><td>colour distance (generated)</td>" in page
    assert f"<td>{TRAINING_FREE}</td><td>input-only</td><td>colour distance (generated)</td>" in page
    assert "SD-inpaint (no conditioner)" in page
