"""Maze generator: unique shortest path, path length floor, labels marking exactly that path."""

from __future__ import annotations

import numpy as np
import pytest

from puzzles import maze


def _check_instance(inp: np.ndarray, lab: np.ndarray, size: int, min_len: int) -> int:
    grid = inp.reshape(size, size)
    label = lab.reshape(size, size)
    assert set(np.unique(grid)) <= {maze.WALL, maze.OPEN, maze.START, maze.GOAL}
    assert (grid == maze.START).sum() == 1 and (grid == maze.GOAL).sum() == 1
    assert np.all(grid[0] == maze.WALL) and np.all(grid[:, 0] == maze.WALL)
    assert np.all(grid[-1] == maze.WALL) and np.all(grid[:, -1] == maze.WALL)
    # the label only turns open cells into path cells
    changed = grid != label
    assert np.all(grid[changed] == maze.OPEN) and np.all(label[changed] == maze.PATH)
    wall = grid == maze.WALL
    s = tuple(np.argwhere(grid == maze.START)[0])
    g = tuple(np.argwhere(grid == maze.GOAL)[0])
    dist, count = maze.bfs(wall, s)
    assert dist[g] >= min_len
    assert count[g] == 1
    # path cells: exactly dist-1 of them, a chain of 4-neighbours from S to G with rising distance
    assert changed.sum() == dist[g] - 1
    on_path = changed | (grid == maze.START) | (grid == maze.GOAL)
    for r, c in np.argwhere(changed):
        nbrs = [(r + dr, c + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        assert sum(bool(on_path[n]) for n in nbrs) == 2
    return int(dist[g])


@pytest.mark.parametrize("size,loops,min_len", [(9, 0.0, None), (11, 0.2, 12), (12, 0.0, 10)])
def test_instances_have_unique_marked_shortest_path(size: int, loops: float, min_len: int | None) -> None:
    data = maze.generate(15, size, np.random.default_rng(0), min_path_len=min_len, loop_fraction=loops)
    floor = size if min_len is None else min_len
    for inp, lab, length in zip(data.inputs, data.labels, data.path_lengths, strict=True):
        assert _check_instance(inp, lab, size, floor) == length


def test_perfect_maze_is_a_tree() -> None:
    wall = maze.carve(15, np.random.default_rng(3))
    open_count = int((~wall).sum())
    # a spanning tree over the open characters: edges = nodes - 1 and everything is connected
    edges = int((~wall[:, :-1] & ~wall[:, 1:]).sum() + (~wall[:-1] & ~wall[1:]).sum())
    assert edges == open_count - 1
    dist, _ = maze.bfs(wall, tuple(np.argwhere(~wall)[0]))
    assert np.all(dist[~wall] >= 0)


def test_loops_add_cycles() -> None:
    wall = maze.carve(15, np.random.default_rng(3), loop_fraction=0.3)
    edges = int((~wall[:, :-1] & ~wall[:, 1:]).sum() + (~wall[:-1] & ~wall[1:]).sum())
    assert edges > int((~wall).sum()) - 1


def test_dedup_deterministic_and_errors() -> None:
    a = maze.generate(30, 9, np.random.default_rng(7))
    b = maze.generate(30, 9, np.random.default_rng(7))
    assert np.array_equal(a.inputs, b.inputs)
    assert len({maze.canonical_key(x.reshape(9, 9)) for x in a.inputs}) == 30
    with pytest.raises(ValueError, match="min_path_len"):
        maze.make_instance(5, np.random.default_rng(0), min_path_len=50, max_tries=3)
    with pytest.raises(ValueError):
        maze.carve(3, np.random.default_rng(0))
    assert maze.decode(a.inputs[0], 9)[0] == "#" * 9
