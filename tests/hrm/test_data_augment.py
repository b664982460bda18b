"""Augmentations keep sudoku solutions valid and consistent with their puzzles, and mazes solvable."""

from __future__ import annotations

import numpy as np
import pytest

from hrm.data.augment import dihedral, maze_dihedral_batch, sudoku_symmetry_batch
from puzzles import maze, sudoku


@pytest.mark.parametrize("box", sudoku.SUPPORTED_BOXES)
def test_sudoku_augmentation_preserves_validity(box: tuple[int, int]) -> None:
    geo = sudoku.geometry(box)
    data = sudoku.generate(3, box, np.random.default_rng(0), min_clues=geo.cells // 2)
    inputs = np.repeat(sudoku.encode(data.puzzles), 20, axis=0)
    labels = np.repeat(sudoku.encode(data.solutions), 20, axis=0)
    new_in, new_lab = sudoku_symmetry_batch(inputs, labels, geo.br, geo.bc, np.random.default_rng(1))
    assert new_lab is not None and new_in.dtype == inputs.dtype
    assert len({row.tobytes() for row in new_lab}) > 3  # the transforms differ per example
    for x, y, x0 in zip(new_in, new_lab, inputs, strict=True):
        assert sudoku.is_valid_solution(y - 1, geo)
        assert (x == 1).sum() == (x0 == 1).sum()  # blanks stay blanks
        given = x >= 2
        assert np.array_equal(x[given], y[given])  # givens agree with the augmented solution
        assert sudoku.count_solutions((x - 1).tolist(), geo) == 1


def test_pad_and_blank_tokens_are_fixed() -> None:
    batch = np.zeros((50, 16), dtype=np.int64)
    batch[:, 8:] = 1
    out, _ = sudoku_symmetry_batch(batch, None, 2, 2, np.random.default_rng(0))
    assert np.array_equal(np.sort(out, axis=1), np.sort(batch, axis=1))
    assert not np.array_equal(out, batch)  # positions moved


def test_sudoku_augmented_puzzle_keeps_unique_solution() -> None:
    geo = sudoku.geometry((2, 3))
    data = sudoku.generate(5, (2, 3), np.random.default_rng(4))
    new_in, new_lab = sudoku_symmetry_batch(sudoku.encode(data.puzzles), sudoku.encode(data.solutions),
                                            2, 3, np.random.default_rng(5))
    assert new_lab is not None
    for x, y in zip(new_in, new_lab, strict=True):
        puzzle = (x - 1).tolist()
        assert sudoku.count_solutions(puzzle, geo) == 1
        assert sudoku.solve(puzzle, geo)[0] == (y - 1).tolist()


def test_transpose_used_only_for_square_boxes() -> None:
    base = sudoku.encode(sudoku.pattern_solution(sudoku.geometry((2, 3))).reshape(1, -1))
    batch = np.repeat(base, 200, axis=0)
    out, _ = sudoku_symmetry_batch(batch, None, 2, 3, np.random.default_rng(0))
    for row in out:
        assert sudoku.is_valid_solution(row - 1, sudoku.geometry((2, 3)))


def test_dihedral_group_has_eight_distinct_elements() -> None:
    grid = np.arange(16).reshape(4, 4)
    images = {dihedral(grid, k).tobytes() for k in range(8)}
    assert len(images) == 8


def test_maze_dihedral_keeps_unique_path() -> None:
    size = 11
    data = maze.generate(6, size, np.random.default_rng(0))
    inputs = np.repeat(data.inputs, 8, axis=0)
    labels = np.repeat(data.labels, 8, axis=0)
    new_in, new_lab = maze_dihedral_batch(inputs, labels, size, np.random.default_rng(2))
    assert new_lab is not None
    for x, y in zip(new_in, new_lab, strict=True):
        grid = x.reshape(size, size)
        wall = grid == maze.WALL
        s = tuple(np.argwhere(grid == maze.START)[0])
        g = tuple(np.argwhere(grid == maze.GOAL)[0])
        dist, count = maze.bfs(wall, s)
        assert count[g] == 1
        assert (y == maze.PATH).sum() == dist[g] - 1
        assert np.all((y == maze.PATH) <= (x == maze.OPEN))
