"""Where the stage jobs of a run go: worker slots on this host, or the nodes of a Ray cluster.

- `LocalExecutor(workers=N)`: N worker slots on this host, each owning a slot index (one GPU id from
  --gpu-ids when GPUs are on) and optionally a share of the CPUs; the job runs `run_cascade` here, exactly
  as the loop always did.
- `RayExecutor(address)` (evolver/execute/ray_executor.py): each job a Ray task, a pair's two sides on one node.
- `make_executor` picks one from the settings. Measuring sides and seed pairs for the judge through an
  executor is the run's job (evolver/run/sides.py): execution knows no verdicts.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from evolver.execute.cascade import Progress
from evolver.execute.job import CLOSE_WAIT_S, StageJob, StageOutcome, run_stage_job
from evolver.execute.ray_executor import RAY_MISSING, RayExecutor, ray_available

EXECUTOR_KINDS = ("local", "ray", "auto")


# ------------------------------------------------------------------------------------------ local slots


@dataclass(frozen=True)
class Slot:
    """One local worker slot: its index, the GPU ids it hands a job (when the job asks for GPUs), and its
    share of the CPUs (None: the job keeps the cpus/threads it was built with)."""

    index: int
    gpu_ids: tuple[str, ...] = ()
    cpus: float | None = None
    threads: int | None = None

    def place(self, job: StageJob) -> StageJob:
        options = dict(job.options)
        options["gpu_ids"] = list(self.gpu_ids) if options.get("gpus") else []
        if self.cpus is not None:
            options["cpus"] = self.cpus
        if self.threads is not None:
            options["threads"] = self.threads
        return replace(job, options=options)


def make_slots(workers: int, *, gpu_ids: Iterable[str] = (), cpus: float | None = None,
               threads: int | None = None) -> list[Slot]:
    """Slot i takes GPU id gpu_ids[i % len] (default device 0), and with totals given, an equal share."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    ids = [str(g) for g in gpu_ids] or ["0"]
    share_cpus = None if cpus is None else max(1.0, float(cpus) / workers)
    share_threads = None if threads is None else max(1, int(threads) // workers)
    return [Slot(i, (ids[i % len(ids)],), share_cpus, share_threads) for i in range(workers)]


RunJob = Callable[[StageJob, Slot, "Progress | None"], StageOutcome]


class LocalExecutor:
    """Up to ``workers`` jobs at once on this host, each in its own slot. Work starts in the order it was
    submitted (first come, first served: nothing jumps the queue), each job on the lowest free slot. A
    *group* (``submit_group``: the two sides of a seed pair) starts only when a slot is free for every one
    of its jobs, all at once, so the sides of a pair always train beside each other, never beside another
    candidate's job while one of them waits; its first job takes the lower slot (the parent, submitted first,
    gets slot 0 and the first GPU id on an idle executor, the candidate slot 1 and the second)."""

    name = "local"

    def __init__(self, workers: int = 2, *, gpu_ids: Iterable[str] = (), cpus: float | None = None,
                 threads: int | None = None, backend: Any = None, run: RunJob | None = None) -> None:
        self.slots = make_slots(workers, gpu_ids=gpu_ids, cpus=cpus, threads=threads)
        self.workers = workers
        self._backend = backend
        self._run = run or self._run_here
        self._free = list(range(workers))
        self.stop_events: dict[str, threading.Event] = {}
        """A job's early-stop event by its out_dir (evolver/judge/early_stop.py), registered before it is submitted."""
        self._pending: deque[list[tuple[StageJob, Progress | None, Future[StageOutcome]]]] = deque()
        self._lock = threading.Lock()
        self._host = socket.gethostname()
        self._cancel = threading.Event()
        self._running: dict[int, threading.Event] = {}  # slot -> the train-stage stop event of its job
        self._idle = threading.Condition(self._lock)

    def submit(self, job: StageJob, progress: Progress | None = None) -> Future[StageOutcome]:
        return self.submit_group([job], [progress])[0]

    def submit_group(self, jobs: list[StageJob],
                     progress: list[Progress | None] | None = None) -> list[Future[StageOutcome]]:
        """Start ``jobs`` together, each on its own slot, once that many slots are free (see the class)."""
        if not jobs:
            return []
        if len(jobs) > self.workers:
            raise ValueError(f"a group of {len(jobs)} jobs cannot start together on {self.workers} worker slot(s)")
        progress = list(progress or [None] * len(jobs))
        group: list[tuple[StageJob, Progress | None, Future[StageOutcome]]] = [
            (job, prog, Future()) for job, prog in zip(jobs, progress, strict=True)]
        with self._lock:
            if self._cancel.is_set():  # closed: nothing starts any more
                for _job, _prog, future in group:
                    future.cancel()
            else:
                self._pending.append(group)
                self._dispatch()
        return [future for _job, _prog, future in group]

    def queued(self) -> int:
        """Jobs submitted and not started yet."""
        with self._lock:
            return sum(len(group) for group in self._pending)

    def _dispatch(self) -> None:  # with the lock held
        while self._pending and len(self._free) >= len(self._pending[0]) and not self._cancel.is_set():
            for job, progress, future in self._pending.popleft():
                self._free.sort()
                slot = self.slots[self._free.pop(0)]
                # the job's train-stage stop: the early stop's event when it has one; set by close()
                self._running[slot.index] = self.stop_events.pop(job.out_dir, threading.Event())
                threading.Thread(target=self._work, args=(slot, job, progress, future), daemon=True,
                                 name=f"hrm-evolve-slot{slot.index}").start()

    def _work(self, slot: Slot, job: StageJob, progress: Progress | None, future: Future[StageOutcome]) -> None:
        outcome: StageOutcome | None = None
        error: BaseException | None = None
        running = future.set_running_or_notify_cancel()
        try:
            if running:
                started = time.monotonic()
                outcome = self._run(slot.place(job), slot, progress)
                # seconds from the slot starting the job to its outcome: what a Ray task's round trip is
                # compared with (the job's time outside its stages, here and there)
                outcome.placement.setdefault("round_trip_s", round(time.monotonic() - started, 3))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            error = exc
        finally:  # the slot is free before anyone learns the job is done, so the next pair finds both
            with self._lock:
                self._running.pop(slot.index, None)
                self._free.append(slot.index)
                self._dispatch()
                self._idle.notify_all()
        if not running:
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]

    def _run_here(self, job: StageJob, slot: Slot, progress: Progress | None) -> StageOutcome:
        with self._lock:
            stop = self._running.get(slot.index)
        result = run_stage_job(job, backend=self._backend, progress=progress, stop=stop, cancel=self._cancel)
        placement = {"executor": self.name, "hostname": self._host, "slot": slot.index,
                     "gpu_ids": list(job.options.get("gpu_ids") or [])}
        return StageOutcome(result.to_dict(), placement=placement)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Stop what still runs (a Ctrl-C, a stop of the run): the jobs not started never start (their futures
        are cancelled) and each running job's sandbox is killed now, not left to its own limits after this
        process exits; waits up to ``wait_s`` for the killed sandboxes to be cleaned up (a container removed,
        a process group killed). A run that ended normally has nothing left, and this returns at once."""
        with self._lock:
            self._cancel.set()
            for stop in self._running.values():
                stop.set()
            pending = [future for group in self._pending for _job, _prog, future in group]
            self._pending.clear()
            self._idle.wait_for(lambda: not self._running, timeout=wait_s)
        for future in pending:
            future.cancel()


# ------------------------------------------------------------------------------------------ choosing


def executor_kind(kind: str, ray_address: str | None, environ: dict[str, str] | None = None) -> str:
    """``auto``: ray when an address is given (--ray-address or RAY_ADDRESS), else local. Raises a clear
    error when Ray is chosen but not installed."""
    if kind not in EXECUTOR_KINDS:
        raise ValueError(f"unknown executor {kind!r} ({', '.join(EXECUTOR_KINDS)})")
    env = os.environ if environ is None else environ
    if kind == "auto":
        kind = "ray" if (ray_address or env.get("RAY_ADDRESS")) else "local"
    if kind == "ray" and not ray_available():
        raise RuntimeError(RAY_MISSING)
    return kind


def make_executor(kind: str, *, ray_address: str | None = None, workers: int = 2, gpu_ids: Iterable[str] = (),
                  backend: Any = None) -> LocalExecutor | RayExecutor:
    """The executor the settings choose (``kind`` as `executor_kind` resolves it)."""
    if executor_kind(kind, ray_address) == "ray":
        return RayExecutor(ray_address)
    return LocalExecutor(workers, gpu_ids=gpu_ids, backend=backend)
