"""HRM ACT-V1 model: shapes, dtypes, the 1-step gradient, halting, puzzle embedding, parameter count."""

from __future__ import annotations

import math

import pytest
import torch

from hrm.config import ModelConfig
from hrm.layers import Attention, RotaryEmbedding, apply_rotary_pos_emb, swiglu_width, trunc_normal_init_
from hrm.model import HRM, HRMCarry

VOCAB, SEQ, HIDDEN, N_IDS = 7, 16, 32, 5


def tiny_config(**overrides: object) -> ModelConfig:
    base: dict[str, object] = dict(
        vocab_size=VOCAB, seq_len=SEQ, hidden_size=HIDDEN, num_heads=2, H_layers=1, L_layers=1,
        H_cycles=2, L_cycles=2, halt_max_steps=3, puzzle_emb_ndim=HIDDEN, num_puzzle_identifiers=N_IDS,
    )
    base.update(overrides)
    return ModelConfig(**base)  # type: ignore[arg-type]


def make_batch(batch_size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, VOCAB, (batch_size, SEQ), generator=gen),
        "labels": torch.randint(0, VOCAB, (batch_size, SEQ), generator=gen),
        "puzzle_identifiers": torch.randint(0, N_IDS, (batch_size,), generator=gen),
    }


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize("pos", ["rope", "learned", "none"])
def test_shapes_and_dtypes(pos: str) -> None:
    cfg = tiny_config(pos_encodings=pos, puzzle_emb_ndim=48)  # 48 > hidden: two padded puzzle tokens
    model = HRM(cfg)
    assert model.inner.puzzle_emb_len == 2
    batch = make_batch()
    carry = model.initial_carry(batch)
    assert carry.halted.all() and carry.steps.dtype == torch.int32
    carry, out = model(carry, batch)
    assert out["logits"].shape == (4, SEQ, VOCAB) and out["logits"].dtype == torch.float32
    assert out["q_halt_logits"].shape == (4,) and out["q_continue_logits"].shape == (4,)
    assert out["target_q_continue"].shape == (4,)
    assert carry.inner_carry.z_H.shape == (4, SEQ + 2, HIDDEN) == carry.inner_carry.z_L.shape
    assert torch.isfinite(out["logits"]).all()
    # q head starts at weight 0, bias -5
    assert torch.allclose(out["q_halt_logits"], torch.full((4,), -5.0))


def test_bfloat16_forward_keeps_fp32_weights() -> None:
    model = HRM(tiny_config(forward_dtype="bfloat16"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.inner.H_init.dtype == torch.bfloat16
    batch = make_batch()
    carry, out = model(model.initial_carry(batch), batch)
    assert out["logits"].dtype == torch.bfloat16
    assert out["q_halt_logits"].dtype == torch.float32
    assert carry.inner_carry.z_H.dtype == torch.bfloat16


def test_bad_config_rejected() -> None:
    with pytest.raises(ValueError):
        HRM(tiny_config(pos_encodings="alibi"))
    with pytest.raises(ValueError):
        HRM(tiny_config(num_heads=5))


def test_default_config_has_reference_parameter_count() -> None:
    with torch.device("meta"):
        model = HRM(ModelConfig())
    assert sum(p.numel() for p in model.parameters()) == 27_275_266
    # the puzzle table is a persistent buffer, not a parameter
    names = dict(model.named_parameters())
    assert "inner.puzzle_emb.weights" not in names
    assert "inner.puzzle_emb.weights" in model.state_dict()
    assert swiglu_width(512, 4.0) == 1536


def test_one_step_gradient_reaches_every_part_and_carry_has_no_grad() -> None:
    model = HRM(tiny_config())
    model.train()
    # Record whether grad was enabled on every call of each reasoning module.
    calls: dict[str, list[bool]] = {"H": [], "L": []}
    model.inner.H_level.register_forward_hook(lambda *_: calls["H"].append(torch.is_grad_enabled()))
    model.inner.L_level.register_forward_hook(lambda *_: calls["L"].append(torch.is_grad_enabled()))

    batch = make_batch()
    carry, out = model(model.initial_carry(batch), batch)
    # main forward: H_cycles*L_cycles L-calls and H_cycles H-calls, only the last of each with grad;
    # then the no-grad Q-target forward repeats them all without grad.
    assert calls["L"] == [False, False, False, True] + [False] * 4
    assert calls["H"] == [False, True] + [False] * 2
    assert not carry.inner_carry.z_H.requires_grad and not carry.inner_carry.z_L.requires_grad
    assert not out["target_q_continue"].requires_grad

    loss = out["logits"].float().square().mean() + out["q_halt_logits"].sum() + out["q_continue_logits"].sum()
    loss.backward()
    inner = model.inner
    for name, p in [
        ("H", inner.H_level.layers[0].self_attn.qkv_proj.weight),
        ("L", inner.L_level.layers[0].mlp.gate_up_proj.weight),
        ("embed", inner.embed_tokens.embedding_weight),
        ("lm_head", inner.lm_head.weight),
        ("q_head", inner.q_head.weight),
        ("q_bias", inner.q_head.bias),
        ("puzzle", inner.puzzle_emb.local_weights),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert inner.H_init.grad is None and inner.puzzle_emb.weights.grad is None


def test_carry_gradient_is_cut_between_segments() -> None:
    model = HRM(tiny_config(halt_max_steps=4, halt_exploration_prob=0.0))
    batch = make_batch()
    carry, _ = model(model.initial_carry(batch), batch)
    carry, out = model(carry, batch)
    out["logits"].float().sum().backward()  # must not need the first segment's graph
    assert model.inner.lm_head.weight.grad is not None


def run_until_halted(model: HRM, batch: dict[str, torch.Tensor], limit: int = 50) -> tuple[int, HRMCarry]:
    carry = model.initial_carry(batch)
    for segment in range(1, limit + 1):
        carry, _ = model(carry, batch)
        if carry.halted.all():
            return segment, carry
    raise AssertionError("never halted")


def test_eval_runs_exactly_halt_max_steps_even_if_q_says_halt() -> None:
    model = HRM(tiny_config(halt_max_steps=3))
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([10.0, -10.0]))  # q_halt >> q_continue
    model.eval()
    batch = make_batch()
    carry = model.initial_carry(batch)
    for segment in range(1, 4):
        carry, out = model(carry, batch)
        assert "target_q_continue" not in out
        assert bool(carry.halted.all()) == (segment == 3)
        assert (carry.steps == segment).all()


def test_training_halts_on_q_and_exploration_forces_minimum() -> None:
    model = HRM(tiny_config(halt_max_steps=4, halt_exploration_prob=0.0))
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([10.0, -10.0]))
    model.train()
    segments, _ = run_until_halted(model, make_batch())
    assert segments == 1

    # Exploration with probability 1: a minimum of U{2..4} segments, so nothing halts after one.
    model = HRM(tiny_config(halt_max_steps=4, halt_exploration_prob=1.0))
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([10.0, -10.0]))
    batch = make_batch(batch_size=64)
    carry, _ = model(model.initial_carry(batch), batch)
    assert not carry.halted.any()
    finished = torch.zeros(64, dtype=torch.long)
    for segment in range(2, 5):
        carry, _ = model(carry, batch)
        finished = torch.where((finished == 0) & carry.halted, segment, finished)
    assert (finished >= 2).all() and set(finished.tolist()) == {2, 3, 4}

    # q_continue above q_halt: training runs to halt_max_steps.
    model = HRM(tiny_config(halt_max_steps=3, halt_exploration_prob=0.0))
    segments, _ = run_until_halted(model.train(), make_batch())
    assert segments == 3


def test_halted_rows_take_the_new_batch_and_reset() -> None:
    model = HRM(tiny_config(halt_max_steps=5, halt_exploration_prob=0.0)).eval()
    first, second = make_batch(seed=1), make_batch(seed=2)
    carry, _ = model(model.initial_carry(first), first)
    for k in first:
        assert torch.equal(carry.current_data[k], first[k])
    carry.halted = torch.tensor([True, False, True, False])
    carry, _ = model(carry, second)
    assert carry.steps.tolist() == [1, 2, 1, 2]
    for k in first:
        assert torch.equal(carry.current_data[k][[0, 2]], second[k][[0, 2]])
        assert torch.equal(carry.current_data[k][[1, 3]], first[k][[1, 3]])

    # A reset row computes exactly what a fresh carry computes on that sample.
    fresh, _ = model(model.initial_carry(second), second)
    assert torch.allclose(carry.inner_carry.z_H[[0, 2]], fresh.inner_carry.z_H[[0, 2]], atol=1e-5)


def test_puzzle_embedding_rows_are_used_in_eval_and_copied_in_training() -> None:
    model = HRM(tiny_config()).eval()
    emb = model.inner.puzzle_emb
    assert emb is model.puzzle_emb and torch.count_nonzero(emb.weights) == 0  # zero init
    batch = make_batch()
    batch["puzzle_identifiers"] = torch.tensor([0, 1, 2, 3])
    _, before = model(model.initial_carry(batch), batch)
    with torch.no_grad():
        emb.weights[2] = torch.randn(HIDDEN)
    _, after = model(model.initial_carry(batch), batch)
    changed = (before["logits"] - after["logits"]).abs().flatten(1).amax(1)
    assert changed[2] > 1e-4 and torch.all(changed[[0, 1, 3]] == 0)

    model.train()
    batch8 = make_batch(batch_size=8)
    model(model.initial_carry(batch8), batch8)
    assert emb.local_weights.shape == (8, HIDDEN) and emb.local_weights.is_leaf
    assert emb.local_weights.requires_grad
    assert torch.equal(emb.local_weights.detach(), emb.weights[batch8["puzzle_identifiers"]])
    assert torch.equal(emb.local_ids, batch8["puzzle_identifiers"])


def test_no_puzzle_embedding_when_ndim_is_zero() -> None:
    model = HRM(tiny_config(puzzle_emb_ndim=0))
    assert model.puzzle_emb is None and model.inner.puzzle_emb_len == 0
    batch = make_batch()
    carry, out = model(model.initial_carry(batch), batch)
    assert carry.inner_carry.z_H.shape == (4, SEQ, HIDDEN)


def test_trunc_normal_has_requested_std_and_bounds() -> None:
    x = trunc_normal_init_(torch.empty(200_000), std=0.5)
    assert abs(x.std().item() - 0.5) < 0.01
    assert x.abs().max().item() <= 2 * 0.5 / math.sqrt(0.7737413) + 1e-6  # clipped at 2 corrected stds
    assert torch.count_nonzero(trunc_normal_init_(torch.ones(10), std=0.0)) == 0


def test_rope_scores_depend_only_on_relative_position() -> None:
    rope = RotaryEmbedding(dim=8, max_position_embeddings=12, base=10000.0)
    cos, sin = rope()
    q = torch.randn(1, 1, 1, 8).expand(1, 12, 1, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 12, 1, 8)
    qr, kr = apply_rotary_pos_emb(q, k, cos, sin)
    scores = (qr[0, :, 0] @ kr[0, :, 0].T)
    assert torch.allclose(scores[3, 1], scores[9, 7], atol=1e-5)
    assert torch.allclose(scores[5, 5], (q[0, 0, 0] * k[0, 0, 0]).sum(), atol=1e-5)


def test_flash_attention_refused_on_cpu() -> None:
    attn = Attention(hidden_size=16, head_dim=8, num_heads=2, num_key_value_heads=2, attn_impl="flash")
    with pytest.raises(RuntimeError):
        attn(None, torch.randn(1, 4, 16))


def test_trained_model_deepcopies_and_round_trips_state_dict() -> None:
    import copy

    model = HRM(tiny_config()).train()
    batch = make_batch()
    _, out = model(model.initial_carry(batch), batch)
    out["logits"].float().sum().backward()
    clone = copy.deepcopy(model)  # e.g. for an EMA copy
    fresh = HRM(tiny_config())
    fresh.load_state_dict(model.state_dict(), strict=True)
    for m in (model, clone, fresh):
        m.eval()
    with torch.no_grad():
        a = model(model.initial_carry(batch), batch)[1]["logits"]
        b = clone(clone.initial_carry(batch), batch)[1]["logits"]
        c = fresh(fresh.initial_carry(batch), batch)[1]["logits"]
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not any("local_" in k or "cached" in k for k in model.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_training_step_matches_fp32_closely() -> None:
    cfg = tiny_config(forward_dtype="bfloat16", halt_exploration_prob=0.0)
    model = HRM(cfg).cuda().train()
    ref = HRM(tiny_config(halt_exploration_prob=0.0)).cuda().eval()
    ref.load_state_dict(model.state_dict())
    batch = {k: v.cuda() for k, v in make_batch().items()}
    carry, out = model(model.initial_carry(batch), batch)
    out["logits"].float().sum().backward()
    assert model.inner.puzzle_emb.local_weights.grad is not None
    assert carry.inner_carry.z_H.is_cuda and out["logits"].dtype == torch.bfloat16
    model.eval()
    with torch.no_grad():
        lo = model(model.initial_carry(batch), batch)[1]["logits"].float()
        hi = ref(ref.initial_carry(batch), batch)[1]["logits"]
    assert (lo - hi).abs().max() < 0.1 * hi.abs().max()
