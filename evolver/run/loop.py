"""The evolution loop behind `python evolve.py`: baseline, then propose -> apply -> cascade -> compare -> merge.

Crash safety: every step that matters is written before the next one starts, and the order makes a resumed
run (`--resume RUN_ID`) redo only unfinished work:

1. the run's settings (`<state>/runs/<run-id>/run.json`), then the baseline scores (cached by the tree of
   `hrm/`, the task, the budget, the seeds and the harness version);
2. per candidate: the proposal and its diff are committed on the run branch, then the cascade runs, then
   `result.json` is committed. A candidate with a stored proposal but no result is re-run on resume; one
   with a result is never redone. A merge happens before its result is stored, and resume finishes a
   merge that was interrupted between the two.

This module is the loop itself: it sets up the run's context (evolver/run/context.py), checks the LLM server,
asks for proposals, runs the cycles, finishes what an interrupted run left, and says why the run stopped.
Measuring a parent is evolver/run/baseline.py's job, judging one candidate evolver/run/candidate.py's.
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from rich.markup import escape

from evolver.judge import fidelity
from evolver.judge.pairs import Judgement
from evolver.judge.screening import ScreenBatches, screen_budget
from evolver.propose.history_lines import history_item
from evolver.propose.literature import literature_context
from evolver.propose.look import RequestContext, ask_for_proposal
from evolver.propose.prompt import HistoryItem
from evolver.propose.providers import ProviderError, get_provider
from evolver.propose.providers.base import Provider, ProviderReply
from evolver.propose.providers.reply_formats import resolve_edit_format
from evolver.propose.repair import Repaired, Repairer
from evolver.propose.task_facts import task_facts
from evolver.record.git_record import Candidate, RecordError
from evolver.run.baseline import measure_parent, weak_baseline_warning
from evolver.run.candidate import CandidateEvaluator
from evolver.run.ceiling import check_ceiling
from evolver.run.cohort import CycleOrder, start_in_background, wait_any
from evolver.run.context import RunContext
from evolver.run.display import LoopDisplay
from evolver.run.resources import check_resources
from evolver.run.state import Baseline, CycleOutcome, StopRun, utc_now
from evolver.settings import Settings
from proposals.schema import Proposal, proposal_json_schema
from puzzles.splits import DATA_DIR
from puzzles.tasks import get_task


class EvolutionLoop:
    """One evolution run over the repository at `repo`, recorded on `evolve/<run-id>/best`.

    The run's shared state lives in `self.ctx` (a `RunContext`: settings, record, store, run_dir, baseline,
    control, outcomes, ...); judging candidates is `self.candidates`' job (a `CandidateEvaluator`)."""

    def __init__(self, repo: Path, settings: Settings, *, run_id: str | None = None,
                 display: LoopDisplay | None = None, harness_dir: Path | None = None,
                 provider: Provider | None = None) -> None:
        self.ctx = RunContext(repo, settings, run_id=run_id, display=display, harness_dir=harness_dir)
        self._provider = provider
        self._papers: list[Any] | None = None
        self.stop_reason: str | None = None
        self.candidates = CandidateEvaluator(self.ctx)  # its rules read the settings a resume kept
        self.candidates.gate_repair = self._gate_repair
        self._asked: dict[str, tuple[Any, ProviderReply]] = {}  # proposal id -> (prompt, last reply): gate repairs

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            s = self.ctx.settings
            self._provider = get_provider(s.provider, model=s.model, host=s.host, timeout=s.llm_timeout,
                                          max_retries=s.llm_retries, context_tokens=s.context_tokens,
                                          max_reply_tokens=s.max_reply_tokens, cache_dir=self.ctx.state / "llm-cache")
        return self._provider

    # ------------------------------------------------------------------ the jobs
    def measure_baseline(self) -> Baseline:
        """Measure (or take from the cache) the run's best commit: the parent of the next candidates. A best
        that is saturated on its task moves the run up its task ladder and is measured there
        (evolver/run/ceiling.py), or ends the run (StopRun)."""
        while True:
            with self.ctx.lock:
                best = self.ctx.record.best_commit()
            baseline = measure_parent(self.ctx, best)
            self.ctx.baseline = baseline
            if not check_ceiling(self.ctx, baseline):  # saturated: the ladder moved (or StopRun at its top)
                return baseline

    def evaluate_candidate(self, proposal: Proposal, cycle: int, info: dict[str, Any]) -> CycleOutcome:
        """Apply, gate and judge one proposal against the current parent, and record its result."""
        return self.candidates.evaluate(proposal, cycle, info)

    def _judge(self, cand: Candidate, out: Path, timings: dict[str, float]) -> Judgement:
        return self.candidates.judge(cand, out, timings)

    # ------------------------------------------------------------------ proposing
    def _history(self) -> list[HistoryItem]:
        return [history_item(pid, self.ctx.store.proposal(pid) or {}, self.ctx.store.candidate_result(pid))
                for pid in self.ctx.store.ids()]

    def _unique_id(self, pid: str) -> str:
        taken = set(self.ctx.record.candidate_ids()) | set(self.ctx.store.ids())
        if pid not in taken:
            return pid
        for i in range(2, 1000):
            cand = f"{pid[:60]}-{i}"
            if cand not in taken:
                return cand
        raise StopRun(f"cannot find a free id for proposal {pid!r}")

    @property
    def papers(self) -> list[Any]:
        """The run's citable literature, chosen once per run (a stable citation list)."""
        if self._papers is None:
            s = self.ctx.settings
            self._papers = [] if s.literature == "off" else literature_context(
                8, state_dir=self.ctx.state / "literature", offline=(s.literature == "snapshot"))
        return self._papers

    def propose(self, cycle: int, *, parent: Baseline | None = None) -> tuple[Proposal, dict[str, Any]]:
        """Ask the provider for the next proposal, on the run's best (its worktree), or with ``parent`` (a
        cohort) on that commit's pinned copy, so a merge landing meanwhile changes nothing the LLM reads."""
        s = self.ctx.settings
        self.ctx.display.stage("propose", f"asking {s.provider} for a proposal")
        with self.ctx.lock:
            worktree = self.ctx.parent_tree(parent.commit) if parent else self.ctx.record.run_worktree()
            history = self._history()
            parent_commit = parent.commit if parent else self.ctx.record.best_commit()
        base = parent or self.ctx.baseline
        spec = get_task(s.task)
        request = RequestContext(worktree, s.task, task_facts(
            s.task, s.metric, s.budget_seconds, baseline=base, data_dir=self.ctx.run_dir / DATA_DIR,
            eval_segments=spec.eval_segments, n_train=spec.n_train))

        def ask() -> tuple[ProviderReply, Any, dict[str, Any], Repaired | None]:
            # the edit format follows the provider in force (a fallback may have changed it)
            return ask_for_proposal(self.provider, request, self.papers, history, proposal_json_schema(),
                                    metric=s.metric, seed=cycle, protocol=s.protocol,
                                    progress=self.ctx.display.llm_progress,
                                    edit_format=resolve_edit_format(s.edit_format, s.provider),
                                    repair_turns=s.repair_turns, policy=self.ctx.policy)

        started = time.monotonic()
        try:
            reply, prompt, asked, repaired = ask()
        except ProviderError as exc:
            if not self._fall_back(exc):
                raise
            reply, prompt, asked, repaired = ask()
        proposal = repaired.proposal if repaired is not None else reply.proposal
        provenance = proposal.provenance.model_copy(update={"parent_commit": parent_commit})
        with self.ctx.lock:
            proposal = proposal.model_copy(update={"id": self._unique_id(proposal.id), "provenance": provenance})
        info = {**reply.info(), "llm_seconds": time.monotonic() - started,
                "prompt_tokens": getattr(prompt, "prompt_tokens", None),
                "prompt_budget": getattr(prompt, "budget_tokens", None), "trimmed": getattr(prompt, "trimmed", None),
                **asked, "edit_format": resolve_edit_format(s.edit_format, s.provider)}
        if repaired is not None and repaired.turns:
            info["repairs"] = repaired.info()  # every turn: errors sent, sources shown, raw replies, outcome
            self.ctx.display.log(f"{proposal.id}: {len(repaired.turns)} repair turn(s): "
                                 + ("its edits apply" if repaired.applies else "its edits still do not apply"))
        self._asked[proposal.id] = (prompt, repaired.reply if repaired is not None and repaired.reply else reply)
        if reply.dropped_citations:
            self.ctx.display.log(f"citations dropped (not in the run's list): {', '.join(reply.dropped_citations)}")
        return proposal, info

    def _gate_repair(self, cand: Any, proposal: Proposal, stage: str, error: str) -> Repaired | None:
        """One repair turn for a candidate that crashed a gate (evolver/run/candidate.py calls it): the model sees
        the error's tail and the targets' current source in the parent's tree; a repaired proposal that applies
        gets a fresh id (<id>-r, ...)."""
        asked = self._asked.get(proposal.id)
        if asked is None or self.ctx.settings.repair_turns <= 0 or self.provider.name == "offline":
            return None
        prompt, reply = asked
        with self.ctx.lock:
            root = self.ctx.parent_tree(cand.parent)
        self.ctx.display.stage("propose", f"{proposal.id}: repair turn after the {stage} failure")
        repaired = Repairer(self.provider, prompt, root, max_turns=1, policy=self.ctx.policy).after_gate(
            proposal, reply, stage, error)
        if repaired.applies:
            with self.ctx.lock:
                repaired.proposal = repaired.proposal.model_copy(update={"id": self._unique_id(f"{proposal.id[:60]}-r")})
            if repaired.reply is not None:
                self._asked[repaired.proposal.id] = (prompt, repaired.reply)
        return repaired

    # ------------------------------------------------------------------ resume
    def resume_unfinished(self) -> None:
        """Finish candidates an interrupted run left: stored proposal without result."""
        for pid in self.ctx.store.ids():
            if self.ctx.store.result(pid) is not None:
                continue
            stored = self.ctx.store.proposal(pid)
            if stored is None:
                continue
            proposal = Proposal.model_validate(stored)
            ids = set(self.ctx.record.candidate_ids())
            self.ctx.display.log(f"resume: finishing candidate {pid}")
            if pid in ids:
                info = self.ctx.record.candidate_info(pid)
                if info.merged:
                    # The merge landed before the crash; the baseline measured at start is already the merged
                    # best's (cached by its hrm/ tree, or re-measured). Only the result file is missing.
                    note = info.note or {}
                    self.ctx.store.save_result(pid, {
                        "proposal_id": pid, "run_id": self.ctx.run_id, "title": proposal.title, "verdict": "merged",
                        "failed_stage": None, "scores": note.get("scores", {}), "finished": utc_now(),
                        "reason": "merged before an interruption; result recovered on resume",
                        "candidate_commit": info.tip, "parent": info.parent, "branch": info.branch})
                    continue
                if info.committed:
                    cand = self.ctx.record.open_candidate(pid)
                    result = {"proposal_id": pid, "run_id": self.ctx.run_id, "cycle": len(self.ctx.store.ids()),
                              "title": proposal.title, "started": utc_now(), "resumed": True,
                              "citations": [c.arxiv_id for c in proposal.citations],
                              "candidate_commit": info.tip, "parent": info.parent, "branch": info.branch}
                    self.candidates.run_committed(cand, proposal, result, {})
                    continue
                self.ctx.record.discard_candidate(self.ctx.record.open_candidate(pid))
            self.evaluate_candidate(proposal, len(self.ctx.store.ids()), {"resumed": True})

    # ------------------------------------------------------------------ the run
    def run(self) -> list[CycleOutcome]:
        s = self.ctx.settings
        started = time.monotonic()
        d = self.ctx.display
        d.set_header(run=self.ctx.run_id, provider=s.provider, task=s.task, seeds=s.seeds,
                     budget=f"{s.budget_seconds:g}s")
        if self.ctx.ladder is not None:
            d.set_header(ladder=f"{self.ctx.ladder.position + 1}/{len(self.ctx.ladder.tasks)}")
        try:
            self._preflight()
            self.ctx.check_cluster()
            if self.ctx.executor_kind == "local":
                _ = self.ctx.backend  # a missing sandbox image is built here (or the run stops), before any job
            if s.early_stop and self.ctx.executor_kind != "local":
                d.log("[yellow]early stop:[/] it reads the curves of local worker slots only; it is off with "
                      f"--executor {self.ctx.executor_kind}")
            self.measure_baseline()
            assert self.ctx.baseline is not None
            d.set_header(baseline=f"{statistics.fmean(self.ctx.baseline.scores):.3f}")
            d.log(f"baseline {self.ctx.baseline.commit[:10]}: {s.metric} per seed {self.ctx.baseline.scores}"
                  + (" (cached)" if self.ctx.baseline.cached else ""))
            warning = weak_baseline_warning(self.ctx.baseline, s.metric)
            if warning:
                d.log(warning)
            if self.ctx.record.resumed:
                self.resume_unfinished()
            if self.ctx.cohort_size() > 1 or self.ctx.settings.screen:
                self._run_cohort(started)
                return self.ctx.outcomes
            cycle = len(self.ctx.store.ids())
            done = 0
            while True:
                reason = self._stop_reason(done, started)
                if reason:
                    self.stop_reason = reason
                    break
                cycle += 1
                done += 1
                d.set_header(cycle=f"{done}/{s.cycles or 'inf'}")
                self._one_cycle(cycle)
                if s.interval_seconds > 0:
                    d.stage("wait", f"{s.interval_seconds:g}s before the next cycle")
                    time.sleep(s.interval_seconds)
        except KeyboardInterrupt:
            self.stop_reason = (f"interrupted; nothing recorded is lost. Resume with: "
                                f"python evolve.py --resume {self.ctx.run_id}")
        except StopRun as exc:
            self.stop_reason = str(exc)
        finally:
            self.ctx.close_executor()  # first: a Ctrl-C's sandboxes still train on the worktrees _tidy removes
            self._tidy()
            self._save_fidelity()
            self.ctx.record.close()
        return self.ctx.outcomes

    def _save_fidelity(self) -> None:
        """How well the cheap stages predicted the full judgement over the run so far (fidelity.json in the
        run directory; the report shows it too)."""
        try:
            with self.ctx.lock:
                results = [r for r in (self.ctx.store.result(pid) for pid in self.ctx.store.ids()) if r]
            summary = fidelity.assess(results)
            fidelity.save(self.ctx.run_dir, summary)
        except (OSError, ValueError, RecordError) as exc:
            self.ctx.display.log(f"[yellow]fidelity:[/] not saved: {escape(str(exc))}")
            return
        if summary.get("judged"):
            self.ctx.display.log("fidelity of the cheap stages: " + "; ".join(fidelity.describe(summary)))

    # ------------------------------------------------------------------ a cohort (evolver/run/cohort.py)
    def _run_cohort(self, started: float) -> None:
        """Keep up to `cohort_size()` candidates in flight until a stop reason; then let those finish. A
        Ctrl-C does not wait: the cycles still running write nothing more (the run's lock stays taken) and
        are re-run on resume."""
        s = self.ctx.settings
        size = self.ctx.cohort_size()
        order = CycleOrder()
        batches = (ScreenBatches(s.screen, fraction=s.screen_fraction, audit=s.screen_audit, key=self.ctx.run_id)
                   if s.screen else None)
        limit = max(size, s.screen or 0)  # a screen batch waits for all its members: they must all be in flight
        inflight: dict[int, Future[Any]] = {}
        cycle = len(self.ctx.store.ids())
        done = 0
        self.ctx.display.log(f"cohort: up to {size} candidates judged at once on {self.ctx.workers()} worker slot(s); "
                         "confirmations and merges in cycle order"
                         + (f"; screen batches of {s.screen} at {screen_budget(s):g}s, the top "
                            f"{s.screen_fraction:g} judged in full" if batches else ""))
        try:
            while True:
                while self.stop_reason is None and len(inflight) < limit:
                    reason = self._stop_reason(done, started)
                    if reason:
                        self.stop_reason = reason
                        break
                    cycle += 1
                    done += 1
                    self.ctx.display.set_header(cycle=f"{done}/{s.cycles or 'inf'}")
                    future = self._start_cycle(cycle, order, batches)
                    if future is not None:
                        inflight[cycle] = future
                    if s.interval_seconds > 0:
                        time.sleep(s.interval_seconds)
                if self.stop_reason is not None and batches is not None:
                    batches.close_open()  # no one else joins: the last batch is ranked with what it has
                if not inflight:
                    return
                for finished in wait_any(inflight):
                    self._collect(inflight.pop(finished))
        except BaseException:
            self.ctx.lock.acquire()  # never released: the cycles still in flight record nothing half-way
            raise

    def _start_cycle(self, cycle: int, order: CycleOrder, batches: ScreenBatches | None = None) -> Future[Any] | None:
        """Propose on the best (measured first when it is new) and start judging the candidate in the
        background; None when no candidate came of it (a refused reply, an invalid patch, a stop)."""
        with self.ctx.lock:
            best = self.ctx.record.best_commit()
        parent = self.ctx.baseline
        if parent is None or parent.commit != best:
            try:
                parent = self.measure_baseline()
            except StopRun as exc:  # a saturated best: the cycles in flight finish, no new one starts
                self.stop_reason = str(exc)
                return None
        try:
            proposal, info = self.propose(cycle, parent=parent)
        except ProviderError as exc:
            if exc.kind in ("unreachable", "config", "cache_miss"):
                self.stop_reason = f"LLM provider {self.ctx.settings.provider}: {exc}"
                return None
            with self.ctx.lock:
                self._record_failed_proposal(cycle, exc)
            return None
        try:
            with self.ctx.lock:
                prepared = self.candidates.prepare(proposal, cycle, info, parent=parent.commit)
        except RecordError as exc:
            self.ctx.display.log(f"[red]record error for {proposal.id}:[/] {exc}")
            self.ctx.outcomes.append(CycleOutcome(proposal.id, "failed", str(exc)))
            return None
        if isinstance(prepared, CycleOutcome):
            return None
        cand, result, timings = prepared
        screen = None
        if batches is not None:
            batches.join(cycle)
            screen = (batches, cycle)
        return start_in_background(cycle, order, lambda turn: self.candidates.run_committed(
            cand, proposal, result, timings, baseline=parent, turn=turn, screen=screen))

    def _collect(self, future: Future[Any]) -> None:
        """A finished cycle of the cohort: its outcome is already recorded; a record error is logged."""
        try:
            future.result()
        except RecordError as exc:
            self.ctx.display.log(f"[red]record error:[/] {exc}")
            with self.ctx.lock:
                self.ctx.outcomes.append(CycleOutcome(None, "failed", str(exc)))

    def _tidy(self) -> None:
        """Remove the run's worktrees (candidates, best, record) when it stops, however it stops: everything is
        on branches, and a resume or a review recreates what it needs."""
        try:
            self.ctx.record.prune()
            self.ctx.record.remove_run_worktree()
        except RecordError as exc:
            self.ctx.display.log(f"[yellow]cleanup:[/] could not remove the run's worktrees: {escape(str(exc))}")

    def _preflight(self) -> None:
        """Check the LLM server's API kind, model and context before spending minutes on the baseline;
        configuration errors stop the run here, never per cycle."""
        try:
            info = self.provider.preflight()
        except ProviderError as exc:
            if not self._fall_back(exc):
                raise StopRun(f"LLM provider {self.ctx.settings.provider}: {exc}") from exc
            info = self.provider.preflight()
        self.ctx.server_info = info.to_dict()
        self.ctx.display.log(f"LLM: {escape(info.describe())}")
        if getattr(info, "model", None):
            self.ctx.display.set_header(model=info.model)
        self.ctx.save_run_settings()

    def _fall_back(self, exc: ProviderError) -> bool:
        """Switch to the configured fallback provider when the LLM server is unreachable."""
        s = self.ctx.settings
        if exc.kind != "unreachable" or not s.fallback_provider or s.fallback_provider == s.provider:
            return False
        self.ctx.display.log(f"[yellow]{exc}[/]\nfalling back to the {s.fallback_provider} provider")
        s.provider, self._provider = s.fallback_provider, None
        self.ctx.display.set_header(provider=s.provider)
        return True

    def _stop_reason(self, done: int, started: float) -> str | None:
        s = self.ctx.settings
        if s.cycles and done >= s.cycles:
            return f"finished {done} cycle(s)"
        if s.max_runtime_seconds and time.monotonic() - started >= s.max_runtime_seconds:
            return f"reached --max-runtime {s.max_runtime_seconds:g}s"
        return check_resources(self.ctx.state, s.min_free_disk_gb, s.min_free_memory_gb)

    def _one_cycle(self, cycle: int) -> None:
        if self.ctx.baseline is None or self.ctx.baseline.commit != self.ctx.record.best_commit():
            self.measure_baseline()
        try:
            proposal, info = self.propose(cycle)
        except ProviderError as exc:
            if exc.kind in ("unreachable", "config", "cache_miss"):
                raise StopRun(f"LLM provider {self.ctx.settings.provider}: {exc}") from exc
            self._record_failed_proposal(cycle, exc)
            return
        try:
            self.evaluate_candidate(proposal, cycle, info)
        except RecordError as exc:
            self.ctx.display.log(f"[red]record error for {proposal.id}:[/] {exc}")
            self.ctx.outcomes.append(CycleOutcome(proposal.id, "failed", str(exc)))

    def _record_failed_proposal(self, cycle: int, exc: ProviderError) -> None:
        """A reply that never became a valid proposal: every attempt's raw text and the reasons it was refused
        go to the run's failed_proposals.jsonl (listed by `history` and `proposals list`); the loop goes on."""
        reason = str(exc)
        entry = {"id": f"cycle-{cycle}", "cycle": cycle, "time": utc_now(), "provider": self.ctx.settings.provider,
                 "kind": exc.kind, "reason": reason,
                 "attempts": [a.to_dict() for a in getattr(exc, "attempts", []) or []]}
        with open(self.ctx.run_dir / "failed_proposals.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.ctx.store.save_refused_reply(entry)  # the record branch: travels with the run
        self.ctx.display.upsert({"id": f"cycle-{cycle}", "cycle": cycle, "stage": "propose", "verdict": "invalid",
                             "reason": reason})
        self.ctx.outcomes.append(CycleOutcome(None, "invalid", reason))
