"""The proof run: does evolution make HRM better, and do its gains survive fresh seeds?

    python benchmarks/bench_evolution.py                                   # 2-core CPU default (see --help)
    python benchmarks/bench_evolution.py --minutes 30 --budget 60          # a shorter look
    python benchmarks/bench_evolution.py --gpus --task sudoku6 --budget 300 --minutes 120   # a box with a GPU

From the current hrm/ (a clone of this repository's HEAD), it runs the real loop (EvolutionLoop.run: gates,
seed pairs with the parent measured beside each candidate, sequential selection, confirmation on fresh seeds,
the run-wide error control, merges on the best branch) with the offline proposer for --minutes, then measures
on the run's `final` split, which no verdict of the run read, with seeds no verdict used:

- the trajectory: per cycle, the best's score as measured beside that cycle's candidate (mean and 95% t
  interval over the pairs), the candidate's, its verdict and how many seed pairs it took;
- the keep rate (merged / candidates);
- each merge's gain re-measured: the merge commit against its first parent, side by side, --remeasure-seeds
  fresh seeds (200000 and up), on the final split;
- the final best against the starting code: --final-seeds fresh seeds (300000 and up), side by side, on the
  final split, with the paired mean gain, its 95% t interval (scipy.stats) and the target (+0.08 exact
  accuracy) met or not.

--order trm-first hands out the TRM-inspired catalogue entries (arXiv 2510.04871) that touch the CPU presets
first, largest ablation effect first, then the rest in catalogue order;
--order seeded is the provider's own seeded shuffle. The run's directory is kept (printed) for `evolve.py
history/report --repo DIR`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import clone_head, git  # noqa: E402

from evolver.intervals import t_interval  # noqa: E402

TARGET_GAIN = 0.08  # exact accuracy, on the final split
METRICS = ("exact_accuracy", "token_accuracy")
TRM_FIRST = (  # by the size of TRM's ablation effect; trm-two-layers changes only the GPU presets, so it is not here
    "trm-full-backprop-last-recursion", "trm-mlp-token-mixer", "trm-single-shared-network", "trm-ema-weights",
    "trm-halt-without-continue-loss")
REMEASURE_SEED_START = 200_000
FINAL_SEED_START = 300_000



def interval(xs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t interval (the half-width is 0 for a single value)."""
    return t_interval(xs, level) or (xs[0], xs[0], xs[0])


def fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    mean, lo, hi = interval(xs)
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def ordered_catalogue(order: str) -> tuple[Any, ...]:
    from evolver.propose.catalogue import CATALOGUE

    if order == "trm-first":
        first = [e for name in TRM_FIRST for e in CATALOGUE if e.id == name]
        return tuple(first + [e for e in CATALOGUE if e not in first])
    return CATALOGUE


class PairRunner:
    """Trains two trees side by side on one seed and scores both on one held-out split."""

    def __init__(self, loop: Any, out: Path, split: str) -> None:
        self.loop, self.out, self.split = loop, out, split
        s = loop.ctx.settings
        self.threads = max(1, s.threads // 2)
        self.cpus = max(1.0, s.cpus / 2)

    def side(self, tree: Path, seed: int, label: str) -> dict[str, float]:
        from evolver.execute.cascade import run_cascade

        s = self.loop.ctx.settings
        res = run_cascade(tree, self.loop.ctx.harness_dir, self.loop.ctx.data_dir(), self.out / f"{label}-seed{seed}",
                          task=s.task, seeds=[seed], budget_seconds=s.budget_seconds, backend=self.loop.ctx.backend,
                          stages=("train", "evaluate"), threads=self.threads, cpus=self.cpus, gpus=s.gpus,
                          gpu_ids=list(s.gpu_ids or ["0"])[:1] if s.gpus else (), heldout_split=self.split,
                          memory_mb=s.memory_mb, setup_allowance_s=s.setup_allowance_seconds)
        if not res.ok:
            raise RuntimeError(f"{label} seed {seed}: {res.failed_stage}: {res.reason}")
        return {name: float(values[0]) for name, values in res.scores.items()}

    def pairs(self, before: Path, after: Path, seeds: list[int], label: str,
              log: Callable[[str], None]) -> list[tuple[dict[str, float], dict[str, float]]]:
        rows = []
        for seed in seeds:
            with ThreadPoolExecutor(max_workers=2) as pool:
                fb = pool.submit(self.side, before, seed, f"{label}-before")
                fa = pool.submit(self.side, after, seed, f"{label}-after")
                b, a = fb.result(), fa.result()
            rows.append((b, a))
            log(f"    {label} seed {seed}: " + "; ".join(
                f"{m} before {b[m]:.3f} after {a[m]:.3f} gain {a[m] - b[m]:+.3f}" for m in METRICS))
        return rows


def checkout(repo: Path, sha: str, where: Path) -> Path:
    git(repo, "worktree", "add", "--quiet", "--detach", str(where), sha)
    return where


def trajectory(loop: Any) -> list[dict[str, Any]]:
    rows = []
    for pid in loop.ctx.store.ids():
        r = loop.ctx.store.result(pid) or {}
        pairs = [p for p in (r.get("judgement") or {}).get("pairs") or [] if not p.get("void")]
        rows.append({
            "cycle": r.get("cycle"), "id": pid, "verdict": r.get("verdict"),
            "best": [p["parent"] for p in pairs if p.get("parent") is not None],
            "candidate": [p["candidate"] for p in pairs if p.get("candidate") is not None],
            "gain": (r.get("comparison") or {}).get("mean_gain"), "pairs": len(pairs),
            "reason": r.get("reason") or "",
        })
    return sorted(rows, key=lambda x: (x["cycle"] is None, x["cycle"] or 0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sudoku4")
    ap.add_argument("--budget", type=float, default=90.0, help="training seconds per seed (each side)")
    ap.add_argument("--metric", default="exact_accuracy")
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-clock cap on the evolution loop")
    ap.add_argument("--cycles", type=int, default=0, help="cap on cycles (0: until --minutes)")
    ap.add_argument("--order", choices=["trm-first", "seeded"], default="trm-first")
    ap.add_argument("--remeasure-seeds", type=int, default=3)
    ap.add_argument("--final-seeds", type=int, default=6)
    ap.add_argument("--max-seeds", type=int, default=None, help="cap on selection pairs (engine default 10)")
    ap.add_argument("--confirm-seeds", type=int, default=None, help="confirmation pairs (engine default 6)")
    ap.add_argument("--backend", default="docker")
    ap.add_argument("--gpus", action="store_true", help="one GPU per sandbox (needs a CUDA image, --image)")
    ap.add_argument("--image", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    from evolver.propose.providers.offline import OfflineProvider
    from evolver.run.display import LoopDisplay
    from evolver.run.loop import EvolutionLoop
    from evolver.settings import Settings

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-evolution-"))
    repo = tmp / "repo"
    clone_head(repo)
    start_sha = git(repo, "rev-parse", "HEAD").strip()
    extra: dict[str, Any] = {}
    for key in ("max_seeds", "confirm_seeds", "image", "threads"):
        if getattr(args, key) is not None:
            extra[key] = getattr(args, key)
    settings = Settings(provider="offline", task=args.task, seeds=[0, 1, 2], budget_seconds=args.budget,
                        backend=args.backend, metric=args.metric, auto_apply=True, literature="snapshot",
                        cycles=args.cycles, max_runtime_seconds=args.minutes * 60, gpus=args.gpus, **extra)
    provider = OfflineProvider(catalogue=ordered_catalogue(args.order), seed=0, shuffle=args.order == "seeded")
    loop = EvolutionLoop(repo, settings, display=LoopDisplay(live=False), provider=provider)
    print(f"proof run {loop.ctx.run_id} in {repo}: task {args.task}, budget {args.budget:g}s, metric {args.metric}, "
          f"backend {args.backend}{', GPUs' if args.gpus else ''}, loop for {args.minutes:g} min, order {args.order}",
          flush=True)
    loop.run()
    loop_s = time.monotonic() - started
    print(f"\nloop stopped after {loop_s / 60:.1f} min: {loop.stop_reason}", flush=True)

    rows = trajectory(loop)
    print(f"\ntrajectory ({args.metric} on the select split; mean [95% t interval] over each cycle's pairs):")
    print(f"  {'cycle':>5}  {'candidate':36s} {'verdict':15s} {'best (parent)':24s} {'candidate':24s} pairs")
    for r in rows:
        print(f"  {r['cycle'] or '-':>5}  {r['id'][:36]:36s} {str(r['verdict'])[:15]:15s} {fmt(r['best']):24s} "
              f"{fmt(r['candidate']):24s} {r['pairs']}")
    judged = [r for r in rows if r["verdict"] not in ("invalid",)]
    merged = [r for r in rows if r["verdict"] == "merged"]
    print(f"\nkeep rate: {len(merged)}/{len(judged)} candidates merged"
          + (f" ({', '.join(r['id'] for r in merged)})" if merged else ""))
    for r in rows:
        if r["verdict"] not in ("merged", "rejected", "inconclusive"):
            print(f"  {r['id']}: {r['verdict']}: {r['reason'][:200]}")

    best_branch = loop.ctx.record.run_branch
    merges = git(repo, "log", "--first-parent", "--merges", "--reverse", "--format=%H %P", best_branch).split("\n")
    merges = [m.split() for m in merges if m.strip()]
    runner = PairRunner(loop, tmp / "remeasure", "final")
    wt = tmp / "worktrees"
    log = lambda m: print(m, flush=True)  # noqa: E731
    remeasured: dict[str, dict[str, list[float]]] = {}
    if merges:
        print(f"\neach merge re-measured on the final split, {args.remeasure_seeds} fresh seeds from "
              f"{REMEASURE_SEED_START}:")
    for k, (merge, parent, _cand) in enumerate(merges):
        before = checkout(repo, parent, wt / f"m{k}-before")
        after = checkout(repo, merge, wt / f"m{k}-after")
        seeds = list(range(REMEASURE_SEED_START + 100 * k, REMEASURE_SEED_START + 100 * k + args.remeasure_seeds))
        pairs = runner.pairs(before, after, seeds, f"merge{k}", log)
        subject = git(repo, "log", "-1", "--format=%s", merge).strip()
        remeasured[merge] = {m: [a[m] - b[m] for b, a in pairs] for m in METRICS}
        for m in METRICS:
            mean, lo, hi = interval(remeasured[merge][m])
            print(f"  {subject[:50]}: {m} gain {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                  + (f" ({'reproduces' if lo > 0 else 'does not reproduce at 95%'})" if m == args.metric else ""))

    best_sha = git(repo, "rev-parse", best_branch).strip()
    print(f"\nfinal best {best_sha[:10]} against the starting code {start_sha[:10]} on the final split, "
          f"{args.final_seeds} fresh seeds from {FINAL_SEED_START}:")
    if best_sha == start_sha:
        print("  no merge: the final best is the starting code, so this measures the noise of identical code; "
              "target not met")
    before = checkout(repo, start_sha, wt / "final-before")
    after = checkout(repo, best_sha, wt / "final-after")
    seeds = list(range(FINAL_SEED_START, FINAL_SEED_START + args.final_seeds))
    pairs = runner.pairs(before, after, seeds, "final", log)
    final: dict[str, Any] = {"pairs": pairs}
    for m in METRICS:
        gains = [a[m] - b[m] for b, a in pairs]
        mean, lo, hi = interval(gains)
        print(f"  {m}: start {fmt([b[m] for b, _ in pairs])}, best {fmt([a[m] for _, a in pairs])}; "
              f"paired gain {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
              + (f"; target +{TARGET_GAIN:.2f}: {'MET' if mean >= TARGET_GAIN and best_sha != start_sha else 'not met'}"
                 if m == "exact_accuracy" else ""))
        final[m] = {"gain": mean, "interval": [lo, hi]}
    (tmp / "proof.json").write_text(json.dumps({
        "args": vars(args), "run_id": loop.ctx.run_id, "start": start_sha, "best": best_sha, "trajectory": rows,
        "remeasured": remeasured, "final": final, "minutes": (time.monotonic() - started) / 60}, indent=1,
        default=str) + "\n")
    print(f"\n{(time.monotonic() - started) / 60:.1f} min in all; record: {repo} (evolve.py history/report "
          f"--repo {repo}); figures: {tmp / 'proof.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
