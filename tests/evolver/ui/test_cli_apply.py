"""`evolve.py apply`, `proposals` and `history` on real temporary repositories (subprocess and in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import git as gitpython
import pytest

from evolver.record.git_record import EvolutionRecord, list_runs
from evolver.ui.cli import main
from tests.evolver.conftest import git

ENTRY = Path(__file__).resolve().parents[3] / "evolve.py"


def proposal(pid: str = "scale-by-three", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": pid,
        "title": "Scale by three",
        "rationale": "A larger gain lets the stand-in model move faster.",
        "hypothesis": "exact_accuracy rises by at least 0.01.",
        "citations": [{"arxiv_id": "2506.21734", "title": "Hierarchical Reasoning Model", "claim": "gains"}],
        "edits": [{
            "op": "replace_function",
            "file": "hrm/model.py",
            "target": "scale",
            "code": "def scale(values: list[float]) -> list[float]:\n    return [v * 3.0 for v in values]\n",
        }],
        "expected_effect": {"metric": "exact_accuracy", "direction": "increase", "size": 0.01,
                            "confidence": "low"},
        "risk": {"level": "low", "failure_modes": ["none"]},
    }
    data.update(changes)
    return data


def write(tmp_path: Path, data: dict[str, Any], name: str = "p.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def evolve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ENTRY), *args], text=True, capture_output=True, timeout=120)


def test_apply_good_proposal(user_repo: Path, tmp_path: Path) -> None:
    before = (git(user_repo, "rev-parse", "HEAD"), git(user_repo, "status", "--porcelain"))
    proc = evolve("apply", str(write(tmp_path, proposal())), "--repo", str(user_repo), "--run-id", "run-1")
    assert proc.returncode == 0, proc.stderr
    assert "branch:    evolve/run-1/cand/scale-by-three" in proc.stdout
    assert "-    return [v * 2.0 for v in values]" in proc.stdout
    assert "+    return [v * 3.0 for v in values]" in proc.stdout
    assert (git(user_repo, "rev-parse", "HEAD"), git(user_repo, "status", "--porcelain")) == before
    with gitpython.Repo(user_repo) as repo:
        commit = repo.commit("evolve/run-1/cand/scale-by-three")
        trailers = commit.trailers_dict
        assert commit.summary == "Scale by three"
    assert trailers["Proposal-Id"] == ["scale-by-three"]
    assert trailers["Citations"] == ["2506.21734"]
    stored = json.loads(git(user_repo, "show", "evolve/run-1/record:proposals/run-1/scale-by-three/proposal.json"))
    assert stored["provenance"]["parent_commit"] == trailers["Parent"][0] == before[0].strip()
    patch = git(user_repo, "show", "evolve/run-1/record:proposals/run-1/scale-by-three/diff.patch")
    assert "+    return [v * 3.0 for v in values]" in patch
    # the candidate worktree is gone, its branch stays; applying the same id again is refused
    with EvolutionRecord(user_repo, "run-1", create=False) as rec:
        assert not rec.candidate_path("scale-by-three").exists()
    again = evolve("apply", str(write(tmp_path, proposal())), "--repo", str(user_repo), "--run-id", "run-1")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_apply_bad_proposal_lists_every_problem(user_repo: Path, tmp_path: Path) -> None:
    bad = proposal("Bad_ID", edits=[{"op": "replace_function", "file": "../x.py", "target": "f", "code": "def ("}])
    del bad["hypothesis"]
    bad["colour"] = "blue"
    proc = evolve("apply", str(write(tmp_path, bad)), "--repo", str(user_repo))
    assert proc.returncode == 2
    err = proc.stderr
    assert "invalid proposal" in err
    for needle in ("id", "hypothesis", "colour", "edits[0]"):
        assert needle in err, (needle, err)
    assert err.count("  - ") >= 4
    assert list_runs(user_repo) == []  # nothing was created for a proposal that does not validate
    missing = evolve("apply", str(tmp_path / "absent.json"), "--repo", str(user_repo))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_apply_edit_that_does_not_match_leaves_no_candidate(user_repo: Path, tmp_path: Path) -> None:
    data = proposal("missing-target")
    data["edits"][0]["target"] = "no_such_function"
    proc = evolve("apply", str(write(tmp_path, data)), "--repo", str(user_repo), "--run-id", "run-2")
    assert proc.returncode == 1
    assert "does not apply" in proc.stderr and "no_such_function" in proc.stderr
    with EvolutionRecord(user_repo, "run-2", create=False) as rec:
        assert rec.candidate_ids() == []
        assert not rec.candidate_path("missing-target").exists()


def test_apply_refuses_protected_path(user_repo: Path, tmp_path: Path) -> None:
    data = proposal("touch-tests")
    data["edits"] = [{"op": "search_replace", "file": "tests/test_x.py", "search": "a", "replace": "b"}]
    proc = evolve("apply", str(write(tmp_path, data)), "--repo", str(user_repo), "--run-id", "run-3")
    assert proc.returncode == 1
    assert "tests/" in proc.stderr


def test_no_subcommand_runs_the_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Options without a subcommand go to `run`; a folder that is no git repository stops it before any work.
    assert main(["--repo", str(tmp_path), "--cycles", "1"]) == 1
    assert "not a git repository" in capsys.readouterr().err.lower()


def test_proposals_list_show_diff(user_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply", str(write(tmp_path, proposal())), "--repo", str(user_repo)]) == 0
    run_id = list_runs(user_repo)[-1]
    capsys.readouterr()
    assert main(["proposals", "list", "--repo", str(user_repo)]) == 0
    out = capsys.readouterr().out
    assert "scale-by-three" in out and "Scale by three" in out and run_id in out
    assert main(["proposals", "show", "scale-by-three", "--repo", str(user_repo), "--run-id", run_id]) == 0
    assert '"hypothesis"' in capsys.readouterr().out
    assert main(["proposals", "diff", "scale-by-three", "--repo", str(user_repo)]) == 0
    assert "+    return [v * 3.0 for v in values]" in capsys.readouterr().out
    assert main(["proposals", "show", "nope", "--repo", str(user_repo)]) == 1
    assert main(["history", "--repo", str(user_repo), "--run-id", "no-such-run"]) == 1


def test_history_from_a_fresh_clone(user_repo: Path, tmp_path: Path) -> None:
    for pid, factor in (("gain-three", "3.0"), ("gain-four", "4.0"), ("gain-five", "5.0")):
        data = proposal(pid)
        data["edits"][0]["code"] = data["edits"][0]["code"].replace("3.0", factor)
        proc = evolve("apply", str(write(tmp_path, data, f"{pid}.json")), "--repo", str(user_repo),
                      "--run-id", "run-h")
        assert proc.returncode == 0, proc.stderr
    with EvolutionRecord(user_repo, "run-h", create=False) as rec:
        rec.merge_candidate("gain-three", {"score": 0.8, "delta": 0.05})
        rec.record_result("gain-four", "rejected", {"score": 0.7, "delta": -0.05})
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(user_repo), str(clone))
    proc = evolve("history", "--repo", str(clone), "--fetch", "origin", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["proposal_id"]: row for row in json.loads(proc.stdout)}
    assert set(rows) == {"gain-three", "gain-four", "gain-five"}
    assert rows["gain-three"]["verdict"] == "merged" and rows["gain-three"]["score"] == 0.8
    assert rows["gain-four"]["verdict"] == "rejected" and rows["gain-four"]["delta"] == -0.05
    assert rows["gain-five"]["verdict"] == "pending" and rows["gain-five"]["score"] is None
    assert all(row["parent"] == "base" and row["citations"] == "2506.21734" for row in rows.values())
    table = evolve("history", "--repo", str(clone))
    assert table.returncode == 0 and "gain-four" in table.stdout and "rejected" in table.stdout
    # after pruning the rejected branch, history still lists it from the stored files
    with EvolutionRecord(user_repo, "run-h", create=False) as rec:
        rec.prune(delete_rejected=True)
    pruned = evolve("history", "--repo", str(user_repo), "--json")
    rows = {row["proposal_id"]: row for row in json.loads(pruned.stdout)}
    assert rows["gain-four"]["branch"] is None and rows["gain-four"]["verdict"] == "pruned"
    assert rows["gain-three"]["verdict"] == "merged"
