"""HRM ACT-V1: two recurrent transformer modules (H slow, L fast) wrapped in adaptive computation time.

Layout and names follow sapientinc/HRM ``models/hrm/hrm_act_v1.py`` so that ``HRM.state_dict()`` keys equal
the reference's (minus the ``_orig_mod.``/``model.`` prefixes, see ``hrm.convert``):

- ``HRM.inner`` (:class:`HRMInner`) holds every parameter and buffer;
- one call of :meth:`HRM.forward` runs one ACT *segment*: H_cycles x L_cycles recurrent updates where only
  the last L step and the last H step carry gradient ("1-step gradient"), then the Q head decides halting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from hrm.config import ModelConfig
from hrm.layers import (
    Attention,
    CastedEmbedding,
    CastedLinear,
    CosSin,
    RotaryEmbedding,
    SparseEmbedding,
    SwiGLU,
    rms_norm,
    rms_norm_,
    trunc_normal_init_,
)

POS_ENCODINGS = ("rope", "learned", "none")


@dataclass
class HRMInnerCarry:
    """Recurrent state: z_H and z_L, each [B, puzzle_emb_len + seq_len, hidden] in the forward dtype."""

    z_H: torch.Tensor
    z_L: torch.Tensor


@dataclass
class HRMCarry:
    """ACT state across segments.

    ``steps`` [B] int32 segments run on the current sample; ``halted`` [B] bool (a halted row is replaced
    by the incoming batch's row at the next call); ``current_data`` the batch each row is working on.
    """

    inner_carry: HRMInnerCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: dict[str, torch.Tensor]


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"forward_dtype {name!r} is not a torch dtype")
    return dtype


class HRMBlock(nn.Module):
    """Post-norm transformer block: h = norm(h + attn(h)); h = norm(h + mlp(h))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(
            hidden_size=config.hidden_size,
            head_dim=config.hidden_size // config.num_heads,
            num_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            causal=False,
            attn_impl=config.attn_impl,
        )
        self.mlp = SwiGLU(hidden_size=config.hidden_size, expansion=config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin, hidden_states), self.norm_eps)
            return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)
        # Outside autograd (most of a segment's updates, and the Q-target forward) the sublayer outputs are
        # fresh tensors: add the residual and normalise in place. Same values (a + b == b + a in IEEE).
        hidden_states = rms_norm_(self.self_attn(cos_sin, hidden_states).add_(hidden_states), self.norm_eps)
        return rms_norm_(self.mlp(hidden_states).add_(hidden_states), self.norm_eps)


class ReasoningModule(nn.Module):
    """A stack of blocks whose input is the state plus an additive injection."""

    def __init__(self, layers: list[HRMBlock]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(
        self, hidden_states: torch.Tensor, input_injection: torch.Tensor, cos_sin: Optional[CosSin]
    ) -> torch.Tensor:
        hidden_states = hidden_states + input_injection
        for layer in self.layers:
            hidden_states = layer(cos_sin, hidden_states)
        return hidden_states


class HRMInner(nn.Module):
    """Embeddings, the H and L reasoning modules, the LM head and the Q (halting) head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.hidden_size % config.num_heads != 0:
            raise ValueError("hidden_size must be divisible by num_heads")
        if config.pos_encodings not in POS_ENCODINGS:
            raise ValueError(f"pos_encodings {config.pos_encodings!r} not in {POS_ENCODINGS}")
        self.config = config
        self.forward_dtype = _dtype(config.forward_dtype)

        self.embed_scale = math.sqrt(config.hidden_size)
        embed_init_std = 1.0 / self.embed_scale
        self.embed_tokens = CastedEmbedding(
            config.vocab_size, config.hidden_size, init_std=embed_init_std, cast_to=self.forward_dtype
        )
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = CastedLinear(config.hidden_size, 2, bias=True)

        self.puzzle_emb_len = -(config.puzzle_emb_ndim // -config.hidden_size)  # ceil division
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = SparseEmbedding(
                config.num_puzzle_identifiers, config.puzzle_emb_ndim, init_std=0.0, cast_to=self.forward_dtype
            )

        total_len = config.seq_len + self.puzzle_emb_len
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(
                dim=config.hidden_size // config.num_heads, max_position_embeddings=total_len, base=config.rope_theta
            )
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(
                total_len, config.hidden_size, init_std=embed_init_std, cast_to=self.forward_dtype
            )

        self.H_level = ReasoningModule([HRMBlock(config) for _ in range(config.H_layers)])
        self.L_level = ReasoningModule([HRMBlock(config) for _ in range(config.L_layers)])

        # Fixed (never trained) initial states, one vector each, broadcast over batch and positions.
        self.H_init: torch.Tensor
        self.L_init: torch.Tensor
        self.register_buffer(
            "H_init", trunc_normal_init_(torch.empty(config.hidden_size), std=1.0).to(self.forward_dtype)
        )
        self.register_buffer(
            "L_init", trunc_normal_init_(torch.empty(config.hidden_size), std=1.0).to(self.forward_dtype)
        )

        # Q head starts near "never halt": zero weight, bias -5.
        with torch.no_grad():
            self.q_head.weight.zero_()
            assert self.q_head.bias is not None
            self.q_head.bias.fill_(-5.0)

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        embedding = self.embed_tokens(inputs)
        if self.config.puzzle_emb_ndim > 0:
            puzzle = self.puzzle_emb(puzzle_identifiers)
            pad = self.puzzle_emb_len * self.config.hidden_size - puzzle.shape[-1]
            if pad > 0:
                puzzle = F.pad(puzzle, (0, pad))
            embedding = torch.cat((puzzle.view(-1, self.puzzle_emb_len, self.config.hidden_size), embedding), dim=-2)
        if self.config.pos_encodings == "learned":
            # 1/sqrt(2) keeps the variance of the sum equal to that of each term.
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(self.forward_dtype))
        return self.embed_scale * embedding

    def empty_carry(self, batch_size: int, device: torch.device | None = None) -> HRMInnerCarry:
        shape = (batch_size, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        return HRMInnerCarry(
            z_H=torch.zeros(shape, dtype=self.forward_dtype, device=device),
            z_L=torch.zeros(shape, dtype=self.forward_dtype, device=device),
        )

    def reset_carry(self, reset_flag: torch.Tensor, carry: HRMInnerCarry) -> HRMInnerCarry:
        flag = reset_flag.view(-1, 1, 1)
        return HRMInnerCarry(
            z_H=torch.where(flag, self.H_init, carry.z_H),
            z_L=torch.where(flag, self.L_init, carry.z_L),
        )

    def forward(
        self, carry: HRMInnerCarry, batch: dict[str, torch.Tensor]
    ) -> tuple[HRMInnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One segment. Returns (detached new carry, logits [B, L, V], (q_halt [B], q_continue [B]) in fp32)."""
        cos_sin = self.rotary_emb() if self.config.pos_encodings == "rope" else None
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        cfg = self.config

        with torch.no_grad():
            z_H, z_L = carry.z_H, carry.z_L
            for h_step in range(cfg.H_cycles):
                last_h = h_step == cfg.H_cycles - 1
                for l_step in range(cfg.L_cycles):
                    if not (last_h and l_step == cfg.L_cycles - 1):
                        z_L = self.L_level(z_L, z_H + x, cos_sin)
                if not last_h:
                    z_H = self.H_level(z_H, z_L, cos_sin)

        # 1-step gradient: only the final L and H updates are differentiated.
        z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)

        new_carry = HRMInnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len :]
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return new_carry, logits, (q_logits[..., 0], q_logits[..., 1])


class HRM(nn.Module):
    """The ACT wrapper. Call :meth:`initial_carry` once, then :meth:`forward` once per segment.

    Outputs: ``logits`` [B, L, V] (forward dtype), ``q_halt_logits`` [B], ``q_continue_logits`` [B] (fp32)
    and, in training mode with halt_max_steps > 1, ``target_q_continue`` [B] (no grad).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.inner = HRMInner(config)

    @property
    def puzzle_emb(self) -> Optional[SparseEmbedding]:
        return getattr(self.inner, "puzzle_emb", None)

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> HRMCarry:
        """A carry with every row halted, so the first forward loads the whole batch."""
        batch_size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return HRMCarry(
            inner_carry=self.inner.empty_carry(batch_size, device=device),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(
        self, carry: HRMCarry, batch: dict[str, torch.Tensor]
    ) -> tuple[HRMCarry, dict[str, torch.Tensor]]:
        halted_in = carry.halted
        inner_carry = self.inner.reset_carry(halted_in, carry.inner_carry)
        steps = torch.where(halted_in, 0, carry.steps)
        current_data = {
            k: torch.where(halted_in.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }

        inner_carry, logits, (q_halt, q_continue) = self.inner(inner_carry, current_data)
        outputs: dict[str, torch.Tensor] = {
            "logits": logits,
            "q_halt_logits": q_halt,
            "q_continue_logits": q_continue,
        }

        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= self.config.halt_max_steps
            halted = is_last_step
            # In eval every row runs exactly halt_max_steps segments, so a batch halts together.
            if self.training and self.config.halt_max_steps > 1:
                halted = halted | (q_halt > q_continue)
                explore = torch.rand_like(q_halt) < self.config.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, low=2, high=self.config.halt_max_steps + 1)
                halted = halted & (steps >= min_steps)

                # Bootstrapped Q target from one more (no-grad) segment on the new carry; no replay buffer.
                _, _, (next_q_halt, next_q_continue) = self.inner(inner_carry, current_data)
                outputs["target_q_continue"] = torch.sigmoid(
                    torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue))
                )

        return HRMCarry(inner_carry, steps, halted, current_data), outputs
