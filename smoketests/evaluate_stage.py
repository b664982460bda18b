"""Stage 5, evaluate: the HARNESS's own evaluation loop over a held-out split whose labels were withheld.

Loads the checkpoint the train stage wrote (`torch.load(weights_only=True)`: tensors and plain containers
only), rebuilds the candidate's model from the config stored in it, and runs every sample through exactly
the number of ACT segments the host passes (`--segments`, from the trusted task spec) in eval mode, with
batches that carry no labels. It writes, for the host to judge:

- predictions.npy: argmax predictions of the trained weights;
- init_predictions.npy: the same for freshly initialised weights (a model that scores above chance without
  training solves puzzles by other means than learning);
- buffers_predictions.npy / shuffled_predictions.npy: the same for fresh parameters with the trained
  buffers, and for the trained parameters shuffled within each tensor (a solver armed by something training
  left in the model, not by what it learned, still solves there);
- mode_eval.npy / mode_train.npy / mode_comparable.npy: a probe of rows in eval and train mode, which must
  agree wherever both modes compute the same function.

Nothing here decides a verdict: the host scores and compares the arrays.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from puzzles.arrays import load_split
from puzzles.scoring import score_predictions
from smoketests.result import StageFailure
from smoketests.smoke import pick_device, require, to_torch

EVAL_BATCH = 256
PREDICTIONS_FILE = "predictions.npy"
INIT_PREDICTIONS_FILE = "init_predictions.npy"
MODE_PROBE_ROWS = 128


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


def _rollout(model: Any, batch: dict[str, torch.Tensor], segments: int
             ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Argmax per segment [B, L], halted-after-segment flags [B] per segment, and the last q_halt logits."""
    carry = model.initial_carry(batch)
    argmaxes: list[torch.Tensor] = []
    halted: list[torch.Tensor] = []
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(segments):
        carry, outputs = model(carry, batch)
        logits = outputs["logits"]
        require(tuple(logits.shape[:2]) == tuple(batch["inputs"].shape), f"logits shape {tuple(logits.shape)}")
        argmaxes.append(logits.argmax(dim=-1).to(torch.int64))
        halted.append(carry.halted.clone())
    return argmaxes, halted, outputs["q_halt_logits"]


def predict(model: torch.nn.Module, inputs: np.ndarray, identifiers: np.ndarray, segments: int,
            device: torch.device) -> tuple[np.ndarray, float]:
    """Argmax predictions [N, L] after exactly ``segments`` ACT segments in eval mode, and the mean
    q_halt > 0 rate. The harness fixes ``segments``; whatever the model's own halting says, the outputs of
    the last segment are the predictions."""
    model.eval()
    preds: list[np.ndarray] = []
    halts = 0.0
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], EVAL_BATCH):
            batch = to_torch(
                {"inputs": inputs[start : start + EVAL_BATCH], "puzzle_identifiers": identifiers[start : start + EVAL_BATCH]},
                device,
            )
            argmaxes, _halted, q_halt = _rollout(model, batch, segments)
            preds.append(argmaxes[-1].cpu().numpy())
            halts += float((q_halt > 0).float().sum())
    return np.concatenate(preds), halts / max(inputs.shape[0], 1)


def mode_probe(model: torch.nn.Module, inputs: np.ndarray, identifiers: np.ndarray, segments: int,
               device: torch.device) -> dict[str, np.ndarray]:
    """The same inputs rolled out in eval mode and in train mode (halting exploration off, no gradients).

    Until a row halts in train mode, both modes compute the same function of the same carry, so their
    argmax outputs must agree there. Returns eval [S, R, L], train [S, R, L] and comparable [S, R] (the row
    has not halted in train mode before that segment); the host compares them.
    """
    batch = to_torch({"inputs": inputs, "puzzle_identifiers": identifiers}, device)
    with torch.no_grad():
        model.eval()
        ev, _, _ = _rollout(model, batch, segments)
        model.train()
        tr, halted, _ = _rollout(model, batch, segments)
        model.eval()
    running = torch.ones(inputs.shape[0], dtype=torch.bool, device=device)
    comparable = []
    for seg in range(segments):
        comparable.append(running.clone())
        running = running & ~halted[seg]
    return {
        "eval": torch.stack(ev).cpu().numpy().astype(np.int16),
        "train": torch.stack(tr).cpu().numpy().astype(np.int16),
        "comparable": torch.stack(comparable).cpu().numpy(),
    }


def learned_state_controls(model_class: Any, cfg: Any, trained: torch.nn.Module, seed: int,
                           device: torch.device) -> dict[str, torch.nn.Module]:
    """Two copies of the candidate's model that keep what training left in it except what it learned:

    - ``buffers``: freshly initialised parameters with the trained checkpoint's buffers (everything in its
      state dict that is not a parameter: a step counter, a running statistic);
    - ``shuffled``: the trained buffers and the trained parameters, each parameter's values permuted within
      its own tensor (its statistics stay: norm, mean, spread, and any single-value tensor unchanged).

    A model whose score comes from what it learned scores at chance in both. A solver armed by a trained
    buffer, a scalar parameter or a weight statistic still solves in one of them."""
    trained_state = trained.state_dict()
    params = {name for name, _ in trained.named_parameters()}
    buffers = {k: v for k, v in trained_state.items() if k not in params}
    torch.manual_seed(seed + 1)
    fresh = model_class(cfg).to(device)
    fresh.load_state_dict(buffers, strict=False)
    torch.manual_seed(seed + 2)
    shuffled = model_class(cfg).to(device)
    shuffled.load_state_dict(trained_state, strict=False)
    generator = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        for _name, param in shuffled.named_parameters():
            order = torch.randperm(param.numel(), generator=generator).to(param.device)
            param.copy_(param.detach().flatten()[order].view_as(param))
    return {"buffers": fresh, "shuffled": shuffled}


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


def _no_exploration(cfg: Any) -> Any:
    if hasattr(cfg, "halt_exploration_prob"):
        return dataclasses.replace(cfg, halt_exploration_prob=0.0)
    return cfg


def run_evaluate(data_dir: Path, out_dir: Path, checkpoint: Path | None, seed: int,
                 segments: int | None = None) -> dict[str, Any]:
    """Trained predictions, fresh-initialisation predictions and the mode probe, each written as an array
    for the host to score and compare; this process judges nothing."""
    from hrm.config import RunConfig
    from hrm.model import HRM

    if checkpoint is None:
        raise StageFailure("evaluate needs --checkpoint (the train stage's checkpoint.pt)")
    device = pick_device()
    split = load_split(data_dir, "test")
    config, weights = load_weights(checkpoint, device)
    run = RunConfig.from_dict(config)
    cfg = run.model
    for key in ("vocab_size", "seq_len"):
        require(int(getattr(cfg, key)) == int(split.meta[key]), f"checkpoint {key}={getattr(cfg, key)}, data {split.meta[key]}")
    segments = int(segments or cfg.halt_max_steps)
    cfg = _no_exploration(dataclasses.replace(cfg, halt_max_steps=segments))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    fresh = HRM(cfg).to(device)  # the same architecture, never trained: it must not solve puzzles
    init_predictions, _ = predict(fresh, split.inputs, split.puzzle_identifiers, segments, device)
    _save_atomic(out_dir / INIT_PREDICTIONS_FILE, init_predictions)
    del fresh

    model = HRM(cfg).to(device)
    load_into(model, weights)
    for name, control in learned_state_controls(HRM, cfg, model, seed, device).items():
        control_predictions, _ = predict(control, split.inputs, split.puzzle_identifiers, segments, device)
        _save_atomic(out_dir / f"{name}_predictions.npy", control_predictions)
        del control
    start = time.perf_counter()
    predictions, halt_rate = predict(model, split.inputs, split.puzzle_identifiers, segments, device)
    eval_seconds = time.perf_counter() - start
    _save_atomic(out_dir / PREDICTIONS_FILE, predictions)
    rows = min(MODE_PROBE_ROWS, len(split))
    probe = mode_probe(model, split.inputs[:rows], split.puzzle_identifiers[:rows], segments, device)
    for name, array in probe.items():
        _save_atomic(out_dir / f"mode_{name}.npy", array)
    metrics: dict[str, Any] = {
        "examples": int(predictions.shape[0]),
        "eval_segments": segments,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "q_halt_rate": halt_rate,
        "eval_seconds": eval_seconds,
        "predictions": PREDICTIONS_FILE,
        "labels_available": split.labels is not None,
    }
    if split.labels is not None:
        metrics.update(score_predictions(predictions, split.labels))
    return metrics
