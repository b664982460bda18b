"""Stage 5, evaluate: the HARNESS's own evaluation loop over the held-out split.

Loads the checkpoint the train stage wrote (`torch.load(weights_only=True)`: tensors and plain containers
only), rebuilds the candidate's model from the config stored in it, runs every sample through exactly
halt_max_steps ACT segments in eval mode with batches that carry no labels, and writes the argmax
predictions to OUT/predictions.npy. When the mounted split has its labels the stage scores them too; in
the cascade the host withholds the labels from the sandbox and scores predictions.npy itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoketests.puzzle_arrays import load_split, score_predictions
from smoketests.result import StageFailure
from smoketests.smoke import pick_device, require, to_torch

EVAL_BATCH = 256
PREDICTIONS_FILE = "predictions.npy"


def load_weights(path: Path, device: torch.device) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, model state dict) from a trainer checkpoint, or a StageFailure saying what is wrong."""
    if not Path(path).is_file():
        raise StageFailure(f"no checkpoint at {path}")
    try:
        state = torch.load(Path(path), map_location=device, weights_only=True)
    except Exception as exc:
        raise StageFailure(f"checkpoint {path} is not loadable with weights_only=True: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise StageFailure("checkpoint must be a dict with a 'config' dict (RunConfig.to_dict()) and 'model' weights")
    weights = state.get("ema") or state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise StageFailure("checkpoint 'model' (or 'ema') must be a state dict of tensors")
    return state["config"], weights


def load_into(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    if not set(weights) & set(own) and all(k.startswith("model.") for k in weights):
        weights = {k[len("model."):]: v for k, v in weights.items()}  # saved from the loss head
    # The sparse puzzle embedding's batch-sized scratch tensor is not part of the learned state.
    weights = {k: v for k, v in weights.items() if not (k.endswith("local_weights") and k in own and own[k].shape != v.shape)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("local_weights")]
    if missing or unexpected:
        raise StageFailure(f"checkpoint does not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}")


def predict(model: torch.nn.Module, inputs: np.ndarray, identifiers: np.ndarray, halt_max_steps: int,
            device: torch.device) -> tuple[np.ndarray, float]:
    """Argmax predictions [N, L] after halt_max_steps segments, and the mean q_halt > 0 rate."""
    model.eval()
    preds: list[np.ndarray] = []
    halts = 0.0
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], EVAL_BATCH):
            batch = to_torch(
                {"inputs": inputs[start : start + EVAL_BATCH], "puzzle_identifiers": identifiers[start : start + EVAL_BATCH]},
                device,
            )
            carry = model.initial_carry(batch)
            outputs: dict[str, torch.Tensor] = {}
            for _ in range(halt_max_steps):
                carry, outputs = model(carry, batch)
            require(bool(carry.halted.all()), f"eval mode: rows still running after {halt_max_steps} segments")
            logits = outputs["logits"]
            require(tuple(logits.shape[:2]) == tuple(batch["inputs"].shape), f"logits shape {tuple(logits.shape)}")
            preds.append(logits.argmax(dim=-1).to(torch.int64).cpu().numpy())
            halts += float((outputs["q_halt_logits"] > 0).float().sum())
    return np.concatenate(preds), halts / max(inputs.shape[0], 1)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


def run_evaluate(data_dir: Path, out_dir: Path, checkpoint: Path | None, seed: int) -> dict[str, Any]:
    from hrm.config import RunConfig
    from hrm.model import HRM

    if checkpoint is None:
        raise StageFailure("evaluate needs --checkpoint (the train stage's checkpoint.pt)")
    torch.manual_seed(seed)
    device = pick_device()
    split = load_split(data_dir, "test")
    config, weights = load_weights(checkpoint, device)
    run = RunConfig.from_dict(config)
    cfg = run.model
    for key in ("vocab_size", "seq_len"):
        require(int(getattr(cfg, key)) == int(split.meta[key]), f"checkpoint {key}={getattr(cfg, key)}, data {split.meta[key]}")
    model = HRM(cfg).to(device)
    load_into(model, weights)
    start = time.perf_counter()
    predictions, halt_rate = predict(model, split.inputs, split.puzzle_identifiers, int(cfg.halt_max_steps), device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_atomic(out_dir / PREDICTIONS_FILE, predictions)
    metrics: dict[str, Any] = {
        "examples": int(predictions.shape[0]),
        "halt_max_steps": int(cfg.halt_max_steps),
        "q_halt_rate": halt_rate,
        "eval_seconds": time.perf_counter() - start,
        "predictions": PREDICTIONS_FILE,
        "labels_available": split.labels is not None,
    }
    if split.labels is not None:
        metrics.update(score_predictions(predictions, split.labels))
    return metrics
