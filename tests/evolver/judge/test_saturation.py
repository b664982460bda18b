"""The saturation rule, the task ladder's state (in a real run context on a real git record), the guard rule and
what the report and the merge message say of them. Fast: no training (the main command's tests are in
test_ladder_guards_e2e.py)."""

from __future__ import annotations

import math
from concurrent.futures import Future
from pathlib import Path

import pytest
from scipy import stats

from evolver.judge.guards import decide, run_guards, upper_bound
from evolver.judge.pairs import SideRun
from evolver.judge.saturation import LADDER_FILE, TaskLadder, assess, parse_tasks
from evolver.run.ceiling import SATURATION_FILE, check_ceiling
from evolver.run.context import RunContext
from evolver.run.display import LoopDisplay
from evolver.run.guards_run import guard_message, task_trailers
from evolver.run.state import Baseline, StopRun
from evolver.settings import Settings, load_settings
from evolver.ui.cli import build_parser
from evolver.ui.report import ceiling_summary, summarize, text_report
from evolver.ui.report_html import summary_html


# ---------------------------------------------------------------------------------------------- the rule
def test_a_parent_at_the_ceiling_on_every_seed_is_saturated() -> None:
    found = assess([1.0, 1.0, 1.0], task="sudoku4", metric="token_accuracy", margin=0.01)
    assert found.saturated and found.floor == pytest.approx(0.99) and "no candidate can gain" in found.reason


def test_a_mean_leaving_room_for_a_gain_above_the_margin_is_not_saturated() -> None:
    # every seed is within 2 sd of 1.0 (floor 0.942), but the mean 0.983 leaves a possible gain of 0.017 > 0.01
    found = assess([1.0, 1.0, 0.95], task="sudoku4", metric="token_accuracy", margin=0.01)
    assert not found.saturated and "mean 0.9833" in found.reason
    assert found.floor == pytest.approx(1.0 - 2 * 0.028867513, abs=1e-6)


def test_one_seed_below_the_noise_keeps_the_task_open() -> None:
    scores = [1.0] * 9 + [0.97]  # mean 0.997: no room on the mean, but 0.97 < 1 - 2 x sd (0.981)
    found = assess(scores, task="sudoku4", metric="token_accuracy", margin=0.01)
    assert not found.saturated and "0.9700 below 0.98" in found.reason


def test_within_the_margin_of_the_ceiling_is_saturated_and_the_ceiling_can_be_set() -> None:
    assert assess([0.995, 1.0, 0.99], task="t", metric="m", margin=0.01).saturated
    assert not assess([0.45, 0.46], task="t", metric="m", margin=0.01).saturated
    low = assess([0.45, 0.46], task="t", metric="m", margin=0.01, ceiling=0.45)
    assert low.saturated and low.ceiling == 0.45
    assert not assess([], task="t", metric="m", margin=0.01).saturated


def test_the_ladder_climbs_records_each_saturation_and_round_trips() -> None:
    ladder = TaskLadder(["sudoku4", "sudoku6", "sudoku9"])
    found = assess([1.0, 1.0], task="sudoku4", metric="m", margin=0.01, commit="abc")
    assert ladder.climb(found, "now") == "sudoku6" and ladder.task == "sudoku6" and ladder.position == 1
    again = TaskLadder.from_dict(ladder.to_dict())
    assert again == ladder and again.steps[0]["saturation"]["commit"] == "abc"
    again.position = 2
    assert again.climb(found, "later") is None and again.position == 2 and again.steps[-1]["moved_to"] is None
    with pytest.raises(ValueError):
        TaskLadder.from_dict({"tasks": ["sudoku4"], "position": 1})
    with pytest.raises(ValueError, match="unknown task"):
        parse_tasks(["sudoku4", "chess"], ["sudoku4", "sudoku6"])
    with pytest.raises(ValueError, match="twice"):
        parse_tasks(["sudoku4", "sudoku4"], ["sudoku4"])


def test_settings_and_flags_read_the_ladder_and_the_guards() -> None:
    s = load_settings(None, environ={"HRM_TASK_LADDER": "sudoku4, sudoku6", "HRM_GUARD_TASKS": "maze",
                                     "HRM_SOLVED_AT": "0.95"})
    assert s.task_ladder == ["sudoku4", "sudoku6"] and s.guard_tasks == ["maze"] and s.solved_at == 0.95
    args = build_parser().parse_args(["run", "--task-ladder", "sudoku4,sudoku6,sudoku9", "--guard-tasks", "maze",
                                      "--solved-at", "0.9"])
    assert args.task_ladder == ["sudoku4", "sudoku6", "sudoku9"] and args.guard_tasks == ["maze"]
    assert args.solved_at == 0.9


# ---------------------------------------------------------------------------------------------- in a run
def _ctx(repo: Path, run_id: str | None = None, **kw: object) -> RunContext:
    settings = Settings(**{"task_ladder": ["sudoku4", "sudoku6"], "state_dir": str(repo / ".state"), **kw})  # type: ignore[arg-type]
    return RunContext(repo, settings, run_id=run_id, display=LoopDisplay(live=False))


def _baseline(ctx: RunContext, scores: list[float]) -> Baseline:
    best = ctx.record.best_commit()
    return Baseline(best, "tree", [0, 1], scores, 1.0, task=ctx.settings.task)


def test_a_saturated_best_moves_the_ladder_and_a_resume_keeps_its_place(user_repo: Path) -> None:
    ctx = _ctx(user_repo, task="sudoku9")  # a --task beside a ladder: the ladder's first task wins
    assert ctx.settings.task == "sudoku4" and ctx.ladder is not None and ctx.ladder.position == 0
    assert ctx.store.run_file(LADDER_FILE)["task"] == "sudoku4"  # type: ignore[index]
    assert not check_ceiling(ctx, _baseline(ctx, [0.5, 0.6]))  # open: nothing moves
    assert ctx.ladder.position == 0
    start = _baseline(ctx, [1.0, 1.0])
    assert check_ceiling(ctx, start)  # saturated: moved
    assert start.saturation is not None and start.saturation["saturated"]
    assert ctx.settings.task == "sudoku6" and ctx.baseline is None
    stored = ctx.store.run_file(LADDER_FILE)
    assert stored is not None and stored["position"] == 1 and stored["steps"][0]["moved_to"] == "sudoku6"
    assert "rule" in stored["steps"][0]
    run_id = ctx.run_id
    ctx.record.close()

    resumed = _ctx(user_repo, run_id=run_id)  # the command line says sudoku4 (the default); the ladder wins
    assert resumed.settings.task == "sudoku6" and resumed.ladder is not None and resumed.ladder.position == 1
    assert resumed.home_task == "sudoku4"
    with pytest.raises(StopRun, match="the last task of the ladder sudoku4,sudoku6"):
        check_ceiling(resumed, _baseline(resumed, [1.0, 0.995]))
    assert resumed.store.run_file(LADDER_FILE)["steps"][-1]["task"] == "sudoku6"  # type: ignore[index]
    resumed.record.close()


def test_without_a_ladder_a_saturated_best_stops_the_run_and_is_recorded(user_repo: Path) -> None:
    ctx = _ctx(user_repo, task_ladder=[])
    with pytest.raises(StopRun, match="saturated on sudoku4.*no verdict could tell a candidate from it"):
        check_ceiling(ctx, _baseline(ctx, [1.0, 1.0, 1.0]))
    stored = ctx.store.run_file(SATURATION_FILE)
    assert stored is not None and stored["saturated"] and stored["task"] == "sudoku4" and "rule" in stored
    ctx.record.close()


def test_unknown_guard_or_ladder_tasks_are_refused_before_any_compute(user_repo: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        _ctx(user_repo, guard_tasks=["chess"])


# ---------------------------------------------------------------------------------------------- guards
def test_the_guard_bound_is_the_one_sided_t_bound_at_the_level() -> None:
    gains = [-0.30, -0.10, -0.20]
    mean, sd, t, ub = upper_bound(gains, 0.05)
    assert t == pytest.approx(stats.t.isf(0.05, 2))
    assert ub == pytest.approx(-0.2 + stats.t.isf(0.05, 2) * 0.1 / math.sqrt(3))
    blocked = decide("maze", [1, 2, 3], [0.5, 0.5, 0.5], [0.2, 0.4, 0.3], level=0.05, margin=0.01)
    assert blocked.verdict == "block" and blocked.upper_bound == pytest.approx(ub)
    noisy = decide("maze", [1, 2, 3], [0.5, 0.5, 0.5], [0.2, 0.9, 0.3], level=0.05, margin=0.01)
    assert noisy.verdict == "pass"  # a loss the data cannot show at this level blocks nothing
    one = decide("maze", [1], [0.5], [0.0], level=0.05, margin=0.01)
    assert one.verdict == "pass" and one.to_dict()["upper_bound"] is None


def _done(run: SideRun) -> Future[SideRun]:
    f: Future[SideRun] = Future()
    f.set_result(run)
    return f


def test_run_guards_replaces_lost_pairs_blocks_a_failing_candidate_and_ignores_a_failing_parent() -> None:
    calls: list[tuple[str, int]] = []

    def submit_pair(task: str, sides: list[str], seed: int) -> list[Future[SideRun]]:
        calls.append((task, seed))
        if task == "maze" and seed == 101:  # the executor lost this pair: replaced by a fresh seed
            return [_done(SideRun(False, reason="node lost", failed_stage="executor")), _done(SideRun(True, 0.5))]
        if task == "sudoku6":
            return [_done(SideRun(True, 0.5)), _done(SideRun(False, reason="boom", failed_stage="train"))]
        if task == "sudoku9":
            return [_done(SideRun(False, reason="oom", failed_stage="train")), _done(SideRun(True, 0.5))]
        return [_done(SideRun(True, 0.6)), _done(SideRun(True, 0.6 + 0.02 * (seed - 101)))]  # gains -0.02, +0.02

    report = run_guards(["maze", "sudoku6", "sudoku9"], submit_pair, seeds=[100, 101], used=[0, 1, 100, 101],
                        level=0.075, margin=0.01)
    maze, s6, s9 = report.results
    assert [s for t, s in calls if t == "maze"] == [100, 101, 102] and maze.seeds == [100, 102]
    assert maze.void_pairs == 1 and maze.verdict == "pass" and maze.gains == pytest.approx([-0.02, 0.02])
    assert s6.verdict == "block" and "fails on seed 100 at train" in s6.reason
    assert s9.verdict == "unmeasured" and "parent itself fails" in s9.reason
    assert report.blocked == [s6] and "guard sudoku6" in report.reason()
    message = guard_message(report)
    assert "Guard tasks" in message and "sudoku6: block" in message
    trailers = dict(task_trailers("sudoku4", report))
    assert trailers["Task"] == "sudoku4" and trailers["Guard-sudoku6"].startswith("block; mean gain")


# ---------------------------------------------------------------------------------------------- the report
def test_the_report_shows_the_ladder_the_saturations_and_the_merges_per_task() -> None:
    ladder = TaskLadder(["sudoku4", "sudoku6"])
    ladder.climb(assess([1.0, 1.0], task="sudoku4", metric="m", margin=0.01, commit="a" * 40), "t1")
    results = [{"proposal_id": "x", "verdict": "merged", "task": "sudoku6"},
               {"proposal_id": "y", "verdict": "rejected", "task": "sudoku6"}]
    ceiling = ceiling_summary(ladder.to_dict(), None, results)
    assert ceiling is not None and ceiling["merges_by_task"] == {"sudoku6": 1}
    text = text_report(summarize(results, None, ceiling))
    assert "task ladder: sudoku4 -> sudoku6 (now at sudoku6)" in text
    assert "saturated: sudoku4 at aaaaaaaaaa (moved to sudoku6)" in text
    stop = ceiling_summary(None, {"task": "sudoku4", "commit": "b" * 40, "reason": "saturated: ..."}, [])
    assert stop is not None and "the run stopped" in text_report(summarize([], None, stop))
    assert ceiling_summary(None, None, []) is None

    from evolver.ui.report_html import RunView

    page = summary_html(RunView(run_id="r", candidates=[], summary=summarize(results, None, ceiling)))
    assert "task ladder" in page and "sudoku4 -&gt; sudoku6" in page


def test_the_display_keeps_a_saturation_in_the_live_panel_and_under_the_final_table(user_repo: Path) -> None:
    import io

    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False, color_system=None)
    ctx = _ctx(user_repo)
    with LoopDisplay(console) as display:
        ctx.display = display
        assert check_ceiling(ctx, _baseline(ctx, [1.0, 1.0]))
        panel = Console(file=io.StringIO(), width=200)
        panel.print(display._render())
        assert "saturated: the best" in panel.file.getvalue()  # type: ignore[attr-defined]
        assert display.header["saturated"] == "no" and display.header["task"] == "sudoku6"
    out = buf.getvalue()
    assert out.count("saturated: the best") == 2  # when found, and again at the end, after the later log lines
    assert out.rindex("saturated: the best") > out.index("moving to sudoku6")
    ctx.record.close()


def test_the_page_shows_each_candidates_task_and_guards(tmp_path: Path) -> None:
    from evolver.ui.report_html import write_html_report

    report = run_guards(["maze"], lambda task, sides, seed: [_done(SideRun(True, 0.6)), _done(SideRun(True, 0.0))],
                        seeds=[100000, 100001, 100002], used=[0, 1], level=0.075, margin=0.01)
    results = [{"proposal_id": "mask-maze", "run_id": "r", "cycle": 1, "verdict": "rejected", "task": "sudoku4",
                "reason": "guard", "guards": report.to_dict()}]
    page = write_html_report(tmp_path / "report.html", results).read_text()
    assert '<tr data-guard="maze">' in page and "block" in page and "-0.6000" in page
    assert "<th>task</th><td>sudoku4</td>" in page


def test_a_guard_task_that_is_the_judged_task_is_skipped(user_repo: Path) -> None:
    from evolver.run.guards_run import run_guard_pairs

    ctx = _ctx(user_repo, guard_tasks=["sudoku4"])  # the ladder's first task, guarded once the run moves on
    assert run_guard_pairs(ctx, object(), object(), user_repo, {}, task="sudoku4") is None  # type: ignore[arg-type]
    ctx.record.close()
