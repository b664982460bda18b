"""Building blocks of HRM: initialisation, casted linear/embedding, RoPE, attention, SwiGLU, RMS norm.

Weights are stored in float32 and cast to the activation dtype at use, so a bfloat16 forward keeps
fp32 master weights. Names of submodules and tensors follow sapientinc/HRM so reference checkpoints
load without renaming (see ``hrm.convert``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

CosSin = tuple[torch.Tensor, torch.Tensor]

try:  # FlashAttention 3, then 2; both optional and only used on CUDA.
    from flash_attn_interface import flash_attn_func as _flash_attn_func  # type: ignore[import-not-found]
except ImportError:
    try:
        from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore[import-not-found,no-redef]
    except ImportError:
        _flash_attn_func = None

HAS_FLASH_ATTN = _flash_attn_func is not None


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """Fill ``tensor`` in place with a normal truncated to [lower, upper] standard deviations.

    JAX-style: the raw std is inflated so that the *truncated* distribution has standard deviation
    ``std`` (torch's own ``trunc_normal_`` does not correct for the truncation). std == 0 gives zeros.
    """
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        cdf_lo = math.erf(lower / math.sqrt(2.0))
        cdf_hi = math.erf(upper / math.sqrt(2.0))
        mass = (cdf_hi - cdf_lo) / 2.0
        pdf_lo = math.exp(-0.5 * lower * lower) / math.sqrt(2.0 * math.pi)
        pdf_hi = math.exp(-0.5 * upper * upper) / math.sqrt(2.0 * math.pi)
        trunc_var = 1.0 - (upper * pdf_hi - lower * pdf_lo) / mass - ((pdf_hi - pdf_lo) / mass) ** 2
        corrected_std = std / math.sqrt(trunc_var)
        # Inverse-CDF sampling in fp32 (erfinv is not implemented for every dtype), then cast.
        sample = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device).uniform_(cdf_lo, cdf_hi)
        sample = sample.erfinv_().mul_(math.sqrt(2.0) * corrected_std)
        sample = sample.clamp_(lower * corrected_std, upper * corrected_std)
        return tensor.copy_(sample)


def find_multiple(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(value // -multiple) * multiple


def swiglu_width(hidden_size: int, expansion: float) -> int:
    """Inner width of the SwiGLU: round(expansion * hidden * 2/3) rounded up to a multiple of 256."""
    return find_multiple(round(expansion * hidden_size * 2 / 3), 256)


class CastedLinear(nn.Module):
    """Bias-optional linear layer with truncated LeCun-normal init; weight cast to the input dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            trunc_normal_init_(torch.empty(out_features, in_features), std=1.0 / math.sqrt(in_features))
        )
        self.bias: Optional[nn.Parameter] = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table (``embedding_weight``) with truncated-normal init, looked up in ``cast_to``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(
            trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    """Rotary position tables in the half-rotation layout (frequencies duplicated, not interleaved)."""

    def __init__(self, dim: int, max_position_embeddings: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        positions = torch.arange(max_position_embeddings, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq)
        table = torch.cat((angles, angles), dim=-1)
        self.cos_cached: torch.Tensor
        self.sin_cached: torch.Tensor
        self.register_buffer("cos_cached", table.cos(), persistent=False)
        self.register_buffer("sin_cached", table.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos_cached, self.sin_cached


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape [B, L, heads, head_dim] with cos/sin [L, head_dim], computed in the table dtype."""
    dtype = x.dtype
    xf = x.to(cos.dtype)
    return (xf * cos.unsqueeze(-2) + rotate_half(xf) * sin.unsqueeze(-2)).to(dtype)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q, k of shape [B, L, heads, head_dim] with cos/sin [L, head_dim], computed in the table dtype."""
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def _use_flash(attn_impl: str, x: torch.Tensor) -> bool:
    if attn_impl == "sdpa":
        return False
    flash_ok = HAS_FLASH_ATTN and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
    if attn_impl == "flash":
        if not flash_ok:
            raise RuntimeError(
                "attn_impl='flash' needs flash-attn installed, a CUDA tensor and a float16/bfloat16 forward"
            )
        return True
    if attn_impl == "auto":
        return flash_ok
    raise ValueError(f"unknown attn_impl {attn_impl!r}; expected 'auto', 'sdpa' or 'flash'")


class Attention(nn.Module):
    """Multi-head self-attention with a fused, bias-free qkv projection; non-causal by default."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_key_value_heads: int,
        causal: bool = False,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        if num_heads % num_key_value_heads != 0:
            raise ValueError("num_heads must be a multiple of num_key_value_heads")
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads
        self.output_size = head_dim * num_heads
        self.causal = causal
        self.attn_impl = attn_impl
        self.qkv_proj = CastedLinear(hidden_size, (num_heads + 2 * num_key_value_heads) * head_dim, bias=False)
        self.o_proj = CastedLinear(self.output_size, hidden_size, bias=False)

    def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(
            batch, seq_len, self.num_heads + 2 * self.num_key_value_heads, self.head_dim
        )
        n_qk = self.num_heads + self.num_key_value_heads
        query_key = qkv[:, :, :n_qk]
        value = qkv[:, :, n_qk:]
        if cos_sin is not None:
            cos, sin = cos_sin
            if cos.shape[0] != seq_len:
                cos, sin = cos[:seq_len], sin[:seq_len]
            # q and k share the per-position rotation: one pass over both heads' slice (same values as two).
            query_key = apply_rotary(query_key, cos, sin)
        query, key = query_key[:, :, : self.num_heads], query_key[:, :, self.num_heads :]

        if _use_flash(self.attn_impl, hidden_states):
            assert _flash_attn_func is not None
            out = _flash_attn_func(q=query, k=key, v=value, causal=self.causal)
            if isinstance(out, tuple):  # FlashAttention 3 returns (out, lse)
                out = out[0]
        else:
            q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, heads, L, head_dim]
            if self.num_key_value_heads != self.num_heads:
                repeat = self.num_heads // self.num_key_value_heads
                k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal).transpose(1, 2)
        return self.o_proj(out.reshape(batch, seq_len, self.output_size))


class SwiGLU(nn.Module):
    """Gated MLP: down(silu(gate) * up) with a fused gate/up projection."""

    def __init__(self, hidden_size: int, expansion: float) -> None:
        super().__init__()
        inter = swiglu_width(hidden_size, expansion)
        self.gate_up_proj = CastedLinear(hidden_size, inter * 2, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        act = F.silu(gate)
        # Outside autograd the fresh activation can take the product in place (same values, one buffer less).
        return self.down_proj(act * up if torch.is_grad_enabled() else act.mul_(up))


def rms_norm(hidden_states: torch.Tensor, variance_epsilon: float) -> torch.Tensor:
    """Weightless RMS normalisation over the last dimension, computed in float32."""
    dtype = hidden_states.dtype
    x = hidden_states.to(torch.float32)
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + variance_epsilon)
    return x.to(dtype)


def rms_norm_(hidden_states: torch.Tensor, variance_epsilon: float) -> torch.Tensor:
    """:func:`rms_norm` with the same values, overwriting ``hidden_states`` when it is float32.

    Only for a fresh tensor that nothing else reads, outside autograd (an in-place op on a tensor saved
    for backward would fail the backward pass).
    """
    dtype = hidden_states.dtype
    x = hidden_states.to(torch.float32)
    x = x.mul_(torch.rsqrt(x.square().mean(-1, keepdim=True) + variance_epsilon))
    return x.to(dtype)


class SparseEmbedding(nn.Module):
    """Puzzle-identifier embedding trained sparsely, as the reference's CastedSparseEmbedding.

    ``weights`` [num_embeddings, dim] is a persistent *buffer* (not a parameter, so not counted and not
    seen by Adam). In training with grad enabled, the batch's rows are copied into ``local_weights``
    [B, dim], a leaf tensor with ``requires_grad=True`` that receives the gradient, and the ids go to
    ``local_ids``; ``hrm.optim.SignSGD`` then writes the update back into ``weights``. In eval, or under
    ``torch.no_grad``, the rows are read from ``weights`` directly.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.weights: torch.Tensor
        self.local_weights: torch.Tensor
        self.local_ids: torch.Tensor
        self.register_buffer(
            "weights", trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std), persistent=True
        )
        self.register_buffer("local_weights", torch.zeros(0, embedding_dim, requires_grad=True), persistent=False)
        self.register_buffer("local_ids", torch.zeros(0, dtype=torch.long), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return self.weights[ids].to(self.cast_to)
        lw = self.local_weights
        if lw.shape[0] != ids.shape[0] or lw.device != self.weights.device or not lw.is_leaf or not lw.requires_grad:
            # (Re)allocate for this batch size; Module.to() turns a requires-grad buffer into a non-leaf.
            self.local_weights = torch.zeros(
                ids.shape[0], self.weights.shape[1], dtype=self.weights.dtype, device=self.weights.device,
                requires_grad=True,
            )
            self.local_ids = torch.zeros(ids.shape[0], dtype=torch.long, device=self.weights.device)
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)
