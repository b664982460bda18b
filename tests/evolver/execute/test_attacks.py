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
import shutil
from pathlib import Path

import pytest

from evolver.execute.cascade import CascadeResult, run_cascade, write_manifest
from evolver.judge.clock import TRAINED_PAST_BUDGET, parent_overhead, setup_allowance_for
from evolver.judge.pairs import CandidateJudge, Judgement, SideRun
from evolver.judge.promotion import ConfirmationRule, RunErrorControl, SelectionRule
from sandbox import docker_unavailable_reason, local_unavailable_reason
from tests.availability import skip_or_fail
from tests.evolver.attack_candidates import CLOCK_ATTACKS, IMPORT_TIME, REPO, write_attack

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


@pytest.mark.parametrize("attack", ["armed-by-buffer", "armed-by-parameter"])
def test_a_solver_armed_by_training_is_rejected(attack: str, backend: str, harness: Path, run_data: Path,
                                                tmp_path: Path) -> None:
    """Issue 23 (c): a solver that training arms (a step-counting buffer; a parameter whose mean counts the
    steps) scores at chance with fresh weights, so only the learned-state controls can see it."""
    tree = write_attack(tmp_path / "c", attack)
    result = _cascade(tree, harness, run_data, tmp_path / "out", backend, QUICK)
    assert result.failed_stage == "evaluate", (result.failed_stage, result.reason)
    assert "solves without learning" in result.reason and "not come from what it learned" in result.reason
    assert not result.scores
    metrics = result.stages[-1].metrics
    assert metrics["host_exact_accuracy"] > 0.9  # armed by training, it solved the held-out puzzles
    assert metrics["host_fresh_exact_accuracy"] <= 0.02  # the fresh-weights check alone passed it
    control = "buffers" if attack == "armed-by-buffer" else "shuffled"
    assert metrics[f"host_{control}_exact_accuracy"] > 0.9


# ------------------------------------------------------------------ the clock of training

CLOCK_BUDGET = 20.0
CEILING_S = 90.0
"""The configured allowance of these tests (--setup-allowance): on this 2-core machine at load 13 an honest
train stage in Docker took over 42 s for a 12 s budget. The candidates' allowance shrinks from it."""
_BASELINES: dict[str, SideRun] = {}


def _train_side(tree: Path, harness: Path, run_data: Path, out: Path, backend: str, allowance: float) -> SideRun:
    """One side of a pair, the train stage only: what the judge's clock check reads is its evidence."""
    result = run_cascade(tree, harness, run_data, out, task="sudoku4", seeds=[0], budget_seconds=CLOCK_BUDGET,
                         backend=backend, stages=("train",), threads=1, setup_allowance_s=allowance)
    evidence = result.evidence[0] if result.evidence else {}
    if not result.ok:
        return SideRun(False, reason=result.reason, failed_stage=result.failed_stage, evidence=evidence)
    return SideRun(True, None, evidence=evidence)


def _honest_tree(dest: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copytree(REPO / "hrm", dest / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _allowance(backend: str, harness: Path, run_data: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """The candidate's setup allowance as the loop sets it: from the parent's baseline, measured once (per
    backend and session), under whatever load the machine had then."""
    if backend not in _BASELINES:
        root = tmp_path_factory.mktemp(f"baseline-{backend}")
        side = _train_side(_honest_tree(root / "tree"), harness, run_data, root / "out", backend, CEILING_S)
        assert side.ok, side.reason
        _BASELINES[backend] = side
    return setup_allowance_for(parent_overhead([_BASELINES[backend].evidence]), CEILING_S)


def _judge_pair(candidate: Path, harness: Path, run_data: Path, out: Path, backend: str,
                allowance: float) -> tuple[Judgement | None, SideRun, SideRun]:
    """The real judge's first selection pair: the honest parent beside the candidate (two sandboxes at once,
    the parent with the configured allowance CEILING_S, the candidate with ``allowance``), train stages only."""
    parent_tree = _honest_tree(out / "parent-tree")

    def measure(side: str, seed: int, phase: str) -> SideRun:
        if side == "parent":
            return _train_side(parent_tree, harness, run_data, out / "parent", backend, CEILING_S)
        return _train_side(candidate, harness, run_data, out / "candidate", backend, allowance)

    judge = CandidateJudge(measure, selection=SelectionRule(), confirmation=ConfirmationRule(),
                           control=RunErrorControl(), first_seeds=[0], side_by_side=True)
    pair, p, c = judge._pair(0, "selection")
    return judge._failure(pair, p, c, [pair], ""), p, c


@pytest.mark.parametrize("attack", CLOCK_ATTACKS)
def test_training_past_the_budget_does_not_pay(attack: str, backend: str, harness: Path, run_data: Path,
                                               tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Issue 23 (a), (b) and their kin: whatever the trainer says about its own time, a candidate whose train
    stage ran past its parent's beside it fails at train, or is killed by the host at the allowance its
    parent's measured start-up gives it. stretch-under-kill gets the whole CEILING_S (an unmeasured parent), so
    that only the pair check can stop it."""
    ceiling = attack == "stretch-under-kill"
    allowance = CEILING_S if ceiling else _allowance(backend, harness, run_data, tmp_path_factory)
    failed, parent, cand = _judge_pair(write_attack(tmp_path / "c", attack), harness, run_data, tmp_path / "out",
                                       backend, allowance)
    assert parent.ok, parent.reason
    assert failed is not None and failed.verdict == "failed" and failed.failed_stage == "train", (
        failed and failed.reason, cand.evidence, parent.evidence)
    if attack == "ignore-budget":
        assert "killed by the host clock" in failed.reason
    elif ceiling:
        assert TRAINED_PAST_BUDGET in failed.reason and "killed" not in failed.reason, failed.reason
    else:
        assert TRAINED_PAST_BUDGET in failed.reason or "killed by the host clock" in failed.reason, failed.reason
    if TRAINED_PAST_BUDGET in failed.reason and attack in ("off-clock-cooldown", "sleep-then-allowance",
                                                           "background-thread"):
        assert float(cand.evidence["claimed_seconds"]) <= CLOCK_BUDGET * 1.2, cand.evidence  # it lied


def test_an_honest_trainer_keeps_the_clock(backend: str, harness: Path, run_data: Path, tmp_path: Path,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same checks pass the unchanged trainer beside its parent, under the shrunk allowance."""
    allowance = _allowance(backend, harness, run_data, tmp_path_factory)
    failed, parent, cand = _judge_pair(_honest_tree(tmp_path / "c"), harness, run_data, tmp_path / "out", backend,
                                       allowance)
    assert failed is None and cand.ok and parent.ok, (failed and failed.reason, cand.evidence, parent.evidence)
