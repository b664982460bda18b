"""Run settings: defaults, overridden by HRM_* keys in the environment or a .env file, overridden by flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from dotenv import dotenv_values

ENV_PREFIX = "HRM_"
PROVIDERS = ("lmstudio", "openai", "ollama", "offline")
BACKENDS = ("auto", "docker", "local")


def setting(default: Any = MISSING, help: str = "", *, flag: str | None = "", factory: Any = MISSING,
            check: str | None = None, choices: tuple[str, ...] | None = None, negate: bool = False,
            metavar: str | None = None) -> Any:
    """A field of `Settings` with everything the interfaces need to offer it: its help text, its flag (""
    derives ``--field-name``; None offers it as HRM_* / .env only), the check its values pass ("positive",
    "non_negative", "fraction"), its choices, and for a boolean whose flag turns it off, ``negate``."""
    meta = {"help": help, "flag": flag, "check": check, "choices": choices, "negate": negate, "metavar": metavar}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    """Every run setting, declared once: the flags of ``evolve.py run``, the HRM_<NAME> environment variables
    and the .env keys are generated from these fields (evolver/ui/settings_flags.py, `load_settings`)."""

    provider: str = setting("offline", "the LLM that proposes changes", choices=PROVIDERS)
    model: str | None = setting(None, "model name for the provider (default: the provider's)")
    host: str | None = setting(None, "provider base URL (default: the provider's)")
    fallback_provider: str | None = setting(
        None, "provider to switch to when the LLM server is unreachable (e.g. offline)")
    context_tokens: int | None = setting(
        None, "the LLM server's context size when it does not report one (e.g. 4096; Ollama: sent as num_ctx)",
        check="positive")
    max_reply_tokens: int | None = setting(
        None, "tokens reserved for the reply, sent as max_tokens (default: a quarter of the context, 512..4096)",
        check="positive")
    llm_timeout: float = setting(120.0, "seconds to wait for the server's first token and between tokens",
                                 check="positive")
    llm_retries: int = setting(3, "retries after a timeout, a dropped connection or HTTP 5xx", check="non_negative")
    task: str = setting("sudoku4", "HRM preset/task to score on (set to file, or file-gpu with --gpus, by "
                                   "--task-file)")
    task_file: str | None = setting(
        None, 'evolve for your own task: one {"input": [...], "output": [...]} per line (tokens are strings or '
              "integers); the host validates and encodes it and splits it train/select/final with the run's "
              "secret (distinct inputs per split); replaces --task", metavar="JSONL")
    select_file: str | None = setting(None, "fixed selection split for --task-file (with --final-file); inputs "
                                            "also in train are dropped", metavar="JSONL")
    final_file: str | None = setting(None, "fixed final split for --task-file (with --select-file)",
                                     metavar="JSONL")
    task_ladder: list[str] = setting(help="tasks to climb: start on the first and move to the next when the best "
                                          "saturates (every seed within the noise of --solved-at); the run ends "
                                          "when the last saturates", factory=list, metavar="T1,T2,...")
    guard_tasks: list[str] = setting(help="tasks a confirmed winner is also trained on beside its parent; a "
                                          "regression beyond the margin on any of them blocks its merge (README: "
                                          "Guard tasks)", factory=list, metavar="T1,...")
    solved_at: float = setting(1.0, "the score at which the task counts as solved, the saturation rule's ceiling",
                               check="positive")
    seeds: list[int] = setting(help="the first selection seeds of every candidate, e.g. 0,1,2; more are added "
                                    "while the candidate is promising but undecided",
                               factory=lambda: [0, 1, 2], metavar="S,S,...")
    max_seeds: int = setting(10, "cap on selection seed pairs (sequential rule: evolver/judge/promotion.py)",
                             check="positive")
    confirm_seeds: int = setting(6, "fresh seed pairs a selected candidate must be confirmed on", check="positive")
    side_by_side: bool = setting(True, "train the two sides of a pair one after the other (default: side by "
                                       "side, half the machine each)", flag="--serial-pairs", negate=True)
    executor: str = setting("auto", "where the two sides of a seed pair run: local worker slots, or the nodes of "
                                    "a Ray cluster (needs pip install -e '.[ray]'); auto: ray when --ray-address "
                                    "or RAY_ADDRESS is set, else local", choices=("local", "ray", "auto"))
    ray_address: str | None = setting(None, "the Ray head to join, host:port (default: RAY_ADDRESS); the git "
                                            "record and every verdict stay on this machine", metavar="ADDR")
    workers: int | None = setting(
        None, "local worker slots, each with its own GPU id from --gpu-ids (default: what the machine offers: one "
              "per GPU with --gpus, else one per core at one torch thread; at least 2 side by side, 1 with "
              "--serial-pairs)", check="positive")
    cohort: int | None = setting(
        None, "candidates judged at once, proposals requested ahead while they train (default: as many as the "
              "workers train pairs for at once; 1 on a 2-core machine). Confirmations and merges keep cycle "
              "order; a winner whose parent is no longer the best is rebased and confirmed against the new best",
        check="positive")
    screen: int = setting(0, "successive halving: screen batches of N candidates with one short-budget seed pair "
                             "each and judge only the best --screen-fraction in full (0: off)",
                          check="non_negative", metavar="N")
    screen_fraction: float = setting(0.5, "the share of each screen batch judged in full", check="fraction")
    screen_budget_seconds: float | None = setting(
        None, "the screen pair's training budget in seconds (default: a quarter of --budget-seconds)",
        flag="--screen-budget", check="positive")
    screen_audit: float = setting(0.25, "the share of screened-out candidates judged in full anyway, so the run "
                                        "measures what the screen drops", check="fraction")
    early_stop: bool = setting(False, "stop a candidate whose training accuracy is clearly below its parent's at "
                                      "the same elapsed time, past half the budget (local worker slots; it can "
                                      "only reject)")
    early_stop_margin: float = setting(0.15, "how far below the parent's training-batch token accuracy stops a "
                                             "candidate", check="positive")
    early_stop_audit: float = setting(0.25, "the share of early stops only recorded, not enforced, to measure "
                                            "what they cost", check="fraction")
    throughput_tolerance: float = setting(0.25, "the noise guard's tolerance: side by side, a pair is void when "
                                                "the parent's steps/s and the candidate/parent ratio both moved "
                                                "this much (relative) from their medians; with --serial-pairs, "
                                                "when the parent's steps/s moved this much from its median",
                                          check="positive")
    setup_allowance_seconds: float = setting(30.0, "host-measured seconds a train stage may take beyond its "
                                                   "budget", flag="--setup-allowance", check="positive")
    budget_seconds: float = setting(40.0, "training budget per seed, set by the harness, not by candidate code; "
                                          "the host kills a train stage at this plus --setup-allowance seconds of "
                                          "its own clock", check="positive")
    cycles: int = setting(3, "number of cycles (0 = until --max-runtime or Ctrl-C)", check="non_negative")
    max_runtime_seconds: float | None = setting(None, "stop starting cycles after this many seconds",
                                                flag="--max-runtime", check="positive")
    interval_seconds: float = setting(0.0, "seconds to wait between cycles", flag="--interval",
                                      check="non_negative")
    metric: str = setting("token_accuracy", "held-out score the merge rule compares (exact_accuracy needs longer "
                                            "budgets to leave 0: see README)",
                          choices=("exact_accuracy", "token_accuracy"))
    margin: float = setting(0.01, "minimum mean gain to merge")
    confidence: float = setting(0.90, "the run's confidence level", flag=None)
    backend: str = setting("auto", "the sandbox: Docker, or the hardened local process", choices=BACKENDS)
    image: str = setting("hrm-evolve-sandbox:latest", "sandbox image for the Docker backend (a CUDA build for "
                                                      "--gpus)")
    gpus: bool = setting(False, "train on a GPU: one per sandbox, CUDA checked inside it (needs a CUDA image)")
    gpu_ids: list[str] = setting(help="device ids for --gpus, e.g. 0,1: the parent's sandbox takes the first, the "
                                      "candidate's beside it the second (default 0)", factory=list,
                                 metavar="ID,ID,...")
    memory_mb: int = setting(6144, "memory limit of one sandbox, MB", flag=None, check="positive")
    cpus: float = setting(2.0, "CPUs of one sandbox", flag=None, check="positive")
    threads: int = setting(2, "torch threads inside the sandbox", flag=None, check="positive")
    min_free_disk_gb: float = setting(2.0, "refuse to start a cycle with less free disk", flag=None)
    min_free_memory_gb: float = setting(1.0, "refuse to start a cycle with less free memory", flag=None)
    auto_apply: bool = setting(False, "merge winners without review")
    allowed_paths: list[str] = setting(help="the paths a proposal may edit", factory=lambda: ["hrm/"], flag=None)
    literature: str = setting("auto", "recent papers for the request: auto (arXiv, the snapshot when "
                                      "unreachable), snapshot, or off", choices=("auto", "snapshot", "off"))
    no_effect_check: bool = setting(True, "end a candidate whose fingerprint after smoke (config, parameters, first "
                                          "losses, logits) equals its parent's as no-effect, before trainability and "
                                          "any seed pair")
    edit_format: str | None = setting(
        None, "how the model writes its proposal: json (one schema-constrained JSON object, code in strings) or "
              "fenced (a short JSON header, then the code in fenced or SEARCH/REPLACE blocks, no constrained "
              "format); default: fenced for lmstudio and ollama, json otherwise", choices=("json", "fenced"))
    repair_turns: int = setting(2, "turns that send an edit that does not apply back to the model with its error "
                                   "and the target's current source, before the proposal is recorded invalid (0 = "
                                   "off; a smoke or trainability crash gets one turn when this is above 0)",
                                check="non_negative")
    protocol: str = setting("auto", "how a proposal is asked for: direct (one request), look-then-edit (a first "
                                    "request names the idea and the definitions to read, a second gets their "
                                    "source and writes the edits), auto (look-then-edit when the core "
                                    "definitions do not fit the context)",
                            choices=("auto", "direct", "look-then-edit"))
    state_dir: str = setting(".hrm-evolve", "caches (baselines, LLM replies, datasets), relative to the repo",
                             flag=None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def state_path(self, repo: Path) -> Path:
        p = Path(self.state_dir)
        return p if p.is_absolute() else Path(repo) / p


def value_type(name: str) -> type:
    """The type one value of setting ``name`` takes: ``int`` for ``int | None``, the item type of a list."""
    hint = get_type_hints(Settings)[name]
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    return args[0] if args else hint


def _number(value: str, kind: type, name: str) -> Any:
    try:
        return kind(value.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected {what}, got {value!r}") from None


CHECKS = {"positive": (lambda v: v > 0, "must be positive"),
          "non_negative": (lambda v: v >= 0, "must not be negative"),
          "fraction": (lambda v: 0 <= v <= 1, "must be between 0 and 1")}
FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid value of setting ``name`` (its declared check and choices), or None."""
    meta = FIELDS[name].metadata
    if value is None:
        return None
    if meta.get("choices") and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])}, got {value!r}"
    check = meta.get("check")
    if check and isinstance(value, (int, float)) and not isinstance(value, bool):
        ok, words = CHECKS[check]
        if not ok(value):
            return f"{words}, got {value!r}"
    return None


def _check(name: str, value: Any) -> None:
    problem = check_value(name, value)
    if problem:
        raise ValueError(f"{name} ({ENV_PREFIX}{name.upper()}) {problem}")


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
        return [int(v) for v in items] if value_type(name) is int else items
    if value.strip().lower() in {"", "none", "null"}:
        return None
    kind = value_type(name)
    if kind in (int, float):
        return _number(value, kind, name)
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
    if settings.task_file:  # a file task: trusted like the puzzles, its spec made from the file (puzzles/file_task.py)
        settings.task = "file-gpu" if settings.gpus else "file"
    return settings
