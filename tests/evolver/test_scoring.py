import math

import pytest
from scipy import stats

from evolver.scoring import compare, t_quantile


def test_consistent_gain_merges():
    c = compare([0, 1], [0.50, 0.60], [0.55, 0.64], margin=0.01, confidence=0.90)
    # gains 0.05, 0.04: mean 0.045, sd 0.00707, lb = 0.045 - 3.0777*0.005 = 0.0296
    assert c.verdict == "merge"
    assert c.lower_bound == pytest.approx(0.045 - 3.077684 * 0.0070710678 / math.sqrt(2), abs=1e-6)


def test_noisy_gain_is_rejected_even_with_positive_mean():
    c = compare([0, 1], [0.50, 0.60], [0.62, 0.58], margin=0.01)
    assert c.mean_gain == pytest.approx(0.05)
    assert c.verdict == "reject"
    assert "lower bound" in c.reason


def test_gain_below_margin_rejected():
    c = compare([0, 1, 2], [0.5, 0.5, 0.5], [0.505, 0.506, 0.504], margin=0.01)
    assert c.verdict == "reject"
    assert "margin" in c.reason


def test_single_seed_is_inconclusive():
    c = compare([0], [0.5], [0.9])
    assert c.verdict == "inconclusive"


def test_nan_rejects():
    assert compare([0, 1], [0.5, float("nan")], [0.6, 0.7]).verdict == "reject"


def test_quantiles():
    # textbook one-sided values, now computed by scipy.stats rather than typed in
    assert t_quantile(0.95, 1) == pytest.approx(6.314, abs=1e-3)
    assert t_quantile(0.90, 1) == pytest.approx(3.078, abs=1e-3)
    assert t_quantile(0.80, 30) == pytest.approx(0.854, abs=1e-3)
    # beyond the old 30-row table the exact t value is used, not the normal quantile 1.2816
    assert t_quantile(0.90, 100) == pytest.approx(stats.t.ppf(0.90, 100))
    assert t_quantile(0.90, 100) > stats.norm.ppf(0.90)
    # any level strictly between 0.5 and 1 now works
    assert t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile(0.5, 3)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)
    with pytest.raises(ValueError):
        compare([0, 1], [0.1], [0.2, 0.3])


def test_other_confidence_levels_work():
    c = compare([0, 1, 2], [0.5, 0.5, 0.5], [0.55, 0.56, 0.54], margin=0.01, confidence=0.99)
    assert c.verdict == "merge"
    assert c.lower_bound == pytest.approx(0.05 - stats.t.ppf(0.99, 2) * 0.01 / math.sqrt(3))
