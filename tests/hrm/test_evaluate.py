"""Evaluator arithmetic against hand-computed cases, and a real HRM checkpoint round trip."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hrm.evaluate import evaluate, load_checkpoint, run_act_eval, score_predictions


def test_score_predictions_by_hand() -> None:
    labels = torch.tensor([[2, 3, -100, 4], [2, 2, 2, 2], [-100, -100, -100, -100]])
    preds = torch.tensor([[2, 3, 9, 4], [2, 5, 2, 5], [1, 1, 1, 1]])
    exact, token, has = score_predictions(preds, labels)
    assert exact.tolist() == [True, False, True]
    assert token.tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert has.tolist() == [True, True, False]


@dataclass
class ScriptCarry:
    steps: torch.Tensor
    halted: torch.Tensor


class ScriptedACT(nn.Module):
    """Follows the HRM call protocol; predicts ``answers[segment][row]`` and halts row r after ``halt_at[r]``."""

    def __init__(self, answers: torch.Tensor, q_halt: torch.Tensor, halt_at: list[int], vocab: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.answers = answers  # [segments, N, L]
        self.q_halt = q_halt  # [segments, N]
        self.halt_at = torch.tensor(halt_at)
        self.vocab = vocab

        @dataclass
        class Cfg:
            halt_max_steps: int

        self.config = Cfg(halt_max_steps=answers.shape[0])

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> ScriptCarry:
        b = batch["inputs"].shape[0]
        return ScriptCarry(torch.zeros(b, dtype=torch.int32), torch.ones(b, dtype=torch.bool))

    def forward(
        self, carry: ScriptCarry, batch: dict[str, torch.Tensor]
    ) -> tuple[ScriptCarry, dict[str, Any]]:
        steps = torch.where(carry.halted, 0, carry.steps) + 1
        rows = batch["puzzle_identifiers"]  # the test stores the row number there
        seg = steps - 1
        answer = self.answers[seg, rows]
        logits = torch.nn.functional.one_hot(answer, self.vocab).float()
        halted = steps >= self.halt_at[rows]
        return ScriptCarry(steps, halted), {"logits": logits, "q_halt_logits": self.q_halt[seg, rows]}


class ListDataset:
    """The PuzzleDataset evaluation interface over in-memory arrays (last batch padded)."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray) -> None:
        self.inputs, self.labels = inputs, labels

    def eval_batches(self, batch_size: int) -> Any:
        n = len(self.inputs)
        for start in range(0, n, batch_size):
            idx = np.arange(start, start + batch_size)
            valid = int(min(batch_size, n - start))
            idx = np.minimum(idx, n - 1)
            yield (
                {
                    "inputs": self.inputs[idx],
                    "labels": self.labels[idx],
                    "puzzle_identifiers": idx.astype(np.int64),
                },
                valid,
            )


def test_evaluate_hand_computed() -> None:
    labels = np.array([[2, 3, 4], [2, 3, 4], [5, -100, 5]], dtype=np.int64)
    inputs = np.zeros_like(labels)
    # Two segments. Row 0 is right only at segment 2; row 1 halts after segment 1 (right then, wrong later);
    # row 2 gets one of its two labelled tokens right at the end.
    answers = torch.tensor(
        [
            [[2, 0, 4], [2, 3, 4], [5, 0, 0]],
            [[2, 3, 4], [0, 0, 0], [5, 1, 1]],
        ]
    )
    q_halt = torch.tensor([[-1.0, 2.0, 1.0], [3.0, -4.0, 1.0]])
    model = ScriptedACT(answers, q_halt, halt_at=[2, 1, 2], vocab=6)
    result = evaluate(model, ListDataset(inputs, labels), batch_size=2, device="cpu")
    # Row 0: exact at seg 2, token 1, q=3 (>=0) agrees. Row 1: halted at seg 1: exact, token 1, q=2 agrees.
    # Row 2: seg 2: not exact, token 1/2, q=1 says solved: disagrees.
    assert result["count"] == 3
    assert result["exact_accuracy"] == pytest.approx(2 / 3)
    assert result["token_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert result["mean_act_steps"] == pytest.approx((2 + 1 + 2) / 3)
    assert result["q_halt_accuracy"] == pytest.approx(2 / 3)
    # max_examples scores only the first rows.
    first = evaluate(model, ListDataset(inputs, labels), batch_size=2, device="cpu", max_examples=1)
    assert first["count"] == 1 and first["exact_accuracy"] == 1.0


def test_run_act_eval_keeps_the_halting_segment() -> None:
    answers = torch.tensor([[[1, 1]], [[2, 2]], [[3, 3]]])
    model = ScriptedACT(answers, torch.zeros(3, 1), halt_at=[2], vocab=4)
    batch = {
        "inputs": torch.zeros(1, 2, dtype=torch.int64),
        "puzzle_identifiers": torch.zeros(1, dtype=torch.int64),
    }
    out = run_act_eval(model, batch)
    assert out["logits"].argmax(-1).tolist() == [[2, 2]] and out["steps"].tolist() == [2]


def _tiny_checkpoint(tmp_path: Path) -> tuple[Path, Any]:
    from hrm.config import ModelConfig, RunConfig
    from hrm.model import HRM

    run = RunConfig(
        task="sudoku4",
        model=ModelConfig(
            vocab_size=6,
            seq_len=16,
            hidden_size=32,
            num_heads=2,
            puzzle_emb_ndim=32,
            H_layers=1,
            L_layers=1,
            halt_max_steps=2,
        ),
    )
    torch.manual_seed(0)
    model = HRM(run.model)
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": run.to_dict(), "model": model.state_dict(), "ema": None}, path)
    return path, model


def test_load_checkpoint_round_trip(tmp_path: Path) -> None:
    path, model = _tiny_checkpoint(tmp_path)
    run, loaded = load_checkpoint(path)
    assert run.model.hidden_size == 32 and not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    torch.save({"something": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an hrm-evolve checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
