"""result.json's contract (evolver/candidate_result.py): what the run writes is validated on the way into the
record and read back typed; fields it does not know pass through unchanged."""

from __future__ import annotations

import pytest

from evolver.candidate_result import CandidateResult


def test_a_result_round_trips_with_its_extra_fields_and_no_added_defaults() -> None:
    data = {"proposal_id": "p1", "verdict": "rejected", "cycle": 2, "comparison": {"mean_gain": -0.01},
            "no_effect_check": {"seconds": 3.5}, "guard": [1, 2]}
    result = CandidateResult.of(data)
    assert result.to_json() == data
    assert result.mean_gain == -0.01 and result.cycle == 2


@pytest.mark.parametrize("bad, words", [
    ({"proposal_id": "p1"}, "verdict: Field required"),
    ({"verdict": "rejected", "cycle": "second"}, "cycle"),
    ({"verdict": "accepted"}, "unknown verdict 'accepted'"),
    ({"verdict": "merged", "timings": {"llm": "slow"}}, "timings.llm"),
])
def test_a_malformed_result_is_refused_naming_each_problem(bad: dict, words: str) -> None:
    with pytest.raises(ValueError, match="is not a candidate result|unknown verdict") as info:
        CandidateResult.of(bad, where="proposals/r/p1/result.json")
    assert words in str(info.value) and "proposals/r/p1/result.json" in str(info.value)
