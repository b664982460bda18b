"""A user's own sequences as a task: vocabulary, padding, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hrm.data.dataset import PuzzleDataset
from puzzles import build_dataset


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_task_builds_vocab_and_pads(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.jsonl", [
        {"input": ["hp:3", "enemy:near", 0], "output": ["flee"]},
        {"input": ["hp:9", "enemy:near", 5], "output": ["attack"]},
    ])
    test = _write(tmp_path / "test.jsonl", [{"input": ["hp:9", "enemy:far", "5"], "output": ["explore", 0]}])
    meta = build_dataset("jsonl", tmp_path / "d", train_file=train, test_file=test)
    vocab = meta.params["vocab"]
    assert vocab[0] == "<pad>" and meta.vocab_size == len(vocab) == 10
    assert meta.seq_len == 3 and meta.task == "jsonl"
    ds = PuzzleDataset(tmp_path / "d", "test")
    ids = {t: i for i, t in enumerate(vocab)}
    assert ds.inputs[0].tolist() == [ids["hp:9"], ids["enemy:far"], ids["5"]]  # 5 and "5" are one token
    assert ds.labels[0].tolist() == [ids["explore"], ids["0"], 0]
    assert not ds.can_augment()
    batch = next(PuzzleDataset(tmp_path / "d", "train").train_batches(2, np.random.default_rng(0)))
    assert batch["labels"][:, 1:].tolist() == [[-100, -100], [-100, -100]]


def test_given_vocab_seq_len_and_holdout(tmp_path: Path) -> None:
    records = [{"input": [i % 3, (i + 1) % 3], "output": [i % 2]} for i in range(20)]
    train = _write(tmp_path / "train.jsonl", records)
    meta = build_dataset("jsonl", tmp_path / "d", seed=1, train_file=train, seq_len=5, vocab=[0, 1, 2])
    assert meta.params["vocab"] == ["<pad>", "0", "1", "2"] and meta.seq_len == 5
    tr, te = PuzzleDataset(tmp_path / "d", "train"), PuzzleDataset(tmp_path / "d", "test")
    assert (len(tr), len(te)) == (18, 2) and tr.inputs.shape == (18, 5)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        build_dataset("jsonl", tmp_path / "e", train_file=train, vocab=[0, 1])
    with pytest.raises(ValueError, match="seq_len"):
        build_dataset("jsonl", tmp_path / "f", train_file=train, seq_len=1)


def test_bad_lines_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": [1], "output": [2]}\n{"input": [1.5], "output": [2]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        build_dataset("jsonl", tmp_path / "d", train_file=bad, test_file=bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="not JSON"):
        build_dataset("jsonl", tmp_path / "d", train_file=bad, test_file=bad)
