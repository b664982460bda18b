"""Placement groups kept, still reserved, between the seed pairs of a Ray run.

A removed placement group's resources take Ray about a second to become free for a new group, and a
candidate's next pair asks for the same node-sized reservation within a second of the last one's answers;
so the executor hands a finished pair's group back here, and the next pair of the same shape (the same
bundles) takes it instead of waiting. A single task (a gate, a baseline seed) whose resources equal one of an
idle group's bundles borrows that bundle (`lend`, `return_bundle`) and runs inside the reservation, so the
room never changes hands between a candidate's gates and its first pair (Ray's scheduler would see it free
only about a second after the gate ended). An idle group is removed after ``idle_s``, and at once when a pair
of another shape or a single task that fits no bundle needs room (`take`, `release_all`; a borrowed group
then goes when its last bundle comes back); while a new group waits for room, no finished group is kept at
all (it might be the room that group waits for), so an idle reservation never keeps the run's own work
waiting. Ray itself is not imported here: the executor passes in how to remove a group and how to tell that
one is still placed (its node may have died while it waited).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any


def shape(bundles: list[dict[str, float]]) -> str:
    """The key of a group's bundles: groups of the same shape are interchangeable."""
    return json.dumps(bundles, sort_keys=True)


class _Loan:
    """An idle group some of whose bundles single tasks are using."""

    def __init__(self, group: Any, bundles: list[dict[str, float]]) -> None:
        self.group = group
        self.bundles = bundles
        self.used: set[int] = set()
        self.drop = False  # removed when its last bundle comes back (other work needs its room)


class GroupPool:
    """Idle placement groups by shape, each with the timer that removes it after ``idle_s``, and the idle
    groups lent, bundle by bundle, to single tasks."""

    def __init__(self, idle_s: float, remove: Callable[[Any], None], placed: Callable[[Any], bool]) -> None:
        self.idle_s = idle_s
        self._remove = remove
        self._placed = placed
        self._idle: dict[str, list[tuple[Any, threading.Timer]]] = {}
        self._lent: dict[int, _Loan] = {}  # by id() of the group
        self._lock = threading.Lock()
        self._closed = False
        self._waiting = 0  # new groups still waiting for room (a `take` that found none, not `settled` yet)

    def idle(self) -> int:
        with self._lock:
            return sum(len(entries) for entries in self._idle.values())

    def take(self, bundles: list[dict[str, float]]) -> Any | None:
        """An idle group of this shape that is still placed, or None; with None, the idle groups of other
        shapes are removed too, since the new group the caller makes may need their room, and the caller's
        new group counts as waiting for room until the caller calls `settled`."""
        key = shape(bundles)
        found = None
        drop: list[Any] = []
        with self._lock:
            entries = self._idle.get(key, [])
            while entries and found is None:
                group, timer = entries.pop()
                timer.cancel()
                if self._placed(group):
                    found = group
                else:
                    drop.append(group)
            if found is None:
                drop += self._pop_all()
                self._waiting += 1
        self._remove_each(drop)
        return found

    def lend(self, bundle: dict[str, float]) -> tuple[Any, int, list[dict[str, float]]] | None:
        """A free bundle equal to ``bundle`` of an idle, still placed group, for one single task: the group,
        the bundle's index and the group's bundles; None when no idle group has one free. The group is not
        idle (no pair takes it, no timer runs) until every bundle lent from it is back."""
        drop: list[Any] = []
        found = None
        with self._lock:
            for loan in self._lent.values():
                index = _free_index(loan.bundles, loan.used, bundle)
                if not loan.drop and index is not None:
                    loan.used.add(index)
                    found = (loan.group, index, loan.bundles)
                    break
            for key, entries in self._idle.items():
                bundles = json.loads(key)
                index = _free_index(bundles, set(), bundle)
                while found is None and index is not None and entries:
                    group, timer = entries.pop()
                    timer.cancel()
                    if not self._placed(group):
                        drop.append(group)
                        continue
                    loan = _Loan(group, bundles)
                    loan.used.add(index)
                    self._lent[id(group)] = loan
                    found = (group, index, bundles)
        self._remove_each(drop)
        return found

    def return_bundle(self, group: Any, index: int, *, keep: bool = True) -> None:
        """A bundle `lend` gave out, back from its task. When it was the group's last one out, the group is
        idle again (kept ``idle_s``), or removed: when ``keep`` is false (the task failed on the executor's
        side), when other work needs its room, or when the pool is closed."""
        with self._lock:
            loan = self._lent.get(id(group))
            if loan is None:
                return
            loan.used.discard(index)
            loan.drop = loan.drop or not keep
            if loan.used:
                return
            del self._lent[id(group)]
            if not (loan.drop or self._closed or self._waiting):
                self._keep(shape(loan.bundles), group)
                return
        self._remove_each([group])

    def settled(self) -> None:
        """The new group of a `take` that found none has its room (or was given up)."""
        with self._lock:
            self._waiting -= 1

    def give_back(self, bundles: list[dict[str, float]], group: Any) -> None:
        """A finished pair's group, kept for ``idle_s``; removed at once when a new group waits for room or
        the pool is closed."""
        with self._lock:
            if not self._closed and not self._waiting:
                self._keep(shape(bundles), group)
                return
        self._remove_each([group])

    def _keep(self, key: str, group: Any) -> None:
        timer = threading.Timer(self.idle_s, self._expire, (key, group))
        timer.daemon = True
        self._idle.setdefault(key, []).append((group, timer))
        timer.start()

    def release_all(self) -> None:
        """Remove every idle group now, and each borrowed one when its bundles are back (a single task that
        fits no free bundle is about to need room)."""
        with self._lock:
            drop = self._pop_all()
        self._remove_each(drop)

    def close(self) -> None:
        """Remove the idle groups; groups given back later are removed at once."""
        with self._lock:
            self._closed = True
            drop = self._pop_all()
        self._remove_each(drop)

    def _expire(self, key: str, group: Any) -> None:
        with self._lock:
            entries = self._idle.get(key, [])
            kept = [(g, t) for g, t in entries if g is not group]
            if len(kept) == len(entries):
                return  # taken meanwhile
            self._idle[key] = kept
        self._remove_each([group])

    def _pop_all(self) -> list[Any]:
        """The idle groups, taken out to be removed; the borrowed ones are marked to go when they come back."""
        for loan in self._lent.values():
            loan.drop = True
        groups = []
        for entries in self._idle.values():
            for group, timer in entries:
                timer.cancel()
                groups.append(group)
        self._idle.clear()
        return groups

    def _remove_each(self, groups: list[Any]) -> None:
        for group in groups:
            try:
                self._remove(group)
            except Exception:  # noqa: BLE001 - the cluster may be gone; nothing is left to release then
                pass


def _free_index(bundles: list[dict[str, float]], used: set[int], bundle: dict[str, float]) -> int | None:
    """The first bundle of ``bundles`` not in ``used`` that equals ``bundle``."""
    want = shape([bundle])
    return next((i for i, b in enumerate(bundles) if i not in used and shape([b]) == want), None)
