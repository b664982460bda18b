"""Token losses (stablemax / softmax cross-entropy) and the ACT loss head around :class:`hrm.model.HRM`.

Semantics follow sapientinc/HRM ``models/losses.py``: the LM loss is the per-sequence mean over valid
tokens, summed over the batch; the two Q losses are binary cross-entropies summed over the batch; metrics
are sums over the rows that halted this segment (divide by ``count`` to get means).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hrm.model import HRM, HRMCarry

IGNORE_LABEL_ID = -100

LossFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def stablemax_s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    """s(x) = 1 / (1 - x) for x < 0, x + 1 otherwise: positive, monotone, linear growth."""
    return torch.where(x < 0, 1.0 / (1.0 - x + epsilon), x + 1.0)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s = stablemax_s(x)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token -log stablemax(label), in float64 (float32 on MPS); 0 where label == ignore_index."""
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    logprobs = log_stablemax(logits.to(dtype), dim=-1)
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, 0).to(torch.long)
    picked = torch.gather(logprobs, dim=-1, index=safe_labels.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, torch.zeros_like(picked))


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token softmax cross-entropy in float32; 0 where label == ignore_index."""
    flat = F.cross_entropy(
        logits.to(torch.float32).reshape(-1, logits.shape[-1]),
        labels.to(torch.long).reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    )
    return flat.view(labels.shape)


LOSS_FUNCTIONS: dict[str, LossFn] = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


class ACTLossHead(nn.Module):
    """Wraps an :class:`HRM` as ``self.model`` (parameter names ``model.inner....``) and computes the losses.

    ``forward(carry, batch) -> (new_carry, loss, metrics, outputs, all_halted)`` where
    ``loss = lm_loss + q_loss_weight * (q_halt_loss + q_continue_loss)`` (sums over the batch; divide by
    the batch size before ``backward`` as the reference does), ``metrics`` holds 0-dim tensors
    ``count, accuracy, exact_accuracy, q_halt_accuracy, steps`` (sums over halted rows with labels) and
    ``lm_loss, q_halt_loss, q_continue_loss`` (detached), ``outputs`` the model outputs detached, and
    ``all_halted`` a 0-dim bool tensor.
    """

    def __init__(self, model: HRM, loss_type: str | None = None, q_loss_weight: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_type = loss_type if loss_type is not None else model.config.loss_type
        if self.loss_type not in LOSS_FUNCTIONS:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; known: {sorted(LOSS_FUNCTIONS)}")
        self.loss_fn = LOSS_FUNCTIONS[self.loss_type]
        self.q_loss_weight = model.config.q_loss_weight if q_loss_weight is None else q_loss_weight

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> HRMCarry:
        return self.model.initial_carry(batch)

    def forward(
        self, carry: HRMCarry, batch: dict[str, torch.Tensor]
    ) -> tuple[HRMCarry, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        new_carry, outputs = self.model(carry, batch)
        labels = new_carry.current_data["labels"]
        logits = outputs["logits"]

        with torch.no_grad():
            mask = labels != IGNORE_LABEL_ID
            counts = mask.sum(-1)
            divisor = counts.clamp_min(1).unsqueeze(-1)
            is_correct = mask & (torch.argmax(logits, dim=-1) == labels)
            seq_correct = is_correct.sum(-1) == counts
            valid = new_carry.halted & (counts > 0)
            zero = torch.zeros((), dtype=torch.float32, device=labels.device)
            metrics: dict[str, torch.Tensor] = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (is_correct.to(torch.float32) / divisor).sum(-1), zero).sum(),
                "exact_accuracy": (valid & seq_correct).sum(),
                "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_correct)).sum(),
                "steps": torch.where(valid, new_carry.steps, 0).sum(),
            }

        lm_loss = (self.loss_fn(logits, labels, IGNORE_LABEL_ID) / divisor).sum()
        q_halt = outputs["q_halt_logits"]
        q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_correct.to(q_halt.dtype), reduction="sum")
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(
                outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum"
            )
        else:
            q_continue_loss = torch.zeros((), dtype=q_halt_loss.dtype, device=q_halt_loss.device)

        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = q_halt_loss.detach()
        metrics["q_continue_loss"] = q_continue_loss.detach()

        loss = lm_loss + self.q_loss_weight * (q_halt_loss + q_continue_loss)
        detached = {k: v.detach() for k, v in outputs.items()}
        return new_carry, loss, metrics, detached, new_carry.halted.all()
