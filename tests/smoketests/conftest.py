"""Shared fixtures: a small real sudoku4 dataset built with the engine's hrm.data, and candidate copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sudoku4_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from puzzles import build_dataset

    root = tmp_path_factory.mktemp("data") / "sudoku4"
    build_dataset("sudoku4", root, seed=0, n_train=400, n_test=100)
    return root


def make_candidate(dest: Path, edits: dict[str, tuple[str, str]] | None = None) -> Path:
    """Copy the real hrm/ into dest/hrm and apply text edits {relative path: (old, new)}."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "hrm", dest / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    for rel, (old, new) in (edits or {}).items():
        path = dest / rel
        text = path.read_text()
        assert old in text, f"edit target not found in {rel}: {old!r}"
        path.write_text(text.replace(old, new, 1))
    return dest
