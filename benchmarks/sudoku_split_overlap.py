"""How far a Sudoku test split is from its training split, under the whole Sudoku symmetry group.

    python benchmarks/sudoku_split_overlap.py DATASET_DIR [DATASET_DIR ...]

A DATASET_DIR is one built by ``python -m hrm data build`` (it holds ``train/`` and ``test/``). The
builder keeps the splits disjoint up to digit relabelling and transpose. Training augmentation also
shuffles bands, stacks, rows within bands and columns within stacks, so a test puzzle that equals a
training puzzle under those moves is one the model may have seen. This prints, per dataset, the number
of classes under the whole group (relabelling, transpose, band/stack and row/column shuffles) in each
split and the share of test puzzles whose class also occurs in training. The group is enumerated: 3,072
moves per 4x4 puzzle (seconds per dataset), 3,456 row/column orders times relabelling per 6x6 puzzle
(minutes); 9x9 is out of reach this way.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from puzzles.sudoku import Geometry, canonical_key, geometry


def line_orders(n_bands: int, per_band: int) -> list[list[int]]:
    """Every order of n_bands bands of per_band lines that keeps lines inside their band."""
    orders = []
    inner = list(itertools.permutations(range(per_band)))
    for bands in itertools.permutations(range(n_bands)):
        for within in itertools.product(inner, repeat=n_bands):
            orders.append([b * per_band + r for b, rows in zip(bands, within, strict=True) for r in rows])
    return orders


def class_key(puzzle: np.ndarray, geo: Geometry, rows: list[list[int]], cols: list[list[int]]) -> bytes:
    """The smallest relabel-and-transpose key (the builder's own) over every band/row and stack/column order."""
    grid = puzzle.reshape(geo.n, geo.n)
    return min(canonical_key(grid[r][:, c].ravel(), geo) for r in rows for c in cols)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for root in args.datasets:
        meta = json.loads((root / "train" / "dataset.json").read_text())
        br, bc = meta["params"]["box"]
        geo = geometry((br, bc))
        rows, cols = line_orders(geo.n // br, br), line_orders(geo.n // bc, bc)
        # Tokens are cell value + 1 (1 = blank); back to 0 = blank, 1..n = digits.
        split = {
            name: np.load(root / name / "all__inputs.npy").astype(np.int64) - 1 for name in ("train", "test")
        }
        keys = {name: [class_key(p, geo, rows, cols) for p in arr] for name, arr in split.items()}
        train_classes = set(keys["train"])
        seen = sum(k in train_classes for k in keys["test"]) / max(1, len(keys["test"]))
        print(
            f"{root}: {len(split['train'])} train puzzles in {len(train_classes)} classes, "
            f"{len(split['test'])} test puzzles in {len(set(keys['test']))} classes; "
            f"test puzzles whose class is in train: {seen:.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
