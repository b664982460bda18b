"""The host's clock of training: what a train stage may spend, decided from host-measured seconds only.

The trainer decides when it stops, and it runs in the same process as the harness, so nothing it says
about its own time is evidence. The host measures two things it owns:

- the **kill**: a train stage is killed at its budget plus a setup allowance. For a candidate the allowance
  shrinks to what its parent actually needed beyond the budget (``setup_allowance_for``: twice the parent's
  host-measured overhead, at least ALLOWANCE_FLOOR_S, never more than the configured ceiling), so a
  trainer cannot keep training through an allowance sized for the slowest start-up;
- the **pair**: the candidate's train stage and its parent's run beside each other on the same seed, budget
  and resources. A candidate whose train stage the host measured longer than its parent's by more than
  ``overtime_tolerance`` fails with "trained past the budget" (``train_overtime``), whatever steps
  and seconds its trainer reports: an off-clock cooldown, a stretched budget check, a background thread that
  keeps the process alive, or a trainer that sleeps and then trains in the allowance all show up there.

What this cannot see: training that takes no extra wall time. A candidate whose own start-up is faster
than its parent's may train for the difference (bounded by the parent's overhead plus the tolerance), and
work moved into the start-up (a thread training while the data loads) is bounded the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

OVERTIME_TOLERANCE_S = 3.0
OVERTIME_TOLERANCE_FRAC = 0.05
OVERTIME_TOLERANCE_OF_SETUP = 0.1
"""A candidate's train stage may run longer than its parent's beside it by the largest of
OVERTIME_TOLERANCE_S, OVERTIME_TOLERANCE_FRAC x the budget and OVERTIME_TOLERANCE_OF_SETUP x the parent's
overhead in that pair (start-up time is what varies with the machine's load) before it is failed as having
trained past its budget. On a 2-core machine at load 9, two honest sides started together differed by about
1.2 s with an 18 s start-up."""
ALLOWANCE_FLOOR_S = 10.0
ALLOWANCE_FACTOR = 4.0
"""A candidate's setup allowance: ALLOWANCE_FACTOR x its parent's measured overhead, at least the floor. The
parent's start-up was measured at another time, under another load: on a shared 2-core machine 2x killed an
honest copy (start-up from 6 s to over 12 s), and 3x another (from 24 s to 75 s when the load doubled). The
pair check decides; the allowance only stops a runaway trainer sooner and bounds a stage without a pair."""
TRAINED_PAST_BUDGET = "trained past the budget"


def overtime_tolerance(budget_seconds: float, parent_overhead_s: float = 0.0) -> float:
    """Host seconds a candidate's train stage may exceed its parent's beside it (same seed and budget), whose
    own train stage took ``parent_overhead_s`` beyond the budget."""
    return max(OVERTIME_TOLERANCE_S, OVERTIME_TOLERANCE_FRAC * float(budget_seconds),
               OVERTIME_TOLERANCE_OF_SETUP * max(0.0, float(parent_overhead_s)))


def _seconds(evidence: Mapping[str, Any], key: str) -> float | None:
    value = evidence.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def train_overtime(parent: Mapping[str, Any], candidate: Mapping[str, Any],
                   tolerance_s: float | None = None) -> str | None:
    """The failure reason when the candidate's train stage ran longer than its parent's beside it by more than
    the tolerance, by the host's clock; None when it did not (or when either side has no host measurement,
    which only a failed or lost side lacks, and those are judged elsewhere). ``parent`` and ``candidate``: the
    pair's evidence (evolver/execute/cascade.py: ``train_host_seconds``, ``budget_seconds``, ``steps``)."""
    mine, theirs = _seconds(candidate, "train_host_seconds"), _seconds(parent, "train_host_seconds")
    if mine is None or theirs is None:
        return None
    budget = _seconds(candidate, "budget_seconds") or _seconds(parent, "budget_seconds") or 0.0
    tolerance = overtime_tolerance(budget, theirs - budget) if tolerance_s is None else float(tolerance_s)
    if mine <= theirs + tolerance:
        return None
    steps = candidate.get("steps")
    claimed = _seconds(candidate, "claimed_seconds")
    said = f"; its trainer reported {steps!r} steps in {claimed:.1f}s" if claimed is not None else ""
    return (f"{TRAINED_PAST_BUDGET}: its train stage ran {mine:.1f}s by the host clock, {mine - theirs:.1f}s "
            f"longer than its parent's {theirs:.1f}s beside it on the same seed and {budget:g}s budget "
            f"(tolerance {tolerance:.1f}s){said}")


def parent_overhead(evidence: Iterable[Mapping[str, Any]]) -> float | None:
    """The most host seconds any of the parent's train stages took beyond its budget (start-up, data, model,
    final checkpoint); None when no train stage was measured."""
    found = []
    for ev in evidence:
        host, budget = _seconds(ev, "train_host_seconds"), _seconds(ev, "budget_seconds")
        if host is not None and budget is not None:
            found.append(max(0.0, host - budget))
    return max(found) if found else None


def setup_allowance_for(overhead_s: float | None, ceiling_s: float) -> float:
    """A candidate's setup allowance: ALLOWANCE_FACTOR x the parent's measured overhead, at least
    ALLOWANCE_FLOOR_S and at most ``ceiling_s`` (the configured allowance, also what an unmeasured parent
    gets)."""
    if overhead_s is None:
        return float(ceiling_s)
    return min(float(ceiling_s), max(ALLOWANCE_FLOOR_S, ALLOWANCE_FACTOR * float(overhead_s)))
