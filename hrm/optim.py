"""Optimisers of the reference recipe, in plain torch (CPU and CUDA).

- :class:`AdamATan2`: Adam with ``atan2(m, sqrt(v))`` in place of ``m / (sqrt(v) + eps)`` (no epsilon),
  decoupled weight decay, as imoneoi/adam-atan2 (whose pip backend is CUDA-only).
- :class:`SignSGD`: the sparse puzzle-embedding optimiser: sum the batch gradient per unique id, then
  ``w <- w * (1 - lr * wd) - lr * sign(g)`` on those rows of the embedding buffer.
- :func:`build_optimizers`: the (optimizer, base_lr) pairs the trainer steps; it sets
  ``param_group["lr"] = base_lr * schedule(step)`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch import nn

from hrm.config import TrainConfig
from hrm.layers import SparseEmbedding


class AdamATan2(torch.optim.Optimizer):
    """Per step t, for each parameter p with gradient g:

    p <- p * (1 - lr * wd);  m <- lerp(m, g, 1 - b1);  v <- b2 * v + (1 - b2) * g^2;
    p <- p - lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t)).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = group["betas"]
            wd = float(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                p.mul_(1.0 - lr * wd)
                exp_avg.lerp_(grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                bias_correction1 = 1.0 - beta1**step
                bias_correction2 = 1.0 - beta2**step
                denom = exp_avg_sq.sqrt() / math.sqrt(bias_correction2)
                p.add_(torch.atan2(exp_avg, denom), alpha=-lr / bias_correction1)
        return loss


class SignSGD(torch.optim.Optimizer):
    """SignSGD with decoupled weight decay for :class:`hrm.layers.SparseEmbedding` modules.

    Each param group holds one embedding's ``weights`` buffer; the optimiser reads the gradient from the
    module's ``local_weights`` and the row ids from ``local_ids`` (filled by its last training forward).
    """

    def __init__(self, embeddings: list[SparseEmbedding], lr: float = 1e-2, weight_decay: float = 1e-2) -> None:
        if lr < 0.0 or weight_decay < 0.0:
            raise ValueError("lr and weight_decay must be >= 0")
        self.embeddings = list(embeddings)
        groups = [{"params": [emb.weights]} for emb in self.embeddings]
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay})

    def zero_grad(self, set_to_none: bool = True) -> None:
        for emb in self.embeddings:
            grad = emb.local_weights.grad
            if grad is None:
                continue
            if set_to_none:
                emb.local_weights.grad = None
            else:
                grad.zero_()

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for emb, group in zip(self.embeddings, self.param_groups, strict=True):
            grad = emb.local_weights.grad
            if grad is None:
                continue
            sparse_signsgd_update(
                emb.weights, emb.local_ids, grad, lr=float(group["lr"]), weight_decay=float(group["weight_decay"])
            )
        return loss


def sparse_signsgd_update(
    weights: torch.Tensor, ids: torch.Tensor, grad: torch.Tensor, lr: float, weight_decay: float
) -> None:
    """In place on ``weights``: rows ``unique(ids)`` get w * (1 - lr * wd) - lr * sign(sum of their grads)."""
    unique_ids, inverse = ids.unique(return_inverse=True)
    summed = torch.zeros(unique_ids.shape[0], grad.shape[1], dtype=grad.dtype, device=grad.device)
    summed.index_add_(0, inverse, grad)
    rows = weights[unique_ids]
    rows.mul_(1.0 - lr * weight_decay).add_(torch.sign(summed).to(rows.dtype), alpha=-lr)
    weights[unique_ids] = rows


def build_optimizers(loss_head: nn.Module, train: TrainConfig) -> list[tuple[torch.optim.Optimizer, float]]:
    """(optimizer, base_lr) pairs: SignSGD on the puzzle embedding(s) if any, then AdamATan2 on all parameters."""
    pairs: list[tuple[torch.optim.Optimizer, float]] = []
    embeddings = [m for m in loss_head.modules() if isinstance(m, SparseEmbedding)]
    if embeddings:
        pairs.append(
            (
                SignSGD(embeddings, lr=train.puzzle_emb_lr, weight_decay=train.puzzle_emb_weight_decay),
                train.puzzle_emb_lr,
            )
        )
    params = [p for p in loss_head.parameters() if p.requires_grad]
    pairs.append(
        (
            AdamATan2(params, lr=train.lr, betas=(train.beta1, train.beta2), weight_decay=train.weight_decay),
            train.lr,
        )
    )
    return pairs
