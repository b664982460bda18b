"""`evolve.py review`: a candidate that passed without --auto-apply waits; approving it merges it into the lineage
with the same message and trailers an automatic merge has (verdict ``merged``, plus who decided), rejecting it
records ``rejected-by-reviewer``; both decisions land in result.json and the git note."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolver.record.git_record import EvolutionRecord
from evolver.record.store import ProposalStore
from evolver.ui.cli import collect_history, main
from tests.evolver.conftest import git
from tests.evolver.record.test_record import FakeProposal, edit

COMPARISON = {"metric": "token_accuracy", "seeds": [0, 1, 2], "baseline": [0.5, 0.5, 0.5],
              "candidate": [0.6, 0.6, 0.6], "gains": [0.1, 0.1, 0.1], "mean_gain": 0.1, "lower_bound": 0.04,
              "confirmation_seeds": [100000, 100001], "confirmation_baseline": [0.5, 0.5],
              "confirmation_candidate": [0.6, 0.6], "confirmation_gains": [0.1, 0.1], "rule": "promotion: rule"}


def _pending(repo: Path, run_id: str, pid: str, old: str, new: str) -> None:
    with EvolutionRecord(repo, run_id=run_id) as rec:
        cand = rec.create_candidate(pid)
        edit(cand.path / "hrm/model.py", old, new)
        rec.commit_candidate(cand, FakeProposal(pid))
        store = ProposalStore(rec)
        store.save_proposal({"id": pid, "title": f"Title of {pid}", "rationale": "why",
                             "citations": [{"arxiv_id": "2510.04871", "title": "TRM", "claim": "c"}]})
        rec.record_result(cand, "pending-review", {"delta": 0.1})
        store.save_result(pid, {"verdict": "pending-review", "comparison": COMPARISON,
                                "judgement": {"reason": "confirmed on fresh seeds", "rule": "promotion: rule"}})


def test_approve_merges_with_the_full_message_and_reject_is_recorded(user_repo: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _pending(user_repo, "run-rv", "p-yes", "v * 2.0", "v * 3.0")
    _pending(user_repo, "run-rv", "p-no", "v * 2.0", "v * 7.0")
    assert main(["review", "--repo", str(user_repo), "--approve", "p-yes", "--reject", "p-no"]) == 0
    out = capsys.readouterr().out
    assert "p-yes: merged" in out and "p-no: rejected-by-reviewer" in out
    body = git(user_repo, "log", "-1", "--first-parent", "--format=%B", "evolve/run-rv/best")
    assert body.startswith("Title of p-yes\n\nwhy\n")
    for line in ("Verdict: merged", "Proposal-Id: p-yes", "Metric: token_accuracy", "Reviewed: approved ",
                 "Confirmation-Seeds: 100000, 100001", "Decision: confirmed on fresh seeds"):
        assert line in body, line
    with EvolutionRecord(user_repo, "run-rv", create=False) as rec:
        store = ProposalStore(rec)
        assert store.result("p-yes")["verdict"] == "merged" and store.result("p-yes")["merge_commit"]
        assert store.result("p-no")["verdict"] == "rejected-by-reviewer"
        rows = {r.proposal_id: r.verdict for r in collect_history(rec)}
        tip = rec.candidate_info("p-no").tip
    assert rows == {"p-yes": "merged", "p-no": "rejected-by-reviewer"}
    assert json.loads(git(user_repo, "notes", "--ref=refs/notes/evolve", "show", tip))["verdict"] == \
        "rejected-by-reviewer"
    # a decided candidate cannot be decided again
    assert main(["review", "--repo", str(user_repo), "--approve", "p-no"]) != 0
