"""A run's splits: built on the host from a secret seed, disjoint, reproducible only with the secret, and
sealed views that carry no labels."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from puzzles.arrays import load_split
from puzzles.build import build_dataset
from puzzles.splits import (
    SECRET_FILE,
    ensure_run_data,
    read_or_create_secret,
    sealed_view,
    train_view,
)
from puzzles.tasks import TASKS, get_task

SMALL = get_task("sudoku4", n_train=200, n_select=60, n_final=60)


def _rows(data: Path, split: str) -> set[bytes]:
    return {row.tobytes() for row in np.load(data / split / "all__inputs.npy")}


def test_run_data_comes_from_a_private_secret_and_its_splits_are_disjoint(tmp_path: Path) -> None:
    data = ensure_run_data(tmp_path / "run", SMALL)
    secret = tmp_path / "run" / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert int(secret.read_text()) >= 0 and int(secret.read_text()).bit_length() > 64
    train, select, final = (_rows(data, s) for s in ("train", "select", "final"))
    assert len(train) == 200 and len(select) == 60 and len(final) == 60
    assert not train & select and not train & final and not select & final
    assert ensure_run_data(tmp_path / "run", SMALL) == data  # built once, reused


def test_the_held_out_split_is_reproducible_only_with_the_secret(tmp_path: Path) -> None:
    data = ensure_run_data(tmp_path / "run", SMALL)
    seed = read_or_create_secret(tmp_path / "run")
    build_dataset(SMALL.builder, tmp_path / "again", seed=seed, splits=SMALL.splits(), **SMALL.kwargs)
    assert _rows(tmp_path / "again", "select") == _rows(data, "select")
    for guess in (0, 1, 42):
        build_dataset(SMALL.builder, tmp_path / f"g{guess}", seed=guess, splits=SMALL.splits(), **SMALL.kwargs)
        assert _rows(tmp_path / f"g{guess}", "select") != _rows(data, "select")
    other = ensure_run_data(tmp_path / "other-run", SMALL)
    assert _rows(other, "select") != _rows(data, "select")


def test_views_copy_only_what_a_stage_may_see(tmp_path: Path) -> None:
    data = ensure_run_data(tmp_path / "run", SMALL)
    sealed = sealed_view(data, "select", tmp_path / "sealed")
    names = sorted(p.name for p in (sealed / "test").iterdir())
    assert "all__inputs.npy" in names and not any(n.endswith("__labels.npy") for n in names)
    assert sorted(p.name for p in sealed.iterdir()) == ["identifiers.json", "test"]
    view = train_view(data, tmp_path / "train")
    assert sorted(p.name for p in view.iterdir()) == ["identifiers.json", "train"]
    for path in list(sealed.rglob("*")) + list(view.rglob("*")):
        assert not path.is_symlink() and (path.is_dir() or path.stat().st_nlink == 1)
    held = load_split(data, "select")
    assert held.labels is not None and held.labels.shape == np.load(data / "select" / "all__inputs.npy").shape


def test_a_changed_task_spec_is_refused_for_an_existing_run(tmp_path: Path) -> None:
    ensure_run_data(tmp_path / "run", SMALL)
    with pytest.raises(ValueError, match="another task spec"):
        ensure_run_data(tmp_path / "run", get_task("sudoku4", n_train=201, n_select=60, n_final=60))


def test_every_cpu_task_fixes_its_eval_segments() -> None:
    assert all(spec.eval_segments >= 1 for spec in TASKS.values())
    assert TASKS["sudoku4"].eval_segments == 4 and TASKS["sudoku-extreme-gpu"].eval_segments == 16
