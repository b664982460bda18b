"""The merge rule: a candidate wins only when it beats the baseline, measured on the same seeds and budget,
by more than the noise.

For seeds s = 1..n the paired gains are d_s = candidate_s - baseline_s (held-out exact accuracy).
A candidate is merged when both hold:

1. the mean gain exceeds the margin: mean(d) > margin (default 0.01, one point of exact accuracy);
2. the one-sided lower confidence bound of the mean gain is above zero:
   mean(d) - t(confidence, n - 1) * sd(d) / sqrt(n) > 0 (Student t, default confidence 0.90).

With a single seed there is no estimate of the noise, so no candidate is merged ("inconclusive").
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

# One-sided Student t quantiles by degrees of freedom (1..30); beyond 30 the normal quantile is used.
_T_QUANTILES: dict[float, list[float]] = {
    0.80: [1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870, 0.868,
           0.866, 0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855,
           0.854, 0.854],
    0.90: [3.078, 1.886, 1.638, 1.533, 1.476, 1.440, 1.415, 1.397, 1.383, 1.372, 1.363, 1.356, 1.350, 1.345,
           1.341, 1.337, 1.333, 1.330, 1.328, 1.325, 1.323, 1.321, 1.319, 1.318, 1.316, 1.315, 1.314, 1.313,
           1.311, 1.310],
    0.95: [6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761,
           1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701,
           1.699, 1.697],
}
_NORMAL_QUANTILES = {0.80: 0.8416, 0.90: 1.2816, 0.95: 1.6449}

RULE_TEXT = (
    "merge iff mean paired gain > margin AND one-sided {conf:.0%} lower bound of the mean gain > 0 "
    "(gains = candidate - baseline held-out score on the same seeds and budget)"
)


def t_quantile(confidence: float, dof: int) -> float:
    """One-sided Student t quantile for the supported confidence levels."""
    if confidence not in _T_QUANTILES:
        raise ValueError(f"confidence must be one of {sorted(_T_QUANTILES)}, got {confidence}")
    if dof < 1:
        raise ValueError("need at least one degree of freedom (two seeds)")
    table = _T_QUANTILES[confidence]
    return table[dof - 1] if dof <= len(table) else _NORMAL_QUANTILES[confidence]


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
