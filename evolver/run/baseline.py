"""Measuring a parent: the run's best commit trained and scored on the run's seeds, its `Baseline`.

A parent's scores are cached under `<state>/baselines/` by the tree of its `hrm/`, the task, the budget,
the seeds, the metric, the harness version and the run, so a resumed run (or a parent already measured)
is not trained again. A merged candidate is never its own baseline: the new best is measured afresh
(see evolver/run/candidate.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from evolver.execute.harness_copy import harness_digest
from evolver.run.context import RunContext
from evolver.run.state import Baseline, StopRun


def _git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def hrm_tree(repo: Path, rev: str) -> str:
    """The git tree of `hrm/` at `rev`: what a baseline is cached by."""
    return _git(["rev-parse", f"{rev}:hrm"], repo)


def baseline_key(ctx: RunContext, tree: str) -> str:
    s = ctx.settings
    raw = json.dumps([tree, s.task, s.budget_seconds, s.seeds, s.metric, harness_digest(), ctx.run_id])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _cache_path(ctx: RunContext, tree: str) -> Path:
    return ctx.state / "baselines" / f"{baseline_key(ctx, tree)}.json"


def measure_parent(ctx: RunContext, best: str | None = None) -> Baseline:
    """The baseline of the run's best commit, from the cache or measured (train and evaluate on the run's
    seeds, as many at once as the executor's workers allow, on a pinned copy of the commit's hrm/), returned
    for the caller to adopt. A parent that fails its own cascade stops the run."""
    best = best or ctx.record.best_commit()
    tree = hrm_tree(ctx.repo, best)
    cache = _cache_path(ctx, tree)
    if cache.exists():
        data = json.loads(cache.read_text())
        return Baseline(best, tree, data["seeds"], data["scores"], data["seconds"], cached=True,
                        evidence=list(data.get("evidence") or []), task=ctx.settings.task)
    ctx.display.stage("baseline", f"measuring {best[:10]} on seeds {ctx.settings.seeds}")
    out = ctx.run_dir / "baseline" / tree[:12]
    result = ctx.cascade(ctx.parent_tree(best), out, ("train", "evaluate"), [], best, side="parent",
                         phase="baseline")
    if not result.ok:
        raise StopRun(f"the baseline itself failed at stage {result.failed_stage}: {result.reason}")
    scores = [float(x) for x in result.scores[ctx.settings.metric]]
    baseline = Baseline(best, tree, list(ctx.settings.seeds), scores, result.seconds, evidence=result.evidence,
                        task=ctx.settings.task)
    cache_baseline(ctx, baseline)
    return baseline


def cache_baseline(ctx: RunContext, b: Baseline) -> None:
    """Store a measured baseline under its cache key, atomically."""
    cache = _cache_path(ctx, b.tree)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with ctx.lock:  # a cohort's cycles may measure parents from their own threads
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(b.to_dict(), indent=2) + "\n")
        os.replace(tmp, cache)


CEILING = 0.95
OVER_CONSTANT = 0.02


def weak_baseline_warning(baseline: Baseline, metric: str) -> str | None:
    """The display's warning when the baseline leaves the rule little to measure: it solves almost no
    held-out puzzle (exact accuracy), it does no better than the best constant answer (the most frequent
    output at each position: a task file of a few output classes), or it is near the ceiling; None otherwise."""
    if metric == "exact_accuracy" and max(baseline.scores) < 0.05:
        return ("[yellow]warning:[/] the baseline solves almost no held-out puzzle at this budget, so exact "
                "accuracy can hardly tell candidates apart; raise --budget-seconds or use "
                "--metric token_accuracy")
    if not baseline.scores:
        return None
    mean = sum(baseline.scores) / len(baseline.scores)
    constants = [float(e[f"constant_baseline_{metric}"]) for e in baseline.evidence
                 if isinstance(e.get(f"constant_baseline_{metric}"), (int, float))]
    if constants and mean <= max(constants) + OVER_CONSTANT:
        return (f"[yellow]warning:[/] the baseline's held-out {metric} ({mean:.3f}) is no better than always giving "
                f"the most frequent answer ({max(constants):.3f}): at this budget it has learned little from the "
                "inputs, so most changes will look alike; raise --budget-seconds")
    if mean >= CEILING:
        return (f"[yellow]warning:[/] the baseline already scores {mean:.3f} held-out {metric}: little room is left "
                "for a gain the rule can find; use a harder task, more held-out data or a shorter --budget-seconds")
    return None
