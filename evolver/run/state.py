"""The run's state types that every job shares: a measured parent (`Baseline`), a cycle's outcome, the reason
to stop a run, and the run's time stamps. They sit below the context and the jobs that use them, so neither
imports the other for its types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


class StopRun(Exception):
    """A reason to end the run cleanly (LLM unreachable without fallback, baseline broken, ...)."""


def utc_now() -> str:
    """The time stamps of run.json, results and refused replies: UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Baseline:
    commit: str
    tree: str
    seeds: list[int]
    scores: list[float]
    seconds: float
    cached: bool = False
    evidence: list[dict[str, Any]] = field(default_factory=list)
    task: str = ""  # the task it was measured on (a ladder moves the run's task: evolver/run/ceiling.py)
    saturation: dict[str, Any] | None = None  # the saturation rule's finding on its scores (evolver/judge/saturation.py)

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "tree": self.tree, "seeds": self.seeds, "scores": self.scores,
                "seconds": self.seconds, "evidence": self.evidence, "task": self.task,
                "saturation": self.saturation}

    def eval_seconds(self) -> float | None:
        times = [float(e["eval_host_seconds"]) for e in self.evidence if e.get("eval_host_seconds")]
        return max(times) if times else None


@dataclass
class CycleOutcome:
    proposal_id: str | None
    verdict: str
    reason: str = ""
    score: float | None = None
    delta: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
