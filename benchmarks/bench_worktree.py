"""Time creating and removing a candidate worktree with the evolution record, on a clone of this repository.

    python benchmarks/bench_worktree.py [--repeats N] [--source PATH]

Clones PATH (default: the repository holding this file) into a temporary folder, starts a run there and
times, per candidate, `EvolutionRecord.create_candidate` (branch + `git worktree add`) and
`EvolutionRecord.remove_candidate` (`git worktree remove`), next to the bare `git worktree add -b` /
`git worktree remove` commands as a baseline; prints milliseconds. The source repository is only read.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT  # noqa: F401 - puts the repository on the path

from evolver.record.git_record import EvolutionRecord  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-worktree-") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "--quiet", str(args.source), str(clone)], check=True)
        files = len(subprocess.run(["git", "ls-files"], cwd=clone, text=True, capture_output=True,
                                   check=True).stdout.splitlines())
        create_ms: list[float] = []
        remove_ms: list[float] = []
        raw_add_ms: list[float] = []
        raw_remove_ms: list[float] = []
        for i in range(args.repeats):  # baseline: the bare git commands, no bookkeeping
            path = Path(tmp) / "raw" / str(i)
            t0 = time.perf_counter()
            subprocess.run(["git", "worktree", "add", "--quiet", "-b", f"raw/{i}", str(path), "HEAD"], cwd=clone,
                           check=True)
            t1 = time.perf_counter()
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=clone, check=True)
            t2 = time.perf_counter()
            raw_add_ms.append((t1 - t0) * 1000)
            raw_remove_ms.append((t2 - t1) * 1000)
        with EvolutionRecord(clone, run_id="bench") as rec:
            for i in range(args.repeats):
                t0 = time.perf_counter()
                cand = rec.create_candidate(f"bench-{i:03d}")
                t1 = time.perf_counter()
                rec.remove_candidate(cand)
                t2 = time.perf_counter()
                create_ms.append((t1 - t0) * 1000)
                remove_ms.append((t2 - t1) * 1000)
    print(f"repository: {args.source} ({files} tracked files), {args.repeats} candidates")
    rows = (("create", create_ms), ("remove", remove_ms), ("git add", raw_add_ms), ("git rm", raw_remove_ms))
    for name, values in rows:
        print(f"{name:>8}: median {statistics.median(values):7.1f} ms  mean {statistics.fmean(values):7.1f} ms  "
              f"min {min(values):7.1f} ms  max {max(values):7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
