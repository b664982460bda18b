"""Stablemax / softmax cross-entropy and the ACT loss head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hrm.losses import IGNORE_LABEL_ID, ACTLossHead, softmax_cross_entropy, stablemax_cross_entropy
from hrm.model import HRM
from tests.hrm.test_model import SEQ, make_batch, tiny_config


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_stablemax_matches_direct_formula() -> None:
    logits = torch.tensor([[[-3.0, -0.5, 0.0, 2.0], [1.5, -2.0, 4.0, 0.25]]])
    labels = torch.tensor([[3, IGNORE_LABEL_ID]])
    got = stablemax_cross_entropy(logits, labels)
    assert got.dtype == torch.float64 and got.shape == (1, 2)

    def s(x: float) -> float:
        return 1.0 / (1.0 - x) if x < 0 else x + 1.0

    row = [-3.0, -0.5, 0.0, 2.0]
    expected = -math.log(s(2.0) / sum(s(v) for v in row))
    assert got[0, 0].item() == pytest.approx(expected, rel=1e-12)
    assert got[0, 1].item() == 0.0


def test_softmax_cross_entropy_ignores_label() -> None:
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[1, 2] = IGNORE_LABEL_ID
    got = softmax_cross_entropy(logits, labels)
    manual = -torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    manual[1, 2] = 0.0
    assert torch.allclose(got, manual, atol=1e-6)


def test_parameter_names_follow_reference_layout() -> None:
    head = ACTLossHead(HRM(tiny_config()), "softmax_cross_entropy")
    names = [n for n, _ in head.named_parameters()]
    assert "model.inner.embed_tokens.embedding_weight" in names
    assert "model.inner.H_level.layers.0.self_attn.qkv_proj.weight" in names
    with pytest.raises(ValueError):
        ACTLossHead(HRM(tiny_config()), "hinge")


def test_loss_is_lm_plus_weighted_q_losses_in_training() -> None:
    head = ACTLossHead(HRM(tiny_config(halt_exploration_prob=0.0)))
    assert head.loss_type == "stablemax_cross_entropy"
    batch = make_batch()
    batch["labels"][0, :5] = IGNORE_LABEL_ID
    carry, loss, metrics, outputs, all_halted = head(head.initial_carry(batch), batch)
    labels = carry.current_data["labels"]
    mask = labels != IGNORE_LABEL_ID
    per_tok = stablemax_cross_entropy(outputs["logits"], labels)
    lm = (per_tok.sum(-1) / mask.sum(-1)).sum()
    seq_ok = ((outputs["logits"].argmax(-1) == labels) | ~mask).all(-1).float()
    qh = F.binary_cross_entropy_with_logits(outputs["q_halt_logits"], seq_ok, reduction="sum")
    qc = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
    assert loss.item() == pytest.approx((lm + 0.5 * (qh + qc)).item(), rel=1e-6)
    assert metrics["lm_loss"].item() == pytest.approx(lm.item(), rel=1e-9)
    assert metrics["q_continue_loss"].item() == pytest.approx(qc.item(), rel=1e-6)
    assert loss.requires_grad and not outputs["logits"].requires_grad
    # nothing halted after one of three segments with q_halt < q_continue: no metrics counted
    assert metrics["count"].item() == 0 and not bool(all_halted)


def test_metrics_count_only_halted_rows() -> None:
    head = ACTLossHead(HRM(tiny_config(halt_max_steps=1)), "softmax_cross_entropy").eval()
    batch = make_batch()
    with torch.no_grad():
        _, _, _, probe, _ = head(head.initial_carry(batch), batch)
    preds = probe["logits"].argmax(-1)
    labels = preds.clone()
    labels[2, 0] = (preds[2, 0] + 1) % 7  # one wrong token in row 2
    labels[3] = (preds[3] + 1) % 7  # row 3 all wrong
    labels[1, :4] = IGNORE_LABEL_ID  # ignored tokens don't count
    batch["labels"] = labels
    with torch.no_grad():
        carry, loss, metrics, _, all_halted = head(head.initial_carry(batch), batch)
    assert bool(all_halted) and "target_q_continue" not in _
    assert metrics["count"].item() == 4
    assert metrics["exact_accuracy"].item() == 2
    assert metrics["accuracy"].item() == pytest.approx(1 + 1 + (SEQ - 1) / SEQ + 0, rel=1e-6)
    assert metrics["steps"].item() == 4
    # q_halt = -5 < 0 predicts "wrong": correct for rows 2 and 3
    assert metrics["q_halt_accuracy"].item() == 2
    assert metrics["q_continue_loss"].item() == 0.0

    # A row with no valid labels is never counted.
    batch["labels"][0] = IGNORE_LABEL_ID
    with torch.no_grad():
        _, _, metrics, _, _ = head(head.initial_carry(batch), batch)
    assert metrics["count"].item() == 3


def test_backward_through_loss_head_reaches_puzzle_embedding() -> None:
    head = ACTLossHead(HRM(tiny_config()))
    batch = make_batch()
    _, loss, _, _, _ = head(head.initial_carry(batch), batch)
    (loss / 4).backward()
    assert head.model.inner.puzzle_emb.local_weights.grad.abs().sum() > 0
