"""A stage job and what comes back from it, as plain data, and the executor protocol.

A *stage job* is one side of one seed pair (or one seed of a lone cascade): train + evaluate of one tree on
one seed, described by plain data (`StageJob`): the side, the seed, the phase, the candidate's tree, the
harness copy, the run data, the output folder and the `run_cascade` keyword arguments. An executor
(evolver/execute/local.py: local slots; evolver/execute/ray_executor.py: a Ray cluster) runs it and gives back a future
of a `StageOutcome`: the `CascadeResult` as a dict, the files the cascade wrote (when it ran elsewhere),
where it ran, and the executor's own error when it could not run it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from evolver.execute.cascade import (
    DEFAULT_TIMEOUTS,
    SETUP_ALLOWANCE_S,
    CascadeResult,
    Progress,
    StageRun,
    run_cascade,
)
from sandbox import DEFAULT_IMAGE, get_backend

if TYPE_CHECKING:
    pass

NODE_LOST = "executor: node lost"
CLOSE_WAIT_S = 60.0
"""How long closing an executor (a Ctrl-C) waits for the sandboxes it stopped to be cleaned up."""
RETURN_MARGIN_S = 600.0
"""Seconds a remote job may take beyond its stages' limits (shipping, unpacking, a retry's queue) before the
driver stops waiting, cancels it and records the side as lost."""

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class StageJob:
    """One side of one seed pair, as plain data. ``options``: run_cascade keyword arguments (the backend by
    name: "auto" | "docker" | "local"; no callables); ``image``: the sandbox image a docker backend runs."""

    side: str
    seed: int
    phase: str
    tree: str
    harness_dir: str
    data_dir: str
    out_dir: str
    options: dict[str, Any] = field(default_factory=dict)
    image: str = DEFAULT_IMAGE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageJob:
        return cls(**data)

    def deadline_s(self) -> float:
        """How long the driver waits for a remote answer before giving the side up: twice the stages' limits
        (the job may queue behind the other side of its pair) plus RETURN_MARGIN_S."""
        o = self.options
        train = float(o.get("budget_seconds", 0.0)) + float(o.get("setup_allowance_s", SETUP_ALLOWANCE_S))
        evaluate = float(o.get("eval_cap_s") or DEFAULT_TIMEOUTS["evaluate"])
        return 2 * (train + evaluate) + RETURN_MARGIN_S


@dataclass
class StageOutcome:
    """What came back from a job: ``result`` (CascadeResult.to_dict(), None when the executor failed),
    ``files`` (out_dir-relative path -> bytes, only from a remote node), ``placement`` (executor, node,
    host, slot, GPU ids) and ``error`` (the executor's own failure)."""

    result: dict[str, Any] | None
    files: dict[str, bytes] = field(default_factory=dict)
    placement: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageOutcome:
        return cls(**data)

    def cascade(self) -> CascadeResult | None:
        return None if self.result is None else cascade_from_dict(self.result)


def cascade_from_dict(data: dict[str, Any]) -> CascadeResult:
    """The inverse of CascadeResult.to_dict()."""
    fields = dict(data)
    fields["stages"] = [StageRun(**s) for s in fields.get("stages") or []]
    return CascadeResult(**fields)


def then(future: Future[T], fn: Callable[[T], U]) -> Future[U]:
    """A future of ``fn(future.result())``; an exception in either ends up in the returned future."""
    out: Future[U] = Future()

    def done(f: Future[T]) -> None:
        try:
            out.set_result(fn(f.result()))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            out.set_exception(exc)

    future.add_done_callback(done)
    return out


def run_stage_job(job: StageJob, *, backend: Any = None, progress: Progress | None = None,
                  stop: threading.Event | None = None, cancel: threading.Event | None = None) -> CascadeResult:
    """The job on this host: the same run_cascade call the loop makes (``backend``: a resolved backend to use
    instead of the job's backend name; ``stop``: the host's early stop of its train stage; ``cancel``: the
    run is stopping, kill the running stage)."""
    options = dict(job.options)
    manifest = options.pop("manifest_data", None)
    if manifest is not None:  # the safety manifest travels as data (a remote node has none of the driver's files)
        path = Path(job.out_dir) / "manifest.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        options["manifest"] = path
    if backend is not None:
        options["backend"] = backend
    elif isinstance(options.get("backend", "auto"), str):
        options["backend"] = get_backend(options.get("backend", "auto"), image=job.image)
    return run_cascade(Path(job.tree), Path(job.harness_dir), Path(job.data_dir), Path(job.out_dir),
                       seeds=[int(job.seed)], progress=progress, stop=stop, cancel=cancel, **options)


class Executor(Protocol):
    """Where stage jobs run. ``stop_events`` maps a job's out_dir to the event that stops its training early
    (local slots honour it); None where the executor cannot stop a running job (Ray)."""

    name: str

    @property
    def stop_events(self) -> dict[str, threading.Event] | None: ...

    def submit(self, job: StageJob, progress: Progress | None = None) -> Future[StageOutcome]: ...

    def submit_group(self, jobs: list[StageJob],
                     progress: list[Progress | None] | None = None) -> list[Future[StageOutcome]]: ...

    def close(self) -> None: ...
