"""The two-sided Student t interval of a mean: the one the report, the request's history and the benchmarks
print (the promotion rule's one-sided bounds live with the rule, evolver/judge/promotion.py)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high) of ``values``; None without two values; a point when they do not vary."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values))
    if sem == 0 or not math.isfinite(sem):
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * sem
    return mean, mean - half, mean + half
