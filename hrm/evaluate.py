"""Held-out evaluation of an HRM, computed from the logits, plus checkpoint loading.

The evaluator never trusts the model's own metrics: it runs the ACT loop in eval mode, keeps each row's
outputs from the segment at which that row first halts (in eval mode every row runs ``halt_max_steps``
segments, but an evolved model might halt earlier), and scores the argmax of the logits against the labels.

Metrics (means over the valid rows of the split):
- ``exact_accuracy``: every labelled token of the puzzle is right;
- ``token_accuracy``: per puzzle, the fraction of labelled tokens that are right, averaged over puzzles
  (the reference's ``accuracy``);
- ``mean_act_steps``: segments run before halting;
- ``q_halt_accuracy``: the halt head's sign (q_halt >= 0) agrees with whether the puzzle is solved;
- ``count``: the number of puzzles scored.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrm.config import RunConfig

IGNORE_LABEL = -100


def unwrap_model(loss_head_or_model: nn.Module) -> nn.Module:
    """The HRM inside an ACTLossHead (attribute ``model``), or the module itself."""
    inner = getattr(loss_head_or_model, "model", None)
    if isinstance(inner, nn.Module) and hasattr(inner, "initial_carry"):
        return inner
    return loss_head_or_model


def autocast_context(device: torch.device, forward_dtype: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when the model asks for bfloat16; a no-op elsewhere."""
    if device.type == "cuda" and forward_dtype == "bfloat16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def score_predictions(
    predictions: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: (exact correct [B] bool, token accuracy [B] float, has-labels [B] bool).

    Rows with no labelled token count as exact-correct with token accuracy 0 and are flagged in the mask.
    """
    mask = labels != IGNORE_LABEL
    n_labelled = mask.sum(-1)
    correct = (predictions == labels) & mask
    n_correct = correct.sum(-1)
    exact = n_correct == n_labelled
    token = n_correct.to(torch.float64) / n_labelled.clamp_min(1).to(torch.float64)
    return exact, token, n_labelled > 0


@torch.no_grad()
def run_act_eval(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run one batch through the ACT loop in eval mode.

    Returns per-row ``logits`` [B, L, V], ``q_halt_logits`` [B] and ``steps`` [B] (segments run), each taken
    at the segment where the row first halted (or the last segment run when a row never halts within
    ``halt_max_steps``).
    """
    halt_max = int(model.config.halt_max_steps) if hasattr(model, "config") else None
    carry = model.initial_carry(batch)
    batch_size = batch["inputs"].shape[0]
    device = batch["inputs"].device
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    logits: torch.Tensor | None = None
    q_halt: torch.Tensor | None = None
    steps = torch.zeros(batch_size, dtype=torch.int64, device=device)
    max_calls = halt_max if halt_max is not None else 1_000
    for call in range(1, max_calls + 1):
        carry, outputs = model(carry, batch)
        out_logits = outputs["logits"]
        out_q = outputs["q_halt_logits"]
        if logits is None:
            logits = out_logits.detach().clone()
            q_halt = out_q.detach().clone()
        newly = carry.halted & ~done
        if call == max_calls:
            newly = ~done
        if bool(newly.any()):
            logits[newly] = out_logits[newly].to(logits.dtype)
            assert q_halt is not None
            q_halt[newly] = out_q[newly].to(q_halt.dtype)
            steps[newly] = call
            done |= newly
        if bool(done.all()):
            break
    assert logits is not None and q_halt is not None
    return {"logits": logits, "q_halt_logits": q_halt, "steps": steps}


def evaluate(
    loss_head_or_model: nn.Module,
    dataset: Any,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    *,
    max_examples: int | None = None,
) -> dict[str, float]:
    """Score a model on every example of ``dataset`` (a ``PuzzleDataset``), in eval mode.

    ``max_examples`` limits scoring to the first examples (a quick look at a big split).
    The model's training/eval mode is restored afterwards.
    """
    model = unwrap_model(loss_head_or_model)
    if device is None:
        device = next(iter(model.parameters())).device
    device = torch.device(device)
    forward_dtype = str(getattr(getattr(model, "config", None), "forward_dtype", "float32"))
    was_training = model.training
    model.eval()
    n = 0
    exact_sum = 0.0
    token_sum = 0.0
    steps_sum = 0.0
    q_correct_sum = 0.0
    try:
        for np_batch, n_valid in dataset.eval_batches(batch_size):
            if max_examples is not None:
                n_valid = min(n_valid, max_examples - n)
                if n_valid <= 0:
                    break
            batch = {
                k: torch.as_tensor(np.asarray(v), dtype=torch.int64, device=device)
                for k, v in np_batch.items()
            }
            with autocast_context(device, forward_dtype):
                result = run_act_eval(model, batch)
            predictions = result["logits"].argmax(-1)
            exact, token, _ = score_predictions(predictions, batch["labels"])
            q_pred = result["q_halt_logits"].float() >= 0
            valid = slice(0, n_valid)
            exact_sum += float(exact[valid].to(torch.float64).sum())
            token_sum += float(token[valid].sum())
            steps_sum += float(result["steps"][valid].to(torch.float64).sum())
            q_correct_sum += float((q_pred[valid] == exact[valid]).to(torch.float64).sum())
            n += n_valid
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate: the dataset yielded no examples")
    return {
        "exact_accuracy": exact_sum / n,
        "token_accuracy": token_sum / n,
        "mean_act_steps": steps_sum / n,
        "q_halt_accuracy": q_correct_sum / n,
        "count": float(n),
    }


def read_checkpoint(path: Path | str, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict (loaded with ``weights_only=True``: tensors and plain containers only)."""
    state = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"{path}: not an hrm-evolve checkpoint (expected a dict with 'config' and 'model')")
    return state


def load_model_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load a state dict into an HRM, tolerating only batch-sized puzzle-embedding scratch tensors.

    The sparse puzzle embedding keeps a batch-sized ``local_weights`` tensor that only carries gradients
    for the training batch; its size depends on the batch, so a mismatch there is not an error.
    """
    own = model.state_dict()
    filtered: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if name.endswith("local_weights") and name in own and own[name].shape != tensor.shape:
            continue
        filtered[name] = tensor
    missing, unexpected = model.load_state_dict(filtered, strict=False)
    missing = [m for m in missing if not m.endswith("local_weights")]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> tuple[RunConfig, nn.Module]:
    """Rebuild the run config and the HRM (in eval mode) from a trainer checkpoint (``checkpoint.pt``).

    When the run kept an EMA of the weights, the EMA weights (the ones evaluation uses) are loaded.
    """
    from hrm.model import HRM

    state = read_checkpoint(path, map_location=device)
    run = RunConfig.from_dict(state["config"])
    model = HRM(run.model).to(device)
    weights = state.get("ema") or state["model"]
    load_model_weights(model, weights)
    model.eval()
    return run, model
