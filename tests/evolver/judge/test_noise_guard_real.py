"""The side-by-side noise guard on real throughput: each side of a pair is a real subprocess that works for a
tiny time budget and reports its steps/s, the two sides run at the same time, and a real CPU hog (busy
processes, one more than the cores) runs beside the first pair only, then stops, as in the run that voided a
real fix (the hog slowed the first pair to half speed; the old parent-throughput guard then voided every later
pair). Scores are scripted, a planted fix of +0.10: the throughput, and so the guard's input, is real.

Not a timing assertion: the test first checks that the hog really moved the parent's steps/s beyond the
tolerance (else the scenario did not happen and the test fails, saying so), then that the comparison is judged,
not void, and that the parent-only guard would have voided pairs of these very measurements."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading

import numpy as np

from evolver.judge.pairs import CandidateJudge, SideRun
from evolver.judge.promotion import ConfirmationRule, RunErrorControl, SelectionRule, throughput_drift

BUDGET_S = 1.5
TOLERANCE = 0.25
WORK = ("import sys, time\n"
        "budget = float(sys.argv[1]); t0 = time.perf_counter(); steps = 0\n"
        "while time.perf_counter() - t0 < budget:\n"
        "    sum(i * i for i in range(20000)); steps += 1\n"
        "print(steps, time.perf_counter() - t0)\n")
HOG = "while True: pass"


def _train(budget: float) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", WORK, str(budget)], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()
    return int(out[0]), float(out[1])


def test_a_hog_beside_the_first_pair_only_leaves_a_planted_fix_judged_not_void() -> None:
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range((os.cpu_count() or 2) + 1)]
    lock = threading.Lock()
    done: dict[int, int] = {}
    order: list[int] = []

    def stop_hogs() -> None:
        for hog in hogs:
            if hog.poll() is None:
                hog.kill()
                hog.wait()

    def measure(side: str, seed: int, phase: str) -> SideRun:
        steps, seconds = _train(BUDGET_S)
        with lock:
            if seed not in order:
                order.append(seed)
            done[seed] = done.get(seed, 0) + 1
            if order[0] == seed and done[seed] == 2:
                stop_hogs()  # the first pair is over: the machine is quiet from here on
        rng = np.random.default_rng([seed, side == "candidate"])
        luck = 0.6 + 0.02 * float(np.random.default_rng(seed).standard_normal())
        score = luck + 0.01 * float(rng.standard_normal()) + (0.10 if side == "candidate" else 0.0)
        return SideRun(True, score, evidence={"steps": steps, "claimed_seconds": seconds,
                                              "steps_per_second": steps / seconds})

    try:
        judge = CandidateJudge(measure, selection=SelectionRule(), confirmation=ConfirmationRule(seeds=3),
                               control=RunErrorControl(), first_seeds=[0, 1, 2], side_by_side=True,
                               tolerance=TOLERANCE)
        j = judge.judge()
    finally:
        stop_hogs()
    rates = [p.parent_evidence["steps_per_second"] for p in j.pairs]
    first, rest = rates[0], statistics.median(rates[1:])
    assert rest / first - 1.0 > TOLERANCE, (
        f"the hog did not slow the first pair beyond the tolerance (first {first:.1f}, then {rest:.1f} steps/s): "
        "the scenario under test did not happen")
    assert j.verdict != "void", j.reason
    # the hog's pair slowed both sides alike: kept (a later pair may still be void where the shared machine's
    # other load hit one side alone; that is the guard doing its job, so it is not asserted against)
    assert not j.pairs[0].void, j.pairs[0].void_reason
    assert j.verdict == "passed", j.reason
    # the parent-only guard on the same measurements: the first pair's rate as the reference voids what follows
    reference = [first]
    old_voids = 0
    for rate in rates[1:]:
        ok, _ = throughput_drift(rate, statistics.median(reference), TOLERANCE)
        old_voids += not ok
        if ok:
            reference.append(rate)
    assert old_voids > 0
