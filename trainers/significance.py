"""Statistics of a comparison over seeds (issue 26): the mean of a metric with its 95 %
confidence half-width over seeds, and paired tests of two models over users.

* Interval: Student's t with n - 1 degrees of freedom over the n seeds' values,
  half-width = t_{0.975, n-1} · s / √n (s the sample standard deviation); NaN for one seed.
* Paired tests: each user's metric (averaged over seeds) of the best model against another
  model's, users both have; two-sided p-values of the paired t-test
  (``scipy.stats.ttest_rel``) and of the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``,
  zero differences dropped, its default). With every difference zero neither test has
  anything to reject: both p-values are 1.
* A cell is marked when the best model's mean is higher and both p-values are < 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
ALPHA = 0.05


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """(mean, half-width of the ``level`` t-interval) of a metric over seeds.

    Raises:
        ValueError: no value.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values: a mean needs at least one seed")
    if x.size == 1:
        return float(x[0]), math.nan
    half = stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def paired_tests(best: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values (paired t-test, Wilcoxon signed-rank) of per-user values.

    Args:
        best, other: (U,) the two models' values for the same users, in the same order;
            pairs with a NaN (a user without that metric) are left out.
    Raises:
        ValueError: lengths differ, or fewer than two complete pairs.
    """
    best, other = np.asarray(best, np.float64), np.asarray(other, np.float64)
    if best.shape != other.shape:
        raise ValueError(f"paired values need the same users: {best.shape} vs {other.shape}")
    keep = ~(np.isnan(best) | np.isnan(other))
    best, other = best[keep], other[keep]
    if best.size < 2:
        raise ValueError(f"a paired test needs at least 2 users, got {best.size}")
    if np.all(best == other):
        return 1.0, 1.0
    t_p = float(stats.ttest_rel(best, other).pvalue)
    w_p = float(stats.wilcoxon(best, other).pvalue)
    return (1.0 if math.isnan(t_p) else t_p), w_p


def beats(best_mean: float, other_mean: float, p_ttest: float, p_wilcoxon: float,
          alpha: float = ALPHA) -> bool:
    """The best model beats the other: a higher mean, and both tests reject at ``alpha``."""
    return best_mean > other_mean and p_ttest < alpha and p_wilcoxon < alpha
