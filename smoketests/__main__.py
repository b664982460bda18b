"""`python -m smoketests STAGE --repo /candidate --data /data --out /out --task T --seed N --budget-seconds S`

Runs one cascade stage against the candidate's `hrm` (imported from --repo, put first on sys.path after the
harness's own imports are done), writes OUT/STAGE.json ({stage, ok, reason, metrics, seconds}) atomically
and exits 0 when the stage passed, 1 when it failed. Any exception raised by candidate code (SystemExit
included) is a failure whose reason is the exception and the tail of its traceback.

Candidate code runs in this process, so the host treats STAGE.json as a report of measurements, never as
a verdict: a stage that says it failed has failed, but a pass is decided by the host from the raw numbers
and arrays (evolver/execute/gates.py), and scores only ever come from the host.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smoketests.result import StageFailure, StageResult, describe_exception, write_result

STAGES: tuple[str, ...] = ("safety", "smoke", "fingerprint", "trainability", "train", "evaluate")
STAGE_MODULES = {
    "safety": "smoketests.safety",
    "smoke": "smoketests.smoke",
    "fingerprint": "smoketests.fingerprint",
    "trainability": "smoketests.trainability",
    "train": "smoketests.train_stage",
    "evaluate": "smoketests.evaluate_stage",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m smoketests", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--repo", type=Path, required=True, help="candidate worktree holding hrm/")
    parser.add_argument("--data", type=Path, required=True, help="dataset root ({split}/dataset.json ...)")
    parser.add_argument("--out", type=Path, required=True, help="writable output directory")
    parser.add_argument("--task", default="sudoku4", help="preset / task name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-seconds", type=float, default=60.0, help="training budget (train stage)")
    parser.add_argument("--manifest", type=Path, default=None, help="safety manifest JSON")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint for the evaluate stage")
    parser.add_argument("--segments", type=int, default=None,
                        help="ACT segments the evaluate stage runs (fixed by the host; default: the model's own)")
    parser.add_argument("--steps", type=int, default=None, help="trainability steps (default 100)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $HRM_THREADS)")
    parser.add_argument("--fingerprint", action="store_true",
                        help="smoke: also record the fingerprint (smoketests/fingerprint.py) under metrics.fingerprint")
    return parser


def _set_threads(threads: int | None) -> None:
    if threads is None and os.environ.get("HRM_THREADS", "").isdigit():
        threads = int(os.environ["HRM_THREADS"])
    if threads:
        import torch

        torch.set_num_threads(threads)


def _use_candidate(repo: Path) -> None:
    """Put the candidate first on sys.path and check `hrm` really comes from it."""
    repo = repo.resolve()
    for name in [m for m in sys.modules if m == "hrm" or m.startswith("hrm.")]:
        del sys.modules[name]
    sys.path.insert(0, str(repo))
    import hrm

    origin = Path(hrm.__file__ or "").resolve()
    if repo not in origin.parents:
        raise StageFailure(f"hrm was imported from {origin}, not from the candidate at {repo}")


def _stage_runner(args: argparse.Namespace) -> Callable[[], dict[str, Any]]:
    module = importlib.import_module(STAGE_MODULES[args.stage])  # harness code, imported before the candidate
    if args.stage == "safety":
        return lambda: module.run_safety(args.repo, args.manifest)
    # harness code, imported before the candidate is on sys.path
    fingerprint = importlib.import_module("smoketests.fingerprint") if args.fingerprint else None
    _set_threads(args.threads)
    _use_candidate(args.repo)
    if args.stage == "smoke" and fingerprint is not None:
        return lambda: _smoke_and_fingerprint(module, fingerprint, args)
    if args.stage == "smoke":
        return lambda: module.run_smoke(args.data, args.task, args.seed)
    if args.stage == "fingerprint":
        return lambda: module.run_fingerprint(args.data, args.out, args.task, args.seed, args.budget_seconds,
                                              segments=args.segments)
    if args.stage == "trainability":
        return lambda: module.run_trainability(args.data, args.task, args.seed, steps=args.steps or 100)
    if args.stage == "train":
        return lambda: module.run_train(args.data, args.out, args.task, args.seed, args.budget_seconds)
    return lambda: module.run_evaluate(args.data, args.out, args.checkpoint, args.seed, segments=args.segments)


def _smoke_and_fingerprint(module: Any, fingerprint: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The smoke stage, then in the same process the fingerprint (one interpreter and torch start fewer than a
    stage of its own). A fingerprint that fails is recorded as fingerprint_error: it never fails smoke."""
    metrics = dict(module.run_smoke(args.data, args.task, args.seed) or {})
    try:
        metrics["fingerprint"] = fingerprint.run_fingerprint(args.data, args.out, args.task, args.seed,
                                                             args.budget_seconds, segments=args.segments)
    except KeyboardInterrupt:
        raise
    except StageFailure as failure:
        metrics["fingerprint_error"] = failure.reason[:4000]
    except BaseException as exc:  # candidate code may raise anything, SystemExit included
        metrics["fingerprint_error"] = describe_exception(exc)[:4000]
    return metrics


def run_stage(args: argparse.Namespace) -> StageResult:
    start = time.perf_counter()
    result = StageResult(stage=args.stage, ok=False)
    try:
        result.metrics = dict(_stage_runner(args)() or {})
        result.ok = True
    except StageFailure as failure:
        result.reason, result.metrics = failure.reason, failure.metrics
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # candidate code may raise anything, SystemExit included
        result.reason = describe_exception(exc)
    result.seconds = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_stage(args)
    write_result(args.out, result)
    status = "ok" if result.ok else "FAILED"
    print(f"[smoketests] {result.stage}: {status} in {result.seconds:.1f}s", flush=True)
    if not result.ok:
        print(result.reason, flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
