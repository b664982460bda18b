"""Before/after proof for a refactoring of the engine: the same runs give the same records at two commits.

For each commit, a fresh clone of this repository at that commit runs the real loop (EvolutionLoop: the real
offline catalogue, real libcst edits, the real git record and store, selection, confirmation, error control,
merges) with every stage job answered by a scripted runner instead of a sandbox: gates pass (a candidate whose
tree hashes into the failing fifth fails its smoke stage), and a train+evaluate job scores
``0.6 + seed noise + side noise + effect(tree)``, the effect a fixed function of the candidate's hrm/ contents.
So every number the engine sees is a function of the code under judgement, never of timing, and two commits
whose engines behave the same write the same records.

It prints one JSON digest per commit (verdicts, reasons, scores, judgements, comparisons, proposals, diffs,
merge messages and trailers, the best branch's log; run ids, commit hashes, times and durations normalised)
and the differences between them:

    python benchmarks/compare_runs.py BEFORE AFTER [--cycles 6] [--runs 2]

Exit 0 when the digests are equal.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, git

# Run inside the clone, by the clone's own interpreter path: it may import only what that commit has.
DRIVER = r'''
import hashlib, json, re, subprocess, sys
from pathlib import Path
import numpy as np

repo, state, cycles, run_seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:  # the layered house
    from evolver.run.loop import EvolutionLoop
    from evolver.execute.local import LocalExecutor
    from evolver.execute.job import StageOutcome
    from evolver.execute.cascade import CascadeResult, StageRun
    from evolver.propose.providers.offline import OfflineProvider
    from evolver.propose.catalogue import CATALOGUE
except ImportError:  # the flat evolver/ of before
    from evolver.loop import EvolutionLoop
    from evolver.executor import LocalExecutor
    from evolver.stage_job import StageOutcome
    from evolver.cascade import CascadeResult, StageRun
    from evolver.providers.offline import OfflineProvider
    from evolver.offline_catalogue import CATALOGUE
from evolver.settings import load_settings


def tree_hash(tree):
    digest = hashlib.sha256()
    for f in sorted(Path(tree, "hrm").rglob("*.py")):
        digest.update(f.relative_to(tree).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.digest()


def effect(tree):
    h = tree_hash(tree)
    return (h[0] / 255.0) * 0.3 - 0.1  # -0.10 .. +0.20


def run(job, slot, progress):
    stages = list(job.options["stages"])
    h = tree_hash(job.tree)
    if "train" not in stages:
        fails = job.side == "candidate" and h[1] < 51 and "smoke" in stages
        runs = []
        for stage in stages:
            bad = fails and stage == "smoke"
            runs.append(StageRun(stage, None, not bad, "smoke: scripted failure" if bad else "", duration_s=0.1))
            if bad:
                break
        result = CascadeResult(not fails, "sudoku4", [job.seed], runs,
                               failed_stage="smoke" if fails else None, reason="smoke: scripted failure" if fails else "")
    else:
        base = 0.6 + 0.02 * np.random.default_rng([int(job.seed), run_seed]).standard_normal()
        side = 0.01 * np.random.default_rng([int(job.seed), run_seed, job.side == "candidate"]).standard_normal()
        value = float(base + side + effect(job.tree))
        runs = [StageRun("train", job.seed, True, "", duration_s=1.0), StageRun("evaluate", job.seed, True, "", duration_s=0.1)]
        result = CascadeResult(True, "sudoku4", [job.seed], runs,
                               scores={"exact_accuracy": [value / 2], "token_accuracy": [value]},
                               evidence=[{"seed": job.seed, "steps_per_second": 5.0, "steps": 100}])
    return StageOutcome(result.to_dict(), placement={"executor": "local", "slot": slot.index})


settings = load_settings(repo, environ={}, overrides={
    "provider": "offline", "literature": "off", "state_dir": str(state), "seeds": [0, 1, 2], "cycles": cycles,
    "auto_apply": True, "backend": "local", "workers": 2, "cohort": 1})
loop = EvolutionLoop(repo, settings, harness_dir=state / "harness",
                     provider=OfflineProvider(catalogue=CATALOGUE, seed=run_seed))
ctx = getattr(loop, "ctx", loop)
ctx.data_dir = lambda: state / "data"
executor = LocalExecutor(2, run=run)
if hasattr(loop, "_executor"):
    try:
        loop._executor = executor
    except AttributeError:
        ctx.executor = executor
else:
    ctx.executor = executor
loop.run()
store = ctx.store
out = {"run_id": ctx.run_id, "results": {}, "proposals": {}, "diffs": {}}
for pid in store.ids():
    out["results"][pid] = store.result(pid)
    out["proposals"][pid] = store.proposal(pid)
    out["diffs"][pid] = store.read_text(pid, "diff.patch")
best = f"evolve/{ctx.run_id}/best"
out["best_log"] = subprocess.run(["git", "log", "--first-parent", "--format=%s%n%b%n--", f"main..{best}"], cwd=repo,
                                 capture_output=True, text=True, check=True).stdout
print(json.dumps(out, sort_keys=True, default=str))
'''

VOLATILE = {"started", "finished", "seconds", "timings", "non_training_share", "duration_s", "wall_s", "time",
            "host_seconds", "eval_host_seconds", "round_trip_s", "queued_s", "load", "load_before", "load_after",
            "server", "elapsed_s", "started_at", "llm_seconds"}


def normalise(value: object, run_id: str) -> object:
    """Times and durations dropped; the run id, commit hashes and temporary paths replaced by placeholders."""
    if isinstance(value, dict):
        return {k: normalise(v, run_id) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list):
        return [normalise(v, run_id) for v in value]
    if isinstance(value, str):
        import re

        text = value.replace(run_id, "<run>")
        text = re.sub(r"\b[0-9a-f]{40}\b", "<sha>", text)
        text = re.sub(r"\b[0-9a-f]{7,12}\b", "<short-sha>", text)
        text = re.sub(r"/tmp/[^\s'\"]+", "<tmp>", text)
        return text
    return value


def digest(commit: str, cycles: int, run_seed: int, keep: Path) -> dict[str, object]:
    where = Path(tempfile.mkdtemp(prefix=f"compare-{commit[:8]}-", dir=keep))
    repo = where / "repo"
    git(where, "clone", "--quiet", str(ROOT), str(repo))
    git(repo, "checkout", "--quiet", commit)
    git(repo, "checkout", "--quiet", "-B", "main")
    git(repo, "config", "user.name", "bench")
    git(repo, "config", "user.email", "bench@hrm-evolve.invalid")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(repo), str(where / "state"), str(cycles), str(run_seed)],
                          cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{commit}: the driver failed:\n{proc.stderr[-4000:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return normalise(raw, raw["run_id"])  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--cycles", type=int, default=6)
    ap.add_argument("--runs", type=int, default=2, help="runs per commit, each with its own catalogue order")
    args = ap.parse_args()
    keep = Path(tempfile.mkdtemp(prefix="compare-runs-"))
    same = True
    for run_seed in range(args.runs):
        a = digest(args.before, args.cycles, run_seed, keep)
        b = digest(args.after, args.cycles, run_seed, keep)
        verdicts = {pid: (r or {}).get("verdict") for pid, r in a["results"].items()}  # type: ignore[union-attr]
        print(f"run {run_seed}: {len(verdicts)} candidates, verdicts {sorted(verdicts.values())}")
        if a == b:
            print(f"run {run_seed}: records, verdicts, messages and results identical")
            continue
        same = False
        left = json.dumps(a, indent=1, sort_keys=True).splitlines()
        right = json.dumps(b, indent=1, sort_keys=True).splitlines()
        print("\n".join(difflib.unified_diff(left, right, args.before, args.after, lineterm="", n=2)))
    print(f"clones kept under {keep}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
