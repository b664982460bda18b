"""The one result format every stage writes: OUT/STAGE.json = {stage, ok, reason, metrics, seconds}."""

from __future__ import annotations

import json
import math
import os
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRACEBACK_TAIL_LINES = 25


class StageFailure(Exception):
    """A check the harness made did not hold; carries the metrics gathered so far."""

    def __init__(self, reason: str, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.metrics = dict(metrics or {})


@dataclass
class StageResult:
    stage: str
    ok: bool
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "ok": bool(self.ok),
            "reason": self.reason,
            "metrics": json_safe(self.metrics),
            "seconds": float(self.seconds),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        missing = sorted({"stage", "ok", "reason", "metrics", "seconds"} - set(data))
        if missing:
            raise ValueError(f"stage result lacks field(s) {missing}")
        if not isinstance(data["ok"], bool) or not isinstance(data["metrics"], dict):
            raise ValueError("stage result: 'ok' must be a bool and 'metrics' an object")
        return cls(
            stage=str(data["stage"]),
            ok=data["ok"],
            reason=str(data["reason"]),
            metrics=dict(data["metrics"]),
            seconds=float(data["seconds"]),
        )


def json_safe(value: Any) -> Any:
    """Plain JSON types only: non-finite floats become strings, tensors/arrays become lists or numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays/scalars, torch tensors
        return json_safe(value.tolist())
    return str(value)


def result_path(out_dir: Path, stage: str) -> Path:
    return Path(out_dir) / f"{stage}.json"


def write_result(out_dir: Path, result: StageResult) -> Path:
    """Write OUT/STAGE.json atomically (temp file in the same directory, then rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = result_path(out_dir, result.stage)
    fd, tmp = tempfile.mkstemp(prefix=f".{result.stage}.", suffix=".json", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(result.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_result(path: Path) -> StageResult | None:
    """The stage result at `path`, or None when it is missing or malformed."""
    try:
        return StageResult.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def describe_exception(exc: BaseException, tail_lines: int = TRACEBACK_TAIL_LINES) -> str:
    """`Type: message` plus the tail of the traceback, for a reason string."""
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    head = f"{type(exc).__name__}: {exc}"
    return head + "\n" + "\n".join(lines[-tail_lines:])
