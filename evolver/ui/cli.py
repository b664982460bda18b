"""The ``evolve.py`` command line: subcommands registered in one list, each a small parser plus a handler.

Subcommands here: ``apply`` (a proposal file onto a new candidate branch), ``proposals list|show|diff`` and
``history`` (candidates of a run, read from git: branches, trailers, notes and the stored files); ``run``,
``review``, ``report`` and ``sandbox`` live in :mod:`evolver.ui.run_cmd`.

Adding a subcommand: write a function
``add_<name>_command(subparsers)`` that calls ``subparsers.add_parser(...)`` and sets
``handler=<callable(argparse.Namespace) -> int>`` with ``set_defaults``, then append it to
:data:`SUBCOMMANDS` (REGISTRATION POINT below). ``run`` is the default: ``evolve.py``
with no subcommand (or with only options) runs it.

Exit codes: 0 success, 1 the operation failed (patch did not apply, git error, unknown id), 2 bad input
(invalid proposal, usage error).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from evolver.record.git_record import (
    CandidateExists,
    EvolutionRecord,
    RecordError,
    RunNotFound,
    fetch_runs,
    list_runs,
    open_run,
    repo_toplevel,
)
from evolver.record.store import ProposalStore
from evolver.ui.run_cmd import add_report_command, add_review_command, add_run_command, add_sandbox_command
from evolver.verdicts import MEANING as VERDICT_MEANING
from evolver.verdicts import MERGED
from evolver.verdicts import style as verdict_style

Handler = Callable[[argparse.Namespace], int]
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

DEFAULT_SUBCOMMAND = "run"


def _out() -> Console:
    return Console(soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _add_record_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", default=".", help="the repository that holds the run (default: .)")
    parser.add_argument("--run-id", default=None, help="the run (default: the latest run in the repository)")


def _open_existing_run(args: argparse.Namespace) -> EvolutionRecord:
    """The record of ``--run-id`` or of the latest run; raises RunNotFound when there is none."""
    return open_run(args.repo, args.run_id)


# ================================================================================================= apply
def add_apply_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "apply", help="apply a proposal file on a new candidate branch of a run",
        description="Validate PROPOSAL.json, apply its edits on branch evolve/<run>/cand/<id> (from the run's "
                    "current best), commit with trailers, store proposal.json and diff.patch on the run branch "
                    "and print the diff. With no --run-id the latest run is used, or a new run is started.")
    parser.add_argument("proposal", type=Path, help="proposal JSON file")
    _add_record_options(parser)
    parser.add_argument("--keep-worktree", action="store_true", help="leave the candidate's worktree in place")
    parser.set_defaults(handler=cmd_apply)


def cmd_apply(args: argparse.Namespace) -> int:
    from proposals.schema import ProposalError, load_proposal

    err = _err()
    try:
        text = args.proposal.read_text(encoding="utf-8")
    except OSError as exc:
        err.print(f"[red]cannot read {args.proposal}:[/red] {exc}", markup=True, highlight=False)
        return 2
    try:
        proposal = load_proposal(text)
    except ProposalError as exc:
        err.print(f"invalid proposal {args.proposal}: {len(exc.problems)} problem(s)", style="red",
                  highlight=False)
        for problem in exc.problems:
            err.print(f"  - {problem}", markup=False, highlight=False)
        return 2
    try:
        from edits.engine import EditError, apply_edits
        from edits.paths import DEFAULT_POLICY, PathRejected
    except ImportError as exc:  # the patch engine is another module; say so plainly if it is missing
        raise NotImplementedError(f"edits.engine is not available: {exc}") from exc

    root = repo_toplevel(args.repo)
    runs = list_runs(root)
    run_id = args.run_id or (runs[-1] if runs else None)
    with EvolutionRecord(root, run_id) as rec:
        try:
            cand = rec.create_candidate(proposal.id)
        except CandidateExists as exc:
            err.print(f"{exc}", style="red", markup=False, highlight=False)
            return 1
        try:
            apply_edits(cand.path, proposal.edits, DEFAULT_POLICY)
        except (EditError, PathRejected) as exc:
            rec.discard_candidate(cand)
            err.print(f"proposal {proposal.id} does not apply:", style="red", highlight=False)
            err.print(str(exc), markup=False, highlight=False)
            return 1
        if proposal.provenance.parent_commit is None:
            proposal = proposal.model_copy(
                update={"provenance": proposal.provenance.model_copy(update={"parent_commit": cand.parent})})
        sha = rec.commit_candidate(cand, proposal)
        diff = rec.diff(cand)
        ProposalStore(rec).save_proposal(proposal, diff=diff)
        if not args.keep_worktree:
            rec.remove_candidate(cand)
    out = _out()
    out.print(f"run:       {rec.run_id}", markup=False, highlight=False)
    out.print(f"branch:    {cand.branch}", markup=False, highlight=False)
    out.print(f"commit:    {sha}", markup=False, highlight=False)
    if args.keep_worktree:
        out.print(f"worktree:  {cand.path}", markup=False, highlight=False)
    out.print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))
    return 0


# ================================================================================================= proposals
def add_proposals_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("proposals", help="list, show or diff the stored proposals of a run")
    inner = parser.add_subparsers(dest="proposals_command", metavar="ACTION", required=True)
    listing = inner.add_parser("list", help="the stored proposals of the run")
    _add_record_options(listing)
    listing.set_defaults(handler=cmd_proposals_list)
    show = inner.add_parser("show", help="a stored proposal.json (and result.json)")
    show.add_argument("proposal_id")
    _add_record_options(show)
    show.set_defaults(handler=cmd_proposals_show)
    diff = inner.add_parser("diff", help="the diff of a proposal's candidate")
    diff.add_argument("proposal_id")
    _add_record_options(diff)
    diff.set_defaults(handler=cmd_proposals_diff)


def refused_replies(rec: EvolutionRecord) -> list[dict[str, Any]]:
    """LLM replies of the run that never became a valid proposal (every attempt's raw text and the reasons it
    was refused): from the record branch, plus any only in the run's state directory (`failed_proposals.jsonl`,
    written first, kept by runs made before the record branch held them)."""
    from evolver.settings import load_settings

    rows = ProposalStore(rec).refused_replies()
    seen = {str(r.get("id")) for r in rows}
    path = load_settings(rec.root).state_path(rec.root) / "runs" / rec.run_id / "failed_proposals.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and str(entry.get("id")) not in seen:
                rows.append(entry)
    return rows


def cmd_proposals_list(args: argparse.Namespace) -> int:
    with _open_existing_run(args) as rec:
        store = ProposalStore(rec)
        branches = set(rec.candidate_ids())
        table = Table(title=f"proposals of run {rec.run_id}")
        for col in ("id", "title", "branch", "files"):
            table.add_column(col)
        for pid in sorted(set(store.ids()) | branches):
            data = store.proposal(pid) or {}
            table.add_row(pid, str(data.get("title", "")), "yes" if pid in branches else "-",
                          ", ".join(store.files(pid)))
        for entry in refused_replies(rec):
            attempts = len(entry.get("attempts") or [])
            table.add_row(str(entry.get("id") or f"cycle-{entry.get('cycle')}"),
                          f"[red]refused[/red] ({attempts} attempt(s)): {entry.get('reason', '')}", "-",
                          "failed_proposals.jsonl")
    _out().print(table)
    return 0


def cmd_proposals_show(args: argparse.Namespace) -> int:
    with _open_existing_run(args) as rec:
        store = ProposalStore(rec)
        text = store.read_text(args.proposal_id, "proposal.json")
        result = store.read_text(args.proposal_id, "result.json")
    if text is None:
        _err().print(f"no stored proposal {args.proposal_id!r} in run {rec.run_id}", style="red",
                     markup=False, highlight=False)
        return 1
    out = _out()
    out.print(Syntax(text, "json", theme="ansi_dark", background_color="default"))
    if result is not None:
        out.print("result.json:", markup=False)
        out.print(Syntax(result, "json", theme="ansi_dark", background_color="default"))
    return 0


def cmd_proposals_diff(args: argparse.Namespace) -> int:
    with _open_existing_run(args) as rec:
        diff = ProposalStore(rec).diff(args.proposal_id)
        if diff is None and args.proposal_id in rec.candidate_ids():
            diff = rec.diff(args.proposal_id)
    if diff is None:
        _err().print(f"no diff for {args.proposal_id!r} in run {rec.run_id}", style="red", markup=False,
                     highlight=False)
        return 1
    _out().print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))
    return 0


# ================================================================================================= history
@dataclass(frozen=True)
class HistoryRow:
    proposal_id: str
    parent: str
    verdict: str
    score: float | None
    delta: float | None
    citations: str
    branch: str | None


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def collect_history(rec: EvolutionRecord) -> list[HistoryRow]:
    """Every candidate of the run, from git alone: candidate branches (trailers, notes, merged or not) and the
    stored proposal files on the record branch (for candidates whose branch was pruned).

    Verdict: the note's ``verdict``; else ``result.json``'s; else ``merged`` when merged, ``pending`` when
    committed, ``no-commit`` for an empty branch and ``pruned`` for a stored proposal without a branch.
    Score and delta come from the ``score`` and ``delta`` keys of the note's (or result's) ``scores``.
    """
    store = ProposalStore(rec)
    labels = rec.best_labels()
    rows: list[HistoryRow] = []
    seen: set[str] = set()
    for info in rec.candidates():
        seen.add(info.proposal_id)
        result = store.result(info.proposal_id) or {}
        note = info.note or {}
        verdict = note.get("verdict") or result.get("verdict")
        if not verdict:
            verdict = MERGED if info.merged else "pending" if info.committed else "no-commit"
        scores = note.get("scores") or result.get("scores") or {}
        cites = ", ".join(info.trailers.get("Citations", []))
        rows.append(HistoryRow(info.proposal_id, labels.get(info.parent, info.parent[:10]), str(verdict),
                               _number(scores.get("score")), _number(scores.get("delta")), cites, info.branch))
    for pid in store.ids():
        if pid in seen:
            continue
        data = store.proposal(pid) or {}
        result = store.result(pid) or {}
        parent = str((data.get("provenance") or {}).get("parent_commit") or "")
        scores = result.get("scores") or {}
        cites = ", ".join(str(c.get("arxiv_id")) for c in data.get("citations") or [] if isinstance(c, dict))
        rows.append(HistoryRow(pid, labels.get(parent, parent[:10]), str(result.get("verdict") or "pruned"),
                               _number(scores.get("score")), _number(scores.get("delta")), cites, None))
    for entry in refused_replies(rec):
        rows.append(HistoryRow(str(entry.get("id") or f"cycle-{entry.get('cycle')}"), "-", "invalid", None, None,
                               "", None))
    return rows


# ================================================================================================= prune
def add_prune_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "prune", help="remove runs' worktrees, and optionally rejected branches and runs that never got going",
        description="Worktrees are always safe to remove (everything is on branches; commands recreate what they "
                    "need). --delete-rejected also deletes branches of candidates that were not merged (their "
                    "proposal, diff and result stay on the record branch, so history still lists them). "
                    "--failed-runs deletes whole runs that have no candidate and no merge (a run that failed at "
                    "its baseline), with their state directory.")
    parser.add_argument("--repo", default=".", help="the repository that holds the runs (default: .)")
    parser.add_argument("--run-id", default=None, help="only this run (default: every run)")
    parser.add_argument("--delete-rejected", action="store_true", help="also delete unmerged candidate branches")
    parser.add_argument("--failed-runs", action="store_true",
                        help="also delete runs with no candidate and no merge, branches and state directory")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    parser.set_defaults(handler=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    import shutil

    from evolver.settings import load_settings

    root = repo_toplevel(args.repo)
    runs = list_runs(root)
    if args.run_id:
        if args.run_id not in runs:
            raise RunNotFound(f"no run {args.run_id!r} in {root}")
        runs = [args.run_id]
    state = load_settings(root).state_path(root) / "runs"
    out = _out()
    for run_id in runs:
        with EvolutionRecord(root, run_id, create=False) as rec:
            empty = not rec.candidate_ids() and not rec.has_merges() and not ProposalStore(rec).ids()
            if args.failed_runs and empty:
                if args.dry_run:
                    out.print(f"{run_id}: would delete the run (no candidate, no merge)")
                    continue
                deleted = rec.delete_run()
                if (state / run_id).is_dir():
                    shutil.rmtree(state / run_id)
                out.print(f"{run_id}: deleted the run ({', '.join(deleted)}) and its state directory")
                continue
            if args.dry_run:
                unmerged = [pid for pid in rec.candidate_ids() if not rec.candidate_info(pid).merged]
                out.print(f"{run_id}: would remove its worktrees"
                          + (f" and {len(unmerged)} unmerged branch(es)" if args.delete_rejected else ""))
                continue
            deleted = rec.prune(delete_rejected=args.delete_rejected)
            rec.remove_run_worktree()
            out.print(f"{run_id}: worktrees removed" + (f"; deleted {len(deleted)} unmerged branch(es)"
                                                        if args.delete_rejected else ""))
    return 0


def add_history_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "history", help="the candidates of a run: parent, verdict, score, delta, citations",
        description="Read from git alone (branches, trailers, notes, stored files), so it works after a crash "
                    "or on a clone (use --fetch to get the run branches and notes from a remote first).",
        epilog="verdicts: " + "; ".join(f"{word}: {meaning}" for word, meaning in VERDICT_MEANING.items()))
    _add_record_options(parser)
    parser.add_argument("--fetch", metavar="REMOTE", default=None,
                        help="first fetch evolve/* branches and refs/notes/evolve from REMOTE")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.set_defaults(handler=cmd_history)


def cmd_history(args: argparse.Namespace) -> int:
    if args.fetch:
        fetch_runs(args.repo, args.fetch)
    with _open_existing_run(args) as rec:
        rows = collect_history(rec)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
        return 0
    table = Table(title=f"history of run {rec.run_id}")
    for col in ("id", "parent", "verdict", "score", "delta", "citations"):
        table.add_column(col, justify="right" if col in ("score", "delta") else "left")
    for row in rows:
        style = verdict_style(row.verdict)
        table.add_row(row.proposal_id, row.parent, f"[{style}]{row.verdict}[/{style}]",
                      "-" if row.score is None else f"{row.score:.4f}",
                      "-" if row.delta is None else f"{row.delta:+.4f}", row.citations or "-")
    _out().print(table)
    return 0


# ================================================================================================= wiring
# REGISTRATION POINT: one registrar per subcommand. Add `run` (the loop; it becomes the default when no
# subcommand is given), `review`, `report` and `sandbox build|doctor` here.
SUBCOMMANDS: list[Registrar] = [
    add_run_command,
    add_apply_command,
    add_proposals_command,
    add_history_command,
    add_prune_command,
    add_review_command,
    add_report_command,
    add_sandbox_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evolve.py", description="hrm-evolve: evolve the HRM code with LLM proposals checked in a sandbox.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    tokens = list(sys.argv[1:] if argv is None else argv)
    wants_default = not tokens or (tokens[0].startswith("-") and tokens[0] not in ("-h", "--help"))
    if wants_default:
        tokens.insert(0, DEFAULT_SUBCOMMAND)
    args = parser.parse_args(tokens)
    handler: Handler = args.handler
    try:
        return handler(args)
    except RecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
