"""The learning-curve early stop (evolver/judge/early_stop.py): reading a metrics stream a candidate wrote, the rule,
the watch that stops the candidate (and its parent) or only records the stop, and a real pair on the local
sandbox in which a candidate that cannot learn is stopped well before its budget and the judge rejects it."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from evolver.execute.job import StageJob
from evolver.execute.local import LocalExecutor
from evolver.judge.early_stop import EarlyStopRule, HostStop, PairWatch, compare, enforced, read_curve
from evolver.judge.pairs import EARLY_STOP, CandidateJudge
from evolver.judge.promotion import ConfirmationRule, RunErrorControl, SelectionRule
from evolver.run.sides import ExecutorSides

REPO = Path(__file__).resolve().parents[3]


def write_stream(stage: Path, points: list[tuple[float, float]], extra: str = "") -> None:
    (stage / "train").mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"type": "train", "step": i, "time": t, "accuracy": a}) for i, (t, a) in enumerate(points)]
    (stage / "train" / "metrics.jsonl").write_text("\n".join(lines) + "\n" + extra)


def test_a_stream_is_read_safely_and_only_finite_train_points_count(tmp_path: Path) -> None:
    stage = tmp_path / "train-seed0"
    write_stream(stage, [(1.0, 0.3), (2.0, 0.4)],
                 extra='{"type": "eval", "time": 3, "accuracy": 1}\nnot json\n{"type": "train", "time": "x", '
                       '"accuracy": 0.9}\n{"type": "train", "time": 4, "accuracy": NaN}\n{"type": "train", "ti')
    assert read_curve(stage) == [(1.0, 0.3), (2.0, 0.4)]
    assert read_curve(tmp_path / "missing") == []
    linked = tmp_path / "linked"
    (linked / "train").mkdir(parents=True)
    os.symlink(stage / "train" / "metrics.jsonl", linked / "train" / "metrics.jsonl")
    assert read_curve(linked) == []  # a link is never followed: no curve, no stop
    dir_link = tmp_path / "dirlink"
    dir_link.mkdir()
    os.symlink(stage / "train", dir_link / "train")
    assert read_curve(dir_link) == []


def test_the_rule_compares_the_curves_at_the_same_elapsed_time_past_the_start() -> None:
    rule = EarlyStopRule(margin=0.1, after=0.5, window=0.2)
    parent = [(t, 0.2 + 0.05 * t) for t in range(1, 11)]  # 0.25 .. 0.70
    flat = [(t, 0.25) for t in range(1, 11)]
    assert compare(parent, flat[:4], 10.0, rule) is None  # the candidate has trained 4 s of 10: too early
    seen = compare(parent, flat[:7], 10.0, rule)  # compared at 7 s, the candidate's latest time, not the parent's 10
    assert seen is not None and seen["at_s"] == 7
    assert seen["parent_accuracy"] == pytest.approx((0.50 + 0.55) / 2)  # the window (5, 7] holds t = 6, 7
    assert compare(parent, [(t, a - 0.05) for t, a in parent], 10.0, rule) is None  # within the margin
    assert compare([], flat, 10.0, rule) is None and compare(parent, [], 10.0, rule) is None


def test_audits_are_a_seeded_share_of_the_pairs() -> None:
    rule = EarlyStopRule(audit=0.25)
    draws = [enforced(f"run:p:selection:{i}", rule) for i in range(400)]
    assert draws == [enforced(f"run:p:selection:{i}", rule) for i in range(400)]
    assert 0.65 < sum(draws) / len(draws) < 0.85
    assert all(enforced(str(i), EarlyStopRule(audit=0.0)) for i in range(50))


def grow(parent: Path, cand: Path, stop: threading.Event) -> None:
    """Write both streams as training would, 1 s of "training time" per 20 ms."""
    for n in range(1, 60):
        if stop.is_set():
            return
        write_stream(parent, [(t, 0.25 + 0.01 * t) for t in range(1, n + 1)])
        write_stream(cand, [(t, 0.25) for t in range(1, n + 1)])
        time.sleep(0.02)


@pytest.mark.parametrize("enforce", [True, False])
def test_the_watch_stops_a_candidate_clearly_below_its_parent_or_only_records_it(tmp_path: Path,
                                                                                 enforce: bool) -> None:
    rule = EarlyStopRule(margin=0.1, after=0.5, window=0.2, checks=2, interval_s=0.05)
    stop, parent_stop, done = HostStop(), HostStop(), threading.Event()
    watch = PairWatch(tmp_path / "p", tmp_path / "c", 40.0, rule, stop, enforce=enforce,
                      parent_stop=parent_stop).start()
    writer = threading.Thread(target=grow, args=(tmp_path / "p", tmp_path / "c", done))
    writer.start()
    time.sleep(1.5)
    done.set()
    writer.join()
    watch.finish()
    assert watch.decision is not None and watch.decision["enforced"] is enforce
    assert watch.decision["gap"] > 0.1 and watch.decision["at_s"] >= 20
    assert stop.is_set() is enforce and parent_stop.is_set() is enforce
    if enforce:
        assert "below its parent's" in stop.reason and "stopped early" in parent_stop.reason


def test_a_watch_of_equal_curves_stops_nothing(tmp_path: Path) -> None:
    rule = EarlyStopRule(margin=0.1, interval_s=0.05)
    for side in ("p", "c"):
        write_stream(tmp_path / side, [(t, 0.5) for t in range(1, 40)])
    stop = HostStop()
    watch = PairWatch(tmp_path / "p", tmp_path / "c", 40.0, rule, stop, enforce=True).start()
    time.sleep(0.4)
    watch.finish()
    assert watch.decision is None and not stop.is_set()


@pytest.mark.usefixtures("require_local_sandbox")
def test_a_real_candidate_that_cannot_learn_is_stopped_early_and_rejected(run_data: Path, harness: Path,
                                                                          tmp_path: Path) -> None:
    frozen = tmp_path / "frozen"
    shutil.copytree(REPO / "hrm", frozen / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    presets = frozen / "hrm" / "presets.py"  # the CPU presets' learning rates, set to zero: it cannot learn
    text = presets.read_text()
    assert "lr: float = 3e-3)" in text and "puzzle_emb_lr=1e-2," in text
    presets.write_text(text.replace("lr: float = 3e-3)", "lr: float = 0.0)").replace("puzzle_emb_lr=1e-2,",
                                                                                    "puzzle_emb_lr=0.0,"))
    budget = 16.0
    trees = {"parent": REPO, "candidate": frozen}

    def make_job(side: str, seed: int, phase: str) -> StageJob:
        return StageJob(side, seed, phase, str(trees[side]), str(harness), str(run_data),
                        str(tmp_path / "out" / f"{phase}-seed{seed}-{side}"),
                        {"task": "sudoku4", "budget_seconds": budget, "backend": "local",
                         "stages": ["train", "evaluate"], "threads": 1, "cpus": 1.0, "label": f"es-{side}"})

    rule = EarlyStopRule(margin=0.05, after=0.4, window=0.2, checks=2, interval_s=0.5, audit=0.0)
    sides = ExecutorSides(LocalExecutor(2), make_job, "token_accuracy", early_stop=rule, key="t")
    judge = CandidateJudge(sides, selection=SelectionRule(), confirmation=ConfirmationRule(),
                           control=RunErrorControl(), first_seeds=[0, 1, 2], submit_pair=sides.submit_pair)
    t0 = time.monotonic()
    judgement = judge.judge()
    took = time.monotonic() - t0
    assert judgement.verdict == "rejected" and "stopped early by the host" in judgement.reason, judgement.reason
    assert len(judgement.pairs) == 1 and judgement.failed_seed == 0
    pair = judgement.pairs[0]
    stop = pair.candidate_evidence["early_stop"]
    assert stop["enforced"] and stop["gap"] > 0.05 and budget * 0.4 <= stop["at_s"] < budget
    cascade = json.loads((tmp_path / "out" / "selection-seed0-candidate" / "cascade.json").read_text()) if (
        tmp_path / "out" / "selection-seed0-candidate" / "cascade.json").exists() else None
    assert cascade is None or cascade["failed_stage"] == EARLY_STOP
    assert took < budget + 25  # both sides stopped: neither trained out its budget and evaluated
    assert not math.isnan(stop["candidate_accuracy"])
