"""Several candidates judged at once (``--cohort K``), with the verdicts a serial run would give.

The loop keeps up to K candidates in flight: it asks the LLM for the next proposal while the others train, so
neither the LLM nor the workers wait for each other. Each candidate is branched from the best as it was when
its proposal was asked for, gated, and judged by seed pairs against that parent (a pinned copy of it,
evolver/run/context.py `parent_tree`) through the run's shared executor, whose slots all the cohort's jobs
queue for (evolver/execute/local.py; the two sides of a pair always start together).

What must not run out of order does not:

- **Cycle order** (`CycleOrder`): a candidate that passed selection waits, before its confirmation takes its
  level from the run's error control, until every earlier candidate has finished. So the confirmations take
  their levels, and the merges land, in cycle order, exactly as in a serial run.
- **A moved best**: when an earlier candidate merged meanwhile, the waiting winner is rebased onto the new
  best (a conflict rejects it), gated again, and its confirmation measures it against the new best. Nothing
  merges on evidence gathered against a parent that is no longer the best.
- **The record**: every write to git, the store and the run's files happens under the run's lock
  (`RunContext.lock`).

A candidate rejected at selection is rejected against the parent it branched from (as the issue of its cycle
was decided); with an effect that does not depend on what else merged, every verdict equals the serial run's
(tests/evolver/run/test_cohort.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any


class CycleOrder:
    """The cycles in flight; ``turn(cycle).wait()`` returns once every earlier cycle has left."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open: set[int] = set()

    def enter(self, cycle: int) -> CycleTurn:
        with self._cond:
            self._open.add(cycle)
        return CycleTurn(self, cycle)

    def leave(self, cycle: int) -> None:
        with self._cond:
            self._open.discard(cycle)
            self._cond.notify_all()

    def wait_for(self, cycle: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: all(c >= cycle for c in self._open))

    def open_cycles(self) -> list[int]:
        with self._cond:
            return sorted(self._open)


class CycleTurn:
    """One candidate's place in cycle order (evolver/run/candidate.py `Turn`)."""

    def __init__(self, order: CycleOrder, cycle: int) -> None:
        self.order = order
        self.cycle = cycle

    def wait(self) -> None:
        self.order.wait_for(self.cycle)


def start_in_background(cycle: int, order: CycleOrder, work: Callable[[CycleTurn], Any]) -> Future[Any]:
    """Run ``work(turn)`` on a daemon thread (a Ctrl-C ends the run without waiting for it; its candidate is
    re-run on resume) and give a future of its result; the cycle leaves the order however it ends."""
    turn = order.enter(cycle)
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()

    def body() -> None:
        try:
            future.set_result(work(turn))
        except BaseException as exc:  # noqa: BLE001 - handed to the loop through the future
            future.set_exception(exc)
        finally:
            order.leave(cycle)

    threading.Thread(target=body, daemon=True, name=f"hrm-evolve-cycle{cycle}").start()
    return future


def wait_any(futures: dict[int, Future[Any]], timeout: float | None = None) -> list[int]:
    """The cycles whose futures are done, waiting for at least one (or ``timeout``)."""
    if not futures:
        return []
    wait(list(futures.values()), timeout=timeout, return_when=FIRST_COMPLETED)
    return sorted(c for c, f in futures.items() if f.done())
