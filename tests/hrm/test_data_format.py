"""dataset.json + .npy layout: round trip, validation, and loading a directory written like the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hrm.data.dataset import PuzzleDataset
from hrm.data.format import DatasetMetadata, load_split, write_split


def _meta(**overrides: object) -> DatasetMetadata:
    base = dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6, seq_len=4,
                num_puzzle_identifiers=1, total_groups=2, mean_puzzle_examples=1.0, sets=["all"],
                task="sudoku", params={"box": [2, 2]})
    base.update(overrides)
    return DatasetMetadata(**base)  # type: ignore[arg-type]


def _arrays() -> dict[str, np.ndarray]:
    return {
        "inputs": np.array([[1, 2, 3, 4], [2, 1, 1, 1], [5, 4, 3, 2]]),
        "labels": np.array([[2, 3, 4, 5], [2, 3, 4, 5], [5, 4, 3, 2]]),
        "puzzle_identifiers": np.zeros(3, dtype=np.int32),
        "puzzle_indices": np.array([0, 1, 2, 3]),
        "group_indices": np.array([0, 2, 3]),
    }


def test_round_trip(tmp_path: Path) -> None:
    arrays = _arrays()
    write_split(tmp_path, "train", arrays, _meta())
    meta, loaded = load_split(tmp_path, "train")
    assert meta == _meta()
    for k, v in arrays.items():
        assert np.array_equal(loaded[k], v)
    assert json.loads((tmp_path / "identifiers.json").read_text()) == ["<blank>"]
    assert np.load(tmp_path / "train" / "all__inputs.npy").dtype == np.uint8
    assert np.load(tmp_path / "train" / "all__puzzle_indices.npy").dtype == np.int32


@pytest.mark.parametrize("field,value", [
    ("puzzle_indices", np.array([0, 1, 1, 3])),
    ("group_indices", np.array([0, 2, 4])),
    ("puzzle_identifiers", np.zeros(2, dtype=np.int32)),
    ("inputs", np.array([[1, 2, 3, 9], [2, 1, 1, 1], [5, 4, 3, 2]])),
])
def test_write_rejects_broken_arrays(tmp_path: Path, field: str, value: np.ndarray) -> None:
    arrays = _arrays()
    arrays[field] = value
    with pytest.raises(ValueError):
        write_split(tmp_path, "train", arrays, _meta())


def _write_reference_style(root: Path) -> None:
    """A 4x4-sudoku split laid out exactly as the reference builder writes it: uint8 tokens, int32 indices,
    dataset.json without our ``task``/``params`` fields, and two sets to exercise concatenation."""
    split = root / "train"
    split.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for set_name, n in (("all", 5), ("extra", 3)):
        np.save(split / f"{set_name}__inputs.npy", rng.integers(1, 6, size=(n, 16)).astype(np.uint8))
        np.save(split / f"{set_name}__labels.npy", rng.integers(2, 6, size=(n, 16)).astype(np.uint8))
        np.save(split / f"{set_name}__puzzle_identifiers.npy", np.zeros(n, dtype=np.int32))
        np.save(split / f"{set_name}__puzzle_indices.npy", np.arange(n + 1, dtype=np.int32))
        np.save(split / f"{set_name}__group_indices.npy", np.arange(n + 1, dtype=np.int32))
    meta = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 6, "seq_len": 16,
            "num_puzzle_identifiers": 1, "total_groups": 8, "mean_puzzle_examples": 1, "sets": ["all", "extra"]}
    (split / "dataset.json").write_text(json.dumps(meta))
    (root / "identifiers.json").write_text(json.dumps(["<blank>"]))


def test_loads_reference_layout_and_does_not_augment(tmp_path: Path) -> None:
    _write_reference_style(tmp_path)
    ds = PuzzleDataset(tmp_path, "train")
    assert ds.meta.task is None and ds.meta.params == {}
    assert len(ds) == 8 and ds.num_groups == 8
    assert list(ds.group_indices) == list(range(9))
    assert not ds.can_augment()
    batches = list(ds.train_batches(4, np.random.default_rng(0), augment=True))
    assert len(batches) == 2
    seen = sorted(row.tobytes() for b in batches for row in b["inputs"].astype(np.uint8))
    assert seen == sorted(row.tobytes() for row in ds.inputs)  # rows served unchanged
    assert all(b["labels"].min() >= 2 for b in batches)


def test_metadata_missing_field_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "dataset.json").write_text(json.dumps({"pad_id": 0}))
    with pytest.raises(ValueError, match="missing"):
        load_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path, "test")
