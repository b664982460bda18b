"""Maze generation with a unique shortest path from S to G.

Grid definition: a maze of ``size`` is a ``size x size`` character grid (the encoded sequence has
``size * size`` tokens). Maze cells sit at odd coordinates (1, 3, 5, ...) inside a one-character wall
border, and the characters between two cells are passages or walls; for an even ``size`` the last row
and the last column are an extra line of wall. A recursive backtracker carves a perfect maze (exactly
one path between any two cells); ``loop_fraction`` then knocks out that share of the remaining inner
walls between cells, and an instance is kept only if its shortest S-G path is unique (BFS path
counting). S and G are placed on open characters with a shortest path of at least ``min_path_len``
moves. The label is the input with the path characters between S and G marked ``o``.

Characters ``"# SGo"`` encode to tokens 1..5 (PAD 0), as in the reference.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5  # token ids
VOCAB_SIZE = len(CHARSET) + 1


def carve(size: int, rng: np.random.Generator, loop_fraction: float = 0.0) -> np.ndarray:
    """[size, size] bool wall mask of a random maze (perfect when ``loop_fraction`` is 0)."""
    if size < 5:
        raise ValueError(f"maze size must be at least 5, got {size}")
    if not 0.0 <= loop_fraction <= 1.0:
        raise ValueError(f"loop_fraction must lie in [0, 1], got {loop_fraction}")
    m = (size - 1) // 2
    wall = np.ones((size, size), dtype=bool)
    visited = np.zeros((m, m), dtype=bool)
    start = (int(rng.integers(m)), int(rng.integers(m)))
    visited[start] = True
    wall[2 * start[0] + 1, 2 * start[1] + 1] = False
    stack = [start]
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    while stack:
        a, b = stack[-1]
        options = [(a + da, b + db) for da, db in steps
                   if 0 <= a + da < m and 0 <= b + db < m and not visited[a + da, b + db]]
        if not options:
            stack.pop()
            continue
        na, nb = options[int(rng.integers(len(options)))]
        visited[na, nb] = True
        wall[a + na + 1, b + nb + 1] = False  # the character between the two cells
        wall[2 * na + 1, 2 * nb + 1] = False
        stack.append((na, nb))
    if loop_fraction > 0:
        inner = [(r, c) for r in range(1, 2 * m) for c in range(1, 2 * m)
                 if wall[r, c] and (r % 2) != (c % 2)]
        knock = int(round(loop_fraction * len(inner)))
        if knock:
            for j in rng.choice(len(inner), size=knock, replace=False).tolist():
                wall[inner[j]] = False
    return wall


def bfs(wall: np.ndarray, source: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (-1 unreachable) and shortest-path counts capped at 2, from ``source``."""
    size = wall.shape[0]
    dist = np.full((size, size), -1, dtype=np.int64)
    count = np.zeros((size, size), dtype=np.int64)
    dist[source] = 0
    count[source] = 1
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        d = dist[r, c] + 1
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < size and 0 <= nc < size and not wall[nr, nc]:
                if dist[nr, nc] < 0:
                    dist[nr, nc] = d
                    count[nr, nc] = count[r, c]
                    queue.append((nr, nc))
                elif dist[nr, nc] == d:
                    count[nr, nc] = min(2, count[nr, nc] + count[r, c])
    return dist, count


def shortest_path(wall: np.ndarray, dist: np.ndarray, goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Walk back from ``goal`` along decreasing distance; returns source..goal."""
    size = wall.shape[0]
    path = [goal]
    r, c = goal
    while dist[r, c] > 0:
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < size and 0 <= nc < size and dist[nr, nc] == dist[r, c] - 1:
                r, c = nr, nc
                break
        path.append((r, c))
    return path[::-1]


def make_instance(
    size: int,
    rng: np.random.Generator,
    *,
    min_path_len: int,
    loop_fraction: float = 0.0,
    max_tries: int = 200,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One (input tokens [size, size], label tokens [size, size], path length in moves)."""
    for _ in range(max_tries):
        wall = carve(size, rng, loop_fraction)
        open_cells = np.argwhere(~wall)
        for _ in range(4):
            sr, sc = (int(v) for v in open_cells[int(rng.integers(len(open_cells)))])
            s = (sr, sc)
            dist, count = bfs(wall, s)
            eligible = np.argwhere((dist >= min_path_len) & (count == 1))
            if len(eligible) == 0:
                continue
            gr, gc = (int(v) for v in eligible[int(rng.integers(len(eligible)))])
            g = (gr, gc)
            grid = np.where(wall, WALL, OPEN).astype(np.int64)
            grid[s] = START
            grid[g] = GOAL
            label = grid.copy()
            path = shortest_path(wall, dist, g)
            for cell in path[1:-1]:
                label[cell] = PATH
            return grid, label, int(dist[g])
    raise ValueError(
        f"no {size}x{size} maze with a unique shortest path of >= {min_path_len} moves in {max_tries} tries;"
        " lower min_path_len"
    )


def canonical_key(grid: np.ndarray) -> bytes:
    """Key equal for mazes that are dihedral images of each other."""
    from puzzles.symmetry import dihedral

    g = np.asarray(grid, dtype=np.uint8)
    return min(np.ascontiguousarray(dihedral(g, k)).tobytes() for k in range(8))


def default_min_path_len(size: int) -> int:
    return size


@dataclass
class MazeSet:
    inputs: np.ndarray  # [N, size*size] tokens
    labels: np.ndarray  # [N, size*size] tokens
    path_lengths: np.ndarray  # [N]


def generate(
    count: int,
    size: int,
    rng: np.random.Generator,
    *,
    min_path_len: int | None = None,
    loop_fraction: float = 0.0,
    exclude: set[bytes] | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_failures: int = 2000,
) -> MazeSet:
    """``count`` mazes distinct up to symmetry and not in ``exclude`` (which is updated)."""
    min_len = default_min_path_len(size) if min_path_len is None else int(min_path_len)
    seen = exclude if exclude is not None else set()
    inputs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    lengths: list[int] = []
    failures = 0
    while len(inputs) < count:
        grid, label, length = make_instance(size, rng, min_path_len=min_len, loop_fraction=loop_fraction)
        key = canonical_key(grid)
        if key in seen:
            failures += 1
            if failures >= max_failures:
                raise ValueError(f"only {len(inputs)} of {count} distinct {size}x{size} mazes found")
            continue
        failures = 0
        seen.add(key)
        inputs.append(grid.ravel())
        labels.append(label.ravel())
        lengths.append(length)
        if progress is not None:
            progress(len(inputs), count)
    return MazeSet(
        inputs=np.asarray(inputs, dtype=np.int64).reshape(-1, size * size),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1, size * size),
        path_lengths=np.asarray(lengths, dtype=np.int64),
    )


def decode(tokens: np.ndarray, size: int) -> list[str]:
    """Token grid back to text rows, for display and tests."""
    table = np.array(list("?" + CHARSET))
    return ["".join(row) for row in table[np.asarray(tokens).reshape(size, size)]]
