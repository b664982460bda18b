"""Knowing when a task is solved: the saturation rule, and the task ladder a run climbs when its best saturates.

**The rule.** A parent measured on seeds with scores x_1..x_n (the run's metric, on the selection split) is
*saturated* on its task when both hold:

1. its mean is at least ``ceiling - margin``: the largest mean gain any candidate could show on those seeds,
   ``ceiling - mean``, is then no more than the margin, and the selection rule passes only a mean gain *above*
   the margin (evolver/judge/promotion.py), so no verdict on this parent can merge anything that is not noise;
2. every seed is within the noise of the ceiling: ``x_i >= ceiling - max(margin, k * sd)`` with sd the sample
   standard deviation of the parent's seed scores (0 for one seed) and k = ``SATURATION_K`` = 2, so one seed
   clearly below the ceiling keeps the task open however high the others are.

The ceiling is 1.0 (both metrics are accuracies) unless ``--solved-at`` says at what score the task counts
as solved. A saturated best either moves the run up its ``--task-ladder`` (the next task's baseline is
measured, and candidates are judged there) or, at the top of the ladder, ends the run with a clear message:
its verdicts could not say anything.

**The ladder's state** (tasks, position, each saturation that moved it) is a JSON file on the run's record
branch (``runs/<run-id>/ladder.json``), so a resumed run, or a clone, goes on where it was.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SATURATION_K = 2.0
CEILING = 1.0
LADDER_FILE = "ladder.json"


def rule_text(margin: float, ceiling: float = CEILING, k: float = SATURATION_K) -> str:
    return (f"saturation: the best is saturated when its mean score is >= {ceiling:g} - {margin:g} (the margin), "
            f"so no mean gain above the margin is possible, and every seed's score is >= {ceiling:g} - "
            f"max({margin:g}, {k:g} x the sd of its seed scores)")


@dataclass
class Saturation:
    """The rule's finding on one parent's seed scores."""

    saturated: bool
    task: str
    metric: str
    scores: list[float]
    mean: float | None
    sd: float
    ceiling: float
    margin: float
    k: float
    floor: float  # every seed must be at least this
    reason: str
    commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def assess(scores: Sequence[float], *, task: str, metric: str, margin: float, ceiling: float = CEILING,
           k: float = SATURATION_K, commit: str | None = None) -> Saturation:
    """Apply the rule (module docstring) to a parent's seed scores."""
    xs = [float(x) for x in scores]
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    tolerance = max(float(margin), k * sd)
    floor = ceiling - tolerance
    mean = statistics.fmean(xs) if xs else None
    if mean is None:
        return Saturation(False, task, metric, xs, None, sd, ceiling, margin, k, floor, "no scores", commit)
    low = [x for x in xs if x < floor]
    if mean < ceiling - margin:
        why = (f"not saturated: mean {mean:.4f} < {ceiling:g} - {margin:g}, so a gain above the margin is still "
               "possible")
        saturated = False
    elif low:
        why = (f"not saturated: seed score(s) {', '.join(f'{x:.4f}' for x in low)} below {floor:.4f} "
               f"= {ceiling:g} - max({margin:g}, {k:g} x sd {sd:.4f})")
        saturated = False
    else:
        why = (f"saturated: mean {mean:.4f} >= {ceiling - margin:.4f} and every seed >= {floor:.4f} "
               f"({metric} per seed {', '.join(f'{x:.4f}' for x in xs)}; ceiling {ceiling:g}); no candidate can "
               f"gain more than the margin {margin:g}")
        saturated = True
    return Saturation(saturated, task, metric, xs, mean, sd, ceiling, float(margin), k, floor, why, commit)


@dataclass
class TaskLadder:
    """The tasks a run climbs, where it is, and each saturation seen (``steps``, in order)."""

    tasks: list[str]
    position: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.tasks[self.position]

    def next_task(self) -> str | None:
        return self.tasks[self.position + 1] if self.position + 1 < len(self.tasks) else None

    def climb(self, finding: Saturation, when: str) -> str | None:
        """Record a saturation of the current task and move to the next one (returned; None at the top)."""
        nxt = self.next_task()
        self.steps.append({"task": self.task, "position": self.position, "time": when, "moved_to": nxt,
                           "saturation": finding.to_dict()})
        if nxt is not None:
            self.position += 1
        return nxt

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "position": self.position, "task": self.task, "steps": list(self.steps)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskLadder:
        tasks = [str(t) for t in data.get("tasks") or []]
        position = int(data.get("position") or 0)
        if not tasks or not 0 <= position < len(tasks):
            raise ValueError(f"a task ladder needs tasks and a position among them, got {dict(data)}")
        return cls(tasks, position, [dict(s) for s in data.get("steps") or []])


def parse_tasks(values: Sequence[str], known: Sequence[str]) -> list[str]:
    """Task names, checked against the trusted task specs (puzzles/tasks.py); duplicates refused."""
    out = [str(v).strip() for v in values if str(v).strip()]
    unknown = [t for t in out if t not in known]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if len(set(out)) != len(out):
        raise ValueError(f"a task is named twice in {', '.join(out)}")
    return out


def ceiling_lines(ceiling: dict[str, Any] | None) -> list[str]:
    """The ladder and the saturations, as plain lines (the text report and the page)."""
    if not ceiling:
        return []
    lines = []
    if ceiling.get("ladder"):
        lines.append(f"task ladder: {' -> '.join(ceiling['ladder'])} (now at {ceiling.get('task')})")
    for e in ceiling.get("saturated") or []:
        where = f"moved to {e['moved_to']}" if e.get("moved_to") else "the run stopped"
        lines.append(f"saturated: {e.get('task')} at {str(e.get('commit') or '')[:10]} ({where}): {e.get('reason')}")
    if ceiling.get("merges_by_task"):
        lines.append("merges by task: " + ", ".join(f"{k} {v}" for k, v in ceiling["merges_by_task"].items()))
    return lines
