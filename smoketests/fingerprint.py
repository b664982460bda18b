"""Stage fingerprint: what the candidate's code makes of the task, in a few seconds, for the host to compare
with its parent's (evolver/run/no_effect.py decides; nothing here judges).

It records, all from the candidate's own `hrm`:

- ``config``: the task preset as resolved (`hrm.presets.get_preset(task).to_dict()`), and ``defaults``: the
  ModelConfig/TrainConfig defaults (so the host can name a preset value that overrides an edited default),
  ``other_presets``: the other presets resolved (so it can say an edit changed only those);
- ``trainer_config``: the run configuration the candidate's trainer stored in its checkpoint (its own
  resolution of the preset, the budget, the seed and the data's shape);
- ``losses`` and ``lrs``: the first FINGERPRINT_STEPS training steps of the candidate's own trainer
  (`hrm.train.train`), on the task's train split with the harness's seed and budget, stopped by the
  harness after those steps (its `on_step` hook), exactly as the train stage starts;
- ``lr_probe``: the candidate's learning-rate schedule at fixed later steps (its `scheduled_lr_factor`),
  which the first steps never reach;
- ``parameters`` and ``logits``: the trained model of that checkpoint rebuilt as the evaluate stage rebuilds
  it, rolled out in eval mode for the host's number of ACT segments on a fixed batch of train inputs (no
  labels); the head of the last segment's logits and float64 sums over all of them;
- ``step_seconds``: the harness's own wall clock per step (informational: a change that keeps the numbers
  but runs faster is not an edit without effect).

A candidate can write anything here (it runs in this process). Forging a match only ends itself as
`no-effect`; forging a difference only buys the full judgement it would have had anyway.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from puzzles.arrays import load_split
from smoketests.evaluate_stage import _no_exploration, load_into, load_weights
from smoketests.result import StageFailure
from smoketests.smoke import pick_device, require, to_torch

FINGERPRINT_STEPS = 5
FIXED_ROWS = 4
LOGITS_HEAD = 2048
LR_PROBE_STEPS = (1, 50, 99, 100, 150, 300, 600, 1000, 2000, 5000)
LR_PROBE_SECONDS_PER_STEP = 0.1


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _defaults() -> dict[str, Any]:
    from hrm import config as cfg_mod

    out: dict[str, Any] = {}
    for name in ("ModelConfig", "TrainConfig"):
        cls = getattr(cfg_mod, name, None)
        try:
            out[name] = _plain(dataclasses.asdict(cls())) if cls is not None else None
        except Exception as exc:  # candidate code: a default that cannot be built is recorded, not raised
            out[name] = f"error: {type(exc).__name__}: {exc}"
    return out


def _other_presets(task: str) -> dict[str, Any]:
    """Every other preset of the candidate's registry, resolved (not compared: only named in a no-effect reason
    when the edit changed them and not the task's)."""
    try:
        from hrm import presets

        names = [n for n in getattr(presets, "PRESETS", ()) if n != task]
        return {n: _plain(presets.get_preset(n).to_dict()) for n in names}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _lr_probe(run: Any, budget_seconds: float) -> list[Any]:
    """The candidate's schedule factor at LR_PROBE_STEPS, as a budget-only run at a fixed pace would see it."""
    try:
        from hrm.train import resolve_run, scheduled_lr_factor

        tc = resolve_run(run, budget_seconds=budget_seconds, max_steps=None, seed=None).train
        return [float(scheduled_lr_factor(s, s * LR_PROBE_SECONDS_PER_STEP, tc, None)) for s in LR_PROBE_STEPS]
    except Exception as exc:
        return [f"error: {type(exc).__name__}: {exc}"]


def run_fingerprint(data_dir: Path, out_dir: Path, task: str, seed: int, budget_seconds: float,
                    segments: int | None = None, steps: int = FINGERPRINT_STEPS) -> dict[str, Any]:
    from hrm.config import RunConfig
    from hrm.model import HRM
    from hrm.presets import get_preset
    from hrm.train import train

    started = time.perf_counter()
    device = pick_device()
    preset = get_preset(task)
    metrics: dict[str, Any] = {"task": task, "seed": int(seed), "steps_planned": int(steps), "device": str(device),
                               "config": _plain(preset.to_dict()), "defaults": _defaults(),
                               "lr_probe": _lr_probe(preset, float(budget_seconds)),
                               "other_presets": _other_presets(task)}

    run = get_preset(task)
    run.train.eval_interval_steps = None  # as the train stage: no evaluation while training
    records: list[dict[str, Any]] = []
    stamps: list[float] = []

    def on_step(record: dict[str, Any]) -> bool:
        stamps.append(time.perf_counter())
        records.append({"loss": record.get("loss"), "lr": record.get("lr"), "step": record.get("step")})
        return len(records) >= steps

    params = inspect.signature(train).parameters
    extra: dict[str, Any] = {}
    if "evaluate_at_end" in params:
        extra["evaluate_at_end"] = False
    train_dir = Path(out_dir) / "fingerprint-train"
    train_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if "on_step" in params:
        metrics["stopped_by"] = "on_step"
        train(run, train_dir, data_dir=Path(data_dir), budget_seconds=float(budget_seconds), seed=int(seed),
              progress=False, resume=False, on_step=on_step, **extra)
    else:  # a trainer without the hook: a step cap (its schedule then differs from the train stage's)
        metrics["stopped_by"] = "max_steps"
        train(run, train_dir, data_dir=Path(data_dir), budget_seconds=float(budget_seconds), seed=int(seed),
              max_steps=int(steps), progress=False, resume=False, **extra)
    gaps = np.diff([t0, *stamps]).tolist()
    metrics["losses"] = [r["loss"] for r in records]
    metrics["lrs"] = [r["lr"] for r in records]
    metrics["steps"] = len(records)
    metrics["step_seconds"] = gaps
    require(len(records) >= 1 or metrics["stopped_by"] == "max_steps", "the trainer took no step", metrics)

    config, weights = load_weights(train_dir / "checkpoint.pt", device)
    metrics["trainer_config"] = _plain(config)
    resolved = RunConfig.from_dict(config)
    segments = int(segments or resolved.model.halt_max_steps)
    cfg = _no_exploration(dataclasses.replace(resolved.model, halt_max_steps=segments))
    model = HRM(cfg).to(device)
    load_into(model, weights)
    metrics["parameters"] = int(sum(p.numel() for p in model.parameters()))
    split = load_split(data_dir, "train")
    rows = np.arange(min(FIXED_ROWS, len(split)))
    batch = to_torch({"inputs": split.inputs[rows], "puzzle_identifiers": split.puzzle_identifiers[rows]}, device)
    model.eval()
    with torch.inference_mode():
        carry = model.initial_carry(batch)
        outputs: dict[str, torch.Tensor] = {}
        for _ in range(segments):
            carry, outputs = model(carry, batch)
    require("logits" in outputs, "the model gave no logits", metrics)
    logits = outputs["logits"].detach().to(torch.float64).cpu()
    flat = logits.reshape(-1)
    metrics["logits_shape"] = list(logits.shape)
    metrics["logits_head"] = [float(x) for x in flat[:LOGITS_HEAD]]
    metrics["logits_stats"] = [float(flat.sum()), float(flat.abs().sum()), float(flat.pow(2).sum()),
                               float(flat.max()), float(flat.min())]
    metrics["segments"] = segments
    shutil.rmtree(train_dir, ignore_errors=True)  # its checkpoint is read: nothing there goes back to the host
    metrics["fingerprint_seconds"] = time.perf_counter() - started
    if not all(isinstance(x, float) and np.isfinite(x) for x in metrics["losses"]):
        raise StageFailure(f"non-finite losses in the first steps: {metrics['losses']}", metrics)
    return metrics

