"""The merge rule: a candidate wins only when it beats the baseline, measured on the same seeds and budget,
by more than the noise.

For seeds s = 1..n the paired gains are d_s = candidate_s - baseline_s (held-out exact accuracy).
A candidate is merged when both hold:

1. the mean gain exceeds the margin: mean(d) > margin (default 0.01, one point of exact accuracy);
2. the one-sided lower confidence bound of the mean gain is above zero:
   mean(d) - t(confidence, n - 1) * sd(d) / sqrt(n) > 0 (Student t quantile from scipy.stats, default
   confidence 0.90).

With a single seed there is no estimate of the noise, so no candidate is merged ("inconclusive").

This fixed-seed rule is weak with few seeds (two seeds at 90%: a null change merges 6-10% of the time);
`evolver.promotion` holds the sequential, confirmed rule with run-level error control.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from scipy import stats

RULE_TEXT = (
    "merge iff mean paired gain > margin AND one-sided {conf:.0%} lower bound of the mean gain > 0 "
    "(gains = candidate - baseline held-out score on the same seeds and budget)"
)


def t_quantile(confidence: float, dof: int) -> float:
    """One-sided Student t quantile: the value t with P(T_dof <= t) = confidence (scipy.stats.t.ppf)."""
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0.5 and 1, got {confidence}")
    if dof < 1:
        raise ValueError("need at least one degree of freedom (two seeds)")
    return float(stats.t.ppf(confidence, dof))


@dataclass
class Comparison:
    verdict: str  # "merge" | "reject" | "inconclusive"
    reason: str
    rule: str
    seeds: list[int]
    baseline: list[float]
    candidate: list[float]
    gains: list[float]
    mean_gain: float
    lower_bound: float | None
    margin: float
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    seeds: list[int],
    baseline: list[float],
    candidate: list[float],
    *,
    margin: float = 0.01,
    confidence: float = 0.90,
) -> Comparison:
    """Apply the merge rule to per-seed scores (same seeds, same order)."""
    if not (len(seeds) == len(baseline) == len(candidate)) or not seeds:
        raise ValueError("seeds, baseline and candidate scores must be non-empty and of equal length")
    gains = [c - b for b, c in zip(baseline, candidate, strict=True)]
    n = len(gains)
    mean_gain = statistics.fmean(gains)
    rule = RULE_TEXT.format(conf=confidence)
    common = dict(rule=rule, seeds=list(seeds), baseline=list(baseline), candidate=list(candidate),
                  gains=gains, mean_gain=mean_gain, margin=margin, confidence=confidence)
    if any(math.isnan(x) for x in baseline + candidate):
        return Comparison(verdict="reject", reason="a score is NaN", lower_bound=None, **common)
    if n < 2:
        return Comparison(verdict="inconclusive", lower_bound=None,
                          reason=f"one seed gives no noise estimate (gain {mean_gain:+.4f}); run with >= 2 seeds",
                          **common)
    sd = statistics.stdev(gains)
    lower = mean_gain - t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    if mean_gain <= margin:
        reason = f"mean gain {mean_gain:+.4f} is not above the margin {margin:.4f}"
        verdict = "reject"
    elif lower <= 0:
        reason = f"mean gain {mean_gain:+.4f} > margin but the {confidence:.0%} lower bound {lower:+.4f} is not above 0"
        verdict = "reject"
    else:
        reason = f"mean gain {mean_gain:+.4f} > margin {margin:.4f} and {confidence:.0%} lower bound {lower:+.4f} > 0"
        verdict = "merge"
    return Comparison(verdict=verdict, reason=reason, lower_bound=lower, **common)
