"""Validity-preserving symmetries the trusted generators use (random solution grids, maze deduplication and
stored augmentations), vectorised over a batch of flattened grids. The evolvable hrm/data/augment.py has
its own copy for training-time augmentation.

Sudoku: a digit permutation (pad and blank fixed), a transpose (square boxes only), a shuffle of the bands
and of the rows inside each band, and of the stacks and of the columns inside each stack.
Maze: the 8 symmetries of the square (rotations and reflections).

Every example in the batch draws its own transform; inputs and labels of one example share it.
"""

from __future__ import annotations

import numpy as np


def _grouped_permutations(rng: np.random.Generator, batch: int, groups: int, size: int) -> np.ndarray:
    """[batch, groups * size]: shuffle the groups, then the members inside each group."""
    group_order = np.argsort(rng.random((batch, groups)), axis=1)
    inner = np.argsort(rng.random((batch, groups, size)), axis=2)
    return (group_order[:, :, None] * size + inner).reshape(batch, groups * size)


def sudoku_symmetry_batch(
    inputs: np.ndarray,
    labels: np.ndarray | None,
    br: int,
    bc: int,
    rng: np.random.Generator,
    *,
    token_offset: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply one random sudoku symmetry per row of ``inputs`` [B, n*n] (and ``labels``, alike).

    Values below ``1 + token_offset`` are kept (with the reference tokens, offset 1: PAD 0 and blank 1);
    the n digits above are permuted. ``token_offset=0`` works on plain cell values (0 blank, 1..n).
    """
    n = br * bc
    inputs = np.asarray(inputs)
    batch = inputs.shape[0]
    if inputs.shape[1] != n * n:
        raise ValueError(f"sudoku batch has {inputs.shape[1]} cells, expected {n * n}")
    row_perm = _grouped_permutations(rng, batch, n // br, br)  # bands are br rows tall
    col_perm = _grouped_permutations(rng, batch, n // bc, bc)  # stacks are bc columns wide
    # new[r, c] = old[row_perm[r], col_perm[c]]
    source = row_perm[:, :, None] * n + col_perm[:, None, :]
    if br == bc:
        transpose = np.asarray(rng.random(batch) < 0.5)
        source_t = col_perm[:, None, :] * n + row_perm[:, :, None]  # new[r, c] = old[col_perm[c], row_perm[r]]
        source = np.where(transpose[:, None, None], source_t, source)
    source = source.reshape(batch, n * n)

    low = 1 + token_offset
    digit_perm = np.argsort(rng.random((batch, n)), axis=1) + low
    fixed = np.broadcast_to(np.arange(low), (batch, low))
    digit_map = np.concatenate([fixed, digit_perm], axis=1)

    def apply(x: np.ndarray) -> np.ndarray:
        moved = np.take_along_axis(np.asarray(x), source, axis=1)
        if moved.size and (moved.min() < 0 or moved.max() >= n + low):
            raise ValueError(f"sudoku values must lie in [0, {n + low})")
        return np.take_along_axis(digit_map, moved.astype(np.int64), axis=1).astype(x.dtype, copy=False)

    return apply(inputs), (apply(labels) if labels is not None else None)


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Symmetry ``k`` (0..7) of the square applied to the last two axes: k % 4 quarter turns, then a
    transpose when k >= 4."""
    out = np.rot90(grid, k % 4, axes=(-2, -1))
    if k >= 4:
        out = np.swapaxes(out, -2, -1)
    return out
