"""Time of evolution cycles on sudoku4: LLM, patching, each cascade stage, and the share that is not training.

    python benchmarks/bench_cycle.py                      # 2 cycles, offline provider, default budget
    python benchmarks/bench_cycle.py --cycles 1 --budget 30 --backend local

It clones this repository's HEAD into a temporary directory and runs the README's main command there
(`evolve.py --provider offline --auto-apply --task sudoku4`), then reads the stored result.json of every
candidate. Prints figures; asserts nothing. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import ROOT, clone_head, git  # noqa: E402

TRAINING = ("train", "evaluate")



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--budget", type=float, default=None, help="training seconds per seed (default: settings)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-cycle-"))
    repo = tmp / "repo"
    clone_head(repo)
    cmd = [sys.executable, str(ROOT / "evolve.py"), "--repo", str(repo), "--provider", "offline", "--cycles",
           str(args.cycles), "--auto-apply", "--task", "sudoku4", "--backend", args.backend,
           "--literature", "snapshot"]
    if args.budget:
        cmd += ["--budget-seconds", str(args.budget)]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=repo, text=True, capture_output=True)
    wall = time.monotonic() - t0
    print(proc.stdout[-2500:])
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        print(f"evolve.py exited {proc.returncode}")
        return 1

    run_branch = next(b for b in git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/evolve/").split()
                      if b.endswith("/best"))
    run_id = run_branch.split("/")[1]
    state = repo / ".hrm-evolve" / "runs" / run_id
    base = sorted((state / "baseline").glob("*/cascade.json"))
    if base:
        cascade = json.loads(base[0].read_text())
        print(f"baseline: {cascade['seconds']:.1f} s ({len(cascade['seeds'])} seeds x train+evaluate)")
    print(f"whole command: {wall:.1f} s for {args.cycles} cycle(s) plus the baseline")
    print()
    header = f"{'candidate':28} {'verdict':10} {'cycle s':>8} " + " ".join(
        f"{k:>12}" for k in ("llm", "patch", "safety", "smoke", "trainability", "train", "evaluate"))
    print(header + f" {'non-train':>9}")
    for pid in git(repo, "ls-tree", "--name-only", f"{run_branch}:proposals/{run_id}").split():
        result = json.loads(git(repo, "show", f"{run_branch}:proposals/{run_id}/{pid}/result.json"))
        t = result.get("timings", {})
        started = datetime.fromisoformat(result["started"])
        finished = datetime.fromisoformat(result["finished"])
        cycle_s = max((finished - started).total_seconds(), sum(t.values()))
        training = sum(t.get(k, 0.0) for k in TRAINING)
        share = 1 - training / cycle_s if cycle_s else float("nan")
        print(f"{pid[:28]:28} {result['verdict'][:10]:10} {cycle_s:8.1f} " + " ".join(
            f"{t.get(k, 0.0):12.2f}" for k in ("llm", "patch", "safety", "smoke", "trainability", "train",
                                               "evaluate")) + f" {share:9.1%}")
    print("\ncycle s: wall time from proposal to stored verdict; non-train: share of it outside train+evaluate")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {repo}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
