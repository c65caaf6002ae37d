"""Set-level distribution metrics on feature vectors: FID, KID, IS, OmniFID, FID-h.

Features come from :mod:`opama_tools.eval.metrics.features` (clean-fid preprocessing).
FID uses clean-fid's ``frechet_distance`` on ``np.mean`` / ``np.cov(rowvar=False)``
statistics, i.e. exactly what ``cleanfid.fid.compute_fid`` computes from the same
features; KID mirrors clean-fid's ``kernel_distance`` (cubic polynomial kernel,
random subsets) and also returns the per-subset values; IS uses torchmetrics'
``InceptionScore`` with a ``feature=`` module (offline).

360° variants (names from the literature):

* **OmniFID** (Christensen et al., arXiv 2407.18207): mean of the FIDs of the up faces,
  the down faces and the (pooled) side faces of the cube maps.
* **FID-h** (PAR, arXiv 2505.16862): FID over 8 horizontal 90° perspective views per
  panorama (yaw 0, 45, ..., 315; pitch 0).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "gaussian_stats",
    "fid_from_stats",
    "fid_from_features",
    "fid_fast",
    "kid_subsets",
    "kid_from_features",
    "inception_score",
    "omnifid",
    "bootstrap_set_metric",
]


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (``np.cov``, ddof 1) of features ``(N, D)``."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between two Gaussians (clean-fid's ``frechet_distance``)."""
    import contextlib
    import io

    from cleanfid.fid import frechet_distance

    with contextlib.redirect_stdout(io.StringIO()):  # clean-fid prints when it regularises
        return float(frechet_distance(mu1, sigma1, mu2, sigma2))


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets ``(N1, D)`` and ``(N2, D)`` (clean-fid formula)."""
    mu1, s1 = gaussian_stats(f1)
    mu2, s2 = gaussian_stats(f2)
    return fid_from_stats(mu1, s1, mu2, s2)


def fid_fast(f1: np.ndarray, f2: np.ndarray) -> float:
    """The same Fréchet distance without a ``D x D`` matrix square root.

    With centred features ``A`` (N1 x D), ``B`` (N2 x D) and ddof-1 covariances,
    ``tr sqrt(S1 S2) = ||A B^T||_* / sqrt((N1-1)(N2-1))`` (the eigenvalues of
    ``S1 S2`` are the squared singular values of ``A B^T`` up to that scale). Computed
    through economy QR factors, cost ``O(N D min(N, D))``. ``opama eval`` reports FID with
    it: equal to clean-fid's ``frechet_distance`` (tested to 1e-5 relative), exact when
    N < D where ``sqrtm`` of a singular product needs regularising, and seconds instead
    of minutes for 2048-d Inception features on a CPU.
    """
    a = np.asarray(f1, dtype=np.float64)
    b = np.asarray(f2, dtype=np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    a = a - mu1
    b = b - mu2
    n1, n2 = a.shape[0], b.shape[0]
    # A = Q_a R_a (economy QR) keeps the singular values of A B^T: use R_a when N > D.
    left = np.linalg.qr(a, mode="r") if n1 > a.shape[1] else a
    right = np.linalg.qr(b, mode="r") if n2 > b.shape[1] else b
    m = left @ right.T
    nuc = np.linalg.svd(m, compute_uv=False).sum()
    tr1 = (a * a).sum() / (n1 - 1)
    tr2 = (b * b).sum() / (n2 - 1)
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2 * nuc / np.sqrt((n1 - 1) * (n2 - 1)))


def kid_subsets(
    f1: np.ndarray, f2: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int | None = 0
) -> np.ndarray:
    """Per-subset unbiased MMD² estimates with the kernel ``(x.y/D + 1)^3``, ``(num_subsets,)``.

    Same draws and formula as ``cleanfid.fid.kernel_distance`` (which returns their
    mean), using ``np.random`` seeded with ``seed`` (``None``: leave the global state).
    """
    if seed is not None:
        np.random.seed(seed)
    f1 = np.asarray(f1, dtype=np.float64)
    f2 = np.asarray(f2, dtype=np.float64)
    n = f1.shape[1]
    m = min(min(f1.shape[0], f2.shape[0]), max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    out = np.empty(num_subsets)
    for k in range(num_subsets):
        x = f2[np.random.choice(f2.shape[0], m, replace=False)]
        y = f1[np.random.choice(f1.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        out[k] = ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m
    return out


def kid_from_features(f1, f2, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (mean over subsets) and the standard deviation over subsets."""
    v = kid_subsets(f1, f2, num_subsets, max_subset_size, seed)
    return float(v.mean()), float(v.std())


class _Precomputed(torch.nn.Module):
    """Identity "feature extractor": torchmetrics receives logits computed beforehand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def inception_score(logits: torch.Tensor | np.ndarray, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception score (mean, std over ``splits``) with torchmetrics' ``InceptionScore``.

    ``logits`` ``(N, K)``: per-image class logits (log-probabilities work too: softmax is
    shift invariant). torchmetrics shuffles with ``torch.randperm``; ``seed`` fixes it.
    """
    from torchmetrics.image.inception import InceptionScore

    x = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).double()
    splits = max(1, min(splits, x.shape[0]))
    metric = InceptionScore(feature=_Precomputed(), splits=splits)
    metric.update(x)
    g = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        mean, std = metric.compute()
    finally:
        torch.random.set_rng_state(g)
    return float(mean), float(std) if splits > 1 else 0.0


def omnifid(up: tuple[np.ndarray, np.ndarray], down: tuple[np.ndarray, np.ndarray], sides: tuple[np.ndarray, np.ndarray]) -> float:
    """OmniFID: mean of FID(up faces), FID(down faces), FID(side faces pooled); each arg (gen, ref)."""
    return float(np.mean([fid_from_features(*up), fid_from_features(*down), fid_from_features(*sides)]))


def bootstrap_set_metric(fn, n_items: int, reps: int, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of a set metric by resampling items (panoramas) with replacement.

    ``fn(idx)`` computes the metric on the items ``idx`` (an int array, with repeats).
    Returns ``(low, high)``; ``(nan, nan)`` when ``reps`` is 0 or there are < 2 items.
    """
    if reps <= 0 or n_items < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(reps):
        idx = rng.integers(0, n_items, n_items)
        if len(np.unique(idx)) < 2:
            continue
        vals.append(fn(idx))
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.quantile(np.asarray(vals), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
