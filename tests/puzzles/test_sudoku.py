"""Sudoku generator: unique solutions (checked by an independent brute force on 4x4), clue floors, dedup."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from puzzles import sudoku


def _all_4x4_grids() -> list[tuple[int, ...]]:
    """Every valid 4x4 sudoku grid, by plain enumeration of row permutations (no shared code)."""
    perms = list(itertools.permutations(range(1, 5)))
    grids = []
    for rows in itertools.product(perms, repeat=4):
        if any(len({rows[r][c] for r in range(4)}) != 4 for c in range(4)):
            continue
        boxes_ok = all(
            len({rows[r][c] for r in (br, br + 1) for c in (bc, bc + 1)}) == 4
            for br in (0, 2) for bc in (0, 2)
        )
        if boxes_ok:
            grids.append(tuple(v for row in rows for v in row))
    return grids


@pytest.fixture(scope="module")
def all_grids() -> np.ndarray:
    grids = np.array(_all_4x4_grids())
    assert len(grids) == 288  # the known number of 4x4 sudoku grids
    return grids


def _matches(puzzle: np.ndarray, grids: np.ndarray) -> np.ndarray:
    given = puzzle > 0
    return grids[np.all(grids[:, given] == puzzle[given], axis=1)]


@pytest.mark.parametrize("min_clues", [None, 6])
def test_4x4_puzzles_have_exactly_one_solution(all_grids: np.ndarray, min_clues: int | None) -> None:
    data = sudoku.generate(40, (2, 2), np.random.default_rng(1), min_clues=min_clues)
    for puzzle, solution in zip(data.puzzles, data.solutions, strict=True):
        matches = _matches(puzzle, all_grids)
        assert len(matches) == 1
        assert np.array_equal(matches[0], solution)
        clues = int((puzzle > 0).sum())
        if min_clues is None:
            # minimal: every single clue is needed
            for i in np.nonzero(puzzle)[0]:
                weaker = puzzle.copy()
                weaker[i] = 0
                assert len(_matches(weaker, all_grids)) > 1
        else:
            assert clues >= min_clues


def test_count_solutions_agrees_with_brute_force(all_grids: np.ndarray) -> None:
    geo = sudoku.geometry((2, 2))
    rng = np.random.default_rng(5)
    for _ in range(60):
        grid = all_grids[rng.integers(len(all_grids))].copy()
        grid[rng.random(16) < 0.7] = 0
        truth = len(_matches(grid, all_grids))
        assert sudoku.count_solutions(grid.tolist(), geo, limit=1000) == truth


@pytest.mark.parametrize("box,min_clues", [((2, 3), None), ((2, 3), 12), ((3, 3), 40), ((3, 3), (30, 36))])
def test_larger_puzzles_unique_and_consistent(box: tuple[int, int], min_clues: object) -> None:
    geo = sudoku.geometry(box)
    data = sudoku.generate(4, box, np.random.default_rng(2), min_clues=min_clues)  # type: ignore[arg-type]
    for puzzle, solution, rating in zip(data.puzzles, data.solutions, data.ratings, strict=True):
        assert sudoku.is_valid_solution(solution, geo)
        given = puzzle > 0
        assert np.array_equal(puzzle[given], solution[given])
        assert sudoku.count_solutions(puzzle.tolist(), geo, limit=2) == 1
        solved, guesses = sudoku.solve(puzzle.tolist(), geo)
        assert solved == solution.tolist() and guesses == rating >= 0
        if isinstance(min_clues, int):
            assert given.sum() >= min_clues
        elif isinstance(min_clues, tuple):
            assert given.sum() >= min_clues[0]


def test_minimal_9x9_is_hard_and_rated() -> None:
    geo = sudoku.geometry((3, 3))
    data = sudoku.generate(1, (3, 3), np.random.default_rng(3))
    assert (data.puzzles > 0).sum() < 32
    assert sudoku.count_solutions(data.puzzles[0].tolist(), geo) == 1


def test_solver_detects_no_and_many_solutions() -> None:
    geo = sudoku.geometry((2, 2))
    assert sudoku.count_solutions([0] * 16, geo, limit=1000) == 288
    clash = [1, 1] + [0] * 14
    assert sudoku.count_solutions(clash, geo) == 0
    assert sudoku.solve(clash, geo)[0] is None


def test_pattern_grid_valid_for_every_box() -> None:
    for box in sudoku.SUPPORTED_BOXES:
        geo = sudoku.geometry(box)
        assert sudoku.is_valid_solution(sudoku.pattern_solution(geo), geo)
    with pytest.raises(ValueError):
        sudoku.geometry((3, 2))


def test_canonical_key_ignores_relabelling_and_transpose() -> None:
    geo = sudoku.geometry((3, 3))
    data = sudoku.generate(2, (3, 3), np.random.default_rng(4), min_clues=40)
    puzzle = data.puzzles[0]
    relabel = np.concatenate([[0], np.random.default_rng(0).permutation(9) + 1])
    other = relabel[puzzle]
    assert sudoku.canonical_key(other, geo) == sudoku.canonical_key(puzzle, geo)
    assert sudoku.canonical_key(puzzle.reshape(9, 9).T.ravel(), geo) == sudoku.canonical_key(puzzle, geo)
    assert sudoku.canonical_key(data.puzzles[1], geo) != sudoku.canonical_key(puzzle, geo)


def test_generation_is_deterministic_and_deduplicated() -> None:
    geo = sudoku.geometry((2, 2))
    a = sudoku.generate(200, (2, 2), np.random.default_rng(9))
    b = sudoku.generate(200, (2, 2), np.random.default_rng(9))
    assert np.array_equal(a.puzzles, b.puzzles)
    keys = {sudoku.canonical_key(p, geo) for p in a.puzzles}
    assert len(keys) == 200


def test_exhausted_supply_raises() -> None:
    # full grids (no clue removed): 4x4 has only a handful of grids up to relabelling and transpose
    with pytest.raises(ValueError, match="distinct"):
        sudoku.generate(50, (2, 2), np.random.default_rng(0), min_clues=16, max_failures=100)
