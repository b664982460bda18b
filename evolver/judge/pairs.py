"""Judging one candidate against its parent: seed pairs measured side by side, the sequential selection
test, confirmation on fresh seeds, and the run-wide error control (the rules are in evolver/judge/promotion.py).

A *pair* trains and scores the parent and the candidate on the same seed, with the same budget and
resources, at the same time (two sandboxes side by side, each with half the machine), so that what the
machine was doing while they trained is shared by both sides. The noise guard (``NoiseGuard`` in
evolver/judge/promotion.py) voids a side-by-side pair only when its two sides did not run under the same
conditions (the parent's steps/s moved from the comparison's median and the candidate's did not move with
it), and a serial pair (``side_by_side=False``) when the parent's steps/s moved from its running median. A
void pair is recorded, not judged, and replaced by a pair on a new seed. Too many void pairs and the whole
comparison is void. Side by side, the first pairs of a comparison are judged together, against their own
medians, once enough of them are in and before any look reads them: a transient at the start voids at
most the pairs it hit.

This module decides nothing about git; it only needs a callable that measures one side on one seed, or
one that starts measuring it and gives a future (``submit``: an executor, evolver/execute/local.py). A side the
executor could not run (its node was lost; failed_stage "executor") says nothing about either tree: its pair
is void too, and replaced like any other void pair.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from evolver.judge.clock import train_overtime
from evolver.judge.promotion import (
    ConfirmationRule,
    Decision,
    NoiseGuard,
    RunErrorControl,
    SelectionRule,
    decide_confirmation,
    decide_selection,
    describe,
    fresh_seeds,
    pair_conditions,
    steps_per_second,
    throughput_drift,
)
from evolver.verdicts import PASSED

THROUGHPUT_TOLERANCE = 0.25
MAX_VOID_PAIRS = 3
EARLY_STOP = "early-stop"
"""The failed_stage of a candidate side the host stopped early (evolver/judge/early_stop.py): the judge rejects it."""
EXECUTOR_STAGE = "executor"
"""The failed_stage of a side that its executor could not run (node lost, no answer): nobody's fault."""
CONFIRMATION_SEED_START = 100_000
CONFIRMATION_SEED_BLOCK = 1_000
"""The j-th confirmation of a run draws its seeds from CONFIRMATION_SEED_START + (j - 1) * BLOCK upwards:
disjoint from every selection seed and from every other confirmation of the run, so each confirmation's
data is independent of everything decided before it (what the run-level error control needs)."""


@dataclass
class SideRun:
    """One side (parent or candidate) trained and scored on one seed."""

    ok: bool
    score: float | None = None
    reason: str = ""
    failed_stage: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)  # steps, steps/s, host seconds, checks ...


MeasureSide = Callable[[str, int, str], SideRun]
"""measure(side, seed, phase) with side "parent" | "candidate" and phase "selection" | "confirmation"."""
SubmitSide = Callable[[str, int, str], "Future[SideRun]"]
"""submit(side, seed, phase): start measuring one side and return a future of its SideRun."""
SubmitPair = Callable[[list[str], int, str], "list[Future[SideRun]]"]
"""submit_pair(sides, seed, phase): start measuring the sides together (an executor group: both start at once,
never one of them beside another candidate's job) and return futures of their SideRuns in that order."""


@dataclass
class SeedPair:
    seed: int
    phase: str
    parent: float | None
    candidate: float | None
    gain: float | None
    parent_evidence: dict[str, Any]
    candidate_evidence: dict[str, Any]
    load_before: float | None
    load_after: float | None
    void: bool = False
    void_reason: str = ""


@dataclass
class Judgement:
    verdict: str  # PASSED | "rejected" | "inconclusive" | "failed" | "void"
    reason: str
    pairs: list[SeedPair]
    selection: Decision | None = None
    confirmation: Decision | None = None
    failed_stage: str | None = None
    failed_seed: int | None = None
    rule: str = ""
    confirmation_level: float | None = None

    def gains(self, phase: str) -> list[float]:
        return [p.gain for p in self.pairs if p.phase == phase and not p.void and p.gain is not None]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "verdict": self.verdict, "reason": self.reason, "rule": self.rule,
            "failed_stage": self.failed_stage, "failed_seed": self.failed_seed,
            "confirmation_level": self.confirmation_level,
            "selection": self.selection.to_dict() if self.selection else None,
            "confirmation": self.confirmation.to_dict() if self.confirmation else None,
            "pairs": [asdict(p) for p in self.pairs],
        }
        for phase in ("selection", "confirmation"):
            sel = [p for p in self.pairs if p.phase == phase and not p.void]
            out[f"{phase}_seeds"] = [p.seed for p in sel]
            out[f"{phase}_parent"] = [p.parent for p in sel]
            out[f"{phase}_candidate"] = [p.candidate for p in sel]
            out[f"{phase}_gains"] = [p.gain for p in sel]
        return out


def _load() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def clock_checked(parent: SideRun, cand: SideRun) -> tuple[SideRun, SideRun]:
    """The pair's sides, the candidate failed at "train" when the host measured its train stage longer than
    its parent's beside it by more than the tolerance (evolver/judge/clock.py): the host owns the clock of
    training, whatever the trainer reports."""
    if parent.ok and cand.ok:
        overtime = train_overtime(parent.evidence, cand.evidence)
        if overtime:
            return parent, SideRun(False, reason=overtime, failed_stage="train", evidence=cand.evidence)
    return parent, cand


class CandidateJudge:
    """Runs seed pairs until the promotion rules decide. ``side_by_side``: measure both sides at once,
    through ``submit_pair`` or ``submit`` when given (an executor), else on two local threads calling
    ``measure``. ``before_confirmation``: called once selection has passed, before the confirmation takes
    its level (a cohort waits there for its turn); it returns True when the pairs now measure a new parent
    (a rebased candidate), whose own throughput then becomes the reference."""

    conditions = staticmethod(pair_conditions)
    """The side-by-side condition check (benchmarks/bench_promotion.py swaps in ablations of it)."""

    def __init__(self, measure: MeasureSide, *, selection: SelectionRule, confirmation: ConfirmationRule,
                 control: RunErrorControl, first_seeds: list[int], side_by_side: bool = True,
                 tolerance: float = THROUGHPUT_TOLERANCE, reference_rate: float | None = None,
                 on_pair: Callable[[SeedPair], None] | None = None, submit: SubmitSide | None = None,
                 on_control: Callable[[], None] | None = None, proposal_id: str | None = None,
                 submit_pair: SubmitPair | None = None,
                 before_confirmation: Callable[[], bool] | None = None,
                 guard: NoiseGuard | None = None) -> None:
        self.measure = measure
        self.submit = submit
        self.submit_pair = submit_pair
        self.before_confirmation = before_confirmation
        self.on_control = on_control
        self.proposal_id = proposal_id
        self.selection_rule = selection
        self.confirmation_rule = confirmation
        self.control = control
        self.first_seeds = list(first_seeds)
        self.side_by_side = side_by_side
        self.tolerance = tolerance
        self.guard = guard if guard is not None else NoiseGuard(
            tolerance=tolerance, max_void=MAX_VOID_PAIRS, side_by_side=side_by_side,
            settle_pairs=selection.min_seeds)
        # serial pairs: the parent's steps/s of the non-void pairs so far (the old parent-throughput guard)
        self.parent_rates: list[float] = [reference_rate] if reference_rate else []
        # side by side: every scored pair measured against the current parent (void ones included), and the
        # pairs whose conditions are not judged yet (the first ones of a comparison wait for each other)
        self.history: list[SeedPair] = []
        self.pending: list[SeedPair] = []
        self.on_pair = on_pair

    # ------------------------------------------------------------------ one pair
    def _pair(self, seed: int, phase: str) -> tuple[SeedPair, SideRun, SideRun]:
        load_before = _load()
        parent, cand = clock_checked(*self._sides(seed, phase))
        pair = SeedPair(seed=seed, phase=phase, parent=parent.score, candidate=cand.score, gain=None,
                        parent_evidence=parent.evidence, candidate_evidence=cand.evidence,
                        load_before=load_before, load_after=_load())
        lost = [f"{name}: {run.reason}" for name, run in (("parent", parent), ("candidate", cand))
                if not run.ok and run.failed_stage == EXECUTOR_STAGE]
        if lost:
            pair.void, pair.void_reason = True, "; ".join(lost)
        elif parent.ok and cand.ok and parent.score is not None and cand.score is not None:
            pair.gain = float(cand.score) - float(parent.score)
            if self.guard.side_by_side:
                self.history.append(pair)
                self.pending.append(pair)
                return pair, parent, cand  # reported when its conditions are judged (settle)
            rate = steps_per_second(parent.evidence)
            if rate is not None:
                if self.parent_rates:
                    ok, why = throughput_drift(rate, statistics.median(self.parent_rates), self.guard.tolerance)
                    if not ok:
                        pair.void, pair.void_reason = True, why
                if not pair.void:
                    self.parent_rates.append(rate)
        if self.on_pair:
            self.on_pair(pair)
        return pair, parent, cand

    def settle(self, force: bool = False) -> list[SeedPair]:
        """Judge the conditions of the pending side-by-side pairs, once ``guard.settle_pairs`` pairs of the
        comparison are in (or at once with ``force``), against the medians of every pair measured so far;
        returns the pairs settled now. Until then no decision reads them."""
        if not self.pending or (len(self.history) < self.guard.settle_pairs and not force):
            return []
        parents = [steps_per_second(p.parent_evidence) for p in self.history]
        cands = [steps_per_second(p.candidate_evidence) for p in self.history]
        settled, self.pending = self.pending, []
        where = {id(p): i for i, p in enumerate(self.history)}
        for pair in settled:
            ok, why = self.conditions(parents, cands, where[id(pair)], self.guard.tolerance)
            if not ok:
                pair.void, pair.void_reason = True, why
            if self.on_pair:
                self.on_pair(pair)
        return settled

    def new_parent(self) -> None:
        """The pairs now measure another parent (a rebase): its own throughput becomes the reference."""
        self.parent_rates = []
        self.history = []

    def _sides(self, seed: int, phase: str) -> tuple[SideRun, SideRun]:
        """The parent's and the candidate's SideRun on ``seed``, side by side or one after the other."""
        if self.side_by_side and self.submit_pair is not None:
            fp, fc = self.submit_pair(["parent", "candidate"], seed, phase)
            return fp.result(), fc.result()
        if self.side_by_side and self.submit is not None:
            fp = self.submit("parent", seed, phase)
            fc = self.submit("candidate", seed, phase)
            return fp.result(), fc.result()
        if self.side_by_side:
            with ThreadPoolExecutor(max_workers=2) as pool:
                fp = pool.submit(self.measure, "parent", seed, phase)
                fc = pool.submit(self.measure, "candidate", seed, phase)
                return fp.result(), fc.result()
        # alternate the order so that a drifting machine favours neither side
        if seed % 2 == 0:
            parent = self._one("parent", seed, phase)
            return parent, self._one("candidate", seed, phase)
        cand = self._one("candidate", seed, phase)
        return self._one("parent", seed, phase), cand

    def _one(self, side: str, seed: int, phase: str) -> SideRun:
        return self.measure(side, seed, phase) if self.submit is None else self.submit(side, seed, phase).result()

    # ------------------------------------------------------------------ the judgement
    def judge(self) -> Judgement:
        rule_text = describe(self.selection_rule, self.confirmation_rule, self.control, self.guard)
        pairs: list[SeedPair] = []
        used: set[int] = set()
        queue = list(self.first_seeds)
        next_seed = max(self.first_seeds, default=-1) + 1
        decision: Decision | None = None
        while True:
            if queue:
                seed = queue.pop(0)
            else:
                while next_seed in used:
                    next_seed += 1
                seed, next_seed = next_seed, next_seed + 1
            used.add(seed)
            pair, parent, cand = self._pair(seed, "selection")
            pairs.append(pair)
            failed = self._failure(pair, parent, cand, pairs, rule_text)
            if failed:
                self.settle(force=True)  # the pairs before it are recorded with their conditions judged
                return failed
            self.settle()
            void = self._too_many_voids(pairs, decision, rule_text, "the machine is too unsteady to judge this "
                                        "candidate")
            if void:
                return void
            if self.pending or pair.void:
                continue
            decision = decide_selection([p.gain for p in pairs if p.phase == "selection" and not p.void
                                         and p.gain is not None], self.selection_rule)
            if decision.finished:
                break
        assert decision is not None
        if not decision.passed:
            inconclusive = "inconclusive" in decision.reason
            return Judgement("inconclusive" if inconclusive else "rejected", decision.reason, pairs, decision,
                             rule=rule_text)
        if self.before_confirmation and self.before_confirmation():
            self.new_parent()  # a new parent (a cohort's rebase): its own throughput is the reference
        start = CONFIRMATION_SEED_START + self.control.attempts * CONFIRMATION_SEED_BLOCK
        level = self.control.begin(self.proposal_id)
        if self.on_control:  # persisted before any confirmation pair runs: a stop cannot re-roll this level
            self.on_control()
        confirm_seeds = fresh_seeds(used, self.confirmation_rule.seeds, start=start)
        need = self.confirmation_rule.seeds

        def counted() -> list[SeedPair]:
            return [p for p in pairs if p.phase == "confirmation" and not p.void and p.gain is not None
                    and not any(p is q for q in self.pending)]

        while len(counted()) < need or self.pending:
            if not confirm_seeds:
                confirm_seeds = fresh_seeds(used, 1, start=start)
            seed = confirm_seeds.pop(0)
            used.add(seed)
            pair, parent, cand = self._pair(seed, "confirmation")
            pairs.append(pair)
            failed = self._failure(pair, parent, cand, pairs, rule_text, selection=decision)
            if not failed:
                # never more than `need` pairs: pending ones (a rebased parent's first) settle at that count
                self.settle(force=len(counted()) + len(self.pending) >= need)
                failed = self._too_many_voids(pairs, decision, rule_text, "the confirmation cannot be judged")
            if failed:
                # A confirmation that was started counts as an attempt whatever ends it: retrying it at the
                # same level would break the run-level guarantee.
                self.control.record(False)
                failed.confirmation_level = level
                return failed
        gains = [p.gain for p in counted() if p.gain is not None]
        confirmation = decide_confirmation(gains, self.confirmation_rule, alpha=level)
        self.control.record(confirmation.passed)
        verdict = PASSED if confirmation.passed else "rejected"
        return Judgement(verdict, confirmation.reason, pairs, decision, confirmation, rule=rule_text,
                         confirmation_level=level)

    def _too_many_voids(self, pairs: list[SeedPair], decision: Decision | None, rule_text: str,
                        what: str) -> Judgement | None:
        void = [p for p in pairs if p.void]
        if len(void) <= self.guard.max_void:
            return None
        return Judgement("void", f"{len(void)} seed pairs were void (last: {void[-1].void_reason}); {what}", pairs,
                         decision, rule=rule_text)

    @staticmethod
    def _failure(pair: SeedPair, parent: SideRun, cand: SideRun, pairs: list[SeedPair], rule_text: str,
                 selection: Decision | None = None) -> Judgement | None:
        if EXECUTOR_STAGE in (cand.failed_stage, parent.failed_stage):
            return None  # a lost side voids its pair (see _pair), it fails nothing
        if not cand.ok and cand.failed_stage == EARLY_STOP:  # the host stopped it: a rejection, not a failure
            return Judgement("rejected", f"{pair.phase} seed {pair.seed}: {cand.reason}", pairs, selection,
                             failed_seed=pair.seed, rule=rule_text)
        if not cand.ok:
            return Judgement("failed", f"{cand.failed_stage} (seed {pair.seed}): {cand.reason}", pairs, selection,
                             failed_stage=cand.failed_stage, failed_seed=pair.seed, rule=rule_text)
        if not parent.ok:
            return Judgement("void", f"the parent itself failed on seed {pair.seed} at {parent.failed_stage}: "
                             f"{parent.reason}", pairs, selection, rule=rule_text)
        return None
