"""What every job of an evolution run shares: the run's context.

Measuring a parent (evolver/baseline.py), judging one candidate (evolver/candidate.py) and the loop itself
(evolver/loop.py) all work on one `RunContext`: the repository and settings, the state and run directories,
the git record and its proposal store, the display, the sandbox backend (made when first needed), the pristine
harness copy, the run's data splits, the run's error control, the current parent's baseline and the outcomes
so far. It also makes the run's decisions every stage shares (torch threads per sandbox, the GPU of a slot,
where stage jobs run) and runs a lone cascade on a tree with the display's stage progress.

Nothing here imports the loop; the loop sets the context up and hands it to the jobs.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from edits.paths import PROTECTED_PATHS, PathPolicy
from evolver.cascade import CascadeResult, StageRun, run_cascade, write_manifest
from evolver.display import LoopDisplay
from evolver.executor import executor_kind
from evolver.harness_copy import pristine_harness
from evolver.promotion import RunErrorControl
from evolver.record import EvolutionRecord
from evolver.settings import Settings
from evolver.store import ProposalStore
from puzzles.splits import ensure_run_data
from puzzles.tasks import get_task
from sandbox import get_backend

if TYPE_CHECKING:
    from evolver.baseline import Baseline
    from evolver.candidate import CycleOutcome


class StopRun(Exception):
    """A reason to end the run cleanly (LLM unreachable without fallback, baseline broken, ...)."""


def utc_now() -> str:
    """The time stamps of run.json, results and refused replies: UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        self.executor_kind = executor_kind(settings.executor, settings.ray_address)  # a missing Ray fails here
        self.baseline: Baseline | None = None
        self.outcomes: list[CycleOutcome] = []
        self.server_info: dict[str, Any] | None = None  # the LLM server's, once the loop's preflight ran
        self.save_run_settings()
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
            for key in ("task", "seeds", "budget_seconds", "margin", "confidence"):
                if key in stored.get("settings", {}) and stored["settings"][key] != getattr(self.settings, key):
                    self.display.log(f"[yellow]resume:[/] keeping the run's {key}={stored['settings'][key]!r} "
                                     f"(ignoring {getattr(self.settings, key)!r})")
                    setattr(self.settings, key, stored["settings"][key])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "settings": self.settings.to_dict(),
                                   "server": self.server_info, "started": utc_now()},
                                  indent=2) + "\n")
        os.replace(tmp, path)

    def save_control(self) -> None:
        """Write the run's error control (error_control.json), atomically."""
        path = self.run_dir / "error_control.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.control.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)

    # ------------------------------------------------------------------ what every stage runs on
    @property
    def backend(self) -> Any:
        """The sandbox backend, made at first use (its warnings go to the display)."""
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

    def stage_threads(self) -> int:
        """Torch threads per sandbox. Side by side, each sandbox gets half of --threads; the lone stages (the
        gates, the baseline) use the same, so every measurement of a run trains under the same threads, and
        no stage spins OpenMP threads against a busy core (2 threads beside a CPU hog on 2 cores took trainability
        from about 20 s past its 300 s limit)."""
        s = self.settings
        return max(1, s.threads // 2) if s.side_by_side else s.threads

    def gpu_ids(self, slot: int) -> list[str]:
        """One GPU per sandbox: slot 0 (the parent, and every lone stage) and slot 1 (the candidate beside
        it) take their device from --gpu-ids in turn (default: device 0 for both)."""
        ids = list(self.settings.gpu_ids) or ["0"]
        return [ids[slot % len(ids)]] if self.settings.gpus else []

    # ------------------------------------------------------------------ a lone cascade
    def cascade(self, worktree: Path, out: Path, stages: tuple[str, ...], changed: list[str],
                parent: str, eval_cap_s: float | None = None) -> CascadeResult:
        """Run `stages` of the cascade on one tree (the baseline, a candidate's gates) and save cascade.json."""
        s = self.settings
        out.mkdir(parents=True, exist_ok=True)
        # Nothing inside hrm/ is protected; edits outside it never reach a cascade (the path policy).
        manifest = write_manifest(self.repo, parent, worktree, changed, [], out_path=out / "manifest.json")
        result = run_cascade(
            worktree, self.harness_dir, self.data_dir(), out,
            task=s.task, seeds=list(s.seeds), budget_seconds=s.budget_seconds, backend=self.backend,
            stages=stages, manifest=manifest, gpus=s.gpus, gpu_ids=self.gpu_ids(0), memory_mb=s.memory_mb, cpus=s.cpus,
            threads=self.stage_threads(), label=self.run_id, progress=self.on_stage, eval_cap_s=eval_cap_s,
            setup_allowance_s=s.setup_allowance_seconds,
        )
        result.save(out / "cascade.json")
        return result

    def on_stage(self, stage: str, seed: int | None, status: str, run: StageRun | None) -> None:
        """The cascade's progress callback: a stage starting shows on the display, a failed one is logged."""
        where = f"seed {seed}" if seed is not None else ""
        if status == "start":
            expected = self.settings.budget_seconds if stage == "train" else None
            self.display.stage(stage, where, expected)
        elif run is not None and not run.ok:
            self.display.log(f"[red]{stage} {where} failed:[/] {escape(run.reason)}")  # wrapped, never cut
