"""The on-disk puzzle dataset layout used by the HRM reference builders: the trusted writer.

The harness reads splits with puzzles.arrays; the evolvable hrm/data/format.py keeps its own reader (and a
copy of this writer), since hrm/ imports nothing of the engine.

A dataset directory holds one folder per split::

    {root}/{split}/dataset.json
    {root}/{split}/{set}__inputs.npy              [N, seq_len] token ids
    {root}/{split}/{set}__labels.npy              [N, seq_len] token ids
    {root}/{split}/{set}__puzzle_identifiers.npy  [P] one identifier per puzzle
    {root}/{split}/{set}__puzzle_indices.npy      [P + 1] CSR offsets: examples of puzzle p
    {root}/{split}/{set}__group_indices.npy       [G + 1] CSR offsets: puzzles of group g
    {root}/identifiers.json                       names of the puzzle identifiers

A group is one original puzzle plus its stored augmentations. Our builders always use the set
name ``"all"``; datasets written by the reference scripts load as they are.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ARRAY_FIELDS: tuple[str, ...] = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
DEFAULT_SET = "all"


@dataclass
class DatasetMetadata:
    """The fields of ``dataset.json``; ``task`` and ``params`` are our optional additions."""

    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    sets: list[str] = field(default_factory=lambda: [DEFAULT_SET])
    task: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetMetadata:
        """Build from a parsed dataset.json. Keys other builders add and we do not know are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"dataset.json is missing field(s) {missing}")
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("params") is None:
            kwargs["params"] = {}
        return cls(**kwargs)


def _check_arrays(arrays: dict[str, np.ndarray], meta: DatasetMetadata) -> None:
    missing = [k for k in ARRAY_FIELDS if k not in arrays]
    if missing:
        raise ValueError(f"write_split: missing array(s) {missing}")
    inputs, labels = arrays["inputs"], arrays["labels"]
    if inputs.ndim != 2 or inputs.shape != labels.shape:
        raise ValueError(f"inputs {inputs.shape} and labels {labels.shape} must be equal [N, seq_len] arrays")
    if inputs.shape[1] != meta.seq_len:
        raise ValueError(f"arrays have seq_len {inputs.shape[1]} but metadata says {meta.seq_len}")
    pi, gi, ids = arrays["puzzle_indices"], arrays["group_indices"], arrays["puzzle_identifiers"]
    if pi[0] != 0 or pi[-1] != len(inputs) or np.any(np.diff(pi) <= 0):
        raise ValueError("puzzle_indices must rise strictly from 0 to the number of examples")
    if gi[0] != 0 or gi[-1] != len(pi) - 1 or np.any(np.diff(gi) <= 0):
        raise ValueError("group_indices must rise strictly from 0 to the number of puzzles")
    if len(ids) != len(pi) - 1:
        raise ValueError(f"{len(ids)} puzzle identifiers for {len(pi) - 1} puzzles")
    if len(inputs) and (int(inputs.max()) >= meta.vocab_size or int(inputs.min()) < 0):
        raise ValueError("inputs hold token ids outside [0, vocab_size)")
    if len(labels) and (int(labels.max()) >= meta.vocab_size or int(labels.min()) < 0):
        raise ValueError("labels hold token ids outside [0, vocab_size)")


def _token_dtype(vocab_size: int) -> type[np.integer]:
    return np.uint8 if vocab_size <= 256 else np.int32


def write_split(
    root: Path,
    split: str,
    arrays: dict[str, np.ndarray],
    meta: DatasetMetadata,
    identifiers: list[str] | None = None,
) -> None:
    """Write one split (set ``"all"``) and ``root/identifiers.json``, validating the CSR structure."""
    _check_arrays(arrays, meta)
    root = Path(root)
    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    meta = dataclasses.replace(meta, sets=[DEFAULT_SET], total_groups=len(arrays["group_indices"]) - 1)
    token_dtype = _token_dtype(meta.vocab_size)
    for name in ARRAY_FIELDS:
        dtype = token_dtype if name in ("inputs", "labels") else np.int32
        np.save(split_dir / f"{DEFAULT_SET}__{name}.npy", np.ascontiguousarray(arrays[name], dtype=dtype))
    (split_dir / "dataset.json").write_text(json.dumps(meta.to_dict(), indent=1) + "\n")
    names = identifiers if identifiers is not None else ["<blank>"]
    (root / "identifiers.json").write_text(json.dumps(names) + "\n")
