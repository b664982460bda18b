"""The validation cascade, host side: each stage of `python -m smoketests` as its own sandbox run.

Stages in order: safety, smoke, trainability, then train + evaluate once per seed. The first failure stops
the cascade. Mounts (all read-only; /out is the stage's own fresh host directory):

    stage         /candidate  /harness  /data                                  other
    safety        yes         yes       -                                      /manifest (the manifest dir)
    smoke         yes         yes       train split only
    trainability  yes         yes       train split only
    train         yes         yes       train split only
    evaluate      yes         yes       test split WITHOUT its label files     /train (the train stage's output)

The evaluate stage writes predictions.npy; the host scores them against the test labels, which never
enter the sandbox. Budgets, seeds and timeouts are decided here, never by candidate code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sandbox import Backend, Mount, SandboxResult, SandboxSpec, get_backend

ALL_STAGES: tuple[str, ...] = ("safety", "smoke", "trainability", "train", "evaluate")
PER_SEED_STAGES = ("train", "evaluate")
DEFAULT_TIMEOUTS: dict[str, float] = {"safety": 60.0, "smoke": 180.0, "trainability": 300.0, "evaluate": 600.0}
TRAIN_TIMEOUT_FACTOR = 1.5
TRAIN_TIMEOUT_MARGIN_S = 180.0
MANIFEST_VERSION = 1
IGNORE_LABEL = -100
PREDICTIONS_FILE = "predictions.npy"

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


# ------------------------------------------------------------------------------------------ data staging


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage_split(data_dir: Path, split: str, dest_root: Path, *, with_labels: bool) -> Path:
    """A dataset root at dest_root holding only `split` (hard links, or copies across filesystems),
    without the `*__labels.npy` files when with_labels is False."""
    src = Path(data_dir) / split
    if not (src / "dataset.json").is_file():
        raise FileNotFoundError(f"{src}/dataset.json not found")
    if dest_root.exists():
        shutil.rmtree(dest_root)
    (dest_root / split).mkdir(parents=True)
    for item in src.iterdir():
        if item.is_file() and (with_labels or not item.name.endswith("__labels.npy")):
            _link_or_copy(item, dest_root / split / item.name)
    identifiers = Path(data_dir) / "identifiers.json"
    if identifiers.is_file():
        _link_or_copy(identifiers, dest_root / "identifiers.json")
    return dest_root


def _make_readable(path: Path) -> None:
    """Let the sandbox's unprivileged user traverse/read a host directory the engine created."""
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                os.chmod(full, os.stat(full).st_mode | 0o444)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]


def load_test_labels(data_dir: Path) -> np.ndarray:
    """Held-out labels in the harness's example order (sets concatenated), ignore label mapped to -100."""
    split_dir = Path(data_dir) / "test"
    meta = json.loads((split_dir / "dataset.json").read_text())
    ignore = meta.get("ignore_label_id")
    parts = []
    for name in meta.get("sets") or ["all"]:
        labels = np.load(split_dir / f"{name}__labels.npy", allow_pickle=False).astype(np.int64)
        parts.append(np.where(labels == ignore, IGNORE_LABEL, labels) if ignore is not None else labels)
    return np.concatenate(parts)


def score(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Exact (whole puzzle) and token accuracy, over positions whose label is not -100."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions have shape {predictions.shape}, labels {labels.shape}")
    valid = labels != IGNORE_LABEL
    correct = (predictions == labels) & valid
    rows = valid.any(axis=1)
    exact = (correct.sum(axis=1) == valid.sum(axis=1)) & rows
    return {
        "exact_accuracy": float(exact.sum() / max(int(rows.sum()), 1)),
        "token_accuracy": float(correct.sum() / max(int(valid.sum()), 1)),
        "count": int(rows.sum()),
    }


# ------------------------------------------------------------------------------------------ one stage


def _read_stage_json(out_dir: Path, stage: str) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / f"{stage}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        return None
    return data


def _judge(stage: str, seed: int | None, result: SandboxResult, out_dir: Path, timeout_s: float) -> StageRun:
    data = _read_stage_json(out_dir, stage)
    run = StageRun(
        stage=stage,
        seed=seed,
        ok=False,
        reason="",
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        oom_killed=result.oom_killed,
        duration_s=result.duration_s,
        overhead_s=result.overhead_s,
        timeout_s=timeout_s,
        log_tail=result.log_tail,
        backend=result.backend,
        error=result.error,
        out_dir=str(out_dir),
    )
    if data is not None:
        run.metrics = dict(data.get("metrics") or {})
        run.stage_seconds = float(data.get("seconds") or 0.0)
    if result.error:
        run.reason = f"sandbox error: {result.error}"
    elif result.timed_out:
        run.reason = f"timed out after {timeout_s:.0f}s (killed)"
    elif result.oom_killed:
        run.reason = "killed: out of memory"
    elif data is None:
        run.reason = f"no valid {stage}.json written (exit code {result.exit_code})"
    elif not data["ok"]:
        run.reason = str(data.get("reason") or "stage failed without a reason")
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


# ------------------------------------------------------------------------------------------ the cascade


def run_cascade(
    candidate_dir: Path,
    harness_dir: Path,
    data_dir: Path,
    out_dir: Path,
    *,
    task: str,
    seeds: Sequence[int],
    budget_seconds: float,
    backend: Backend | str = "auto",
    stages: Sequence[str] = ALL_STAGES,
    timeouts: dict[str, float] | None = None,
    manifest: Path | None = None,
    progress: Progress | None = None,
    threads: int = 2,
    memory_mb: int = 4096,
    cpus: float = 2.0,
    gpus: bool = False,
    trainability_steps: int | None = None,
    label: str = "",
    warn: Callable[[str], None] | None = None,
) -> CascadeResult:
    """Run the requested stages in order (train + evaluate per seed), stopping at the first failure."""
    unknown = [s for s in stages if s not in ALL_STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {ALL_STAGES}")
    if not seeds and any(s in PER_SEED_STAGES for s in stages):
        raise ValueError("train/evaluate need at least one seed")
    started = time.perf_counter()
    candidate_dir, harness_dir = Path(candidate_dir).resolve(), Path(harness_dir).resolve()
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    box = get_backend(backend, warn=warn) if isinstance(backend, str) else backend
    limits = dict(DEFAULT_TIMEOUTS)
    limits["train"] = budget_seconds * TRAIN_TIMEOUT_FACTOR + TRAIN_TIMEOUT_MARGIN_S
    limits.update(timeouts or {})

    staged = out_dir / "staged"
    train_data = stage_split(data_dir, "train", staged / "train-split", with_labels=True)
    test_data = stage_split(data_dir, "test", staged / "test-sealed", with_labels=False) if "evaluate" in stages else None
    manifest_dir = None
    if manifest is not None:
        manifest_dir = _fresh_dir(staged / "manifest")
        shutil.copy2(manifest, manifest_dir / "manifest.json")
    _make_readable(staged)

    result = CascadeResult(ok=True, task=task, seeds=list(seeds), stages=[], backend=getattr(box, "name", ""))
    base_mounts = [Mount(candidate_dir, "/candidate"), Mount(harness_dir, "/harness")]
    env = {
        "PYTHONPATH": "/harness:/candidate",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HRM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "HOME": "/tmp",
    }

    plan: list[tuple[str, int | None]] = []
    for stage in ALL_STAGES:
        if stage not in stages:
            continue
        if stage in PER_SEED_STAGES:
            continue
        plan.append((stage, None))
    for seed in seeds:
        plan += [(stage, int(seed)) for stage in PER_SEED_STAGES if stage in stages]

    train_outputs: dict[int, Path] = {}
    labels: np.ndarray | None = None
    for stage, seed in plan:
        name = stage if seed is None else f"{stage}-seed{seed}"
        stage_out = _fresh_dir(out_dir / name)
        os.chmod(stage_out, 0o777)
        command = [
            "python", "-m", "smoketests", stage, "--repo", "/candidate", "--data", "/data", "--out", "/out",
            "--task", task, "--seed", str(seed if seed is not None else (seeds[0] if seeds else 0)),
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
            mounts.append(Mount(test_data, "/data"))
            if seed not in train_outputs:
                raise ValueError("evaluate needs the train stage in the same cascade")
            mounts.append(Mount(train_outputs[seed], "/train"))
            command += ["--checkpoint", "/train/checkpoint.pt"]
        else:
            mounts.append(Mount(train_data, "/data"))
        if stage == "trainability" and trainability_steps:
            command += ["--steps", str(trainability_steps)]
        spec = SandboxSpec(
            command=command, mounts=mounts, output_dir=stage_out, env=dict(env), workdir="/out",
            timeout_s=float(limits[stage]), memory_mb=memory_mb, cpus=cpus, gpus=gpus,
            label=f"{label or 'cascade'}-{name}",
        )
        if progress:
            progress(stage, seed, "start", None)
        outcome = box.run(spec)
        if not result.isolation:
            result.isolation, result.missing = list(outcome.isolation), list(outcome.missing)
        run = _judge(stage, seed, outcome, stage_out, float(limits[stage]))
        if run.ok and stage == "train":
            train_outputs[int(seed or 0)] = stage_out / "train"
            _make_readable(stage_out)
        if run.ok and stage == "evaluate":
            try:
                predictions = np.load(stage_out / PREDICTIONS_FILE, allow_pickle=False)
                labels = load_test_labels(data_dir) if labels is None else labels
                scored = score(predictions.astype(np.int64), labels)
            except (OSError, ValueError) as exc:
                run.ok, run.reason = False, f"predictions not scorable: {exc}"
            else:
                run.metrics.update(scored)
                result.scores.setdefault("exact_accuracy", []).append(scored["exact_accuracy"])
                result.scores.setdefault("token_accuracy", []).append(scored["token_accuracy"])
        result.stages.append(run)
        if progress:
            progress(stage, seed, "ok" if run.ok else "failed", run)
        if not run.ok:
            result.ok, result.failed_stage, result.failed_seed, result.reason = False, stage, seed, run.reason
            break
    result.seconds = time.perf_counter() - started
    return result
