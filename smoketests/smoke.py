"""Stage 2, smoke: import the candidate's hrm, build a tiny model from the task preset, run one training
forward/backward on a small batch from the data and a full evaluation-mode ACT rollout; check shapes,
dtypes, finiteness and that evaluation runs exactly halt_max_steps segments."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from puzzles.arrays import SplitArrays, load_split
from puzzles.file_task import is_file_task
from smoketests.result import StageFailure

SMOKE_BATCH = 4


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device=device, dtype=torch.int64) for k, v in batch.items()}


def model_config_for_data(model_cfg: Any, split: SplitArrays, **overrides: Any) -> Any:
    """The candidate's ModelConfig with the data's vocabulary/length/identifiers and any overrides."""
    meta = split.meta
    return dataclasses.replace(
        model_cfg,
        vocab_size=int(meta["vocab_size"]),
        seq_len=int(meta["seq_len"]),
        num_puzzle_identifiers=int(meta["num_puzzle_identifiers"]),
        **overrides,
    )


def task_preset(task: str, train_meta: dict[str, Any]) -> Any:
    """The candidate's preset for ``task``: a file task's (puzzles/file_task.py) is fitted to the train split's
    dataset.json, which the harness hands over as ``meta``; the built-in tasks' take no data."""
    from hrm.presets import get_preset

    if is_file_task(task):
        return get_preset(task, meta=dict(train_meta))
    return get_preset(task)


def tiny_overrides(model_cfg: Any) -> dict[str, Any]:
    hidden = 32
    return {
        "hidden_size": hidden,
        "num_heads": 2,
        "expansion": 2.0,
        "H_layers": 1,
        "L_layers": 1,
        "halt_max_steps": 2,
        "puzzle_emb_ndim": hidden if model_cfg.puzzle_emb_ndim > 0 else 0,
        "forward_dtype": "float32",
    }


def require(condition: bool, reason: str, metrics: dict[str, Any] | None = None) -> None:
    if not condition:
        raise StageFailure(reason, metrics)


def check_outputs(outputs: dict[str, torch.Tensor], batch_size: int, seq_len: int, vocab: int) -> None:
    require(isinstance(outputs, dict), f"model outputs should be a dict, got {type(outputs).__name__}")
    for key in ("logits", "q_halt_logits"):
        require(key in outputs, f"model outputs lack {key!r} (have {sorted(outputs)})")
    logits, q_halt = outputs["logits"], outputs["q_halt_logits"]
    require(
        tuple(logits.shape) == (batch_size, seq_len, vocab),
        f"logits shape {tuple(logits.shape)}, expected {(batch_size, seq_len, vocab)}",
    )
    require(logits.is_floating_point(), f"logits dtype {logits.dtype} is not floating point")
    require(tuple(q_halt.shape) == (batch_size,), f"q_halt_logits shape {tuple(q_halt.shape)}, expected {(batch_size,)}")
    require(q_halt.is_floating_point(), f"q_halt_logits dtype {q_halt.dtype} is not floating point")
    require(bool(torch.isfinite(logits.float()).all()), "logits contain NaN/inf")


def run_smoke(data_dir: Path, task: str, seed: int) -> dict[str, Any]:
    from hrm.losses import ACTLossHead
    from hrm.model import HRM
    torch.manual_seed(seed)
    device = pick_device()
    split = load_split(data_dir, "train")
    run = task_preset(task, split.meta)
    cfg = model_config_for_data(run.model, split, **tiny_overrides(run.model))
    model = HRM(cfg).to(device)
    head = ACTLossHead(model, cfg.loss_type, cfg.q_loss_weight).to(device)
    rows = np.arange(min(SMOKE_BATCH, len(split)))
    batch = to_torch(split.batch(rows), device)
    bsz, seq_len, vocab = len(rows), int(split.meta["seq_len"]), int(split.meta["vocab_size"])

    head.train()
    carry = head.initial_carry(batch)
    carry, loss, _metrics, outputs, _all_halted = head(carry=carry, batch=batch)
    check_outputs(outputs, bsz, seq_len, vocab)
    require(loss.dim() == 0, f"loss should be a scalar, got shape {tuple(loss.shape)}")
    require(bool(torch.isfinite(loss)), f"loss is not finite: {float(loss.detach())}")
    (loss / bsz).backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    require(bool(grads), "backward produced no parameter gradients")
    require(all(bool(torch.isfinite(g).all()) for g in grads), "gradients contain NaN/inf")
    require(any(bool((g != 0).any()) for g in grads), "all gradients are zero")

    # Evaluation mode: every sample runs exactly halt_max_steps segments; labels are not given.
    model.eval()
    eval_batch = {k: v for k, v in batch.items() if k != "labels"}
    with torch.inference_mode():
        carry = model.initial_carry(eval_batch)
        for segment in range(1, cfg.halt_max_steps + 1):
            carry, outputs = model(carry, eval_batch)
            halted = bool(carry.halted.all())
            require(
                halted == (segment == cfg.halt_max_steps),
                f"eval mode: after segment {segment} of {cfg.halt_max_steps} all_halted={halted}",
            )
        check_outputs(outputs, bsz, seq_len, vocab)
    n_params = sum(p.numel() for p in model.parameters())
    return {"loss": float(loss.detach()), "parameters": n_params, "device": str(device), "batch": bsz}
