"""The task ladder in a cohort: when a merge saturates the best while other candidates are in flight, those
finish on the task their parent was measured on (their gates and pairs say so; a winner among them is
confirmed and merged there, with that task in its trailer), the new best is measured on the next task, and
the run starts no cycle after the ladder's top saturates. The loop, record, rules and local
executor are real; the job runner is test_cohort's scripted one (a tree scores 0.5 plus its effect_*)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.evolver.run.test_cohort import CATALOGUE, results, run_loop


def test_a_merge_that_saturates_moves_the_ladder_while_the_cohort_finishes_on_its_task(user_repo: Path,
                                                                                      tmp_path: Path) -> None:
    # the start scores about 0.5 (open at --solved-at 0.6); alpha's +0.15 merges and saturates it
    loop, scripted = run_loop(user_repo, tmp_path / "s", CATALOGUE, cohort=2, workers=4, hold=2,
                              task_ladder=["sudoku4", "sudoku6"], solved_at=0.6)
    res = results(loop)
    assert res["alpha"]["verdict"] == "merged" and res["alpha"]["task"] == "sudoku4"
    assert loop.ctx.ladder is not None and loop.ctx.ladder.position == 1 and loop.ctx.settings.task == "sudoku6"
    assert [s["task"] for s in loop.ctx.ladder.steps] == ["sudoku4", "sudoku6"]
    assert loop.stop_reason is not None and "every task of the ladder is solved" in loop.stop_reason
    for pid, result in res.items():  # every job of a candidate ran on the task its result names
        tasks = {j.options["task"] for j in scripted.jobs if f"/candidates/{pid}/" in j.out_dir}
        assert tasks == {result["task"]}, (pid, tasks)
    assert all(r["task"] == "sudoku4" for r in res.values())  # all started before the move
    moved = [j for j in scripted.jobs if j.phase == "baseline" and j.options["task"] == "sudoku6"]
    assert len(moved) == 3  # the merged best measured once on sudoku6's seeds, found saturated there too
    # a winner in flight at the move is confirmed on its own task, and its merge says which
    for pid in [p for p, r in res.items() if r["verdict"] == "merged"]:
        message = subprocess.run(["git", "show", "-s", "--format=%B", res[pid]["merge_commit"]], cwd=user_repo,
                                 capture_output=True, text=True, check=True).stdout
        assert "\nTask: sudoku4" in message, message
