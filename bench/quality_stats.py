"""Statistics of the search-quality benches: rank correlations with paired bootstrap CIs (batched), ranks,
seed noise."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from nasnet_det.utils.errors import BadInputError


# ------------------------------------------------------------------------------------------- statistics
def _kendall_tau_b(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall's tau-b over the last axis, batched over the others (bootstrap resamples at once): the sum
    over pairs of sign(a_i - a_j) sign(b_i - b_j), over the square root of the untied pairs of each side.
    A side without untied pairs (constant) gives 0: it carries no ranking."""
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    sa = np.sign(a[..., :, None] - a[..., None, :])
    sb = np.sign(b[..., :, None] - b[..., None, :])
    num = (sa * sb).sum((-2, -1))
    den = np.sqrt((sa * sa).sum((-2, -1)) * (sb * sb).sum((-2, -1)))
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def _spearman_rho(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho over the last axis, batched: the Pearson correlation of the (average-tie) ranks."""
    ra = stats.rankdata(np.moveaxis(a, axis, -1), axis=-1)
    rb = stats.rankdata(np.moveaxis(b, axis, -1), axis=-1)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    num = (ra * rb).sum(-1)
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def rank_correlations(scores: Sequence[float], truth: Sequence[float], n_resamples: int = 2000,
                      seed: int = 0) -> dict[str, float]:
    """Kendall tau-b and Spearman rho of ``scores`` against ``truth`` (scipy.stats.kendalltau / spearmanr),
    each with a paired bootstrap 95% percentile interval (scipy.stats.bootstrap, cells resampled with
    replacement; the resamples' statistics computed batched, the same definitions)."""
    s, t = np.asarray(scores, float), np.asarray(truth, float)
    if len(s) != len(t) or len(s) < 3:
        raise BadInputError(f"rank correlation needs >= 3 paired values, got {len(s)} scores and {len(t)} truths")
    out: dict[str, float] = {"n": len(s)}
    for name, point_fn, batched in (("kendall", stats.kendalltau, _kendall_tau_b),
                                    ("spearman", stats.spearmanr, _spearman_rho)):
        with np.errstate(invalid="ignore", divide="ignore"):
            point = float(point_fn(s, t)[0])
        res = stats.bootstrap((s, t), batched, paired=True, vectorized=True, n_resamples=n_resamples,
                              confidence_level=0.95, method="percentile", random_state=seed)
        out[name] = point
        out[f"{name}_lo"] = float(res.confidence_interval.low)
        out[f"{name}_hi"] = float(res.confidence_interval.high)
    return out


def rank_among(value: float, others: Iterable[float]) -> int:
    """1-based rank of ``value`` among ``others`` + itself, best (highest) first; ties go in its favour."""
    return 1 + sum(o > value for o in others)


def pooled_seed_std(per_cell: Mapping[str, Sequence[float]]) -> float:
    """Seed noise: the pooled sample std of each cell's accuracies across seeds (cells with >= 2 seeds)."""
    num = sum((len(v) - 1) * float(np.var(v, ddof=1)) for v in per_cell.values() if len(v) >= 2)
    dof = sum(len(v) - 1 for v in per_cell.values() if len(v) >= 2)
    return math.sqrt(num / dof) if dof else float("nan")
