"""The cascade through the real sandbox (local backend; docker when an engine and the image exist), on the
real hrm and on broken copies of it, with a real git repo for the safety manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from evolver.execute.cascade import run_cascade, write_manifest
from sandbox import docker_unavailable_reason

pytestmark = pytest.mark.usefixtures("require_local_sandbox")

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def data(run_data: Path) -> Path:
    return run_data


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _candidate(dest: Path, edits: dict[str, tuple[str, str]] | None = None) -> tuple[Path, str]:
    """A git repo holding a copy of the real hrm/ plus a protected file, committed as the parent; then
    `edits` applied in the work tree (the candidate). Returns (repo, parent commit)."""
    dest.mkdir(parents=True)
    shutil.copytree(REPO / "hrm", dest / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "protected").mkdir()
    (dest / "protected" / "budget.txt").write_text("budget=60\n")
    _git(dest, "init", "-q")
    _git(dest, "add", ".")
    _git(dest, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "parent")
    for rel, (old, new) in (edits or {}).items():
        text = (dest / rel).read_text()
        assert old in text, rel
        (dest / rel).write_text(text.replace(old, new, 1))
    os.chmod(dest, 0o755)
    return dest, _git(dest, "rev-parse", "HEAD")


def _manifest(repo: Path, parent: str, changed: list[str]) -> Path:
    # hrm/ is wholly evolvable: nothing inside the candidate's tree is protected (edits outside hrm/ are
    # refused by the path policy before any cascade runs).
    return write_manifest(repo, parent, repo, changed, [], out_path=repo.parent / "m" / "manifest.json")


def test_write_manifest_hashes_parent_content(tmp_path: Path) -> None:
    repo, parent = _candidate(tmp_path / "c")
    (repo / "protected" / "budget.txt").write_text("budget=99999\n")  # edited after the parent commit
    (repo / "protected" / "new.txt").write_text("x")
    data = json.loads(write_manifest(repo, parent, repo, ["hrm/model.py"], ["protected/"],
                                     out_path=repo.parent / "m" / "manifest.json").read_text())
    assert data["changed_files"] == ["hrm/model.py"] and data["parent_commit"] == parent
    assert data["protected"]["protected/budget.txt"] == hashlib.sha256(b"budget=60\n").hexdigest()
    assert data["protected"]["protected/new.txt"] is None


def test_full_cascade_on_the_real_hrm(data: Path, harness: Path, tmp_path: Path) -> None:
    repo, parent = _candidate(tmp_path / "c", {"hrm/model.py": ('"""', '"""Candidate: a harmless docstring edit.\n', )})
    events: list[tuple[str, int | None, str]] = []
    result = run_cascade(
        repo, harness, data, tmp_path / "out", task="sudoku4", seeds=[0], budget_seconds=4, backend="local",
        manifest=_manifest(repo, parent, ["hrm/model.py"]), threads=1,
        progress=lambda stage, seed, status, run: events.append((stage, seed, status)),
    )
    assert result.ok, (result.failed_stage, result.reason, result.stages[-1].log_tail[-2000:])
    assert [(s.stage, s.seed) for s in result.stages] == [
        ("safety", None), ("smoke", None), ("trainability", None), ("train", 0), ("evaluate", 0)]
    assert events[0] == ("safety", None, "start") and events[-1] == ("evaluate", 0, "ok")
    assert len(result.scores["exact_accuracy"]) == 1 and 0.0 <= result.scores["token_accuracy"][0] <= 1.0
    evaluate = result.stages[-1]
    assert evaluate.metrics["labels_available"] is False  # labels never entered the sandbox
    assert evaluate.metrics["host_count"] == 100  # scored on the host, on the selection split
    assert evaluate.metrics["eval_segments"] == 4 and evaluate.metrics["parameters"] > 0
    assert evaluate.metrics["host_fresh_exact_accuracy"] <= 0.02 and evaluate.metrics["host_mode_agreement"] >= 0.999
    ev = result.evidence[0]
    assert ev["seed"] == 0 and ev["steps"] > 0 and ev["train_host_seconds"] < 4 + 30
    assert ev["eval_segments"] == 4 and "exact_accuracy" in ev
    assert result.stages[2].metrics["loss_ratio"] <= 0.75
    assert result.stages[3].metrics["budget_seconds"] == 4.0
    json.dumps(result.to_dict())  # serialisable
    assert "no network" in " ".join(result.isolation) or result.missing


def test_socket_import_fails_safety(data: Path, harness: Path, tmp_path: Path) -> None:
    repo, parent = _candidate(tmp_path / "c", {"hrm/model.py": ("import math\n", "import math\nimport socket\n")})
    result = run_cascade(repo, harness, data, tmp_path / "out", task="sudoku4", seeds=[0], budget_seconds=4,
                         backend="local", manifest=_manifest(repo, parent, ["hrm/model.py"]))
    assert not result.ok and result.failed_stage == "safety" and len(result.stages) == 1
    assert "hrm/model.py:" in result.reason and "socket" in result.reason


def test_crashing_candidate_fails_at_smoke(data: Path, harness: Path, tmp_path: Path) -> None:
    repo, _ = _candidate(tmp_path / "c", {"hrm/model.py": (
        "        halted_in = carry.halted\n", "        raise RuntimeError('candidate forward exploded')\n")})
    result = run_cascade(repo, harness, data, tmp_path / "out", task="sudoku4", seeds=[0], budget_seconds=4,
                         backend="local", stages=["smoke", "trainability"], threads=1)
    assert result.failed_stage == "smoke" and "candidate forward exploded" in result.reason
    assert result.stages[0].exit_code == 1 and not result.stages[0].timed_out


def test_hanging_candidate_is_killed_at_its_timeout(data: Path, harness: Path, tmp_path: Path) -> None:
    repo, _ = _candidate(tmp_path / "c", {"hrm/model.py": (
        "        halted_in = carry.halted\n", "        while True:\n            pass\n")})
    result = run_cascade(repo, harness, data, tmp_path / "out", task="sudoku4", seeds=[0], budget_seconds=4,
                         backend="local", stages=["smoke"], timeouts={"smoke": 10}, threads=1)
    run = result.stages[0]
    assert result.failed_stage == "smoke" and run.timed_out and "timed out" in result.reason
    assert run.duration_s < 30


def test_detached_model_fails_trainability(data: Path, harness: Path, tmp_path: Path) -> None:
    repo, _ = _candidate(tmp_path / "c", {"hrm/model.py": (
        "        z_L = self.L_level(z_L, z_H + x, cos_sin)\n        z_H = self.H_level(z_H, z_L, cos_sin)\n",
        "        z_L = self.L_level(z_L, z_H + x, cos_sin).detach()\n        z_H = self.H_level(z_H, z_L, cos_sin)\n",
    )})
    result = run_cascade(repo, harness, data, tmp_path / "out", task="sudoku4", seeds=[0], budget_seconds=4,
                         backend="local", stages=["smoke", "trainability"], threads=1)
    assert result.failed_stage == "trainability", result.reason
    assert "L_level" in result.reason and "embed_tokens" in result.reason


@pytest.mark.docker
def test_smoke_through_docker(data: Path, harness: Path, tmp_path: Path) -> None:
    reason = docker_unavailable_reason()
    if reason:
        if os.environ.get("HRM_EVOLVE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"docker required: {reason}")
        pytest.skip(reason)
    repo, _ = _candidate(tmp_path / "c")
    result = run_cascade(repo, harness, data, tmp_path / "out", task="sudoku4", seeds=[0], budget_seconds=4,
                         backend="docker", stages=["smoke"], threads=1)
    assert result.ok, result.reason
    assert result.stages[0].backend == "docker"
