"""Successive halving over a cohort: screen every candidate at a short budget, judge only the best fraction
in full (``--screen N``).

Candidates are grouped, in cycle order, into batches of N. Each member that passed its gates trains one
*screen pair* (parent and candidate side by side, at ``--screen-budget`` seconds, on the batch's own seed, the
same for all its members and disjoint from every selection and confirmation seed). When every member of the
batch has its screen gain, the members are ranked by it and the top ``ceil(fraction * n)`` go on to the full
judgement; the others end as ``screened-out``, except a random share (``--screen-audit``, seeded by the run and
the cycle) that is judged in full anyway, so that the run measures what the screen costs: how well its ranks
predict the full gains, and how many winners it would have dropped (evolver/judge/fidelity.py, in the report).

The screen only chooses which candidates are judged; it decides no merge. A judged candidate (kept or
audited) is selected and confirmed on its own seeds exactly as without a screen, so the run-level error
control is untouched: a winner dropped by the screen is a loss of power, never a false merge.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from dataclasses import asdict, dataclass
from typing import Any

SCREEN_SEED_START = 200_000
"""Batch b screens on seed SCREEN_SEED_START + b: never a selection seed (from 0) nor a confirmation seed
(from 100_000, evolver/judge/pairs.py)."""


def screen_budget(settings: Any) -> float:
    """The screen's training budget: --screen-budget, or a quarter of the full budget."""
    value = getattr(settings, "screen_budget_seconds", None)
    return float(value) if value else float(settings.budget_seconds) / 4


@dataclass(frozen=True)
class ScreenDecision:
    batch: int
    seed: int
    kept: bool
    audited: bool
    rank: int | None  # 1 = best screen gain of the batch; None: no gain (the pair was void or the parent failed)
    size: int  # members of the batch with a screen
    keep: int  # how many the batch keeps
    gain: float | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ScreenBatches:
    """The run's screen batches. The loop ``join``s each started cycle and ``close_open``s the last batch when
    it stops starting cycles; a member ``report``s its screen gain (None: none could be measured) or ``leave``s
    (it failed before its screen), then ``decide`` waits for the rest of its batch."""

    def __init__(self, size: int, *, fraction: float = 0.5, audit: float = 0.25, key: str = "") -> None:
        if size < 2:
            raise ValueError(f"a screen batch needs at least 2 candidates, got {size}")
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"the screen keeps a fraction in (0, 1) of each batch, got {fraction}")
        if not 0.0 <= audit <= 1.0:
            raise ValueError(f"the screen audit share lies in [0, 1], got {audit}")
        self.size = size
        self.fraction = fraction
        self.audit = audit
        self.key = key
        self._cond = threading.Condition()
        self._members: dict[int, list[int]] = {}
        self._batch_of: dict[int, int] = {}
        self._closed: set[int] = set()
        self._gains: dict[int, float | None] = {}
        self._gone: set[int] = set()
        self._open = 0

    def join(self, cycle: int) -> int:
        with self._cond:
            batch = self._open
            self._members.setdefault(batch, []).append(cycle)
            self._batch_of[cycle] = batch
            if len(self._members[batch]) >= self.size:
                self._closed.add(batch)
                self._open += 1
            self._cond.notify_all()
            return batch

    def close_open(self) -> None:
        """No more members will join: the open batch is judged with the members it has."""
        with self._cond:
            if self._members.get(self._open):
                self._closed.add(self._open)
                self._open += 1
            self._cond.notify_all()

    def seed(self, cycle: int) -> int:
        with self._cond:
            return SCREEN_SEED_START + self._batch_of[cycle]

    def report(self, cycle: int, gain: float | None) -> None:
        with self._cond:
            self._gains[cycle] = gain
            self._cond.notify_all()

    def leave(self, cycle: int) -> None:
        with self._cond:
            if cycle not in self._gains:
                self._gone.add(cycle)
            self._cond.notify_all()

    def _ready(self, batch: int) -> bool:
        return batch in self._closed and all(c in self._gains or c in self._gone for c in self._members[batch])

    def decide(self, cycle: int, timeout: float | None = None) -> ScreenDecision:
        """Wait until every member of the cycle's batch has its screen (or left), then rank them."""
        with self._cond:
            batch = self._batch_of[cycle]
            if not self._cond.wait_for(lambda: self._ready(batch), timeout=timeout):
                raise TimeoutError(f"the screen batch {batch} did not complete")
            screened = [c for c in self._members[batch] if c in self._gains]
            measured = sorted((c for c in screened if self._gains[c] is not None),
                              key=lambda c: (-float(self._gains[c]), c))  # type: ignore[arg-type]
            keep = max(1, math.ceil(self.fraction * len(screened) - 1e-9))
            gain = self._gains.get(cycle)
            rank = measured.index(cycle) + 1 if cycle in measured else None
            kept = rank is None or rank <= keep  # no screen gain: the screen cannot drop it
            audited = not kept and self._draw(cycle) < self.audit
            return ScreenDecision(batch, SCREEN_SEED_START + batch, kept, audited, rank, len(screened), keep, gain)

    def _draw(self, cycle: int) -> float:
        digest = hashlib.sha256(f"{self.key}:screen-audit:{cycle}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big")).random()
