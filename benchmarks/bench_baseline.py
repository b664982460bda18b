"""The honest baseline through the trusted cascade: the current hrm/ trained and scored as the loop does it.

    python benchmarks/bench_baseline.py                              # sudoku4, 150 s, seeds 0 and 1, docker
    python benchmarks/bench_baseline.py --budget 75 --seeds 0 --backend local

It builds a run's splits from a fresh secret seed (train / select / final, on the host, with the trusted
generators), makes the pristine harness copy, and runs the train and evaluate stages of this checkout's
hrm/ in the sandbox, scored on the host against the selection split (and, with --final, the final split).
Prints per-seed scores, host-measured times, steps and the learning-dependence numbers. Asserts nothing;
run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from evolver.execute.cascade import run_cascade
from evolver.execute.harness_copy import pristine_harness
from puzzles.splits import ensure_run_data
from puzzles.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sudoku4")
    ap.add_argument("--budget", type=float, default=150.0)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--backend", default="docker")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--final", action="store_true", help="also score the final split (a second evaluate)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    t0 = time.perf_counter()
    data = ensure_run_data(tmp / "run", get_task(args.task))
    print(f"splits built in {time.perf_counter() - t0:.1f}s under {tmp / 'run'}")
    harness = pristine_harness(tmp / "state")
    splits = ["select"] + (["final"] if args.final else [])
    for split in splits:
        result = run_cascade(ROOT, harness, data, tmp / f"out-{split}", task=args.task, seeds=seeds,
                             budget_seconds=args.budget, backend=args.backend, stages=("train", "evaluate"),
                             threads=args.threads, cpus=float(args.threads), heldout_split=split)
        if not result.ok:
            print(f"FAILED at {result.failed_stage} (seed {result.failed_seed}): {result.reason}")
            return 1
        print(f"\n{args.task}, {args.budget:g}s budget, {split} split, backend {result.backend}:")
        for ev in result.evidence:
            print(f"  seed {ev['seed']}: exact {ev['exact_accuracy']:.3f}  token {ev['token_accuracy']:.3f}  "
                  f"steps {ev['steps']}  train {ev['train_host_seconds']:.1f}s (host)  "
                  f"eval {ev['eval_host_seconds']:.1f}s  fresh-init exact {ev['fresh_exact_accuracy']:.3f}  "
                  f"mode agreement {ev['mode_agreement']:.4f}")
        exact = result.scores["exact_accuracy"]
        print(f"  mean exact accuracy {statistics.fmean(exact):.3f} over seeds {seeds}")
        print(json.dumps(result.evidence))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
