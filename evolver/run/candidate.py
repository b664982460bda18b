"""Judging one candidate: from a proposal to its verdict, recorded.

`CandidateEvaluator` applies a proposal's edits on a candidate branch (an edit that fails, or touches a
path outside the policy, makes it invalid), commits it and stores the proposal and its diff, runs the gates
(safety, smoke, trainability) on the candidate alone, then the paired judgement: seed pairs of parent and
candidate measured through the executor (local slots or a Ray cluster) until the promotion rules decide.
A passed candidate is merged (with --auto-apply) or left for review; every candidate ends with its
`result.json` in the store and a `CycleOutcome`.

The order is the crash-safety order of evolver/run/loop.py: the proposal and diff are committed before the
cascade runs, and a merge happens before the result is stored.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edits.engine import EditError, apply_edits
from edits.paths import PathRejected
from evolver.execute.cascade import eval_time_cap
from evolver.execute.job import Executor, StageJob
from evolver.judge.clock import parent_overhead, setup_allowance_for
from evolver.judge.early_stop import EarlyStopRule
from evolver.judge.guards import GuardReport
from evolver.judge.pairs import EXECUTOR_STAGE, CandidateJudge, Judgement, SeedPair, clock_checked
from evolver.judge.promotion import ConfirmationRule, SelectionRule
from evolver.judge.screening import ScreenBatches, screen_budget
from evolver.record.git_record import Candidate, MergeConflict
from evolver.record.merge_message import merge_message, merge_trailers
from evolver.run.context import RunContext
from evolver.run.guards_run import guard_message, run_guard_pairs, task_trailers
from evolver.run.no_effect import check_duplicate, index_of, run_gates
from evolver.run.sides import ExecutorSides, side_finisher
from evolver.run.state import Baseline, CycleOutcome, utc_now
from evolver.verdicts import DUPLICATE, NO_EFFECT, PASSED, SCREENED_OUT
from proposals.schema import Proposal

GATE_STAGES = ("safety", "smoke", "trainability")


class NotRebased(Exception):
    """A cohort member that passed selection against its parent could not be moved onto the new best."""


class Turn(Protocol):
    """A cohort member's place in cycle order (evolver/run/cohort.py): ``wait()`` returns once every candidate
    before it has finished."""

    def wait(self) -> None: ...




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
        # (candidate, proposal, failed stage, error) -> evolver.propose.repair.Repaired or None: the loop's repair turn
        # for a candidate that crashed its smoke or trainability gate (None: no repairs).
        self.gate_repair: Callable[[Any, Proposal, str, str], Any] | None = None

    def evaluate(self, proposal: Proposal, cycle: int, info: dict[str, Any]) -> CycleOutcome:
        """Apply the proposal on a fresh candidate branch, commit it with its diff, then gate and judge it."""
        prepared = self.prepare(proposal, cycle, info)
        if isinstance(prepared, CycleOutcome):
            return prepared
        cand, result, timings = prepared
        return self.run_committed(cand, proposal, result, timings)

    def prepare(self, proposal: Proposal, cycle: int, info: dict[str, Any], *,
                parent: str | None = None) -> CycleOutcome | tuple[Any, dict[str, Any], dict[str, float]]:
        """Apply the proposal on a fresh candidate branch from ``parent`` (default: the best) and commit it with
        its diff: the candidate, its result so far and its timings, or the outcome of an invalid proposal."""
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
        cand = ctx.record.create_candidate(pid, parent)
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
        with ctx.lock:  # a repeat of an earlier candidate of the run ends here, before any gate (no_effect.py)
            duplicate = check_duplicate(ctx, pid, sha, cand.parent, diff, result)
            if duplicate is not None:
                ctx.record.record_result(cand, DUPLICATE, reason=duplicate)
                ctx.record.remove_candidate(cand)
                return self.finish(result, DUPLICATE, None, duplicate, timings)
        return cand, result, timings

    def run_committed(self, cand: Candidate, proposal: Proposal, result: dict[str, Any],
                      timings: dict[str, float], *, baseline: Baseline | None = None,
                      turn: Turn | None = None, screen: tuple[ScreenBatches, int] | None = None) -> CycleOutcome:
        """The gates (safety, smoke, trainability) on the candidate alone, then the judgement: seed pairs
        of parent and candidate measured side by side until the promotion rules decide.

        ``baseline``: the parent's (default: the run's current one). ``turn``: in a cohort, the candidate's
        place in cycle order; its confirmation waits for it, and when the best has moved by then, the candidate
        is rebased onto the new best (and gated again) and confirmed against it. ``screen``: the run's screen
        batches and this candidate's cycle (successive halving, evolver/judge/screening.py): after its gates the
        candidate trains a screen pair, and only a kept (or audited) one goes on to the judgement."""
        ctx = self.ctx
        pid = cand.proposal_id
        baseline = baseline or ctx.baseline
        assert baseline is not None
        changed = sorted({e.file for e in proposal.edits})
        out = ctx.run_dir / "candidates" / pid
        task = baseline.task or ctx.settings.task  # the task its parent was measured on (a ladder may move on)
        result["task"] = task
        gates, no_effect = run_gates(ctx, cand.path, out / "gates", GATE_STAGES, changed, cand.parent, result,
                                     task=task)
        result["stages"] = gates.to_dict()["stages"]
        for run in gates.stages:
            timings[run.stage] = timings.get(run.stage, 0.0) + float(run.duration_s)
        current = [cand]  # the candidate as it is now (a rebase replaces it)
        try:
            if no_effect is not None:  # its fingerprint equals its parent's: no pair could tell them apart
                result["no_effect"] = no_effect.to_dict()
                with ctx.lock:
                    ctx.record.record_result(cand, NO_EFFECT, reason=no_effect.reason)
                    return self.finish(result, NO_EFFECT, None, no_effect.reason, timings)
            if not gates.ok:
                repaired = self._gate_repair(cand, proposal, gates, result, screen)
                with ctx.lock:
                    ctx.record.record_result(cand, f"failed:{gates.failed_stage}", reason=gates.reason)
                    failed = self.finish(result, "failed", gates.failed_stage,
                                         f"{gates.failed_stage}: {gates.reason}", timings)
                if repaired is None:
                    return failed
                return self._judge_repaired(cand, proposal, repaired, result, baseline, turn)
            if screen is not None:
                screened = self._screen(cand, out, timings, baseline, screen, result)
                if screened is not None:
                    return screened
            try:
                judgement = self.judge(cand, out, timings, baseline=baseline,
                                       before_confirmation=self._rebaser(current, proposal, result, out, turn))
            except NotRebased as exc:
                with ctx.lock:
                    ctx.record.record_result(current[0], "rejected", reason=str(exc))
                    return self.finish(result, "rejected", None, str(exc), timings)
            cand = current[0]
            guards = (run_guard_pairs(ctx, cand, judgement, out, timings, task=result.get("task"))
                      if judgement.verdict == PASSED and ctx.settings.guard_tasks else None)
            with ctx.lock:
                return self._settle(cand, proposal, result, timings, judgement, baseline, guards)
        finally:
            if screen is not None:
                screen[0].leave(screen[1])  # a member that ended before its screen holds up no batch
            with ctx.lock:
                ctx.record.remove_candidate(current[0])

    def _gate_repair(self, cand: Any, proposal: Proposal, gates: Any, result: dict[str, Any],
                     screen: Any) -> Any:
        """The repair turn for a candidate that crashed its smoke or trainability gate with an error (the
        stage's reason and log tail go to the model): the repaired proposal (evolver.propose.repair.Repaired) when it
        applies, else None. Not for a repaired candidate again, nor for a screened cohort member."""
        if (self.gate_repair is None or screen is not None or result.get("repair_of")
                or gates.failed_stage not in ("smoke", "trainability")):
            return None
        run = next((r for r in gates.stages if r.stage == gates.failed_stage and not r.ok), None)
        error = "\n".join(x for x in (gates.reason, run.log_tail if run is not None else "") if x)
        if "Error" not in error and "Traceback" not in error:
            return None  # a failed check, not a crash: nothing the model can read and fix
        repaired = self.gate_repair(cand, proposal, str(gates.failed_stage), error)
        if repaired is None:
            return None
        result["gate_repair"] = {"turns": repaired.info(), "applies": repaired.applies,
                                 "repaired_as": repaired.proposal.id if repaired.applies else None}
        return repaired if repaired.applies else None

    def _judge_repaired(self, cand: Any, proposal: Proposal, repaired: Any, result: dict[str, Any],
                        baseline: Baseline, turn: Turn | None) -> CycleOutcome:
        """The repaired proposal as a new candidate on the same parent: applied, committed, gated, judged."""
        info = dict(result.get("provider") or {})
        info.update(repair_of=proposal.id, repairs=[*info.get("repairs", []), *repaired.info()])
        with self.ctx.lock:
            prepared = self.prepare(repaired.proposal, int(result.get("cycle", 0)), info, parent=cand.parent)
        if isinstance(prepared, CycleOutcome):
            return prepared
        new, new_result, new_timings = prepared
        new_result["repair_of"] = proposal.id
        return self.run_committed(new, repaired.proposal, new_result, new_timings, baseline=baseline, turn=turn)

    def _screen(self, cand: Candidate, out: Path, timings: dict[str, float], baseline: Baseline,
                screen: tuple[ScreenBatches, int], result: dict[str, Any]) -> CycleOutcome | None:
        """Train the candidate's screen pair, wait for its batch and take the batch's decision: None when the
        candidate goes on to its judgement (kept, or audited), else its outcome (screened out, or failed)."""
        ctx = self.ctx
        s = ctx.settings
        batches, cycle = screen
        seed = batches.seed(cycle)
        budget = screen_budget(s)
        side_by_side = bool(s.side_by_side)
        eval_cap = eval_time_cap(baseline.eval_seconds())
        allowance = setup_allowance_for(parent_overhead(baseline.evidence), s.setup_allowance_seconds)

        def make_job(side: str, seed: int, phase: str) -> StageJob:
            tree = cand.path if side == "candidate" else ctx.parent_tree(cand.parent)
            job = ctx.stage_job(tree, out / f"screen-seed{seed}-{side}", ["train", "evaluate"], seed, side=side,
                                phase="screen", eval_cap_s=eval_cap if side == "candidate" else None,
                                task=baseline.task or None)
            job.options["budget_seconds"] = budget
            if side == "candidate":
                job.options["setup_allowance_s"] = allowance
            return job

        sides = ExecutorSides(ctx.executor, make_job, s.metric, finish=side_finisher(timings, "screen-"),
                              progress=lambda side: ctx.on_stage if side == "candidate" else None)
        ctx.display.log(f"{cand.proposal_id}: screen pair at {budget:g}s on seed {seed}")
        if side_by_side:
            fp, fc = sides.submit_pair(["parent", "candidate"], seed, "screen")
            parent, mine = fp.result(), fc.result()
        else:
            parent, mine = sides("parent", seed, "screen"), sides("candidate", seed, "screen")
        parent, mine = clock_checked(parent, mine)
        entry: dict[str, Any] = {"seed": seed, "budget_seconds": budget, "parent": parent.score,
                                 "candidate": mine.score}
        if not mine.ok and mine.failed_stage != EXECUTOR_STAGE:
            result["screen"] = entry
            reason = f"{mine.failed_stage} (screen, seed {seed}, {budget:g}s): {mine.reason}"
            with ctx.lock:
                ctx.record.record_result(cand, f"failed:{mine.failed_stage}", reason=reason)
                return self.finish(result, "failed", mine.failed_stage, reason, timings)
        gain = (float(mine.score) - float(parent.score) if parent.ok and mine.ok and parent.score is not None
                and mine.score is not None else None)
        batches.report(cycle, gain)
        decision = batches.decide(cycle)
        result["screen"] = {**entry, **decision.to_dict(), "cohort": decision.batch, "cohort_size": decision.size}
        where = (f"rank {decision.rank} of {decision.size}" if decision.rank is not None else "no screen gain")
        what = "n/a" if gain is None else f"{gain:+.3f}"
        if decision.kept or decision.audited:
            ctx.display.log(f"{cand.proposal_id}: screen gain {what}, {where}: "
                            + ("kept" if decision.kept else "dropped, but judged in full as an audit of the screen"))
            return None
        reason = (f"screened out: screen gain {what} at {budget:g}s on seed {seed}, {where} of its batch, which "
                  f"keeps the top {decision.keep}")
        with ctx.lock:
            ctx.record.record_result(cand, SCREENED_OUT, {} if gain is None else {"screen_gain": gain}, reason=reason)
            return self.finish(result, SCREENED_OUT, None, reason, timings)

    def _rebaser(self, current: list[Any], proposal: Proposal, result: dict[str, Any], out: Path,
                 turn: Turn | None) -> Callable[[], Any] | None:
        """The judge's before_confirmation hook of a cohort member: wait for the turn; when the best moved
        since the candidate branched, rebase it onto the new best and gate it again (NotRebased when either
        fails). Returns the rebased candidate, or None when its parent is still the best."""
        if turn is None:
            return None
        ctx = self.ctx

        def before_confirmation() -> Any:
            turn.wait()
            cand = current[0]
            with ctx.lock:
                best = ctx.record.best_commit()
                if best == cand.parent:
                    return None
                ctx.display.log(f"{cand.proposal_id}: the best moved to {best[:10]} while it was judged; rebasing "
                                "it there to confirm it against the new best")
                try:
                    moved = ctx.record.rebase_candidate(cand, best)
                except MergeConflict as exc:
                    raise NotRebased(f"selected against {cand.parent[:10]}, but its change does not apply to the "
                                     f"new best {best[:10]}: {exc}") from exc
            result["rebased"] = {"from_parent": cand.parent, "onto": best, "commit": ctx.record.candidate_info(
                cand.proposal_id).tip}
            changed = sorted({e.file for e in proposal.edits})
            gates = ctx.cascade(moved.path, out / "gates-rebased", GATE_STAGES, changed, best,
                                task=result.get("task"))
            result["rebased"]["stages"] = gates.to_dict()["stages"]
            if not gates.ok:
                raise NotRebased(f"rebased onto the new best {best[:10]}, it fails the {gates.failed_stage} gate: "
                                 f"{gates.reason}")
            current[0] = moved
            return moved

        return before_confirmation

    def _settle(self, cand: Candidate, proposal: Proposal, result: dict[str, Any], timings: dict[str, float],
                judgement: Judgement, baseline: Baseline, guards: GuardReport | None = None) -> CycleOutcome:
        """Record a judged candidate's verdict: merged (with --auto-apply), pending review, or not passed."""
        ctx = self.ctx
        s = ctx.settings
        result["judgement"] = judgement.to_dict()
        stops = [{"seed": p.seed, "phase": p.phase, **p.candidate_evidence["early_stop"]} for p in judgement.pairs
                 if isinstance(p.candidate_evidence.get("early_stop"), dict)]
        if stops:
            result["early_stop"] = stops
        result["error_control"] = ctx.control.to_dict()
        ctx.save_control()
        if judgement.verdict == "failed":
            ctx.record.record_result(cand, f"failed:{judgement.failed_stage}", reason=judgement.reason)
            return self.finish(result, "failed", judgement.failed_stage, judgement.reason, timings)
        comp = _comparison(judgement, s.metric)
        result["comparison"] = comp
        result["baseline"] = baseline.to_dict()
        scores = {k: comp[src] for k, src in (("score", "score"), ("delta", "delta"), ("baseline", "baseline_mean"),
                                              ("lower_bound", "lower_bound")) if comp.get(src) is not None}
        task = str(result.get("task") or baseline.task or s.task)
        trailers = {"rule": judgement.rule, "reason": judgement.reason, "task": task,
                    "seeds": comp["seeds"], "confirmation-seeds": comp["confirmation_seeds"]}
        if guards is not None:
            result["guards"] = guards.to_dict()
            trailers["guards"] = guards.to_dict()
            if guards.blocked:
                reason = f"passed its confirmation, but a guard task blocks the merge: {guards.reason()}"
                ctx.record.record_result(cand, "rejected", scores, reason=reason)
                return self.finish(result, "rejected", None, reason, timings, comp)
        if judgement.verdict == PASSED and s.auto_apply:
            try:
                merge = ctx.record.merge_candidate(
                    cand, scores, metrics=trailers,
                    message=merge_message(proposal, comp, judgement, s.metric) + guard_message(guards),
                    trailers=merge_trailers(proposal, comp, s.metric) + task_trailers(task, guards))
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

    @property
    def executor(self) -> Executor:
        return self.ctx.executor

    @executor.setter
    def executor(self, executor: Executor) -> None:
        self.ctx.executor = executor

    def judge(self, cand: Candidate, out: Path, timings: dict[str, float], *, baseline: Baseline | None = None,
              before_confirmation: Callable[[], Any] | None = None) -> Judgement:
        """The paired judgement of `cand` against its parent (a pinned copy of the commit it branched from),
        through the run's executor; each side's train and evaluate times add to `timings` (the parent's as
        parent-<stage>). ``before_confirmation`` (a cohort's turn) may return a rebased candidate: the
        confirmation pairs then measure it against its new parent (the trees are read as each pair's jobs are
        made)."""
        ctx = self.ctx
        s = ctx.settings
        baseline = baseline or ctx.baseline
        assert baseline is not None
        eval_cap = eval_time_cap(baseline.eval_seconds())
        allowance = setup_allowance_for(parent_overhead(baseline.evidence), s.setup_allowance_seconds)
        side_by_side = bool(s.side_by_side)
        current = {"candidate": cand}

        def tree(side: str) -> Path:
            c = current["candidate"]
            return c.path if side == "candidate" else ctx.parent_tree(c.parent)

        def make_job(side: str, seed: int, phase: str) -> StageJob:  # gpu_ids: the executor's slot or node
            job = ctx.stage_job(tree(side), out / f"{phase}-seed{seed}-{side}", ["train", "evaluate"], seed,
                                side=side, phase=phase,
                                eval_cap_s=eval_cap if side == "candidate" else None, task=baseline.task or None)
            if side == "candidate":  # the parent's measured start-up, not the configured ceiling (evolver/judge/clock.py)
                job.options["setup_allowance_s"] = allowance
            return job

        rule = (EarlyStopRule(margin=s.early_stop_margin, audit=s.early_stop_audit) if s.early_stop and side_by_side
                else None)
        measure = ExecutorSides(self.executor, make_job, s.metric, finish=side_finisher(timings),
                                progress=lambda side: ctx.on_stage if side == "candidate" else None,
                                early_stop=rule, key=f"{ctx.run_id}:{cand.proposal_id}")

        def confirm_hook() -> bool:
            assert before_confirmation is not None
            moved = before_confirmation()
            if moved is None:
                return False
            current["candidate"] = moved
            return True

        def on_pair(pair: SeedPair) -> None:
            what = "void: " + pair.void_reason if pair.void else (
                f"parent {pair.parent:.3f} candidate {pair.candidate:.3f} gain {pair.gain:+.3f}"
                if pair.gain is not None else "not scored")
            ctx.display.log(f"{cand.proposal_id} {pair.phase} seed {pair.seed}: {what}")

        judge = CandidateJudge(measure, selection=self.selection_rule, confirmation=self.confirmation_rule,
                               control=ctx.control, first_seeds=list(s.seeds), side_by_side=side_by_side,
                               tolerance=s.throughput_tolerance, on_pair=on_pair, submit=measure.submit,
                               on_control=ctx.save_control, proposal_id=cand.proposal_id,
                               submit_pair=measure.submit_pair,
                               before_confirmation=confirm_hook if before_confirmation else None)
        return judge.judge()

    def adopt(self, cand: Candidate, scores: list[float]) -> None:
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
        index_of(ctx).settle(result["proposal_id"], verdict)
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
    training = sum(v for k, v in timings.items()
                   if k.removeprefix("screen-").removeprefix("guard-").removeprefix("parent-") in ("train", "evaluate"))
    return 1 - training / total
