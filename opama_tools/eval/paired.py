"""Paired comparison of two methods on the same test panoramas.

Two methods scored on the same references (two ``opama eval`` reports) are compared per
panorama: the difference ``a - b`` of a per-image metric is taken panorama by panorama (paired by
the ``image`` column of ``per_image.csv``), and its mean gets a 95% percentile-bootstrap interval
over panoramas (the same resampling as the reports' own intervals). The scene-to-scene spread,
which both methods share, cancels in the difference; two unpaired intervals that overlap can
still hide a method that is better on nearly every panorama, and this is the test for that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opama_tools.eval import registry

__all__ = ["PairedDifference", "paired_difference", "paired_differences", "paired_table"]


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` of one metric over the ``n`` panoramas both methods scored.

    Attributes:
        key: the per-image column (``gen_colour`` ...); ``better``: lower | higher.
        mean, ci_low, ci_high: mean difference and its 95% bootstrap interval (metric units).
        wins: panoramas where ``a`` is strictly better than ``b``; ``n``: panoramas compared.
    """

    key: str
    better: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    wins: int

    @property
    def a_better(self) -> bool:
        """The whole interval lies on ``a``'s better side of 0."""
        return registry.interval_better(self.ci_low, self.ci_high, self.better)


def paired_difference(a, b, key: str, better: str, reps: int = 1000, seed: int = 0) -> PairedDifference:
    """:class:`PairedDifference` of column ``key`` between the per-image tables ``a`` and ``b``
    (pandas DataFrames with an ``image`` column, as ``per_image.csv``); rows whose image is in one
    table only, or whose value is not finite in either, are left out.

    Raises:
        ValueError: ``better`` is not lower/higher, or ``key`` is missing from a table.
    """
    from opama_tools.eval.evaluate import mean_ci

    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    for name, t in (("a", a), ("b", b)):
        if key not in t.columns or "image" not in t.columns:
            raise ValueError(f"per-image table {name} has no {key!r} or 'image' column")
    m = a[["image", key]].merge(b[["image", key]], on="image", suffixes=("_a", "_b"))
    va, vb = m[f"{key}_a"].to_numpy(dtype=np.float64), m[f"{key}_b"].to_numpy(dtype=np.float64)
    ok = np.isfinite(va) & np.isfinite(vb)
    d = va[ok] - vb[ok]
    mean, lo, hi, n = mean_ci(d, reps, seed)
    wins = int(registry.a_better(d, better).sum())
    return PairedDifference(key, better, n, mean, lo, hi, wins)


def paired_differences(a, b, metrics: dict[str, str], reps: int = 1000, seed: int = 0) -> list[PairedDifference]:
    """:func:`paired_difference` for every ``{key: better}`` in ``metrics`` that both tables have."""
    return [paired_difference(a, b, k, d, reps, seed) for k, d in metrics.items()
            if k in a.columns and k in b.columns]


def paired_table(reports: list, names: list[str], reps: int = 1000, seed: int = 0):
    """Each method minus the first, per-image metric by metric, for ``opama eval compare --paired``.

    ``reports``: report folders (each with ``metrics.json`` and ``per_image.csv``), the baseline
    first; ``names``: one per report. Returns a DataFrame, one row per (method, metric) with a
    lower/higher direction that both reports scored: ``method``, ``baseline``, ``metric`` (label),
    ``key``, ``better``, ``n``, ``mean``, ``ci_low``, ``ci_high``, ``wins`` and ``excludes_0``
    (the interval lies on the method's better side of 0).

    Raises:
        ValueError: fewer than 2 reports, names not one per report, or a report without
            ``per_image.csv``.
    """
    import json
    from pathlib import Path

    import pandas as pd

    if len(reports) < 2:
        raise ValueError("--paired needs at least 2 reports (the first is the baseline)")
    if len(names) != len(reports):
        raise ValueError(f"{len(names)} names for {len(reports)} reports")
    tables, infos = [], []
    for r in reports:
        folder = Path(r) if Path(r).is_dir() else Path(r).parent
        f = folder / "per_image.csv"
        if not f.is_file():
            raise ValueError(f"{folder}: no per_image.csv (needed for --paired)")
        tables.append(pd.read_csv(f))
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["metrics"]
        infos.append({m["key"]: m for m in metrics if m.get("status") == "ok"})
    rows = []
    base, base_info = tables[0], infos[0]
    for name, table, info in zip(names[1:], tables[1:], infos[1:]):
        dirs = {k: registry.direction(k, m.get("better", "")) for k, m in info.items()}
        keys = {k: d for k, d in dirs.items() if d in ("lower", "higher") and k in base_info and k in table.columns}
        for d in paired_differences(table, base, keys, reps, seed):
            rows.append(dict(method=name, baseline=names[0], metric=info[d.key]["label"], key=d.key, better=d.better,
                             n=d.n, mean=d.mean, ci_low=d.ci_low, ci_high=d.ci_high, wins=d.wins,
                             excludes_0=d.a_better))
    cols = ["method", "baseline", "metric", "key", "better", "n", "mean", "ci_low", "ci_high", "wins", "excludes_0"]
    return pd.DataFrame(rows, columns=cols)
