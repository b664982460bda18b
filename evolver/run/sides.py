"""Measuring sides and seed pairs for the judge through an executor: the bridge between execution (which
knows no verdicts) and judgement (which knows no executors). A job's outcome becomes the judge's `SideRun`;
on local slots the learning-curve early stop watches both sides of a pair while they train.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from evolver.execute.cascade import Progress
from evolver.execute.job import Executor, StageJob, StageOutcome, then
from evolver.judge.early_stop import EarlyStopRule, HostStop, PairWatch, enforced
from evolver.judge.pairs import EXECUTOR_STAGE, SideRun


def side_run(outcome: StageOutcome, metric: str) -> SideRun:
    """The judge's view of one side: its score on ``metric`` and its evidence, with where it ran."""
    placement = dict(outcome.placement)
    result = outcome.cascade()
    if result is None:
        return SideRun(False, reason=outcome.error or "executor: no result", failed_stage=EXECUTOR_STAGE,
                       evidence={"executor": placement})
    evidence = {**(result.evidence[0] if result.evidence else {}), "executor": placement}
    if not result.ok:
        return SideRun(False, reason=result.reason, failed_stage=result.failed_stage, evidence=evidence)
    return SideRun(True, float(result.scores[metric][0]), evidence=evidence)


class ExecutorSides:
    """The judge's measuring of one side through an executor: ``submit(side, seed, phase)`` builds the job
    (``make_job``), submits it and gives a future of its SideRun (``finish`` first sees each outcome and its
    CascadeResult, e.g. to save it); calling the object measures one side and waits."""

    def __init__(self, executor: Executor, make_job: Callable[[str, int, str], StageJob], metric: str, *,
                 progress: Callable[[str], Progress | None] | None = None,
                 finish: Callable[[StageJob, StageOutcome], None] | None = None,
                 early_stop: EarlyStopRule | None = None, key: str = "") -> None:
        self.executor = executor
        self.make_job = make_job
        self.metric = metric
        self.progress = progress
        self.finish = finish
        self.early_stop = early_stop if executor.stop_events is not None else None  # local slots only
        self.key = key

    def submit(self, side: str, seed: int, phase: str) -> Future[SideRun]:
        return self.submit_pair([side], seed, phase)[0]

    def submit_pair(self, sides: list[str], seed: int, phase: str) -> list[Future[SideRun]]:
        """Start the given sides of one seed pair together (one executor group) and give futures of their
        SideRuns, in the order of ``sides``."""
        jobs = [self.make_job(side, seed, phase) for side in sides]
        watch = self._watch(jobs, sides, seed, phase)
        futures = self.executor.submit_group(jobs, [self.progress(side) if self.progress else None
                                                    for side in sides])
        if watch is not None:
            pending = [len(futures)]
            lock = threading.Lock()

            def one_done(_f: Future[StageOutcome]) -> None:
                with lock:
                    pending[0] -= 1
                    if pending[0] == 0:
                        watch.finish()

            for future in futures:
                future.add_done_callback(one_done)

        def done(job: StageJob) -> Callable[[StageOutcome], SideRun]:
            def finish(outcome: StageOutcome) -> SideRun:
                if self.finish is not None:
                    self.finish(job, outcome)
                run = side_run(outcome, self.metric)
                if watch is not None and job.side == "candidate" and watch.decision is not None:
                    run.evidence["early_stop"] = dict(watch.decision)
                return run
            return finish

        return [then(future, done(job)) for job, future in zip(jobs, futures, strict=True)]

    def _watch(self, jobs: list[StageJob], sides: list[str], seed: int, phase: str) -> PairWatch | None:
        """With the early stop on and both sides of a pair here, a watch of their curves (started), whose
        stop event the candidate's job gets."""
        if self.early_stop is None or sorted(sides) != ["candidate", "parent"]:
            return None
        by_side = dict(zip(sides, jobs, strict=True))
        stop, parent_stop = HostStop(), HostStop()
        events = self.executor.stop_events
        assert events is not None  # early_stop is None otherwise
        events[by_side["candidate"].out_dir] = stop
        events[by_side["parent"].out_dir] = parent_stop
        budget = float(by_side["candidate"].options.get("budget_seconds", 0.0))
        return PairWatch(Path(by_side["parent"].out_dir) / f"train-seed{seed}",
                         Path(by_side["candidate"].out_dir) / f"train-seed{seed}", budget, self.early_stop, stop,
                         enforce=enforced(f"{self.key}:{phase}:{seed}", self.early_stop),
                         parent_stop=parent_stop).start()

    def __call__(self, side: str, seed: int, phase: str) -> SideRun:
        return self.submit(side, seed, phase).result()


def side_finisher(timings: dict[str, float], prefix: str = "") -> Callable[[StageJob, StageOutcome], None]:
    """What ExecutorSides calls with each side's outcome: save its cascade.json in the side's out_dir and add
    its stage seconds to ``timings`` (the candidate's as <stage>, the parent's as parent-<stage>, both after
    ``prefix``: "screen-" for a screen pair). A side the executor lost has nothing to save (the judge voids
    its pair)."""
    def finish(job: StageJob, outcome: StageOutcome) -> None:
        res = outcome.cascade()
        if res is None:
            return
        Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        res.save(Path(job.out_dir) / "cascade.json")
        for run in res.stages:
            key = prefix + (run.stage if job.side == "candidate" else f"parent-{run.stage}")
            timings[key] = timings.get(key, 0.0) + float(run.duration_s)
    return finish
