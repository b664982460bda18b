"""The data-fitted presets of a task file (hrm/presets.py `file`, `file-gpu`): derived from dataset.json."""

from __future__ import annotations

from typing import Any

import pytest

from hrm.presets import DATA_PRESETS, PRESETS, get_preset


def _meta(seq_len: int, vocab: int, n_train: int, out_len: int = 1) -> dict[str, Any]:
    tokens = ["<pad>", "<unk>", *(f"t{i}" for i in range(vocab - 2))]
    return {"seq_len": seq_len, "vocab_size": vocab, "total_groups": n_train, "num_puzzle_identifiers": 1,
            "params": {"vocab": tokens, "examples": n_train, "max_output_len": out_len}}


def test_the_cpu_preset_follows_the_data_shape() -> None:
    run = get_preset("file", meta=_meta(37, 15, 2400))
    assert run.task == "file" and run.model.seq_len == 37 and run.model.vocab_size == 15
    assert run.model.hidden_size == 64 and run.model.halt_max_steps == 4  # the evaluate stage runs 4 segments
    assert run.train.batch_size == 32  # about 2048 tokens a batch at seq_len 37
    assert run.train.augment is False and run.train.lr_warmup_steps == 10
    assert run.data == {"vocab": _meta(37, 15, 2400)["params"]["vocab"], "output_len": 1}
    assert get_preset("file", meta=_meta(16, 6, 5000)).train.batch_size == 64
    assert get_preset("file", meta=_meta(500, 6, 5000)).train.batch_size == 8  # long sequences: small batches
    assert get_preset("file", meta=_meta(16, 6, 100)).train.batch_size == 8  # never over an eighth of the rows
    assert get_preset("file", meta=_meta(16, 6, 400)).train.batch_size == 32


def test_the_gpu_preset_is_larger_and_runs_16_segments() -> None:
    small = get_preset("file-gpu", meta=_meta(37, 15, 2400))
    big = get_preset("file-gpu", meta=_meta(81, 15, 50000))
    assert small.task == "file-gpu" and small.model.halt_max_steps == 16 and small.model.H_layers == 4
    assert small.model.hidden_size == 256 and big.model.hidden_size == 512
    assert small.train.batch_size == 256 and big.train.batch_size == 512  # <= n/8, ~64k tokens, <= 768
    assert small.train.lr == 3e-4 and big.train.lr == 1e-4 and small.train.augment is False


def test_a_file_preset_needs_the_data_and_the_others_do_not_change() -> None:
    assert set(DATA_PRESETS) == {"file", "file-gpu"} and not set(DATA_PRESETS) & set(PRESETS)
    with pytest.raises(ValueError, match="fitted to the data"):
        get_preset("file")
    with pytest.raises(ValueError, match="without a usable shape"):
        get_preset("file", meta=_meta(0, 15, 10))
    assert get_preset("sudoku4", meta=_meta(37, 15, 2400)).model.seq_len == 16  # meta is ignored there


def test_hrm_train_fits_a_built_jsonl_dataset(tmp_path: Any) -> None:
    import json

    from hrm.cli import base_run
    from puzzles.build import build_dataset

    lines = [{"input": ["s", i % 7, i % 5], "output": [i % 3]} for i in range(60)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    build_dataset("jsonl", tmp_path / "d", train_file=tmp_path / "t.jsonl")
    run = base_run("jsonl", str(tmp_path / "d"))
    assert run.task == "jsonl" and run.model.seq_len == 3 and run.model.hidden_size == 64
    assert run.train.batch_size == 8 and run.train.augment is False
    assert base_run("jsonl").model.hidden_size == 512  # no dataset yet: the bare defaults, built on the fly
