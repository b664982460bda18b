"""The git evolution record on real temporary repositories."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import git as gitpython
import pytest

from evolver.record.git_record import (
    CandidateExists,
    EvolutionRecord,
    MergeConflict,
    RecordError,
    RunNotFound,
    list_runs,
    trailer_key,
)
from tests.evolver.conftest import git, git_children


@dataclass
class Citation:
    arxiv_id: str


@dataclass
class Provenance:
    provider: str = "offline"
    model: str = "test-model"
    prompt_hash: str = "sha256:abc123"
    parent_commit: str = ""


@dataclass
class FakeProposal:
    """Carries the proposal fields the record reads (the real schema is exercised in test_cli_apply)."""

    id: str
    title: str = "Scale by three"
    citations: list[Citation] = field(default_factory=lambda: [Citation("2506.21734"), Citation("2510.04871")])
    provenance: Provenance | None = field(default_factory=Provenance)


def user_state(repo: Path) -> tuple[str, str, str]:
    return (git(repo, "symbolic-ref", "HEAD"), git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_new_run_branches_from_head_and_leaves_user_tree_alone(user_repo: Path) -> None:
    (user_repo / "scratch.txt").write_text("uncommitted user work\n")
    before = user_state(user_repo)
    with EvolutionRecord(user_repo) as rec:
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", rec.run_id)
        assert rec.run_branch == f"evolve/{rec.run_id}/best"
        assert rec.best_commit() == before[1].strip()
        assert not rec.resumed
        cand = rec.create_candidate("p-001")
        assert cand.path.is_dir() and str(cand.path).startswith(str(user_repo / ".git" / "hrm-evolve"))
        edit(cand.path / "hrm/model.py", "v * 2.0", "v * 3.0")
        rec.commit_candidate(cand, FakeProposal("p-001"))
        rec.merge_candidate(cand, {"score": 0.9, "delta": 0.1})
        rec.remove_candidate(cand)
    assert user_state(user_repo) == before
    assert (user_repo / "hrm/model.py").read_text().count("v * 2.0") == 1
    assert list_runs(user_repo) == [rec.run_id]


def test_commit_trailers_round_trip(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-a") as rec:
        cand = rec.create_candidate("p-trailers")
        edit(cand.path / "hrm/model.py", "return 64", "return 128")
        sha = rec.commit_candidate(cand, FakeProposal("p-trailers"), "Widen the model\n\n# Why\nmore room")
    with gitpython.Repo(user_repo) as repo:
        commit = repo.commit(sha)
        assert commit.summary == "Widen the model"
        assert "# Why" in commit.message  # markdown headings survive (no comment stripping)
        assert commit.parents[0].hexsha == cand.parent
        assert commit.trailers_dict == {
            "Proposal-Id": ["p-trailers"],
            "Parent": [cand.parent],
            "Provider": ["offline"],
            "Model": ["test-model"],
            "Prompt-Hash": ["sha256:abc123"],
            "Citations": ["2506.21734, 2510.04871"],
        }
    diff = rec.diff(cand)
    assert "-    return 64" in diff and "+    return 128" in diff


def test_hand_written_proposal_without_provenance_omits_empty_trailers(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-b") as rec:
        cand = rec.create_candidate("p-hand")
        edit(cand.path / "hrm/config.py", "EPOCHS = 2", "EPOCHS = 3")
        sha = rec.commit_candidate(cand, FakeProposal("p-hand", citations=[], provenance=None))
    with gitpython.Repo(user_repo) as repo:
        assert repo.commit(sha).trailers_dict == {"Proposal-Id": ["p-hand"], "Parent": [cand.parent]}


def test_merge_no_ff_with_score_trailers_and_notes(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-m") as rec:
        start = rec.best_commit()
        cand = rec.create_candidate("p-merge")
        edit(cand.path / "hrm/model.py", "v * 2.0", "v * 4.0")
        tip = rec.commit_candidate(cand, FakeProposal("p-merge"))
        merge = rec.merge_candidate(cand, {"exact_accuracy": 0.75, "delta": 0.05}, metrics={"steps": 12})
        assert rec.best_commit() == merge
        with gitpython.Repo(user_repo) as repo:
            commit = repo.commit(merge)
            assert [p.hexsha for p in commit.parents] == [start, tip]  # a real merge even if ff was possible
            trailers = commit.trailers_dict
        assert trailers["Proposal-Id"] == ["p-merge"]
        assert trailers["Verdict"] == ["merged"]
        assert trailers["Exact-Accuracy"] == ["0.75"]
        assert trailers["Delta"] == ["0.05"]
        note = json.loads(git(user_repo, "notes", "--ref=refs/notes/evolve", "show", tip))
        assert note["verdict"] == "merged" and note["scores"]["exact_accuracy"] == 0.75
        assert note["metrics"] == {"steps": 12} and note["merge"] == merge
        assert rec.read_note(merge)["candidate"] == tip
        info = rec.candidate_info("p-merge")
        assert info.merged and info.committed and info.parent == start
        assert rec.best_labels()[merge] == "p-merge"
        # the next candidate starts from the new best
        nxt = rec.create_candidate("p-next")
        assert nxt.parent == merge
        assert "v * 4.0" in (nxt.path / "hrm/model.py").read_text()


def test_conflicting_merge_is_aborted(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-c") as rec:
        a = rec.create_candidate("p-a")
        b = rec.create_candidate("p-b")
        edit(a.path / "hrm/model.py", "v * 2.0", "v * 5.0")
        edit(b.path / "hrm/model.py", "v * 2.0", "v * 6.0")
        rec.commit_candidate(a, FakeProposal("p-a"))
        rec.commit_candidate(b, FakeProposal("p-b"))
        rec.merge_candidate(a, {"score": 1.0})
        best = rec.best_commit()
        with pytest.raises(MergeConflict):
            rec.merge_candidate(b, {"score": 2.0})
        assert rec.best_commit() == best
        assert git(rec.run_worktree(), "status", "--porcelain") == ""


def test_rejected_branch_kept_after_remove_and_pruned_on_request(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-r") as rec:
        good = rec.create_candidate("p-good")
        bad = rec.create_candidate("p-bad")
        edit(good.path / "hrm/config.py", "EPOCHS = 2", "EPOCHS = 4")
        edit(bad.path / "hrm/config.py", "LEARNING_RATE = 1e-3", "LEARNING_RATE = 1.0")
        rec.commit_candidate(good, FakeProposal("p-good"))
        rec.commit_candidate(bad, FakeProposal("p-bad"))
        rec.merge_candidate(good, {"score": 0.5})
        rec.record_result(bad, "rejected", {"score": 0.1, "delta": -0.3}, reason="worse")
        rec.remove_candidate(bad)
        assert not bad.path.exists()
        assert set(rec.candidate_ids()) == {"p-good", "p-bad"}
        assert rec.candidate_info("p-bad").note["verdict"] == "rejected"
        with pytest.raises(CandidateExists):
            rec.create_candidate("p-bad")
        deleted = rec.prune(delete_rejected=True)
        assert deleted == ["evolve/run-r/cand/p-bad"]
        assert rec.candidate_ids() == ["p-good"]
        assert not good.path.exists()


def test_resume_and_reopen_candidate(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-x") as rec:
        cand = rec.create_candidate("p-1")
        edit(cand.path / "hrm/model.py", "return 64", "return 32")
        rec.commit_candidate(cand, FakeProposal("p-1"))
        rec.remove_candidate(cand)
    with EvolutionRecord(user_repo, run_id="run-x", create=False) as again:
        assert again.resumed
        reopened = again.open_candidate("p-1")
        assert reopened.parent == cand.parent
        assert "return 32" in (reopened.path / "hrm/model.py").read_text()
    with pytest.raises(RunNotFound):
        EvolutionRecord(user_repo, run_id="missing", create=False)
    with pytest.raises(ValueError):
        EvolutionRecord(user_repo, run_id="bad/../id")


def test_empty_candidate_cannot_be_committed(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-e") as rec:
        cand = rec.create_candidate("p-empty")
        with pytest.raises(RecordError, match="no changes"):
            rec.commit_candidate(cand, FakeProposal("p-empty"))


def test_custom_work_dir_outside_the_tree(user_repo: Path, tmp_path: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-w", work_dir=tmp_path / "wt") as rec:
        cand = rec.create_candidate("p-w")
        assert cand.path == (tmp_path / "wt" / "run-w" / "cand" / "p-w").resolve()
        assert (cand.path / "hrm/model.py").is_file()


def test_no_leaked_git_processes_after_ten_candidates(user_repo: Path) -> None:
    before = git_children()
    with EvolutionRecord(user_repo, run_id="run-leak") as rec:
        for i in range(10):
            cand = rec.create_candidate(f"p-{i}")
            edit(cand.path / "hrm/config.py", "EPOCHS = 2", f"EPOCHS = {i + 3}")
            rec.commit_candidate(cand, FakeProposal(f"p-{i}"))
            rec.candidate_info(f"p-{i}")  # opens a GitPython Repo
            rec.remove_candidate(cand)
    assert git_children() == before
    assert len(rec.candidate_ids()) == 10


def test_trailer_key_normalisation() -> None:
    assert trailer_key("exact_accuracy") == "Exact-Accuracy"
    assert trailer_key("delta") == "Delta"
    with pytest.raises(ValueError):
        trailer_key("__")


def test_worktree_deleted_by_hand_is_recovered(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-stale") as rec:
        cand = rec.create_candidate("p-stale")
        edit(cand.path / "hrm/model.py", "return 64", "return 16")
        rec.commit_candidate(cand, FakeProposal("p-stale"))
        shutil.rmtree(cand.path)  # a crash or a user cleaning up leaves a stale registration
        reopened = rec.open_candidate("p-stale")
        assert "return 16" in (reopened.path / "hrm/model.py").read_text()
        shutil.rmtree(reopened.path)
        rec.remove_candidate(reopened)  # no error for a directory that is already gone
        assert "p-stale" not in git(user_repo, "worktree", "list")
