"""Stage 4, train: the candidate's own trainer (`hrm.train.train`) on the task preset, with the budget and
seed taken from the harness's arguments (never from candidate code), writing into OUT/train. The host
mounts only the train split and enforces the wall clock; this stage reads the metrics back and checks a
checkpoint was written. The trainer's own accuracy figures are reported as `claimed_*`: the score that
counts comes from the evaluate stage."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from smoketests.smoke import require, task_preset

REPORTED = ("exact_accuracy", "token_accuracy", "mean_act_steps", "q_halt_accuracy")


def run_train(data_dir: Path, out_dir: Path, task: str, seed: int, budget_seconds: float) -> dict[str, Any]:
    from hrm.train import train

    meta = json.loads((Path(data_dir) / "train" / "dataset.json").read_text())
    run = task_preset(task, meta if isinstance(meta, dict) else {})
    # The harness scores the checkpoint itself (evaluate stage): no evaluation while or after training, so
    # the wall clock goes to training.
    run.train.eval_interval_steps = None
    train_dir = Path(out_dir) / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if "evaluate_at_end" in inspect.signature(train).parameters:
        extra["evaluate_at_end"] = False
    returned = train(
        run, train_dir, data_dir=Path(data_dir), budget_seconds=float(budget_seconds), seed=int(seed),
        progress=False, **extra,
    )
    metrics_path = train_dir / "metrics.json"
    require(metrics_path.is_file(), f"the trainer wrote no {metrics_path}")
    written = json.loads(metrics_path.read_text())
    require(isinstance(written, dict), "metrics.json is not a JSON object")
    require((train_dir / "checkpoint.pt").is_file(), "the trainer wrote no checkpoint.pt")
    out: dict[str, Any] = {
        "budget_seconds": float(budget_seconds),
        "seed": int(seed),
        "steps": written.get("steps"),
        "seconds": written.get("seconds"),
        "steps_per_second": written.get("steps_per_second"),
        "stop_reason": written.get("stop_reason"),
        "returned_keys": sorted(returned) if isinstance(returned, dict) else None,
    }
    for key in REPORTED:
        if written.get(key) is not None:
            out[f"claimed_{key}"] = written[key]
    return out
