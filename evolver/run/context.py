"""What every job of an evolution run shares: the run's context.

Measuring a parent (evolver/run/baseline.py), judging one candidate (evolver/run/candidate.py) and the loop itself
(evolver/run/loop.py) all work on one `RunContext`: the repository and settings, the state and run directories,
the git record and its proposal store, the display, the sandbox backend (made when first needed), the pristine
harness copy, the run's data splits, the run's error control, the current parent's baseline and the outcomes
so far. It also makes the run's decisions every stage shares (torch threads per sandbox, the worker slots,
where stage jobs run) and runs a lone cascade on a tree with the display's stage progress.

Nothing here imports the loop; the loop sets the context up and hands it to the jobs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from rich.markup import escape

from edits.paths import PROTECTED_PATHS, PathPolicy
from evolver.execute.cascade import PER_SEED_STAGES, CascadeResult, StageRun, write_manifest
from evolver.execute.harness_copy import pristine_harness
from evolver.execute.job import Executor, StageJob, StageOutcome
from evolver.execute.local import executor_kind, make_executor
from evolver.execute.ray_executor import RayExecutor
from evolver.judge.promotion import RunErrorControl
from evolver.judge.saturation import LADDER_FILE, TaskLadder, parse_tasks
from evolver.record.git_record import EvolutionRecord
from evolver.record.store import ProposalStore
from evolver.run.display import LoopDisplay
from evolver.run.state import Baseline, CycleOutcome, StopRun, utc_now
from evolver.settings import Settings
from puzzles.file_task import REPORT_FILE as FILE_REPORT
from puzzles.file_task import describe_build, file_task_spec
from puzzles.splits import ensure_run_data
from puzzles.tasks import TASKS, get_task
from sandbox import SandboxUnavailable, get_backend


class RunContext:
    """One run's shared state and services, set up in the order that makes a resumed run safe: the state
    directory, the record (new or resumed), the run directory, the executor check (a missing Ray fails
    here), the run's settings in run.json (a resumed run keeps its stored task, seeds, budget, margin and
    confidence), then the run's error control as it was left."""

    def __init__(self, repo: Path, settings: Settings, *, run_id: str | None = None,
                 display: LoopDisplay | None = None, harness_dir: Path | None = None) -> None:
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
        self._backend: Any = None
        self.lock = threading.RLock()
        """One writer at a time on the git record, the store and the run's files (a cohort judges candidates on
        several threads)."""
        self.executor_kind = executor_kind(settings.executor, settings.ray_address)  # a missing Ray fails here
        self._executor: Executor | None = None
        self.baseline: Baseline | None = None
        self.outcomes: list[CycleOutcome] = []
        self.server_info: dict[str, Any] | None = None  # the LLM server's, once the loop's preflight ran
        self.save_run_settings()
        self.ladder = self._load_ladder()
        control = self.run_dir / "error_control.json"
        self.control = (RunErrorControl.from_dict(json.loads(control.read_text())) if control.exists()
                        else RunErrorControl())
        cut = self.control.settle_interrupted()  # a confirmation the last stop cut short stays spent
        if cut is not None:
            self.save_control()
            self.display.log(f"[yellow]resume:[/] the confirmation of {cut.get('proposal_id')} at level "
                             f"{float(cut['level']):.4f} was cut short; it counts as failed, so the next one is "
                             f"offered {self.control.next_level():.4f}")

    # ------------------------------------------------------------------ the run's files
    def save_run_settings(self) -> None:
        """Write run.json (settings, LLM server, start time); on resume, first take back the run's stored
        task, seeds, budget, margin and confidence where the command line differs."""
        path = self.run_dir / "run.json"
        if path.exists() and self.record.resumed:
            stored = json.loads(path.read_text())
            for key in ("task", "task_file", "select_file", "final_file", "seeds", "budget_seconds", "margin",
                        "confidence", "task_ladder", "guard_tasks", "solved_at"):
                if key == "task" and stored.get("settings", {}).get("task_ladder"):
                    continue  # a ladder's run is on the ladder's current task (ladder.json), not its first
                if key in stored.get("settings", {}) and stored["settings"][key] != getattr(self.settings, key):
                    self.display.log(f"[yellow]resume:[/] keeping the run's {key}={stored['settings'][key]!r} "
                                     f"(ignoring {getattr(self.settings, key)!r})")
                    setattr(self.settings, key, stored["settings"][key])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "settings": self.settings.to_dict(),
                                   "server": self.server_info, "started": utc_now()},
                                  indent=2) + "\n")
        os.replace(tmp, path)

    def _load_ladder(self) -> TaskLadder | None:
        """The run's task ladder (--task-ladder): as the record branch left it on resume, else new at its first
        task; the run's task is the ladder's current one. Guard and ladder tasks are checked against the
        trusted task specs here, before any compute."""
        s = self.settings
        s.guard_tasks = parse_tasks(s.guard_tasks, list(TASKS))
        if not s.task_ladder:
            return None
        tasks = parse_tasks(s.task_ladder, list(TASKS))
        stored = self.store.run_file(LADDER_FILE) if self.record.resumed else None
        ladder = TaskLadder.from_dict(stored) if stored else TaskLadder(tasks)
        if ladder.tasks != tasks:
            raise ValueError(f"the run's stored ladder is {ladder.tasks}, not {tasks}")
        if s.task != ladder.task:
            if not self.record.resumed and s.task != Settings().task:
                self.display.log(f"[yellow]ladder:[/] the run starts on the ladder's task {ladder.task}, not --task "
                                 f"{s.task}")
            s.task = ladder.task
        if stored is None:
            self.save_ladder(ladder)
        elif ladder.position:
            self.display.log(f"resume: the task ladder is at {ladder.task} ({ladder.position + 1} of "
                             f"{len(ladder.tasks)})")
        return ladder

    def save_ladder(self, ladder: TaskLadder) -> None:
        """The ladder's state on the record branch (runs/<run-id>/ladder.json) and in the run folder."""
        with self.lock:
            self.store.save_run_file(LADDER_FILE, ladder.to_dict(),
                                     f"Task ladder at {ladder.task} (run {self.run_id})")
            tmp = self.run_dir / (LADDER_FILE + ".tmp")
            tmp.write_text(json.dumps(ladder.to_dict(), indent=2) + "\n")
            os.replace(tmp, self.run_dir / LADDER_FILE)

    @property
    def home_task(self) -> str:
        """The task the run started on: its splits live in the run folder's data/, other tasks' (the ladder's
        next ones, guard tasks) under tasks/<task>/, each from its own secret seed."""
        return self.ladder.tasks[0] if self.ladder else self.settings.task

    def save_control(self) -> None:
        """Write the run's error control (error_control.json), atomically; the cycles of a cohort call it
        from their own threads, so one writes at a time."""
        path = self.run_dir / "error_control.json"
        with self.lock:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.control.to_dict(), indent=2) + "\n")
            os.replace(tmp, path)

    # ------------------------------------------------------------------ what every stage runs on
    @property
    def backend(self) -> Any:
        """The sandbox backend, made at first use (its warnings go to the display)."""
        if self._backend is None:
            s = self.settings

            def building(line: str) -> None:  # a missing image is built on first use, its progress shown
                if line.startswith(("the sandbox image", "base:", "wheels:", "image:")):  # a step of the build
                    self.display.stage("sandbox image", line.strip(), expected_seconds=60.0)
                else:  # the build's own output
                    self.display.log(f"[cyan]sandbox image:[/] {escape(line)}")

            try:
                self._backend = get_backend(s.backend, image=s.image, gpus=bool(s.gpus), build=building,
                                            warn=lambda m: self.display.log(f"[yellow]sandbox:[/] {m}"))
            except SandboxUnavailable as exc:
                raise StopRun(f"sandbox: {exc}") from exc
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
        if self.settings.task_file:
            return self._file_data_dir()
        return self.task_data_dir(self.settings.task)

    def task_data_dir(self, task: str) -> Path:
        """``task``'s splits for this run (built once, on the host, from a secret seed in the run folder)."""
        spec = get_task(task)
        root = self.run_dir if task == self.home_task else self.run_dir / "tasks" / task
        with self.lock:  # a cohort's cycles may ask for a guard task's splits at once: built once
            if not (root / "data" / "select" / "dataset.json").exists():
                self.display.stage("data", f"building the {spec.name} splits from this run's secret seed")
            return ensure_run_data(root, spec)

    def _file_data_dir(self) -> Path:
        """A file task's splits (puzzles/file_task.py): the file validated, its spec (sha256, sizes) made once
        per run context; a file that fails validation, or changed since the run built its splits, stops the run."""
        cached = getattr(self, "_file_data", None)
        if cached is not None:
            return cached
        s = self.settings
        assert s.task_file is not None  # only a file task's run asks
        with self.lock:
            built = (self.run_dir / "data" / "select" / "dataset.json").exists()
            try:
                spec = file_task_spec(s.task_file, s.select_file, s.final_file, gpus=s.gpus)
                if not built:
                    self.display.stage("data", f"splitting {s.task_file} with this run's secret seed")
                data = ensure_run_data(self.run_dir, spec)
            except ValueError as exc:  # FileTaskError included
                raise StopRun(f"task file: {exc}") from exc
            report = json.loads((data / FILE_REPORT).read_text())
            for line in describe_build(report):
                self.display.log(f"[cyan]data:[/] {escape(line)}")
            self._file_data: Path | None = data
        return data

    @property
    def executor(self) -> Executor:
        """Where every training job of the run goes (the baseline's seeds, the gates, the seed pairs): local
        worker slots (`workers()` of them, the GPU ids of --gpu-ids in turn) or a Ray cluster; made at first use."""
        if self._executor is None:
            s = self.settings
            self._executor = make_executor(self.executor_kind, ray_address=s.ray_address, workers=self.workers(),
                                           gpu_ids=s.gpu_ids,
                                           backend=self.backend if self.executor_kind == "local" else None)
        return self._executor

    @executor.setter
    def executor(self, executor: Executor) -> None:
        self._executor = executor

    def close_executor(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def workers(self) -> int:
        """Local worker slots: --workers, or what the machine offers: one per GPU (--gpus), else one per
        `stage_threads()` cores (one per core at one thread); at least the two sides of a pair side by side."""
        s = self.settings
        if s.workers:
            return int(s.workers)
        least = 2 if s.side_by_side else 1
        if s.gpus:
            return max(least, len(s.gpu_ids))
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(least, cores // self.stage_threads())

    def cohort_size(self) -> int:
        """Candidates judged at once: --cohort, or as many as the workers can train pairs for at once (one on
        a 2-core machine: the serial loop)."""
        s = self.settings
        if s.cohort:
            return int(s.cohort)
        per_pair = 2 if s.side_by_side else 1
        if self.executor_kind == "local":
            return max(1, self.workers() // per_pair)
        return max(1, self.pairs_at_once())

    def pairs_at_once(self) -> int:
        """On a Ray cluster: how many seed pairs its alive nodes can train at the same time, each pair on one
        node (side by side), or how many lone sides (--serial-pairs)."""
        s = self.settings
        executor = self.executor
        if not isinstance(executor, RayExecutor):  # an executor that cannot tell
            return max(1, self.workers() // (2 if s.side_by_side else 1))
        side = executor.resources_of({"cpus": self.sandbox_cpus(), "threads": self.stage_threads(), "gpus": s.gpus})
        return int(executor.groups_at_once([side] * (2 if s.side_by_side else 1)))

    def check_cluster(self) -> None:
        """Stop the run before the baseline when no node of the Ray cluster can train a seed pair (both sides
        on one node); a local executor always can."""
        if self.executor_kind == "local" or self.pairs_at_once() > 0:
            return
        s = self.settings
        executor = self.executor
        assert isinstance(executor, RayExecutor)  # a local executor returned above
        what = (f"two sandboxes of {self.sandbox_cpus():g} CPU" + (" and 1 GPU" if s.gpus else "") + " each"
                if s.side_by_side else f"one sandbox of {self.sandbox_cpus():g} CPU" + (" and 1 GPU" if s.gpus else ""))
        raise StopRun(f"no node of the Ray cluster has room for a seed pair ({what}, on one node); nodes: "
                      + "; ".join(", ".join(f"{v:g} {k}" for k, v in sorted(n.items()) if k in ("CPU", "GPU"))
                                  for n in executor.node_resources())
                      + ". Start the nodes with more CPUs (ray start --num-cpus), lower --cpus, or use --serial-pairs")

    def parent_tree(self, commit: str) -> Path:
        """A read-only copy of ``commit``'s hrm/ (under the run directory), what a parent's jobs train: pinned,
        so a merge into the run branch while they run changes nothing under them."""
        root = self.run_dir / "trees" / commit[:16]
        if (root / ".complete").exists():
            return root
        with self.lock:
            if (root / ".complete").exists():
                return root
            tmp = root.with_name(root.name + ".tmp")
            if tmp.exists():
                _remove_tree(tmp)
            tmp.mkdir(parents=True)
            blob = subprocess.run(["git", "archive", "--format=tar", commit, "hrm"], cwd=self.repo, check=True,
                                  capture_output=True).stdout
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                tar.extractall(tmp, filter="data")
            (tmp / ".complete").write_text(commit + "\n")
            if root.exists():
                _remove_tree(root)
            os.replace(tmp, root)
        return root

    def stage_job(self, tree: Path, out: Path, stages: Sequence[str], seed: int, *, side: str, phase: str,
                  manifest: dict[str, Any] | None = None, eval_cap_s: float | None = None,
                  cpus: float | None = None, task: str | None = None) -> StageJob:
        """One job of the run's cascade: ``stages`` of ``tree`` on ``seed``, with the run's task (or ``task``:
        a guard task, the task a cohort member's parent was measured on), budget, sandbox and limits."""
        s = self.settings
        task = task or s.task
        options: dict[str, Any] = {
            "task": task, "budget_seconds": s.budget_seconds, "backend": s.backend, "stages": list(stages),
            "gpus": s.gpus, "memory_mb": s.memory_mb, "cpus": self.sandbox_cpus() if cpus is None else cpus,
            "threads": self.stage_threads(), "label": f"{self.run_id}-{side}",
            "setup_allowance_s": s.setup_allowance_seconds, "eval_cap_s": eval_cap_s}
        if manifest is not None:
            options["manifest_data"] = manifest
        data = self.data_dir() if task == s.task else self.task_data_dir(task)
        return StageJob(side, int(seed), phase, str(tree), str(self.harness_dir), str(data), str(out),
                        options, image=s.image)

    def submit_job(self, job: StageJob, *, show: bool = True) -> Future[StageOutcome]:
        """Submit one job to the run's executor (its stages show on the display when ``show``)."""
        return self.executor.submit(job, self.on_stage if show else None)

    def sandbox_cpus(self) -> float:
        """CPUs per sandbox: half of --cpus (at least one) side by side, else all of it. Every job of a run
        asks for the same by default (the baseline and the gates as well as each side of a pair), so all
        of them measure under the same limits and fit the same Ray nodes: a cluster of 1-CPU nodes schedules
        a baseline asking for 1 CPU, never one asking for 2."""
        s = self.settings
        return max(1.0, s.cpus / 2) if s.side_by_side else float(s.cpus)

    def stage_threads(self) -> int:
        """Torch threads per sandbox. Side by side, each sandbox gets half of --threads; the lone stages (the
        gates, the baseline) use the same, so every measurement of a run trains under the same threads, and
        no stage spins OpenMP threads against a busy core (2 threads beside a CPU hog on 2 cores took trainability
        from about 20 s past its 300 s limit)."""
        s = self.settings
        return max(1, s.threads // 2) if s.side_by_side else s.threads

    # ------------------------------------------------------------------ a lone cascade
    def cascade(self, worktree: Path, out: Path, stages: tuple[str, ...], changed: list[str],
                parent: str, eval_cap_s: float | None = None, *, side: str = "candidate",
                phase: str = "gates", fingerprint: bool = False, task: str | None = None) -> CascadeResult:
        """Run `stages` of the cascade on one tree (the baseline, a candidate's gates) through the run's
        executor, and save cascade.json. Per-seed stages run one job per seed of the run (at once, as the
        workers allow, each in out/seed<seed>/); the gates are one job on the first seed."""
        s = self.settings
        out.mkdir(parents=True, exist_ok=True)
        manifest = None
        if "safety" in stages:  # nothing inside hrm/ is protected; edits outside it never reach a cascade
            path = write_manifest(self.repo, parent, worktree, changed, [], out_path=out / "manifest.json")
            manifest = json.loads(path.read_text())
        seeds = list(s.seeds) if any(st in PER_SEED_STAGES for st in stages) else list(s.seeds[:1])
        jobs = [self.stage_job(worktree, out / f"seed{seed}" if len(seeds) > 1 else out, stages, seed, side=side,
                               phase=phase, manifest=manifest, eval_cap_s=eval_cap_s, task=task) for seed in seeds]
        for job in jobs:
            if fingerprint:  # the smoke stage also records the no-effect check's fingerprint (evolver/run/no_effect.py)
                job.options["fingerprint"] = True
        outcomes = [f.result() for f in [self.submit_job(job) for job in jobs]]
        result = combine_results(outcomes, task or s.task, seeds)
        result.save(out / "cascade.json")
        return result

    def on_stage(self, stage: str, seed: int | None, status: str, run: StageRun | None) -> None:
        """The cascade's progress callback: a stage starting shows on the display, a failed one is logged."""
        where = f"seed {seed}" if seed is not None else ""
        if status == "start":
            expected = self.settings.budget_seconds if stage == "train" else None
            self.display.stage(stage, where, expected)
        elif status == "queued":  # handed to a cluster that does not say when it starts
            self.display.stage(stage, f"{where} (queued on the cluster)".strip(), None)
        elif run is not None and not run.ok:
            self.display.log(f"[red]{stage} {where} failed:[/] {escape(run.reason)}")  # wrapped, never cut


def combine_results(outcomes: Sequence[StageOutcome], task: str, seeds: Sequence[int]) -> CascadeResult:
    """One CascadeResult from the jobs of one cascade (one per seed, in seed order): its stages, scores and
    evidence in order; failed at the first job that failed (an executor failure is a failed "executor" stage)."""
    combined = CascadeResult(ok=True, task=task, seeds=list(seeds), stages=[])
    for seed, outcome in zip(seeds, outcomes, strict=True):
        res = outcome.cascade()
        if res is None:
            combined.stages.append(StageRun("executor", int(seed), False, outcome.error or "executor: no result"))
            if combined.ok:
                combined.ok, combined.failed_stage, combined.failed_seed = False, "executor", int(seed)
                combined.reason = outcome.error or "executor: no result"
            continue
        combined.stages += res.stages
        combined.seconds += res.seconds
        combined.evidence += res.evidence
        for metric, values in res.scores.items():
            combined.scores.setdefault(metric, []).extend(values)
        if not combined.backend:
            combined.backend, combined.isolation, combined.missing = res.backend, res.isolation, res.missing
            combined.task_spec, combined.heldout_split = res.task_spec, res.heldout_split
        if not res.ok and combined.ok:
            combined.ok, combined.failed_stage, combined.failed_seed = False, res.failed_stage, res.failed_seed
            combined.reason = res.reason
    return combined


def _remove_tree(path: Path) -> None:
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path)
