"""The fidelity of the cheap stages (evolver/judge/fidelity.py) on hand-built result dicts, and its report sections.

Spearman's rho on four points is checked against the hand formula 1 - 6 * sum(d^2) / (n (n^2 - 1)) (or the
Pearson correlation of mid-ranks when there are ties), and its two-sided p-value against the closed form of
the t test with n - 2 = 2 degrees of freedom: t = r sqrt(2 / (1 - r^2)) and P(|T| > t) = 1 - t / sqrt(t^2 + 2),
which is exactly 1 - |r|.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from evolver.judge import fidelity
from evolver.ui.report import summarize, text_report, write_report
from evolver.ui.report_html import write_html_report


def cand(pid: str, verdict: str, gain: float | None = None, ratio: float | None = None,
         first: float | None = None, screen: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A result.json as evolver/run/candidate.py writes it, with only the fields the fidelity reads."""
    r: dict[str, Any] = {"proposal_id": pid, "cycle": int(pid[1:]) if pid[1:].isdigit() else 0, "verdict": verdict,
                         "failed_stage": None, "timings": {"train": 10.0}}
    if ratio is not None:
        r["stages"] = [{"stage": "safety", "ok": True, "reason": "", "metrics": {}},
                       {"stage": "smoke", "ok": True, "reason": "", "metrics": {"loss": 2.0, "parameters": 10}},
                       {"stage": "trainability", "ok": ratio <= 0.75, "reason": "",
                        "metrics": {"loss_step_early": 2.0, "loss_step_final": 2.0 * ratio, "loss_ratio": 99.0}}]
    if gain is not None:
        pairs = [{"seed": 0, "phase": "selection", "gain": gain if first is None else first, "void": False},
                 {"seed": 1, "phase": "selection", "gain": gain, "void": False}]
        r["judgement"] = {"verdict": "passed" if verdict in ("merged", "pending-review") else verdict,
                          "pairs": pairs}
        r["comparison"] = {"mean_gain": gain, "seeds": [0, 1]}
    if screen is not None:
        r["screen"] = {"budget_seconds": 5.0, "cohort": 0, "rank": 0, "cohort_size": 4, **screen}
    r.update(extra)
    return r


GAINS = [0.10, 0.05, 0.00, -0.05]


def stage(results: list[dict[str, Any]], name: str, keep_fraction: float = 0.5) -> dict[str, Any]:
    return fidelity.assess(results, keep_fraction)["stages"][name]


# ================================================================================================ correlation
def test_concordant_stage_ranks_perfectly_and_drops_no_winner() -> None:
    results = [cand(f"c{i}", "merged" if i == 0 else "rejected", g, ratio=0.4 + 0.1 * i)
               for i, g in enumerate(GAINS)]
    t = stage(results, "trainability")
    assert t["n"] == 4 and t["candidates"] == 4 and t["kept"] == 2 and t["winners"] == 1
    assert t["spearman"] == pytest.approx(1.0) and t["p_value"] == pytest.approx(0.0, abs=1e-12)
    assert t["dropped_winners"] == 0


def test_anti_concordant_stage_drops_the_winner() -> None:
    # the best full gain has the worst (highest) loss ratio
    results = [cand(f"c{i}", "merged" if i == 0 else "rejected", g, ratio=0.7 - 0.1 * i)
               for i, g in enumerate(GAINS)]
    t = stage(results, "trainability")
    assert t["spearman"] == pytest.approx(-1.0)
    assert t["dropped_winners"] == 1
    assert stage(results, "trainability", keep_fraction=1.0)["dropped_winners"] == 0


def test_spearman_against_hand_computed_values() -> None:
    # cheap ranks 1 2 3 4 against full ranks 1 3 2 4: sum d^2 = 2, rho = 1 - 12/60 = 0.8, p = 1 - 0.8
    full = [0.1, 0.3, 0.2, 0.4]
    results = [cand(f"c{i}", "rejected", g, first=float(i + 1)) for i, g in enumerate(full)]
    f = stage(results, "first pair")
    assert f["n"] == 4
    assert f["spearman"] == pytest.approx(0.8) and f["p_value"] == pytest.approx(0.2)
    # the screen gain as the predictor gives the same numbers through the same function
    results = [cand(f"c{i}", "rejected", g, screen={"gain": float(i + 1), "kept": True})
               for i, g in enumerate(full)]
    s = stage(results, "screen")
    assert s["spearman"] == pytest.approx(0.8) and s["p_value"] == pytest.approx(0.2)


def test_ties_use_mid_ranks() -> None:
    # cheap 1 1 2 3 -> mid-ranks 1.5 1.5 3 4 against 1 2 3 4: rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    results = [cand(f"c{i}", "rejected", g, first=x) for i, (g, x) in
               enumerate(zip([0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 2.0, 3.0], strict=True))]
    f = stage(results, "first pair")
    rho = 3 / math.sqrt(10)
    assert f["spearman"] == pytest.approx(rho) and f["p_value"] == pytest.approx(1 - rho)


def test_constant_side_has_no_correlation_and_ties_at_the_cut_are_an_expectation() -> None:
    results = [cand(f"c{i}", "merged" if i == 3 else "rejected", g, ratio=0.5) for i, g in enumerate(GAINS)]
    t = stage(results, "trainability")
    assert t["n"] == 4 and t["spearman"] is None and t["p_value"] is None
    assert t["kept"] == 2 and t["dropped_winners"] == pytest.approx(0.5)  # one winner in a tie of 4 for 2 places
    # constant full gains with varied cheap values: no correlation either
    flat = [cand(f"c{i}", "rejected", 0.0, ratio=0.3 + 0.1 * i) for i in range(4)]
    assert stage(flat, "trainability")["spearman"] is None
    lines = fidelity.describe(fidelity.assess(results))
    assert any(line.startswith("trainability: no rank correlation over 4 judged") for line in lines)
    assert any("would drop 0.50 of 1 winner(s)" in line for line in lines)


def test_expected_dropped_and_kept_count() -> None:
    ranked = [(3.0, False), (2.0, True), (2.0, False), (2.0, True), (1.0, True)]
    # keep 2: the 3.0 one, then 1 place for a tie of 3 holding 2 winners -> 2 * (1 - 1/3), plus the 1.0 winner
    assert fidelity.expected_dropped(ranked, 2) == pytest.approx(2 * (2 / 3) + 1)
    assert fidelity.expected_dropped(ranked, 4) == pytest.approx(1)
    assert fidelity.expected_dropped(ranked, 5) == 0
    assert fidelity.expected_dropped([], 0) == 0
    assert [fidelity.kept_count(n, 0.5) for n in (0, 1, 2, 3, 4, 5)] == [0, 1, 1, 2, 2, 3]
    assert fidelity.kept_count(25, 0.28) == 7 and fidelity.kept_count(10, 0.31) == 4
    assert fidelity.kept_count(7, 1.0) == 7
    for bad in (0.0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError):
            fidelity.assess([], bad)


def test_too_few_judged_says_so() -> None:
    results = [cand("c0", "merged", 0.1, ratio=0.4), cand("c1", "rejected", -0.1, ratio=0.6),
               cand("c2", "failed", ratio=0.9)]  # failed at trainability: a cheap value, no full score
    summary = fidelity.assess(results)
    t = summary["stages"]["trainability"]
    assert summary["judged"] == 2 and summary["winners"] == 1
    assert t["n"] == 2 and t["candidates"] == 3 and t["spearman"] is None and t["kept"] == 2
    assert t["dropped_winners"] == 0
    lines = fidelity.describe(summary)
    assert "too few candidates were judged (2, need 3)" in lines[1]
    assert any(line.startswith("trainability: too few candidates judged with it (2, need 3)") for line in lines)
    assert not any(line.startswith("screen") for line in lines)  # no screen in this run


# ================================================================================================ the screen
def test_screen_counts_real_cuts_and_the_audited_winner_it_dropped() -> None:
    results = [
        cand("c0", "merged", 0.10, screen={"gain": 0.05, "kept": True}),
        cand("c1", "rejected", -0.02, screen={"gain": 0.02, "kept": True}),
        cand("c2", "pending-review", 0.08, screen={"gain": -0.01, "kept": False, "audited": True}),
        cand("c3", "rejected", -0.04, screen={"gain": -0.03, "kept": False, "audited": True}),
        cand("c4", "rejected", screen={"gain": -0.06, "kept": False}),  # screened out, never judged
        cand("c5", "rejected", screen={"gain": None, "kept": False}),  # a void screening pair
    ]
    summary = fidelity.assess(results)
    s = summary["stages"]["screen"]
    assert summary["screen"] == {"screened": 6, "kept": 2, "audited": 2}
    assert s["candidates"] == 5 and s["n"] == 4 and s["kept"] == 2 and s["winners"] == 2
    assert s["dropped_winners"] == 1
    # best first, screen ranks 1 2 3 4 against full ranks 1 3 2 4: sum d^2 = 2, rho = 0.8 (c4 has no full score)
    assert s["spearman"] == pytest.approx(0.8) and s["p_value"] == pytest.approx(0.2)
    lines = fidelity.describe(summary)
    assert lines[-1] == ("screen: Spearman +0.800 (p 0.2) over 4 judged; 6 screened, 2 kept, 2 screened out but "
                         "audited; it screened out 1 of its 2 winner(s)")


# ================================================================================================ reading
def test_missing_and_malformed_fields_count_as_missing() -> None:
    junk: list[Any] = [
        {"verdict": "invalid"},
        {"verdict": "failed", "stages": "nope", "comparison": "x", "judgement": []},
        {"verdict": "rejected", "comparison": {"mean_gain": float("nan")},
         "stages": [{"stage": "trainability", "metrics": {"loss_step_early": 0.0, "loss_step_final": 1.0}}]},
        {"verdict": "rejected", "comparison": {"mean_gain": True},
         "stages": [{"stage": "trainability", "metrics": {"loss_step_early": "2", "loss_step_final": 1.0}}]},
        {"verdict": "rejected", "comparison": {"mean_gain": 0.1},
         "stages": [{"stage": "trainability", "metrics": {"loss_step_early": 2.0, "loss_step_final": math.inf}}],
         "screen": {"gain": "0.3", "kept": "yes"}},
        "not a dict",
    ]
    summary = fidelity.assess(junk)
    assert summary["candidates"] == 5 and summary["judged"] == 1 and summary["winners"] == 0
    for name in fidelity.STAGES:
        assert summary["stages"][name]["candidates"] == 0 and summary["stages"][name]["n"] == 0
    assert summary["screen"] == {"screened": 1, "kept": 0, "audited": 0}
    assert summary["stages"]["screen"]["kept"] is None
    json.dumps(summary, allow_nan=False)  # plain JSON
    assert fidelity.describe(fidelity.assess([]))[0].startswith("0 of 0 candidate(s)")


def test_readers() -> None:
    r = cand("c0", "rejected", 0.1, ratio=0.5)
    assert fidelity.trainability_value(r) == pytest.approx(-0.5)  # recomputed, the stage's loss_ratio ignored
    r["judgement"]["pairs"] = [
        {"seed": 9, "phase": "confirmation", "gain": 0.9, "void": False},
        {"seed": 0, "phase": "selection", "gain": 0.7, "void": True},
        {"seed": 1, "phase": "selection", "gain": None, "void": False},
        {"seed": 2, "phase": "selection", "gain": -0.2, "void": False},
        {"seed": 3, "phase": "selection", "gain": 0.4, "void": False},
    ]
    assert fidelity.first_pair_value(r) == -0.2
    assert fidelity.full_score(r) == 0.1 and fidelity.screen_value(r) is None
    # a winner of the judgement that a reviewer rejected still counts as a winner
    assert fidelity.is_winner({"verdict": "rejected-by-reviewer", "judgement": {"verdict": "passed"}})
    assert not fidelity.is_winner({"verdict": "rejected", "judgement": {"verdict": "rejected"}})
    assert fidelity.is_winner({"verdict": "pending-review"})


def test_save_writes_json_atomically(tmp_path: Path) -> None:
    summary = fidelity.assess([cand("c0", "merged", 0.1, ratio=0.4)])
    path = fidelity.save(tmp_path / "run", summary)
    assert path == tmp_path / "run" / "fidelity.json"
    assert json.loads(path.read_text()) == summary
    assert [p.name for p in path.parent.iterdir()] == ["fidelity.json"]  # no temporary file left


# ================================================================================================ the reports
RUN_RESULTS = [cand(f"c{i}", "merged" if i == 0 else "rejected", g, ratio=0.4 + 0.1 * i, first=[0.2, 0.1, 0.3, 0.0][i])
               for i, g in enumerate(GAINS)]


def test_text_and_html_reports_show_the_section(tmp_path: Path) -> None:
    paths = write_report(RUN_RESULTS, tmp_path)
    text = paths["text"].read_text()
    assert "Fidelity of the cheap stages" in text
    assert "  trainability: Spearman +1.000 (p 0) over 4 judged; keeping the top 50% (2 of 4) would drop 0 of " \
           "1 winner(s)" in text
    # first pair 0.2 0.1 0.3 0.0 -> ranks 2 3 1 4 against 1 2 3 4: sum d^2 = 6, rho = 1 - 36/60 = 0.4
    assert "  first pair: Spearman +0.400 (p 0.6) over 4 judged" in text
    assert json.loads(paths["fidelity"].read_text()) == summarize(RUN_RESULTS)["fidelity"]
    assert json.loads(paths["summary"].read_text())["summary"]["fidelity"]["judged"] == 4

    page = paths["html"].read_text()
    assert '<h2 id="fidelity">Fidelity of the cheap stages</h2>' in page
    assert '<tr data-stage="trainability">' in page and "<td>+1.000</td>" in page and "<td>+0.400</td>" in page
    assert "<td>0 of 1</td>" in page
    # the page computes the section from the results, not from the summary it is handed
    few = write_html_report(tmp_path / "few.html", RUN_RESULTS[:2]).read_text()
    assert "too few candidates were judged (2, need 3)" in few
    assert "too few candidates were judged" in text_report(summarize(RUN_RESULTS[:1]))


def test_the_early_stop_counts_its_stops_and_the_winners_its_audit_saw() -> None:
    from evolver.judge.fidelity import assess, describe

    rows = [{"verdict": "rejected", "early_stop": [{"enforced": True, "gap": 0.3}]},
            {"verdict": "merged", "early_stop": [{"enforced": False, "gap": 0.2}]},
            {"verdict": "rejected", "early_stop": [{"enforced": False, "gap": 0.2}]},
            {"verdict": "merged"}, {"verdict": "rejected", "early_stop": "garbage"}]
    summary = assess(rows)
    assert summary["early_stop"] == {"stopped": 1, "recorded": 2, "recorded_winners": 1}
    assert any(line.startswith("early stop: stopped 1 candidate(s); 2 stop(s)") for line in describe(summary))
    assert not any(line.startswith("early stop") for line in describe(assess([{"verdict": "merged"}])))
