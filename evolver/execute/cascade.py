"""The validation cascade, host side: each stage of `python -m smoketests` as its own sandbox run.

Stages in order: safety, smoke, trainability, then train + evaluate once per seed. The first failure stops
the cascade. What each stage sees (all read-only; /out is the stage's own fresh host directory):

    stage         /harness                 /candidate        /data                          other
    safety        pristine harness copy    the hrm/ copy     -                              /manifest
    smoke         pristine harness copy    the hrm/ copy     a copy of the train split
    trainability  pristine harness copy    the hrm/ copy     a copy of the train split
    train         pristine harness copy    the hrm/ copy     a copy of the train split
    evaluate      pristine harness copy    the hrm/ copy     the held-out split, NO labels  /train (checkpoint)

The harness copy holds only `smoketests/` and `puzzles/` (evolver/execute/harness_copy.py); the engine root, the
state directory, `.git`, `.env`, the worktrees and other runs' outputs are in no mount. The host owns:

- the clock: the train stage is killed at the budget plus a setup allowance of host-measured time (at most
  SETUP_ALLOWANCE_S; a candidate's shrinks to its parent's measured start-up, evolver/judge/clock.py), and a stage
  that ran past it fails with that reason; the judge compares the train stage's host seconds with the
  parent's beside it; the evaluate stage is capped relative to the parent's;
- the eval conditions: the number of ACT segments comes from the trusted task spec (puzzles/tasks.py);
- the verdict of every stage (evolver/execute/gates.py) from files it reads back without following links
  (sandbox/readback.py), and the scores, from labels that never enter a sandbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evolver.execute.gates import Gate, judge_evaluation, judge_report
from evolver.execute.harness_copy import stage_candidate
from puzzles.arrays import load_split
from puzzles.splits import sealed_view, train_view
from puzzles.tasks import TaskSpec, task_spec
from sandbox import Backend, Mount, SandboxResult, SandboxSpec, get_backend
from sandbox.readback import UnsafeOutput, audit_tree, copy_out, read_array, read_json

ALL_STAGES: tuple[str, ...] = ("safety", "smoke", "fingerprint", "trainability", "train", "evaluate")
DEFAULT_STAGES: tuple[str, ...] = ("safety", "smoke", "trainability", "train", "evaluate")
"""What run_cascade runs unless told: every stage but the fingerprint (evolver/run/no_effect.py asks for that one)."""
PER_SEED_STAGES = ("train", "evaluate")
EARLY_STOP = "early-stop"
"""The failed_stage of a train stage the host stopped early (its learning curve was clearly below its
parent's): a rejection, never a failure of the candidate's code (evolver/judge/pairs.py has the same name)."""
CANCELLED = "cancelled"
"""The failed_stage of a job the host cancelled because the run is stopping (Ctrl-C): its running stage was
killed and no later one started. Nothing judges it: the run records nothing more (evolver/run/loop.py)."""
CANCEL_REASON = "cancelled: the run is stopping"
DEFAULT_TIMEOUTS: dict[str, float] = {"safety": 60.0, "smoke": 180.0, "fingerprint": 180.0, "trainability": 300.0,
                                      "evaluate": 600.0}
SETUP_ALLOWANCE_S = 30.0
"""Host-measured seconds a train stage may spend beyond its budget: interpreter and torch start-up, data
loading, model building and the final checkpoint. A trainer that trains past its budget by any clock of
its own is killed here, and the stage fails."""
EVAL_CAP_FACTOR = 3.0
EVAL_CAP_FLOOR_S = 60.0
"""A candidate's evaluate stage is killed at max(EVAL_CAP_FLOOR_S, EVAL_CAP_FACTOR x the parent's)."""
MANIFEST_VERSION = 1
REPORT_MAX_BYTES = 1 << 20
CHECKPOINT_MAX_BYTES = 4 << 30
EVAL_ARRAYS = ("predictions", "init_predictions", "buffers_predictions", "shuffled_predictions", "mode_eval",
               "mode_train", "mode_comparable")

Progress = Callable[[str, "int | None", str, "StageRun | None"], None]


@dataclass
class StageRun:
    """One stage's sandbox run, JSON-serialisable via asdict."""

    stage: str
    seed: int | None
    ok: bool
    reason: str
    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    duration_s: float = 0.0
    overhead_s: float = 0.0
    stage_seconds: float | None = None
    timeout_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""
    backend: str = ""
    error: str | None = None
    out_dir: str = ""
    host_seconds: float = 0.0  # the command's duration as the host measured it


@dataclass
class CascadeResult:
    ok: bool
    task: str
    seeds: list[int]
    stages: list[StageRun]
    failed_stage: str | None = None
    failed_seed: int | None = None
    reason: str = ""
    scores: dict[str, list[float]] = field(default_factory=dict)
    backend: str = ""
    isolation: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    evidence: list[dict[str, Any]] = field(default_factory=list)  # per seed: steps, rates, checks, times
    task_spec: dict[str, Any] = field(default_factory=dict)
    heldout_split: str = "select"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------ manifest


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)


def _parent_files(repo: Path, commit: str, entry: str) -> list[str]:
    listed = _git(repo, "ls-tree", "-r", "--name-only", commit, "--", entry)
    if listed.returncode != 0:
        raise RuntimeError(f"git ls-tree {commit} {entry}: {listed.stderr.decode(errors='replace').strip()}")
    return [line for line in listed.stdout.decode().splitlines() if line]


def _candidate_files(candidate_dir: Path, entry: str) -> list[str]:
    path = Path(candidate_dir) / entry
    if path.is_file():
        return [entry]
    if not path.is_dir():
        return []
    return [
        p.relative_to(candidate_dir).as_posix()
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]


def write_manifest(
    repo: Path,
    parent_commit: str,
    candidate_dir: Path,
    changed_files: Sequence[str],
    protected: Sequence[str],
    *,
    out_path: Path | None = None,
) -> Path:
    """Write the safety manifest: the changed files, and for every protected file (entries may be
    directories) the sha256 of its content in the PARENT commit (null when the parent lacks it, so an
    added file is caught too). Returns the manifest path (a fresh temp dir unless out_path is given)."""
    hashes: dict[str, str | None] = {}
    for entry in protected:
        entry = entry.rstrip("/")
        for rel in sorted(set(_parent_files(repo, parent_commit, entry)) | set(_candidate_files(candidate_dir, entry))):
            blob = _git(repo, "cat-file", "blob", f"{parent_commit}:{rel}")
            hashes[rel] = hashlib.sha256(blob.stdout).hexdigest() if blob.returncode == 0 else None
    manifest = {
        "version": MANIFEST_VERSION,
        "parent_commit": parent_commit,
        "changed_files": sorted(set(changed_files)),
        "protected": hashes,
    }
    if out_path is None:
        out_path = Path(tempfile.mkdtemp(prefix="hrm-manifest-")) / "manifest.json"
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_path


# ------------------------------------------------------------------------------------------ staging


def _make_readable(path: Path) -> None:
    """Let the sandbox's unprivileged user traverse/read a host directory the engine created."""
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                os.chmod(full, os.stat(full).st_mode | 0o444)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]


# ------------------------------------------------------------------------------------------ one stage


def _base_run(stage: str, seed: int | None, result: SandboxResult, out_dir: Path, timeout_s: float) -> StageRun:
    return StageRun(
        stage=stage, seed=seed, ok=False, reason="", exit_code=result.exit_code, timed_out=result.timed_out,
        oom_killed=result.oom_killed, duration_s=result.duration_s, overhead_s=result.overhead_s,
        timeout_s=timeout_s, log_tail=result.log_tail, backend=result.backend, error=result.error,
        out_dir=str(out_dir), host_seconds=result.duration_s,
    )


def _judge(stage: str, seed: int | None, result: SandboxResult, out_dir: Path, timeout_s: float,
           *, budget_seconds: float | None = None) -> StageRun:
    """The host's verdict on one stage run: the sandbox's exit, the host clock, the files left in /out
    (only plain files are read back) and the stage's measurements checked by evolver/execute/gates.py."""
    run = _base_run(stage, seed, result, out_dir, timeout_s)
    problems = audit_tree(out_dir)
    report: dict[str, Any] | None = None
    if not problems:
        try:
            data = read_json(out_dir, f"{stage}.json", max_bytes=REPORT_MAX_BYTES)
            report = data if isinstance(data, dict) else None
        except FileNotFoundError:
            report = None
        except (UnsafeOutput, ValueError, UnicodeDecodeError) as exc:
            problems.append(str(exc))
    if report is not None:
        run.metrics = dict(report.get("metrics") or {}) if isinstance(report.get("metrics"), dict) else {}
        seconds = report.get("seconds")
        run.stage_seconds = float(seconds) if isinstance(seconds, (int, float)) else None
    if result.error:
        run.reason = f"sandbox error: {result.error}"
    elif problems:
        run.reason = "the stage left files the host will not read: " + "; ".join(problems[:5])
    elif result.timed_out and stage == "train" and budget_seconds is not None:
        run.reason = (f"killed by the host clock after {result.duration_s:.1f}s: the train budget is "
                      f"{budget_seconds:g}s plus a {timeout_s - budget_seconds:g}s setup allowance, so the "
                      "trainer ran past its budget")
    elif result.timed_out:
        run.reason = f"timed out after {timeout_s:.0f}s (killed by the host)"
    elif result.oom_killed:
        run.reason = "killed: out of memory"
    elif report is None:
        run.reason = f"no valid {stage}.json written (exit code {result.exit_code})"
    elif result.duration_s > timeout_s:
        run.reason = (f"ran {result.duration_s:.1f}s by the host clock, past its {timeout_s:g}s limit"
                      + (f" (budget {budget_seconds:g}s + setup allowance)" if budget_seconds is not None else ""))
    else:
        gate: Gate = judge_report(stage, report)
        if not gate.ok:
            run.reason = gate.reason
        elif result.exit_code != 0:
            run.reason = f"{stage}.json says ok but the process exited with {result.exit_code}"
        else:
            run.ok = True
    return run


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def eval_time_cap(parent_eval_seconds: float | None) -> float:
    """The evaluate stage's wall clock for a candidate whose parent's took ``parent_eval_seconds``."""
    if not parent_eval_seconds:
        return DEFAULT_TIMEOUTS["evaluate"]
    return max(EVAL_CAP_FLOOR_S, EVAL_CAP_FACTOR * float(parent_eval_seconds))


def _read_eval_arrays(out_dir: Path) -> dict[str, np.ndarray]:
    return {name: read_array(out_dir, f"{name}.npy") for name in EVAL_ARRAYS}


# ------------------------------------------------------------------------------------------ the cascade


def run_cascade(
    candidate_dir: Path,
    harness_dir: Path,
    data_dir: Path,
    out_dir: Path,
    *,
    task: str | TaskSpec,
    seeds: Sequence[int],
    budget_seconds: float,
    backend: Backend | str = "auto",
    stages: Sequence[str] = DEFAULT_STAGES,
    timeouts: dict[str, float] | None = None,
    manifest: Path | None = None,
    progress: Progress | None = None,
    threads: int = 2,
    memory_mb: int = 4096,
    cpus: float = 2.0,
    gpus: bool = False,
    gpu_ids: Sequence[str] = (),
    trainability_steps: int | None = None,
    label: str = "",
    warn: Callable[[str], None] | None = None,
    heldout_split: str = "select",
    setup_allowance_s: float = SETUP_ALLOWANCE_S,
    eval_cap_s: float | None = None,
    stop: threading.Event | None = None,
    cancel: threading.Event | None = None,
    fingerprint: bool = False,
) -> CascadeResult:
    """Run the requested stages in order (train + evaluate per seed), stopping at the first failure.

    ``candidate_dir`` is a tree holding the candidate's ``hrm/`` (only that package is copied into the
    sandbox); ``harness_dir`` the pristine harness copy; ``data_dir`` the host-only run data with
    ``train`` and the held-out splits, of which ``heldout_split`` is scored.

    ``fingerprint``: the smoke stage also records the fingerprint the no-effect check compares
    (evolver/run/no_effect.py), under its metrics' ``fingerprint``.

    ``stop``: the host's early stop of the train stage (evolver/judge/early_stop.py). ``cancel``: set when the run
    is stopping: the running stage is killed and no other starts (the result fails at CANCELLED). A train
    stage watches ``stop`` when given, else ``cancel``: a caller with both sets both (LocalExecutor.close).
    """
    unknown = [s for s in stages if s not in ALL_STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {ALL_STAGES}")
    if not seeds and any(s in PER_SEED_STAGES for s in stages):
        raise ValueError("train/evaluate need at least one seed")
    spec_task = task_spec(task, Path(data_dir)) if isinstance(task, str) else task  # a file task: its task.json
    started = time.perf_counter()
    candidate_dir, harness_dir = Path(candidate_dir).resolve(), Path(harness_dir).resolve()
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    box = get_backend(backend, warn=warn) if isinstance(backend, str) else backend
    limits = dict(DEFAULT_TIMEOUTS)
    limits["train"] = float(budget_seconds) + float(setup_allowance_s)
    if eval_cap_s is not None:
        limits["evaluate"] = float(eval_cap_s)
    limits.update(timeouts or {})

    staged = out_dir / "staged"
    code = stage_candidate(candidate_dir, staged / "candidate")
    train_data = train_view(data_dir, staged / "train-split")
    test_data = sealed_view(data_dir, heldout_split, staged / "heldout-sealed") if "evaluate" in stages else None
    manifest_dir = None
    if manifest is not None:
        manifest_dir = _fresh_dir(staged / "manifest")
        shutil.copy2(manifest, manifest_dir / "manifest.json")
    _make_readable(staged)

    result = CascadeResult(ok=True, task=spec_task.name, seeds=list(seeds), stages=[],
                           backend=getattr(box, "name", ""), task_spec=spec_task.to_dict(),
                           heldout_split=heldout_split)
    base_mounts = [Mount(code, "/candidate"), Mount(harness_dir, "/harness")]
    env = {
        "PYTHONPATH": "/harness",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONSAFEPATH": "1",  # the working directory (/out, which the candidate writes) is not on sys.path
        "PYTHONUNBUFFERED": "1",
        "HRM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "HOME": "/tmp",
    }

    plan: list[tuple[str, int | None]] = [(s, None) for s in ALL_STAGES if s in stages and s not in PER_SEED_STAGES]
    for one_seed in seeds:
        plan += [(stage, int(one_seed)) for stage in PER_SEED_STAGES if stage in stages]

    checkpoints: dict[int, Path] = {}
    evidence: dict[int, dict[str, Any]] = {}
    labels: np.ndarray | None = None
    inputs: np.ndarray | None = None
    train_stop = stop if stop is not None else cancel
    for stage, seed in plan:
        if cancel is not None and cancel.is_set():
            result.stages.append(StageRun(stage, seed, False, CANCEL_REASON))
            result.ok, result.failed_stage, result.failed_seed, result.reason = False, CANCELLED, seed, CANCEL_REASON
            break
        name = stage if seed is None else f"{stage}-seed{seed}"
        stage_out = _fresh_dir(out_dir / name)
        os.chmod(stage_out, 0o777)
        command = [
            "python", "-s", "-P", "-m", "smoketests", stage, "--repo", "/candidate", "--data", "/data", "--out", "/out",
            "--task", spec_task.name, "--seed", str(seed if seed is not None else (seeds[0] if seeds else 0)),
            "--budget-seconds", str(budget_seconds), "--threads", str(threads),
        ]
        mounts = list(base_mounts)
        if stage == "safety":
            if manifest_dir is not None:
                mounts.append(Mount(manifest_dir, "/manifest"))
                command += ["--manifest", "/manifest/manifest.json"]
            command[command.index("--data") + 1] = "/candidate"  # safety reads no data
        elif stage == "evaluate":
            assert test_data is not None and seed is not None
            if seed not in checkpoints:
                raise ValueError("evaluate needs the train stage in the same cascade")
            mounts += [Mount(test_data, "/data"), Mount(checkpoints[seed].parent, "/train")]
            command += ["--checkpoint", "/train/checkpoint.pt", "--segments", str(spec_task.eval_segments)]
        else:
            mounts.append(Mount(train_data, "/data"))
        if stage == "fingerprint" or (stage == "smoke" and fingerprint):  # its rollout runs the task's segments
            command += ["--segments", str(spec_task.eval_segments)] + (["--fingerprint"] if stage == "smoke" else [])
        if stage == "trainability" and trainability_steps:
            command += ["--steps", str(trainability_steps)]
        spec = SandboxSpec(
            command=command, mounts=mounts, output_dir=stage_out, env=dict(env), workdir="/out",
            timeout_s=float(limits[stage]), memory_mb=memory_mb, cpus=cpus, gpus=gpus, gpu_ids=list(gpu_ids),
            label=f"{label or 'cascade'}-{name}", stop=train_stop if stage == "train" else cancel,
        )
        if progress:
            progress(stage, seed, "start", None)
        outcome = box.run(spec)
        if not result.isolation:
            result.isolation, result.missing = list(outcome.isolation), list(outcome.missing)
        run = _judge(stage, seed, outcome, stage_out, float(limits[stage]),
                     budget_seconds=float(budget_seconds) if stage == "train" else None)
        cancelled = outcome.stopped and cancel is not None and cancel.is_set()
        if cancelled:
            run.ok, run.reason = False, f"{CANCEL_REASON} (killed after {outcome.duration_s:.1f}s)"
        elif outcome.stopped:  # the host's learning-curve early stop (evolver/judge/early_stop.py), not a failure
            run.ok = False
            run.reason = f"stopped early by the host after {outcome.duration_s:.1f}s: {getattr(stop, 'reason', '')}"
        if run.ok and gpus and stage in ("smoke", "trainability"):
            device = str(run.metrics.get("device", ""))
            if not device.startswith("cuda"):
                run.ok, run.reason = False, (
                    f"GPUs were requested (--gpus) but the {stage} stage ran on {device or 'an unknown device'}: "
                    "CUDA is not visible in the sandbox. The image needs a CUDA build of torch (python evolve.py "
                    "sandbox build --base-image pytorch/pytorch:<cuda tag>) and the engine the NVIDIA container "
                    "toolkit; see python evolve.py sandbox doctor")
        if run.ok and stage == "train":
            assert seed is not None
            try:  # only the checkpoint goes on, copied into a fresh host directory
                checkpoints[seed] = copy_out(stage_out, "train/checkpoint.pt",
                                             _fresh_dir(staged / f"checkpoint-seed{seed}") / "checkpoint.pt",
                                             max_bytes=CHECKPOINT_MAX_BYTES)
                _make_readable(checkpoints[seed].parent)
            except (OSError, UnsafeOutput) as exc:
                run.ok, run.reason = False, f"no readable checkpoint: {exc}"
            evidence[seed] = {"seed": seed, "train_host_seconds": round(outcome.duration_s, 3),
                              "budget_seconds": float(budget_seconds), "setup_allowance_s": float(setup_allowance_s),
                              "steps": run.metrics.get("steps"), "claimed_seconds": run.metrics.get("seconds"),
                              "steps_per_second": run.metrics.get("steps_per_second")}
        if run.ok and stage == "evaluate":
            assert seed is not None
            try:
                arrays = _read_eval_arrays(stage_out)
                if labels is None:
                    held = load_split(data_dir, heldout_split)  # the harness's reader, on the host's copy
                    if held.labels is None:
                        raise ValueError(f"the host's {heldout_split} split has no labels")
                    labels, inputs = held.labels, held.inputs
                assert inputs is not None
                gate, numbers = judge_evaluation(arrays, labels, inputs)
            except (OSError, UnsafeOutput, ValueError) as exc:
                gate, numbers = Gate(False, f"evaluate outputs not scorable: {exc}"), {}
            run.metrics.update({f"host_{k}": v for k, v in numbers.items()})
            ev = evidence.setdefault(seed, {"seed": seed})
            ev.update({"eval_host_seconds": round(outcome.duration_s, 3),
                       "eval_segments": spec_task.eval_segments,
                       "parameters": run.metrics.get("parameters"), **numbers})
            if not gate.ok:
                run.ok, run.reason = False, gate.reason
            else:
                result.scores.setdefault("exact_accuracy", []).append(numbers["exact_accuracy"])
                result.scores.setdefault("token_accuracy", []).append(numbers["token_accuracy"])
        result.stages.append(run)
        if progress:
            progress(stage, seed, "ok" if run.ok else "failed", run)
        if not run.ok:
            failed = CANCELLED if cancelled else EARLY_STOP if outcome.stopped else stage
            result.ok, result.failed_stage, result.failed_seed, result.reason = False, failed, seed, run.reason
            break
    result.evidence = [evidence[s] for s in sorted(evidence)]
    result.seconds = time.perf_counter() - started
    return result
