"""Judging one candidate: from a proposal to its verdict, recorded.

`CandidateEvaluator` applies a proposal's edits on a candidate branch (an edit that fails, or touches a
path outside the policy, makes it invalid), commits it and stores the proposal and its diff, runs the gates
(safety, smoke, trainability) on the candidate alone, then the paired judgement: seed pairs of parent and
candidate measured through the executor (local slots or a Ray cluster) until the promotion rules decide.
A passed candidate is merged (with --auto-apply) or left for review; every candidate ends with its
`result.json` in the store and a `CycleOutcome`.

The order is the crash-safety order of evolver/loop.py: the proposal and diff are committed before the
cascade runs, and a merge happens before the result is stored.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edits.engine import EditError, apply_edits
from edits.paths import PathRejected
from evolver.cascade import eval_time_cap
from evolver.executor import ExecutorSides, StageJob, StageOutcome, make_executor
from evolver.judge import CandidateJudge, Judgement, SeedPair
from evolver.merge_message import merge_message, merge_trailers
from evolver.promotion import ConfirmationRule, SelectionRule
from evolver.record import MergeConflict
from evolver.run_context import RunContext, utc_now
from evolver.verdicts import PASSED
from proposals.schema import Proposal

GATE_STAGES = ("safety", "smoke", "trainability")


@dataclass
class CycleOutcome:
    proposal_id: str | None
    verdict: str
    reason: str = ""
    score: float | None = None
    delta: float | None = None
    timings: dict[str, float] = field(default_factory=dict)


class CandidateEvaluator:
    """Judges candidates against the run's current parent (`ctx.baseline`), under the run's selection and
    confirmation rules (made once, from the run's settings) and its error control (`ctx.control`)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        s = ctx.settings
        first = max(2, len(s.seeds))
        self.selection_rule = SelectionRule(min_seeds=first, max_seeds=max(s.max_seeds, first),
                                            min_mean_gain=s.margin)
        self.confirmation_rule = ConfirmationRule(seeds=s.confirm_seeds, min_mean_gain=s.margin)
        self.executor: Any = None  # made at the first judgement (evolver/executor.py)

    def evaluate(self, proposal: Proposal, cycle: int, info: dict[str, Any]) -> CycleOutcome:
        """Apply the proposal on a fresh candidate branch, commit it with its diff, then gate and judge it."""
        ctx = self.ctx
        pid = proposal.id
        timings: dict[str, float] = {"llm": float(info.get("llm_seconds", 0.0))}
        result: dict[str, Any] = {"proposal_id": pid, "run_id": ctx.run_id, "cycle": cycle,
                                  "title": proposal.title, "started": utc_now(), "provider": info,
                                  "citations": [c.arxiv_id for c in proposal.citations]}
        ctx.display.upsert({"id": pid, "cycle": cycle, "title": proposal.title, "stage": "apply",
                            "verdict": "running"})
        ctx.display.stage("apply", f"{pid}: {len(proposal.edits)} edit(s)")
        t0 = time.monotonic()
        cand = ctx.record.create_candidate(pid)
        try:
            applied = apply_edits(cand.path, list(proposal.edits), ctx.policy)
        except (EditError, PathRejected) as exc:
            timings["patch"] = time.monotonic() - t0
            ctx.record.discard_candidate(cand)
            ctx.store.save_proposal(proposal)
            if isinstance(exc, EditError):
                result["edit_errors"] = [e.describe() for e in exc.errors]
            return self.finish(result, "invalid", "apply", str(exc), timings)
        sha = ctx.record.commit_candidate(cand, proposal)
        diff = ctx.record.diff(cand)
        ctx.store.save_proposal(proposal, diff)
        timings["patch"] = time.monotonic() - t0
        result.update(candidate_commit=sha, parent=cand.parent, branch=cand.branch,
                      edits=[getattr(a, "__dict__", str(a)) for a in applied])
        return self.run_committed(cand, proposal, result, timings)

    def run_committed(self, cand: Any, proposal: Proposal, result: dict[str, Any],
                      timings: dict[str, float]) -> CycleOutcome:
        """The gates (safety, smoke, trainability) on the candidate alone, then the judgement: seed pairs
        of parent and candidate measured side by side until the promotion rules decide."""
        ctx = self.ctx
        s = ctx.settings
        pid = cand.proposal_id
        assert ctx.baseline is not None
        changed = sorted({e.file for e in proposal.edits})
        out = ctx.run_dir / "candidates" / pid
        gates = ctx.cascade(cand.path, out / "gates", GATE_STAGES, changed, cand.parent)
        result["stages"] = gates.to_dict()["stages"]
        for run in gates.stages:
            timings[run.stage] = timings.get(run.stage, 0.0) + float(run.duration_s)
        try:
            if not gates.ok:
                ctx.record.record_result(cand, f"failed:{gates.failed_stage}", reason=gates.reason)
                return self.finish(result, "failed", gates.failed_stage, f"{gates.failed_stage}: {gates.reason}",
                                   timings)
            judgement = self.judge(cand, out, timings)
            result["judgement"] = judgement.to_dict()
            result["error_control"] = ctx.control.to_dict()
            ctx.save_control()
            if judgement.verdict == "failed":
                ctx.record.record_result(cand, f"failed:{judgement.failed_stage}", reason=judgement.reason)
                return self.finish(result, "failed", judgement.failed_stage, judgement.reason, timings)
            comp = _comparison(judgement, s.metric)
            result["comparison"] = comp
            result["baseline"] = ctx.baseline.to_dict()
            scores = {k: comp[src] for k, src in (("score", "score"), ("delta", "delta"), ("baseline", "baseline_mean"),
                                                  ("lower_bound", "lower_bound")) if comp.get(src) is not None}
            trailers = {"rule": judgement.rule, "reason": judgement.reason,
                        "seeds": comp["seeds"], "confirmation-seeds": comp["confirmation_seeds"]}
            if judgement.verdict == PASSED and s.auto_apply:
                try:
                    merge = ctx.record.merge_candidate(cand, scores, metrics=trailers,
                                                       message=merge_message(proposal, comp, judgement, s.metric),
                                                       trailers=merge_trailers(proposal, comp, s.metric))
                except MergeConflict as exc:
                    ctx.record.record_result(cand, "rejected", scores, reason=str(exc))
                    return self.finish(result, "rejected", None, str(exc), timings, comp)
                result["merge_commit"] = merge
                self.adopt(cand, [])
                return self.finish(result, "merged", None, judgement.reason, timings, comp)
            if judgement.verdict == PASSED:
                ctx.record.record_result(cand, "pending-review", scores, reason=judgement.reason)
                return self.finish(result, "pending-review", None,
                                   judgement.reason + "; run `python evolve.py review` to approve", timings, comp)
            ctx.record.record_result(cand, judgement.verdict, scores, reason=judgement.reason)
            return self.finish(result, judgement.verdict, None, judgement.reason, timings, comp)
        finally:
            ctx.record.remove_candidate(cand)

    def judge(self, cand: Any, out: Path, timings: dict[str, float]) -> Judgement:
        """The paired judgement of `cand` against the run's worktree (the parent), through the executor;
        each side's train and evaluate times add to `timings` (the parent's as parent-<stage>)."""
        ctx = self.ctx
        s = ctx.settings
        assert ctx.baseline is not None
        eval_cap = eval_time_cap(ctx.baseline.eval_seconds())
        side_by_side = bool(s.side_by_side)
        threads = ctx.stage_threads()
        cpus = max(1.0, s.cpus / 2) if side_by_side else s.cpus
        trees = {"parent": ctx.record.run_worktree(), "candidate": cand.path}
        if self.executor is None:  # local slots (the GPU ids of --gpu-ids in turn) or a Ray cluster
            self.executor = make_executor(ctx.executor_kind, ray_address=s.ray_address,
                                          workers=s.workers or (2 if side_by_side else 1), gpu_ids=s.gpu_ids,
                                          backend=ctx.backend if ctx.executor_kind == "local" else None)

        def make_job(side: str, seed: int, phase: str) -> StageJob:  # gpu_ids: the executor's slot or node
            options = {"task": s.task, "budget_seconds": s.budget_seconds, "backend": s.backend,
                       "stages": ["train", "evaluate"], "gpus": s.gpus, "memory_mb": s.memory_mb, "cpus": cpus,
                       "threads": threads, "label": f"{ctx.run_id}-{side}", "setup_allowance_s":
                       s.setup_allowance_seconds, "eval_cap_s": eval_cap if side == "candidate" else None}
            return StageJob(side, seed, phase, str(trees[side]), str(ctx.harness_dir), str(ctx.data_dir()),
                            str(out / f"{phase}-seed{seed}-{side}"), options, image=s.image)

        def finish(job: StageJob, outcome: StageOutcome) -> None:
            res = outcome.cascade()
            if res is None:  # the executor lost the side; the judge voids its pair
                return
            Path(job.out_dir).mkdir(parents=True, exist_ok=True)
            res.save(Path(job.out_dir) / "cascade.json")
            for run in res.stages:
                key = run.stage if job.side == "candidate" else f"parent-{run.stage}"
                timings[key] = timings.get(key, 0.0) + float(run.duration_s)

        measure = ExecutorSides(self.executor, make_job, s.metric, finish=finish,
                                progress=lambda side: ctx.on_stage if side == "candidate" else None)

        def on_pair(pair: SeedPair) -> None:
            what = "void: " + pair.void_reason if pair.void else (
                f"parent {pair.parent:.3f} candidate {pair.candidate:.3f} gain {pair.gain:+.3f}"
                if pair.gain is not None else "not scored")
            ctx.display.log(f"{cand.proposal_id} {pair.phase} seed {pair.seed}: {what}")

        judge = CandidateJudge(measure, selection=self.selection_rule, confirmation=self.confirmation_rule,
                               control=ctx.control, first_seeds=list(s.seeds), side_by_side=side_by_side,
                               tolerance=s.throughput_tolerance, on_pair=on_pair, submit=measure.submit,
                               on_control=ctx.save_control, proposal_id=cand.proposal_id)
        return judge.judge()

    def adopt(self, cand: Any, scores: list[float]) -> None:
        """A merged candidate is the new best. Its selection-time scores are biased upward by the selection,
        so they are never its baseline: the new best is measured afresh before the next comparison."""
        self.ctx.baseline = None

    def finish(self, result: dict[str, Any], verdict: str, failed_stage: str | None, reason: str,
               timings: dict[str, float], comp: dict[str, Any] | None = None) -> CycleOutcome:
        """Store the candidate's result.json, show its row on the display and count its outcome."""
        ctx = self.ctx
        result.update(verdict=verdict, failed_stage=failed_stage, reason=reason, timings=timings,
                      finished=utc_now())
        result["non_training_share"] = _non_training_share(timings)
        ctx.store.save_result(result["proposal_id"], result)
        score = comp.get("score") if comp else None
        delta = comp.get("delta") if comp else None
        outcome = CycleOutcome(result["proposal_id"], verdict, reason, score, delta, timings)
        ctx.display.upsert({"id": outcome.proposal_id, "stage": failed_stage or "done", "verdict": verdict,
                            "score": score, "delta": delta, "reason": reason})
        ctx.outcomes.append(outcome)
        return outcome


def _comparison(judgement: Judgement, metric: str) -> dict[str, Any]:
    """The verdict's evidence in the shape history, review and the report read: the selection pairs (seeds,
    parent and candidate scores, gains), the confirmation pairs, the decisions and the rule."""
    j = judgement.to_dict()
    sel_gains = [g for g in j["selection_gains"] if g is not None]
    cand = [c for c in j["selection_candidate"] if c is not None]
    base = [b for b in j["selection_parent"] if b is not None]
    decision = judgement.confirmation or judgement.selection
    numbers = decision.numbers if decision else {}
    return {
        "metric": metric,
        "verdict": judgement.verdict,
        "reason": judgement.reason,
        "rule": judgement.rule,
        "seeds": j["selection_seeds"],
        "candidate": cand,
        "baseline": base,
        "gains": sel_gains,
        "confirmation_seeds": j["confirmation_seeds"],
        "confirmation_candidate": j["confirmation_candidate"],
        "confirmation_baseline": j["confirmation_parent"],
        "confirmation_gains": j["confirmation_gains"],
        "confirmation_level": judgement.confirmation_level,
        "mean_gain": statistics.fmean(sel_gains) if sel_gains else None,
        "score": statistics.fmean(cand) if cand else None,
        "delta": statistics.fmean(sel_gains) if sel_gains else None,
        "baseline_mean": statistics.fmean(base) if base else None,
        "lower_bound": numbers.get("lower_bound"),
        "level": numbers.get("level"),  # the one-sided level the deciding test used
        "void_pairs": sum(1 for p in judgement.pairs if p.void),
        "throughput": [{"seed": p.seed, "phase": p.phase, "void": p.void,
                        "parent_steps_per_second": p.parent_evidence.get("steps_per_second"),
                        "candidate_steps_per_second": p.candidate_evidence.get("steps_per_second"),
                        "parent_steps": p.parent_evidence.get("steps"),
                        "candidate_steps": p.candidate_evidence.get("steps"),
                        "load_before": p.load_before, "load_after": p.load_after} for p in judgement.pairs],
    }


def _non_training_share(timings: dict[str, float]) -> float | None:
    total = sum(timings.values())
    if not total:
        return None
    return 1 - sum(v for k, v in timings.items() if k in ("train", "evaluate", "parent-train",
                                                         "parent-evaluate")) / total
