"""How well each cheap stage of the evaluation predicted the full judgement, over the candidates of one run.

The full judgement (seed pairs of parent and candidate at the full budget, :mod:`evolver.judge.pairs`) is what a
candidate costs; the cheap stages before it exist to spend that cost on the candidates worth it. A cheap
stage earns its place only if its number ranks candidates the way the full judgement later does. This module
measures that after the fact, from the candidates' ``result.json`` dicts, for three predictors of the full
score (``comparison.mean_gain``, the mean selection gain, candidate minus parent):

- ``trainability``: minus the trainability gate's loss ratio (final / early loss after its short run,
  recomputed here from the stage's ``loss_step_early`` / ``loss_step_final`` as :mod:`evolver.execute.gates` does;
  a lower ratio is better, so it is negated and higher is better for every predictor);
- ``first pair``: the gain of the first non-void selection pair. It is one of the terms of the mean it
  predicts, so its correlation is optimistic; it says how much one pair already tells;
- ``screen``: the gain of the short-budget screening pair of successive halving (``result["screen"]``).
  Only the screen's survivors, and the screened-out candidates audited anyway, have a full score, so its
  correlation is measured on a range cut at the top; the audited ones are the unbiased sample.

For each predictor: ``n``, the candidates with both the cheap value and a finite full score; the Spearman
rank correlation over them with its two-sided p-value (:func:`scipy.stats.spearmanr`; None when n < 3 or
either side is constant); and ``dropped_winners``, the winners the stage would have cost. A *winner* is a
candidate the full judgement passed: verdict ``merged`` or ``pending-review``, or a judgement verdict of
``passed`` (a candidate a reviewer later rejected, or whose merge conflicted, still won the judgement).

Dropped winners of ``trainability`` and ``first pair`` are hypothetical: among the ``candidates`` that have
the cheap value (judged or not), rank them by it and keep the best ``kept = ceil(keep_fraction *
candidates)``; a winner outside is dropped. Ties at the cut are broken at random and the count is the
expectation: a tie group of g candidates holding w winners, with s of the kept places left for it, drops
``w * (1 - s / g)`` winners, so the count can be fractional (a constant stage keeping half of four
candidates, one of them a winner, drops 0.5). For ``screen`` the count is real: winners whose screen says
``kept: false`` (knowable only for audited ones, the others never got a full judgement); the counts of
screened, kept and audited candidates come with it.

Everything read here was written by the host, but the loss numbers are the candidate's own report: only
finite numbers are used, anything else counts as missing.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from evolver.record.store import atomic_write

FIDELITY_FILE = "fidelity.json"
DEFAULT_KEEP_FRACTION = 0.5
MIN_N = 3
WINNER_VERDICTS = frozenset({"merged", "pending-review"})
STAGES = ("trainability", "first pair", "screen")


# ================================================================================================ reading
def _finite(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
        return float(value)
    return None


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def is_winner(result: Mapping[str, Any]) -> bool:
    """Whether the full judgement passed the candidate (see the module docstring)."""
    return result.get("verdict") in WINNER_VERDICTS or _dict(result.get("judgement")).get("verdict") == "passed"


def full_score(result: Mapping[str, Any]) -> float | None:
    """The full judgement's mean selection gain, or None for a candidate never judged."""
    return _finite(_dict(result.get("comparison")).get("mean_gain"))


def trainability_value(result: Mapping[str, Any]) -> float | None:
    """Minus the trainability gate's loss ratio (final / early), or None without finite losses."""
    stages = result.get("stages")
    for stage in stages if isinstance(stages, list) else []:
        if isinstance(stage, Mapping) and stage.get("stage") == "trainability":
            metrics = _dict(stage.get("metrics"))
            early, late = _finite(metrics.get("loss_step_early")), _finite(metrics.get("loss_step_final"))
            if early is None or late is None or early <= 0:
                return None
            return -(late / early)
    return None


def first_pair_value(result: Mapping[str, Any]) -> float | None:
    """The gain of the first non-void selection pair of the judgement, or None."""
    pairs = _dict(result.get("judgement")).get("pairs")
    for pair in pairs if isinstance(pairs, list) else []:
        if isinstance(pair, Mapping) and pair.get("phase", "selection") == "selection" and not pair.get("void"):
            gain = _finite(pair.get("gain"))
            if gain is not None:
                return gain
    return None


def screen_value(result: Mapping[str, Any]) -> float | None:
    """The short-budget screening pair's gain, or None."""
    return _finite(_dict(result.get("screen")).get("gain"))


READERS = {"trainability": trainability_value, "first pair": first_pair_value, "screen": screen_value}


# ================================================================================================ statistics
def spearman(xs: Sequence[float], ys: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman's rho and its two-sided p-value; (None, None) when n < 3 or a side is constant."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs paired values, got {len(xs)} and {len(ys)}")
    if len(xs) < MIN_N or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(xs, ys)
    rho, p = _finite(float(res.statistic)), _finite(float(res.pvalue))
    return (rho, p) if rho is not None else (None, None)


def kept_count(n: int, keep_fraction: float) -> int:
    """How many of ``n`` candidates the top ``keep_fraction`` keeps: ceil(fraction * n), with 1e-9 of slack so
    float error does not add one (0.28 * 25 keeps 7, not 8)."""
    return min(n, math.ceil(keep_fraction * n - 1e-9))


def expected_dropped(ranked: Iterable[tuple[float, bool]], keep: int) -> float:
    """Expected winners outside the best ``keep`` of (value, is_winner) pairs, higher value first, ties at
    the cut broken at random."""
    groups: dict[float, list[bool]] = {}
    for value, winner in ranked:
        groups.setdefault(value, []).append(winner)
    dropped, above = 0.0, 0
    for value in sorted(groups, reverse=True):
        members = groups[value]
        slots = max(0, min(len(members), keep - above))
        dropped += sum(members) * (1 - slots / len(members))
        above += len(members)
    return dropped


def _check_fraction(keep_fraction: float) -> float:
    fraction = _finite(keep_fraction)
    if fraction is None or not 0 < fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction!r}")
    return fraction


# ================================================================================================ the summary
def assess(results: Sequence[Mapping[str, Any]], keep_fraction: float = DEFAULT_KEEP_FRACTION) -> dict[str, Any]:
    """The fidelity of each cheap stage over a run's result dicts, as plain JSON-able data::

        {"keep_fraction": 0.5, "candidates": 9, "judged": 6, "winners": 2,
         "stages": {"trainability" | "first pair" | "screen":
                    {"n", "spearman", "p_value", "candidates", "kept", "winners", "dropped_winners"}},
         "screen": {"screened", "kept", "audited"}}

    ``n`` counts candidates with the cheap value and a full score (Spearman's ``spearman`` and ``p_value``
    over them, None when n < 3 or a side is constant); ``candidates`` those with the cheap value, ``kept``
    how many of them the top ``keep_fraction`` keeps (ceil), ``winners`` the winners among them and
    ``dropped_winners`` as the module docstring says. For ``screen``, ``kept``, ``winners`` and
    ``dropped_winners`` count every screened candidate by its real flags (``kept`` None when no candidate
    has one). ``keep_fraction`` outside (0, 1] raises ValueError."""
    fraction = _check_fraction(keep_fraction)
    rows = [r for r in results if isinstance(r, Mapping)]
    out: dict[str, Any] = {"keep_fraction": fraction, "candidates": len(rows),
                           "judged": sum(1 for r in rows if full_score(r) is not None),
                           "winners": sum(1 for r in rows if is_winner(r)), "stages": {}}
    for name, read in READERS.items():
        have = [(value, r) for r in rows if (value := read(r)) is not None]
        pairs = [(value, score) for value, r in have if (score := full_score(r)) is not None]
        rho, p = spearman([a for a, _ in pairs], [b for _, b in pairs])
        entry: dict[str, Any] = {"n": len(pairs), "spearman": rho, "p_value": p, "candidates": len(have),
                                 "winners": sum(1 for _, r in have if is_winner(r))}
        if name == "screen":  # the real cut, over every screened candidate (a void screen pair included)
            flagged = [r for r in rows if isinstance(_dict(r.get("screen")).get("kept"), bool)]
            entry["winners"] = sum(1 for r in rows if isinstance(r.get("screen"), Mapping) and is_winner(r))
            entry["kept"] = sum(1 for r in flagged if r["screen"]["kept"]) if flagged else None
            entry["dropped_winners"] = sum(1 for r in flagged if not r["screen"]["kept"] and is_winner(r))
        else:
            entry["kept"] = kept_count(len(have), fraction)
            entry["dropped_winners"] = expected_dropped(((v, is_winner(r)) for v, r in have), entry["kept"])
        out["stages"][name] = entry
    screens = [_dict(r.get("screen")) for r in rows if isinstance(r.get("screen"), Mapping)]
    out["screen"] = {"screened": len(screens), "kept": sum(1 for s in screens if s.get("kept") is True),
                     "audited": sum(1 for s in screens if s.get("kept") is False and s.get("audited") is True)}
    out["early_stop"] = early_stop_counts(rows)
    return out


def early_stop_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The learning-curve early stop (evolver/judge/early_stop.py): candidates it stopped, candidates whose stop was
    only recorded (the audit: they trained on), and the winners among those, i.e. the winners it would have
    rejected."""
    def stops(r: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        value = r.get("early_stop")
        return [s for s in value if isinstance(s, Mapping)] if isinstance(value, list) else []

    stopped = [r for r in rows if any(s.get("enforced") is True for s in stops(r))]
    recorded = [r for r in rows if stops(r) and not any(s.get("enforced") is True for s in stops(r))]
    return {"stopped": len(stopped), "recorded": len(recorded),
            "recorded_winners": sum(1 for r in recorded if is_winner(r))}


def save(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` to ``run_dir/fidelity.json`` atomically; return the path."""
    path = Path(run_dir) / FIDELITY_FILE
    atomic_write(path, (json.dumps(dict(summary), indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return path


def format_count(value: float) -> str:
    """A count that may be an expectation: "1", or "0.50" when fractional."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def stage_line(name: str, entry: Mapping[str, Any], keep_fraction: float,
               screen: Mapping[str, Any] | None = None) -> str:
    """One short line on one stage: its rank correlation (or why there is none) and the winners it drops
    (for ``screen``, with the counts of ``screen``: screened, kept, audited)."""
    n = int(entry.get("n") or 0)
    if entry.get("spearman") is None:
        why = (f"too few candidates judged with it ({n}, need {MIN_N}) to say anything" if n < MIN_N
               else f"no rank correlation over {n} judged: its values or the full gains are all equal")
    else:
        why = f"Spearman {entry['spearman']:+.3f} (p {entry['p_value']:.3g}) over {n} judged"
    winners = int(entry.get("winners") or 0)
    dropped = format_count(float(entry.get("dropped_winners") or 0))
    if name == "screen":
        counts = _dict(screen)
        cut = (f"{counts.get('screened', 0)} screened, {counts.get('kept', 0)} kept, {counts.get('audited', 0)} "
               f"screened out but audited; it screened out {dropped} of its {winners} winner(s)")
    else:
        cut = (f"keeping the top {keep_fraction:.0%} ({entry.get('kept')} of {entry.get('candidates')}) "
               f"would drop {dropped} of {winners} winner(s)")
    return f"{name}: {why}; {cut}"


def describe(summary: Mapping[str, Any]) -> list[str]:
    """Short human lines for the report: how many were judged (and a line when too few were), then one line
    per stage that has values (the screen's when any candidate was screened)."""
    fraction = float(summary.get("keep_fraction") or DEFAULT_KEEP_FRACTION)
    judged = int(summary.get("judged") or 0)
    lines = [f"{judged} of {summary.get('candidates', 0)} candidate(s) got a full judgement, "
             f"{summary.get('winners', 0)} of them won it"]
    if judged < MIN_N:
        lines.append(f"too few candidates were judged ({judged}, need {MIN_N}) to say how well the cheap "
                     "stages predict the full judgement")
    stages, screen = _dict(summary.get("stages")), _dict(summary.get("screen"))
    for name in STAGES:
        entry = _dict(stages.get(name))
        if entry.get("candidates") or (name == "screen" and screen.get("screened")):
            lines.append(stage_line(name, entry, fraction, screen))
    early = _dict(summary.get("early_stop"))
    if early.get("stopped") or early.get("recorded"):
        lines.append(f"early stop: stopped {early.get('stopped', 0)} candidate(s); {early.get('recorded', 0)} "
                     f"stop(s) only recorded (the audit), of which {early.get('recorded_winners', 0)} went on to "
                     "win: the winners it would have rejected")
    return lines
