"""The harness's own reader of a dataset split (reference layout), independent of the candidate's loader.

Reads `{root}/{split}/dataset.json` and the `{set}__*.npy` arrays with numpy (never unpickling), expands the
per-puzzle identifiers to one per example, and maps labels equal to `ignore_label_id` to -100. A split
whose label files were withheld (the evaluate stage's sealed test split) loads with `labels=None`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from puzzles.scoring import IGNORE_LABEL


@dataclass
class SplitArrays:
    meta: dict[str, Any]
    inputs: np.ndarray  # [N, L] int64
    labels: np.ndarray | None  # [N, L] int64, -100 where ignored; None when withheld
    puzzle_identifiers: np.ndarray  # [N] int64, one per example

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def batch(self, rows: np.ndarray, with_labels: bool = True) -> dict[str, np.ndarray]:
        out = {"inputs": self.inputs[rows], "puzzle_identifiers": self.puzzle_identifiers[rows]}
        if with_labels:
            if self.labels is None:
                raise ValueError("this split's labels were withheld")
            out["labels"] = self.labels[rows]
        return out


def _load(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def load_split(root: Path, split: str) -> SplitArrays:
    split_dir = Path(root) / split
    meta = json.loads((split_dir / "dataset.json").read_text())
    sets = list(meta.get("sets") or ["all"])
    inputs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    identifiers: list[np.ndarray] = []
    have_labels = all((split_dir / f"{name}__labels.npy").exists() for name in sets)
    for name in sets:
        set_inputs = _load(split_dir / f"{name}__inputs.npy").astype(np.int64)
        per_puzzle = _load(split_dir / f"{name}__puzzle_identifiers.npy").astype(np.int64)
        puzzle_indices = _load(split_dir / f"{name}__puzzle_indices.npy").astype(np.int64)
        counts = np.diff(puzzle_indices)
        if counts.sum() != set_inputs.shape[0] or counts.shape[0] != per_puzzle.shape[0]:
            raise ValueError(f"{split_dir}: set {name!r} has inconsistent puzzle_indices")
        inputs.append(set_inputs)
        identifiers.append(np.repeat(per_puzzle, counts))
        if have_labels:
            set_labels = _load(split_dir / f"{name}__labels.npy").astype(np.int64)
            ignore = meta.get("ignore_label_id")
            if ignore is not None:
                set_labels = np.where(set_labels == ignore, IGNORE_LABEL, set_labels)
            labels.append(set_labels)
    return SplitArrays(
        meta=meta,
        inputs=np.concatenate(inputs),
        labels=np.concatenate(labels) if have_labels else None,
        puzzle_identifiers=np.concatenate(identifiers),
    )


def random_batches(split: SplitArrays, batch_size: int, rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
    """Endless full batches: a fresh permutation per epoch, the partial tail dropped."""
    if len(split) < batch_size:
        raise ValueError(f"split has {len(split)} examples, fewer than the batch size {batch_size}")
    while True:
        order = rng.permutation(len(split))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield split.batch(order[start : start + batch_size])
