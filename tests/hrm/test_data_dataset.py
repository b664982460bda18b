"""build_dataset + PuzzleDataset: determinism, disjoint splits, stored groups, batches and augmentation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from hrm.data import TASK_ALIASES
from hrm.data.dataset import PuzzleDataset
from puzzles import build_dataset, maze, sudoku


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_build_is_deterministic_for_a_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kwargs = {"n_train": 60, "n_test": 20, "min_clues": 5}
    build_dataset("sudoku4", tmp_path / "a", seed=3, **kwargs)
    build_dataset("sudoku4", tmp_path / "b", seed=3, **kwargs)
    build_dataset("sudoku4", tmp_path / "c", seed=4, **kwargs)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_sudoku_splits_are_disjoint_up_to_symmetry(tmp_path: Path) -> None:
    meta = build_dataset("sudoku", tmp_path, seed=0, box=(2, 3), n_train=80, n_test=30, min_clues=12)
    assert (meta.vocab_size, meta.seq_len, meta.task) == (8, 36, "sudoku")
    geo = sudoku.geometry((2, 3))
    train, test = PuzzleDataset(tmp_path, "train"), PuzzleDataset(tmp_path, "test")
    assert (len(train), len(test)) == (80, 30)
    keys = [{sudoku.canonical_key(row - 1, geo) for row in ds.inputs} for ds in (train, test)]
    assert len(keys[0]) == 80 and len(keys[1]) == 30 and not keys[0] & keys[1]
    for ds in (train, test):
        for x, y in zip(ds.inputs.astype(np.int64), ds.labels.astype(np.int64), strict=True):
            assert sudoku.is_valid_solution(y - 1, geo) and sudoku.count_solutions((x - 1).tolist(), geo) == 1


def test_maze_splits_disjoint_and_dihedral_groups(tmp_path: Path) -> None:
    meta = build_dataset("maze", tmp_path, seed=1, size=9, n_train=12, n_test=6, dihedral_aug=True)
    assert (meta.vocab_size, meta.seq_len) == (6, 81)
    train, test = PuzzleDataset(tmp_path, "train"), PuzzleDataset(tmp_path, "test")
    assert len(train) == 96 and train.num_groups == 12 and len(test) == 6
    train_keys = {maze.canonical_key(row.reshape(9, 9)) for row in train.inputs}
    assert len(train_keys) == 12
    assert not train_keys & {maze.canonical_key(row.reshape(9, 9)) for row in test.inputs}


def test_stored_sudoku_augmentations_form_groups(tmp_path: Path) -> None:
    build_dataset("sudoku4", tmp_path, seed=0, n_train=10, n_test=4, min_clues=6, num_aug=3)
    train, test = PuzzleDataset(tmp_path, "train"), PuzzleDataset(tmp_path, "test")
    assert len(train) == 40 and train.num_groups == 10 and len(test) == 4 and test.num_groups == 4
    geo = sudoku.geometry((2, 2))
    for g in range(train.num_groups):
        lo, hi = train.group_indices[g], train.group_indices[g + 1]
        members = train.inputs[lo:hi].astype(np.int64)
        # members of a group are symmetric images of one puzzle: same clue count, each uniquely solvable
        assert len({int((x > 1).sum()) for x in members}) == 1
        for x, y in zip(members, train.labels[lo:hi].astype(np.int64), strict=True):
            assert sudoku.solve((x - 1).tolist(), geo)[0] == (y - 1).tolist()
            assert sudoku.count_solutions((x - 1).tolist(), geo) == 1


def test_train_batches(tmp_path: Path) -> None:
    build_dataset("sudoku4", tmp_path, seed=0, n_train=50, n_test=10, min_clues=6)
    ds = PuzzleDataset(tmp_path, "train")
    batches = list(ds.train_batches(16, np.random.default_rng(0), augment=False))
    assert len(batches) == 3  # 50 // 16, partial batch dropped
    for b in batches:
        assert b["inputs"].shape == (16, 16) and b["labels"].shape == (16, 16)
        assert b["puzzle_identifiers"].shape == (16,)
        assert all(v.dtype == np.int64 for v in b.values())
        assert b["labels"].min() >= 2  # every cell is a target; nothing maps to -100 without padding
    rows = np.concatenate([b["inputs"] for b in batches])
    assert len({r.tobytes() for r in rows}) == 48  # one draw per group, no repeats
    again = list(ds.train_batches(16, np.random.default_rng(0), augment=False))
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(batches, again, strict=True))
    with pytest.raises(ValueError):
        next(ds.train_batches(64, np.random.default_rng(0)))


def test_train_batches_augment_on_the_fly(tmp_path: Path) -> None:
    build_dataset("sudoku9", tmp_path, seed=0, n_train=8, n_test=2, min_clues=40)
    ds = PuzzleDataset(tmp_path, "train")
    geo = sudoku.geometry((3, 3))
    stored = {r.astype(np.int64).tobytes() for r in ds.inputs}
    batch = next(ds.train_batches(8, np.random.default_rng(1), augment=True))
    assert sum(r.tobytes() in stored for r in batch["inputs"]) < 8
    for x, y in zip(batch["inputs"], batch["labels"], strict=True):
        assert sudoku.is_valid_solution(y - 1, geo) and sudoku.count_solutions((x - 1).tolist(), geo) == 1
    plain = next(ds.train_batches(8, np.random.default_rng(1), augment=False))
    assert all(r.tobytes() in stored for r in plain["inputs"])

    build_dataset("maze", tmp_path / "m", seed=0, size=9, n_train=8, n_test=2)
    mz = PuzzleDataset(tmp_path / "m", "train")
    batch = next(mz.train_batches(8, np.random.default_rng(2), augment=True))
    for x, y in zip(batch["inputs"], batch["labels"], strict=True):
        grid = x.reshape(9, 9)
        s = tuple(np.argwhere(grid == maze.START)[0])
        g = tuple(np.argwhere(grid == maze.GOAL)[0])
        dist, count = maze.bfs(grid == maze.WALL, s)
        assert count[g] == 1 and (y == maze.PATH).sum() == dist[g] - 1


def test_eval_batches_pad_the_last_batch(tmp_path: Path) -> None:
    build_dataset("sudoku4", tmp_path, seed=0, n_train=20, n_test=10, min_clues=6)
    ds = PuzzleDataset(tmp_path, "test")
    out = list(ds.eval_batches(4))
    assert [valid for _, valid in out] == [4, 4, 2]
    last, _ = out[-1]
    assert last["inputs"].shape == (4, 16)
    assert np.all(last["inputs"][2:] == 0) and np.all(last["labels"][2:] == -100)
    assert np.all(last["puzzle_identifiers"][2:] == 0)
    rows = np.concatenate([b["inputs"][:v] for b, v in out])
    assert np.array_equal(rows, ds.inputs.astype(np.int64))


def test_ignore_label_maps_to_minus_100(tmp_path: Path) -> None:
    train = tmp_path / "t.jsonl"
    train.write_text('{"input": ["a", "b", "c"], "output": ["x"]}\n{"input": ["a"], "output": ["y", "y"]}\n')
    build_dataset("jsonl", tmp_path / "d", train_file=train, test_file=train)
    ds = PuzzleDataset(tmp_path / "d", "train")
    batch, valid = next(ds.eval_batches(2))
    assert valid == 2
    assert batch["labels"][0].tolist()[1:] == [-100, -100]
    assert batch["labels"][1].tolist()[2] == -100


def test_aliases_and_unknown_task(tmp_path: Path) -> None:
    assert TASK_ALIASES["sudoku6"] == ("sudoku", {"box": (2, 3)})
    assert set(TASK_ALIASES) == {"sudoku4", "sudoku6", "sudoku9", "maze"}
    with pytest.raises(ValueError, match="unknown task"):
        build_dataset("chess", tmp_path)
    with pytest.raises(TypeError):
        build_dataset("maze", tmp_path, sise=9)
