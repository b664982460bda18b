"""Read a dataset split (ours or the reference builders') and serve training and evaluation batches.

Batches are dicts of int64 numpy arrays: ``inputs [B, L]``, ``labels [B, L]`` (label tokens equal to
``meta.ignore_label_id`` become -100, so only padding is ignored and, as in the reference, the loss also
covers the given cells) and ``puzzle_identifiers [B]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hrm.data.augment import maze_dihedral_batch, sudoku_symmetry_batch
from hrm.data.format import load_split

IGNORE_LABEL = -100


class PuzzleDataset:
    """One split in memory.

    ``inputs``/``labels`` are the stored token arrays [N, seq_len]; ``puzzle_identifiers`` is one
    identifier per example [N] (the stored per-puzzle array expanded through ``puzzle_indices``);
    ``puzzle_indices``/``group_indices`` are the stored CSR offsets.
    """

    def __init__(self, root: Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        self.meta, arrays = load_split(self.root, split)
        self.inputs: np.ndarray = arrays["inputs"]
        self.labels: np.ndarray = arrays["labels"]
        self.puzzle_indices: np.ndarray = arrays["puzzle_indices"].astype(np.int64)
        self.group_indices: np.ndarray = arrays["group_indices"].astype(np.int64)
        per_puzzle = arrays["puzzle_identifiers"].astype(np.int64)
        self.puzzle_identifiers: np.ndarray = np.repeat(per_puzzle, np.diff(self.puzzle_indices))
        if self.inputs.shape[1] != self.meta.seq_len:
            raise ValueError(f"{self.root}/{split}: arrays have seq_len {self.inputs.shape[1]}, "
                             f"dataset.json says {self.meta.seq_len}")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_groups(self) -> int:
        return len(self.group_indices) - 1

    @property
    def task(self) -> str | None:
        return self.meta.task

    def can_augment(self) -> bool:
        """True for our sudoku and maze datasets; data without stored task info is never augmented."""
        params = self.meta.params
        if self.meta.task == "sudoku":
            return "box" in params
        if self.meta.task == "maze":
            return "size" in params
        return False

    def _augment(self, inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        params = self.meta.params
        if self.meta.task == "sudoku":
            br, bc = (int(v) for v in params["box"])
            new_in, new_lab = sudoku_symmetry_batch(inputs, labels, br, bc, rng)
        else:
            new_in, new_lab = maze_dihedral_batch(inputs, labels, int(params["size"]), rng)
        assert new_lab is not None
        return new_in, new_lab

    def _collate(self, inputs: np.ndarray, labels: np.ndarray, identifiers: np.ndarray) -> dict[str, np.ndarray]:
        labels = labels.astype(np.int64)
        if self.meta.ignore_label_id is not None:
            labels[labels == self.meta.ignore_label_id] = IGNORE_LABEL
        return {
            "inputs": inputs.astype(np.int64),
            "labels": labels,
            "puzzle_identifiers": identifiers.astype(np.int64),
        }

    def train_batches(
        self, batch_size: int, rng: np.random.Generator, augment: bool = True
    ) -> Iterator[dict[str, np.ndarray]]:
        """One epoch: shuffled groups, one random puzzle per group, one random example of that puzzle.

        The partial last batch is dropped, so an epoch has ``num_groups // batch_size`` batches.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if self.num_groups < batch_size:
            raise ValueError(f"{self.split} split has {self.num_groups} groups, fewer than batch_size={batch_size}")
        order = rng.permutation(self.num_groups)
        g_lo, g_hi = self.group_indices[order], self.group_indices[order + 1]
        puzzles = g_lo + (rng.random(len(order)) * (g_hi - g_lo)).astype(np.int64)
        p_lo, p_hi = self.puzzle_indices[puzzles], self.puzzle_indices[puzzles + 1]
        examples = p_lo + (rng.random(len(order)) * (p_hi - p_lo)).astype(np.int64)
        do_augment = augment and self.can_augment()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = examples[start:start + batch_size]
            inputs, labels = self.inputs[idx], self.labels[idx]
            if do_augment:
                inputs, labels = self._augment(inputs, labels, rng)
            yield self._collate(inputs, labels, self.puzzle_identifiers[idx])

    def eval_batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """Every example in order; the last batch is padded (inputs PAD, labels -100, blank identifier).

        Yields (batch, number of valid leading rows).
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        n = len(self)
        for start in range(0, n, batch_size):
            end = min(n, start + batch_size)
            batch = self._collate(self.inputs[start:end], self.labels[start:end],
                                  self.puzzle_identifiers[start:end])
            valid = end - start
            pad = batch_size - valid
            if pad:
                fill = {"inputs": self.meta.pad_id, "labels": IGNORE_LABEL,
                        "puzzle_identifiers": self.meta.blank_identifier_id}
                batch = {k: np.concatenate([v, np.full((pad, *v.shape[1:]), fill[k], dtype=np.int64)])
                         for k, v in batch.items()}
            yield batch, valid
