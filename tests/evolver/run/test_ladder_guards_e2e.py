"""The task ladder and guard tasks through the main command (`python evolve.py`), on throwaway copies of this
project, with the local sandbox running the real cascade at tiny budgets and a scripted LLM server.

Planted conditions, committed in the copy as the base the run starts from (as test_loop_e2e's handicap), keyed
to the task by the model's sequence length (16 is sudoku4, 81 maze), so that what the tests decide does not
hang on how much a model learns in a few seconds on a busy machine:
- sudoku4 is *masked*: its logits are pushed down by 1e4 on every token but PAD, so it scores exactly 0;
  lifting the mask lets it learn (about 0.25 token accuracy after a few seconds: one digit everywhere);
- maze is *pinned* to walls: every token but '#' is pushed down by 1e4, so it scores the select split's
  share of walls (about 0.62) on every seed, whatever it learns; a candidate that masks it instead scores 0.
``--solved-at 0.15`` says a task counts as solved at token accuracy 0.15: the pinned maze is at once, and
sudoku4 is once its mask is lifted. (Candidates are never gated on a pinned task: the trainability gate needs
the loss to fall, which a 1e4 offset does not let it.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evolver.fake_llm_server import Step, scripted_server, valid_proposal
from tests.evolver.run.test_loop_e2e import _git, _snapshot

pytestmark = pytest.mark.usefixtures("require_local_sandbox")

PROJECT = Path(__file__).resolve().parents[3]
EVOLVE = PROJECT / "evolve.py"
LOGITS = "logits = self.lm_head(z_H)[:, self.puzzle_emb_len :]"
_ALL_BUT = "\n            logits = logits - 1e4 * (torch.arange(logits.shape[-1], device=logits.device) {}).to(logits.dtype)"
MASK_SUDOKU4 = "\n        if cfg.seq_len == 16:  # planted: sudoku4 predicts PAD only" + _ALL_BUT.format("> 0")
PIN_MAZE = "\n        if cfg.seq_len == 81:  # planted: maze predicts walls only" + _ALL_BUT.format("!= 1")
MASK_MAZE = "\n        if cfg.seq_len == 81:  # maze predicts PAD only" + _ALL_BUT.format("> 0")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _snapshot(tmp_path_factory.mktemp("snapshot") / "repo")


def _repo(snapshot: Path, tmp_path: Path) -> Path:
    """A clone whose base commit masks sudoku4 and pins maze to walls."""
    path = tmp_path / "repo"
    _git(tmp_path, "clone", "--quiet", str(snapshot), str(path))
    _git(path, "config", "user.name", "Ladder Test")
    _git(path, "config", "user.email", "ladder-test@example.invalid")
    model = path / "hrm" / "model.py"
    text = model.read_text()
    assert text.count(LOGITS) == 1
    model.write_text(text.replace(LOGITS, LOGITS + MASK_SUDOKU4 + PIN_MAZE))
    _git(path, "commit", "--quiet", "-am", "planted: sudoku4 predicts PAD only, maze walls only")
    return path


UNMASK_SUDOKU4 = {"op": "search_replace", "file": "hrm/model.py", "search": MASK_SUDOKU4, "replace": ""}
MAZE_TO_PAD = {"op": "search_replace", "file": "hrm/model.py", "search": PIN_MAZE, "replace": MASK_MAZE}


def _proposal(pid: str, title: str, *edits: dict[str, str]) -> dict[str, object]:
    return valid_proposal(pid, title=title, citations=[], edits=list(edits))


def _main(repo: Path, server_url: str, *extra: str, timeout: int = 1700) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(EVOLVE), "--repo", str(repo), "--provider", "lmstudio", "--host", server_url + "/v1",
           "--model", "scripted", "--auto-apply", "--seeds", "0,1", "--backend", "local", "--literature", "off",
           "--max-seeds", "3", "--throughput-tolerance", "10", "--metric", "token_accuracy",
           # a shared 2-core machine: the sandbox's start may take long beside other tests
           "--setup-allowance", "90",
           # one scripted reply per cycle: no look request before it (the look step has its own tests)
           "--protocol", "direct", *extra]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    return proc


def _run_id(repo: Path) -> str:
    branches = _git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/evolve/").split()
    runs = [b.split("/")[1] for b in branches if b.endswith("/best")]
    assert len(runs) == 1, branches
    return runs[0]


def _record_json(repo: Path, run_id: str, rel: str) -> dict[str, object]:
    return json.loads(_git(repo, "show", f"evolve/{run_id}/record:{rel}"))


@pytest.mark.timeout(1800)
def test_ladder_moves_when_the_best_saturates_and_resume_keeps_its_place(snapshot: Path, tmp_path: Path) -> None:
    """The pinned maze is saturated at once (--solved-at 0.15): the run moves to sudoku4 without judging anything
    on maze, measures sudoku4's baseline there (masked: 0, open), merges the candidate that lifts the mask with a
    Task: sudoku4 trailer, finds the new best saturated on the top task and stops saying so. A resume stays on
    sudoku4."""
    repo = _repo(snapshot, tmp_path)
    fix = _proposal("unmask-sudoku4", "Lift the sudoku4 mask", UNMASK_SUDOKU4)
    with scripted_server([Step(content=json.dumps(fix))]) as server:
        proc = _main(repo, server.url, "--task-ladder", "maze,sudoku4", "--solved-at", "0.15",
                     "--budget-seconds", "4", "--confirm-seeds", "3", "--cycles", "3")
        asked = len(server.received)
    out = proc.stdout
    run_id = _run_id(repo)
    assert asked == 1, out[-3000:]  # one proposal: no verdict spent on saturated maze, none after the last saturation
    assert "saturated:" in out and "moving to sudoku4" in out
    assert "the last task of the ladder maze,sudoku4" in out and "every task of the ladder is solved" in out

    ladder = _record_json(repo, run_id, f"runs/{run_id}/ladder.json")
    assert ladder["tasks"] == ["maze", "sudoku4"] and ladder["position"] == 1 and ladder["task"] == "sudoku4"
    steps = ladder["steps"]
    assert [s["task"] for s in steps] == ["maze", "sudoku4"]  # type: ignore[index]
    assert [s["moved_to"] for s in steps] == ["sudoku4", None]  # type: ignore[index]
    first, last = (s["saturation"] for s in steps)  # type: ignore[index]
    assert first["saturated"] and first["sd"] == 0 and 0.5 < first["mean"] < 0.8 and len(first["scores"]) == 2
    start = _git(repo, "rev-list", "--max-parents=0", f"evolve/{run_id}/best").split()
    assert first["commit"] == _git(repo, "rev-parse", "main").strip() and start
    merge = _git(repo, "log", "--merges", "-1", "--format=%H%n%B", f"evolve/{run_id}/best")
    assert last["commit"] == merge.split("\n", 1)[0]  # the merged best saturated sudoku4
    assert "\nTask: sudoku4" in merge and "Proposal-Id: unmask-sudoku4" in merge

    result = _record_json(repo, run_id, f"proposals/{run_id}/unmask-sudoku4/result.json")
    assert result["verdict"] == "merged" and result["task"] == "sudoku4"
    base = result["baseline"]
    assert base["task"] == "sudoku4" and base["scores"] == [0.0, 0.0]  # type: ignore[index]
    assert base["saturation"]["saturated"] is False  # type: ignore[index]
    state = repo / ".hrm-evolve" / "runs" / run_id
    assert (state / "tasks" / "sudoku4" / "data" / "select" / "dataset.json").is_file()  # its own splits
    assert (state / "data" / "select" / "dataset.json").is_file()  # the first task's, in the run's data/
    baselines = sorted((repo / ".hrm-evolve" / "baselines").glob("*.json"))
    assert len(baselines) == 3  # maze's start, sudoku4's start, the merged best on sudoku4

    report = subprocess.run([sys.executable, str(EVOLVE), "report", "--repo", str(repo), "--run-id", run_id],
                            capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (repo / ".hrm-evolve" / "reports" / run_id / "report.txt").read_text()
    assert "task ladder: maze -> sudoku4 (now at sudoku4)" in text
    assert "saturated: maze" in text and "moved to sudoku4" in text and "merges by task: sudoku4 1" in text
    page = (repo / ".hrm-evolve" / "reports" / run_id / "report.html").read_text()
    assert "task ladder" in page and "saturated" in page

    # resume: the ladder stays on sudoku4 (nothing measured again, maze never re-entered), and stops at once
    with scripted_server([]) as server:
        again = _main(repo, server.url, "--task-ladder", "maze,sudoku4", "--solved-at", "0.15",
                      "--budget-seconds", "4", "--confirm-seeds", "3", "--cycles", "3", "--resume", run_id)
        assert len(server.received) == 0
    assert "the task ladder is at sudoku4 (2 of 2)" in again.stdout
    assert "every task of the ladder is solved" in again.stdout
    assert sorted((repo / ".hrm-evolve" / "baselines").glob("*.json")) == baselines
    assert _record_json(repo, run_id, f"runs/{run_id}/ladder.json")["position"] == 1


@pytest.mark.timeout(2400)
def test_guard_task_blocks_a_winner_that_regresses_there(snapshot: Path, tmp_path: Path) -> None:
    """The first proposal lifts the sudoku4 mask and masks maze: it wins on sudoku4 (selection and confirmation
    pass) but scores 0 on the guard task maze, where its parent scores the walls' share on every seed: the guard
    blocks its merge. The second only lifts the sudoku4 mask: maze is the same on both sides (gain 0), the
    guard passes, and the merge carries the guard's numbers."""
    repo = _repo(snapshot, tmp_path)
    cheat = _proposal("mask-maze", "Lift the sudoku4 mask, mask maze", UNMASK_SUDOKU4, MAZE_TO_PAD)
    fix = _proposal("unmask-sudoku4", "Lift the sudoku4 mask", UNMASK_SUDOKU4)
    with scripted_server([Step(content=json.dumps(cheat)), Step(content=json.dumps(fix))]) as server:
        _main(repo, server.url, "--task", "sudoku4", "--guard-tasks", "maze", "--budget-seconds", "4",
              "--confirm-seeds", "3", "--cycles", "2")
    run_id = _run_id(repo)

    blocked = _record_json(repo, run_id, f"proposals/{run_id}/mask-maze/result.json")
    assert blocked["judgement"]["verdict"] == "passed"  # type: ignore[index]  # it won on sudoku4 ...
    assert blocked["verdict"] == "rejected" and "guard task blocks the merge" in str(blocked["reason"])
    guard = blocked["guards"]["tasks"][0]  # type: ignore[index]
    assert guard["task"] == "maze" and guard["verdict"] == "block" and blocked["guards"]["blocked"] == ["maze"]  # type: ignore[index]
    assert guard["candidate"] == [0.0, 0.0, 0.0] and min(guard["parent"]) > 0.5  # ... and loses all of maze
    assert guard["seeds"] == blocked["comparison"]["confirmation_seeds"]  # type: ignore[index]
    assert guard["upper_bound"] <= -0.5 and guard["level"] == blocked["judgement"]["confirmation"]["numbers"]["level"]  # type: ignore[index]
    assert blocked["timings"].get("guard-train") and blocked["timings"].get("guard-parent-train")  # type: ignore[union-attr]

    merged = _record_json(repo, run_id, f"proposals/{run_id}/unmask-sudoku4/result.json")
    assert merged["verdict"] == "merged", merged["reason"]
    passed = merged["guards"]["tasks"][0]  # type: ignore[index]
    assert passed["verdict"] == "pass" and passed["gains"] == [0.0, 0.0, 0.0] and passed["upper_bound"] == 0.0
    message = _git(repo, "log", "--merges", "--format=%B", f"evolve/{run_id}/best")
    assert "Proposal-Id: mask-maze" not in message and "Proposal-Id: unmask-sudoku4" in message
    assert "Guard tasks (paired on the confirmation's seeds" in message and "Task: sudoku4" in message
    assert "Guard-maze: pass; mean gain +0.0000, upper bound +0.0000" in message
