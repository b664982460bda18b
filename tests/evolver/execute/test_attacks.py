"""The attack battery: candidates that try to win the verdict without learning, through the real cascade,
on the real Docker engine and on the local backend. Each must end failed with a reason naming what it did
(or, for a contained read, what it could not find), and no secret may reach what the host records.

The static gate would stop several of these at the safety stage; the battery skips that stage on purpose
(except in test_static_gate_stops_the_direct_routes) so that the host's own defences are what is tested.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from evolver.execute.cascade import CascadeResult, run_cascade, write_manifest
from sandbox import docker_unavailable_reason, local_unavailable_reason
from tests.availability import skip_or_fail
from tests.evolver.attack_candidates import IMPORT_TIME, write_attack

CANARY = "sk-attack-canary-0123456789"
NO_SAFETY = ("smoke", "trainability", "train", "evaluate")
QUICK = ("smoke", "train", "evaluate")


@pytest.fixture(params=["docker", "local"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        skip_or_fail(docker_unavailable_reason(), "HRM_EVOLVE_REQUIRE_DOCKER")
    else:
        skip_or_fail(local_unavailable_reason(), "HRM_EVOLVE_REQUIRE_SANDBOX")
    return str(request.param)


@pytest.fixture
def host_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What a real engine root holds next to a run: a .env with an API key and the environment's key."""
    root = tmp_path / "engine-root"
    (root / ".hrm-evolve" / "runs" / "r1").mkdir(parents=True)
    (root / ".env").write_text(f"OPENAI_API_KEY={CANARY}\n")
    (root / ".hrm-evolve" / "runs" / "r1" / "secret").write_text("123456789\n")
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    return root


def _cascade(tree: Path, harness: Path, data: Path, out: Path, backend: str, stages: tuple[str, ...],
             **kwargs: object) -> CascadeResult:
    return run_cascade(tree, harness, data, out, task="sudoku4", seeds=[0], budget_seconds=3, backend=backend,
                       stages=stages, threads=1, trainability_steps=30, timeouts={"trainability": 240},
                       **kwargs)  # type: ignore[arg-type]


def _no_secret_anywhere(result: CascadeResult, out: Path) -> None:
    assert CANARY not in json.dumps(result.to_dict())
    for path in out.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert CANARY.encode() not in path.read_bytes(), path


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_reading_held_out_labels_or_host_files_finds_nothing(backend: str, harness: Path, run_data: Path,
                                                             host_secrets: Path, tmp_path: Path) -> None:
    tree = write_attack(host_secrets / "worktree", "read-host-files")
    out = tmp_path / "out"
    result = _cascade(tree, harness, run_data, out, backend, QUICK)
    assert not result.ok and result.failed_stage == "evaluate", (result.failed_stage, result.reason)
    assert "ATTACK read-host-files" in result.reason and "no held-out labels" in result.reason
    assert not any("ATTACK-WON" in s.log_tail for s in result.stages)
    _no_secret_anywhere(result, out)


def test_a_faked_stage_result_is_not_a_pass(backend: str, harness: Path, run_data: Path, tmp_path: Path) -> None:
    tree = write_attack(tmp_path / "c", "fake-stage-result")
    result = _cascade(tree, harness, run_data, tmp_path / "out", backend, NO_SAFETY)
    assert result.failed_stage == "smoke", (result.failed_stage, result.reason)
    assert "does not take a stage's word" in result.reason


def test_a_monkeypatched_harness_is_not_a_pass(backend: str, harness: Path, run_data: Path, tmp_path: Path) -> None:
    tree = write_attack(tmp_path / "c", "monkeypatch-harness")
    result = _cascade(tree, harness, run_data, tmp_path / "out", backend, NO_SAFETY)
    assert result.failed_stage == "smoke", (result.failed_stage, result.reason)
    assert "no finite loss" in result.reason


def test_links_fifos_and_devices_in_out_fail_the_stage(backend: str, harness: Path, run_data: Path,
                                                       tmp_path: Path) -> None:
    tree = write_attack(tmp_path / "c", "links-in-out")
    result = _cascade(tree, harness, run_data, tmp_path / "out", backend, NO_SAFETY)
    assert result.failed_stage == "smoke", (result.failed_stage, result.reason)
    reason = result.reason
    assert "the host will not read" in reason
    assert "/out/predictions.npy is a symlink -> /data/train/all__labels.npy" in reason
    assert "hard link" in reason and "/out/smoke.json.fifo is a FIFO" in reason
    assert "ATTACK links made" in result.stages[0].log_tail
    assert "device: " in result.stages[0].log_tail  # mknod was refused inside the sandbox


def test_code_planted_in_out_is_never_imported(backend: str, harness: Path, run_data: Path, tmp_path: Path) -> None:
    tree = write_attack(tmp_path / "c", "plant-module")
    result = _cascade(tree, harness, run_data, tmp_path / "out", backend, ("smoke",))
    assert result.failed_stage == "smoke" and "/out is not on sys.path" in result.reason, result.reason
    assert "ATTACK-WON" not in result.stages[0].log_tail


def test_slowed_clocks_cannot_train_past_the_budget(backend: str, harness: Path, run_data: Path,
                                                    tmp_path: Path) -> None:
    tree = write_attack(tmp_path / "c", "slow-clocks")
    result = _cascade(tree, harness, run_data, tmp_path / "out", backend, ("train",), setup_allowance_s=15)
    assert result.failed_stage == "train", (result.failed_stage, result.reason)
    assert "killed by the host clock" in result.reason and "ran past its budget" in result.reason
    assert result.stages[0].duration_s < 3 + 15 + 10


@pytest.mark.parametrize("attack", ["solver-at-eval", "solver-always"])
def test_a_hand_written_solver_is_rejected(attack: str, backend: str, harness: Path, run_data: Path,
                                           tmp_path: Path) -> None:
    tree = write_attack(tmp_path / "c", attack)
    result = _cascade(tree, harness, run_data, tmp_path / "out", backend, QUICK)
    assert result.failed_stage == "evaluate", (result.failed_stage, result.reason)
    assert "solves without learning" in result.reason
    assert not result.scores  # no score is recorded for it
    metrics = result.stages[-1].metrics
    assert metrics["host_exact_accuracy"] > 0.9  # it did solve the puzzles: the check is what stopped it
    assert metrics["host_fresh_exact_accuracy"] > 0.9


def test_the_held_out_split_cannot_be_regenerated(backend: str, harness: Path, run_data: Path,
                                                  tmp_path: Path) -> None:
    tree = write_attack(tmp_path / "c", "regenerate-split")
    result = _cascade(tree, harness, run_data, tmp_path / "out", backend, QUICK)
    assert result.failed_stage == "evaluate", (result.failed_stage, result.reason)
    assert "do not rebuild the held-out inputs" in result.reason


def test_no_state_carries_from_one_candidate_to_the_next(backend: str, harness: Path, run_data: Path,
                                                         tmp_path: Path) -> None:
    before = {"harness": _digest(harness), "data": _digest(run_data)}
    first = _cascade(write_attack(tmp_path / "a", "leave-state"), harness, run_data, tmp_path / "out-a",
                     backend, ("smoke",))
    assert "found no marker" in first.reason, first.reason
    second = _cascade(write_attack(tmp_path / "b", "leave-state"), harness, run_data, tmp_path / "out-b",
                      backend, ("smoke",))
    assert second.failed_stage == "smoke" and "found no marker" in second.reason, second.reason
    assert "/out" in second.reason  # it could write its own output, and nothing else it names survived
    assert {"harness": _digest(harness), "data": _digest(run_data)} == before


def test_static_gate_stops_the_direct_routes(harness: Path, run_data: Path, tmp_path: Path) -> None:
    """With the safety stage in place, the harness-tampering attacks never reach a stage that runs them."""
    skip_or_fail(docker_unavailable_reason(), "HRM_EVOLVE_REQUIRE_DOCKER")
    for attack in ("fake-stage-result", "monkeypatch-harness", "slow-clocks", "links-in-out"):
        tree = write_attack(tmp_path / attack, attack)
        os.system(f"git -C {tree} init -q && git -C {tree} add -A && "
                  f"git -C {tree} -c user.name=t -c user.email=t@t commit -qm base")
        changed = "hrm/__init__.py" if attack in IMPORT_TIME else "hrm/model.py"
        manifest = write_manifest(tree, "HEAD", tree, [changed], [], out_path=tmp_path / attack / "m.json")
        result = run_cascade(tree, harness, run_data, tmp_path / f"out-{attack}", task="sudoku4", seeds=[0],
                             budget_seconds=3, backend="docker", stages=("safety",), manifest=manifest)
        assert result.failed_stage == "safety", (attack, result.reason)
        assert f"{changed}:" in result.reason, (attack, result.reason)
