"""The learning-curve early stop (``--early-stop``): while a seed pair trains, the host reads both sides'
metrics stream and stops the candidate when its curve is clearly below its parent's at the same elapsed time.

Both sides of a pair train side by side, so at any moment the host can compare them at the same training
time: the mean training-batch token accuracy (``accuracy`` of the ``{"type": "train"}`` records of
``train/metrics.jsonl``, over the last `window` share of the budget, by each record's own ``time``). Once
both have trained past `after` of the budget, a candidate whose mean is below its parent's by more than
`margin` on `checks` reads in a row is stopped: the host sets the sandbox's stop event, the run is killed
like a timeout, its train stage ends as ``early-stop``, and the judge rejects the candidate with the curves'
numbers (evolver/judge/pairs.py). A confirmation cut this way counts as a failed attempt, like any other failure.

Why it is safe to read what the candidate writes: the stream can only end the candidate's own run. A
candidate that fakes a good curve merely escapes the early stop and is judged on the held-out puzzles as
always; one that fakes a bad curve rejects itself. Nothing read here reaches a merge. The files are read
with sandbox.readback (no links followed, regular files only, bounded size); anything unreadable or not a
finite number is no curve, and no curve stops nothing.

Its cost is power: a candidate that learns slowly and overtakes late may be stopped. To measure that, a
seeded share of the stops (`audit`) is only recorded, not enforced: the pair trains to the end, and the run's
fidelity (evolver/judge/fidelity.py) counts how many of those would-be stops were winners.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sandbox.readback import UnsafeOutput, read_bytes

MAX_STREAM_BYTES = 64 << 20


@dataclass(frozen=True)
class EarlyStopRule:
    margin: float = 0.15  # token accuracy below the parent's by more than this ...
    after: float = 0.5  # ... once both sides trained this share of the budget ...
    window: float = 0.15  # ... averaged over this share of the budget ...
    checks: int = 2  # ... on this many reads in a row
    interval_s: float = 2.0  # seconds between reads
    audit: float = 0.25  # the share of stops only recorded, not enforced (seeded per pair)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HostStop(threading.Event):
    """The stop event of one sandbox run, with the reason the host gives when it sets it."""

    reason: str = ""

    def stop(self, reason: str) -> None:
        self.reason = reason
        self.set()


def read_curve(stage_dir: Path) -> list[tuple[float, float]]:
    """The (time, accuracy) points of a train stage's metrics stream so far; [] when there is none or it is
    not safely readable. A half-written last line is skipped."""
    try:
        raw = read_bytes(Path(stage_dir), "train/metrics.jsonl", max_bytes=MAX_STREAM_BYTES)
    except (OSError, UnsafeOutput, ValueError):
        return []
    points: list[tuple[float, float]] = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or record.get("type") != "train":
            continue
        t, acc = record.get("time"), record.get("accuracy")
        if (isinstance(t, (int, float)) and isinstance(acc, (int, float)) and not isinstance(t, bool)
                and math.isfinite(t) and math.isfinite(acc)):
            points.append((float(t), float(acc)))
    return points


def window_mean(curve: list[tuple[float, float]], until: float, width: float) -> float | None:
    values = [acc for t, acc in curve if until - width < t <= until]
    return sum(values) / len(values) if values else None


def compare(parent: list[tuple[float, float]], candidate: list[tuple[float, float]], budget_s: float,
            rule: EarlyStopRule) -> dict[str, float] | None:
    """The curves at the latest time both reached, when the candidate is clearly below there; else None."""
    if not parent or not candidate:
        return None
    at = min(parent[-1][0], candidate[-1][0])
    if at < rule.after * budget_s:
        return None
    width = max(rule.window * budget_s, 1e-9)
    p, c = window_mean(parent, at, width), window_mean(candidate, at, width)
    if p is None or c is None or p - c <= rule.margin:
        return None
    return {"at_s": round(at, 3), "parent_accuracy": p, "candidate_accuracy": c, "gap": p - c}


def enforced(key: str, rule: EarlyStopRule) -> bool:
    """Whether a stop of this pair is enforced (else only recorded: the audit share), seeded by ``key``."""
    digest = hashlib.sha256(f"{key}:early-stop-audit".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).random() >= rule.audit


class PairWatch:
    """Reads both sides' streams while a pair trains (a daemon thread) and stops the candidate, or records
    that it would have, per the rule. ``decision`` is None, or the numbers and whether it was enforced."""

    def __init__(self, parent_stage: Path, candidate_stage: Path, budget_s: float, rule: EarlyStopRule,
                 stop: HostStop, *, enforce: bool, parent_stop: HostStop | None = None) -> None:
        self.parent_stage = Path(parent_stage)
        self.candidate_stage = Path(candidate_stage)
        self.budget_s = float(budget_s)
        self.rule = rule
        self.stop = stop
        self.parent_stop = parent_stop  # the parent's run is of no use once its candidate is stopped
        self.enforce = enforce
        self.decision: dict[str, Any] | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="hrm-evolve-curve-watch")

    def start(self) -> PairWatch:
        self._thread.start()
        return self

    def finish(self) -> None:
        self._done.set()

    def _loop(self) -> None:
        below = 0
        while not self._done.wait(self.rule.interval_s):
            seen = compare(read_curve(self.parent_stage), read_curve(self.candidate_stage), self.budget_s,
                           self.rule)
            below = below + 1 if seen else 0
            if seen and below >= self.rule.checks:
                self.decision = {**seen, "enforced": self.enforce, "checks": below}
                if self.enforce:
                    self.stop.stop(f"its training accuracy {seen['candidate_accuracy']:.3f} was below its parent's "
                                   f"{seen['parent_accuracy']:.3f} by more than {self.rule.margin:g} at "
                                   f"{seen['at_s']:.0f}s of training ({below} reads in a row)")
                    if self.parent_stop is not None:
                        self.parent_stop.stop("the candidate beside it was stopped early")
                return
