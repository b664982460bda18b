"""What the no-effect check costs per candidate: the smoke gate with and without the fingerprint it carries
(and the fingerprint as a stage of its own), beside the trainability gate it saves, through the real cascade
on this checkout's hrm/ and a small sudoku4 split.

    python benchmarks/bench_no_effect.py [--backend local|docker|auto] [--repeats 3] [--threads 1]

Prints, per stage, the host-measured seconds (median and range over the repeats), the fingerprint's own
seconds inside the stage, and whether the repeats' fingerprints compare equal (they must: same code, same
seed). The parent's fingerprint costs the same once per parent tree and is cached after that.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import ROOT as REPO  # noqa: E402 - puts the repository on the path

from evolver.execute.cascade import run_cascade  # noqa: E402
from evolver.execute.harness_copy import pristine_harness  # noqa: E402
from evolver.run.no_effect import compare  # noqa: E402
from puzzles.splits import ensure_run_data  # noqa: E402
from puzzles.tasks import get_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="local")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-seconds", type=float, default=40.0)
    parser.add_argument("--stages", default="smoke,smoke+fingerprint,fingerprint,trainability")
    args = parser.parse_args()
    stages = args.stages.split(",")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = ensure_run_data(tmp / "run", get_task("sudoku4", n_train=400, n_select=100, n_final=100))
        harness = pristine_harness(tmp / "state")
        times: dict[str, list[float]] = {s: [] for s in stages}
        inner: list[float] = []
        prints: list[dict[str, object]] = []
        for i in range(args.repeats):
            for stage in stages:
                name, carried = stage.split("+")[0], stage.endswith("+fingerprint")
                res = run_cascade(REPO, harness, data, tmp / f"out-{name}-{carried}-{i}", task="sudoku4", seeds=[0],
                                  budget_seconds=args.budget_seconds, backend=args.backend, stages=[name],
                                  threads=args.threads, fingerprint=carried)
                run = res.stages[0]
                if not run.ok:
                    raise SystemExit(f"{stage} failed: {run.reason}")
                times[stage].append(run.duration_s)
                fp = run.metrics.get("fingerprint") if carried else run.metrics if name == "fingerprint" else None
                if isinstance(fp, dict):
                    inner.append(float(fp["fingerprint_seconds"]))
                    prints.append(fp)
        for stage, values in times.items():
            print(f"{stage:17s} host seconds: median {statistics.median(values):6.2f}  "
                  f"range {min(values):.2f}-{max(values):.2f}  (n={len(values)}, backend {args.backend}, "
                  f"{args.threads} thread(s))")
        if inner:
            print(f"fingerprint's own clock (trainer setup, 5 steps, reload, rollout): median "
                  f"{statistics.median(inner):.2f} s")
            same = all(compare(prints[0], p).differed == [] for p in prints[1:])
            print(f"repeats' fingerprints equal: {same}")


if __name__ == "__main__":
    main()
