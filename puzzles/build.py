"""Trusted puzzle datasets in the HRM reference format: the generators, the splits and the builder.

This package is part of the harness, outside the evolvable ``hrm/``: the verdict depends on it, so no
candidate can edit it. ``build_dataset(task, out_dir, seed=..., splits={...}, **kwargs)`` writes one folder
per named split (``train`` first; by default ``train`` and ``test``) and returns the train split's
metadata. Puzzles are distinct across all splits (up to the symmetries the generator deduplicates), and the
whole output is a pure function of the seed: the engine builds its held-out splits from a per-run secret
seed so that a candidate can neither read nor regenerate them.

Tasks and their keyword arguments:

- ``"sudoku"``: ``box=(2, 2) | (2, 3) | (3, 3)``, ``n_train=2000``, ``n_test=500``, ``min_clues=None``
  (None: minimal puzzles; an int: stop removing clues at that floor; a pair ``[lo, hi]``: a floor drawn
  per puzzle), ``num_aug=0`` (stored augmentations per train puzzle, groups of ``1 + num_aug``).
  4x4 has only about 1.2k minimal puzzles up to relabelling, so ask for ``min_clues=5`` or more there.
- ``"maze"``: ``size=9`` (the grid is ``size x size`` characters, see :mod:`puzzles.maze`),
  ``n_train=1000``, ``n_test=200``, ``min_path_len=None`` (None: ``size`` moves), ``loop_fraction=0.0``,
  ``dihedral_aug=False`` (store the 8 symmetries of each train maze as one group).
- ``"jsonl"``: ``train_file``, ``test_file=None`` (None: hold out ``test_fraction=0.1`` of the train
  lines), ``seq_len=None``, ``vocab=None`` (see :mod:`puzzles.jsonl_task`); two splits only.
- ``"file"``: the run's own task file, split train/select/final (see :mod:`puzzles.file_task`; its kwargs
  come from ``file_task_spec``).

``splits`` (an ordered mapping of split name to puzzle count, ``train`` first) replaces ``n_train`` and
``n_test`` for sudoku and maze, e.g. ``{"train": 2000, "select": 500, "final": 500}``.
Aliases in ``TASK_ALIASES`` (``sudoku4``, ``sudoku6``, ``sudoku9``, ``maze``) are accepted as ``task``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from puzzles import jsonl_task, maze, sudoku
from puzzles.file_task import build_file_dataset
from puzzles.format import DatasetMetadata, write_split
from puzzles.symmetry import dihedral as _dihedral
from puzzles.symmetry import sudoku_symmetry_batch

__all__ = ["TASK_ALIASES", "DatasetMetadata", "build_dataset", "resolve_task", "write_split"]

TASK_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sudoku4": ("sudoku", {"box": (2, 2)}),
    "sudoku6": ("sudoku", {"box": (2, 3)}),
    "sudoku9": ("sudoku", {"box": (3, 3)}),
    "maze": ("maze", {}),
}

Progress = Callable[[int, int], None]


def resolve_task(task: str, kwargs: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Map an alias to (base task, merged kwargs); explicit kwargs win over alias defaults."""
    base, defaults = TASK_ALIASES.get(task, (task, {}))
    merged = dict(defaults)
    merged.update(kwargs or {})
    return base, merged


def _single_csr(n: int, group_size: int = 1) -> dict[str, np.ndarray]:
    """Indices for n puzzles of one example each, grouped ``group_size`` at a time."""
    return {
        "puzzle_identifiers": np.zeros(n, dtype=np.int32),
        "puzzle_indices": np.arange(n + 1, dtype=np.int32),
        "group_indices": np.arange(0, n + 1, group_size, dtype=np.int32),
    }


def _meta(vocab_size: int, seq_len: int, groups: int, task: str, params: dict[str, Any]) -> DatasetMetadata:
    return DatasetMetadata(
        pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size, seq_len=seq_len,
        num_puzzle_identifiers=1, total_groups=groups, mean_puzzle_examples=1.0, sets=["all"],
        task=task, params=params,
    )


def _split_counts(splits: dict[str, int] | None, n_train: int, n_test: int) -> list[tuple[str, int]]:
    """The (name, count) list to generate, ``train`` first."""
    if splits is None:
        return [("train", int(n_train)), ("test", int(n_test))]
    items = [(str(k), int(v)) for k, v in splits.items()]
    if not items or items[0][0] != "train" or len({k for k, _ in items}) != len(items):
        raise ValueError(f"splits must name distinct splits with 'train' first, got {list(splits)}")
    if any(v < 1 for _, v in items):
        raise ValueError(f"every split needs at least one puzzle, got {splits}")
    return items


def _generate_splits(counts: list[tuple[str, int]], progress: Progress | None,
                     make: Callable[[int, set[bytes], Callable[[int, int], None]], Any]) -> list[Any]:
    """One generator call per split, sharing the exclusion set so that no puzzle is in two splits."""
    seen: set[bytes] = set()
    total = sum(count for _, count in counts)
    out = []
    offset = 0
    for _, count in counts:
        def report(done: int, _count: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + done, total)
        out.append(make(count, seen, report))
        offset += count
    return out


def _build_sudoku(
    out_dir: Path, rng: np.random.Generator, *, box: tuple[int, int] | list[int] = (3, 3), n_train: int = 2000,
    n_test: int = 500, min_clues: int | list[int] | tuple[int, int] | None = None, num_aug: int = 0,
    splits: dict[str, int] | None = None, progress: Progress | None = None,
) -> DatasetMetadata:
    geo = sudoku.geometry(tuple(box))  # type: ignore[arg-type]
    if num_aug < 0:
        raise ValueError("num_aug must be >= 0")
    counts = _split_counts(splits, n_train, n_test)
    sets = _generate_splits(counts, progress, lambda count, seen, report: sudoku.generate(
        count, (geo.br, geo.bc), rng, min_clues=min_clues, exclude=seen, progress=report))
    params_common = {"box": [geo.br, geo.bc], "n": geo.n, "min_clues": min_clues}
    meta = None
    for (split, _), data in zip(counts, sets, strict=True):
        aug = num_aug if split == "train" else 0
        inputs, labels = sudoku.encode(data.puzzles), sudoku.encode(data.solutions)
        if aug:
            rep_in = np.repeat(inputs, aug, axis=0)
            rep_lab = np.repeat(labels, aug, axis=0)
            aug_in, aug_lab = sudoku_symmetry_batch(rep_in, rep_lab, geo.br, geo.bc, rng)
            assert aug_lab is not None
            inputs = np.concatenate([inputs[:, None], aug_in.reshape(len(inputs), aug, -1)], axis=1)
            labels = np.concatenate([labels[:, None], aug_lab.reshape(len(labels), aug, -1)], axis=1)
            inputs, labels = inputs.reshape(-1, geo.cells), labels.reshape(-1, geo.cells)
        arrays = {"inputs": inputs, "labels": labels, **_single_csr(len(inputs), 1 + aug)}
        clues = (data.puzzles > 0).sum(axis=1)
        params = {**params_common, "num_aug": aug, "puzzles": len(data.puzzles),
                  "mean_clues": float(clues.mean()) if len(clues) else 0.0,
                  "mean_rating": float(data.ratings.mean()) if len(clues) else 0.0,
                  "max_rating": int(data.ratings.max()) if len(clues) else 0}
        split_meta = _meta(geo.n + 2, geo.cells, len(data.puzzles), "sudoku", params)
        write_split(out_dir, split, arrays, split_meta)
        meta = meta or split_meta
    assert meta is not None
    return meta


def _build_maze(
    out_dir: Path, rng: np.random.Generator, *, size: int = 9, n_train: int = 1000, n_test: int = 200,
    min_path_len: int | None = None, loop_fraction: float = 0.0, dihedral_aug: bool = False,
    splits: dict[str, int] | None = None, progress: Progress | None = None,
) -> DatasetMetadata:
    counts = _split_counts(splits, n_train, n_test)
    sets = _generate_splits(counts, progress, lambda count, seen, report: maze.generate(
        count, size, rng, min_path_len=min_path_len, loop_fraction=loop_fraction, exclude=seen,
        progress=report))
    min_len = maze.default_min_path_len(size) if min_path_len is None else int(min_path_len)
    meta = None
    for (split, _), data in zip(counts, sets, strict=True):
        aug = dihedral_aug and split == "train"
        inputs, labels = data.inputs, data.labels
        group = 1
        if aug:
            group = 8
            grids_in = inputs.reshape(-1, size, size)
            grids_lab = labels.reshape(-1, size, size)
            inputs = np.stack([_dihedral(grids_in, k) for k in range(8)], axis=1).reshape(-1, size * size)
            labels = np.stack([_dihedral(grids_lab, k) for k in range(8)], axis=1).reshape(-1, size * size)
        arrays = {"inputs": inputs, "labels": labels, **_single_csr(len(inputs), group)}
        params = {"size": size, "min_path_len": min_len, "loop_fraction": loop_fraction,
                  "dihedral_aug": bool(aug), "puzzles": len(data.inputs),
                  "mean_path_len": float(data.path_lengths.mean()) if len(data.inputs) else 0.0}
        split_meta = _meta(maze.VOCAB_SIZE, size * size, len(data.inputs), "maze", params)
        write_split(out_dir, split, arrays, split_meta)
        meta = meta or split_meta
    assert meta is not None
    return meta


def _build_jsonl(
    out_dir: Path, rng: np.random.Generator, *, train_file: str | Path, test_file: str | Path | None = None,
    seq_len: int | None = None, vocab: list[Any] | None = None, test_fraction: float = 0.1,
    progress: Progress | None = None,
) -> DatasetMetadata:
    train_pairs = jsonl_task.read_jsonl(Path(train_file))
    if test_file is not None:
        test_pairs = jsonl_task.read_jsonl(Path(test_file))
    else:
        if not 0.0 < test_fraction < 1.0 or len(train_pairs) < 2:
            raise ValueError("without test_file, need >= 2 train lines and 0 < test_fraction < 1")
        order = rng.permutation(len(train_pairs))
        n_test = max(1, int(round(test_fraction * len(train_pairs))))
        test_pairs = [train_pairs[i] for i in sorted(order[:n_test].tolist())]
        train_pairs = [train_pairs[i] for i in sorted(order[n_test:].tolist())]
    tokens = jsonl_task.resolve_vocab(vocab, train_pairs + test_pairs)
    longest = max(max(len(i), len(o)) for i, o in train_pairs + test_pairs)
    length = longest if seq_len is None else int(seq_len)
    meta = None
    for split, pairs in (("train", train_pairs), ("test", test_pairs)):
        inputs, labels = jsonl_task.encode_pairs(pairs, tokens, length)
        arrays = {"inputs": inputs, "labels": labels, **_single_csr(len(inputs))}
        params = {"vocab": [jsonl_task.PAD_TOKEN, *tokens], "examples": len(pairs),
                  "source": str(train_file if split == "train" or test_file is None else test_file)}
        split_meta = _meta(len(tokens) + 1, length, len(pairs), "jsonl", params)
        write_split(out_dir, split, arrays, split_meta)
        if progress is not None:
            progress(len(pairs), len(pairs))
        meta = meta or split_meta
    assert meta is not None
    return meta


_BUILDERS: dict[str, Callable[..., DatasetMetadata]] = {
    "sudoku": _build_sudoku,
    "maze": _build_maze,
    "jsonl": _build_jsonl,
    "file": build_file_dataset,
}


def build_dataset(task: str, out_dir: Path, *, seed: int = 0, **kwargs: Any) -> DatasetMetadata:
    """Generate ``task`` into ``out_dir/{train,test}`` (reference layout); returns the train metadata."""
    base, merged = resolve_task(task, kwargs)
    if base not in _BUILDERS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(_BUILDERS)} and aliases {sorted(TASK_ALIASES)}")
    rng = np.random.default_rng(seed)
    meta = _BUILDERS[base](Path(out_dir), rng, **merged)
    return meta
