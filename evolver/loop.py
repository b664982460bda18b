"""The evolution loop behind `python evolve.py`: baseline, then propose -> apply -> cascade -> compare -> merge.

Crash safety: every step that matters is written before the next one starts, and the order makes a resumed
run (`--resume RUN_ID`) redo only unfinished work:

1. the run's settings (`<state>/runs/<run-id>/run.json`), then the baseline scores (cached by the tree of
   `hrm/`, the task, the budget, the seeds and the harness version);
2. per candidate: the proposal and its diff are committed on the run branch, then the cascade runs, then
   `result.json` is committed. A candidate with a stored proposal but no result is re-run on resume; one
   with a result is never redone. A merge happens before its result is stored, and resume finishes a
   merge that was interrupted between the two.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.markup import escape

from edits.engine import EditError, apply_edits
from edits.paths import PROTECTED_PATHS, PathPolicy, PathRejected
from evolver.cascade import CascadeResult, StageRun, eval_time_cap, run_cascade, write_manifest
from evolver.display import LoopDisplay
from evolver.executor import ExecutorSides, StageJob, StageOutcome, executor_kind, make_executor
from evolver.harness_copy import harness_digest, pristine_harness
from evolver.judge import CandidateJudge, Judgement, SeedPair
from evolver.literature import literature_context
from evolver.merge_message import merge_message, merge_trailers
from evolver.promotion import ConfirmationRule, RunErrorControl, SelectionRule
from evolver.prompt import HistoryItem
from evolver.providers import ProviderError, get_provider
from evolver.providers.base import Provider
from evolver.record import EvolutionRecord, MergeConflict, RecordError
from evolver.repo_summary import build_repo_summary
from evolver.resources import check_resources
from evolver.settings import Settings
from evolver.store import ProposalStore
from evolver.verdicts import PASSED
from proposals.schema import Proposal, proposal_json_schema
from puzzles.splits import ensure_run_data
from puzzles.tasks import get_task
from sandbox import get_backend

GATE_STAGES = ("safety", "smoke", "trainability")


class StopRun(Exception):
    """A reason to end the run cleanly (LLM unreachable without fallback, baseline broken, ...)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Baseline:
    commit: str
    tree: str
    seeds: list[int]
    scores: list[float]
    seconds: float
    cached: bool = False
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "tree": self.tree, "seeds": self.seeds, "scores": self.scores,
                "seconds": self.seconds, "evidence": self.evidence}

    def eval_seconds(self) -> float | None:
        times = [float(e["eval_host_seconds"]) for e in self.evidence if e.get("eval_host_seconds")]
        return max(times) if times else None


@dataclass
class CycleOutcome:
    proposal_id: str | None
    verdict: str
    reason: str = ""
    score: float | None = None
    delta: float | None = None
    timings: dict[str, float] = field(default_factory=dict)


class EvolutionLoop:
    """One evolution run over the repository at `repo`, recorded on `evolve/<run-id>/best`."""

    def __init__(self, repo: Path, settings: Settings, *, run_id: str | None = None,
                 display: LoopDisplay | None = None, harness_dir: Path | None = None,
                 provider: Provider | None = None) -> None:
        self.repo = Path(repo).resolve()
        self.settings = settings
        self.state = settings.state_path(self.repo)
        self.state.mkdir(parents=True, exist_ok=True)
        self.display = display or LoopDisplay(live=False)
        self._harness_dir = Path(harness_dir) if harness_dir is not None else None
        self.record = EvolutionRecord(self.repo, run_id)
        self.store = ProposalStore(self.record)
        self.run_id = self.record.run_id
        self.run_dir = self.state / "runs" / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.policy = PathPolicy(allowed=tuple(settings.allowed_paths), protected=PROTECTED_PATHS)
        self._provider = provider
        self._papers: list[Any] | None = None
        self._backend = None
        self._executor_kind = executor_kind(settings.executor, settings.ray_address)  # a missing Ray fails here
        self._executor: Any = None  # made at the first judgement (evolver/executor.py)
        self.baseline: Baseline | None = None
        self.outcomes: list[CycleOutcome] = []
        self.stop_reason: str | None = None
        self._save_run_settings()
        first = max(2, len(settings.seeds))
        self.selection_rule = SelectionRule(min_seeds=first, max_seeds=max(settings.max_seeds, first),
                                            min_mean_gain=settings.margin)
        self.confirmation_rule = ConfirmationRule(seeds=settings.confirm_seeds, min_mean_gain=settings.margin)
        control = self.run_dir / "error_control.json"
        self.control = (RunErrorControl.from_dict(json.loads(control.read_text())) if control.exists()
                        else RunErrorControl())

    def _save_control(self) -> None:
        path = self.run_dir / "error_control.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.control.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)

    # ------------------------------------------------------------------ setup
    def _save_run_settings(self) -> None:
        path = self.run_dir / "run.json"
        if path.exists() and self.record.resumed:
            stored = json.loads(path.read_text())
            for key in ("task", "seeds", "budget_seconds", "margin", "confidence"):
                if key in stored.get("settings", {}) and stored["settings"][key] != getattr(self.settings, key):
                    self.display.log(f"[yellow]resume:[/] keeping the run's {key}={stored['settings'][key]!r} "
                                     f"(ignoring {getattr(self.settings, key)!r})")
                    setattr(self.settings, key, stored["settings"][key])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "settings": self.settings.to_dict(),
                                   "server": getattr(self, "server_info", None), "started": _now()},
                                  indent=2) + "\n")
        os.replace(tmp, path)

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            s = self.settings
            self._provider = get_provider(s.provider, model=s.model, host=s.host, timeout=s.llm_timeout,
                                          max_retries=s.llm_retries, context_tokens=s.context_tokens,
                                          max_reply_tokens=s.max_reply_tokens, cache_dir=self.state / "llm-cache")
        return self._provider

    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = get_backend(self.settings.backend, image=self.settings.image,
                                        warn=lambda m: self.display.log(f"[yellow]sandbox:[/] {m}"))
        return self._backend

    @property
    def harness_dir(self) -> Path:
        """The pristine read-only harness copy every stage mounts (never the engine root)."""
        if self._harness_dir is None:
            self._harness_dir = pristine_harness(self.state)
        return self._harness_dir

    def data_dir(self) -> Path:
        """The run's train/select/final splits, built on the host by trusted code (puzzles/) from the run's
        secret seed, which stays in the run's state directory, outside every mount."""
        spec = get_task(self.settings.task)
        if not (self.run_dir / "data" / "select" / "dataset.json").exists():
            self.display.stage("data", f"building the {spec.name} splits from this run's secret seed")
        return ensure_run_data(self.run_dir, spec)

    # ------------------------------------------------------------------ measuring
    def _hrm_tree(self, rev: str) -> str:
        return _git(["rev-parse", f"{rev}:hrm"], self.repo)

    def _baseline_key(self, tree: str) -> str:
        s = self.settings
        raw = json.dumps([tree, s.task, s.budget_seconds, s.seeds, s.metric, harness_digest(), self.run_id])
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def _cascade(self, worktree: Path, out: Path, stages: tuple[str, ...], changed: list[str],
                 parent: str, eval_cap_s: float | None = None) -> CascadeResult:
        s = self.settings
        out.mkdir(parents=True, exist_ok=True)
        # Nothing inside hrm/ is protected; edits outside it never reach a cascade (the path policy).
        manifest = write_manifest(self.repo, parent, worktree, changed, [], out_path=out / "manifest.json")
        result = run_cascade(
            worktree, self.harness_dir, self.data_dir(), out,
            task=s.task, seeds=list(s.seeds), budget_seconds=s.budget_seconds, backend=self.backend,
            stages=stages, manifest=manifest, gpus=s.gpus, gpu_ids=self._gpu_ids(0), memory_mb=s.memory_mb, cpus=s.cpus,
            threads=self._stage_threads(), label=self.run_id, progress=self._on_stage, eval_cap_s=eval_cap_s,
            setup_allowance_s=s.setup_allowance_seconds,
        )
        result.save(out / "cascade.json")
        return result

    def _on_stage(self, stage: str, seed: int | None, status: str, run: StageRun | None) -> None:
        where = f"seed {seed}" if seed is not None else ""
        if status == "start":
            expected = self.settings.budget_seconds if stage == "train" else None
            self.display.stage(stage, where, expected)
        elif run is not None and not run.ok:
            self.display.log(f"[red]{stage} {where} failed:[/] {escape(run.reason)}")  # wrapped, never cut

    def measure_baseline(self) -> Baseline:
        best = self.record.best_commit()
        tree = self._hrm_tree(best)
        cache = self.state / "baselines" / f"{self._baseline_key(tree)}.json"
        if cache.exists():
            data = json.loads(cache.read_text())
            self.baseline = Baseline(best, tree, data["seeds"], data["scores"], data["seconds"], cached=True,
                                     evidence=list(data.get("evidence") or []))
            return self.baseline
        self.display.stage("baseline", f"measuring {best[:10]} on seeds {self.settings.seeds}")
        out = self.run_dir / "baseline" / tree[:12]
        result = self._cascade(self.record.run_worktree(), out, ("train", "evaluate"), [], best)
        if not result.ok:
            raise StopRun(f"the baseline itself failed at stage {result.failed_stage}: {result.reason}")
        scores = [float(x) for x in result.scores[self.settings.metric]]
        self.baseline = Baseline(best, tree, list(self.settings.seeds), scores, result.seconds,
                                 evidence=result.evidence)
        self._cache_baseline(self.baseline)
        return self.baseline

    def _cache_baseline(self, b: Baseline) -> None:
        cache = self.state / "baselines" / f"{self._baseline_key(b.tree)}.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(b.to_dict(), indent=2) + "\n")
        os.replace(tmp, cache)

    # ------------------------------------------------------------------ proposing
    def _history(self) -> list[HistoryItem]:
        items = []
        for pid in self.store.ids():
            result = self.store.result(pid) or {}
            proposal = self.store.proposal(pid) or {}
            verdict = result.get("verdict", "unfinished")
            if result.get("failed_stage"):
                verdict = f"{verdict} at {result['failed_stage']}: {str(result.get('reason', ''))[:120]}"
            score = (result.get("comparison") or {}).get("mean_gain")
            items.append(HistoryItem(pid, str(proposal.get("title", pid)), verdict,
                                     None if score is None else float(score)))
        return items

    def _unique_id(self, pid: str) -> str:
        taken = set(self.record.candidate_ids()) | set(self.store.ids())
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
            s = self.settings
            self._papers = [] if s.literature == "off" else literature_context(
                8, state_dir=self.state / "literature", offline=(s.literature == "snapshot"))
        return self._papers

    def propose(self, cycle: int) -> tuple[Proposal, dict[str, Any]]:
        s = self.settings
        self.display.stage("propose", f"asking {s.provider} for a proposal")
        worktree = self.record.run_worktree()
        history = self._history()
        best = _mean(self.baseline.scores) if self.baseline else None

        def summary(budget: int) -> str:
            return build_repo_summary(worktree, policy=self.policy, budget_tokens=budget, best_score=best)

        started = time.monotonic()
        try:
            prompt = self.provider.fit_prompt(summary, self.papers, history, proposal_json_schema(),
                                              metric=s.metric, seed=cycle)
            reply = self.provider.propose(prompt, progress=self.display.llm_progress)
        except ProviderError as exc:
            if not self._fall_back(exc):
                raise
            prompt = self.provider.fit_prompt(summary, self.papers, history, proposal_json_schema(),
                                              metric=s.metric, seed=cycle)
            reply = self.provider.propose(prompt, progress=self.display.llm_progress)
        proposal = reply.proposal
        provenance = proposal.provenance.model_copy(update={"parent_commit": self.record.best_commit()})
        proposal = proposal.model_copy(update={"id": self._unique_id(proposal.id), "provenance": provenance})
        info = {**reply.info(), "llm_seconds": time.monotonic() - started,
                "prompt_tokens": getattr(prompt, "prompt_tokens", None),
                "prompt_budget": getattr(prompt, "budget_tokens", None), "trimmed": getattr(prompt, "trimmed", None)}
        if reply.dropped_citations:
            self.display.log(f"citations dropped (not in the run's list): {', '.join(reply.dropped_citations)}")
        return proposal, info

    # ------------------------------------------------------------------ one candidate
    def evaluate_candidate(self, proposal: Proposal, cycle: int, info: dict[str, Any]) -> CycleOutcome:
        pid = proposal.id
        timings: dict[str, float] = {"llm": float(info.get("llm_seconds", 0.0))}
        result: dict[str, Any] = {"proposal_id": pid, "run_id": self.run_id, "cycle": cycle,
                                  "title": proposal.title, "started": _now(), "provider": info,
                                  "citations": [c.arxiv_id for c in proposal.citations]}
        self.display.upsert({"id": pid, "cycle": cycle, "title": proposal.title, "stage": "apply",
                             "verdict": "running"})
        self.display.stage("apply", f"{pid}: {len(proposal.edits)} edit(s)")
        t0 = time.monotonic()
        cand = self.record.create_candidate(pid)
        try:
            applied = apply_edits(cand.path, list(proposal.edits), self.policy)
        except (EditError, PathRejected) as exc:
            timings["patch"] = time.monotonic() - t0
            self.record.discard_candidate(cand)
            self.store.save_proposal(proposal)
            if isinstance(exc, EditError):
                result["edit_errors"] = [e.describe() for e in exc.errors]
            return self._finish(result, "invalid", "apply", str(exc), timings)
        sha = self.record.commit_candidate(cand, proposal)
        diff = self.record.diff(cand)
        self.store.save_proposal(proposal, diff)
        timings["patch"] = time.monotonic() - t0
        result.update(candidate_commit=sha, parent=cand.parent, branch=cand.branch,
                      edits=[getattr(a, "__dict__", str(a)) for a in applied])
        return self._run_candidate(cand, proposal, result, timings)

    def _run_candidate(self, cand: Any, proposal: Proposal, result: dict[str, Any],
                       timings: dict[str, float]) -> CycleOutcome:
        """The gates (safety, smoke, trainability) on the candidate alone, then the judgement: seed pairs
        of parent and candidate measured side by side until the promotion rules decide."""
        s = self.settings
        pid = cand.proposal_id
        assert self.baseline is not None
        changed = sorted({e.file for e in proposal.edits})
        out = self.run_dir / "candidates" / pid
        gates = self._cascade(cand.path, out / "gates", GATE_STAGES, changed, cand.parent)
        result["stages"] = gates.to_dict()["stages"]
        for run in gates.stages:
            timings[run.stage] = timings.get(run.stage, 0.0) + float(run.duration_s)
        try:
            if not gates.ok:
                self.record.record_result(cand, f"failed:{gates.failed_stage}", reason=gates.reason)
                return self._finish(result, "failed", gates.failed_stage, f"{gates.failed_stage}: {gates.reason}",
                                    timings)
            judgement = self._judge(cand, out, timings)
            result["judgement"] = judgement.to_dict()
            result["error_control"] = self.control.to_dict()
            self._save_control()
            if judgement.verdict == "failed":
                self.record.record_result(cand, f"failed:{judgement.failed_stage}", reason=judgement.reason)
                return self._finish(result, "failed", judgement.failed_stage, judgement.reason, timings)
            comp = _comparison(judgement, s.metric)
            result["comparison"] = comp
            result["baseline"] = self.baseline.to_dict()
            scores = {k: comp[src] for k, src in (("score", "score"), ("delta", "delta"), ("baseline", "baseline_mean"),
                                                  ("lower_bound", "lower_bound")) if comp.get(src) is not None}
            trailers = {"rule": judgement.rule, "reason": judgement.reason,
                        "seeds": comp["seeds"], "confirmation-seeds": comp["confirmation_seeds"]}
            if judgement.verdict == PASSED and s.auto_apply:
                try:
                    merge = self.record.merge_candidate(cand, scores, metrics=trailers,
                                                        message=merge_message(proposal, comp, judgement, s.metric),
                                                        trailers=merge_trailers(proposal, comp, s.metric))
                except MergeConflict as exc:
                    self.record.record_result(cand, "rejected", scores, reason=str(exc))
                    return self._finish(result, "rejected", None, str(exc), timings, comp)
                result["merge_commit"] = merge
                self._adopt(cand, [])
                return self._finish(result, "merged", None, judgement.reason, timings, comp)
            if judgement.verdict == PASSED:
                self.record.record_result(cand, "pending-review", scores, reason=judgement.reason)
                return self._finish(result, "pending-review", None,
                                    judgement.reason + "; run `python evolve.py review` to approve", timings, comp)
            self.record.record_result(cand, judgement.verdict, scores, reason=judgement.reason)
            return self._finish(result, judgement.verdict, None, judgement.reason, timings, comp)
        finally:
            self.record.remove_candidate(cand)

    def _stage_threads(self) -> int:
        """Torch threads per sandbox. Side by side, each sandbox gets half of --threads; the lone stages (the
        gates, the baseline) use the same, so every measurement of a run trains under the same threads, and
        no stage spins OpenMP threads against a busy core (2 threads beside a CPU hog on 2 cores took trainability
        from about 20 s past its 300 s limit)."""
        s = self.settings
        return max(1, s.threads // 2) if s.side_by_side else s.threads

    def _gpu_ids(self, slot: int) -> list[str]:
        """One GPU per sandbox: slot 0 (the parent, and every lone stage) and slot 1 (the candidate beside
        it) take their device from --gpu-ids in turn (default: device 0 for both)."""
        ids = list(self.settings.gpu_ids) or ["0"]
        return [ids[slot % len(ids)]] if self.settings.gpus else []

    def _judge(self, cand: Any, out: Path, timings: dict[str, float]) -> Judgement:
        s = self.settings
        assert self.baseline is not None
        eval_cap = eval_time_cap(self.baseline.eval_seconds())
        side_by_side = bool(s.side_by_side)
        threads = self._stage_threads()
        cpus = max(1.0, s.cpus / 2) if side_by_side else s.cpus
        trees = {"parent": self.record.run_worktree(), "candidate": cand.path}
        if self._executor is None:  # local slots (the GPU ids of --gpu-ids in turn) or a Ray cluster
            self._executor = make_executor(self._executor_kind, ray_address=s.ray_address,
                                           workers=s.workers or (2 if side_by_side else 1), gpu_ids=s.gpu_ids,
                                           backend=self.backend if self._executor_kind == "local" else None)

        def make_job(side: str, seed: int, phase: str) -> StageJob:  # gpu_ids: the executor's slot or node
            options = {"task": s.task, "budget_seconds": s.budget_seconds, "backend": s.backend,
                       "stages": ["train", "evaluate"], "gpus": s.gpus, "memory_mb": s.memory_mb, "cpus": cpus,
                       "threads": threads, "label": f"{self.run_id}-{side}", "setup_allowance_s":
                       s.setup_allowance_seconds, "eval_cap_s": eval_cap if side == "candidate" else None}
            return StageJob(side, seed, phase, str(trees[side]), str(self.harness_dir), str(self.data_dir()),
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

        measure = ExecutorSides(self._executor, make_job, s.metric, finish=finish,
                                progress=lambda side: self._on_stage if side == "candidate" else None)

        def on_pair(pair: SeedPair) -> None:
            what = "void: " + pair.void_reason if pair.void else (
                f"parent {pair.parent:.3f} candidate {pair.candidate:.3f} gain {pair.gain:+.3f}"
                if pair.gain is not None else "not scored")
            self.display.log(f"{cand.proposal_id} {pair.phase} seed {pair.seed}: {what}")

        judge = CandidateJudge(measure, selection=self.selection_rule, confirmation=self.confirmation_rule,
                               control=self.control, first_seeds=list(s.seeds), side_by_side=side_by_side,
                               tolerance=s.throughput_tolerance, on_pair=on_pair, submit=measure.submit)
        return judge.judge()

    def _adopt(self, cand: Any, scores: list[float]) -> None:
        """A merged candidate is the new best. Its selection-time scores are biased upward by the selection,
        so they are never its baseline: the new best is measured afresh before the next comparison."""
        self.baseline = None

    def _finish(self, result: dict[str, Any], verdict: str, failed_stage: str | None, reason: str,
                timings: dict[str, float], comp: dict[str, Any] | None = None) -> CycleOutcome:
        result.update(verdict=verdict, failed_stage=failed_stage, reason=reason, timings=timings,
                      finished=_now())
        result["non_training_share"] = _non_training_share(timings)
        self.store.save_result(result["proposal_id"], result)
        score = comp.get("score") if comp else None
        delta = comp.get("delta") if comp else None
        outcome = CycleOutcome(result["proposal_id"], verdict, reason, score, delta, timings)
        self.display.upsert({"id": outcome.proposal_id, "stage": failed_stage or "done", "verdict": verdict,
                             "score": score, "delta": delta, "reason": reason})
        self.outcomes.append(outcome)
        return outcome

    # ------------------------------------------------------------------ resume
    def resume_unfinished(self) -> None:
        """Finish candidates an interrupted run left: stored proposal without result."""
        for pid in self.store.ids():
            if self.store.result(pid) is not None:
                continue
            stored = self.store.proposal(pid)
            if stored is None:
                continue
            proposal = Proposal.model_validate(stored)
            ids = set(self.record.candidate_ids())
            self.display.log(f"resume: finishing candidate {pid}")
            if pid in ids:
                info = self.record.candidate_info(pid)
                if info.merged:
                    # The merge landed before the crash; the baseline measured at start is already the merged
                    # best's (cached by its hrm/ tree, or re-measured). Only the result file is missing.
                    note = info.note or {}
                    self.store.save_result(pid, {
                        "proposal_id": pid, "run_id": self.run_id, "title": proposal.title, "verdict": "merged",
                        "failed_stage": None, "scores": note.get("scores", {}), "finished": _now(),
                        "reason": "merged before an interruption; result recovered on resume",
                        "candidate_commit": info.tip, "parent": info.parent, "branch": info.branch})
                    continue
                if info.committed:
                    cand = self.record.open_candidate(pid)
                    result = {"proposal_id": pid, "run_id": self.run_id, "cycle": len(self.store.ids()),
                              "title": proposal.title, "started": _now(), "resumed": True,
                              "citations": [c.arxiv_id for c in proposal.citations],
                              "candidate_commit": info.tip, "parent": info.parent, "branch": info.branch}
                    self._run_candidate(cand, proposal, result, {})
                    continue
                self.record.discard_candidate(self.record.open_candidate(pid))
            self.evaluate_candidate(proposal, len(self.store.ids()), {"resumed": True})

    # ------------------------------------------------------------------ the run
    def run(self) -> list[CycleOutcome]:
        s = self.settings
        started = time.monotonic()
        d = self.display
        d.set_header(run=self.run_id, provider=s.provider, task=s.task, seeds=s.seeds,
                     budget=f"{s.budget_seconds:g}s")
        try:
            self._preflight()
            self.measure_baseline()
            assert self.baseline is not None
            d.set_header(baseline=f"{statistics.fmean(self.baseline.scores):.3f}")
            d.log(f"baseline {self.baseline.commit[:10]}: {s.metric} per seed {self.baseline.scores}"
                  + (" (cached)" if self.baseline.cached else ""))
            if s.metric == "exact_accuracy" and max(self.baseline.scores) < 0.05:
                d.log("[yellow]warning:[/] the baseline solves almost no held-out puzzle at this budget, so exact "
                      "accuracy can hardly tell candidates apart; raise --budget-seconds or use "
                      "--metric token_accuracy")
            if self.record.resumed:
                self.resume_unfinished()
            cycle = len(self.store.ids())
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
                                f"python evolve.py --resume {self.run_id}")
        except StopRun as exc:
            self.stop_reason = str(exc)
        finally:
            self._tidy()
            self.record.close()
        return self.outcomes

    def _tidy(self) -> None:
        """Remove the run's worktrees (candidates, best, record) when it stops, however it stops: everything is
        on branches, and a resume or a review recreates what it needs."""
        try:
            self.record.prune()
            self.record.remove_run_worktree()
        except RecordError as exc:
            self.display.log(f"[yellow]cleanup:[/] could not remove the run's worktrees: {escape(str(exc))}")

    def _preflight(self) -> None:
        """Check the LLM server's API kind, model and context before spending minutes on the baseline;
        configuration errors stop the run here, never per cycle."""
        try:
            info = self.provider.preflight()
        except ProviderError as exc:
            if not self._fall_back(exc):
                raise StopRun(f"LLM provider {self.settings.provider}: {exc}") from exc
            info = self.provider.preflight()
        self.server_info = info.to_dict()
        self.display.log(f"LLM: {escape(info.describe())}")
        if getattr(info, "model", None):
            self.display.set_header(model=info.model)
        self._save_run_settings()

    def _fall_back(self, exc: ProviderError) -> bool:
        """Switch to the configured fallback provider when the LLM server is unreachable."""
        s = self.settings
        if exc.kind != "unreachable" or not s.fallback_provider or s.fallback_provider == s.provider:
            return False
        self.display.log(f"[yellow]{exc}[/]\nfalling back to the {s.fallback_provider} provider")
        s.provider, self._provider = s.fallback_provider, None
        self.display.set_header(provider=s.provider)
        return True

    def _stop_reason(self, done: int, started: float) -> str | None:
        s = self.settings
        if s.cycles and done >= s.cycles:
            return f"finished {done} cycle(s)"
        if s.max_runtime_seconds and time.monotonic() - started >= s.max_runtime_seconds:
            return f"reached --max-runtime {s.max_runtime_seconds:g}s"
        return check_resources(self.state, s.min_free_disk_gb, s.min_free_memory_gb)

    def _one_cycle(self, cycle: int) -> None:
        if self.baseline is None or self.baseline.commit != self.record.best_commit():
            self.measure_baseline()
        try:
            proposal, info = self.propose(cycle)
        except ProviderError as exc:
            if exc.kind in ("unreachable", "config", "cache_miss"):
                raise StopRun(f"LLM provider {self.settings.provider}: {exc}") from exc
            self._record_failed_proposal(cycle, exc)
            return
        try:
            self.evaluate_candidate(proposal, cycle, info)
        except RecordError as exc:
            self.display.log(f"[red]record error for {proposal.id}:[/] {exc}")
            self.outcomes.append(CycleOutcome(proposal.id, "failed", str(exc)))

    def _record_failed_proposal(self, cycle: int, exc: ProviderError) -> None:
        """A reply that never became a valid proposal: every attempt's raw text and the reasons it was refused
        go to the run's failed_proposals.jsonl (listed by `history` and `proposals list`); the loop goes on."""
        reason = str(exc)
        entry = {"id": f"cycle-{cycle}", "cycle": cycle, "time": _now(), "provider": self.settings.provider,
                 "kind": exc.kind, "reason": reason,
                 "attempts": [a.to_dict() for a in getattr(exc, "attempts", []) or []]}
        with open(self.run_dir / "failed_proposals.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.store.save_refused_reply(entry)  # the record branch: travels with the run
        self.display.upsert({"id": f"cycle-{cycle}", "cycle": cycle, "stage": "propose", "verdict": "invalid",
                             "reason": reason})
        self.outcomes.append(CycleOutcome(None, "invalid", reason))


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

