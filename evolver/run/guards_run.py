"""Running a confirmed winner's guard pairs through the run's executor, and what the merge commit says of them
and of the task (the rule: evolver/judge/guards.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from evolver.execute.job import StageJob
from evolver.judge.guards import GUARD_PHASE, GuardReport, run_guards
from evolver.judge.pairs import Judgement
from evolver.run.context import RunContext
from evolver.run.sides import ExecutorSides, side_finisher

if TYPE_CHECKING:
    from concurrent.futures import Future

    from evolver.judge.pairs import SideRun


def confirmation_level(judgement: Judgement) -> float:
    """The one-sided level the confirmation's own test used (the run's error level for this winner)."""
    numbers = judgement.confirmation.numbers if judgement.confirmation else {}
    level = numbers.get("level") or judgement.confirmation_level
    if level is None:
        raise ValueError("a guard needs a confirmed judgement (no confirmation level)")
    return float(level)


def run_guard_pairs(ctx: RunContext, cand: Any, judgement: Judgement, out: Path,
                    timings: dict[str, float], task: str | None = None) -> GuardReport | None:
    """Train and score the winner beside its parent (a pinned copy of the commit it branched from) on each of
    the run's guard tasks but ``task`` (the one it was judged on: a ladder's earlier task becomes a guard once
    the run has moved past it), on the confirmation's seeds; each side's stage seconds add to ``timings`` as
    guard-<stage> and guard-parent-<stage>. None when no guard task is left."""

    s = ctx.settings
    tasks = [t for t in s.guard_tasks if t != task]
    if not tasks:
        return None
    seeds = [int(x) for x in judgement.to_dict()["confirmation_seeds"]] or list(s.seeds)
    used = [p.seed for p in judgement.pairs]
    level = confirmation_level(judgement)
    ctx.display.log(f"{cand.proposal_id}: guard tasks {', '.join(tasks)} on seeds {seeds} at level {level:.4g}")
    finish = side_finisher(timings, "guard-")

    def submit_pair(task: str, sides: list[str], seed: int) -> list[Future[SideRun]]:
        def make_job(side: str, seed: int, phase: str) -> StageJob:
            tree = cand.path if side == "candidate" else ctx.parent_tree(cand.parent)
            return ctx.stage_job(tree, out / f"guard-{task}-seed{seed}-{side}", ["train", "evaluate"], seed,
                                 side=side, phase=GUARD_PHASE, task=task)

        ctx.display.stage("guard", f"{cand.proposal_id} on {task}, seed {seed}", s.budget_seconds)
        sides_of = ExecutorSides(ctx.executor, make_job, s.metric, finish=finish)
        return sides_of.submit_pair(sides, seed, GUARD_PHASE)

    return run_guards(tasks, submit_pair, seeds=seeds, used=used, level=level, margin=s.margin,
                      log=lambda m: ctx.display.log(f"{cand.proposal_id}: {m}"))


def guard_message(guards: GuardReport | None) -> str:
    """The merge message's paragraph on the guard tasks (empty without guards)."""
    if guards is None or not guards.results:
        return ""
    lines = ["", "", "Guard tasks (paired on the confirmation's seeds; blocked when the upper bound is at or below "
             "-margin):"]
    for r in guards.results:
        lines.append(f"  {r.task}: {r.trailer()}")
        if r.gains:
            lines.append(f"    seeds {r.seeds}, parent {', '.join(f'{x:.4f}' for x in r.parent)}, candidate "
                         f"{', '.join(f'{x:.4f}' for x in r.candidate)}")
    return "\n".join(lines)


def task_trailers(task: str, guards: GuardReport | None) -> list[tuple[str, str]]:
    """``Task`` (what the merge was judged on) and one ``Guard-<task>`` trailer per guard task."""
    out = [("Task", task)]
    for r in guards.results if guards is not None else []:
        out.append((f"Guard-{r.task}", r.trailer()))
    return out
