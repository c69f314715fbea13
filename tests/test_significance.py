"""Issue 26's statistics against values computed by hand on a small fixed table, and
``compare --seeds`` on tiny data: means with intervals, both p-values, nested runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainers.significance import beats, mean_interval, paired_tests


def test_mean_and_t_half_width_by_hand():
    # 0.30, 0.32, 0.34: mean 0.32, s = 0.02, t_{0.975, 2} = 4.302653, half = t s / sqrt(3)
    mean, half = mean_interval([0.30, 0.32, 0.34])
    assert mean == pytest.approx(0.32)
    assert half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert mean_interval([0.5])[0] == 0.5 and math.isnan(mean_interval([0.5])[1])
    with pytest.raises(ValueError, match="at least one seed"):
        mean_interval([])


def test_paired_tests_by_hand():
    best = np.array([1.0, 0.5, 1.0, 0.5, 1.0, 0.5, 1.0, 1.0])
    other = np.array([0.5, 0.5, 0.5, 0.25, 0.5, 0.5, 0.5, 0.5])
    # differences 0.5, 0, 0.5, 0.25, 0.5, 0, 0.5, 0.5: mean 2.75 / 8 = 0.34375, squared
    # deviations 5 x 0.15625² + 2 x 0.34375² + 0.09375² = 0.3671875, s = sqrt(0.3671875 / 7)
    # = 0.229031, t = 0.34375 / (0.229031 / sqrt 8) = 4.24515 with 7 degrees of freedom
    d = best - other
    assert d.std(ddof=1) == pytest.approx(math.sqrt(0.3671875 / 7))
    p_t, p_w = paired_tests(best, other)
    assert p_t == pytest.approx(0.0038159, rel=1e-4)  # two-sided t(7) at 4.24515
    # Wilcoxon: the two zero differences dropped, 6 positive differences (ranks 1 and 2-6
    # tied at 4): W- = 0, exact two-sided p = 2 / 2^6 = 0.03125
    assert p_w == pytest.approx(0.03125)
    assert beats(best.mean(), other.mean(), p_t, p_w)
    assert not beats(other.mean(), best.mean(), p_t, p_w)  # a lower mean never "beats"
    assert not beats(best.mean(), other.mean(), p_t, 0.06)  # both tests must reject
    # NaN pairs (a user without the metric) are left out; equal values reject nothing
    assert paired_tests(np.array([0.2, np.nan, 0.3]), np.array([0.2, 0.1, 0.3])) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least 2 users"):
        paired_tests(np.array([0.1]), np.array([0.2]))
