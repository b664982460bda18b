"""AdamATan2, SignSGD on the sparse puzzle embedding, build_optimizers, and a short training run."""

from __future__ import annotations

import math

import pytest
import torch

from hrm.config import TrainConfig
from hrm.layers import SparseEmbedding
from hrm.losses import ACTLossHead
from hrm.model import HRM
from hrm.optim import AdamATan2, SignSGD, build_optimizers
from tests.hrm.test_model import tiny_config


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_adam_atan2_matches_hand_computed_steps() -> None:
    lr, b1, b2, wd = 0.1, 0.9, 0.95, 0.2
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = AdamATan2([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    grads = [[0.3, -0.1, 0.0], [-0.2, 0.4, 1.0]]

    ref = [1.0, -2.0, 0.5]
    m = [0.0] * 3
    v = [0.0] * 3
    for t, g in enumerate(grads, start=1):
        p.grad = torch.tensor(g)
        opt.step()
        for i in range(3):
            ref[i] *= 1 - lr * wd
            m[i] = m[i] + (1 - b1) * (g[i] - m[i])
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            ref[i] -= lr / (1 - b1**t) * math.atan2(m[i], math.sqrt(v[i]) / math.sqrt(1 - b2**t))
        assert p.detach().tolist() == pytest.approx(ref, abs=1e-6)
    # zero gradient throughout: atan2(0, 0) = 0, only decay applies (no NaN without epsilon)
    assert math.isfinite(p[2].item())


def test_signsgd_updates_only_batch_rows_with_summed_sign() -> None:
    emb = SparseEmbedding(6, 3, init_std=0.0, cast_to=torch.float32)
    with torch.no_grad():
        emb.weights.copy_(torch.arange(18, dtype=torch.float32).view(6, 3))
    start = emb.weights.clone()
    opt = SignSGD([emb], lr=0.5, weight_decay=0.1)
    ids = torch.tensor([1, 4, 1])
    out = emb(ids)
    # row 1 appears twice: grads (+1, -3, 0) + (-2, +1, 0) sum to (-1, -2, 0)
    weight = torch.tensor([[1.0, -3.0, 0.0], [2.0, 2.0, -1.0], [-2.0, 1.0, 0.0]])
    (out * weight).sum().backward()
    opt.step()
    expected = start.clone()
    expected[1] = start[1] * (1 - 0.05) - 0.5 * torch.tensor([-1.0, -1.0, 0.0])
    expected[4] = start[4] * (1 - 0.05) - 0.5 * torch.tensor([1.0, 1.0, -1.0])
    assert torch.allclose(emb.weights, expected)
    opt.zero_grad()
    assert emb.local_weights.grad is None


def test_build_optimizers_splits_puzzle_embedding_from_parameters() -> None:
    train = TrainConfig(lr=3e-4, puzzle_emb_lr=2e-2, weight_decay=0.5, puzzle_emb_weight_decay=0.25)
    head = ACTLossHead(HRM(tiny_config()))
    pairs = build_optimizers(head, train)
    assert [type(o) for o, _ in pairs] == [SignSGD, AdamATan2]
    assert [lr for _, lr in pairs] == [2e-2, 3e-4]
    sign, adam = pairs[0][0], pairs[1][0]
    assert sign.param_groups[0]["weight_decay"] == 0.25
    assert adam.param_groups[0]["betas"] == (train.beta1, train.beta2)
    adam_ids = {id(p) for g in adam.param_groups for p in g["params"]}
    assert adam_ids == {id(p) for p in head.parameters()}
    assert id(head.model.inner.puzzle_emb.weights) not in adam_ids

    no_emb = build_optimizers(ACTLossHead(HRM(tiny_config(puzzle_emb_ndim=0))), train)
    assert [type(o) for o, _ in no_emb] == [AdamATan2]


def test_short_training_lowers_loss_and_moves_puzzle_rows() -> None:
    """Copy task (labels = inputs) with a few puzzle ids: 40 steps, loss must fall clearly."""
    cfg = tiny_config(seq_len=8, halt_max_steps=2, H_cycles=1, L_cycles=1, halt_exploration_prob=0.0)
    head = ACTLossHead(HRM(cfg), "softmax_cross_entropy")
    head.train()
    pairs = build_optimizers(head, TrainConfig(lr=3e-3, puzzle_emb_lr=1e-2, weight_decay=0.0))
    gen = torch.Generator().manual_seed(0)
    emb = head.model.inner.puzzle_emb
    losses: list[float] = []
    carry = None
    for step in range(40):
        inputs = torch.randint(0, 7, (16, 8), generator=gen)
        batch = {"inputs": inputs, "labels": inputs.clone(), "puzzle_identifiers": torch.randint(0, 5, (16,), generator=gen)}
        if carry is None:
            carry = head.initial_carry(batch)
        carry, loss, metrics, _, _ = head(carry, batch)
        (loss / 16).backward()
        for opt, _ in pairs:
            opt.step()
            opt.zero_grad()
        assert not carry.inner_carry.z_H.requires_grad
        losses.append(metrics["lm_loss"].item() / 16)
        if step == 0:
            assert torch.count_nonzero(emb.weights) > 0  # a SignSGD step moved the zero-initialised rows
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
