"""Stored proposal files: atomic writes in the record worktree, committed on the record branch (never on the
best branch, which keeps only the code lineage), read from git."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from evolver.record.git_record import EvolutionRecord, fetch_runs
from evolver.record.store import ProposalStore, atomic_write
from tests.evolver.conftest import git


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.json"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_store_commits_on_the_record_branch_and_reads_from_git(user_repo: Path) -> None:
    before = git(user_repo, "status", "--porcelain")
    with EvolutionRecord(user_repo, run_id="run-s") as rec:
        start = rec.best_commit()
        store = ProposalStore(rec)
        sha = store.save_proposal({"id": "p-1", "title": "t"}, diff="--- a\n+++ b\n")
        assert sha == git(user_repo, "rev-parse", "evolve/run-s/record").strip()
        assert rec.best_commit() == start  # the lineage holds no bookkeeping
        assert store.save_proposal({"id": "p-1", "title": "t"}, diff="--- a\n+++ b\n") is None  # unchanged
        store.save_result("p-1", {"verdict": "rejected", "score": 0.25})
        wt_file = rec.record_path / "proposals/run-s/p-1/proposal.json"
        assert wt_file.is_file()
        assert git(user_repo, "show", "evolve/run-s/record:proposals/run-s/p-1/result.json").startswith("{")
        # the record branch shares no history with the code
        assert subprocess.run(["git", "merge-base", "evolve/run-s/record", "evolve/run-s/best"], cwd=user_repo,
                              capture_output=True).returncode == 1
        assert git(user_repo, "ls-tree", "--name-only", "evolve/run-s/record").split() == ["proposals"]
        # reading needs no worktree: remove it and read again from git objects alone
        rec.remove_run_worktree()
        assert not wt_file.exists()
        assert store.proposal("p-1") == {"id": "p-1", "title": "t"}
        assert store.result("p-1") == {"score": 0.25, "verdict": "rejected"}
        assert store.diff("p-1") == "--- a\n+++ b\n"
        assert store.files("p-1") == ["diff.patch", "proposal.json", "result.json"]
        assert store.ids() == ["p-1"]
        assert store.proposal("p-none") is None
    assert git(user_repo, "status", "--porcelain") == before
    assert not (user_repo / "proposals").exists()


def test_uncommitted_write_is_read_from_the_record_worktree(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-u") as rec:
        store = ProposalStore(rec)
        assert store.write("p-2", {"result.json": {"verdict": "pending"}}, commit=False) is None
        assert store.result("p-2") == {"verdict": "pending"}
        assert rec.show_record_file("proposals/run-u/p-2/result.json") is None
        with pytest.raises(ValueError):
            store.write("p-2", {"../escape": "x"})


def test_store_read_from_a_fresh_clone(user_repo: Path, tmp_path: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-clone") as rec:
        store = ProposalStore(rec)
        store.save_proposal({"id": "p-9", "title": "cloned"})
        rec.write_note(rec.best_commit(), {"verdict": "note-check"})
    clone = tmp_path / "elsewhere"
    git(tmp_path, "clone", "--quiet", str(user_repo), str(clone))
    fetch_runs(clone)
    with EvolutionRecord(clone, run_id="run-clone", create=False) as remote:
        assert json.loads(remote.show_record_file("proposals/run-clone/p-9/proposal.json"))["title"] == "cloned"
        assert ProposalStore(remote).ids() == ["p-9"]
        assert remote.read_note(remote.best_commit()) == {"verdict": "note-check"}


def test_record_worktree_deleted_by_hand_is_recreated(user_repo: Path) -> None:
    import shutil

    with EvolutionRecord(user_repo, run_id="run-gone") as rec:
        store = ProposalStore(rec)
        store.save_result("p-3", {"verdict": "pending"})
        shutil.rmtree(rec.record_path)
        store.save_result("p-3", {"verdict": "rejected"})
        assert store.result("p-3") == {"verdict": "rejected"}


def test_refused_replies_are_stored_in_the_record(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-r") as rec:
        store = ProposalStore(rec)
        store.save_refused_reply({"id": "cycle-2", "cycle": 2, "reason": "schema", "attempts": [{"raw_text": "x"}]})
        store.save_refused_reply({"id": "cycle-1", "cycle": 1, "reason": "cut", "attempts": []})
        assert [r["id"] for r in store.refused_replies()] == ["cycle-1", "cycle-2"]
        store.save_refused_reply({"id": "cycle-2", "cycle": 2, "reason": "again, after a resume", "attempts": []})
        assert [r["reason"] for r in store.refused_replies() if r["id"] == "cycle-2"] == ["schema", "again, after a resume"]
        assert store.refused_replies()[1]["attempts"] == [{"raw_text": "x"}]
        assert "replies" in git(user_repo, "ls-tree", "--name-only", "evolve/run-r/record").split()


def test_runs_from_before_the_record_branch_are_still_read(user_repo: Path) -> None:
    """A run made by an older engine kept its proposals on the best branch: reading falls back to it."""
    with EvolutionRecord(user_repo, run_id="run-old") as rec:
        wt = rec.run_worktree()
        (wt / "proposals/run-old/p-o").mkdir(parents=True)
        (wt / "proposals/run-old/p-o/proposal.json").write_text('{"id": "p-o", "title": "old"}')
        git(wt, "add", "proposals")
        git(wt, "commit", "-q", "-m", "old-style store")
        store = ProposalStore(rec)
        assert not rec.has_record_branch()
        assert store.ids() == ["p-o"] and store.proposal("p-o") == {"id": "p-o", "title": "old"}
