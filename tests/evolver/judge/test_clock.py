"""The host's clock of training (evolver/judge/clock.py) on plain evidence: the pair check and the allowance."""

from __future__ import annotations

from evolver.judge.clock import (
    ALLOWANCE_FLOOR_S,
    TRAINED_PAST_BUDGET,
    overtime_tolerance,
    parent_overhead,
    setup_allowance_for,
    train_overtime,
)
from evolver.judge.pairs import SideRun, clock_checked


def _ev(host: float, budget: float = 60.0, claimed: float = 60.0) -> dict[str, float]:
    return {"train_host_seconds": host, "budget_seconds": budget, "claimed_seconds": claimed, "steps": 100}


def test_a_candidate_longer_than_its_parent_beside_it_fails_whatever_it_claims() -> None:
    tolerance = overtime_tolerance(60.0, 6.0)
    assert tolerance == 3.0
    assert train_overtime(_ev(66.0), _ev(66.0 + tolerance)) is None
    reason = train_overtime(_ev(66.0), _ev(66.0 + tolerance + 0.5, claimed=59.0))
    assert reason is not None and reason.startswith(TRAINED_PAST_BUDGET) and "59.0s" in reason
    assert train_overtime(_ev(66.0), {"budget_seconds": 60.0}) is None  # a side without a train stage


def test_the_tolerance_grows_with_the_budget_and_the_parents_start_up() -> None:
    assert overtime_tolerance(600.0) == 30.0
    assert overtime_tolerance(10.0, 50.0) == 5.0


def test_clock_checked_fails_only_the_candidate_at_train() -> None:
    parent = SideRun(True, 0.5, evidence=_ev(70.0))
    _, cand = clock_checked(parent, SideRun(True, 0.9, evidence=_ev(100.0)))
    assert not cand.ok and cand.failed_stage == "train" and cand.score is None
    _, same = clock_checked(parent, SideRun(True, 0.9, evidence=_ev(71.0)))
    assert same.ok and same.score == 0.9


def test_the_allowance_shrinks_to_the_parents_start_up() -> None:
    overhead = parent_overhead([_ev(64.0), _ev(67.0), {"seed": 3}])
    assert overhead == 7.0
    assert setup_allowance_for(overhead, 30.0) == 28.0
    assert setup_allowance_for(1.0, 30.0) == ALLOWANCE_FLOOR_S
    assert setup_allowance_for(10.0, 30.0) == 30.0
    assert setup_allowance_for(None, 30.0) == 30.0
