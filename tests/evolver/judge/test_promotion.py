"""The promotion rule: sequential selection, confirmation on fresh seeds, run-level error control."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy import stats

from evolver.judge.promotion import (
    RULE_TEXT,
    ConfirmationRule,
    NoiseGuard,
    RunErrorControl,
    SelectionRule,
    calibrated_t_bounds,
    decide_confirmation,
    decide_selection,
    describe,
    fresh_seeds,
    group_sequential_bounds,
    pair_conditions,
    selection_boundaries,
    spending,
    steps_per_second,
    throughput_drift,
)

NUMBER = re.compile(r"[+-]?\d+\.\d+")


def run_selection(diffs: list[float], rule: SelectionRule):
    """Feed gains one pair at a time, as the loop does; return the final decision."""
    for n in range(1, len(diffs) + 1):
        d = decide_selection(diffs[:n], rule)
        if d.action != "more":
            return d
    return d


# ---------------------------------------------------------------------------------------------------- selection

def test_clearly_worse_candidate_is_rejected_early():
    rule = SelectionRule()
    d = run_selection([-0.12, -0.08, -0.10, -0.11, -0.09, -0.10, -0.12, -0.08, -0.1, -0.1], rule)
    assert d.action == "reject"
    assert d.numbers["n"] < rule.max_seeds
    assert d.numbers["n"] == rule.min_seeds  # three pairs are enough for a gain of -0.10 at sd 0.02
    assert d.numbers["upper_bound"] < rule.margin
    assert "no better than its parent" in d.reason


def test_small_gain_is_stopped_for_futility_before_the_cap():
    rng = np.random.default_rng(3)
    rule = SelectionRule()
    stops, passes = [], 0
    for _ in range(200):
        d = run_selection((0.0 + 0.02 * rng.standard_normal(rule.max_seeds)).tolist(), rule)
        stops.append(d.numbers["n"])
        passes += d.action == "pass"
    assert passes <= 200 * rule.alpha
    assert np.mean(stops) < rule.max_seeds - 2  # most null candidates at low noise stop well before the cap


def test_clearly_better_candidate_passes_and_confirms():
    rng = np.random.default_rng(7)
    rule = SelectionRule()
    d = run_selection((0.10 + 0.03 * rng.standard_normal(rule.max_seeds)).tolist(), rule)
    assert d.action == "pass", d.reason
    assert d.numbers["lower_bound"] > rule.margin
    control = RunErrorControl()
    conf = ConfirmationRule()
    c = decide_confirmation((0.10 + 0.03 * rng.standard_normal(conf.seeds)).tolist(), conf,
                            alpha=control.next_level())
    assert c.action == "confirm", c.reason
    assert c.passed


def test_fewer_than_min_seeds_asks_for_more_and_too_many_raises():
    rule = SelectionRule()
    d = decide_selection([0.5, 0.5], rule)
    assert d.action == "more"
    assert "2 of the 3" in d.reason
    with pytest.raises(ValueError):
        decide_selection([0.0] * (rule.max_seeds + 1), rule)


def test_nan_gain_rejects_at_once():
    d = decide_selection([0.1, float("nan"), 0.1], SelectionRule())
    assert d.action == "reject" and "pair 2" in d.reason
    c = decide_confirmation([0.1] * 5 + [float("nan")], ConfirmationRule(), alpha=0.05)
    assert c.action == "reject" and "pair 6" in c.reason


def test_undecided_at_the_cap_is_rejected_as_inconclusive():
    rule = SelectionRule()
    # mean +0.02 with sd about 0.06: the lower bound is below 0 and the upper bound above the target
    diffs = [0.10, -0.05, 0.08, -0.04, 0.09, -0.06, 0.07, -0.03, 0.06, -0.02]
    for n in range(rule.min_seeds, rule.max_seeds):
        assert decide_selection(diffs[:n], rule).action == "more"
    d = decide_selection(diffs, rule)
    assert d.action == "reject"
    assert "inconclusive" in d.reason


def _null_selection_rate(rule: SelectionRule, reps: int, seed: int, sd: float = 0.05) -> float:
    rng = np.random.default_rng(seed)
    passed = 0
    for _ in range(reps):
        passed += run_selection((sd * rng.standard_normal(rule.max_seeds)).tolist(), rule).action == "pass"
    return passed / reps


def test_null_pass_rate_matches_the_design_alpha():
    # futility nearly off and no minimum mean: the pass rate of a true-null candidate is the design alpha
    rule = SelectionRule(futility_beta=1e-6, min_mean_gain=-1.0)
    reps = 4000
    rate = _null_selection_rate(rule, reps, seed=11)
    se = math.sqrt(rule.alpha * (1 - rule.alpha) / reps)
    assert abs(rate - rule.alpha) < 3 * se, rate


def test_defaults_pass_a_null_less_often_than_alpha():
    rule = SelectionRule()
    rate = _null_selection_rate(rule, 3000, seed=12)
    assert rate <= rule.alpha
    assert rate > 0.01  # the futility rule does not make selection trivially strict


def test_calibrated_boundaries_hold_the_spent_level_on_independent_paths():
    looks = tuple(range(3, 11))
    c = np.array(calibrated_t_bounds(looks, 0.10, "hsd", -4.0))
    x = np.random.default_rng(5).standard_normal((200_000, 10))
    cs, cs2 = np.cumsum(x, 1), np.cumsum(x * x, 1)
    t = []
    for n in looks:
        m = cs[:, n - 1] / n
        t.append(m / np.sqrt((cs2[:, n - 1] - n * m * m) / (n - 1) / n))
    size = float((np.stack(t, 1) > c).any(1).mean())
    assert abs(size - 0.10) < 0.004
    # normal-theory boundaries carried to t are laxer at these few seeds
    z = group_sequential_bounds(looks, 0.10, "hsd", -4.0)
    tz = np.array([stats.t.isf(stats.norm.sf(zk), n - 1) for zk, n in zip(z, looks, strict=True)])
    assert float((np.stack(t, 1) > tz).any(1).mean()) > size


def test_normal_theory_boundaries_match_published_obrien_fleming_values():
    # Lan-DeMets O'Brien-Fleming, 5 equally spaced looks, one-sided 0.025 (as tabulated by gsDesign)
    got = group_sequential_bounds((1, 2, 3, 4, 5), 0.025, "obrien-fleming")
    assert got == pytest.approx((4.8769, 3.3569, 2.6803, 2.2898, 2.0310), abs=2e-3)
    assert group_sequential_bounds((7,), 0.05, "pocock")[0] == pytest.approx(stats.norm.isf(0.05))


def test_spending_functions_reach_the_level_at_the_end():
    for kind, gamma in (("obrien-fleming", 0.0), ("pocock", 0.0), ("hsd", -4.0), ("hsd", 1.0), ("hsd", 0.0)):
        assert spending(kind, 0.1, 1.0, gamma) == pytest.approx(0.1)
        assert spending(kind, 0.1, 0.0, gamma) == 0.0
        assert spending(kind, 0.1, 0.3, gamma) < spending(kind, 0.1, 0.6, gamma)
    with pytest.raises(ValueError):
        spending("linear", 0.1, 0.5)


# ------------------------------------------------------------------------------------------------- confirmation

def test_confirmation_pass_rate_of_a_null_matches_its_level():
    rng = np.random.default_rng(21)
    conf = ConfirmationRule(min_mean_gain=-1.0)
    level = 0.05
    reps = 6000
    hits = sum(decide_confirmation((0.05 * rng.standard_normal(conf.seeds)).tolist(), conf, alpha=level).passed
               for _ in range(reps))
    assert abs(hits / reps - level) < 3 * math.sqrt(level * (1 - level) / reps)


def test_confirmation_is_stricter_than_selection():
    sel, conf = SelectionRule(), ConfirmationRule()
    looks = selection_boundaries(sel)
    # every level a run can offer, after any mix of passes, is at most max_alpha: below the selection's alpha
    # and below the loosest nominal level of any selection look (its last)
    loosest = max(b["nominal_alpha"] for b in looks)
    control = RunErrorControl()
    for outcome in [True, True, False, True, False, False, True]:
        used = decide_confirmation([0.05] * conf.seeds, conf, alpha=control.next_level()).numbers["level"]
        assert used <= conf.max_alpha < loosest < sel.alpha
        control.record(outcome)
    # ten gains whose t statistic lies between the last selection boundary and the confirmation's critical
    # value at the same ten pairs: selection passes them, a ten-pair confirmation does not
    t_last = looks[-1]["t_pass"]
    t_conf = float(stats.t.isf(conf.max_alpha, 9))
    assert t_conf > t_last
    pattern = np.array([1.2, -0.8, 0.4, -1.5, 0.9, 0.1, -0.3, 1.6, -0.6, -1.0])
    pattern = (pattern - pattern.mean()) / pattern.std(ddof=1)
    sd = 0.03
    diffs = ((t_last + t_conf) / 2 * sd / math.sqrt(10) + sd * pattern).tolist()
    assert decide_selection(diffs, sel).action == "pass"
    ten = ConfirmationRule(seeds=10)
    c = decide_confirmation(diffs, ten, alpha=RunErrorControl().next_level())
    assert c.action == "reject", c.reason


def test_confirmation_needs_exactly_its_seed_count():
    conf = ConfirmationRule()
    with pytest.raises(ValueError):
        decide_confirmation([0.1] * (conf.seeds - 1), conf, alpha=0.05)
    with pytest.raises(ValueError):
        decide_confirmation([0.1] * conf.seeds, conf, alpha=0.0)


def test_fresh_seeds_avoid_every_used_seed():
    used = set(range(0, 10)) | {1000, 1002}
    got = fresh_seeds(used, 4, start=1000)
    assert got == [1001, 1003, 1004, 1005]
    assert not set(got) & used


# ----------------------------------------------------------------------------------------------- run control

def test_run_levels_decrease_and_sum_to_at_most_alpha_total():
    control = RunErrorControl(alpha_total=0.10)
    levels = []
    for _ in range(500):
        levels.append(control.next_level())
        control.record(False)
    assert all(b < a for a, b in zip(levels, levels[1:], strict=False))
    assert sum(levels) <= 0.10 + 1e-12
    assert control.base_spent == pytest.approx(sum(levels))
    assert levels[0] == pytest.approx(0.10 / 1.2020569, rel=1e-6)  # 1 / zeta(3)
    six = RunErrorControl(alpha_total=0.10, exponent=2.0)
    assert six.next_level() == pytest.approx(0.10 * 6 / math.pi**2)


def test_fallback_hands_on_the_level_of_a_passed_confirmation_but_stays_within_budget():
    control = RunErrorControl(alpha_total=0.10)
    first = control.record(True)
    second_offer = control.next_level()
    assert second_offer == pytest.approx(first + 0.10 * control.weight(2))
    control.record(False)
    assert control.next_level() == pytest.approx(0.10 * control.weight(3))
    # an unbroken chain of passes never offers more than alpha_total
    chain = RunErrorControl(alpha_total=0.10)
    for _ in range(50):
        assert chain.next_level() <= 0.10
        chain.record(True)
    plain = RunErrorControl(alpha_total=0.10, recycle=False)
    plain.record(True)
    assert plain.next_level() == pytest.approx(0.10 * plain.weight(2))


def test_run_control_round_trips_through_json():
    control = RunErrorControl(alpha_total=0.08, exponent=2.5)
    control.record(False, proposal_id="p1")
    control.record(True, proposal_id="p2")
    blob = json.dumps(control.to_dict())
    back = RunErrorControl.from_dict(json.loads(blob))
    assert back == control
    assert back.next_level() == control.next_level()
    back.record(False)
    control.record(False)
    assert back.to_dict() == control.to_dict()
    with pytest.raises(ValueError):
        RunErrorControl.from_dict({**control.to_dict(), "kind": "lord"})


def test_false_promotions_in_runs_of_null_candidates_stay_under_alpha_total():
    # a harsh setting: a lax selection (alpha 0.3) lets many nulls reach confirmation; the run-level control
    # must still keep P(any false promotion among 20) at or below alpha_total
    rng = np.random.default_rng(8)
    sel = SelectionRule(alpha=0.3, futility_beta=0.05)
    conf = ConfirmationRule(min_mean_gain=-1.0, max_alpha=0.4)
    runs, any_fp = 300, 0
    for _ in range(runs):
        control = RunErrorControl(alpha_total=0.10)
        hit = False
        for _ in range(20):
            if run_selection((0.05 * rng.standard_normal(sel.max_seeds)).tolist(), sel).action == "pass":
                c = decide_confirmation((0.05 * rng.standard_normal(conf.seeds)).tolist(), conf,
                                        alpha=control.next_level())
                control.record(c.passed)
                hit |= c.passed
        any_fp += hit
    assert any_fp / runs <= 0.10 + 2 * math.sqrt(0.1 * 0.9 / runs)


# ------------------------------------------------------------------------------------------------ texts, guard

def test_decisions_carry_reasons_with_their_numbers():
    d = decide_selection([0.06, 0.04, 0.05, 0.07, 0.05, 0.06], SelectionRule())
    for key in ("n", "mean", "sd", "lower_bound", "upper_bound", "t_pass", "t_futility", "alpha_spent",
                "nominal_alpha"):
        assert key in d.numbers
    assert f"{d.numbers['mean']:+.4f}" in d.reason
    assert f"{d.numbers['lower_bound']:+.4f}" in d.reason
    assert f"{d.numbers['t_pass']:.3f}" in d.reason
    assert d.reason.endswith(".") and len(NUMBER.findall(d.reason)) >= 5
    c = decide_confirmation([0.01, -0.02, 0.03, 0.0, 0.02, -0.01], ConfirmationRule(), alpha=0.05)
    assert c.action == "reject"
    assert f"{c.numbers['lower_bound']:+.4f}" in c.reason and f"{c.numbers['level']:.4f}" in c.reason
    assert json.loads(json.dumps(c.to_dict()))["action"] == "reject"


def test_rule_texts_name_the_numbers():
    text = describe()
    assert "{" not in text and RULE_TEXT.startswith("promotion")
    for piece in ("3 pairs", "up to 10", "alpha 0.1", "6 fresh seed pairs", "0.075", "zeta(3)",
                  "noise guard (side by side)", "25%", "more than 3 void pairs"):
        assert piece in text
    serial = describe(guard=NoiseGuard(side_by_side=False, tolerance=0.1))
    assert "noise guard (serial pairs)" in serial and "10%" in serial


def test_throughput_drift_guard():
    ok, why = throughput_drift(98.0, 100.0, 0.10)
    assert ok and "-2.0%" in why
    ok, why = throughput_drift(80.0, 100.0, 0.10)
    assert not ok and "-20.0%" in why and "void" in why
    ok, why = throughput_drift(125.0, 100.0, 0.10)
    assert not ok and "+25.0%" in why
    assert throughput_drift(float("nan"), 100.0, 0.1)[0] is False
    assert throughput_drift(100.0, 0.0, 0.1)[0] is False


def test_pair_conditions_void_only_when_the_parent_moved_alone():
    parents = [5.77, 11.6, 12.3, 11.9]
    # both sides slowed alike in the first pair: the parent moved, the ratio did not
    ok, why = pair_conditions(parents, [p * 0.9 for p in parents], 0, 0.25)
    assert ok and "moved with it" in why
    # the parent alone slowed in the first pair: void
    ok, why = pair_conditions(parents, [10.5, 10.4, 11.1, 10.7], 0, 0.25)
    assert not ok and "did not move with it" in why and "void this pair" in why and "-50.9%" in why
    # the candidate alone claims another rate while the parent is at its median: kept
    ok, _ = pair_conditions(parents, [10.5, 1.0, 11.1, 10.7], 1, 0.25)
    assert ok
    # the parent moved and the candidate gave no rate: void (the parent-only guard)
    ok, why = pair_conditions(parents, [None, 10.4, 11.1, 10.7], 0, 0.25)
    assert not ok and "no steps/s" in why
    # no parent rate: nothing to judge
    assert pair_conditions([None, 11.6], [5.0, 10.0], 0, 0.25)[0]
    with pytest.raises(ValueError):
        pair_conditions([1.0], [1.0, 2.0], 0)


def test_steps_per_second_reads_only_positive_finite_numbers():
    assert steps_per_second({"steps_per_second": 11.6}) == 11.6
    for bad in (None, "12", True, 0, -1.0, float("nan"), float("inf")):
        assert steps_per_second({"steps_per_second": bad}) is None
    assert steps_per_second(None) is None and steps_per_second({}) is None
