"""Presets: names, shapes of the configs, budget-free, independent copies, JSON round trip."""

from __future__ import annotations

import pytest

from hrm.config import RunConfig
from hrm.presets import CPU_PRESETS, GPU_PRESETS, PRESETS, get_preset


def test_all_presets_exist_and_round_trip() -> None:
    assert set(PRESETS) == {"sudoku4", "sudoku6", "sudoku9", "maze", "sudoku-extreme-gpu", "maze30-gpu"}
    assert set(CPU_PRESETS) | set(GPU_PRESETS) == set(PRESETS)
    for name in PRESETS:
        run = get_preset(name)
        assert isinstance(run, RunConfig)
        assert RunConfig.from_json(run.to_json()).to_dict() == RunConfig.from_dict(run.to_dict()).to_dict()
        # Budget-free: the caller decides how long to train.
        assert run.train.max_steps is None and run.train.epochs is None and run.train.budget_seconds is None
        assert run.model.hidden_size % run.model.num_heads == 0


def test_cpu_sudoku4_matches_the_measured_recipe() -> None:
    run = get_preset("sudoku4")
    m, t = run.model, run.train
    assert (m.hidden_size, m.H_layers, m.L_layers, m.H_cycles, m.L_cycles, m.halt_max_steps) == (64, 2, 2, 2, 2, 4)
    assert (m.vocab_size, m.seq_len, m.loss_type) == (6, 16, "softmax_cross_entropy")
    assert (t.batch_size, t.lr, t.lr_min_ratio, t.lr_warmup_steps, t.weight_decay) == (64, 3e-3, 0.1, 100, 1.0)
    assert run.data["n_train"] == 2000 and run.data["n_test"] == 500
    assert get_preset("sudoku6").model.seq_len == 36


def test_gpu_preset_is_paper_scale() -> None:
    run = get_preset("sudoku-extreme-gpu")
    m, t = run.model, run.train
    assert (m.hidden_size, m.H_layers, m.L_layers, m.halt_max_steps, m.forward_dtype) == (512, 4, 4, 16, "bfloat16")
    assert (t.batch_size, t.lr, t.weight_decay, t.puzzle_emb_lr) == (768, 1e-4, 1.0, 1e-4)
    assert get_preset("maze30-gpu").model.seq_len == 900


def test_presets_are_fresh_copies() -> None:
    a = get_preset("sudoku4")
    a.train.lr = 123.0
    a.data["n_train"] = 1
    b = get_preset("sudoku4")
    assert b.train.lr == 3e-3 and b.data["n_train"] == 2000


def test_unknown_preset() -> None:
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("sudoku5")


def test_parameter_counts_match_the_notes() -> None:
    import torch

    from hrm.model import HRM

    def count(name: str) -> int:
        with torch.device("meta"):
            model = HRM(get_preset(name).model)
        return sum(p.numel() for p in model.parameters())

    assert count("sudoku-extreme-gpu") == 27_275_266  # the reference's 27M model
    assert count("sudoku4") == 263_042  # "h64 (263k)" in the CPU measurements
