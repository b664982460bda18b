"""The Ray executor on a real Ray cluster on this machine: a head and worker nodes, each its own raylet
process (ray.cluster_utils.Cluster), no mocks. A stage job runs on the second node with the local sandbox
and its artifacts land on the driver; a node killed while its job trains gives either a retry elsewhere or
a failed side saying the node was lost, in bounded time. Skipped without Ray unless HRM_EVOLVE_REQUIRE_RAY=1.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evolver.executor import NODE_LOST, RayExecutor, StageJob, side_run
from evolver.judge import EXECUTOR_STAGE
from tests.availability import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
LOST_WITHIN_S = 60.0
pytestmark = pytest.mark.usefixtures("require_local_sandbox")


def _ray_missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install -e '.[ray]')"
    return None


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head (1 CPU) and a node with the custom resource "worker2" (1 CPU); the driver is this process.
    Node deaths are noticed within a few seconds (health checks every 500 ms, 3 misses)."""
    skip_or_fail(_ray_missing(), "HRM_EVOLVE_REQUIRE_RAY")
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                               "health_check_initial_delay_ms": 0, "health_check_timeout_ms": 500}})
        try:
            c.add_node(num_cpus=1, resources={"worker2": 1})
            c.wait_for_nodes()
            executor = RayExecutor(c.address)  # connects this process to the cluster
            yield c
            executor.close()
        finally:
            c.shutdown()  # stops the processes this cluster started, and only those


def stage_job(tmp: Path, run_data: Path, harness: Path, *, budget: float = 2.0) -> StageJob:
    return StageJob("candidate", 0, "selection", str(REPO), str(harness), str(run_data), str(tmp / "out"),
                    {"task": "sudoku4", "budget_seconds": budget, "backend": "local",
                     "stages": ["train", "evaluate"], "threads": 1, "cpus": 1.0, "label": "ray-test"})


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _training_under(raylet_pid: int, timeout: float = 120.0) -> list[int]:
    """The pids of the `smoketests train` sandbox processes below that raylet, once there are some."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in _descendants(raylet_pid) if "smoketests train" in _cmdline(p)]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("the job never started training on the node")


def _raylet_pid(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if os.path.exists(f"/proc/{p}") and "smoketests" in _cmdline(p)]


def test_a_stage_job_runs_on_the_second_node_and_its_files_land_on_the_driver(
        cluster: Any, run_data: Path, harness: Path, tmp_path: Path) -> None:
    node = next(n for n in cluster.list_all_nodes() if not n.head)
    ex = RayExecutor(options={"resources": {"worker2": 0.01}})
    events: list[tuple[str, str]] = []
    job = stage_job(tmp_path, run_data, harness)
    outcome = ex.submit(job, lambda stage, seed, status, run: events.append((stage, status))).result(timeout=240)
    assert not outcome.error, outcome.error
    result = outcome.cascade()
    assert result is not None and result.ok, result and result.reason
    assert [s.stage for s in result.stages] == ["train", "evaluate"] and result.backend == "local"
    assert len(result.scores["exact_accuracy"]) == 1 and 0.0 <= result.scores["token_accuracy"][0] <= 1.0
    assert result.stages[1].metrics["labels_available"] is False  # labels stayed out of the sandbox there too
    assert outcome.placement["executor"] == "ray" and outcome.placement["node_id"] == node.node_id
    out = tmp_path / "out"
    assert (out / "train-seed0" / "train.json").is_file() and (out / "evaluate-seed0" / "predictions.npy").is_file()
    assert (out / "train-seed0" / "train" / "checkpoint.pt").is_file()
    assert not (out / "staged").exists()  # the node's copies of the inputs are not sent back
    assert all(s.out_dir.startswith(str(out)) for s in result.stages)
    run = side_run(outcome, "token_accuracy")
    assert run.ok and run.score == result.scores["token_accuracy"][0]
    assert run.evidence["executor"]["node_id"] == node.node_id and run.evidence["steps"] > 0
    assert ("train", "start") in events and ("evaluate", "ok") in events


def _kill_while_training(cluster: Any, ex: RayExecutor, job: StageJob, node: Any) -> tuple[Any, float, list[int]]:
    future = ex.submit(job)
    training = _training_under(_raylet_pid(node))
    time.sleep(1.0)  # well inside the train stage
    killed = time.monotonic()
    cluster.remove_node(node, allow_graceful=False)
    return future.result(timeout=300), killed, training


def test_a_lost_node_without_retries_gives_a_failed_side_in_bounded_time(
        cluster: Any, run_data: Path, harness: Path, tmp_path: Path) -> None:
    node = cluster.add_node(num_cpus=1, resources={"victim": 1})
    cluster.wait_for_nodes()
    ex = RayExecutor(max_retries=0, options={"resources": {"victim": 0.01}})
    outcome, killed, training = _kill_while_training(cluster, ex, stage_job(tmp_path, run_data, harness, budget=30),
                                                     node)
    assert time.monotonic() - killed < LOST_WITHIN_S
    assert outcome.result is None and outcome.error.startswith(NODE_LOST), outcome.error
    run = side_run(outcome, "exact_accuracy")
    assert not run.ok and run.failed_stage == EXECUTOR_STAGE and run.reason.startswith(NODE_LOST)
    deadline = time.monotonic() + 15
    while _alive(training) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(training)  # the sandbox died with its node's worker


def test_a_lost_node_with_a_retry_runs_the_job_again_elsewhere(
        cluster: Any, run_data: Path, harness: Path, tmp_path: Path) -> None:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = cluster.add_node(num_cpus=1, resources={"victim2": 1})
    cluster.wait_for_nodes()
    strategy = NodeAffinitySchedulingStrategy(node.node_id, soft=True)  # first there, then anywhere
    ex = RayExecutor(max_retries=1, options={"scheduling_strategy": strategy})
    outcome, killed, _ = _kill_while_training(cluster, ex, stage_job(tmp_path, run_data, harness), node)
    assert not outcome.error, outcome.error
    result = outcome.cascade()
    assert result is not None and result.ok, result and result.reason
    assert outcome.placement["node_id"] != node.node_id
    assert (tmp_path / "out" / "evaluate-seed0" / "evaluate.json").is_file()
