"""PathPolicy: which files an edit may touch, each rejection with its reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edits.paths import PROTECTED_PATHS, PathPolicy, PathRejected


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for rel in ("hrm/model.py", "hrm/data/sudoku.py", "hrm/evaluate.py", "evolver/patch.py", "tests/t.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    (root / "pyproject.toml").write_text("")
    return root


def test_allows_a_file_in_hrm(repo: Path) -> None:
    assert PathPolicy().check(repo, "hrm/model.py") == repo.resolve() / "hrm" / "model.py"
    assert PathPolicy().reason(repo, "hrm/new_module.py") is None  # need not exist yet


@pytest.mark.parametrize(
    "path,fragment",
    [
        ("/etc/passwd", "absolute"),
        ("../outside.py", "'..'"),
        ("hrm/../evolver/patch.py", "'..'"),
        ("hrm/./model.py", "not a normalised"),
        ("hrm\\model.py", "backslash"),
        ("", "empty"),
        ("evolver/patch.py", "protected"),
        ("edits/engine.py", "protected"),
        ("sandbox/docker.py", "protected"),
        ("smoketests/stage.py", "protected"),
        ("proposals/schema.py", "protected"),
        (".git/config", "protected"),
        (".ci/run.sh", "protected"),
        ("tests/t.py", "protected"),
        ("evolve.py", "protected"),
        ("pyproject.toml", "protected"),
        ("puzzles/sudoku.py", "protected"),
        ("Puzzles/Splits.py", "protected"),
        ("README.md", "outside the allowed prefixes"),
        ("hrmx/model.py", "outside the allowed prefixes"),
    ],
)
def test_rejections_give_the_reason(repo: Path, path: str, fragment: str) -> None:
    with pytest.raises(PathRejected) as info:
        PathPolicy().check(repo, path)
    assert fragment in info.value.reason
    assert info.value.path == path


def test_symlink_file_pointing_out_is_rejected(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.py"
    outside.write_text("s = 1\n")
    os.symlink(outside, repo / "hrm" / "link.py")
    with pytest.raises(PathRejected, match="symlink"):
        PathPolicy().check(repo, "hrm/link.py")


def test_symlinked_directory_along_the_path_is_rejected(repo: Path) -> None:
    os.symlink(repo / "evolver", repo / "hrm" / "engine")  # an alias for a protected folder
    with pytest.raises(PathRejected, match="symlink along the path \\('hrm/engine'\\)"):
        PathPolicy().check(repo, "hrm/engine/patch.py")


def test_symlink_inside_the_repo_is_still_rejected(repo: Path) -> None:
    os.symlink(repo / "hrm" / "model.py", repo / "hrm" / "alias.py")
    assert "symlink" in (PathPolicy().reason(repo, "hrm/alias.py") or "")


def test_policy_is_configurable(repo: Path) -> None:
    policy = PathPolicy(allowed=("hrm/", "extras/"), protected=("hrm/model.py",))
    assert policy.reason(repo, "extras/x.py") is None
    assert policy.reason(repo, "hrm/evaluate.py") is None  # no longer protected under this policy
    assert "protected" in (policy.reason(repo, "hrm/model.py") or "")


def test_default_protected_list_covers_the_engine_and_evaluation() -> None:
    for entry in (
        "evolver/",
        "sandbox/",
        "smoketests/",
        "proposals/",
        ".git/",
        "tests/",
        "puzzles/",
    ):
        assert entry in PROTECTED_PATHS
    assert not [entry for entry in PROTECTED_PATHS if entry.startswith("hrm")]  # hrm/ is wholly evolvable


def test_every_file_of_hrm_is_editable(repo: Path) -> None:
    for rel in ("hrm/evaluate.py", "hrm/data/dataset.py", "hrm/train.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x = 1\n")
        assert PathPolicy().reason(repo, rel) is None, rel
