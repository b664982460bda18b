"""Subcommands that run or follow up evolution: `run` (the default), `review`, `report`, `sandbox build|doctor`."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any

from rich.console import Console

from evolver.record.git_record import repo_toplevel
from evolver.ui.settings_flags import add_setting_flags, flag_overrides


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
    add_setting_flags(p)
    p.add_argument("--resume", metavar="RUN_ID", default=None, help="continue an interrupted run")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from evolver.execute.local import executor_kind
    from evolver.execute.ray_executor import check_ray_address
    from evolver.run.display import LoopDisplay
    from evolver.run.loop import EvolutionLoop
    from evolver.settings import load_settings

    console = Console()
    root = repo_toplevel(args.repo)
    settings = load_settings(root, overrides=flag_overrides(args))
    if settings.task_file and not args.resume:  # refuse a bad file before anything starts, naming the line
        from puzzles.file_task import FileTaskError, file_task_spec

        try:
            file_task_spec(settings.task_file, settings.select_file, settings.final_file, gpus=settings.gpus)
        except FileTaskError as exc:
            console.print(f"[red]task file:[/] {exc}", markup=True, highlight=False)
            return 2
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
    console.print(f"run [bold]{loop.ctx.run_id}[/] on branch [bold]{loop.ctx.record.run_branch}[/]: {loop.stop_reason}")
    candidates = [o for o in outcomes if o.proposal_id is not None]
    refused = [o for o in outcomes if o.proposal_id is None]
    merged = [o for o in candidates if o.verdict == "merged"]
    console.print(f"{len(candidates)} candidate(s), {len(merged)} merged; {len(refused)} LLM repl(ies) never "
                  f"became a valid proposal. See: python evolve.py history --run-id {loop.ctx.run_id}")
    failed_to_start = loop.stop_reason is not None and not outcomes and loop.ctx.baseline is None
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
    from evolver.record.git_record import open_run
    from evolver.ui.review import review

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
    from evolver.judge.saturation import LADDER_FILE
    from evolver.record.git_record import open_run
    from evolver.record.store import ProposalStore
    from evolver.run.ceiling import SATURATION_FILE
    from evolver.ui.report import ceiling_summary, write_report

    with open_run(args.repo, args.run_id) as record:
        store = ProposalStore(record)
        results = [r for r in (store.result(pid) for pid in store.ids()) if r]
        baseline = next((r.get("baseline") for r in results if r.get("baseline")), None)
        out = args.out or (record.root / ".hrm-evolve" / "reports" / record.run_id)
        ceiling = ceiling_summary(store.run_file(LADDER_FILE), store.run_file(SATURATION_FILE), results)
        paths = write_report(results, out, baseline, record=record, ceiling=ceiling)
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


