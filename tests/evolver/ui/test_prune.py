"""`evolve.py prune` and the merge commit message: worktrees go, unmerged branches go on request (their stored
files stay on the record branch and history still lists them), runs that never got going are deleted whole, and
a merge commit reads as the record of one improvement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolver.record.git_record import EvolutionRecord, list_runs
from evolver.record.merge_message import merge_message, merge_trailers
from evolver.record.store import ProposalStore
from evolver.ui.cli import collect_history, main
from tests.evolver.conftest import git
from tests.evolver.record.test_record import FakeProposal, edit


def _worktrees(repo: Path) -> list[str]:
    return [line.split()[1] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def _run_with_two_candidates(repo: Path, run_id: str) -> None:
    with EvolutionRecord(repo, run_id=run_id) as rec:
        store = ProposalStore(rec)
        good = rec.create_candidate("p-good")
        edit(good.path / "hrm/model.py", "v * 2.0", "v * 4.0")
        rec.commit_candidate(good, FakeProposal("p-good"))
        store.save_proposal({"id": "p-good", "title": "good"}, diff=rec.diff(good))
        rec.merge_candidate(good, {"delta": 0.1})
        store.save_result("p-good", {"verdict": "merged", "scores": {"delta": 0.1}})
        bad = rec.create_candidate("p-bad")
        edit(bad.path / "hrm/model.py", "v * 4.0", "v * 5.0")
        rec.commit_candidate(bad, FakeProposal("p-bad"))
        store.save_proposal({"id": "p-bad", "title": "bad"}, diff=rec.diff(bad))
        rec.record_result(bad, "rejected", {"delta": -0.2})
        store.save_result("p-bad", {"verdict": "rejected", "scores": {"delta": -0.2}})
        rec.run_worktree()


def test_prune_removes_worktrees_and_on_request_unmerged_branches(user_repo: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _run_with_two_candidates(user_repo, "run-p")
    assert len(_worktrees(user_repo)) == 5  # the user's, best, record, two candidates
    assert main(["prune", "--repo", str(user_repo), "--dry-run"]) == 0
    assert len(_worktrees(user_repo)) == 5 and "would remove" in capsys.readouterr().out
    assert main(["prune", "--repo", str(user_repo)]) == 0
    assert _worktrees(user_repo) == [str(user_repo)]
    assert "evolve/run-p/cand/p-bad" in git(user_repo, "branch", "--list", "evolve/*")
    assert main(["prune", "--repo", str(user_repo), "--run-id", "run-p", "--delete-rejected"]) == 0
    branches = git(user_repo, "branch", "--list", "evolve/*")
    assert "cand/p-bad" not in branches and "cand/p-good" in branches
    with EvolutionRecord(user_repo, "run-p", create=False) as rec:
        rows = {r.proposal_id: r for r in collect_history(rec)}
    assert rows["p-bad"].verdict == "rejected" and rows["p-bad"].branch is None  # still listed, from the record
    assert rows["p-good"].verdict == "merged"
    assert git(user_repo, "status", "--porcelain") == ""


def test_prune_failed_runs_deletes_only_runs_that_never_got_going(user_repo: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    _run_with_two_candidates(user_repo, "run-kept")
    with EvolutionRecord(user_repo, run_id="run-dead") as rec:
        rec.run_worktree()
    state = user_repo / ".hrm-evolve" / "runs" / "run-dead"
    state.mkdir(parents=True)
    (state / "secret").write_text("x")
    assert list_runs(user_repo) == ["run-dead", "run-kept"]
    assert main(["prune", "--repo", str(user_repo), "--failed-runs"]) == 0
    assert list_runs(user_repo) == ["run-kept"]
    assert not state.exists()
    assert "run-dead" not in git(user_repo, "branch", "--list", "evolve/*")
    assert main(["prune", "--repo", str(user_repo), "--run-id", "no-such-run"]) != 0
    assert "no run 'no-such-run'" in capsys.readouterr().err


def test_merge_message_carries_title_rationale_citations_numbers_and_rule() -> None:
    proposal = {"id": "p", "title": "Share one network", "rationale": "TRM shares the net " * 12,
                "citations": [{"arxiv_id": "2510.04871", "title": "Less is More", "claim": "one net"}]}
    comparison = {"seeds": [0, 1, 2], "baseline": [0.5, 0.52, 0.51], "candidate": [0.6, 0.61, 0.59],
                  "gains": [0.1, 0.09, 0.08], "confirmation_seeds": [100000, 100001],
                  "confirmation_baseline": [0.5, 0.5], "confirmation_candidate": [0.58, 0.6],
                  "confirmation_gains": [0.08, 0.1], "confirmation_level": 0.083, "lower_bound": 0.031,
                  "rule": "promotion: the rule text", "void_pairs": 1,
                  "throughput": [{"void": False, "parent_steps_per_second": 10.0, "candidate_steps_per_second": 8.0},
                                 {"void": True, "parent_steps_per_second": 99.0, "candidate_steps_per_second": 1.0}]}
    text = merge_message(proposal, comparison, {"reason": "confirmed"}, "exact_accuracy")
    subject, _, body = text.partition("\n\n")
    assert subject == "Share one network"
    assert "TRM shares the net" in body and max(len(line) for line in body.splitlines()) <= 100
    assert "- arXiv:2510.04871 Less is More: one net" in body
    assert "parent    0.5000, 0.5200, 0.5100" in body and "mean gain +0.0900" in body
    assert "at one-sided level 0.083:" in body and "lower bound +0.0310" in body
    capped = merge_message(proposal, {**comparison, "level": 0.075}, {}, "exact_accuracy")
    assert "at one-sided level 0.075 (the run offered 0.083):" in capped
    assert "parent 10.00, candidate 8.00; void pairs 1" in body  # the void pair's rates are left out
    assert "Rule: promotion: the rule text" in body and "Decision: confirmed" in body
    trailers = dict(merge_trailers(proposal, comparison, "exact_accuracy"))
    assert trailers == {"Metric": "exact_accuracy", "Seeds": "0, 1, 2", "Confirmation-Seeds": "100000, 100001",
                        "Citations": "2510.04871"}


def test_merge_commit_is_the_lineage_and_carries_the_message(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-msg") as rec:
        start = rec.best_commit()
        cand = rec.create_candidate("p-m")
        edit(cand.path / "hrm/model.py", "v * 2.0", "v * 3.0")
        rec.commit_candidate(cand, FakeProposal("p-m"))
        ProposalStore(rec).save_proposal({"id": "p-m", "title": "t"})
        merge = rec.merge_candidate(cand, {"delta": 0.05, "lower_bound": 0.01}, message="Title\n\nBody text",
                                    trailers=[("Metric", "token_accuracy")])
        body = git(user_repo, "log", "-1", "--format=%B", merge)
        assert body.startswith("Title\n\nBody text\n")
        for line in ("Proposal-Id: p-m", "Verdict: merged", "Delta: 0.05", "Lower-Bound: 0.01",
                     "Metric: token_accuracy"):
            assert line in body
        assert git(user_repo, "log", "--first-parent", "--format=%H", f"{start}..{rec.run_branch}").split() == [merge]
        assert json.loads(git(user_repo, "notes", "--ref=refs/notes/evolve", "show", merge))["verdict"] == "merged"
