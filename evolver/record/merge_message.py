"""The message of a merge commit on the best branch: what a researcher reads in
``git log --first-parent evolve/<run>/best``.

Subject: the proposal's title. Body: its rationale, its citations, the paired numbers of selection and
confirmation, both sides' throughput and the rule in force. The trailers (added by
:meth:`evolver.record.git_record.EvolutionRecord.merge_candidate`) carry the same numbers for machines.
"""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

WIDTH = 100


def _field(obj: object, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _fmt(values: Sequence[Any]) -> str:
    return ", ".join(f"{float(v):.4f}" for v in values if v is not None) or "-"


def _mean(values: Sequence[Any]) -> float | None:
    xs = [float(v) for v in values if v is not None]
    return statistics.fmean(xs) if xs else None


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(" ".join(str(text).split()), WIDTH, initial_indent=indent, subsequent_indent=indent)


def _rates(comparison: Mapping[str, Any], side: str) -> float | None:
    rows = [r for r in comparison.get("throughput") or [] if not r.get("void")]
    xs = [float(r[f"{side}_steps_per_second"]) for r in rows if r.get(f"{side}_steps_per_second")]
    return statistics.median(xs) if xs else None


def merge_message(proposal: object, comparison: Mapping[str, Any], judgement: object, metric: str) -> str:
    """Subject and body of the merge commit of a candidate that passed selection and confirmation."""
    title = str(_field(proposal, "title") or _field(proposal, "id"))
    parts = [" ".join(title.split())]
    rationale = _field(proposal, "rationale")
    if rationale:
        parts.append(_wrap(rationale))
    cites = []
    for c in _field(proposal, "citations") or []:
        line = f"- arXiv:{_field(c, 'arxiv_id')} {_field(c, 'title') or ''}".rstrip()
        claim = _field(c, "claim")
        cites.append(line + (f": {' '.join(str(claim).split())}" if claim else ""))
    if cites:
        parts.append("Citations:\n" + "\n".join(cites))
    sel = (f"Selection ({metric}, select split), seeds {list(comparison.get('seeds') or [])}:\n"
           f"  parent    {_fmt(comparison.get('baseline') or [])}\n"
           f"  candidate {_fmt(comparison.get('candidate') or [])}\n"
           f"  mean gain {_signed(_mean(comparison.get('gains') or []))}")
    offered, used = comparison.get("confirmation_level"), comparison.get("level")
    where = ""
    if used is not None:
        where = f" at one-sided level {float(used):.4g}" + (
            f" (the run offered {float(offered):.4g})" if offered is not None and abs(float(offered) - float(used)) > 1e-12
            else "")
    elif offered is not None:
        where = f" at one-sided level {float(offered):.4g}"
    conf = (f"Confirmation on fresh seeds {list(comparison.get('confirmation_seeds') or [])}{where}:\n"
            f"  parent    {_fmt(comparison.get('confirmation_baseline') or [])}\n"
            f"  candidate {_fmt(comparison.get('confirmation_candidate') or [])}\n"
            f"  mean gain {_signed(_mean(comparison.get('confirmation_gains') or []))}, lower bound "
            f"{_signed(comparison.get('lower_bound'))}")
    parts.append(sel + "\n" + conf)
    parent_rate, cand_rate = _rates(comparison, "parent"), _rates(comparison, "candidate")
    if parent_rate or cand_rate:
        parts.append(f"Throughput (median training steps/s over the pairs): parent "
                     f"{parent_rate or 0:.2f}, candidate {cand_rate or 0:.2f}; void pairs "
                     f"{int(comparison.get('void_pairs') or 0)}")
    reason = _field(judgement, "reason")
    if reason:
        parts.append(_wrap(f"Decision: {reason}"))
    rule = comparison.get("rule") or _field(judgement, "rule")
    if rule:
        parts.append(_wrap(f"Rule: {rule}"))
    return "\n\n".join(parts)


def merge_trailers(proposal: object, comparison: Mapping[str, Any], metric: str) -> list[tuple[str, str]]:
    """Machine-readable trailers beside the scores: metric, seeds of both phases, citations."""
    cites = [str(_field(c, "arxiv_id")) for c in _field(proposal, "citations") or [] if _field(c, "arxiv_id")]
    out = [("Metric", metric),
           ("Seeds", ", ".join(str(s) for s in comparison.get("seeds") or [])),
           ("Confirmation-Seeds", ", ".join(str(s) for s in comparison.get("confirmation_seeds") or []))]
    if cites:
        out.append(("Citations", ", ".join(cites)))
    return out
