"""Stage 3, trainability: 100 steps of the candidate's model, loss head and optimizers driven by the
HARNESS's own loop (fixed lr, batch, no schedule), with checks that training actually works:

- loss and gradients stay finite;
- the harness's own cross-entropy (computed from the logits, not by the candidate's loss code, for the
  loss type the config declares) over steps 96-100 is at most LOSS_RATIO x its mean over steps 16-20
  (5-step windows: single batches are noisy). Measured on the reference-faithful hrm, sudoku4 data,
  seeds 0-2: ratio 0.70, 0.70, 0.70;
- non-zero gradients reach H-level, L-level, token embedding and the lm/q heads (checked after the
  first 5 steps, so a cut-off module fails fast);
- the puzzle embedding table changes (when the model has one);
- the carry holds no tensor that requires grad (the 1-step gradient detaches it).
"""

from __future__ import annotations

import dataclasses
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from puzzles.arrays import IGNORE_LABEL, load_split, random_batches
from smoketests.result import StageFailure
from smoketests.smoke import model_config_for_data, pick_device, require, to_torch

STEPS = 100
EARLY_STEP = 20
WINDOW = 5
LOSS_RATIO = 0.75
BATCH_SIZE = 64
LR = 1e-3
ARCH_PRESET = "sudoku4"
GRAD_MODULES = ("H_level", "L_level", "embed_tokens", "lm_head", "q_head")


def _tensors(value: Any, prefix: str = "carry") -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: list[tuple[str, torch.Tensor]] = []
        for f in dataclasses.fields(value):
            out += _tensors(getattr(value, f.name), f"{prefix}.{f.name}")
        return out
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _tensors(v, f"{prefix}[{k!r}]")]
    if isinstance(value, (list, tuple)):
        return [t for i, v in enumerate(value) for t in _tensors(v, f"{prefix}[{i}]")]
    return []


def harness_lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_type: str) -> float:
    """Mean cross-entropy over labelled tokens, computed by the harness (fp64) for the objective the
    candidate declares: stablemax (s(x) = 1/(1-x) for x < 0, x + 1 otherwise, normalised) or softmax."""
    flat = logits.detach().to(torch.float64).reshape(-1, logits.shape[-1])
    target = labels.reshape(-1)
    if not loss_type.startswith("stablemax"):
        return float(F.cross_entropy(flat, target, ignore_index=IGNORE_LABEL))
    s = torch.where(flat < 0, 1.0 / (1.0 - flat), flat + 1.0)
    log_probs = torch.log(s / s.sum(dim=-1, keepdim=True))
    valid = target != IGNORE_LABEL
    picked = log_probs.gather(-1, torch.where(valid, target, 0).unsqueeze(-1)).squeeze(-1)
    return float(-(picked * valid).sum() / valid.sum().clamp_min(1))


def _grad_reach(inner: torch.nn.Module) -> dict[str, bool]:
    reach: dict[str, bool] = {}
    for name in GRAD_MODULES:
        module = getattr(inner, name, None)
        if module is None:
            raise StageFailure(f"model.inner has no module {name!r} (the harness checks gradients reach it)")
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        reach[name] = any(bool((g != 0).any()) for g in grads)
    return reach


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_trainability(data_dir: Path, task: str, seed: int, steps: int = STEPS) -> dict[str, Any]:
    from hrm.losses import ACTLossHead
    from hrm.model import HRM
    from hrm.optim import build_optimizers
    from hrm.presets import get_preset

    if steps < EARLY_STEP + WINDOW:
        raise StageFailure(f"trainability needs at least {EARLY_STEP + WINDOW} steps, got {steps}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = pick_device()
    split = load_split(data_dir, "train")
    arch = get_preset(ARCH_PRESET)
    cfg = model_config_for_data(arch.model, split, forward_dtype="float32")
    train_cfg = dataclasses.replace(arch.train, lr=LR, batch_size=BATCH_SIZE)
    model = HRM(cfg).to(device)
    head = ACTLossHead(model, cfg.loss_type, cfg.q_loss_weight).to(device)
    optimizers = build_optimizers(head, train_cfg)
    puzzle_emb = getattr(model.inner, "puzzle_emb", None) if cfg.puzzle_emb_ndim > 0 else None
    table_before = puzzle_emb.weights.detach().clone() if puzzle_emb is not None else None

    batches = random_batches(split, BATCH_SIZE, rng)
    losses: list[float] = []
    reach_any = dict.fromkeys(GRAD_MODULES, False)
    metrics: dict[str, Any] = {"steps_planned": steps, "device": str(device)}
    head.train()
    carry = None
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = to_torch(next(batches), device)
        if carry is None:
            carry = head.initial_carry(batch)
        carry, loss, _m, outputs, _all_halted = head(carry=carry, batch=batch)
        metrics["steps"] = step
        if not bool(torch.isfinite(loss)):
            raise StageFailure(f"loss is not finite at step {step}: {float(loss)}", metrics)
        for opt, base_lr in optimizers:
            for group in opt.param_groups:
                group["lr"] = base_lr
        (loss / BATCH_SIZE).backward()
        grad_sq = sum(float(p.grad.float().pow(2).sum()) for p in head.parameters() if p.grad is not None)
        if not np.isfinite(grad_sq):
            raise StageFailure(f"gradient norm is not finite at step {step}", metrics)
        for name, hit in _grad_reach(model.inner).items():
            reach_any[name] = reach_any[name] or hit
        if step == WINDOW:  # fail fast: a module no gradient reached in the first steps is cut off
            cut_off = [name for name, hit in reach_any.items() if not hit]
            metrics["grad_reach"] = dict(reach_any)
            require(not cut_off, f"no non-zero gradient reached {cut_off} in the first {WINDOW} steps", metrics)
        for opt, _ in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        labels = carry.current_data.get("labels") if isinstance(carry.current_data, dict) else None
        require(labels is not None, "carry.current_data has no 'labels' (the harness scores from it)", metrics)
        assert labels is not None  # require() raised otherwise
        losses.append(harness_lm_loss(outputs["logits"], labels, str(cfg.loss_type)))
        if not np.isfinite(losses[-1]):
            raise StageFailure(f"logits give a non-finite cross-entropy at step {step}", metrics)
        metrics["last_loss"] = losses[-1]
        with_grad = [name for name, t in _tensors(carry) if t.requires_grad]
        require(not with_grad, f"carry tensors require grad at step {step}: {with_grad}", metrics)
    seconds = time.perf_counter() - start

    early = float(np.mean(losses[EARLY_STEP - WINDOW : EARLY_STEP]))
    late = float(np.mean(losses[-WINDOW:]))
    metrics.update(
        {
            "loss_step_early": early,
            "loss_step_final": late,
            "loss_ratio": late / early if early > 0 else float("inf"),
            "loss_curve": [round(x, 4) for x in losses[::5]],
            "grad_reach": reach_any,
            "train_seconds": seconds,
            "steps_per_second": steps / seconds,
            "peak_memory_mb": peak_memory_mb(device),
        }
    )
    if table_before is not None and puzzle_emb is not None:
        changed = (puzzle_emb.weights.detach() != table_before).any(dim=-1)
        metrics["puzzle_emb_rows_changed"] = int(changed.sum())
        require(bool(changed.any()), "the puzzle embedding table did not change in training", metrics)
    missing = [name for name, hit in reach_any.items() if not hit]
    require(not missing, f"no non-zero gradient reached: {missing}", metrics)
    require(
        late <= LOSS_RATIO * early,
        f"lm loss did not fall enough: mean {late:.4f} over the last {WINDOW} steps vs {early:.4f} around "
        f"step {EARLY_STEP} (ratio {late / early:.3f} > {LOSS_RATIO})",
        metrics,
    )
    return metrics
