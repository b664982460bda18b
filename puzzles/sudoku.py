"""Sudoku generation with verified unique solutions, for n x n grids with br x bc boxes (n = br * bc).

Grids are flat lists (row-major) of cell values: 0 = blank, 1..n = digits. The token encoding of the
reference (PAD 0, blank 1, digits 2..n+1) is applied by :func:`encode`.

A puzzle is made from a random solution grid (a pattern grid under random symmetries) by removing cells
in random order, keeping a removal only if the puzzle still has exactly one solution (checked by a
bitmask DFS with minimum-remaining-values ordering). ``min_clues`` stops removal at a clue floor (easier
puzzles); ``None`` runs until no cell can be removed (minimal puzzles).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

SUPPORTED_BOXES: tuple[tuple[int, int], ...] = ((2, 2), (2, 3), (3, 3))


@dataclass(frozen=True)
class Geometry:
    """Cell-to-unit tables for one board shape; ``box`` is (rows per box, columns per box)."""

    br: int
    bc: int

    @property
    def n(self) -> int:
        return self.br * self.bc

    @property
    def cells(self) -> int:
        return self.n * self.n


@cache
def _tables(br: int, bc: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Row, column and box index per cell, and a popcount table over digit masks."""
    n = br * bc
    rows = [i // n for i in range(n * n)]
    cols = [i % n for i in range(n * n)]
    boxes = [(r // br) * (n // bc) + c // bc for r, c in zip(rows, cols, strict=True)]
    popcount = [bin(m).count("1") for m in range(1 << n)]
    return rows, cols, boxes, popcount


def geometry(box: tuple[int, int]) -> Geometry:
    br, bc = int(box[0]), int(box[1])
    if (br, bc) not in SUPPORTED_BOXES:
        raise ValueError(f"unsupported sudoku box {box}; choose one of {SUPPORTED_BOXES}")
    return Geometry(br, bc)


def _masks(grid: list[int], geo: Geometry) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """Used-digit masks per row/column/box and the empty cells; None if the givens clash."""
    n = geo.n
    R, C, B, _ = _tables(geo.br, geo.bc)
    rows, cols, boxes = [0] * n, [0] * n, [0] * n
    empties: list[int] = []
    for i, v in enumerate(grid):
        if v == 0:
            empties.append(i)
            continue
        bit = 1 << (v - 1)
        r, c, b = R[i], C[i], B[i]
        if (rows[r] | cols[c] | boxes[b]) & bit:
            return None
        rows[r] |= bit
        cols[c] |= bit
        boxes[b] |= bit
    return rows, cols, boxes, empties


def count_solutions(grid: list[int], geo: Geometry, limit: int = 2) -> int:
    """Number of solutions of ``grid``, counting stops at ``limit``. Bitmask DFS, MRV cell order."""
    state = _masks(grid, geo)
    if state is None:
        return 0
    rows, cols, boxes, empties = state
    return _count_from(rows, cols, boxes, empties, geo, limit)


def _count_from(
    rows: list[int], cols: list[int], boxes: list[int], empties: list[int], geo: Geometry, limit: int
) -> int:
    """DFS over ``empties`` given used-digit masks; masks come back unchanged, ``empties`` reordered."""
    R, C, B, pc = _tables(geo.br, geo.bc)
    full = (1 << geo.n) - 1
    total = len(empties)
    found = 0

    def search(pos: int) -> bool:
        nonlocal found
        if pos == total:
            found += 1
            return found >= limit
        best_k, best_c, best_m = pos, 99, 0
        for k in range(pos, total):
            i = empties[k]
            m = full & ~(rows[R[i]] | cols[C[i]] | boxes[B[i]])
            c = pc[m]
            if c < best_c:
                best_k, best_c, best_m = k, c, m
                if c <= 1:
                    break
        if best_c == 0:
            return False
        empties[pos], empties[best_k] = empties[best_k], empties[pos]
        i = empties[pos]
        r, c, b = R[i], C[i], B[i]
        m = best_m
        while m:
            bit = m & -m
            m ^= bit
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            stop = search(pos + 1)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            if stop:
                return True
        return False

    search(0)
    return found


def solve(grid: list[int], geo: Geometry) -> tuple[list[int] | None, int]:
    """First solution and a difficulty rating: the number of guesses a singles-propagating DFS makes.

    Propagation fills naked singles (one candidate left in a cell) and hidden singles (a digit with one
    place left in a unit); only when it stalls does the search guess, at a cell with the fewest
    candidates. Each tried candidate at such a branch counts as one guess (tdoku-style rating).
    """
    n = geo.n
    R, C, B, pc = _tables(geo.br, geo.bc)
    full = (1 << n) - 1
    units: list[list[int]] = []
    for u in range(n):
        units.append([u * n + c for c in range(n)])
        units.append([r * n + u for r in range(n)])
        units.append([i for i in range(n * n) if B[i] == u])
    guesses = 0

    def candidates(g: list[int], i: int, rows: list[int], cols: list[int], boxes: list[int]) -> int:
        return full & ~(rows[R[i]] | cols[C[i]] | boxes[B[i]])

    def place(g: list[int], i: int, bit: int, rows: list[int], cols: list[int], boxes: list[int]) -> None:
        g[i] = bit.bit_length()
        rows[R[i]] |= bit
        cols[C[i]] |= bit
        boxes[B[i]] |= bit

    def propagate(g: list[int], rows: list[int], cols: list[int], boxes: list[int]) -> bool:
        changed = True
        while changed:
            changed = False
            for i in range(n * n):
                if g[i] == 0:
                    m = candidates(g, i, rows, cols, boxes)
                    if m == 0:
                        return False
                    if pc[m] == 1:
                        place(g, i, m, rows, cols, boxes)
                        changed = True
            for unit in units:
                seen_once = seen_more = 0
                placed = 0
                for i in unit:
                    if g[i]:
                        placed |= 1 << (g[i] - 1)
                    else:
                        m = candidates(g, i, rows, cols, boxes)
                        seen_more |= seen_once & m
                        seen_once |= m
                if (seen_once | placed) != full:
                    return False
                hidden = seen_once & ~seen_more & ~placed
                for i in unit:
                    if hidden and g[i] == 0:
                        m = candidates(g, i, rows, cols, boxes) & hidden
                        if m:
                            if pc[m] > 1:
                                return False
                            place(g, i, m, rows, cols, boxes)
                            hidden &= ~m
                            changed = True
        return True

    def search(g: list[int]) -> list[int] | None:
        nonlocal guesses
        state = _masks(g, geo)
        if state is None:
            return None
        rows, cols, boxes, _ = state
        if not propagate(g, rows, cols, boxes):
            return None
        empties = [i for i in range(n * n) if g[i] == 0]
        if not empties:
            return g
        cell = min(empties, key=lambda i: pc[candidates(g, i, rows, cols, boxes)])
        m = candidates(g, cell, rows, cols, boxes)
        while m:
            bit = m & -m
            m ^= bit
            guesses += 1
            trial = list(g)
            trial[cell] = bit.bit_length()
            result = search(trial)
            if result is not None:
                return result
        return None

    solution = search(list(grid))
    return solution, guesses


def is_valid_solution(grid: list[int] | np.ndarray, geo: Geometry) -> bool:
    """True when every row, column and box holds each digit 1..n exactly once."""
    n = geo.n
    g = np.asarray(grid).reshape(n, n)
    want = np.arange(1, n + 1)
    for k in range(n):
        if not np.array_equal(np.sort(g[k]), want) or not np.array_equal(np.sort(g[:, k]), want):
            return False
    for r0 in range(0, n, geo.br):
        for c0 in range(0, n, geo.bc):
            if not np.array_equal(np.sort(g[r0:r0 + geo.br, c0:c0 + geo.bc].ravel()), want):
                return False
    return True


def pattern_solution(geo: Geometry) -> np.ndarray:
    """A fixed valid grid (values 1..n): row r is a shift of 0..n-1 chosen so boxes hold every digit."""
    n, br, bc = geo.n, geo.br, geo.bc
    r = np.arange(n)[:, None]
    c = np.arange(n)[None, :]
    return ((bc * (r % br) + r // br + c) % n + 1).astype(np.int64)


def random_solutions(geo: Geometry, rng: np.random.Generator, count: int) -> np.ndarray:
    """[count, n*n] random valid grids (values 1..n): the pattern grid under random sudoku symmetries."""
    from puzzles.symmetry import sudoku_symmetry_batch  # local import keeps the module graph one-way

    base = np.repeat(pattern_solution(geo).reshape(1, -1), count, axis=0)
    return sudoku_symmetry_batch(base, None, geo.br, geo.bc, rng, token_offset=0)[0]


def make_puzzle(
    solution: np.ndarray, geo: Geometry, rng: np.random.Generator, min_clues: int | None = None
) -> np.ndarray:
    """Remove cells of ``solution`` in random order while the solution stays unique.

    Blanking cell i (digit v) keeps uniqueness exactly when no other digit allowed at i leads to a
    solution, so each test is a search for one solution with that cell fixed to an alternative.
    """
    grid = [int(v) for v in np.asarray(solution).ravel()]
    state = _masks(grid, geo)
    if state is None:
        raise ValueError("solution grid has clashing digits")
    rows, cols, boxes, empties = state
    R, C, B, _ = _tables(geo.br, geo.bc)
    full = (1 << geo.n) - 1
    clues = len(grid) - len(empties)
    floor = 0 if min_clues is None else int(min_clues)
    for i in rng.permutation(len(grid)).tolist():
        if clues <= floor:
            break
        if grid[i] == 0:
            continue
        vbit = 1 << (grid[i] - 1)
        r, c, b = R[i], C[i], B[i]
        rows[r] ^= vbit
        cols[c] ^= vbit
        boxes[b] ^= vbit
        alternatives = full & ~(rows[r] | cols[c] | boxes[b]) & ~vbit
        unique = True
        while alternatives and unique:
            bit = alternatives & -alternatives
            alternatives ^= bit
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            if _count_from(rows, cols, boxes, empties, geo, 1):
                unique = False
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
        if unique:
            grid[i] = 0
            empties.append(i)
            clues -= 1
        else:
            rows[r] |= vbit
            cols[c] |= vbit
            boxes[b] |= vbit
    return np.asarray(grid, dtype=np.int64)


def canonical_key(puzzle: np.ndarray, geo: Geometry) -> bytes:
    """Key equal for puzzles that differ by a digit relabelling (or a transpose, for square boxes)."""
    n = geo.n
    grids = [np.asarray(puzzle).reshape(n, n)]
    if geo.br == geo.bc:
        grids.append(grids[0].T)
    keys = []
    for g in grids:
        flat = g.ravel()
        relabel = np.zeros(n + 1, dtype=np.uint8)
        nxt = 1
        for v in flat.tolist():
            if v and not relabel[v]:
                relabel[v] = nxt
                nxt += 1
        keys.append(relabel[flat].tobytes())
    return min(keys)


def encode(grid: np.ndarray) -> np.ndarray:
    """Cell values (0 blank, 1..n) to reference tokens (1 blank, 2..n+1); PAD 0 is never produced."""
    return np.asarray(grid, dtype=np.int64) + 1


@dataclass
class SudokuSet:
    puzzles: np.ndarray  # [N, n*n] cell values, 0 = blank
    solutions: np.ndarray  # [N, n*n] values 1..n
    ratings: np.ndarray  # [N] guess counts


def generate(
    count: int,
    box: tuple[int, int],
    rng: np.random.Generator,
    *,
    min_clues: int | Sequence[int] | None = None,
    exclude: set[bytes] | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_failures: int = 2000,
) -> SudokuSet:
    """``count`` distinct puzzles (distinct up to symmetry, and not in ``exclude``, which is updated).

    ``min_clues``: None for minimal puzzles, an int floor, or a pair (lo, hi) drawing a floor per puzzle.
    Raises ValueError if ``max_failures`` consecutive candidates are duplicates: the requested count
    exceeds what this size and clue floor can supply.
    """
    geo = geometry(box)
    if min_clues is not None and not isinstance(min_clues, (int, np.integer)):
        lo, hi = (int(v) for v in min_clues)
        if not 0 <= lo <= hi:
            raise ValueError(f"min_clues range must satisfy 0 <= lo <= hi, got {min_clues}")
    seen = exclude if exclude is not None else set()
    puzzles: list[np.ndarray] = []
    solutions: list[np.ndarray] = []
    ratings: list[Any] = []
    failures = 0
    pool: list[np.ndarray] = []
    while len(puzzles) < count:
        if not pool:
            pool = list(random_solutions(geo, rng, 64)[::-1])
        solution = pool.pop()
        floor = min_clues if min_clues is None or isinstance(min_clues, (int, np.integer)) \
            else int(rng.integers(lo, hi + 1))
        puzzle = make_puzzle(solution, geo, rng, floor)
        key = canonical_key(puzzle, geo)
        if key in seen:
            failures += 1
            if failures >= max_failures:
                raise ValueError(
                    f"only {len(puzzles)} of {count} distinct {geo.n}x{geo.n} puzzles found "
                    f"(min_clues={min_clues}); ask for fewer or raise min_clues"
                )
            continue
        failures = 0
        seen.add(key)
        solved, guesses = solve(puzzle.tolist(), geo)
        if solved is None or not np.array_equal(np.asarray(solved), solution):
            raise AssertionError("generated puzzle does not solve back to its solution")
        puzzles.append(puzzle)
        solutions.append(solution)
        ratings.append(guesses)
        if progress is not None:
            progress(len(puzzles), count)
    n2 = geo.cells
    return SudokuSet(
        puzzles=np.asarray(puzzles, dtype=np.int64).reshape(-1, n2),
        solutions=np.asarray(solutions, dtype=np.int64).reshape(-1, n2),
        ratings=np.asarray(ratings, dtype=np.int64),
    )
