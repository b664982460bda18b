"""Subcommands that run or follow up evolution: `run` (the default), `review`, `report`, `sandbox build|doctor`."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any

from rich.console import Console

from evolver.record import repo_toplevel


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("seeds are comma-separated integers, e.g. 0,1") from exc
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


# ================================================================================================== run
def add_run_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run", help="run the evolution loop (the default command)",
        description="Measure the baseline, then each cycle: propose -> apply on a candidate branch -> sandbox "
                    "gates -> seed pairs of parent and candidate side by side until the sequential rule decides "
                    "-> confirmation on fresh seeds -> merge (with --auto-apply) or wait for `evolve.py review`. "
                    "Settings: flags > HRM_* environment > .env > defaults.")
    p.add_argument("--repo", default=".", help="the repository to evolve (default: .)")
    p.add_argument("--provider", choices=["lmstudio", "openai", "ollama", "offline"], default=None)
    p.add_argument("--model", default=None, help="model name for the provider")
    p.add_argument("--host", default=None, help="provider base URL (default: the provider's)")
    p.add_argument("--fallback-provider", default=None,
                   help="provider to switch to when the LLM server is unreachable (e.g. offline)")
    p.add_argument("--task", default=None, help="HRM preset/task to score on (default sudoku4)")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help="the first selection seeds of every candidate (default 0,1,2); more are added while the "
                        "candidate is promising but undecided")
    p.add_argument("--max-seeds", type=int, default=None, help="cap on selection seed pairs (default 10)")
    p.add_argument("--confirm-seeds", type=int, default=None,
                   help="fresh seed pairs a selected candidate must be confirmed on (default 6)")
    p.add_argument("--throughput-tolerance", type=_positive_float, default=None,
                   help="void a seed pair whose parent trained this much (relative) off its median steps/s "
                        "(default 0.25)")
    p.add_argument("--serial-pairs", action="store_false", default=None, dest="side_by_side",
                   help="train the two sides of a pair one after the other (default: side by side)")
    p.add_argument("--executor", choices=["local", "ray", "auto"], default=None,
                   help="where the two sides of a seed pair run: local worker slots, or the nodes of a Ray "
                        "cluster (needs pip install -e '.[ray]'); auto (default): ray when --ray-address or "
                        "RAY_ADDRESS is set, else local")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="the Ray head to join, host:port (default: RAY_ADDRESS); the git record and every "
                        "verdict stay on this machine")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="local worker slots, each with its own GPU id from --gpu-ids (default: what the machine "
                        "offers: one per GPU with --gpus, else one per core at one torch thread; at least 2 side by "
                        "side, 1 with --serial-pairs)")
    p.add_argument("--cohort", type=_positive_int, default=None,
                   help="candidates judged at once, proposals requested ahead while they train (default: as many "
                        "as the workers train pairs for at once; 1 on a 2-core machine). Confirmations and merges "
                        "keep cycle order; a winner whose parent is no longer the best is rebased and confirmed "
                        "against the new best")
    p.add_argument("--screen", type=int, default=None, metavar="N",
                   help="successive halving: screen batches of N candidates with one short-budget seed pair each "
                        "and judge only the best --screen-fraction in full (default 0: off)")
    p.add_argument("--screen-fraction", type=float, default=None,
                   help="the share of each screen batch judged in full (default 0.5)")
    p.add_argument("--screen-budget", type=_positive_float, default=None, dest="screen_budget_seconds",
                   help="the screen pair's training budget in seconds (default: a quarter of --budget-seconds)")
    p.add_argument("--screen-audit", type=float, default=None,
                   help="the share of screened-out candidates judged in full anyway, so the run measures what the "
                        "screen drops (default 0.25)")
    p.add_argument("--early-stop", action="store_true", default=None,
                   help="stop a candidate whose training accuracy is clearly below its parent's at the same "
                        "elapsed time, past half the budget (local worker slots; it can only reject)")
    p.add_argument("--early-stop-margin", type=_positive_float, default=None,
                   help="how far below the parent's training accuracy stops a candidate (default 0.15)")
    p.add_argument("--early-stop-audit", type=float, default=None,
                   help="the share of early stops only recorded, not enforced, to measure what they cost "
                        "(default 0.25)")
    p.add_argument("--budget-seconds", type=_positive_float, default=None,
                   help="training budget per seed (default 40); the host kills a train stage at this plus "
                        "--setup-allowance seconds of its own clock")
    p.add_argument("--setup-allowance", type=_positive_float, default=None, dest="setup_allowance_seconds",
                   help="host-measured seconds a train stage may take beyond its budget (default 30)")
    p.add_argument("--cycles", type=int, default=None, help="number of cycles (0 = until stopped)")
    p.add_argument("--max-runtime", type=_positive_float, default=None, dest="max_runtime_seconds",
                   help="stop starting cycles after this many seconds")
    p.add_argument("--interval", type=float, default=None, dest="interval_seconds",
                   help="seconds to wait between cycles")
    p.add_argument("--auto-apply", action="store_true", default=None,
                   help="merge winners without review")
    p.add_argument("--backend", choices=["auto", "docker", "local"], default=None)
    p.add_argument("--gpus", action="store_true", default=None,
                   help="train on a GPU: one per sandbox, CUDA checked inside it (needs a CUDA image)")
    p.add_argument("--image", default=None,
                   help="sandbox image for the Docker backend (default hrm-evolve-sandbox:latest; a CUDA build for --gpus)")
    p.add_argument("--gpu-ids", type=lambda t: [x.strip() for x in t.split(",") if x.strip()], default=None,
                   help="device ids for --gpus, e.g. 0,1: the parent's sandbox takes the first, the "
                        "candidate's beside it the second (default 0)")
    p.add_argument("--margin", type=float, default=None, help="minimum mean gain to merge (default 0.01)")
    p.add_argument("--metric", choices=["exact_accuracy", "token_accuracy"], default=None,
                   help="held-out score the merge rule compares (default token_accuracy)")
    p.add_argument("--literature", choices=["auto", "snapshot", "off"], default=None)
    p.add_argument("--context-tokens", type=int, default=None,
                   help="the LLM server's context size when it does not report one (e.g. 4096)")
    p.add_argument("--max-reply-tokens", type=int, default=None,
                   help="tokens reserved for the reply, sent as max_tokens (default: a quarter of the context)")
    p.add_argument("--llm-timeout", type=_positive_float, default=None,
                   help="seconds to wait for the server's first token and between tokens (default 120)")
    p.add_argument("--llm-retries", type=int, default=None,
                   help="retries after a timeout, a dropped connection or HTTP 5xx (default 3)")
    p.add_argument("--edit-format", choices=["json", "fenced"], default=None,
                   help="how the model writes its proposal: json (one schema-constrained JSON object, code in "
                        "strings) or fenced (a short JSON header, then the code in fenced or SEARCH/REPLACE "
                        "blocks, no constrained format); default: fenced for lmstudio and ollama, json otherwise")
    p.add_argument("--repair-turns", type=int, default=None,
                   help="turns that send an edit that does not apply back to the model with its error and the "
                        "target's current source, before the proposal is recorded invalid (default 2; 0 = off; a "
                        "smoke or trainability crash gets one turn when this is above 0)")
    p.add_argument("--resume", metavar="RUN_ID", default=None, help="continue an interrupted run")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from evolver.display import LoopDisplay
    from evolver.executor import executor_kind
    from evolver.loop import EvolutionLoop
    from evolver.ray_executor import check_ray_address
    from evolver.settings import load_settings

    console = Console()
    root = repo_toplevel(args.repo)
    keys = ("provider", "model", "host", "fallback_provider", "task", "seeds", "budget_seconds", "cycles",
            "max_runtime_seconds", "interval_seconds", "auto_apply", "backend", "gpus", "margin", "metric",
            "literature", "max_seeds", "confirm_seeds", "side_by_side", "setup_allowance_seconds", "throughput_tolerance",
            "context_tokens", "max_reply_tokens", "llm_timeout", "llm_retries", "gpu_ids", "image",
            "executor", "ray_address", "workers", "cohort", "screen", "screen_fraction", "screen_budget_seconds",
            "screen_audit", "early_stop", "early_stop_margin", "early_stop_audit", "edit_format", "repair_turns")
    settings = load_settings(root, overrides={k: getattr(args, k) for k in keys})
    try:
        if executor_kind(settings.executor, settings.ray_address) == "ray":
            check_ray_address(settings.ray_address or os.environ.get("RAY_ADDRESS"))
    except (RuntimeError, ValueError) as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    # A second Ctrl-C while the loop is cleaning up should not leave a half-written record: the loop catches
    # the first one; SIGTERM is turned into the same clean stop.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with LoopDisplay(console) as display:
        loop = EvolutionLoop(root, settings, run_id=args.resume, display=display)
        outcomes = loop.run()
    console.print(f"run [bold]{loop.run_id}[/] on branch [bold]{loop.record.run_branch}[/]: {loop.stop_reason}")
    candidates = [o for o in outcomes if o.proposal_id is not None]
    refused = [o for o in outcomes if o.proposal_id is None]
    merged = [o for o in candidates if o.verdict == "merged"]
    console.print(f"{len(candidates)} candidate(s), {len(merged)} merged; {len(refused)} LLM repl(ies) never "
                  f"became a valid proposal. See: python evolve.py history --run-id {loop.run_id}")
    failed_to_start = loop.stop_reason is not None and not outcomes and loop.baseline is None
    return 1 if failed_to_start else 0


# ================================================================================================== review
def add_review_command(subparsers: Any) -> None:
    p = subparsers.add_parser("review", help="approve or reject candidates waiting for review")
    p.add_argument("--repo", default=".")
    p.add_argument("--run-id", default=None, help="the run (default: the latest)")
    p.add_argument("--approve", nargs="*", default=None, metavar="ID", help="approve these without asking")
    p.add_argument("--reject", nargs="*", default=None, metavar="ID", help="reject these without asking")
    p.set_defaults(handler=cmd_review)


def cmd_review(args: argparse.Namespace) -> int:
    from evolver.record import open_run
    from evolver.review import review

    with open_run(args.repo, args.run_id) as record:
        try:
            review(record, Console(), approve=args.approve, reject=args.reject)
        except ValueError as exc:  # a candidate that is not waiting for review
            Console(stderr=True).print(f"error: {exc}")
            return 1
    return 0


# ================================================================================================== report
def add_report_command(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="write a JSON summary and PNG plots of a run")
    p.add_argument("--repo", default=".")
    p.add_argument("--run-id", default=None, help="the run (default: the latest)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default .hrm-evolve/reports/<run>)")
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from evolver.record import open_run
    from evolver.report import write_report
    from evolver.store import ProposalStore

    with open_run(args.repo, args.run_id) as record:
        store = ProposalStore(record)
        results = [r for r in (store.result(pid) for pid in store.ids()) if r]
        baseline = next((r.get("baseline") for r in results if r.get("baseline")), None)
        out = args.out or (record.root / ".hrm-evolve" / "reports" / record.run_id)
        paths = write_report(results, out, baseline, record=record)
    console = Console()
    console.print(paths["text"].read_text(), markup=False, highlight=False)
    for name, path in paths.items():
        console.print(f"{name}: {path}")
    return 0


# ================================================================================================== sandbox
def add_sandbox_command(subparsers: Any) -> None:
    p = subparsers.add_parser("sandbox", help="build the sandbox image or check the sandbox setup")
    inner = p.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    build = inner.add_parser("build", help="build the Docker image (registry-free with --no-registry)")
    build.add_argument("rest", nargs=argparse.REMAINDER, help="options for `python -m sandbox.image build`")
    build.set_defaults(handler=cmd_sandbox_build)
    doctor = inner.add_parser("doctor", help="engine, image, GPU, and which isolation is in force")
    doctor.add_argument("rest", nargs=argparse.REMAINDER)
    doctor.set_defaults(handler=cmd_sandbox_doctor)


def cmd_sandbox_build(args: argparse.Namespace) -> int:
    from sandbox.image import main as image_main

    return int(image_main(["build", *args.rest]) or 0)


def cmd_sandbox_doctor(args: argparse.Namespace) -> int:
    from sandbox.doctor import main as doctor_main

    return int(doctor_main(list(args.rest)) or 0)


