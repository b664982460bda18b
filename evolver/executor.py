"""Where the stage jobs of a seed pair run: worker slots on this host, or the nodes of a Ray cluster.

A *stage job* is one side of one seed pair: train + evaluate of one tree on one seed, described by plain
data (`StageJob`): the side, the seed, the phase, the candidate's tree, the harness copy, the run data, the
output folder and the `run_cascade` keyword arguments. An executor runs it and gives back a future of a
`StageOutcome`: the `CascadeResult` as a dict, the files the cascade wrote (when it ran elsewhere), and
where it ran.

- `LocalExecutor(workers=N)`: N worker slots on this host, each owning a slot index (one GPU id from
  --gpu-ids when GPUs are on) and optionally a share of the CPUs; the job runs `run_cascade` here, exactly
  as the loop always did.
- `RayExecutor(address)`: each job is a Ray task on whatever node Ray picks. Nothing assumes the driver's
  paths exist there: the candidate's `hrm/`, the pristine harness copy and the run data (the train split
  and the scored held-out split; the final split never travels) go as in-memory tarballs, put in Ray's
  object store once per content, and the node unpacks them into a temp folder, runs the trusted cascade
  with its own sandbox backend (held-out labels stay out of the sandbox exactly as on the driver) and
  returns the result and the stage folders' files as bytes. The driver writes them into its out_dir. The git
  record and every verdict stay on the driver. A task whose node dies is retried (``max_retries``); when
  the retries run out, or no answer comes within the job's deadline, the outcome carries an ``error``
  ("executor: node lost ...") that the loop turns into a failed side, which voids the pair (evolver/judge.py).

Ray is an optional extra (``pip install -e '.[ray]'``), imported only inside `RayExecutor`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from evolver.cascade import (
    DEFAULT_TIMEOUTS,
    SETUP_ALLOWANCE_S,
    CascadeResult,
    Progress,
    StageRun,
    run_cascade,
)
from evolver.early_stop import EarlyStopRule, HostStop, PairWatch, enforced
from evolver.judge import EXECUTOR_STAGE, SideRun
from sandbox import DEFAULT_IMAGE, get_backend

EXECUTOR_KINDS = ("local", "ray", "auto")
NODE_LOST = "executor: node lost"
RAY_MISSING = ("--executor ray needs Ray, which is not installed here: pip install -e '.[ray]' (on the driver "
               "and on every node)")
SKIP_DIRS = ("staged",)
"""Out-dir folders a remote node does not send back: `staged/` holds the copies of the inputs the driver has
(the hrm/ copy, the train split, the sealed held-out inputs) and a second copy of the checkpoint."""
MAX_RETURN_FILE_BYTES = 512 << 20
RETURN_MARGIN_S = 600.0
"""Seconds a Ray job may take beyond its stages' limits (shipping, unpacking, a retry's queue) before the
driver stops waiting, cancels it and records the side as lost."""

T = TypeVar("T")
U = TypeVar("U")


# ------------------------------------------------------------------------------------------ the job


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


def side_run(outcome: StageOutcome, metric: str) -> SideRun:
    """The judge's view of one side: its score on ``metric`` and its evidence, with where it ran."""
    placement = dict(outcome.placement)
    result = outcome.cascade()
    if result is None:
        return SideRun(False, reason=outcome.error or "executor: no result", failed_stage=EXECUTOR_STAGE,
                       evidence={"executor": placement})
    evidence = {**(result.evidence[0] if result.evidence else {}), "executor": placement}
    if not result.ok:
        return SideRun(False, reason=result.reason, failed_stage=result.failed_stage, evidence=evidence)
    return SideRun(True, float(result.scores[metric][0]), evidence=evidence)


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
                  stop: threading.Event | None = None) -> CascadeResult:
    """The job on this host: the same run_cascade call the loop makes (``backend``: a resolved backend to use
    instead of the job's backend name; ``stop``: the host's early stop of its train stage)."""
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
                       seeds=[int(job.seed)], progress=progress, stop=stop, **options)


class Executor(Protocol):
    name: str

    def submit(self, job: StageJob, progress: Progress | None = None) -> Future[StageOutcome]: ...

    def submit_group(self, jobs: list[StageJob],
                     progress: list[Progress | None] | None = None) -> list[Future[StageOutcome]]: ...

    def close(self) -> None: ...


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
        """A job's early-stop event by its out_dir (evolver/early_stop.py), registered before it is submitted."""
        self._pending: deque[list[tuple[StageJob, Progress | None, Future[StageOutcome]]]] = deque()
        self._lock = threading.Lock()
        self._host = socket.gethostname()

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
        group = [(job, prog, Future()) for job, prog in zip(jobs, progress, strict=True)]
        with self._lock:
            self._pending.append(group)  # type: ignore[arg-type]
            self._dispatch()
        return [future for _job, _prog, future in group]  # type: ignore[misc]

    def queued(self) -> int:
        """Jobs submitted and not started yet."""
        with self._lock:
            return sum(len(group) for group in self._pending)

    def _dispatch(self) -> None:  # with the lock held
        while self._pending and len(self._free) >= len(self._pending[0]):
            for job, progress, future in self._pending.popleft():
                self._free.sort()
                slot = self.slots[self._free.pop(0)]
                threading.Thread(target=self._work, args=(slot, job, progress, future), daemon=True,
                                 name=f"hrm-evolve-slot{slot.index}").start()

    def _work(self, slot: Slot, job: StageJob, progress: Progress | None, future: Future[StageOutcome]) -> None:
        outcome: StageOutcome | None = None
        error: BaseException | None = None
        running = future.set_running_or_notify_cancel()
        try:
            if running:
                outcome = self._run(slot.place(job), slot, progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            error = exc
        finally:  # the slot is free before anyone learns the job is done, so the next pair finds both
            with self._lock:
                self._free.append(slot.index)
                self._dispatch()
        if not running:
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]

    def _run_here(self, job: StageJob, slot: Slot, progress: Progress | None) -> StageOutcome:
        result = run_stage_job(job, backend=self._backend, progress=progress, stop=self.stop_events.pop(job.out_dir, None))
        placement = {"executor": self.name, "hostname": self._host, "slot": slot.index,
                     "gpu_ids": list(job.options.get("gpu_ids") or [])}
        return StageOutcome(result.to_dict(), placement=placement)

    def close(self) -> None:
        """Nothing to release: each job's thread ends with its job."""


# ------------------------------------------------------------------------------------------ shipping bytes


def _regular_files(root: Path, include: Callable[[PurePosixPath], bool]) -> list[tuple[str, Path]]:
    """Regular files under ``root`` (links never followed, caches skipped), sorted, as (relative, path)."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(files):
            full = Path(dirpath) / name
            rel = PurePosixPath(full.relative_to(root).as_posix())
            if stat.S_ISREG(os.lstat(full).st_mode) and include(rel):
                found.append((rel.as_posix(), full))
    return found


def pack(root: Path, include: Callable[[PurePosixPath], bool] = lambda _p: True) -> bytes:
    """A gzipped tarball of the regular files under ``root``, byte-identical for identical content (fixed
    times, owners and modes), so its digest names the content."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, full in _regular_files(Path(root), include):
            data = full.read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _safe_relative(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or not rel.parts or any(p in ("", ".", "..") for p in rel.parts):
        raise ValueError(f"refusing the path {name!r}")
    return rel


def _write_file(dest_root: Path, name: str, data: bytes) -> Path:
    """Write ``data`` at ``dest_root/name``, refusing names that climb out and existing links on the way."""
    rel = _safe_relative(name)
    target = Path(dest_root)
    target.mkdir(parents=True, exist_ok=True)
    for part in rel.parts[:-1]:
        target = target / part
        if target.is_symlink():
            raise ValueError(f"refusing to write through the link {target}")
        target.mkdir(exist_ok=True)
    target = target / rel.parts[-1]
    if target.is_symlink():
        raise ValueError(f"refusing to overwrite the link {target}")
    target.write_bytes(data)
    return target


def unpack(blob: bytes, dest: Path, *, file_mode: int = 0o444) -> Path:
    """Unpack a `pack` tarball into ``dest``: regular files only, no name leaving ``dest``; files read-only
    (``file_mode``) and folders 0o755, so a sandbox's unprivileged user can read them."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            os.chmod(_write_file(dest, member.name, handle.read()), file_mode)
    for dirpath, _dirs, _files in os.walk(dest):
        os.chmod(dirpath, 0o755)
    return dest


def collect_files(out_dir: Path, *, skip: tuple[str, ...] = SKIP_DIRS,
                  max_file_bytes: int = MAX_RETURN_FILE_BYTES) -> tuple[dict[str, bytes], list[str]]:
    """The regular files the cascade wrote under ``out_dir`` (not following links; the ``skip`` folders
    left out), and the ones too large to send (listed, not sent)."""
    files: dict[str, bytes] = {}
    too_large: list[str] = []
    for rel, full in _regular_files(Path(out_dir), lambda p: p.parts[0] not in skip):
        if os.lstat(full).st_size > max_file_bytes:
            too_large.append(rel)
        else:
            files[rel] = full.read_bytes()
    return files, too_large


def write_files(files: dict[str, bytes], out_dir: Path) -> None:
    for name in sorted(files):
        _write_file(Path(out_dir), name, files[name])


def _data_filter(heldout_split: str) -> Callable[[PurePosixPath], bool]:
    """The run data a node needs: the top-level files, the train split and the scored held-out split."""
    return lambda p: len(p.parts) == 1 or p.parts[0] in ("train", heldout_split)


def _tree_filter(p: PurePosixPath) -> bool:
    return p.parts[0] == "hrm"


def _rebase(result: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """Stage out_dir paths as the driver sees them."""
    for run in result.get("stages") or []:
        if str(run.get("out_dir", "")).startswith(old):
            run["out_dir"] = new + str(run["out_dir"])[len(old):]
    return result


# ------------------------------------------------------------------------------------------ on a Ray node


def _ray_placement() -> dict[str, Any]:
    import ray

    context = ray.get_runtime_context()
    return {"executor": "ray", "node_id": context.get_node_id(), "hostname": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


def remote_stage(job_data: dict[str, Any], tree: bytes, harness: bytes, data: bytes) -> dict[str, Any]:
    """Run one stage job on this node (the body of the Ray task): unpack the inputs into a temp folder, run
    the cascade with this node's sandbox backend and the GPUs Ray gave the task, send back the result and
    the stage folders' files."""
    job = StageJob.from_dict(job_data)
    placement = _ray_placement()
    root = Path(tempfile.mkdtemp(prefix="hrm-evolve-job-"))
    try:
        os.chmod(root, 0o755)
        options = dict(job.options)
        if options.get("gpus"):
            options["gpu_ids"] = list(placement["gpu_ids"])
        here = replace(job, tree=str(unpack(tree, root / "tree")), harness_dir=str(unpack(harness, root / "harness")),
                       data_dir=str(unpack(data, root / "data", file_mode=0o644)), out_dir=str(root / "out"),
                       options=options)
        result = run_stage_job(here).to_dict()
        files, too_large = collect_files(Path(here.out_dir))
        placement["files_not_sent"] = too_large
        return StageOutcome(_rebase(result, here.out_dir, job.out_dir), files, placement).to_dict()
    finally:
        shutil.rmtree(root, onerror=_force_remove)


def _force_remove(func: Callable[[str], Any], path: str, _exc: Any) -> None:
    try:
        os.chmod(os.path.dirname(path), 0o755)
        func(path)
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


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    names = ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError", "ObjectLostError", "RaySystemError",
             "OutOfMemoryError", "TaskCancelledError", "TaskUnschedulableError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


class RayExecutor:
    """Each stage job a Ray task: ``num_cpus`` the job's cpus (at least its threads), ``num_gpus`` 1 when the
    job asks for GPUs, retried ``max_retries`` times when its node or worker dies (never when the job itself
    raised). ``options``: extra Ray task options for every job (resources, a scheduling strategy).
    ``timeout_s``: how long to wait for one job (default: its train + evaluate limits + RETURN_MARGIN_S)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, max_retries: int = 2, options: dict[str, Any] | None = None,
                 timeout_s: float | None = None, cache_size: int = 4) -> None:
        if not ray_available():
            raise RuntimeError(RAY_MISSING)
        import ray

        self._ray = ray
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            target = address or os.environ.get("RAY_ADDRESS") or "auto"
            check_ray_address(target)
            ray.init(address=target, log_to_driver=False, logging_level="warning")
        self.address = address
        self.max_retries = max_retries
        self.options = dict(options or {})
        self.timeout_s = timeout_s
        self._task = ray.remote(remote_stage)
        self._trees = _PutCache(cache_size)
        self._inputs = _PutCache(cache_size)

    def _put(self, cache: _PutCache, key: str, blob: Callable[[], bytes]) -> Any:
        return cache.get(key, lambda: self._ray.put(blob()))

    def _refs(self, job: StageJob) -> tuple[Any, Any, Any]:
        tree = pack(Path(job.tree), _tree_filter)
        digest = hashlib.sha256(tree).hexdigest()
        heldout = str(job.options.get("heldout_split", "select"))
        harness_ref = self._put(self._inputs, f"harness:{Path(job.harness_dir).resolve()}",
                                lambda: pack(Path(job.harness_dir)))
        data_ref = self._put(self._inputs, f"data:{Path(job.data_dir).resolve()}:{heldout}",
                             lambda: pack(Path(job.data_dir), _data_filter(heldout)))
        return self._put(self._trees, digest, lambda: tree), harness_ref, data_ref

    def task_options(self, job: StageJob) -> dict[str, Any]:
        o = job.options
        cpus = max(float(o.get("cpus", 1.0)), float(o.get("threads", 1)))
        return {"num_cpus": cpus, "num_gpus": 1 if o.get("gpus") else 0, "max_retries": self.max_retries,
                "retry_exceptions": False, **self.options}

    def submit(self, job: StageJob, progress: Progress | None = None) -> Future[StageOutcome]:
        if not isinstance(job.options.get("backend", "auto"), str):
            raise TypeError("a Ray stage job names its sandbox backend (auto, docker, local); the node resolves it")
        future: Future[StageOutcome] = Future()
        future.set_running_or_notify_cancel()
        try:
            ref = self._task.options(**self.task_options(job)).remote(job.to_dict(), *self._refs(job))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
            return future
        if progress:
            progress("train", int(job.seed), "start", None)
        threading.Thread(target=self._wait, args=(job, ref, progress, future), daemon=True,
                         name=f"hrm-evolve-ray-{job.side}-{job.seed}").start()
        return future

    def submit_group(self, jobs: list[StageJob],
                     progress: list[Progress | None] | None = None) -> list[Future[StageOutcome]]:
        progress = list(progress or [None] * len(jobs))
        return [self.submit(job, prog) for job, prog in zip(jobs, progress, strict=True)]

    def _wait(self, job: StageJob, ref: Any, progress: Progress | None, future: Future[StageOutcome]) -> None:
        try:
            outcome = self._answer(job, ref)
            if outcome.files:
                Path(job.out_dir).mkdir(parents=True, exist_ok=True)
                write_files(outcome.files, Path(job.out_dir))
            result = outcome.cascade()
            if progress and result is not None:
                for run in result.stages:
                    progress(run.stage, run.seed, "ok" if run.ok else "failed", run)
            future.set_result(outcome)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)

    def _answer(self, job: StageJob, ref: Any) -> StageOutcome:
        ray = self._ray
        timeout = self.timeout_s if self.timeout_s is not None else job.deadline_s()
        started = time.monotonic()
        where = {"executor": self.name, "address": self.address}
        try:
            return StageOutcome.from_dict(ray.get(ref, timeout=timeout))
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            return StageOutcome(None, placement=where, error=(
                f"{NODE_LOST} or unresponsive: no answer from the cluster after {timeout:.0f}s (the task was "
                "cancelled)"))
        except ray.exceptions.RayTaskError as exc:
            return StageOutcome(None, placement=where, error=(
                f"executor: the stage job raised on its node: {str(exc).strip()[-1500:]}"))
        except _lost_errors(ray) as exc:
            waited = time.monotonic() - started
            return StageOutcome(None, placement=where, error=(
                f"{NODE_LOST} {waited:.0f}s after submission, with {self.max_retries} retr"
                f"{'y' if self.max_retries == 1 else 'ies'} allowed ({type(exc).__name__}: {str(exc).strip()[:500]})"))
        except ray.exceptions.RayError as exc:  # anything else Ray could not do for this job
            return StageOutcome(None, placement=where, error=(
                f"executor: Ray could not run the job ({type(exc).__name__}: {str(exc).strip()[:500]})"))

    def close(self) -> None:
        if self._owns_connection and self._ray.is_initialized():
            self._ray.shutdown()


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


class ExecutorSides:
    """The judge's measuring of one side through an executor: ``submit(side, seed, phase)`` builds the job
    (``make_job``), submits it and gives a future of its SideRun (``finish`` first sees each outcome and its
    CascadeResult, e.g. to save it); calling the object measures one side and waits."""

    def __init__(self, executor: Executor, make_job: Callable[[str, int, str], StageJob], metric: str, *,
                 progress: Callable[[str], Progress | None] | None = None,
                 finish: Callable[[StageJob, StageOutcome], None] | None = None,
                 early_stop: EarlyStopRule | None = None, key: str = "") -> None:
        self.executor = executor
        self.make_job = make_job
        self.metric = metric
        self.progress = progress
        self.finish = finish
        self.early_stop = early_stop if hasattr(executor, "stop_events") else None  # local slots only
        self.key = key

    def submit(self, side: str, seed: int, phase: str) -> Future[SideRun]:
        return self.submit_pair([side], seed, phase)[0]

    def submit_pair(self, sides: list[str], seed: int, phase: str) -> list[Future[SideRun]]:
        """Start the given sides of one seed pair together (one executor group) and give futures of their
        SideRuns, in the order of ``sides``."""
        jobs = [self.make_job(side, seed, phase) for side in sides]
        watch = self._watch(jobs, sides, seed, phase)
        futures = self.executor.submit_group(jobs, [self.progress(side) if self.progress else None
                                                    for side in sides])
        if watch is not None:
            pending = [len(futures)]
            lock = threading.Lock()

            def one_done(_f: Future[StageOutcome]) -> None:
                with lock:
                    pending[0] -= 1
                    if pending[0] == 0:
                        watch.finish()

            for future in futures:
                future.add_done_callback(one_done)

        def done(job: StageJob) -> Callable[[StageOutcome], SideRun]:
            def finish(outcome: StageOutcome) -> SideRun:
                if self.finish is not None:
                    self.finish(job, outcome)
                run = side_run(outcome, self.metric)
                if watch is not None and job.side == "candidate" and watch.decision is not None:
                    run.evidence["early_stop"] = dict(watch.decision)
                return run
            return finish

        return [then(future, done(job)) for job, future in zip(jobs, futures, strict=True)]

    def _watch(self, jobs: list[StageJob], sides: list[str], seed: int, phase: str) -> PairWatch | None:
        """With the early stop on and both sides of a pair here, a watch of their curves (started), whose
        stop event the candidate's job gets."""
        if self.early_stop is None or sorted(sides) != ["candidate", "parent"]:
            return None
        by_side = dict(zip(sides, jobs, strict=True))
        stop, parent_stop = HostStop(), HostStop()
        self.executor.stop_events[by_side["candidate"].out_dir] = stop  # type: ignore[attr-defined]
        self.executor.stop_events[by_side["parent"].out_dir] = parent_stop  # type: ignore[attr-defined]
        budget = float(by_side["candidate"].options.get("budget_seconds", 0.0))
        return PairWatch(Path(by_side["parent"].out_dir) / f"train-seed{seed}",
                         Path(by_side["candidate"].out_dir) / f"train-seed{seed}", budget, self.early_stop, stop,
                         enforce=enforced(f"{self.key}:{phase}:{seed}", self.early_stop),
                         parent_stop=parent_stop).start()

    def __call__(self, side: str, seed: int, phase: str) -> SideRun:
        return self.submit(side, seed, phase).result()
