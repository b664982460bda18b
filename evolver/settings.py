"""Run settings: defaults, overridden by HRM_* keys in the environment or a .env file, overridden by flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

ENV_PREFIX = "HRM_"
EDIT_FORMATS = ("json", "fenced")  # evolver/providers/reply_formats.py (not imported: settings load first)


@dataclass
class Settings:
    provider: str = "offline"  # lmstudio | openai | ollama | offline
    model: str | None = None  # provider model name; None = the provider's default
    host: str | None = None  # provider base URL; None = the provider's default
    fallback_provider: str | None = None  # e.g. "offline" when the LLM server is unreachable
    context_tokens: int | None = None  # the server's context size when it does not say (Ollama: sent as num_ctx)
    max_reply_tokens: int | None = None  # sent as max_tokens; None = a quarter of the context (512..4096)
    llm_timeout: float = 120.0  # seconds to wait for the server's first chunk and between chunks
    llm_retries: int = 3  # retries after a timeout, a dropped connection or HTTP 5xx
    edit_format: str | None = None  # json | fenced; None = fenced for lmstudio/ollama, json otherwise (reply_formats)
    repair_turns: int = 2  # turns that send a non-applying edit's error and target source back (evolver/repair.py)
    task: str = "sudoku4"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # the first selection seeds of every candidate
    max_seeds: int = 10  # selection stops at this many seed pairs (sequential rule: evolver/promotion.py)
    confirm_seeds: int = 6  # fresh seed pairs a selected candidate is confirmed on
    side_by_side: bool = True  # train parent and candidate of a pair at the same time, half the machine each
    executor: str = "auto"  # local | ray | auto (ray when ray_address or RAY_ADDRESS is set): evolver/executor.py
    ray_address: str | None = None  # the Ray head, host:port (default: RAY_ADDRESS)
    workers: int | None = None  # local worker slots; None = one per GPU, or per core at one thread (>= 2 side by side)
    cohort: int | None = None  # candidates judged at once; None = as many as the workers train pairs for at once
    screen: int = 0  # successive halving: screen batches of this many candidates at a short budget (0 = off)
    screen_fraction: float = 0.5  # the share of each screen batch judged in full
    screen_budget_seconds: float | None = None  # the screen pair's training budget; None = budget_seconds / 4
    screen_audit: float = 0.25  # the share of screened-out candidates judged in full anyway, to measure the screen
    early_stop: bool = False  # stop a candidate whose learning curve is clearly below its parent's (local slots)
    early_stop_margin: float = 0.15  # ... by more than this training-batch token accuracy, past half the budget
    early_stop_audit: float = 0.25  # the share of early stops only recorded, to measure what they cost
    throughput_tolerance: float = 0.25  # a pair whose parent ran this much off its median steps/s is void
    setup_allowance_seconds: float = 30.0  # host-measured seconds a train stage may take beyond its budget
    budget_seconds: float = 40.0  # training budget per seed, set by the harness, not by candidate code
    cycles: int = 3  # 0 = until --max-runtime or Ctrl-C
    max_runtime_seconds: float | None = None
    interval_seconds: float = 0.0  # pause between cycles
    metric: str = "token_accuracy"  # or "exact_accuracy" (needs longer budgets to leave 0: see README)
    margin: float = 0.01
    confidence: float = 0.90
    backend: str = "auto"  # auto | docker | local
    image: str = "hrm-evolve-sandbox:latest"
    gpus: bool = False
    gpu_ids: list[str] = field(default_factory=list)  # with gpus: device ids; side by side, one per sandbox
    memory_mb: int = 6144
    cpus: float = 2.0
    threads: int = 2  # torch threads inside the sandbox
    min_free_disk_gb: float = 2.0
    min_free_memory_gb: float = 1.0
    auto_apply: bool = False
    allowed_paths: list[str] = field(default_factory=lambda: ["hrm/"])
    literature: str = "auto"  # auto (arXiv, snapshot when unreachable) | snapshot | off
    state_dir: str = ".hrm-evolve"  # caches (baselines, LLM replies, datasets), relative to the repo

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def state_path(self, repo: Path) -> Path:
        p = Path(self.state_dir)
        return p if p.is_absolute() else Path(repo) / p


# Fields whose default is None, by the type a value takes.
OPTIONAL_TYPES: dict[str, type] = {"max_runtime_seconds": float, "context_tokens": int, "max_reply_tokens": int,
                                   "workers": int, "cohort": int, "screen_budget_seconds": float}
POSITIVE = ("context_tokens", "max_reply_tokens", "llm_timeout", "workers", "cohort")
NON_NEGATIVE = ("llm_retries", "repair_turns")


def _number(value: str, kind: type, name: str) -> Any:
    try:
        return kind(value.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected {what}, got {value!r}") from None


def _check(name: str, value: Any) -> None:
    if name == "edit_format" and isinstance(value, str):
        value = value.strip().lower()
        if value not in EDIT_FORMATS:
            raise ValueError(f"edit_format ({ENV_PREFIX}EDIT_FORMAT) must be one of {', '.join(EDIT_FORMATS)}, "
                             f"got {value!r}")
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if name in POSITIVE and value <= 0:
        raise ValueError(f"{name} ({ENV_PREFIX}{name.upper()}) must be positive, got {value!r}")
    if name in NON_NEGATIVE and value < 0:
        raise ValueError(f"{name} ({ENV_PREFIX}{name.upper()}) must not be negative, got {value!r}")


def _coerce(value: str, current: Any, name: str) -> Any:
    """Turn an environment string into the type of the field's default."""
    if isinstance(current, bool):
        low = value.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected a boolean, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        return _number(value, int, name)
    if isinstance(current, float):
        return _number(value, float, name)
    if isinstance(current, list):
        items = [v.strip() for v in value.split(",") if v.strip()]
        return [int(v) for v in items] if name == "seeds" else items
    if value.strip().lower() in {"", "none", "null"}:
        return None
    if name in OPTIONAL_TYPES:
        return _number(value, OPTIONAL_TYPES[name], name)
    return value


def load_settings(repo: Path | None = None, overrides: dict[str, Any] | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Defaults < `.env` in the repo < process environment < explicit overrides (CLI flags)."""
    settings = Settings()
    values: dict[str, str] = {}
    if repo is not None and (Path(repo) / ".env").is_file():
        values.update({k: v for k, v in dotenv_values(Path(repo) / ".env").items() if v is not None})
    values.update(os.environ if environ is None else environ)
    for f in dataclasses.fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if key in values:
            setattr(settings, f.name, _coerce(values[key], getattr(settings, f.name), f.name))
            _check(f.name, getattr(settings, f.name))
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if not hasattr(settings, name):
            raise ValueError(f"unknown setting {name!r}")
        _check(name, value)
        setattr(settings, name, value)
    return settings
