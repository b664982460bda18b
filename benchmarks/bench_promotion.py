"""Error rates, power and seed cost of the promotion rule in evolver/judge/promotion.py.

    python benchmarks/bench_promotion.py --simulate --noise-sd 0.03
    python benchmarks/bench_promotion.py --simulate --noise-sd 0.05 --correlation 0.3
    python benchmarks/bench_promotion.py --simulate --noise-from scores.json   # measured per-seed baseline scores
    python benchmarks/bench_promotion.py --real [--hog] [--budget 40 --metric token_accuracy]

--simulate feeds candidates through the real decide_selection / decide_confirmation / RunErrorControl of
evolver.judge.promotion, with per-seed scores drawn from a noise model:

- --noise-sd SD: parent_s and candidate_s are normal with sd SD and correlation --correlation (the two sides of
  a pair share a seed), so the paired gain has sd SD * sqrt(2 * (1 - correlation));
- --noise-from FILE: a JSON list of per-seed baseline scores (or an object with a "scores" list); both sides
  of a pair are drawn from it with replacement (the null distribution), the candidate side shifted by the
  effect for known-effect candidates. Pairs are then uncorrelated, the worst case.

It prints, each with a 95% Wilson interval (scipy.stats.binomtest):
- per null candidate (true gain 0), each the first confirmation of its run: selection pass rate and
  false-promotion rate (selection and confirmation);
- per run of --run-length null candidates sharing one RunErrorControl: the chance that any is promoted;
- power for a known effect (--effect, default +0.05), as the first confirmation of its run, and "in a run":
  one effect candidate at a uniformly random position among --run-length - 1 null candidates;
- seed pairs spent per null and per effect candidate (selection + confirmation), and training minutes at
  --minutes-per-run per training run (two runs, parent and candidate, per pair).

--simulate then models throughput conditions (``--conditions-nulls`` / ``--conditions-effects`` candidates
per cell, 0 to skip): candidates go through the real CandidateJudge (void pairs, replacement seeds, the noise
guard, selection, confirmation), measured side by side on a simulated 2-core machine. Each pair trains for
--pair-seconds; a CPU hog is on or off over time, and a side's steps/s is --rate times 1 - (1 - --hog-slowdown)
x (the share of the pair the hog was on), times 2% noise: both sides alike, as side by side. With probability
--starve-prob per pair one side alone (parent or candidate, even odds) trains at half speed, which costs it
--starve-drop of score: the case a guard must catch. Scores: seed luck shared by both sides, --noise-sd each
side, plus the effect. Machines: quiet; a constant hog; a hog for the first 150 s only (the observed case: the
first pair at 5.77 steps/s, the rest at 11.6-12.3); a hog that comes and goes (on and off spells drawn
exponential with mean --hog-spell seconds). Guards: the side-by-side guard in force, the old
parent-throughput guard (what --serial-pairs keeps) on the same side-by-side pairs, and an ablation that voids
on the candidate/parent ratio alone. A third kind of candidate, "forging", is a null that claims a tenth of its
steps/s whenever its own training went badly (its own noise more than one sd below average, about one pair in
six, so that it stays under the void cap): the re-roll a guard trusting the candidate's claim would hand it.
Printed per cell: false-merge rate of nulls and forging nulls, power for the effect, void verdicts and void
pairs per candidate.

--real clones this repository, commits a planted regression (the CPU learning rate divided by
--regression-factor), measures the parent's per-seed noise over --noise-seeds real training seeds (two side by
side, as pairs run), then runs --real-nulls null candidates (a real edit that only offsets the data-order
seed) and --real-effects planted-regression fixes through EvolutionLoop.evaluate_candidate (gates, seed
pairs beside the parent, selection, confirmation), each as the first confirmation of its run, and prints
how many were promoted with exact 95% intervals; then the --simulate figures on the measured noise. --hog
runs a busy loop beside the whole run; with --hog-seconds S, beside the first S seconds of each candidate's
evaluation only (a transient at the start of each comparison, then a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from evolver.judge.pairs import CandidateJudge, SideRun
from evolver.judge.promotion import (
    ConfirmationRule,
    NoiseGuard,
    RunErrorControl,
    SelectionRule,
    decide_confirmation,
    decide_selection,
    describe,
    selection_boundaries,
)

# draws n paired gains (candidate - parent) for a candidate whose true gain is `effect`
Sampler = Callable[[np.random.Generator, int, float], np.ndarray]


def normal_sampler(sd: float, correlation: float) -> Sampler:
    if sd <= 0 or not -1.0 < correlation < 1.0:
        raise ValueError("need sd > 0 and -1 < correlation < 1")
    sd_pair = sd * math.sqrt(2.0 * (1.0 - correlation))

    def draw(rng: np.random.Generator, n: int, effect: float) -> np.ndarray:
        return effect + sd_pair * rng.standard_normal(n)

    return draw


def load_scores(path: Path) -> list[float]:
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = data.get("scores", data.get("baseline_scores"))
    if not isinstance(data, list) or len(data) < 3 or not all(isinstance(x, int | float) for x in data):
        raise ValueError(f"{path}: want a JSON list of >= 3 per-seed scores (or an object with a 'scores' list)")
    return [float(x) for x in data]


def resampling_sampler(scores: list[float]) -> Sampler:
    pool = np.asarray(scores, dtype=float)

    def draw(rng: np.random.Generator, n: int, effect: float) -> np.ndarray:
        parent = rng.choice(pool, size=n, replace=True)
        candidate = rng.choice(pool, size=n, replace=True) + effect
        return candidate - parent

    return draw


@dataclass
class Outcome:
    promoted: bool
    selected: bool
    selection_pairs: int
    confirmation_pairs: int

    @property
    def pairs(self) -> int:
        return self.selection_pairs + self.confirmation_pairs


def run_candidate(rng: np.random.Generator, draw: Sampler, effect: float, sel: SelectionRule,
                  conf: ConfirmationRule, control: RunErrorControl) -> Outcome:
    """One candidate through selection (one pair at a time) and, if selected, confirmation on fresh draws."""
    pool = draw(rng, sel.max_seeds, effect)
    n = sel.min_seeds
    while True:
        d = decide_selection(pool[:n].tolist(), sel)
        if d.action != "more":
            break
        n += 1
    if d.action != "pass":
        return Outcome(False, False, n, 0)
    fresh = draw(rng, conf.seeds, effect).tolist()
    c = decide_confirmation(fresh, conf, alpha=control.next_level())
    control.record(c.passed)
    return Outcome(c.passed, True, n, conf.seeds)


def wilson(k: int, n: int) -> str:
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return f"{k / n:7.4f}  [{ci.low:.4f}, {ci.high:.4f}]  ({k}/{n})"


def mean_ci(xs: list[float]) -> str:
    m = statistics.fmean(xs)
    half = 1.96 * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return f"{m:6.2f} +- {half:.2f}"


def simulate(args: argparse.Namespace) -> int:
    sel = SelectionRule()
    overrides = {k: v for k, v in (("max_seeds", args.max_seeds), ("alpha", args.alpha)) if v is not None}
    sel = replace(sel, **overrides)
    conf = ConfirmationRule() if args.conf_seeds is None else replace(ConfirmationRule(), seeds=args.conf_seeds)

    def new_control() -> RunErrorControl:
        return RunErrorControl() if args.exponent is None else RunErrorControl(exponent=args.exponent)

    if args.noise_from:
        scores = load_scores(Path(args.noise_from))
        draw = resampling_sampler(scores)
        sd = statistics.stdev(scores)
        noise = (f"resampled from {len(scores)} measured per-seed scores in {args.noise_from} (sd {sd:.4f}; "
                 f"paired-gain sd about {sd * math.sqrt(2):.4f})")
    else:
        if args.noise_sd is None:
            print("--simulate needs --noise-sd SD or --noise-from FILE", file=sys.stderr)
            return 2
        draw = normal_sampler(args.noise_sd, args.correlation)
        noise = (f"normal per-seed noise sd {args.noise_sd:g}, correlation {args.correlation:g} within a pair "
                 f"(paired-gain sd {args.noise_sd * math.sqrt(2 * (1 - args.correlation)):.4f})")
    rng = np.random.default_rng(args.seed)
    minutes = 2 * args.minutes_per_run
    t0 = time.monotonic()

    print(f"noise: {noise}")
    print(f"rule: {describe(sel, conf, new_control())}")
    print("selection boundaries (n, nominal alpha, t_pass, nominal beta, t_futility):")
    for b in selection_boundaries(sel):
        print(f"  n={b['n']:2d}  alpha {b['nominal_alpha']:.5f}  t_pass {b['t_pass']:8.3f}  "
              f"beta {b['nominal_beta']:.5f}  t_fut {b['t_futility']:7.3f}")
    print()

    # 1. null candidates, each the first confirmation of its run
    nulls = [run_candidate(rng, draw, 0.0, sel, conf, new_control()) for _ in range(args.nulls)]
    k_sel = sum(o.selected for o in nulls)
    k_fp = sum(o.promoted for o in nulls)
    print(f"null candidates (true gain 0), N={args.nulls}, each the first confirmation of its run:")
    print(f"  selection pass rate              {wilson(k_sel, args.nulls)}")
    print(f"  false-promotion rate / candidate {wilson(k_fp, args.nulls)}")
    pairs0 = [o.pairs for o in nulls]
    print(f"  seed pairs spent / null          {mean_ci(pairs0)}  (about {statistics.fmean(pairs0) * minutes:.0f} "
          f"training-minutes at {args.minutes_per_run:g} min per run)")
    print()

    # 2. runs of null candidates sharing one run-level control
    any_fp = 0
    for _ in range(args.runs):
        control = new_control()
        hits = [run_candidate(rng, draw, 0.0, sel, conf, control).promoted for _ in range(args.run_length)]
        any_fp += any(hits)
    print(f"runs of {args.run_length} null candidates, N={args.runs} runs:")
    print(f"  P(any false promotion in a run)  {wilson(any_fp, args.runs)}")
    print()

    # 3. known-effect candidates, first confirmation of their run
    eff = [run_candidate(rng, draw, args.effect, sel, conf, new_control()) for _ in range(args.effects)]
    k_pow = sum(o.promoted for o in eff)
    k_sel1 = sum(o.selected for o in eff)
    print(f"candidates with true gain {args.effect:+g}, N={args.effects}, each the first confirmation of its run:")
    print(f"  selection pass rate              {wilson(k_sel1, args.effects)}")
    print(f"  power (promoted)                 {wilson(k_pow, args.effects)}")
    pairs1 = [o.pairs for o in eff]
    print(f"  seed pairs spent / candidate     {mean_ci(pairs1)}  (about {statistics.fmean(pairs1) * minutes:.0f} "
          f"training-minutes)")
    print()

    # 4. one effect candidate at a random position among nulls
    k_in = 0
    k_in_fp = 0
    for _ in range(args.runs):
        control = new_control()
        pos = int(rng.integers(args.run_length))
        for i in range(args.run_length):
            o = run_candidate(rng, draw, args.effect if i == pos else 0.0, sel, conf, control)
            if i == pos:
                k_in += o.promoted
            else:
                k_in_fp += o.promoted
    print(f"runs of {args.run_length} with one {args.effect:+g} candidate at a random position among nulls, "
          f"N={args.runs}:")
    print(f"  power in a run                   {wilson(k_in, args.runs)}")
    print(f"  false promotions / null in them  {wilson(k_in_fp, args.runs * (args.run_length - 1))}")
    print()
    print(f"({time.monotonic() - t0:.1f} s; rng seed {args.seed})")
    if args.conditions_nulls or args.conditions_effects:
        print()
        sd = args.noise_sd if args.noise_sd is not None else statistics.stdev(load_scores(Path(args.noise_from)))
        simulate_conditions(argparse.Namespace(**{**vars(args), "noise_sd": sd}))
    return 0


from common import clone_head, git  # noqa: E402


# ---------------------------------------------------------------------------------------------- conditions
class Machine:
    """A simulated machine: a clock in seconds and a CPU hog that is on or off over time."""

    def __init__(self, kind: str, rng: np.random.Generator, spell: float) -> None:
        self.kind, self.rng, self.spell = kind, rng, spell
        self.now = 0.0
        self.changes: list[float] = []  # come-and-go: the times the hog flips, from an initial state
        self.on_at_zero = bool(rng.integers(2))
        if kind == "comes-and-goes":
            t = 0.0
            while t < 10_000.0:
                t += float(rng.exponential(spell))
                self.changes.append(t)

    def _on(self, t: float) -> bool:
        if self.kind == "quiet":
            return False
        if self.kind == "constant":
            return True
        if self.kind == "first-150s":
            return t < 150.0
        flips = int(np.searchsorted(self.changes, t, side="right"))
        return self.on_at_zero != bool(flips % 2)

    def hog_share(self, start: float, seconds: float, steps: int = 64) -> float:
        """The share of [start, start + seconds) the hog was on."""
        ts = start + (np.arange(steps) + 0.5) * seconds / steps
        return float(np.mean([self._on(float(t)) for t in ts]))


MACHINES = ("quiet", "constant", "first-150s", "comes-and-goes")


def ratio_only_conditions(parent_rates: Sequence[float | None], candidate_rates: Sequence[float | None], index: int,
                          tolerance: float = 0.25) -> tuple[bool, str]:
    """An ablation, not the rule: void a pair whenever the candidate/parent steps/s ratio moved beyond the tolerance
    from its median, whether or not the parent moved (it trusts the candidate's claimed rate)."""
    p, c = parent_rates[index], candidate_rates[index]
    if p is None or c is None:
        return True, "no rate"
    ratios = [cc / pp for pp, cc in zip(parent_rates, candidate_rates, strict=True) if pp is not None and cc is not None]
    shift = (c / p) / statistics.median(ratios) - 1.0
    return abs(shift) <= tolerance, f"ratio moved {shift:+.1%}"


class RatioOnlyJudge(CandidateJudge):
    conditions = staticmethod(ratio_only_conditions)


def _conditions_candidate(rng: np.random.Generator, machine: Machine, effect: float, guard: NoiseGuard,
                          args: argparse.Namespace, forging: bool = False,
                          judge_class: type[CandidateJudge] = CandidateJudge) -> tuple[str, int, int]:
    """One candidate judged side by side on the simulated machine; returns (verdict, pairs, void pairs)."""

    def side(who: str, seed_luck: float, hog: float, starved: str | None) -> SideRun:
        factor = 1.0 - (1.0 - args.hog_slowdown) * hog
        own = float(rng.standard_normal())
        score = seed_luck + args.noise_sd * own + (effect if who == "candidate" else 0.0)
        if starved == who:
            factor *= 0.5
            score -= args.starve_drop
        rate = args.rate * factor * (1.0 + 0.02 * float(rng.standard_normal()))
        if forging and who == "candidate" and own < -1.0:
            rate *= 0.1  # a bad draw of its own: it claims a tenth of its speed, hoping for a void pair
        return SideRun(True, score, evidence={"steps_per_second": rate, "steps": int(rate * args.pair_seconds)})

    def submit_pair(sides: list[str], seed: int, phase: str) -> list[Future[SideRun]]:
        hog = machine.hog_share(machine.now, args.pair_seconds)
        machine.now += args.pair_seconds
        luck = 0.62 + 0.02 * float(rng.standard_normal())
        starved = (("parent", "candidate")[int(rng.integers(2))] if rng.random() < args.starve_prob else None)
        futures = []
        for who in sides:
            f: Future[SideRun] = Future()
            f.set_result(side(who, luck, hog, starved))
            futures.append(f)
        return futures

    def measure(who: str, seed: int, phase: str) -> SideRun:
        raise AssertionError("side by side: pairs go through submit_pair")

    judge = judge_class(measure, selection=SelectionRule(), confirmation=ConfirmationRule(),
                           control=RunErrorControl(), first_seeds=[0, 1, 2], side_by_side=True,
                           submit_pair=submit_pair, guard=guard)
    j = judge.judge()
    return j.verdict, len(j.pairs), sum(p.void for p in j.pairs)


def simulate_conditions(args: argparse.Namespace) -> None:
    """False merges, power and voids of the noise guards on a simulated machine (see the module docstring)."""
    guards: dict[str, tuple[NoiseGuard, type[CandidateJudge]]] = {
        "side-by-side guard": (NoiseGuard(), CandidateJudge),
        "old parent guard": (NoiseGuard(side_by_side=False), CandidateJudge),
        "ratio-only ablation": (NoiseGuard(), RatioOnlyJudge),
    }
    print(f"throughput conditions: pairs of {args.pair_seconds:g}s at {args.rate:g} steps/s, a hog slows both sides "
          f"to {args.hog_slowdown:g}x, one side alone starved (half speed, -{args.starve_drop:g} score) in "
          f"{args.starve_prob:.0%} of pairs, per-side noise sd {args.noise_sd:g}; come-and-go spells of mean "
          f"{args.hog_spell:g}s; nulls N={args.conditions_nulls}, effect {args.effect:+g} N={args.conditions_effects}, "
          f"forging nulls N={args.conditions_nulls // 4} per cell")
    t0 = time.monotonic()
    header = (f"  {'machine':15s} {'guard':19s} {'false merge (null)':>27s} {'false merge (forging)':>25s} "
              f"{'power':>25s} {'void verdicts':>14s} {'void pairs/cand':>16s}")
    print(header)
    rng = np.random.default_rng(args.seed + 1)
    for kind in MACHINES:
        for name, (guard, judge_class) in guards.items():
            rows: dict[str, list[tuple[str, int, int]]] = {"null": [], "forging": [], "effect": []}
            for what, count, effect in (("null", args.conditions_nulls, 0.0),
                                        ("forging", args.conditions_nulls // 4, 0.0),
                                        ("effect", args.conditions_effects, args.effect)):
                for _ in range(count):
                    machine = Machine(kind, rng, args.hog_spell)
                    machine.now = float(rng.uniform(0, 2 * args.hog_spell)) if kind == "comes-and-goes" else 0.0
                    rows[what].append(_conditions_candidate(rng, machine, effect, guard, args,
                                                            forging=what == "forging", judge_class=judge_class))
            every = [r for rs in rows.values() for r in rs]

            def rate(rs: list[tuple[str, int, int]], verdict: str) -> str:
                k = sum(v == verdict for v, _, _ in rs)
                if not rs:
                    return "n/a"
                ci = stats.binomtest(k, len(rs)).proportion_ci(confidence_level=0.95, method="wilson")
                return f"{k / len(rs):.4f} [{ci.low:.4f},{ci.high:.4f}]"

            voids = sum(v == "void" for v, _, _ in every) / max(1, len(every))
            void_pairs = statistics.fmean(n for _, _, n in every) if every else float("nan")
            print(f"  {kind:15s} {name:19s} {rate(rows['null'], 'passed'):>27s} {rate(rows['forging'], 'passed'):>25s} "
                  f"{rate(rows['effect'], 'passed'):>25s} {voids:14.3f} {void_pairs:16.2f}")
    print(f"({time.monotonic() - t0:.1f} s)")


ROOT = Path(__file__).resolve().parents[1]
NULL_TARGET = "BatchStream.__init__"
NULL_LINE = "self.rng = np.random.default_rng([seed, 0xDA7A])"
REGRESSION_TARGET = "_cpu_train"



def _function_source(path: Path, qualname: str) -> str:
    """The source of a top-level function or a method (``Class.method``) in ``path``."""
    import ast

    text = path.read_text()
    tree = ast.parse(text)
    parts = qualname.split(".")
    nodes: list[ast.AST] = list(tree.body)
    node: ast.AST | None = None
    for part in parts:
        node = next(n for n in nodes if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part)
        nodes = list(node.body)  # type: ignore[attr-defined]
    segment = ast.get_source_segment(text, node)  # type: ignore[arg-type]
    assert segment is not None
    return segment


def _proposal(pid: str, title: str, file: str, target: str, code: str) -> Any:
    from proposals.schema import load_proposal

    return load_proposal(json.dumps({
        "id": pid, "title": title, "rationale": "benchmark candidate of known effect",
        "hypothesis": "see the benchmark", "citations": [],
        "edits": [{"op": "replace_function", "file": file, "target": target, "code": code}],
        "expected_effect": {"metric": "exact_accuracy", "direction": "increase", "size": 0.0,
                            "confidence": "low"},
        "risk": {"level": "low", "failure_modes": []},
        "provenance": {"provider": None, "model": None, "prompt_hash": None, "parent_commit": None},
    }))


def _clopper_pearson(k: int, n: int) -> str:
    if n == 0:
        return "n/a"
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return f"{k}/{n} = {k / n:.3f} [95% CI {ci.low:.3f}, {ci.high:.3f}]"


def run_real_loop(args: argparse.Namespace) -> int:
    """Part 2: baseline noise over many real training seeds, then real null and planted-regression
    candidates through the engine's loop (EvolutionLoop.evaluate_candidate: apply, gates, seed pairs side
    by side, selection, confirmation), each the first confirmation of its run. Prints the measured rates
    with exact intervals, then the same rule on resampled measured noise."""
    import subprocess
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from evolver.execute.cascade import run_cascade
    from evolver.judge.promotion import RunErrorControl as Control
    from evolver.run.display import LoopDisplay
    from evolver.run.loop import EvolutionLoop
    from evolver.settings import Settings

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-promotion-"))
    repo = tmp / "repo"
    clone_head(repo)
    presets = repo / "hrm" / "presets.py"
    original = _function_source(presets, REGRESSION_TARGET)
    planted = original.replace("lr: float = 3e-3", f"lr: float = {3e-3 / args.regression_factor:g}")
    assert planted != original, "the planted regression no longer applies: update the benchmark"
    presets.write_text(presets.read_text().replace(original, planted))
    git(repo, "commit", "--quiet", "-am", f"planted regression: CPU lr / {args.regression_factor:g}")

    hog = None
    if args.hog and not args.hog_seconds:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        print(f"CPU hog running beside the run (pid {hog.pid})")
    elif args.hog:
        print(f"a CPU hog beside the first {args.hog_seconds:g}s of each candidate's evaluation")
    settings = Settings(provider="offline", task=args.task, seeds=[0, 1, 2], budget_seconds=args.budget,
                        backend=args.backend, metric=args.metric, auto_apply=False, literature="off", cycles=0,
                        **({"setup_allowance_seconds": args.setup_allowance} if args.setup_allowance else {}))
    loop = EvolutionLoop(repo, settings, display=LoopDisplay(live=False))
    try:
        loop.measure_baseline()
        print(f"run {loop.ctx.run_id} in {repo}; task {args.task}, budget {args.budget:g}s, metric {args.metric}, "
              f"backend {args.backend}; parent: the planted-regression commit")
        # ---- noise: the parent alone on many seeds, two side by side (as a pair runs)
        worktree = loop.ctx.record.run_worktree()

        def one(seed: int) -> float:
            res = run_cascade(worktree, loop.ctx.harness_dir, loop.ctx.data_dir(), tmp / "noise" / f"seed{seed}",
                              task=args.task, seeds=[seed], budget_seconds=args.budget, backend=loop.ctx.backend,
                              stages=("train", "evaluate"), threads=max(1, settings.threads // 2),
                              cpus=max(1.0, settings.cpus / 2), setup_allowance_s=settings.setup_allowance_seconds)
            if not res.ok:
                raise RuntimeError(f"noise seed {seed}: {res.failed_stage}: {res.reason}")
            return float(res.scores[args.metric][0])

        with ThreadPoolExecutor(max_workers=2) as pool:
            noise = list(pool.map(one, range(200, 200 + args.noise_seeds)))
        noise_file = tmp / "noise.json"
        noise_file.write_text(json.dumps({"scores": noise, "task": args.task, "budget": args.budget,
                                          "metric": args.metric}))
        print(f"\nper-seed {args.metric} of the parent over {len(noise)} seeds: mean {statistics.fmean(noise):.4f}, "
              f"sd {statistics.stdev(noise):.4f} (min {min(noise):.4f}, max {max(noise):.4f}); saved to {noise_file}")

        # ---- candidates through the real loop, each the first confirmation of its run
        train_py = repo / "hrm" / "train.py"
        null_src = _function_source(train_py, NULL_TARGET)
        assert NULL_LINE in null_src, "the null candidate's line moved: update the benchmark"
        candidates = []
        for k in range(1, args.real_nulls + 1):
            code = null_src.replace("0xDA7A]", f"0xDA7A + {k}]")
            candidates.append(("null", _proposal(f"null-data-order-{k}", f"Data-order seed offset {k}",
                                                 "hrm/train.py", NULL_TARGET, code)))
        for k in range(1, args.real_effects + 1):
            candidates.append(("effect", _proposal(f"undo-regression-{k}", "Restore the CPU learning rate",
                                                   "hrm/presets.py", REGRESSION_TARGET, original)))
        outcomes: dict[str, list[tuple[str, float | None, int]]] = {"null": [], "effect": []}
        for i, (kind, proposal) in enumerate(candidates, 1):
            loop.ctx.control = Control()  # each candidate is the first confirmation of its run
            t = time.monotonic()
            out = loop.evaluate_candidate(proposal, i, {"llm_seconds": 0.0})
            result = loop.ctx.store.result(proposal.id) or {}
            burst, timer = None, None
            if args.hog and args.hog_seconds:  # a transient at the start of this comparison, then a quiet machine
                import threading

                burst = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                timer = threading.Timer(args.hog_seconds, burst.kill)
                timer.daemon = True
                timer.start()
            try:
                out = loop.evaluate_candidate(proposal, i, {"llm_seconds": 0.0})
            finally:
                if timer is not None:
                    timer.cancel()
                if burst is not None:
                    burst.kill()
                    burst.wait()
            result = loop.ctx.store.result(proposal.id) or {}
            pairs = len((result.get("judgement") or {}).get("pairs") or [])
            promoted = out.verdict in ("pending-review", "merged")
            outcomes[kind].append((out.verdict, out.delta, pairs))
            print(f"  {kind:6s} {proposal.id}: {out.verdict}{' (PROMOTED)' if promoted else ''}, mean gain "
                  f"{out.delta if out.delta is None else round(out.delta, 4)}, {pairs} seed pairs, "
                  f"{time.monotonic() - t:.0f}s; {out.reason[:160]}")
    finally:
        if hog is not None:
            hog.kill()
        loop.ctx.record.close()

    nulls, effects = outcomes["null"], outcomes["effect"]
    promoted = lambda rows: sum(1 for v, _, _ in rows if v in ("pending-review", "merged"))  # noqa: E731
    gains = [d for _, d, _ in effects if d is not None]
    print(f"\nreal runs ({time.monotonic() - started:.0f}s in all{', with a CPU hog' if args.hog else ''}):")
    print(f"  false promotions per null candidate: {_clopper_pearson(promoted(nulls), len(nulls))}")
    print(f"  planted-regression fix promoted:    {_clopper_pearson(promoted(effects), len(effects))}"
          + (f"; its measured mean gain {statistics.fmean(gains):+.4f}" if gains else ""))
    print(f"  seed pairs per null {statistics.fmean([p for _, _, p in nulls]) if nulls else float('nan'):.1f}, "
          f"per fix {statistics.fmean([p for _, _, p in effects]) if effects else float('nan'):.1f}")
    print("\nthe same rule on resampled measured noise:")
    sim = argparse.Namespace(**{**vars(args), "simulate": True, "noise_from": str(noise_file), "noise_sd": None,
                                "effect": 0.05})
    return simulate(sim)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--simulate", action="store_true", help="simulated scores through the real decide_* functions")
    mode.add_argument("--real", action="store_true",
                      help="real training: baseline noise, then null and planted-regression candidates through the loop")
    ap.add_argument("--noise-sd", type=float, default=None, help="per-seed score noise sd (each side)")
    ap.add_argument("--correlation", type=float, default=0.0, help="correlation of the two sides of a pair")
    ap.add_argument("--noise-from", default=None, help="JSON list of measured per-seed baseline scores")
    ap.add_argument("--effect", type=float, default=0.05, help="true gain of the known-effect candidates")
    ap.add_argument("--nulls", type=int, default=20000)
    ap.add_argument("--effects", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--run-length", type=int, default=20)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--minutes-per-run", type=float, default=2.0, help="minutes per training run (one side, one seed)")
    ap.add_argument("--max-seeds", type=int, default=None, help="override SelectionRule.max_seeds")
    ap.add_argument("--alpha", type=float, default=None, help="override SelectionRule.alpha")
    ap.add_argument("--conf-seeds", type=int, default=None, help="override ConfirmationRule.seeds")
    ap.add_argument("--exponent", type=float, default=None, help="override RunErrorControl.exponent")
    ap.add_argument("--conditions-nulls", type=int, default=4000,
                    help="simulate: null candidates per machine and guard through the judge (0: skip)")
    ap.add_argument("--conditions-effects", type=int, default=1000,
                    help="simulate: effect candidates per machine and guard through the judge")
    ap.add_argument("--pair-seconds", type=float, default=65.0, help="simulate: seconds one seed pair trains")
    ap.add_argument("--rate", type=float, default=12.0, help="simulate: steps/s on a quiet machine")
    ap.add_argument("--hog-slowdown", type=float, default=0.48,
                    help="simulate: speed under the hog, as a share of the quiet speed (5.77 / 12.0)")
    ap.add_argument("--hog-spell", type=float, default=150.0, help="simulate: mean seconds a come-and-go hog "
                    "stays on, and off")
    ap.add_argument("--starve-prob", type=float, default=0.05, help="simulate: share of pairs with one side starved")
    ap.add_argument("--starve-drop", type=float, default=0.05, help="simulate: score a starved side loses")
    ap.add_argument("--task", default="sudoku4", help="real mode: the task")
    ap.add_argument("--budget", type=float, default=40.0, help="real mode: training seconds per seed")
    ap.add_argument("--metric", default="token_accuracy", help="real mode: the metric in force")
    ap.add_argument("--backend", default="docker", help="real mode: the sandbox backend")
    ap.add_argument("--noise-seeds", type=int, default=12, help="real mode: seeds for the baseline noise")
    ap.add_argument("--real-nulls", type=int, default=4, help="real mode: null candidates through the loop")
    ap.add_argument("--real-effects", type=int, default=2, help="real mode: planted-regression fixes")
    ap.add_argument("--regression-factor", type=float, default=3.0,
                    help="real mode: the planted regression divides the CPU learning rate by this")
    ap.add_argument("--hog", action="store_true", help="real mode: run a CPU hog beside the whole run")
    ap.add_argument("--setup-allowance", type=float, default=None,
                    help="real mode: the host clock's setup allowance (default the run's 30 s; more on a loaded machine)")
    ap.add_argument("--hog-seconds", type=float, default=None,
                    help="real mode: the hog runs beside the first S seconds of each candidate only")
    args = ap.parse_args(argv)
    if args.real:
        return run_real_loop(args)
    return simulate(args)


if __name__ == "__main__":
    sys.exit(main())
