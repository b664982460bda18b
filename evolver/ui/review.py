"""`python evolve.py review`: approve or reject candidates that won without --auto-apply.

A pending candidate beat the baseline under the merge rule; a human reads its proposal, diff and scores and
decides. Approval merges it `--no-ff` into the run branch (scores as trailers); rejection records the verdict.
Either way the decision is written to the candidate's result.json and git note, so it survives crashes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax

from evolver.record.git_record import EvolutionRecord, MergeConflict
from evolver.record.merge_message import merge_message, merge_trailers
from evolver.record.store import ProposalStore
from evolver.verdicts import MERGED

PENDING = "pending-review"


def pending_ids(store: ProposalStore) -> list[str]:
    return [pid for pid in store.ids() if (r := store.candidate_result(pid)) is not None and r.verdict == PENDING]


def _scores(result: dict[str, Any]) -> dict[str, float]:
    comp = result.get("comparison") or {}
    cand, base = comp.get("candidate") or [], comp.get("baseline") or []
    scores: dict[str, float] = {}
    if cand:
        scores["score"] = sum(cand) / len(cand)
    if base:
        scores["baseline"] = sum(base) / len(base)
    if comp.get("mean_gain") is not None:
        scores["delta"] = float(comp["mean_gain"])
    if comp.get("lower_bound") is not None:
        scores["lower_bound"] = float(comp["lower_bound"])
    return scores


def show_candidate(console: Console, store: ProposalStore, pid: str) -> None:
    proposal = store.proposal(pid) or {}
    result = store.result(pid) or {}
    comp = result.get("comparison") or {}
    cites = ", ".join(f"arXiv:{c.get('arxiv_id')}" for c in proposal.get("citations", []))
    body = (f"[bold]{proposal.get('title', pid)}[/]\n\n{proposal.get('rationale', '')}\n\n"
            f"[bold]hypothesis[/] {proposal.get('hypothesis', '')}\n[bold]citations[/] {cites or '-'}\n"
            f"[bold]scores[/] candidate {comp.get('candidate')} vs baseline {comp.get('baseline')} "
            f"(seeds {comp.get('seeds')})\n[bold]verdict[/] {comp.get('reason', '')}")
    console.print(Panel(body, title=pid))
    diff = store.diff(pid)
    if diff:
        console.print(Syntax(diff, "diff", theme="ansi_dark", word_wrap=True))


def decide(record: EvolutionRecord, store: ProposalStore, pid: str, approve: bool, note: str = "") -> str:
    """Apply a decision; returns the new verdict ("merged", "rejected-by-reviewer" or "conflict")."""
    result = dict(store.result(pid) or {})
    if result.get("verdict") != PENDING:
        raise ValueError(f"candidate {pid} is not pending review (verdict {result.get('verdict')!r})")
    scores = _scores(result)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if approve:
        try:
            proposal = store.proposal(pid) or {"id": pid}
            comp = result.get("comparison") or {}
            metric = str(comp.get("metric") or "score")
            merge = record.merge_candidate(
                pid, scores, metrics={"reviewed": when, "note": note},
                message=merge_message(proposal, comp, result.get("judgement") or {}, metric),
                trailers=[*merge_trailers(proposal, comp, metric), ("Reviewed", f"approved {when}")])
        except MergeConflict as exc:
            verdict, result["reason"] = "conflict", str(exc)
            record.record_result(pid, verdict, scores, reason=str(exc))
        else:
            verdict = MERGED
            result["merge_commit"] = merge
    else:
        verdict = "rejected-by-reviewer"
        record.record_result(pid, verdict, scores, reason=note or "rejected in review")
    result.update(verdict=verdict, reviewed=when, review_note=note)
    store.save_result(pid, result)
    return verdict


def review(record: EvolutionRecord, console: Console, ask: Callable[[str], str] = input,
           approve: list[str] | None = None, reject: list[str] | None = None) -> int:
    """Interactive review of every pending candidate, or the given --approve/--reject ids. Returns a count."""
    store = ProposalStore(record)
    if approve or reject:
        for pid in approve or []:
            console.print(f"{pid}: {decide(record, store, pid, True)}")
        for pid in reject or []:
            console.print(f"{pid}: {decide(record, store, pid, False)}")
        return len(approve or []) + len(reject or [])
    pending = pending_ids(store)
    if not pending:
        console.print(f"no candidate of run {record.run_id} is waiting for review")
        return 0
    count = 0
    for pid in pending:
        show_candidate(console, store, pid)
        answer = ask(f"{pid}: [a]pprove, [r]eject, [s]kip? ").strip().lower()
        if answer.startswith("a"):
            console.print(f"{pid}: {decide(record, store, pid, True)}")
            count += 1
        elif answer.startswith("r"):
            console.print(f"{pid}: {decide(record, store, pid, False, ask('reason (optional): ').strip())}")
            count += 1
    return count
