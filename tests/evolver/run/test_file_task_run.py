"""A file task in the run: its settings, the CLI refusing a bad file before anything starts, the run's data
built and described once, a resume that keeps the run's file and refuses a changed one, and the fresh-init
gate measured against the best constant answer (a task of a few output classes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evolver.execute.gates import FRESH_EXACT_MAX, constant_baseline, fresh_init_check
from evolver.run.context import RunContext
from evolver.run.display import LoopDisplay
from evolver.run.state import StopRun
from evolver.settings import Settings, load_settings
from evolver.ui.cli import main
from puzzles.agent_log import generate


def _log(path: Path, n: int = 200, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in generate(n, 6, seed)))
    return path


def test_a_task_file_makes_a_file_task(tmp_path: Path) -> None:
    assert load_settings(overrides={"task_file": "d.jsonl"}, environ={}).task == "file"
    assert load_settings(overrides={"task_file": "d.jsonl", "gpus": True}, environ={}).task == "file-gpu"
    env = load_settings(environ={"HRM_TASK_FILE": "d.jsonl", "HRM_SELECT_FILE": "s.jsonl",
                                 "HRM_FINAL_FILE": "f.jsonl"})
    assert (env.task, env.task_file, env.select_file, env.final_file) == ("file", "d.jsonl", "s.jsonl", "f.jsonl")
    assert load_settings(environ={}).task == "sudoku4" and load_settings(environ={}).task_file is None


def test_the_cli_refuses_a_malformed_file_naming_the_line(user_repo: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = _log(tmp_path / "bad.jsonl", 30)
    lines = bad.read_text().splitlines()
    lines[16] = lines[16][:-1]  # line 17 loses its closing brace
    bad.write_text("\n".join(lines) + "\n")
    assert main(["--repo", str(user_repo), "--task-file", str(bad), "--cycles", "1"]) == 2
    out = capsys.readouterr().out
    assert "bad.jsonl:17: not valid JSON" in " ".join(out.split())
    assert not (user_repo / ".hrm-evolve" / "runs").exists()  # nothing started


def test_the_run_builds_its_splits_once_and_a_resume_refuses_a_changed_file(user_repo: Path,
                                                                              tmp_path: Path) -> None:
    data_file = _log(tmp_path / "decisions.jsonl", 200)
    settings = Settings(provider="offline", task="file", task_file=str(data_file), backend="local",
                        literature="off")
    display = LoopDisplay(live=False)
    logged: list[str] = []
    display.log = logged.append  # type: ignore[method-assign]
    ctx = RunContext(user_repo, settings, display=display)
    data = ctx.data_dir()
    assert ctx.data_dir() == data and len([m for m in logged if "task file:" in m]) == 1  # read once, cached
    assert "160 train / 20 select / 20 final examples" in logged[0]
    spec = json.loads((data / "task.json").read_text())
    assert spec["name"] == "file" and spec["kwargs"]["seq_len"] == 43 and spec["splits"]["select"] == 20
    report = json.loads((data / "file_task.json").read_text())
    assert report["vocab_size"] == len(report["vocab"]) and "key_dx:held" in report["vocab"]
    stored = json.loads((ctx.run_dir / "run.json").read_text())["settings"]
    assert stored["task_file"] == str(data_file) and stored["task"] == "file"
    run_id = ctx.run_id
    ctx.record.close()

    # a resume without --task-file keeps the run's file and task
    plain = Settings(provider="offline", backend="local", literature="off")
    resumed = RunContext(user_repo, plain, run_id=run_id, display=LoopDisplay(live=False))
    assert (plain.task, plain.task_file) == ("file", str(data_file))
    assert resumed.data_dir() == data
    resumed.record.close()

    _log(data_file, 200, seed=1)  # the file changes under the run
    again = RunContext(user_repo, Settings(provider="offline", backend="local", literature="off"), run_id=run_id,
                       display=LoopDisplay(live=False))
    with pytest.raises(StopRun, match=r"decisions.jsonl changed since this run built its splits"):
        again.data_dir()
    again.record.close()


def test_fresh_weights_may_reach_the_majority_answer_but_not_solve() -> None:
    labels = np.full((100, 4), -100, dtype=np.int64)
    labels[:, 0] = np.array([5] * 40 + [6] * 30 + [7] * 20 + [8] * 10)  # one action per row, 40% majority
    inputs = np.ones_like(labels)
    assert constant_baseline(labels) == {"exact_accuracy": 0.4, "token_accuracy": 0.4}
    constant = np.full_like(labels, 5)
    gate, numbers = fresh_init_check(constant, labels, inputs)
    assert gate.ok and numbers["fresh_exact_max"] == pytest.approx(0.4 + 0.25 * 0.6)
    solved = labels.copy()
    solved[:, 1:] = 0
    solved[:90, 0] = labels[:90, 0]
    solved[90:, 0] = 5  # 0.9 exact without training
    gate, _ = fresh_init_check(solved, labels, inputs)
    assert not gate.ok and "solves without learning" in gate.reason
    # a puzzle whose every solution differs keeps the old bound
    grids = np.random.default_rng(0).integers(1, 10, size=(100, 9))
    _, numbers = fresh_init_check(np.zeros_like(grids), grids, np.zeros_like(grids))
    assert numbers["fresh_exact_max"] == FRESH_EXACT_MAX


def test_the_run_says_why_a_baseline_leaves_little_to_measure() -> None:
    from evolver.run.baseline import weak_baseline_warning
    from evolver.run.state import Baseline

    def base(scores: list[float], constant: float) -> Baseline:
        evidence = [{"seed": i, "constant_baseline_token_accuracy": constant} for i in range(len(scores))]
        return Baseline("c", "t", list(range(len(scores))), scores, 1.0, evidence=evidence)

    assert weak_baseline_warning(base([0.55, 0.6, 0.58], 0.39), "token_accuracy") is None
    majority = weak_baseline_warning(base([0.39, 0.40, 0.38], 0.39), "token_accuracy")
    assert majority is not None and "no better than always giving the most frequent answer (0.390)" in majority
    ceiling = weak_baseline_warning(base([0.97, 0.99, 0.98], 0.39), "token_accuracy")
    assert ceiling is not None and "already scores 0.980" in ceiling
    assert weak_baseline_warning(Baseline("c", "t", [0], [0.6], 1.0), "token_accuracy") is None  # no evidence
