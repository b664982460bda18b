"""Stored proposal files: atomic writes in the run worktree, committed on the run branch, read from git."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolver.record import EvolutionRecord, fetch_runs
from evolver.store import ProposalStore, atomic_write
from tests.evolver.conftest import git


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.json"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_store_commits_on_run_branch_and_reads_from_git(user_repo: Path) -> None:
    before = git(user_repo, "status", "--porcelain")
    with EvolutionRecord(user_repo, run_id="run-s") as rec:
        store = ProposalStore(rec)
        sha = store.save_proposal({"id": "p-1", "title": "t"}, diff="--- a\n+++ b\n")
        assert sha == rec.best_commit()
        assert store.save_proposal({"id": "p-1", "title": "t"}, diff="--- a\n+++ b\n") is None  # unchanged
        store.save_result("p-1", {"verdict": "rejected", "score": 0.25})
        wt_file = rec.run_path / "proposals/run-s/p-1/proposal.json"
        assert wt_file.is_file()
        assert git(user_repo, "show", "evolve/run-s/best:proposals/run-s/p-1/result.json").startswith("{")
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


def test_uncommitted_write_is_read_from_the_run_worktree(user_repo: Path) -> None:
    with EvolutionRecord(user_repo, run_id="run-u") as rec:
        store = ProposalStore(rec)
        assert store.write("p-2", {"result.json": {"verdict": "pending"}}, commit=False) is None
        assert store.result("p-2") == {"verdict": "pending"}
        assert rec.show_file("proposals/run-u/p-2/result.json") is None
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
        assert json.loads(remote.show_file("proposals/run-clone/p-9/proposal.json"))["title"] == "cloned"
        assert ProposalStore(remote).ids() == ["p-9"]
        assert remote.read_note(remote.best_commit()) == {"verdict": "note-check"}


def test_run_worktree_deleted_by_hand_is_recreated(user_repo: Path) -> None:
    import shutil

    with EvolutionRecord(user_repo, run_id="run-gone") as rec:
        store = ProposalStore(rec)
        store.save_result("p-3", {"verdict": "pending"})
        shutil.rmtree(rec.run_path)
        store.save_result("p-3", {"verdict": "rejected"})
        assert store.result("p-3") == {"verdict": "rejected"}
