"""Stage jobs as Ray tasks: `RayExecutor` on the driver, `remote_stage` on a node.

Nothing assumes the driver's paths exist on a node: the candidate's `hrm/`, the pristine harness copy and the
run data (the train split and the scored held-out split; the final split never travels) go as in-memory
tarballs (evolver/execute/shipping.py), put in Ray's object store once per content. The node unpacks them into a
temp folder, runs the trusted cascade with its own sandbox backend (held-out labels stay out of the sandbox
exactly as on the driver) and returns the result and the stage folders' files as bytes; the driver writes
them into its out_dir. The git record and every verdict stay on the driver.

The two sides of a seed pair are one placement group (STRICT_PACK: one bundle per side, on one node), so
they train at the same time on the same machine, as they do on local slots; a pair no node can hold is an
error at once, not a wait. A pair's group is kept for the next pair of the same shape for IDLE_GROUP_S
(Ray takes about a second to free a removed group's resources for a new one, which the next pair would
wait for), then removed; a single task of the same resources as a bundle runs in a free bundle of it (so the
room does not change hands between a candidate's gates and its pairs), and a single task that fits none, or
a pair of another shape, releases the idle groups at once (evolver/execute/ray_groups.py). A task whose node dies
is retried (``max_retries``); when the retries run out, or no answer comes within the job's deadline, the
outcome carries an ``error`` ("executor: node lost ...") that the loop turns into a failed side, which voids
the pair (evolver/judge/pairs.py).

Ray is an optional extra (``pip install -e '.[ray]'``), imported only here, and only when used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from evolver.execute.cascade import CANCEL_REASON, Progress
from evolver.execute.job import CLOSE_WAIT_S, NODE_LOST, StageJob, StageOutcome, run_stage_job
from evolver.execute.ray_groups import GroupPool
from evolver.execute.shipping import (
    collect_files,
    data_filter,
    pack,
    rebase_paths,
    tree_filter,
    unpack,
    write_files,
)
from sandbox.pids import pid_alive

CANCELLED_ERROR = f"executor: {CANCEL_REASON}"
POLL_S = 2.0
"""How often the driver looks at a pair's placement group while its tasks run."""
IDLE_GROUP_S = 10.0
"""How long a pair's placement group waits, reserved, for the next pair of the same shape before it is removed
(the loop submits a candidate's next pair within a second of the last one's answers; between candidates, the
gates and the proposal take longer, and the group is gone by then)."""
RAY_MISSING = ("--executor ray needs Ray, which is not installed here: pip install -e '.[ray]' (on the driver "
               "and on every node)")


# ------------------------------------------------------------------------------------------ on a Ray node


_WORKER = {"tasks": 0, "loaded": time.monotonic()}
"""This worker process: how many stage jobs it has started, and when it loaded this module (its first job's
deserialization, for a fresh worker)."""


def _ray_placement() -> dict[str, Any]:
    import ray

    context = ray.get_runtime_context()
    _WORKER["tasks"] += 1
    return {"executor": "ray", "node_id": context.get_node_id(), "hostname": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "worker_task": _WORKER["tasks"],
            "worker_age_s": round(time.monotonic() - _WORKER["loaded"], 3)}


def remote_stage(job_data: dict[str, Any], tree: bytes, harness: bytes, data: bytes) -> dict[str, Any]:
    """Run one stage job on this node (the body of the Ray task): unpack the inputs into a temp folder, run
    the cascade with this node's sandbox backend and the GPUs Ray gave the task, send back the result and
    the stage folders' files. The placement says whether the worker was fresh (``worker_task`` 1 and a small
    ``worker_age_s``: Ray started a process for this task)."""
    started = time.monotonic()
    job = StageJob.from_dict(job_data)
    placement = _ray_placement()
    placement["stale_removed"] = sweep_stale_jobs(Path(tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix=f"{JOB_PREFIX}{os.getpid()}-"))
    try:
        os.chmod(root, 0o755)
        options = dict(job.options)
        if options.get("gpus"):
            options["gpu_ids"] = list(placement["gpu_ids"])
        here = replace(job, tree=str(unpack(tree, root / "tree")), harness_dir=str(unpack(harness, root / "harness")),
                       data_dir=str(unpack(data, root / "data", file_mode=0o644)), out_dir=str(root / "out"),
                       options=options)
        unpacked = time.monotonic()
        result = run_stage_job(here).to_dict()
        ran = time.monotonic()
        files, too_large = collect_files(Path(here.out_dir))
        # where a task's time outside its stages goes, on the node (the driver adds round_trip_s)
        placement.update(files_not_sent=too_large, unpack_s=round(unpacked - started, 3),
                         cascade_s=round(ran - unpacked, 3), collect_s=round(time.monotonic() - ran, 3),
                         bytes_sent=sum(len(b) for b in files.values()))
        return StageOutcome(rebase_paths(result, here.out_dir, job.out_dir), files, placement).to_dict()
    finally:
        shutil.rmtree(root, onerror=_force_remove)


JOB_PREFIX = "hrm-evolve-job-"
"""A job's temp folder on its node: JOB_PREFIX, the worker's pid, "-", a random part."""


def sweep_stale_jobs(tmp: Path) -> int:
    """Remove the job folders (a candidate's code, the held-out split) that workers killed mid-job left in
    ``tmp`` (a node that died, a task cancelled by force): those whose worker pid is no longer alive. Returns
    how many went. Workers of one machine sweep at the same time (the two sides of a pair start together), so
    a folder is first claimed by renaming it to a name carrying this worker's pid (a rename succeeds for one
    of them; a claim left by a sweeper that died is swept in turn). Nothing here fails the job: a folder
    that cannot be claimed or fully removed is left for a later sweep."""
    removed = 0
    for folder in tmp.glob(f"{JOB_PREFIX}*-*"):
        pid = folder.name[len(JOB_PREFIX):].partition("-")[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        claimed = folder.with_name(f"{JOB_PREFIX}{os.getpid()}-swept-{folder.name[len(JOB_PREFIX):]}")
        try:
            if not folder.is_dir() or folder.is_symlink():
                continue
            folder.rename(claimed)
        except OSError:  # another worker claimed it first, or it went meanwhile
            continue
        shutil.rmtree(claimed, onerror=_force_remove)
        removed += not claimed.exists()
    return removed


def _force_remove(func: Callable[..., Any], path: str, _exc: Any) -> None:
    """rmtree's error handler for a sandbox's leftovers: a file or folder that could not be removed, or a
    folder that could not be listed, is made writable (readable) and tried once more; what still fails stays."""
    try:
        if func in (os.unlink, os.remove, os.rmdir):
            os.chmod(os.path.dirname(path), 0o755)
            func(path)
        elif func in (os.open, os.scandir, os.listdir):
            os.chmod(path, 0o755)
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


# ------------------------------------------------------------------------------------------ Ray driver


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at a ``host:port`` Ray address (ray.init would wait for minutes);
    "auto", "local" and ray:// client addresses are left to Ray."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Ray address is host:port (e.g. 10.0.0.5:6379), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RuntimeError(f"no Ray head answers at {address} ({exc}); start one with `ray start --head "
                           f"--port {port}` on that machine") from exc


class _PutCache:
    """ObjectRefs of shipped inputs, by key, the oldest dropped past ``size`` (so Ray may free them)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._refs: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._refs:
                self._refs.move_to_end(key)
                return self._refs[key]
            ref = self._refs[key] = make()
            while len(self._refs) > self.size:
                self._refs.popitem(last=False)
            return ref


ANSI_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _plain(exc: BaseException) -> str:
    """An exception's text without the terminal colour codes Ray puts in its error messages."""
    return ANSI_CODES.sub("", str(exc)).strip()


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items()) if not k.startswith("node:")) or "nothing"


def _pair_needs(bundles: list[dict[str, float]]) -> str:
    return " + ".join(_describe(b) for b in bundles)


def _check_backend(job: StageJob) -> None:
    if not isinstance(job.options.get("backend", "auto"), str):
        raise TypeError("a Ray stage job names its sandbox backend (auto, docker, local); the node resolves it")


def _fail_all(futures: list[Future[StageOutcome]], where: dict[str, Any], error: str) -> None:
    for future in futures:
        future.set_result(StageOutcome(None, placement=dict(where), error=error))


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    names = ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError", "ObjectLostError", "RaySystemError",
             "OutOfMemoryError", "TaskCancelledError", "TaskUnschedulableError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


class RayExecutor:
    """Each stage job a Ray task: ``num_cpus`` the job's cpus (at least its threads), ``num_gpus`` 1 when the
    job asks for GPUs, retried ``max_retries`` times when its node or worker dies (never when the job itself
    raised). ``options``: extra Ray task options for every job (resources, a scheduling strategy; the sides
    of a pair, `submit_group`, always get their placement group's strategy).
    ``timeout_s``: how long to wait for one job (default: its train + evaluate limits + RETURN_MARGIN_S).
    ``idle_group_s``: how long a finished pair's placement group is kept for the next pair (evolver/execute/ray_groups.py)."""

    name = "ray"
    stop_events = None  # a Ray task cannot be stopped early from the driver (no learning-curve early stop)

    def __init__(self, address: str | None = None, *, max_retries: int = 2, options: dict[str, Any] | None = None,
                 timeout_s: float | None = None, cache_size: int = 4, idle_group_s: float = IDLE_GROUP_S) -> None:
        if not ray_available():
            raise RuntimeError(RAY_MISSING)
        import ray

        self._ray = ray
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            target = address or os.environ.get("RAY_ADDRESS") or "auto"
            check_ray_address(target)
            ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING)
        self.address = address
        self.max_retries = max_retries
        self.options = dict(options or {})
        self.timeout_s = timeout_s
        self._task = ray.remote(remote_stage)
        self._trees = _PutCache(cache_size)
        self._inputs = _PutCache(cache_size)
        self._inflight: set[Any] = set()  # the ObjectRefs of the tasks submitted and not answered yet
        self._inflight_lock = threading.Lock()
        self._closing = threading.Event()
        self._groups = GroupPool(idle_group_s, self._remove_group, self._placed)

    def _remove_group(self, group: Any) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(group)

    def _placed(self, group: Any) -> bool:
        return self._ray.util.placement_group_table(group).get("state") == "CREATED"

    def _put(self, cache: _PutCache, key: str, blob: Callable[[], bytes]) -> Any:
        return cache.get(key, lambda: self._ray.put(blob()))

    def _refs(self, job: StageJob) -> tuple[Any, Any, Any]:
        tree = pack(Path(job.tree), tree_filter)
        digest = hashlib.sha256(tree).hexdigest()
        heldout = str(job.options.get("heldout_split", "select"))
        harness_ref = self._put(self._inputs, f"harness:{Path(job.harness_dir).resolve()}",
                                lambda: pack(Path(job.harness_dir)))
        data_ref = self._put(self._inputs, f"data:{Path(job.data_dir).resolve()}:{heldout}",
                             lambda: pack(Path(job.data_dir), data_filter(heldout)))
        return self._put(self._trees, digest, lambda: tree), harness_ref, data_ref

    def task_options(self, job: StageJob) -> dict[str, Any]:
        return self._task_options(job.options)

    def _task_options(self, o: dict[str, Any]) -> dict[str, Any]:
        cpus = max(float(o.get("cpus", 1.0)), float(o.get("threads", 1)))
        return {"num_cpus": cpus, "num_gpus": 1 if o.get("gpus") else 0, "max_retries": self.max_retries,
                "retry_exceptions": False, **self.options}

    def bundle(self, job: StageJob) -> dict[str, float]:
        """What one job reserves in a placement group: its task's CPUs, GPU and custom resources."""
        return self.resources_of(job.options)

    def resources_of(self, options: dict[str, Any]) -> dict[str, float]:
        """The `bundle` of a job with these options (its cpus, threads and gpus; the run's probe asks this)."""
        o = self._task_options(options)
        bundle = {"CPU": float(o["num_cpus"])}
        if o.get("num_gpus"):
            bundle["GPU"] = float(o["num_gpus"])
        bundle.update({str(k): float(v) for k, v in (o.get("resources") or {}).items()})
        return bundle

    def node_resources(self) -> list[dict[str, float]]:
        """The total resources of each alive node of the cluster."""
        return [{str(k): float(v) for k, v in (n.get("Resources") or {}).items()}
                for n in self._ray.nodes() if n.get("Alive")]

    def groups_at_once(self, bundles: list[dict[str, float]]) -> int:
        """How many groups of ``bundles`` the alive nodes hold at the same time, each group on one node (what
        a STRICT_PACK placement group needs), with nothing else running."""
        need: dict[str, float] = {}
        for bundle in bundles:
            for name, amount in bundle.items():
                need[name] = need.get(name, 0.0) + amount
        need = {k: v for k, v in need.items() if v > 0}
        if not need:
            return 0
        return sum(min(int(node.get(k, 0.0) / v + 1e-9) for k, v in need.items()) for node in self.node_resources())

    def submit(self, job: StageJob, progress: Progress | None = None) -> Future[StageOutcome]:
        """One job as a Ray task: in a free bundle of an idle pair's placement group when one has this job's
        resources (a candidate's gates between its pairs), else wherever Ray finds room, after the idle groups
        are released; ``progress`` hears "queued" (Ray does not say when the task starts), then each stage's end."""
        _check_backend(job)
        future: Future[StageOutcome] = Future()
        future.set_running_or_notify_cancel()
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options = self.task_options(job)
        extra: dict[str, Any] = {}
        loan = self._groups.lend(self.bundle(job))
        if loan is None:
            self._groups.release_all()  # an idle pair's reservation may hold the room this task needs
        else:  # run inside an idle pair's reservation: the room does not change hands
            group, index, _ = loan
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
            extra = {"placement_group": group.id.hex(), "bundle_index": index, "borrowed": True}
        submitted = time.monotonic()
        try:
            ref = self._track(self._task.options(**options).remote(job.to_dict(), *self._refs(job)))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            if loan is not None:
                self._groups.return_bundle(loan[0], loan[1], keep=False)
            future.set_exception(exc)
            return future
        if progress:
            progress("train", int(job.seed), "queued", None)
        threading.Thread(target=self._settle, args=(future, loan, job, ref, progress, submitted, extra), daemon=True,
                         name=f"hrm-evolve-ray-{job.side}-{job.seed}").start()
        return future

    def submit_group(self, jobs: list[StageJob],
                     progress: list[Progress | None] | None = None) -> list[Future[StageOutcome]]:
        """Jobs that run together on one node (a seed pair's two sides): one STRICT_PACK placement group with
        a bundle per job, reserved before any job is submitted, so the sides start at once on the same
        machine, neither waiting in Ray's queue while the other trains. A group no alive node can hold fails
        at once, and one still waiting for room after the jobs' deadline fails then: each future gets an
        outcome with the executor's error (which voids the pair). Once every job has answered, the group goes
        back to the pool for the next pair of the same shape (removed when a job failed on the executor's
        side, or the run is closing), and only then are the futures resolved, so the next pair finds it."""
        progress = list(progress or [None] * len(jobs))
        if len(jobs) < 2:
            return [self.submit(job, prog) for job, prog in zip(jobs, progress, strict=True)]
        for job in jobs:
            _check_backend(job)
        futures: list[Future[StageOutcome]] = [Future() for _ in jobs]
        for future in futures:
            future.set_running_or_notify_cancel()
        threading.Thread(target=self._run_group, args=(jobs, progress, futures), daemon=True,
                         name=f"hrm-evolve-ray-group-{jobs[0].seed}").start()
        return futures

    def _run_group(self, jobs: list[StageJob], progress: list[Progress | None],
                   futures: list[Future[StageOutcome]]) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundles = [self.bundle(job) for job in jobs]
        where = {"executor": self.name, "address": self.address, "bundles": bundles}
        started = time.monotonic()
        group = None
        keep = False
        answers: list[StageOutcome | BaseException | None] = [None] * len(jobs)
        try:
            if self.groups_at_once(bundles) < 1:
                largest = max(self.node_resources(), key=lambda n: n.get("CPU", 0.0), default={})
                largest = {k: largest.get(k, 0.0) for k in bundles[0]}
                return _fail_all(futures, where, (
                    f"executor: no node of the cluster can hold the {len(jobs)} sides of this pair at once "
                    f"({_pair_needs(bundles)}; the largest node has {_describe(largest)}): "
                    "the sides of a pair train together on one node, so give one node that much, ask less per "
                    "sandbox (--cpus), or run with --serial-pairs"))
            inputs = [self._refs(job) for job in jobs]
            group = self._groups.take(bundles)
            reused = group is not None
            if group is None:
                try:
                    group = placement_group(bundles, strategy="STRICT_PACK")
                    wait_s = self.timeout_s if self.timeout_s is not None else max(j.deadline_s() for j in jobs)
                    placed = group.wait(timeout_seconds=wait_s)
                finally:
                    self._groups.settled()
                if not placed:
                    return _fail_all(futures, where, (
                        f"executor: no node had room for both sides of this pair within {wait_s:.0f}s "
                        f"({_pair_needs(bundles)} on one node)"))
            queued = time.monotonic() - started
            if self._closing.is_set():  # closed while the group waited for room: nothing starts
                return _fail_all(futures, where, CANCELLED_ERROR)
            refs = []
            for i, (job, prog) in enumerate(zip(jobs, progress, strict=True)):
                strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)
                refs.append(self._track(self._task.options(**{**self.task_options(job), "scheduling_strategy": strategy})
                                        .remote(job.to_dict(), *inputs[i])))
                if prog:
                    prog("train", int(job.seed), "start", None)
            submitted = time.monotonic()
            extra = {"queued_s": round(queued, 3), "placement_group": group.id.hex(), "group_size": len(jobs),
                     "group_reused": reused}

            def answer(i: int) -> None:
                try:
                    answers[i] = self._collect(jobs[i], refs[i], progress[i], submitted, extra, group, bundles)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller through its future
                    answers[i] = exc

            waits = [threading.Thread(target=answer, args=(i,), daemon=True,
                                      name=f"hrm-evolve-ray-{job.side}-{job.seed}") for i, job in enumerate(jobs)]
            for thread in waits:
                thread.start()
            for thread in waits:
                thread.join()
            keep = not self._closing.is_set() and all(isinstance(a, StageOutcome) and not a.error for a in answers)
        except BaseException as exc:  # noqa: BLE001 - handed to the callers through the futures
            answers = [a if a is not None else exc for a in answers]
        finally:
            if group is not None:
                if keep:
                    self._groups.give_back(bundles, group)
                else:
                    try:
                        self._remove_group(group)
                    except Exception:  # noqa: BLE001 - the cluster may be gone; nothing is left to release then
                        pass
            for future, reply in zip(futures, answers, strict=True):
                if future.done():
                    continue
                if isinstance(reply, StageOutcome):
                    future.set_result(reply)
                elif reply is not None:
                    future.set_exception(reply)

    def _settle(self, future: Future[StageOutcome], loan: tuple[Any, int, list[dict[str, float]]] | None,
                job: StageJob, ref: Any, progress: Progress | None, submitted: float,
                extra: dict[str, Any]) -> None:
        """A single task's answer; a borrowed bundle goes back to the pool before the future resolves (so the
        candidate's next pair finds its group idle)."""
        group, index, bundles = loan if loan is not None else (None, 0, None)
        try:
            outcome = self._collect(job, ref, progress, submitted, extra, group=group, bundles=bundles)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            if group is not None:
                self._groups.return_bundle(group, index, keep=False)
            future.set_exception(exc)
            return
        if group is not None:
            self._groups.return_bundle(group, index, keep=not (outcome.error or self._closing.is_set()))
        future.set_result(outcome)

    def _collect(self, job: StageJob, ref: Any, progress: Progress | None, submitted: float,
                 extra: dict[str, Any], group: Any = None, bundles: list[dict[str, float]] | None = None) -> StageOutcome:
        """The job's answer, its files written into its out_dir and its stages reported to ``progress``."""
        outcome = self._answer(job, ref, group, bundles)
        with self._inflight_lock:
            self._inflight.discard(ref)
        outcome.placement.update(extra)
        outcome.placement["round_trip_s"] = round(time.monotonic() - submitted, 3)
        if outcome.files:
            Path(job.out_dir).mkdir(parents=True, exist_ok=True)
            write_files(outcome.files, Path(job.out_dir))
        result = outcome.cascade()
        if progress and result is not None:
            for run in result.stages:
                progress(run.stage, run.seed, "ok" if run.ok else "failed", run)
        return outcome

    def stranded(self, group: Any, bundles: list[dict[str, float]]) -> bool:
        """Whether a placement group lost its node and no alive node can hold it again (its tasks' retries
        would wait for one until their deadline)."""
        state = self._ray.util.placement_group_table(group).get("state")
        return state == "RESCHEDULING" and self.groups_at_once(bundles) < 1

    def _answer(self, job: StageJob, ref: Any, group: Any = None,
                bundles: list[dict[str, float]] | None = None) -> StageOutcome:
        """Wait for the job's task (polling, so a pair whose node died with nowhere else to go is given up
        at once rather than at its deadline)."""
        ray = self._ray
        timeout = self.timeout_s if self.timeout_s is not None else job.deadline_s()
        started = time.monotonic()
        where = {"executor": self.name, "address": self.address}
        try:
            while True:
                left = started + timeout - time.monotonic()
                if left <= 0:
                    raise ray.exceptions.GetTimeoutError("deadline")
                ready, _ = ray.wait([ref], timeout=min(POLL_S, left))
                if ready:
                    return StageOutcome.from_dict(ray.get(ref))
                if group is not None and bundles and self.stranded(group, bundles):
                    ray.cancel(ref, force=True)
                    return StageOutcome(None, placement=where, error=(
                        f"{NODE_LOST} {time.monotonic() - started:.0f}s after submission: the node holding this "
                        f"pair's placement group is gone and no alive node can hold the pair "
                        f"({_pair_needs(bundles)})"))
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            return StageOutcome(None, placement=where, error=(
                f"{NODE_LOST} or unresponsive: no answer from the cluster after {timeout:.0f}s (the task was "
                "cancelled)"))
        except ray.exceptions.RayTaskError as exc:
            if self._closing.is_set():  # the task's KeyboardInterrupt of close(), raised out of the job
                return StageOutcome(None, placement=where, error=CANCELLED_ERROR)
            return StageOutcome(None, placement=where, error=(
                f"executor: the stage job raised on its node: {_plain(exc)[-1500:]}"))
        except _lost_errors(ray) as exc:
            if self._closing.is_set():
                return StageOutcome(None, placement=where, error=CANCELLED_ERROR)
            waited = time.monotonic() - started
            return StageOutcome(None, placement=where, error=(
                f"{NODE_LOST} {waited:.0f}s after submission, with {self.max_retries} retr"
                f"{'y' if self.max_retries == 1 else 'ies'} allowed ({type(exc).__name__}: {_plain(exc)[:500]})"))
        except ray.exceptions.RayError as exc:  # anything else Ray could not do for this job
            return StageOutcome(None, placement=where, error=(
                f"executor: Ray could not run the job ({type(exc).__name__}: {_plain(exc)[:500]})"))

    def _track(self, ref: Any) -> Any:
        with self._inflight_lock:
            self._inflight.add(ref)
        return ref

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Cancel the tasks still running (a Ctrl-C, a stop of the run), so their sandboxes are killed on their
        nodes now rather than left to their own limits: each gets a KeyboardInterrupt in its worker, and the
        sandbox backend kills and cleans up what it started; waits up to ``wait_s`` for them to end. The idle
        placement groups are removed. Then the connection is closed (when this executor opened it)."""
        ray = self._ray
        self._closing.set()
        self._groups.close()
        with self._inflight_lock:
            refs = list(self._inflight)
            self._inflight.clear()
        if refs and ray.is_initialized():
            for ref in refs:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - already finished, or the cluster is gone
                    pass
            try:
                ray.wait(refs, num_returns=len(refs), timeout=wait_s)
            except Exception:  # noqa: BLE001 - nothing more to wait for then
                pass
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
