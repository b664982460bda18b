"""Reference parity: a state dict laid out as sapientinc/HRM saves it, loaded through the converter,
must give the outputs of an independent functional re-implementation of the reference forward."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hrm.config import ModelConfig
from hrm.convert import convert_reference_state_dict, load_reference_checkpoint
from hrm.losses import ACTLossHead
from hrm.model import HRM

PREFIX = "_orig_mod.model.inner."


def parity_config(pos: str) -> ModelConfig:
    return ModelConfig(
        vocab_size=9, seq_len=10, num_puzzle_identifiers=4, puzzle_emb_ndim=40, hidden_size=32, num_heads=4,
        expansion=2.0, H_layers=2, L_layers=1, H_cycles=2, L_cycles=3, halt_max_steps=2, pos_encodings=pos,
    )


def reference_state_dict(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Keys and shapes as the reference's compiled ACTLossHead saves them (written from its source)."""
    gen = torch.Generator().manual_seed(seed)
    h = cfg.hidden_size
    inter = -(round(cfg.expansion * h * 2 / 3) // -256) * 256
    p_len = -(cfg.puzzle_emb_ndim // -h)

    def rnd(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    sd = {
        "H_init": rnd(h, std=1.0),
        "L_init": rnd(h, std=1.0),
        "embed_tokens.embedding_weight": rnd(cfg.vocab_size, h, std=1 / math.sqrt(h)),
        "lm_head.weight": rnd(cfg.vocab_size, h, std=1 / math.sqrt(h)),
        "q_head.weight": rnd(2, h, std=1 / math.sqrt(h)),
        "q_head.bias": rnd(2, std=1.0),
        "puzzle_emb.weights": rnd(cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim, std=0.5),
    }
    if cfg.pos_encodings == "learned":
        sd["embed_pos.embedding_weight"] = rnd(cfg.seq_len + p_len, h, std=1 / math.sqrt(h))
    for level, n in (("H", cfg.H_layers), ("L", cfg.L_layers)):
        for i in range(n):
            base = f"{level}_level.layers.{i}."
            sd[base + "self_attn.qkv_proj.weight"] = rnd(3 * h, h, std=1 / math.sqrt(h))
            sd[base + "self_attn.o_proj.weight"] = rnd(h, h, std=1 / math.sqrt(h))
            sd[base + "mlp.gate_up_proj.weight"] = rnd(2 * inter, h, std=1 / math.sqrt(h))
            sd[base + "mlp.down_proj.weight"] = rnd(h, inter, std=1 / math.sqrt(inter))
    return {PREFIX + k: v for k, v in sd.items()}


class FunctionalReference:
    """Independent float64 re-statement of the reference forward (eval mode), straight from a state dict."""

    def __init__(self, cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> None:
        self.cfg = cfg
        self.w = {k[len(PREFIX):]: v.to(torch.float64) for k, v in sd.items()}
        self.p_len = -(cfg.puzzle_emb_ndim // -cfg.hidden_size)

    def embed(self, inputs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        cfg, w, h = self.cfg, self.w, self.cfg.hidden_size
        tok = w["embed_tokens.embedding_weight"][inputs]
        puzzle = torch.zeros(inputs.shape[0], self.p_len * h, dtype=torch.float64)
        puzzle[:, : cfg.puzzle_emb_ndim] = w["puzzle_emb.weights"][ids]
        x = torch.cat([puzzle.view(-1, self.p_len, h), tok], dim=1)
        if cfg.pos_encodings == "learned":
            x = (x + w["embed_pos.embedding_weight"]) / math.sqrt(2.0)
        return x * math.sqrt(h)

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, heads, d]; rotate the pair (x[i], x[i + d/2]) by angle pos * theta^(-2i/d), as a complex product."""
        d = x.shape[-1]
        pos = torch.arange(x.shape[1], dtype=torch.float64)
        freq = self.cfg.rope_theta ** (-torch.arange(d // 2, dtype=torch.float64) * 2 / d)
        phase = torch.polar(torch.ones(x.shape[1], d // 2, dtype=torch.float64), pos[:, None] * freq[None, :])
        z = torch.complex(x[..., : d // 2], x[..., d // 2 :]) * phase[None, :, None, :]
        return torch.cat([z.real, z.imag], dim=-1)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)

    def block(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        cfg, w = self.cfg, self.w
        b, t, h = x.shape
        nh = cfg.num_heads
        qkv = (x @ w[prefix + "self_attn.qkv_proj.weight"].T).view(b, t, 3 * nh, h // nh)
        q, k, v = qkv[:, :, :nh], qkv[:, :, nh : 2 * nh], qkv[:, :, 2 * nh :]
        if cfg.pos_encodings == "rope":
            q, k = self.rope(q), self.rope(k)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(h // nh)
        attn = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), v).reshape(b, t, h)
        x = self.norm(x + attn @ w[prefix + "self_attn.o_proj.weight"].T)
        gate_up = x @ w[prefix + "mlp.gate_up_proj.weight"].T
        inter = gate_up.shape[-1] // 2
        gate, up = gate_up[..., :inter], gate_up[..., inter:]
        mlp = (gate * torch.sigmoid(gate) * up) @ w[prefix + "mlp.down_proj.weight"].T
        return self.norm(x + mlp)

    def level(self, name: str, n_layers: int, z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        z = z + injection
        for i in range(n_layers):
            z = self.block(f"{name}_level.layers.{i}.", z)
        return z

    def segment(
        self, z_H: torch.Tensor, z_L: torch.Tensor, inputs: torch.Tensor, ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        x = self.embed(inputs, ids)
        for _ in range(cfg.H_cycles):
            for _ in range(cfg.L_cycles):
                z_L = self.level("L", cfg.L_layers, z_L, z_H + x)
            z_H = self.level("H", cfg.H_layers, z_H, z_L)
        logits = (z_H @ self.w["lm_head.weight"].T)[:, self.p_len :]
        q = z_H[:, 0] @ self.w["q_head.weight"].T + self.w["q_head.bias"]
        return z_H, z_L, logits, q


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_reference_checkpoint_gives_reference_outputs(pos: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = parity_config(pos)
    sd = reference_state_dict(cfg, seed=3)
    path = tmp_path / "step_1000"
    torch.save(sd, path)
    model = HRM(cfg).eval()
    assert load_reference_checkpoint(model, path) is model

    gen = torch.Generator().manual_seed(5)
    batch = {
        "inputs": torch.randint(0, cfg.vocab_size, (3, cfg.seq_len), generator=gen),
        "labels": torch.randint(0, cfg.vocab_size, (3, cfg.seq_len), generator=gen),
        "puzzle_identifiers": torch.tensor([0, 3, 1]),
    }
    ref = FunctionalReference(cfg, sd)
    total = cfg.seq_len + ref.p_len
    z_H = ref.w["H_init"].expand(3, total, -1)
    z_L = ref.w["L_init"].expand(3, total, -1)

    carry = model.initial_carry(batch)
    with torch.no_grad():
        for _ in range(cfg.halt_max_steps):
            carry, out = model(carry, batch)
            z_H, z_L, logits, q = ref.segment(z_H, z_L, batch["inputs"], batch["puzzle_identifiers"])
            torch.testing.assert_close(out["logits"].double(), logits, atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(out["q_halt_logits"].double(), q[:, 0], atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(out["q_continue_logits"].double(), q[:, 1], atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(carry.inner_carry.z_H.double(), z_H, atol=2e-4, rtol=1e-4)
    assert carry.halted.all()


def test_converter_strips_prefixes_and_rejects_foreign_keys() -> None:
    cfg = parity_config("rope")
    sd = reference_state_dict(cfg, seed=0)
    converted = convert_reference_state_dict(sd)
    assert set(converted) == set(HRM(cfg).state_dict())
    # unprefixed and "model."-only checkpoints (saved without torch.compile) convert the same way
    plain = {k.replace("_orig_mod.", ""): v for k, v in sd.items()}
    assert set(convert_reference_state_dict(plain)) == set(converted)
    with pytest.raises(KeyError):
        convert_reference_state_dict({"_orig_mod.optimizer.state": torch.zeros(1)})


def test_load_into_loss_head_and_strict_mismatch(tmp_path: Path) -> None:
    cfg = parity_config("rope")
    sd = reference_state_dict(cfg, seed=1)
    path = tmp_path / "ckpt"
    torch.save(sd, path)
    head = ACTLossHead(HRM(cfg))
    loaded = load_reference_checkpoint(head, path)
    assert torch.equal(loaded.inner.lm_head.weight, sd[PREFIX + "lm_head.weight"])

    del sd[PREFIX + "q_head.bias"]
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match="q_head.bias"):
        load_reference_checkpoint(HRM(cfg), path)
    with pytest.raises(TypeError):
        load_reference_checkpoint(torch.nn.Linear(2, 2), path)
