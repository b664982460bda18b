"""Fixtures for the git record tests: throwaway repositories cloned from a small template with an hrm/ package.

Tests never touch /work/main (or whatever checkout runs them): every repository lives under pytest's tmp_path.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

TEMPLATE_FILES = {
    "README.md": "# template\n\nA tiny repository for record tests.\n",
    "hrm/__init__.py": '"""Template hrm package."""\n',
    "hrm/model.py": (
        '"""A stand-in model module that candidates edit."""\n\n\n'
        "def hidden_size() -> int:\n    return 64\n\n\n"
        "def scale(values: list[float]) -> list[float]:\n    return [v * 2.0 for v in values]\n"
    ),
    "hrm/config.py": "LEARNING_RATE = 1e-3\nEPOCHS = 2\n",
}


def git(cwd: Path, *args: str) -> str:
    """Run git in cwd and return stdout (raises on failure)."""
    proc = subprocess.run(["git", *args], cwd=cwd, text=True, capture_output=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def set_identity(repo: Path) -> None:
    git(repo, "config", "user.name", "Record Test")
    git(repo, "config", "user.email", "record-test@example.invalid")
    git(repo, "config", "commit.gpgsign", "false")


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template") / "repo"
    root.mkdir()
    git(root, "init", "--quiet", "--initial-branch=main")
    set_identity(root)
    for rel, text in TEMPLATE_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "-m", "template")
    return root


@pytest.fixture
def user_repo(template_repo: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh clone of the template (branch main checked out, identity configured)."""
    path = tmp_path / "user-repo"
    git(tmp_path, "clone", "--quiet", str(template_repo), str(path))
    set_identity(path)
    yield path


def git_children() -> list[str]:
    """Command lines of this process's child processes that run git (read from /proc)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                stat = handle.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmd = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        if "git" in cmd:
            found.append(cmd)
    return found
