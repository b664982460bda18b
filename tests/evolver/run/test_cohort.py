"""Several candidates judged at once (evolver/run/cohort.py): the verdicts of a serial run, candidates really in
flight together, a winner whose parent is no longer the best rebased and confirmed against the new best, and
one whose change no longer applies rejected with the reason.

The loop, the git record, the edit engine, the promotion rules and the local executor are the real ones; only
the executor's job runner is scripted: a tree's score on a seed is 0.5 plus the `effect_*` functions its
hrm/ defines, plus noise from the seed (shared by both sides) and from the seed and side, so a candidate's
gain does not depend on what else merged before it, and a serial run and a cohort must agree exactly."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evolver.execute.cascade import CascadeResult, StageRun
from evolver.execute.job import StageJob, StageOutcome
from evolver.execute.local import LocalExecutor, Slot
from evolver.propose.catalogue import CatalogueEntry
from evolver.propose.providers.offline import OfflineProvider
from evolver.run.cohort import CycleOrder
from evolver.run.loop import EvolutionLoop
from evolver.settings import load_settings

EFFECT = re.compile(r"def effect_\w+\(\) -> float:\s+return (-?[0-9.]+)")


def entry(pid: str, *edits: dict[str, Any]) -> CatalogueEntry:
    return CatalogueEntry(pid, f"proposal {pid}", "a scripted change for the cohort tests",
                          "the effect function says how much it helps",
                          (("2506.21734", "Hierarchical Reasoning Model", "HRM"),), tuple(edits))


def effect(pid: str, value: float, file: str) -> dict[str, Any]:
    return {"op": "add_function", "file": file, "after": None,
            "code": f"def effect_{pid}() -> float:\n    return {value}\n"}


def hidden(size: int) -> dict[str, Any]:
    return {"op": "replace_function", "file": "hrm/model.py", "target": "hidden_size",
            "code": f"def hidden_size() -> int:\n    return {size}\n"}


def tree_effect(tree: str) -> float:
    return sum(float(v) for f in sorted(Path(tree, "hrm").glob("*.py")) for v in EFFECT.findall(f.read_text()))


class Scripted:
    """The executor's job runner: gates pass, train+evaluate scores as the module docstring says. ``hold``:
    candidate jobs wait until that many candidates exist (so a cohort really starts them all first)."""

    def __init__(self, run_dir: Path, hold: int = 0, seconds: float = 0.01) -> None:
        self.run_dir = run_dir
        self.hold = hold
        self.seconds = seconds
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.jobs: list[StageJob] = []

    def __call__(self, job: StageJob, slot: Slot, progress: object) -> StageOutcome:
        deadline = time.monotonic() + 30
        while (job.phase != "baseline" and self.hold and time.monotonic() < deadline
               and len(list((self.run_dir / "candidates").glob("*"))) < self.hold):
            time.sleep(0.02)
        with self.lock:
            self.jobs.append(job)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.seconds)
            stages = list(job.options["stages"])
            if "train" not in stages:  # the gates
                runs = [StageRun(stage, None, True, "", duration_s=0.1) for stage in stages]
                result = CascadeResult(True, "sudoku4", [job.seed], runs)
            else:
                base = 0.5 + 0.05 * np.random.default_rng(job.seed).standard_normal()
                noise = 0.03 * np.random.default_rng([job.seed, job.side == "candidate"]).standard_normal()
                value = float(base + noise + tree_effect(job.tree))
                runs = [StageRun("train", job.seed, True, "", duration_s=1.0),
                        StageRun("evaluate", job.seed, True, "", duration_s=0.1)]
                result = CascadeResult(True, "sudoku4", [job.seed], runs,
                                       scores={"exact_accuracy": [value], "token_accuracy": [value]},
                                       evidence=[{"seed": job.seed, "steps_per_second": 5.0, "steps": 100}])
            return StageOutcome(result.to_dict(), placement={"executor": "local", "slot": slot.index})
        finally:
            with self.lock:
                self.running -= 1


def run_loop(repo: Path, state: Path, catalogue: tuple[CatalogueEntry, ...], *, cohort: int, workers: int,
             hold: int = 0, **more: Any) -> tuple[EvolutionLoop, Scripted]:
    settings = load_settings(repo, environ={}, overrides={
        "provider": "offline", "literature": "off", "state_dir": str(state), "seeds": [0, 1, 2],
        "cycles": len(catalogue), "auto_apply": True, "backend": "local", "cohort": cohort, "workers": workers,
        **more})
    provider = OfflineProvider(catalogue=catalogue, shuffle=False)
    loop = EvolutionLoop(repo, settings, harness_dir=state / "harness", provider=provider)
    loop.ctx.data_dir = lambda: state / "data"  # type: ignore[method-assign]
    scripted = Scripted(loop.ctx.run_dir, hold=hold)
    loop.ctx.executor = LocalExecutor(workers, run=scripted)
    loop.run()
    return loop, scripted


def results(loop: EvolutionLoop) -> dict[str, dict[str, Any]]:
    return {pid: loop.ctx.store.result(pid) or {} for pid in loop.ctx.store.ids()}


def evidence(result: dict[str, Any]) -> dict[str, Any]:
    j = result.get("judgement") or {}
    return {"verdict": result.get("verdict"), "selection": j.get("selection_gains"),
            "confirmation": j.get("confirmation_gains"), "level": j.get("confirmation_level"),
            "confirmation_seeds": j.get("confirmation_seeds")}


CATALOGUE = (
    entry("alpha", effect("alpha", 0.15, "hrm/model.py")),
    entry("bravo", effect("bravo", 0.0, "hrm/config.py")),
    entry("charlie", effect("charlie", 0.15, "hrm/config.py")),
    entry("delta", effect("delta", -0.2, "hrm/__init__.py")),
)


def test_a_cohort_gives_the_serial_verdicts_with_candidates_in_flight_together(user_repo: Path,
                                                                              tmp_path: Path) -> None:
    serial_loop, serial_jobs = run_loop(user_repo, tmp_path / "serial", CATALOGUE, cohort=1, workers=2)
    cohort_loop, cohort_jobs = run_loop(user_repo, tmp_path / "cohort", CATALOGUE, cohort=3, workers=6, hold=3)
    serial, cohort = results(serial_loop), results(cohort_loop)
    assert sorted(serial) == sorted(cohort) == sorted(e.id for e in CATALOGUE)
    assert serial["alpha"]["verdict"] == "merged" and serial["charlie"]["verdict"] == "merged"
    assert serial["delta"]["verdict"] == "rejected"
    for pid in serial:  # the same pairs, gains, confirmation seeds and levels: the same verdicts
        mine, theirs = evidence(cohort[pid]), evidence(serial[pid])
        for key in ("verdict", "level", "confirmation_seeds"):
            assert mine[key] == theirs[key], (pid, key)
        for key in ("selection", "confirmation"):
            assert (mine[key] is None) == (theirs[key] is None), (pid, key)
            assert mine[key] is None or mine[key] == pytest.approx(theirs[key], abs=1e-12), (pid, key)
    assert serial_jobs.most <= 2 < cohort_jobs.most  # the cohort trained pairs of several candidates at once
    # charlie was selected against the first parent while alpha was judged, then rebased onto alpha's merge
    # and confirmed against it; in the serial run it branched from alpha's merge in the first place
    rebased = cohort["charlie"]["rebased"]
    assert rebased["from_parent"] == cohort["charlie"]["parent"] == cohort["alpha"]["parent"]
    assert rebased["onto"] == cohort["alpha"]["merge_commit"]
    assert "rebased" not in serial["charlie"] and serial["charlie"]["parent"] == serial["alpha"]["merge_commit"]
    confirm = [j for j in cohort_jobs.jobs if j.phase == "confirmation" and "charlie" in j.out_dir]
    assert confirm and {j.tree for j in confirm if j.side == "parent"} == {
        str(cohort_loop.ctx.parent_tree(rebased["onto"]))}
    # the git record: both winners merged, in cycle order (newest first in the log)
    log = _git(user_repo, "log", "--first-parent", "--format=%(trailers:key=Proposal-Id,valueonly)",
               f"evolve/{cohort_loop.ctx.run_id}/best")
    assert [line for line in log.split() if line] == ["charlie", "alpha"], log
    message = _git(user_repo, "log", "-1", "--format=%B", f"evolve/{cohort_loop.ctx.run_id}/cand/charlie")
    assert f"Parent: {rebased['onto']}" in message and "Rebased-From: " in message


def test_a_winner_whose_change_no_longer_applies_to_the_new_best_is_rejected(user_repo: Path,
                                                                            tmp_path: Path) -> None:
    catalogue = (entry("first", hidden(65), effect("first", 0.15, "hrm/config.py")),
                 entry("second", hidden(66), effect("second", 0.15, "hrm/__init__.py")))
    loop, _jobs = run_loop(user_repo, tmp_path / "state", catalogue, cohort=2, workers=4, hold=2)
    out = results(loop)
    assert out["first"]["verdict"] == "merged"
    assert out["second"]["verdict"] == "rejected"
    assert "does not apply to the new best" in out["second"]["reason"]
    assert out["second"].get("judgement") is None  # never confirmed: no level of the run was spent on it
    control = loop.ctx.control.to_dict()
    assert [h["proposal_id"] for h in control["history"]] == ["first"]


SCREENED = (
    entry("best", effect("best", 0.15, "hrm/model.py")),
    entry("none", effect("none", 0.0, "hrm/__init__.py")),
    entry("worse", {"op": "add_function", "file": "hrm/model.py", "after": "hidden_size",
                    "code": "def effect_worse() -> float:\n    return -0.2\n"}),
    entry("good", effect("good", 0.1, "hrm/config.py")),
)


@pytest.mark.parametrize("audit", [0.0, 1.0])
def test_successive_halving_judges_the_best_half_of_a_screen_batch(user_repo: Path, tmp_path: Path,
                                                                   audit: float) -> None:
    from evolver.judge import fidelity

    loop, jobs = run_loop(user_repo, tmp_path / "state", SCREENED, cohort=1, workers=2, screen=4,
                          screen_audit=audit)
    out = results(loop)
    screens = [j for j in jobs.jobs if j.phase == "screen"]
    # one short pair per candidate, all on the batch's own seed, at a quarter of the budget
    assert len(screens) == 8 and {j.seed for j in screens} == {200_000}
    assert {j.options["budget_seconds"] for j in screens} == {10.0}
    ranks = {pid: out[pid]["screen"]["rank"] for pid in out}
    assert ranks == {"best": 1, "good": 2, "none": 3, "worse": 4}
    assert {pid for pid in out if out[pid]["screen"]["kept"]} == {"best", "good"}
    assert out["best"]["verdict"] == out["good"]["verdict"] == "merged"
    judged = {j.out_dir.split("/candidates/")[1].split("/")[0] for j in jobs.jobs if j.phase == "selection"}
    if audit == 0.0:
        assert out["none"]["verdict"] == out["worse"]["verdict"] == "screened-out"
        assert "keeps the top 2" in out["worse"]["reason"]
        assert judged == {"best", "good"}  # the screened-out ones trained no full pair
    else:
        assert all(out[pid]["screen"]["audited"] for pid in ("none", "worse"))
        assert out["worse"]["verdict"] == "rejected" and judged == set(out)
    saved = fidelity.assess(list(out.values()))
    on_disk = __import__("json").loads((loop.ctx.run_dir / "fidelity.json").read_text())
    assert on_disk["stages"]["screen"] == saved["stages"]["screen"]
    assert saved["stages"]["screen"]["n"] == (2 if audit == 0.0 else 4)
    assert saved["stages"]["screen"]["dropped_winners"] == 0
    if audit == 1.0:
        assert saved["stages"]["screen"]["spearman"] == pytest.approx(1.0)


def test_the_cycle_order_lets_a_turn_pass_only_after_every_earlier_cycle() -> None:
    order = CycleOrder()
    turns = {c: order.enter(c) for c in (1, 2, 3)}
    passed: list[int] = []
    waiter = threading.Thread(target=lambda: (turns[3].wait(), passed.append(3)))
    waiter.start()
    order.leave(2)
    time.sleep(0.1)
    assert passed == []  # cycle 1 is still in flight
    order.leave(1)
    waiter.join(5)
    assert passed == [3]
    turns[1].wait()  # a turn whose earlier cycles are all gone passes at once
    assert order.open_cycles() == [3]


@pytest.mark.parametrize("workers", [1, 3])
def test_a_group_bigger_than_the_workers_is_refused(workers: int) -> None:
    executor = LocalExecutor(workers, run=lambda j, s, p: StageOutcome(None))
    jobs = [StageJob("parent", 0, "selection", "/t", "/h", "/d", "/o")] * (workers + 1)
    with pytest.raises(ValueError, match="cannot start together"):
        executor.submit_group(jobs)


def _git(repo: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_a_screen_batch_ranks_its_members_once_all_reported_or_left() -> None:
    from evolver.judge.screening import ScreenBatches

    batches = ScreenBatches(3, fraction=0.5, audit=0.0, key="run")
    assert [batches.join(c) for c in (1, 2, 3, 4)] == [0, 0, 0, 1]
    batches.report(1, 0.1)
    batches.leave(2)  # failed before its screen: holds up nobody, takes no place
    with pytest.raises(TimeoutError):
        batches.decide(1, timeout=0.05)  # cycle 3 has not reported yet
    batches.report(3, None)  # no screen gain (a void pair): the screen cannot drop it
    first, third = batches.decide(1), batches.decide(3)
    assert (first.kept, first.rank, first.size, first.keep) == (True, 1, 2, 1)
    assert (third.kept, third.rank) == (True, None)
    batches.report(4, -0.3)
    with pytest.raises(TimeoutError):
        batches.decide(4, timeout=0.05)  # batch 1 is still open
    batches.close_open()
    assert batches.decide(4).kept  # alone in its batch: the best of it
    audited = ScreenBatches(2, audit=1.0, key="run")
    for c, g in ((1, 0.2), (2, 0.1)):
        audited.join(c)
        audited.report(c, g)
    low = audited.decide(2)
    assert not low.kept and low.audited and low.seed == 200_000
    with pytest.raises(ValueError):
        ScreenBatches(1)
