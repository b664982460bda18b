"""The judgement of one candidate: seed pairs side by side, sequential selection, confirmation on fresh
seeds, void pairs when the unchanged side's throughput moves. The measuring function here is scripted
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
    assert [p.seed for p in void] == [1] and "void this comparison" in void[0].void_reason
    assert 1 not in j.to_dict()["selection_seeds"]
    assert j.verdict == "passed"


def test_an_unsteady_machine_voids_the_whole_comparison() -> None:
    measure, _ = scripted(effect=0.15, rates={s: 2.0 if s % 2 else 9.0 for s in range(40)})
    j = judge(measure).judge()
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
