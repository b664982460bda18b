"""Yield of proposal requests as the loop asks them: how many replies become proposals that apply, and (with
--gates) how many of those pass safety and smoke and how many change nothing, per edit format and protocol.

    python benchmarks/bench_proposals.py --provider lmstudio --host http://127.0.0.1:8080/v1 --model M --n 10 \
        [--context-tokens T] [--formats json,fenced] [--protocols direct,look-then-edit] [--max-reply-tokens R] \
        [--repair-turns 2] [--max-attempts 3] [--literature snapshot|off] [--gates] [--json-out results.json]

For each edit format (evolver/propose/providers/reply_formats.py) and each protocol (evolver/propose/look.py:
`direct`, or `look-then-edit`: a look request names an idea and the symbols to read, then the edit request
carries their source) the same N requests are asked, each built exactly as `EvolutionLoop.propose` builds it:
`RequestContext(root, task, task_facts(...))` on the current hrm/ (the task facts from the run's splits, built
once into a temp dir from a fresh secret; no measured parent, so no parent scores), no history, request i with
seed i, through `ask_for_proposal` with the loop's re-asks and repair turns (evolver/propose/repair.py). Printed
per (format, protocol), with the server's API and whether a json_schema response format constrained the reply:

- valid: requests that gave a proposal that validates (first try: the edit reply without a re-ask);
- applied: valid proposals whose edits apply to hrm/ as they came (libcst plan, nothing written);
- repaired: valid proposals that apply only after repair turns; still failing: the rest;
- refused: requests that never gave a valid proposal (invalid or truncated replies, or a look reply that never
  validated); errors: other failures;
- with --gates (a smoke run per applied proposal: 5-9 s measured on a shared 2-core machine, plus one for the
  unmodified tree): each proposal that applies (after its repairs) is applied to a temp copy of hrm/
  (edits.engine.apply_edits) and its safety and smoke stages run with the no-effect fingerprint in the LOCAL
  sandbox (evolver.execute.cascade.run_cascade, one seed, the task's budget); passed gates: safety and smoke
  ok; no-effect: a fingerprint equal to the unmodified tree's (made once the same way) by
  evolver.run.no_effect.compare, as the loop ends such a candidate. Without --gates both print
  "not measured (pass --gates)";
- tokens in and out (every request, look, re-asks and repairs included, as the server counted them);
- seconds per request (the whole ask: look, re-asks and repairs included; the gates not included).

Nothing is written to the repository. `--json-out` keeps every request's outcome, problems and gate results.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edits.engine import EditError, apply_edits, plan_edits  # noqa: E402
from edits.paths import DEFAULT_POLICY  # noqa: E402
from evolver.propose.look import PROTOCOLS, RequestContext, ask_for_proposal  # noqa: E402
from evolver.propose.prompt import HistoryItem  # noqa: E402
from evolver.propose.providers import PROVIDERS, ProviderError, get_provider  # noqa: E402
from evolver.propose.providers.reply_formats import EDIT_FORMATS  # noqa: E402
from evolver.propose.task_facts import TaskFacts, task_facts  # noqa: E402
from proposals.schema import Proposal, proposal_json_schema  # noqa: E402
from puzzles.splits import ensure_run_data  # noqa: E402
from puzzles.tasks import get_task  # noqa: E402

OUTCOMES = ("applied", "repaired", "still failing", "refused", "error")
BENCH_PROTOCOLS = ("direct", "look-then-edit")
NOT_MEASURED = "not measured (pass --gates)"


def _papers(mode: str) -> list[Any]:
    if mode == "off":
        return []
    from evolver.propose.literature import load_snapshot, select_papers

    return select_papers(load_snapshot(), 8)


class Gates:
    """Safety and smoke with the no-effect fingerprint in the local sandbox, as evolver/run/no_effect.py's
    run_gates runs them; the parent's fingerprint (the unmodified hrm/) is made once."""

    def __init__(self, root: Path, data: Path, work: Path, args: argparse.Namespace) -> None:
        from evolver.execute.harness_copy import pristine_harness

        self.root, self.data, self.work, self.args = root, data, work, args
        self.harness = pristine_harness(work / "state")
        self._parent: tuple[dict[str, Any] | None, str] | None = None
        self.parent_seconds = 0.0  # the unmodified tree's smoke + fingerprint, once (not in any proposal's seconds)

    def _tree(self, name: str) -> Path:
        dest = self.work / name
        shutil.copytree(self.root / "hrm", dest / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
        dest.chmod(0o755)
        return dest

    def _cascade(self, tree: Path, name: str, stages: list[str], manifest: Path | None) -> Any:
        from evolver.execute.cascade import run_cascade

        return run_cascade(tree, self.harness, self.data, self.work / f"out-{name}", task=self.args.task, seeds=[0],
                           budget_seconds=self.args.budget_seconds, backend="local", stages=stages,
                           threads=self.args.threads, manifest=manifest, fingerprint=True)

    def parent(self) -> tuple[dict[str, Any] | None, str]:
        from evolver.run.no_effect import CARRIER, _fingerprint_of

        if self._parent is None:
            started = time.monotonic()
            self._parent = _fingerprint_of(self._cascade(self._tree("parent"), "parent", [CARRIER], None))
            self.parent_seconds = time.monotonic() - started
        return self._parent

    def judge(self, name: str, proposal: Proposal) -> dict[str, Any]:
        """What the gates say about one proposal that applies: passed, no-effect, and why not."""
        from evolver.execute.cascade import write_manifest
        from evolver.run.no_effect import PRE_STAGES, _fingerprint_of, compare

        started = time.monotonic()
        tree = self._tree(name)
        applied = apply_edits(tree, proposal.edits, DEFAULT_POLICY)
        changed = sorted({a.file for a in applied})
        # nothing inside hrm/ is protected (evolver/run/context.py's cascade writes the same manifest)
        manifest = write_manifest(self.root, "HEAD", tree, changed, [], out_path=self.work / f"manifest-{name}.json")
        result = self._cascade(tree, name, list(PRE_STAGES), manifest)
        out: dict[str, Any] = {"passed": bool(result.ok), "failed_stage": result.failed_stage,
                               "reason": (result.reason or "")[:400], "no_effect": False}
        cached = self._parent is not None
        if result.ok:
            fp, why = _fingerprint_of(result)
            parent_fp, parent_why = self.parent()
            if fp is None or parent_fp is None:
                out["unusable"] = why or f"parent: {parent_why}"
            else:
                match = compare(parent_fp, fp)
                out.update(no_effect=match.equal, differed=match.differed, unusable=match.unusable)
            if self._parent is not None and not cached:
                started += self.parent_seconds  # the parent's fingerprint is counted once, apart
        out["seconds"] = time.monotonic() - started
        shutil.rmtree(tree, ignore_errors=True)
        return out


def applies(root: Path, proposal: Proposal) -> list[str]:
    """The plan's errors for `proposal` on `root` (none: it applies)."""
    try:
        plan_edits(root, proposal.edits, DEFAULT_POLICY)
    except EditError as exc:
        return [str(exc)[:600]]
    return []


def ask_one(provider: Any, fmt: str, protocol: str, index: int, args: argparse.Namespace, papers: list[Any],
            root: Path, facts: TaskFacts, gates: Gates | None) -> dict[str, Any]:
    """One request in format `fmt` and protocol `protocol`, built as the loop builds it: its outcome,
    attempts, repair turns, seconds, problems and (with gates) what safety, smoke and the fingerprint said."""
    history: list[HistoryItem] = []
    started = time.monotonic()
    row: dict[str, Any] = {"format": fmt, "protocol": protocol, "request": index}
    try:
        request = RequestContext(root, args.task, facts)
        reply, _prompt, record, repaired = ask_for_proposal(
            provider, request, papers, history, proposal_json_schema(), metric=args.metric, seed=index,
            protocol=protocol, progress=None, edit_format=fmt, repair_turns=args.repair_turns, policy=DEFAULT_POLICY)
    except ProviderError as exc:
        row.update(outcome="refused" if exc.kind in ("invalid_proposal", "truncated") else "error", kind=exc.kind,
                   problems=[p for a in exc.attempts for p in a.problems][-6:], message=str(exc)[:400],
                   attempts=len(exc.attempts), seconds=time.monotonic() - started)
        return row
    turns = repaired.turns if repaired is not None else []
    proposal = repaired.proposal if repaired is not None else reply.proposal
    errors = list(repaired.errors) if repaired is not None else applies(root, proposal)
    row.update(attempts=reply.attempts, first_try=reply.attempts == 1, repair_turns=len(turns),
               proposal=proposal.id, ops=[e.op for e in proposal.edits], seconds=time.monotonic() - started,
               problems=errors, asked_protocol=record.get("protocol"))
    if "look" in record:
        row["look"] = {k: record["look"].get(k) for k in ("idea", "symbols", "found", "unknown")}
    row["outcome"] = ("applied" if not turns else "repaired") if not errors else "still failing"
    if gates is not None and not errors:
        try:
            row["gates"] = gates.judge(f"{fmt}-{protocol}-{index}", proposal)
        except Exception as exc:  # a crash of the measurement itself is reported, not counted as a gate verdict
            row["gates_error"] = f"{type(exc).__name__}: {exc}"[:400]
    return row


def run_row(fmt: str, protocol: str, args: argparse.Namespace, papers: list[Any], root: Path, facts: TaskFacts,
            gates: Gates | None) -> dict[str, Any]:
    provider = get_provider(args.provider, model=args.model, host=args.host, timeout=args.timeout, max_retries=0,
                            context_tokens=args.context_tokens, max_reply_tokens=args.max_reply_tokens,
                            max_attempts=args.max_attempts)
    info = provider.preflight()
    rows = [ask_one(provider, fmt, protocol, i, args, papers, root, facts, gates) for i in range(args.n)]
    stats = provider.stats()
    counts = {k: sum(1 for r in rows if r["outcome"] == k) for k in OUTCOMES}
    valid = counts["applied"] + counts["repaired"] + counts["still failing"]
    api = f"{info.api} ({'json_schema response format' if fmt == 'json' else 'free text, no response format'})"
    judged = [r["gates"] for r in rows if "gates" in r]
    return {
        "format": fmt, "protocol": protocol, "api": api, "model": info.model, "context_tokens": info.context_tokens,
        "max_reply_tokens": info.max_reply_tokens, "n": args.n, "valid": valid,
        "valid_first_try": sum(1 for r in rows if r.get("first_try")), **counts,
        "repair_turns": sum(r.get("repair_turns", 0) for r in rows),
        "gates_measured": gates is not None, "gates_run": len(judged) if gates is not None else None,
        "passed_gates": sum(1 for g in judged if g["passed"]) if gates is not None else NOT_MEASURED,
        "no_effect": sum(1 for g in judged if g["no_effect"]) if gates is not None else NOT_MEASURED,
        "gate_errors": sum(1 for r in rows if "gates_error" in r),
        "gate_seconds": statistics.fmean(g["seconds"] for g in judged) if judged else None,
        "parent_fingerprint_seconds": gates.parent_seconds if gates is not None else None,
        "tokens_in": stats["tokens_in"], "tokens_out": stats["tokens_out"], "requests": stats["requests"],
        "seconds_per_proposal": statistics.fmean(r["seconds"] for r in rows) if rows else None,
        "rows": rows,
    }


def render(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(f"== {r['format']} | {r['protocol']} | api {r['api']} | model {r['model']} | context "
                     f"{r['context_tokens']} | reply <= {r['max_reply_tokens']} tokens | n={r['n']}")
        lines.append(f"  valid replies   {r['valid']}/{r['n']} (first try {r['valid_first_try']})")
        lines.append(f"  applied         {r['applied']}/{r['n']}")
        lines.append(f"  repaired        {r['repaired']}/{r['n']} ({r['repair_turns']} repair turn(s) in all)")
        lines.append(f"  still failing   {r['still failing']}/{r['n']}")
        lines.append(f"  refused         {r['refused']}/{r['n']}   errors {r['error']}/{r['n']}")
        if r["gates_measured"]:
            runs = r["gates_run"]
            each = f", {r['gate_seconds']:.1f} s each" if r["gate_seconds"] is not None else ""
            lines.append(f"  passed gates    {r['passed_gates']}/{runs} that apply (safety + smoke, local sandbox{each}; "
                         f"hrm/'s fingerprint once, {r['parent_fingerprint_seconds']:.1f} s)")
            lines.append(f"  no-effect       {r['no_effect']}/{runs} that apply (fingerprint equal to hrm/'s)")
            if r["gate_errors"]:
                lines.append(f"  gate errors     {r['gate_errors']} (the measurement crashed; see --json-out)")
        else:
            lines.append(f"  passed gates    {r['passed_gates']}")
            lines.append(f"  no-effect       {r['no_effect']}")
        lines.append(f"  tokens          in {r['tokens_in']}, out {r['tokens_out']} over {r['requests']} request(s)")
        spp = r["seconds_per_proposal"]
        lines.append(f"  seconds/request {spp:.1f}" if spp is not None else "  seconds/request n/a")
        kinds = sorted({p.split(':')[0] for row in r["rows"] for p in row.get("problems", [])})
        if kinds:
            lines.append("  problems seen   " + "; ".join(kinds)[:300])
    return "\n".join(lines)


def _choices(p: argparse.ArgumentParser, flag: str, raw: str, known: tuple[str, ...]) -> list[str]:
    chosen = [x.strip() for x in raw.split(",") if x.strip()]
    if not chosen or any(x not in known for x in chosen):
        p.error(f"{flag}: choose from {', '.join(known)}")
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--provider", required=True, choices=[x for x in PROVIDERS if x != "offline"])
    p.add_argument("--model", default=None)
    p.add_argument("--host", default=None)
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--context-tokens", type=int, default=None)
    p.add_argument("--max-reply-tokens", type=int, default=None)
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--repair-turns", type=int, default=2)
    p.add_argument("--formats", default=",".join(EDIT_FORMATS))
    p.add_argument("--protocols", default=",".join(BENCH_PROTOCOLS),
                   help="direct, look-then-edit or both (the loop's auto picks one of them per request)")
    p.add_argument("--task", default="sudoku4")
    p.add_argument("--metric", default="token_accuracy")
    p.add_argument("--budget-seconds", type=float, default=40.0, help="the run's budget (task facts, smoke)")
    p.add_argument("--literature", choices=["snapshot", "off"], default="snapshot")
    p.add_argument("--gates", action="store_true",
                   help="run safety + smoke + the no-effect fingerprint in the local sandbox on every proposal "
                        "that applies (a smoke run each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the gate stages")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    args.formats = _choices(p, "--formats", args.formats, tuple(EDIT_FORMATS))
    args.protocols = _choices(p, "--protocols", args.protocols,
                              tuple(x for x in PROTOCOLS if x in BENCH_PROTOCOLS))
    return args


def run(args: argparse.Namespace, root: Path = REPO) -> list[dict[str, Any]]:
    papers = _papers(args.literature)
    spec = get_task(args.task)
    with tempfile.TemporaryDirectory(prefix="bench-proposals-") as tmp:
        work = Path(tmp)
        data = ensure_run_data(work / "run", spec)  # the run's splits, as RunContext builds them
        facts = task_facts(args.task, args.metric, args.budget_seconds, baseline=None, data_dir=data,
                           eval_segments=spec.eval_segments, n_train=spec.n_train)
        gates = Gates(root, data, work, args) if args.gates else None
        return [run_row(fmt, protocol, args, papers, root, facts, gates)
                for fmt in args.formats for protocol in args.protocols]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except ProviderError as exc:
        print(f"bench_proposals: {exc}", file=sys.stderr)
        return 2
    print(render(results))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
