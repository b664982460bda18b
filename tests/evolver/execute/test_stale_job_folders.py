"""The sweep of job folders that killed Ray workers leave in a node's temp dir (evolver/execute/ray_executor.py): only
dead workers' folders go, and workers sweeping at the same time neither fail nor remove a folder twice."""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from evolver.execute.ray_executor import JOB_PREFIX, sweep_stale_jobs


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _job_folder(tmp: Path, pid: int, name: str, files: int = 50) -> Path:
    folder = tmp / f"{JOB_PREFIX}{pid}-{name}"
    for i in range(files):
        sub = folder / "tree" / f"d{i % 7}" / "train"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.npy").write_bytes(b"x" * 100)
    return folder


def test_only_dead_workers_folders_go(tmp_path: Path) -> None:
    dead = _job_folder(tmp_path, _dead_pid(), "a")
    live = _job_folder(tmp_path, os.getpid(), "b")
    other = tmp_path / "not-a-job"
    other.mkdir()
    assert sweep_stale_jobs(tmp_path) == 1
    assert not dead.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_workers_sweeping_at_once_remove_each_folder_once_and_never_raise(tmp_path: Path) -> None:
    """The failure CI met: both sides of a pair swept the folders of a killed node's workers at the same time,
    one removed files the other was walking, and the job failed with FileNotFoundError."""
    folders = [_job_folder(tmp_path, _dead_pid(), f"s{i}", files=300) for i in range(6)]
    start = threading.Barrier(4)
    counts: list[int] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        start.wait()
        try:
            counts.append(sweep_stale_jobs(tmp_path))
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(counts) == len(folders)
    assert not any(tmp_path.iterdir())


def test_a_claim_left_by_a_sweeper_that_died_is_swept_in_turn(tmp_path: Path) -> None:
    claimed = _job_folder(tmp_path, _dead_pid(), f"swept-{os.getpid()}-x")
    assert sweep_stale_jobs(tmp_path) == 1 and not claimed.exists()
