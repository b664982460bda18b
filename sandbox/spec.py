"""The sandbox contract: what to run (SandboxSpec), what happened (SandboxResult), and the Backend protocol."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

DEFAULT_IMAGE = "hrm-evolve-sandbox:latest"
OUT_TARGET = "/out"
LOG_TAIL_LINES = 200

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Mount:
    """A host path shown inside the sandbox at ``target``."""

    host: Path
    target: str
    read_only: bool = True

    def __post_init__(self) -> None:
        if not Path(self.host).is_absolute():
            raise ValueError(f"mount host path must be absolute: {self.host}")
        if not self.target.startswith("/") or self.target.rstrip("/") in ("", OUT_TARGET):
            raise ValueError(f"mount target must be absolute and not / or {OUT_TARGET}: {self.target!r}")


@dataclass
class SandboxSpec:
    """One command to run in a sandbox, with every limit decided by the caller (never by the candidate)."""

    command: list[str]
    mounts: list[Mount]
    output_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = OUT_TARGET
    timeout_s: float = 600.0
    memory_mb: int = 4096
    cpus: float = 2.0
    pids: int = 256
    disk_mb: int = 1024
    gpus: bool = False
    gpu_ids: list[str] = field(default_factory=list)  # with gpus: only these devices (empty: all of them)
    label: str = ""
    stop: threading.Event | None = field(default=None, compare=False, repr=False)
    """Set by the host to end the run now (a learning-curve early stop); the run is killed like a timeout and
    its result says ``stopped``."""

    def validate(self) -> None:
        if not self.command:
            raise ValueError("SandboxSpec.command is empty")
        targets = [m.target.rstrip("/") for m in self.mounts]
        if len(set(targets)) != len(targets):
            raise ValueError(f"duplicate mount targets: {targets}")
        if self.timeout_s <= 0 or self.memory_mb <= 0 or self.cpus <= 0 or self.pids <= 0 or self.disk_mb <= 0:
            raise ValueError("timeout_s, memory_mb, cpus, pids and disk_mb must be positive")


@dataclass
class SandboxResult:
    """What happened. ``error`` is an infrastructure failure; a failing candidate has error=None."""

    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    duration_s: float
    overhead_s: float
    log_tail: str
    backend: str
    isolation: list[str]
    missing: list[str]
    error: str | None = None
    stopped: bool = False  # ended by the host's stop event (SandboxSpec.stop), not by the program or a limit

    @property
    def ok(self) -> bool:
        return (self.error is None and not self.timed_out and not self.oom_killed and not self.stopped
                and self.exit_code == 0)


class Backend(Protocol):
    name: str

    def run(self, spec: SandboxSpec) -> SandboxResult: ...


def tail_lines(text: str, n: int = LOG_TAIL_LINES) -> str:
    """The last ``n`` lines of ``text``."""
    lines = text.splitlines()
    return "\n".join(lines[-n:])


def finished_result(spec: SandboxSpec, backend: str, *, exit_code: int | None, timed_out: bool, oom: bool,
                    oom_note: str, quota_msg: str | None, log: str, command_s: float, total_s: float,
                    isolation: list[str], missing: list[str], stopped: bool = False) -> SandboxResult:
    """The result of a run that started: the log tail annotated with why the host stopped it, if it did."""
    if stopped:
        log = tail_lines(f"{log}\n[sandbox] stopped by the host")
    if timed_out:
        log = tail_lines(f"{log}\n[sandbox] killed after the {spec.timeout_s:g}s wall clock")
    if quota_msg:
        log = tail_lines(f"{log}\n[sandbox] killed: {quota_msg}")
    if oom:
        log = tail_lines(f"{log}\n[sandbox] {oom_note}")
    return SandboxResult(exit_code=exit_code, timed_out=timed_out, oom_killed=oom, duration_s=command_s,
                         overhead_s=max(0.0, total_s - command_s), log_tail=log, backend=backend,
                         isolation=isolation, missing=missing, error=None, stopped=stopped)

