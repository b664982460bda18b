"""Guard tasks: a winner must not buy its gain on the run's task with a regression elsewhere.

With ``--guard-tasks maze,...`` a candidate that passed its confirmation is, before it merges (or waits for
review), also trained and scored beside its parent on each guard task: seed pairs like the judgement's (both
sides at once, same budget, same seed), on the confirmation's fresh seeds, as many pairs as the confirmation
had (``--confirm-seeds``), each guard task on its own secret-seeded splits of the run.

**The rule.** For each guard task, with the paired gains d_i = candidate_i - parent_i (i = 1..n), the
one-sided upper confidence bound of the mean gain at the confirmation's level alpha (the level its own test
used, so the run's error level) is ``UCB = mean + t(1 - alpha, n - 1) * sd / sqrt(n)``. The guard passes when
``UCB > -margin``; it blocks the merge when ``UCB <= -margin``: the data then show, at the run's error level,
a mean loss on that task larger than the margin. A candidate side that fails on a guard task (its training or
scoring broke there) blocks as well. A guard that cannot be measured (the parent itself fails there, or more
than ``MAX_VOID`` pairs were lost by the executor) blocks nothing and says so. Guards only ever remove merges,
so they spend none of the run's alpha.

Cost: ``len(guard_tasks) * confirm_seeds`` extra seed pairs per confirmed winner (README, "Guard tasks").
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy import stats

from evolver.judge.pairs import EXECUTOR_STAGE, SideRun
from evolver.judge.promotion import fresh_seeds

MAX_VOID = 3
GUARD_PHASE = "guard"

SubmitPair = Callable[[str, list[str], int], "list[Future[SideRun]]"]
"""submit_pair(task, sides, seed): start both sides of one guard pair on ``task``; futures in that order."""


def rule_text(margin: float) -> str:
    return (f"guards: on each guard task the winner is trained beside its parent on the confirmation's fresh seeds; "
            f"the merge is blocked when the one-sided upper confidence bound of the mean paired gain at the "
            f"confirmation's level is <= -{margin:g} (a regression beyond the margin), or when the candidate fails "
            "there")


def upper_bound(gains: Sequence[float], level: float) -> tuple[float, float, float, float]:
    """(mean, sd, t, UCB) of the paired gains at one-sided ``level``; with one gain the bound is +inf."""
    xs = [float(g) for g in gains]
    n = len(xs)
    mean = statistics.fmean(xs)
    if n < 2:
        return mean, 0.0, math.inf, math.inf
    sd = statistics.stdev(xs)
    t = float(stats.t.isf(level, n - 1))
    return mean, sd, t, mean + t * sd / math.sqrt(n)


@dataclass
class GuardResult:
    """One guard task's pairs and decision."""

    task: str
    verdict: str  # "pass" | "block" | "unmeasured"
    reason: str
    level: float
    margin: float
    seeds: list[int] = field(default_factory=list)
    parent: list[float] = field(default_factory=list)
    candidate: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)
    mean: float | None = None
    sd: float | None = None
    upper_bound: float | None = None
    void_pairs: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["upper_bound"] is not None and math.isinf(out["upper_bound"]):
            out["upper_bound"] = None  # JSON has no infinity; one pair bounds nothing
        return out

    def trailer(self) -> str:
        """The merge message's one-line summary (also the ``Guard-<task>`` trailer)."""
        ub = "n/a" if self.upper_bound is None or math.isinf(self.upper_bound) else f"{self.upper_bound:+.4f}"
        mean = "n/a" if self.mean is None else f"{self.mean:+.4f}"
        return f"{self.verdict}; mean gain {mean}, upper bound {ub} at level {self.level:.4g}, n {len(self.gains)}"


@dataclass
class GuardReport:
    results: list[GuardResult]
    rule: str

    @property
    def blocked(self) -> list[GuardResult]:
        return [r for r in self.results if r.verdict == "block"]

    def reason(self) -> str:
        return "; ".join(f"guard {r.task}: {r.reason}" for r in self.blocked)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "blocked": [r.task for r in self.blocked],
                "tasks": [r.to_dict() for r in self.results]}


def decide(task: str, seeds: list[int], parent: list[float], candidate: list[float], *, level: float,
           margin: float, void_pairs: int = 0) -> GuardResult:
    """The guard rule (module docstring) on one task's complete pairs."""
    gains = [c - p for p, c in zip(parent, candidate, strict=True)]
    res = GuardResult(task, "pass", "", level, margin, list(seeds), list(parent), list(candidate), gains,
                      void_pairs=void_pairs)
    if not gains:
        res.verdict, res.reason = "unmeasured", "no pair was measured"
        return res
    mean, sd, t, ub = upper_bound(gains, level)
    res.mean, res.sd, res.upper_bound = mean, sd, ub
    stat = (f"on {len(gains)} pair(s) the mean gain is {mean:+.4f} (sd {sd:.4f}), its one-sided upper bound at "
            f"level {level:.4g} is {'n/a' if math.isinf(ub) else f'{ub:+.4f}'}")
    if ub <= -margin:
        res.verdict, res.reason = "block", f"{stat}, at or below -{margin:g}: a regression beyond the margin"
    else:
        res.verdict, res.reason = "pass", f"{stat}, above -{margin:g}"
    return res


def run_guards(tasks: Sequence[str], submit_pair: SubmitPair, *, seeds: Sequence[int], used: Sequence[int],
               level: float, margin: float, log: Callable[[str], None] = lambda _m: None) -> GuardReport:
    """Train and score both sides on every guard task, one seed pair at a time (``seeds``; a pair the executor
    lost is replaced by a fresh seed not in ``used``), and decide each guard."""
    results = []
    for task in tasks:
        taken = {int(s) for s in used} | {int(s) for s in seeds}
        queue = [int(s) for s in seeds]
        got_seeds: list[int] = []
        parents: list[float] = []
        cands: list[float] = []
        voids = 0
        verdict: GuardResult | None = None
        while len(got_seeds) < len(seeds):
            if not queue:
                seed = fresh_seeds(taken, 1, start=max(taken) + 1)[0]
                taken.add(seed)
            else:
                seed = queue.pop(0)
            fp, fc = submit_pair(task, ["parent", "candidate"], seed)
            parent, cand = fp.result(), fc.result()
            lost = EXECUTOR_STAGE in (parent.failed_stage, cand.failed_stage)
            if not lost and not cand.ok:
                verdict = GuardResult(task, "block", f"the candidate fails on seed {seed} at {cand.failed_stage}: "
                                      f"{cand.reason}", level, margin, got_seeds + [seed], parents, cands,
                                      void_pairs=voids)
                break
            if not lost and not parent.ok:
                verdict = GuardResult(task, "unmeasured", f"the parent itself fails on seed {seed} at "
                                      f"{parent.failed_stage}: {parent.reason}; this guard says nothing", level,
                                      margin, got_seeds, parents, cands, void_pairs=voids)
                break
            if lost or parent.score is None or cand.score is None:
                voids += 1
                log(f"guard {task} seed {seed}: void ({parent.reason or cand.reason or 'not scored'})")
                if voids > MAX_VOID:
                    verdict = GuardResult(task, "unmeasured", f"{voids} guard pairs were void; this guard says "
                                          "nothing", level, margin, got_seeds, parents, cands, void_pairs=voids)
                    break
                continue
            got_seeds.append(seed)
            parents.append(float(parent.score))
            cands.append(float(cand.score))
            log(f"guard {task} seed {seed}: parent {parent.score:.3f} candidate {cand.score:.3f} "
                f"gain {float(cand.score) - float(parent.score):+.3f}")
        if verdict is None:
            verdict = decide(task, got_seeds, parents, cands, level=level, margin=margin, void_pairs=voids)
        log(f"guard {task}: {verdict.verdict}: {verdict.reason}")
        results.append(verdict)
    return GuardReport(results, rule_text(margin))
