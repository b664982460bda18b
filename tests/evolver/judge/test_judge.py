"""The judgement of one candidate: seed pairs side by side, sequential selection, confirmation on fresh
seeds, void pairs when the two sides of a pair did not train under the same conditions (side by side) or the
unchanged side's throughput moved (serial pairs). The measuring function here is scripted
(scores drawn from a seeded generator), so the rules and their bookkeeping are what is tested."""

from __future__ import annotations

import threading
import time

import numpy as np

from evolver.judge.pairs import CONFIRMATION_SEED_START, CandidateJudge, SideRun
from evolver.judge.promotion import ConfirmationRule, RunErrorControl, SelectionRule


def scripted(effect: float, noise: float = 0.03, rates: dict[int, float] | None = None,
             fail_seed: int | None = None):
    calls: list[tuple[str, int, str]] = []

    def measure(side: str, seed: int, phase: str) -> SideRun:
        calls.append((side, seed, phase))
        rng = np.random.default_rng([seed, 0 if side == "parent" else 1])
        base = 0.5 + 0.05 * np.random.default_rng(seed).standard_normal()  # shared by both sides of a seed
        score = base + noise * rng.standard_normal() + (effect if side == "candidate" else 0.0)
        if side == "candidate" and seed == fail_seed:
            return SideRun(False, reason="train: killed by the host clock", failed_stage="train")
        rate = (rates or {}).get(seed, 5.0) if side == "parent" else 5.0
        return SideRun(True, float(score), evidence={"steps_per_second": rate, "steps": 100})

    return measure, calls


def judge(measure, **kwargs) -> CandidateJudge:
    return CandidateJudge(measure, selection=SelectionRule(), confirmation=ConfirmationRule(),
                          control=kwargs.pop("control", RunErrorControl()), first_seeds=[0, 1, 2], **kwargs)


def test_a_clearly_better_candidate_is_confirmed_on_fresh_seeds() -> None:
    measure, calls = scripted(effect=0.15)
    control = RunErrorControl()
    j = judge(measure, control=control).judge()
    assert j.verdict == "passed", j.reason
    assert j.confirmation is not None and j.confirmation.passed
    selection = set(j.to_dict()["selection_seeds"])
    confirmation = j.to_dict()["confirmation_seeds"]
    assert len(confirmation) == ConfirmationRule().seeds
    assert all(s >= CONFIRMATION_SEED_START for s in confirmation) and not selection & set(confirmation)
    assert control.attempts == 1 and control.passes == 1
    assert "fresh seed pairs" in j.reason and j.rule.startswith("promotion:")
    assert {side for side, _, _ in calls} == {"parent", "candidate"}  # the parent is measured every pair


def test_confirmations_of_one_run_never_share_a_seed() -> None:
    control = RunErrorControl()
    first = judge(scripted(effect=0.15)[0], control=control).judge()
    second = judge(scripted(effect=0.15)[0], control=control).judge()
    a, b = first.to_dict()["confirmation_seeds"], second.to_dict()["confirmation_seeds"]
    assert a and b and not set(a) & set(b) and control.attempts == 2


def test_a_confirmation_cut_short_still_counts_as_an_attempt() -> None:
    control = RunErrorControl()
    j = judge(scripted(effect=0.15, fail_seed=CONFIRMATION_SEED_START + 2)[0], control=control).judge()
    assert j.verdict == "failed" and control.attempts == 1 and control.passes == 0


def test_a_null_candidate_is_not_merged() -> None:
    measure, _ = scripted(effect=0.0)
    j = judge(measure).judge()
    assert j.verdict in ("rejected", "inconclusive"), j.reason
    assert j.confirmation is None or not j.confirmation.passed


def test_a_clearly_worse_candidate_stops_early() -> None:
    measure, calls = scripted(effect=-0.2)
    j = judge(measure).judge()
    assert j.verdict == "rejected" and len(j.gains("selection")) < SelectionRule().max_seeds
    assert not any(phase == "confirmation" for _, _, phase in calls)


def test_a_pair_whose_parent_ran_at_another_speed_is_void_and_replaced() -> None:
    measure, _ = scripted(effect=0.15, rates={1: 2.0})  # the parent ran at 40% speed on seed 1
    j = judge(measure).judge()
    void = [p for p in j.pairs if p.void]
    assert [p.seed for p in void] == [1] and "did not move with it" in void[0].void_reason
    assert 1 not in j.to_dict()["selection_seeds"]
    assert j.verdict == "passed"


def test_an_unsteady_machine_voids_the_whole_comparison_of_serial_pairs() -> None:
    measure, _ = scripted(effect=0.15, rates={s: 2.0 if s % 2 else 9.0 for s in range(40)})
    j = judge(measure, side_by_side=False).judge()
    assert j.verdict == "void" and "seed pairs were void" in j.reason


def test_a_candidate_failing_on_a_seed_fails() -> None:
    measure, _ = scripted(effect=0.15, fail_seed=1)
    j = judge(measure).judge()
    assert j.verdict == "failed" and j.failed_stage == "train" and j.failed_seed == 1


def test_side_by_side_runs_both_sides_at_once_and_matches_a_serial_judgement() -> None:
    inside = threading.Semaphore(0)
    overlaps = []
    measure, _ = scripted(effect=0.15)

    def slow(side: str, seed: int, phase: str) -> SideRun:
        inside.release()
        time.sleep(0.02)
        overlaps.append(inside._value >= 1)  # the other side entered while this one ran
        out = measure(side, seed, phase)
        inside.acquire()
        return out

    concurrent = judge(slow, side_by_side=True).judge()
    serial = judge(scripted(effect=0.15)[0], side_by_side=False).judge()
    assert any(overlaps)
    assert concurrent.verdict == serial.verdict
    assert concurrent.to_dict()["selection_gains"] == serial.to_dict()["selection_gains"]


class Stop(Exception):
    """Stands for the run being killed in the middle of a confirmation."""


def test_a_confirmation_cut_short_is_spent_on_resume_never_rerolled() -> None:
    measure, _ = scripted(effect=0.15)
    saved: list[dict] = []
    control = RunErrorControl()

    def dying(side: str, seed: int, phase: str) -> SideRun:
        if phase == "confirmation":
            raise Stop
        return measure(side, seed, phase)

    j = judge(dying, control=control, on_control=lambda: saved.append(control.to_dict()), proposal_id="p-cut")
    try:
        j.judge()
    except Stop:
        pass
    # what the run had persisted when it died: the confirmation opened at level w_1, not yet recorded
    assert len(saved) == 1 and saved[0]["attempts"] == 0
    assert saved[0]["open_attempt"]["proposal_id"] == "p-cut"
    resumed = RunErrorControl.from_dict(saved[-1])
    first_level = resumed.next_level()
    pending = resumed.settle_interrupted()
    assert pending is not None and pending["level"] == first_level
    assert resumed.attempts == 1 and resumed.passes == 0 and resumed.open_attempt is None
    assert resumed.history[-1]["note"] == "interrupted before it ended" and resumed.history[-1]["proposal_id"] == "p-cut"
    assert resumed.next_level() < first_level  # the re-run is offered the second level, never the first again
    assert resumed.settle_interrupted() is None


def test_a_finished_confirmation_closes_its_attempt() -> None:
    control = RunErrorControl()
    judge(scripted(effect=0.15)[0], control=control, proposal_id="p-ok").judge()
    assert control.open_attempt is None and control.history[-1]["proposal_id"] == "p-ok"
    assert RunErrorControl.from_dict(control.to_dict()).open_attempt is None


# ---------------------------------------------------------------------------------------------- noise guard
# Pair evidence as the cascade records it (steps, steps/s, host seconds), with the throughputs of the run that
# motivated the side-by-side guard: a CPU hog beside the run for its first 150 s made the first pair train at
# 5.77 steps/s; after it ended the parent trained at 11.6-12.3 steps/s, and the old guard voided four pairs in a
# row and with them a real fix.
HOG_RATES = [5.77, 11.6, 12.3, 11.9, 12.1, 11.8, 12.0, 11.7, 12.2, 11.9, 12.0, 11.8, 12.1, 11.6, 12.3, 11.9]


def conditions(effect: float, parent_rate, cand_ratio: float = 0.97, cand_rate=None):
    """Scores as in `scripted`; each side's evidence: steps/s from ``parent_rate(pair index)`` (candidate:
    ``cand_rate(pair index)``, else the parent's times ``cand_ratio``), steps and host seconds to match."""
    order: list[int] = []
    base_measure, _ = scripted(effect)

    def measure(side: str, seed: int, phase: str) -> SideRun:
        if seed not in order:
            order.append(seed)
        k = order.index(seed)
        run = base_measure(side, seed, phase)
        rate = parent_rate(k) if side == "parent" else (cand_rate(k) if cand_rate else parent_rate(k) * cand_ratio)
        run.evidence = {"seed": seed, "steps_per_second": rate, "steps": int(rate * 40), "claimed_seconds": 40.0,
                        "train_host_seconds": 52.0, "budget_seconds": 40.0}
        return run

    return measure


def test_a_load_burst_in_the_first_pair_that_slows_both_sides_voids_nothing() -> None:
    j = judge(conditions(0.15, lambda k: HOG_RATES[k % len(HOG_RATES)])).judge()
    assert not [p for p in j.pairs if p.void]
    assert j.verdict == "passed", j.reason
    assert "noise guard (side by side)" in j.rule


def test_the_same_run_under_the_serial_guard_is_void() -> None:
    """The parent-throughput guard, kept for serial pairs, voids this comparison: the failure side by side
    pairs no longer have."""
    j = judge(conditions(0.15, lambda k: HOG_RATES[k % len(HOG_RATES)]), side_by_side=False).judge()
    assert j.verdict == "void" and "parent throughput moved" in j.reason
    assert "noise guard (serial pairs)" in j.rule


def test_a_burst_that_starved_only_the_parent_in_the_first_pair_voids_only_that_pair() -> None:
    # the first pair: the parent at half speed, the candidate at full speed; then a quiet machine
    j = judge(conditions(0.15, lambda k: 6.0 if k == 0 else 12.0, cand_rate=lambda k: 11.6)).judge()
    void = [p for p in j.pairs if p.void]
    assert [p.seed for p in void] == [0], [p.void_reason for p in void]
    assert "did not move with it" in void[0].void_reason
    assert 0 not in j.to_dict()["selection_seeds"] and j.verdict == "passed", j.reason


def test_a_hog_that_comes_and_goes_voids_nothing_side_by_side() -> None:
    j = judge(conditions(0.15, lambda k: 6.0 if (k // 2) % 2 else 12.0)).judge()
    assert not [p for p in j.pairs if p.void] and j.verdict == "passed", j.reason


def test_a_parent_starved_later_in_the_comparison_voids_that_pair() -> None:
    j = judge(conditions(0.15, lambda k: 5.0 if k == 4 else 12.0, cand_rate=lambda k: 11.6)).judge()
    assert [p.seed for p in j.pairs if p.void] == [j.pairs[4].seed]
    assert j.verdict == "passed"


def test_a_candidate_claiming_odd_rates_voids_nothing_while_the_parent_is_steady() -> None:
    """The candidate's steps/s is its own claim: claiming an odd rate on the pairs it fears must not void them
    (it would re-roll its unlucky seeds) while the trusted side, the parent, ran as usual."""
    j = judge(conditions(0.0, lambda k: 12.0, cand_rate=lambda k: 1.0 if k % 2 else 12.0)).judge()
    assert not [p for p in j.pairs if p.void]


def test_a_steadily_slower_candidate_is_judged_not_voided() -> None:
    """A change that costs compute per step runs slower in every pair: its ratio is steady, nothing is void."""
    j = judge(conditions(-0.2, lambda k: HOG_RATES[k % len(HOG_RATES)], cand_ratio=0.4)).judge()
    assert not [p for p in j.pairs if p.void] and j.verdict == "rejected"


def test_an_unsteady_pairing_voids_the_comparison_side_by_side() -> None:
    j = judge(conditions(0.15, lambda k: 4.0 if k % 2 else 12.0, cand_rate=lambda k: 12.0)).judge()
    assert j.verdict == "void" and "seed pairs were void" in j.reason


def test_the_first_pairs_are_reported_once_their_conditions_are_judged() -> None:
    seen: list[tuple[int, bool]] = []
    j = judge(conditions(0.15, lambda k: 6.0 if k == 0 else 12.0, cand_rate=lambda k: 11.6),
              on_pair=lambda p: seen.append((p.seed, p.void))).judge()
    assert seen[:3] == [(0, True), (1, False), (2, False)]  # reported together, after the third pair
    assert len(seen) == len(j.pairs)


def test_pairs_before_a_failure_are_reported_with_their_conditions_judged() -> None:
    seen: list[int] = []
    measure, _ = scripted(effect=0.15, fail_seed=1)
    j = judge(measure, on_pair=lambda p: seen.append(p.seed)).judge()
    assert j.verdict == "failed" and sorted(seen) == [0, 1]


def test_a_rebased_parent_of_another_speed_voids_nothing_and_confirms_on_its_own_medians() -> None:
    """A cohort's rebase: the confirmation measures a new parent, twice as fast, beside a candidate that is
    not; its pairs are judged against their own medians (the first of them together), not the old parent's."""
    measure = conditions(0.15, lambda k: 12.0 if k < 3 else 24.0, cand_rate=lambda k: 11.6 if k < 3 else 12.0)
    j = judge(measure, before_confirmation=lambda: True).judge()
    assert j.verdict == "passed", j.reason
    assert not [p for p in j.pairs if p.void]
    assert len(j.to_dict()["confirmation_gains"]) == ConfirmationRule().seeds


def test_a_confirmation_shorter_than_the_settled_batch_takes_exactly_its_seeds() -> None:
    measure = conditions(0.15, lambda k: 12.0 if k < 3 else 24.0, cand_rate=lambda k: 11.6 if k < 3 else 12.0)
    j = CandidateJudge(measure, selection=SelectionRule(), confirmation=ConfirmationRule(seeds=2),
                       control=RunErrorControl(), first_seeds=[0, 1, 2], before_confirmation=lambda: True).judge()
    assert j.verdict == "passed", j.reason
    assert len(j.to_dict()["confirmation_gains"]) == 2
