"""A history that teaches: each earlier attempt as the request shows it.

`history_item(pid, proposal, result)` turns a stored proposal (proposal.json) and its result (result.json)
into a `HistoryItem`: its idea (the rationale, shortened), the files and symbols its edits touched, its
verdict, its mean paired gain over the parent with a 95% t interval over the selection pairs (named as a gain,
never as a score), and for a failure the last lines of the error (the stage's reason, the edit errors).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from evolver.candidate_result import CandidateResult
from evolver.intervals import t_interval
from evolver.propose.prompt import HistoryItem
from evolver.verdicts import DUPLICATE, NO_EFFECT

IDEA_CHARS = 200
ERROR_LINES = 4
ENDED_REASON_CHARS = 600  # a no-effect or duplicate ending says which value overrode the edit, or which twin
ERROR_LINE_CHARS = 200


def gain_interval(gains: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided t interval of the mean of `gains`; None with fewer than two."""
    xs = [float(g) for g in gains if g is not None and math.isfinite(float(g))]
    interval = t_interval(xs, level)
    return None if interval is None else (interval[1], interval[2])


def _short(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def _failed_log(result: CandidateResult) -> list[str]:
    """The non-empty lines of the failed stage's log tail (the sandbox's stdout/stderr), when the result has it."""
    failed = result.failed_stage
    for stage in reversed(result.stages or []):
        if isinstance(stage, dict) and stage.get("stage") == failed and not stage.get("ok", False):
            return [ln.rstrip() for ln in str(stage.get("log_tail") or "").splitlines() if ln.strip()]
    return []


def error_tail(result: CandidateResult, lines: int = ERROR_LINES) -> str:
    """The last lines of a failure's error: the edit errors of an invalid patch, else the stage's reason and
    then the last lines of its log (where a traceback ends), at most `lines` in all."""
    parts: list[str] = []
    for e in result.edit_errors or []:
        parts.extend(str(e).splitlines())
    parts.extend(str(result.reason or "").splitlines())
    kept = [ln.rstrip() for ln in parts if ln.strip()]
    log = [ln for ln in _failed_log(result) if ln.strip() not in {k.strip() for k in kept}]
    log_part = log[-(lines - 1):] if kept else log[-lines:]  # the reason keeps at least its last line
    kept = (kept[-(lines - len(log_part)):] if lines > len(log_part) else []) + log_part
    return "\n".join(_short(ln, ERROR_LINE_CHARS) for ln in kept)


def edited(proposal: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(files, symbols) the proposal's edits touch, each in first-seen order."""
    files: list[str] = []
    symbols: list[str] = []
    for edit in proposal.get("edits") or []:
        if not isinstance(edit, dict):
            continue
        f = edit.get("file")
        if f and f not in files:
            files.append(str(f))
        target = edit.get("target") or edit.get("name") or (f"import {edit['module']}" if edit.get("module") else None)
        if target and target not in symbols:
            symbols.append(str(target))
    return tuple(files), tuple(symbols)


def history_item(pid: str, proposal: dict[str, Any],
                 result: CandidateResult | Mapping[str, Any] | None) -> HistoryItem:
    """One earlier attempt, as the request shows it (``result``: its result.json; None or empty while it has
    none)."""
    if not isinstance(result, CandidateResult):
        result = CandidateResult.of(result, where=f"the result of {pid}") if result else CandidateResult(
            verdict="unfinished")
    verdict = result.verdict
    failed = result.failed_stage
    if failed:
        verdict = f"{verdict} at {failed}"
    elif verdict in (NO_EFFECT, DUPLICATE):  # why, so the next proposal does not repeat it
        verdict = f"{verdict}: {_short(str(result.reason or ''), ENDED_REASON_CHARS)}"
    comparison = result.comparison or {}
    gains = [g for g in (comparison.get("gains") or []) if isinstance(g, (int, float))]
    mean = comparison.get("mean_gain")
    if mean is None and gains:
        mean = statistics.fmean(gains)
    files, symbols = edited(proposal)
    failure = bool(failed) or verdict.startswith(("failed", "invalid"))
    return HistoryItem(
        pid, str(proposal.get("title", pid)), verdict, None if mean is None else float(mean),
        idea=_short(str(proposal.get("rationale", "")), IDEA_CHARS), files=files, symbols=symbols,
        gain_interval=gain_interval(gains), pairs=len(gains), error_tail=error_tail(result) if failure else "",
    )
