"""Yield of proposal requests: how many replies become proposals that apply, per edit format, on any server.

    python benchmarks/bench_proposals.py --provider lmstudio --host http://127.0.0.1:8080/v1 --model M --n 10 \
        [--context-tokens T] [--formats json,fenced] [--max-reply-tokens R] [--repair-turns 2] \
        [--max-attempts 3] [--literature snapshot|off] [--json-out results.json]

For each edit format (evolver/propose/providers/reply_formats.py) the same N requests are asked (the prompt the loop
builds on the current hrm/: repo map, literature, no history; request i has seed i) through the provider the
loop uses, with the loop's re-asks and repair turns (evolver/propose/repair.py). Printed per format, with the
protocol (the server's API, and whether a json_schema response format constrained the reply):

- valid: requests that gave a proposal that validates (first try: without a re-ask);
- applied: valid proposals whose edits apply to hrm/ as they came (libcst plan, nothing written);
- repaired: valid proposals that apply only after repair turns; still failing: the rest;
- refused: requests that never gave a valid proposal (invalid or truncated replies); errors: other failures;
- no-effect and the gates (safety, smoke): not measured by this script (it prints so; it never guesses);
- tokens in and out (every request, re-asks and repairs included, as the server counted them);
- seconds per request (the whole ask: re-asks and repairs included).

Nothing is written to the repository. `--json-out` keeps every request's outcome and problems.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evolver.propose.prompt import HistoryItem  # noqa: E402
from evolver.propose.providers import PROVIDERS, ProviderError, get_provider  # noqa: E402
from evolver.propose.providers.reply_formats import EDIT_FORMATS  # noqa: E402
from evolver.propose.repair import ask_and_repair  # noqa: E402
from evolver.propose.repo_summary import build_repo_summary  # noqa: E402
from proposals.schema import proposal_json_schema  # noqa: E402

OUTCOMES = ("applied", "repaired", "still failing", "refused", "error")


def _papers(mode: str) -> list[Any]:
    if mode == "off":
        return []
    from evolver.propose.literature import load_snapshot, select_papers

    return select_papers(load_snapshot(), 8)


def no_effect_status() -> str:
    """What this script can say about no-effect proposals: never a guessed figure."""
    if importlib.util.find_spec("evolver.run.no_effect") is None:
        return "not measured (no no-effect check in this tree)"
    return "not measured (the no-effect check runs in the sandbox after smoke; this script does not run it)"


def ask_one(provider: Any, fmt: str, index: int, args: argparse.Namespace, papers: list[Any],
            root: Path) -> dict[str, Any]:
    """One request in format `fmt`: its outcome, attempts, repair turns, seconds and problems."""
    history: list[HistoryItem] = []
    started = time.monotonic()
    row: dict[str, Any] = {"format": fmt, "request": index}
    try:
        prompt = provider.fit_prompt(lambda budget: build_repo_summary(root, budget_tokens=budget), papers, history,
                                     proposal_json_schema(), metric=args.metric, seed=index, edit_format=fmt)
        reply, repaired = ask_and_repair(provider, prompt, root, args.repair_turns)
    except ProviderError as exc:
        row.update(outcome="refused" if exc.kind in ("invalid_proposal", "truncated") else "error", kind=exc.kind,
                   problems=[p for a in exc.attempts for p in a.problems][-6:], message=str(exc)[:400],
                   attempts=len(exc.attempts), seconds=time.monotonic() - started)
        return row
    turns = repaired.turns if repaired is not None else []
    applies = repaired.applies if repaired is not None else True
    row.update(attempts=reply.attempts, first_try=reply.attempts == 1, repair_turns=len(turns),
               proposal=(repaired.proposal if repaired is not None else reply.proposal).id,
               ops=[e.op for e in reply.proposal.edits], seconds=time.monotonic() - started,
               problems=list(repaired.errors) if repaired is not None else [])
    if applies:
        row["outcome"] = "applied" if not turns else "repaired"
    else:
        row["outcome"] = "still failing"
    return row


def run_format(fmt: str, args: argparse.Namespace, papers: list[Any], root: Path) -> dict[str, Any]:
    provider = get_provider(args.provider, model=args.model, host=args.host, timeout=args.timeout, max_retries=0,
                            context_tokens=args.context_tokens, max_reply_tokens=args.max_reply_tokens,
                            max_attempts=args.max_attempts)
    info = provider.preflight()
    rows = [ask_one(provider, fmt, i, args, papers, root) for i in range(args.n)]
    stats = provider.stats()
    counts = {k: sum(1 for r in rows if r["outcome"] == k) for k in OUTCOMES}
    valid = counts["applied"] + counts["repaired"] + counts["still failing"]
    protocol = f"{info.api} ({'json_schema response format' if fmt == 'json' else 'free text, no response format'})"
    return {
        "format": fmt, "protocol": protocol, "model": info.model, "context_tokens": info.context_tokens,
        "max_reply_tokens": info.max_reply_tokens, "n": args.n, "valid": valid,
        "valid_first_try": sum(1 for r in rows if r.get("first_try")), **counts,
        "repair_turns": sum(r.get("repair_turns", 0) for r in rows),
        "no_effect": no_effect_status(), "gates": "not measured (safety and smoke are not run by this script)",
        "tokens_in": stats["tokens_in"], "tokens_out": stats["tokens_out"], "requests": stats["requests"],
        "seconds_per_proposal": statistics.fmean(r["seconds"] for r in rows) if rows else None,
        "rows": rows,
    }


def render(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(f"== {r['format']} | protocol {r['protocol']} | model {r['model']} | context {r['context_tokens']} "
                     f"| reply <= {r['max_reply_tokens']} tokens | n={r['n']}")
        lines.append(f"  valid replies   {r['valid']}/{r['n']} (first try {r['valid_first_try']})")
        lines.append(f"  applied         {r['applied']}/{r['n']}")
        lines.append(f"  repaired        {r['repaired']}/{r['n']} ({r['repair_turns']} repair turn(s) in all)")
        lines.append(f"  still failing   {r['still failing']}/{r['n']}")
        lines.append(f"  refused         {r['refused']}/{r['n']}   errors {r['error']}/{r['n']}")
        lines.append(f"  no-effect       {r['no_effect']}")
        lines.append(f"  passed gates    {r['gates']}")
        lines.append(f"  tokens          in {r['tokens_in']}, out {r['tokens_out']} over {r['requests']} request(s)")
        spp = r["seconds_per_proposal"]
        lines.append(f"  seconds/request {spp:.1f}" if spp is not None else "  seconds/request n/a")
        kinds = sorted({p.split(':')[0] for row in r["rows"] for p in row.get("problems", [])})
        if kinds:
            lines.append("  problems seen   " + "; ".join(kinds)[:300])
    return "\n".join(lines)


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
    p.add_argument("--metric", default="token_accuracy")
    p.add_argument("--literature", choices=["snapshot", "off"], default="snapshot")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in EDIT_FORMATS]
    if bad or not formats:
        p.error(f"--formats: choose from {', '.join(EDIT_FORMATS)}")
    args.formats = formats
    return args


def run(args: argparse.Namespace, root: Path = REPO) -> list[dict[str, Any]]:
    papers = _papers(args.literature)
    return [run_format(fmt, args, papers, root) for fmt in args.formats]


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
