"""Generation time per puzzle for each sudoku size and for mazes.

    python benchmarks/bench_data.py [--count N] [--seed S]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from puzzles import maze, sudoku

SUDOKU_CASES: list[tuple[str, tuple[int, int], int | tuple[int, int] | None, int]] = [
    ("sudoku 4x4 minimal", (2, 2), None, 400),
    ("sudoku 4x4 floor 5", (2, 2), 5, 400),
    ("sudoku 6x6 minimal", (2, 3), None, 200),
    ("sudoku 6x6 floor 10", (2, 3), 10, 200),
    ("sudoku 9x9 floor 40-45", (3, 3), (40, 45), 200),
    ("sudoku 9x9 minimal", (3, 3), None, 20),
]
MAZE_CASES: list[tuple[str, int, int | None, float, int]] = [
    ("maze 9x9 perfect", 9, None, 0.0, 400),
    ("maze 15x15 loops 0.1", 15, None, 0.1, 200),
    ("maze 30x30 path>=110", 30, 110, 0.0, 50),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=None, help="puzzles per case (default: per-case)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'case':28s} {'count':>6s} {'ms/puzzle':>10s}  stats")
    for name, box, min_clues, default_count in SUDOKU_CASES:
        count = args.count or default_count
        rng = np.random.default_rng(args.seed)
        start = time.perf_counter()
        data = sudoku.generate(count, box, rng, min_clues=min_clues)
        ms = (time.perf_counter() - start) / count * 1000
        clues = (data.puzzles > 0).sum(axis=1)
        print(f"{name:28s} {count:6d} {ms:10.2f}  clues {clues.mean():.1f} "
              f"[{clues.min()}-{clues.max()}], guesses mean {data.ratings.mean():.1f} max {data.ratings.max()}")
    for name, size, min_len, loops, default_count in MAZE_CASES:
        count = args.count or default_count
        rng = np.random.default_rng(args.seed)
        start = time.perf_counter()
        mz = maze.generate(count, size, rng, min_path_len=min_len, loop_fraction=loops)
        ms = (time.perf_counter() - start) / count * 1000
        print(f"{name:28s} {count:6d} {ms:10.2f}  path length mean {mz.path_lengths.mean():.1f} "
              f"[{mz.path_lengths.min()}-{mz.path_lengths.max()}]")


if __name__ == "__main__":
    main()
