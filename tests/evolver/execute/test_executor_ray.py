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

from evolver.execute.job import NODE_LOST, StageJob
from evolver.execute.ray_executor import IDLE_GROUP_S, JOB_PREFIX, RayExecutor
from evolver.judge.pairs import EXECUTOR_STAGE
from evolver.run.sides import side_run
from tests.availability import skip_or_fail
from tests.processes import alive, cmdline, descendants, training_under, wait_gone

REPO = Path(__file__).resolve().parents[3]
LOST_WITHIN_S = 60.0
pytestmark = pytest.mark.usefixtures("require_local_sandbox")


def _ray_missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install -e '.[ray]')"
    return None


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head (1 CPU), a node with the custom resource "worker2" (1 CPU) and a node with 2 CPUs (the only one
    that can hold a seed pair of 1-CPU sides); the driver is this process. Node deaths are noticed within a
    few seconds (health checks every 500 ms, 3 misses)."""
    skip_or_fail(_ray_missing(), "HRM_EVOLVE_REQUIRE_RAY")
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                               "health_check_initial_delay_ms": 0, "health_check_timeout_ms": 500}})
        try:
            c.worker2 = c.add_node(num_cpus=1, resources={"worker2": 1})  # type: ignore[attr-defined]
            c.pair_node = c.add_node(num_cpus=2, resources={"pairs": 2})  # type: ignore[attr-defined]
            c.wait_for_nodes()
            executor = RayExecutor(c.address)  # connects this process to the cluster
            yield c
            executor.close()
        finally:
            c.shutdown()  # stops the processes this cluster started, and only those


def stage_job(tmp: Path, run_data: Path, harness: Path, *, budget: float = 2.0, side: str = "candidate",
              cpus: float = 1.0) -> StageJob:
    return StageJob(side, 0, "selection", str(REPO), str(harness), str(run_data), str(tmp / side / "out"),
                    {"task": "sudoku4", "budget_seconds": budget, "backend": "local",
                     "stages": ["train", "evaluate"], "threads": 1, "cpus": cpus, "label": "ray-test"})


def _raylet_pid(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def test_a_stage_job_runs_on_the_second_node_and_its_files_land_on_the_driver(
        cluster: Any, run_data: Path, harness: Path, tmp_path: Path) -> None:
    node = cluster.worker2
    ex = RayExecutor(options={"resources": {"worker2": 0.01}})
    events: list[tuple[str, str]] = []
    stale = _stale_job_folder()
    job = stage_job(tmp_path, run_data, harness)
    outcome = ex.submit(job, lambda stage, seed, status, run: events.append((stage, status))).result(timeout=240)
    assert not outcome.error, outcome.error
    result = outcome.cascade()
    assert result is not None and result.ok, result and result.reason
    assert [s.stage for s in result.stages] == ["train", "evaluate"] and result.backend == "local"
    assert len(result.scores["exact_accuracy"]) == 1 and 0.0 <= result.scores["token_accuracy"][0] <= 1.0
    assert result.stages[1].metrics["labels_available"] is False  # labels stayed out of the sandbox there too
    assert outcome.placement["executor"] == "ray" and outcome.placement["node_id"] == node.node_id
    out = tmp_path / "candidate" / "out"
    assert (out / "train-seed0" / "train.json").is_file() and (out / "evaluate-seed0" / "predictions.npy").is_file()
    assert (out / "train-seed0" / "train" / "checkpoint.pt").is_file()
    assert not (out / "staged").exists()  # the node's copies of the inputs are not sent back
    assert all(s.out_dir.startswith(str(out)) for s in result.stages)
    run = side_run(outcome, "token_accuracy")
    assert run.ok and run.score == result.scores["token_accuracy"][0]
    assert run.evidence["executor"]["node_id"] == node.node_id and run.evidence["steps"] > 0
    assert ("train", "queued") in events and ("evaluate", "ok") in events
    p = outcome.placement
    assert p["round_trip_s"] >= p["cascade_s"] >= result.seconds > 0 and p["unpack_s"] >= 0 and p["collect_s"] >= 0
    assert p["bytes_sent"] >= (out / "train-seed0" / "train" / "checkpoint.pt").stat().st_size
    assert p["worker_task"] >= 1 and p["worker_age_s"] >= 0
    assert not stale.exists() and p["stale_removed"] >= 1  # what a killed worker left on the node is gone


def _stale_job_folder() -> Path:
    """A job folder as a worker killed mid-job leaves it in the nodes' temp dir (this machine's): its pid dead."""
    import subprocess
    import tempfile

    child = subprocess.Popen(["true"])
    child.wait()
    folder = Path(tempfile.gettempdir()) / f"{JOB_PREFIX}{child.pid}-stale"
    (folder / "data" / "select").mkdir(parents=True)
    (folder / "data" / "select" / "all__labels.npy").write_bytes(b"held-out labels")
    return folder


def _kill_while_training(cluster: Any, ex: RayExecutor, job: StageJob, node: Any) -> tuple[Any, float, list[int]]:
    future = ex.submit(job)
    training = training_under(_raylet_pid(node))
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
    assert not wait_gone(training, 15)  # the sandbox died with its node's worker


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
    assert (tmp_path / "candidate" / "out" / "evaluate-seed0" / "evaluate.json").is_file()


# ------------------------------------------------------------------------------------------ pairs on one node


def _group_states() -> dict[str, str]:
    import ray

    return {pg_id: info["state"] for pg_id, info in ray.util.placement_group_table().items()}


def test_the_two_sides_of_a_pair_train_together_on_one_node(
        cluster: Any, run_data: Path, harness: Path, tmp_path: Path) -> None:
    """Two 1-CPU sides on a cluster of a 1-CPU head, a 1-CPU node and a 2-CPU node: one placement group puts
    both on the 2-CPU node (one task at a time would scatter them); the next pair, submitted as soon as the
    first has answered, runs in the same group, which is removed once it has been idle IDLE_GROUP_S."""
    pair_node = cluster.pair_node
    ex = RayExecutor()
    jobs = [stage_job(tmp_path, run_data, harness, side=side) for side in ("parent", "candidate")]
    events: dict[str, list[str]] = {"parent": [], "candidate": []}
    futures = ex.submit_group(jobs, [lambda st, seed, status, run, side=side: events[side].append(f"{st}:{status}")
                                     for side in ("parent", "candidate")])
    outcomes = [f.result(timeout=300) for f in futures]
    for side, outcome in zip(("parent", "candidate"), outcomes, strict=True):
        assert not outcome.error, outcome.error
        result = outcome.cascade()
        assert result is not None and result.ok, result and result.reason
        assert (tmp_path / side / "out" / "evaluate-seed0" / "evaluate.json").is_file()
        assert events[side][0] == "train:start" and "evaluate:ok" in events[side]
        p = outcome.placement
        assert p["node_id"] == pair_node.node_id and p["group_size"] == 2 and p["queued_s"] >= 0
        assert p["round_trip_s"] >= result.seconds > 0
    assert outcomes[0].placement["placement_group"] == outcomes[1].placement["placement_group"]
    assert outcomes[0].placement["pid"] != outcomes[1].placement["pid"]  # two workers, at the same time
    group = outcomes[0].placement["placement_group"]
    assert not outcomes[0].placement["group_reused"]

    again = [f.result(timeout=300) for f in ex.submit_group(
        [stage_job(tmp_path / "again", run_data, harness, side=side) for side in ("parent", "candidate")])]
    for outcome in again:
        assert not outcome.error and outcome.cascade().ok, outcome.error  # type: ignore[union-attr]
        p = outcome.placement
        assert p["placement_group"] == group and p["group_reused"] and p["node_id"] == pair_node.node_id
    assert _group_states()[group] == "CREATED"  # kept for a next pair
    deadline = time.monotonic() + IDLE_GROUP_S + 15
    while _group_states().get(group) != "REMOVED" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_states()[group] == "REMOVED"


def test_a_single_task_runs_in_an_idle_pairs_reservation_or_releases_it(
        cluster: Any, run_data: Path, harness: Path, tmp_path: Path) -> None:
    """The 2-CPU node's two CPUs are all an idle pair group's, kept here for 10 minutes. A 1-CPU task (a gate)
    borrows one of its bundles and runs inside it, and the group is idle again afterwards, for the next pair;
    a 2-CPU task that only that node can run fits no bundle: it releases the group and runs there, instead of
    waiting for the group's idle time to run out."""
    pair_node = cluster.pair_node
    ex = RayExecutor(options={"resources": {"pairs": 0.01}}, idle_group_s=600)
    outcomes = [f.result(timeout=300) for f in ex.submit_group(
        [stage_job(tmp_path, run_data, harness, side=side) for side in ("parent", "candidate")])]
    group = outcomes[0].placement["placement_group"]
    assert all(not o.error for o in outcomes) and _group_states()[group] == "CREATED"
    gate = ex.submit(stage_job(tmp_path / "gate", run_data, harness)).result(timeout=240)
    assert not gate.error and gate.cascade().ok, gate.error  # type: ignore[union-attr]
    assert gate.placement["borrowed"] and gate.placement["placement_group"] == group
    assert gate.placement["node_id"] == pair_node.node_id and _group_states()[group] == "CREATED"
    again = [f.result(timeout=300) for f in ex.submit_group(
        [stage_job(tmp_path / "again", run_data, harness, side=side) for side in ("parent", "candidate")])]
    assert all(o.placement["placement_group"] == group and o.placement["group_reused"] for o in again)
    wide = ex.submit(stage_job(tmp_path / "wide", run_data, harness, cpus=2.0)).result(timeout=240)
    assert not wide.error and wide.placement["node_id"] == pair_node.node_id, wide.error
    assert "borrowed" not in wide.placement and _group_states()[group] == "REMOVED"


def test_a_pair_no_node_can_hold_fails_at_once_with_what_it_needs(
        cluster: Any, run_data: Path, harness: Path, tmp_path: Path) -> None:
    ex = RayExecutor()
    jobs = [stage_job(tmp_path, run_data, harness, side=side, cpus=2.0) for side in ("parent", "candidate")]
    started = time.monotonic()
    outcomes = [f.result(timeout=60) for f in ex.submit_group(jobs)]
    assert time.monotonic() - started < 10
    for outcome in outcomes:
        assert outcome.result is None and "no node of the cluster can hold the 2 sides" in outcome.error
        assert "2 CPU + 2 CPU" in outcome.error and "the largest node has 2 CPU" in outcome.error
        run = side_run(outcome, "exact_accuracy")
        assert not run.ok and run.failed_stage == EXECUTOR_STAGE  # the judge voids such a pair


def _node_training(nodes: list[Any], timeout: float = 120.0) -> tuple[Any, list[int]]:
    """The node among ``nodes`` whose raylet runs the sandboxes of the pair just submitted, and their pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            found = [p for p in descendants(_raylet_pid(node)) if "smoketests train" in cmdline(p)]
            if len(found) >= 2:
                return node, found
        time.sleep(0.2)
    raise AssertionError("the pair never started training on any of the nodes")


def test_a_pair_whose_node_dies_is_retried_on_another_node_or_lost_in_bounded_time(
        cluster: Any, run_data: Path, harness: Path, tmp_path: Path) -> None:
    """Two 2-CPU nodes with the resource "spare": a pair trains on one of them; that node is killed; the
    group moves to the other node and both sides train again there. Then that node is killed during the
    next pair: no node can hold the group any more, and both sides come back lost well before their deadline."""
    nodes = [cluster.add_node(num_cpus=2, resources={"spare": 2}) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        ex = RayExecutor(max_retries=1, options={"resources": {"spare": 0.01}})

        def pair(name: str) -> list[Any]:
            return ex.submit_group([stage_job(tmp_path / name, run_data, harness, side=side, budget=8)
                                    for side in ("parent", "candidate")])

        futures = pair("first")
        victim, training = _node_training(nodes)
        time.sleep(1.0)
        cluster.remove_node(victim, allow_graceful=False)
        survivor = next(n for n in nodes if n is not victim)
        outcomes = [f.result(timeout=400) for f in futures]
        for outcome in outcomes:
            assert not outcome.error, outcome.error
            assert outcome.cascade().ok and outcome.placement["node_id"] == survivor.node_id  # type: ignore[union-attr]
        assert not alive(training)

        futures = pair("second")
        victim, training = _node_training([survivor])
        time.sleep(1.0)
        killed = time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)
        outcomes = [f.result(timeout=300) for f in futures]
        assert time.monotonic() - killed < LOST_WITHIN_S
        for outcome in outcomes:
            assert outcome.result is None and outcome.error.startswith(NODE_LOST), outcome.error
            assert "no alive node can hold the pair" in outcome.error  # given up, not left to its deadline
            assert side_run(outcome, "exact_accuracy").failed_stage == EXECUTOR_STAGE
    finally:  # a failure above must not leave a pair-sized node for the tests after it
        for node in nodes:
            if node in cluster.list_all_nodes():
                cluster.remove_node(node)


def test_closing_the_executor_cancels_its_running_tasks_and_kills_their_sandboxes(
        cluster: Any, run_data: Path, harness: Path, tmp_path: Path) -> None:
    """A Ctrl-C of the run closes its executor: the task still training on its node is cancelled, and its
    sandbox is killed there at once, not left to train to its budget (60 s here) after the driver is gone."""
    node = cluster.add_node(num_cpus=1, resources={"closing": 1})
    cluster.wait_for_nodes()
    ex = RayExecutor(options={"resources": {"closing": 0.01}})
    future = ex.submit(stage_job(tmp_path, run_data, harness, budget=60))
    training = training_under(_raylet_pid(node))
    time.sleep(1.0)
    closed = time.monotonic()
    ex.close(wait_s=30)
    assert time.monotonic() - closed < 30
    assert not wait_gone(training, 5)
    outcome = future.result(timeout=30)
    assert outcome.result is None and outcome.error == "executor: cancelled: the run is stopping", outcome.error
    cluster.remove_node(node)


def test_ray_error_texts_lose_their_colour_codes() -> None:
    from evolver.execute.ray_executor import _plain

    assert _plain(RuntimeError("\x1b[36mray::remote_stage()\x1b[39m failed\x1b[0m")) == "ray::remote_stage() failed"


# ------------------------------------------------------------------------------------------ the main command


@pytest.mark.timeout(900)
def test_the_main_command_evolves_through_the_cluster_with_each_pair_on_one_node(
        cluster: Any, tmp_path: Path) -> None:
    """`evolve.py --executor ray` on the cluster above (1-CPU nodes and one 2-CPU node): the baseline and
    gate jobs ask for one CPU each, so the 1-CPU nodes run them; every seed pair trains on the 2-CPU node;
    the record and verdicts stay on the driver."""
    import json
    import subprocess
    import sys

    from tests.evolver.run.test_loop_e2e import _git, _snapshot

    repo = _snapshot(tmp_path / "repo")
    cmd = [sys.executable, str(REPO / "evolve.py"), "--repo", str(repo), "--provider", "offline", "--cycles", "1",
           "--auto-apply", "--budget-seconds", "3", "--seeds", "0,1", "--backend", "local", "--literature", "off",
           "--max-seeds", "2", "--confirm-seeds", "2", "--throughput-tolerance", "10",
           "--executor", "ray", "--ray-address", cluster.address,
           "--no-no-effect-check"]  # pairs on the cluster are the point: an entry without effect would train none
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=850,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_id = next(b for b in _git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/evolve/").split()
                  if b.endswith("/best")).split("/")[1]
    record = f"evolve/{run_id}/record"
    pids = _git(repo, "ls-tree", "--name-only", f"{record}:proposals/{run_id}").split()
    assert len(pids) == 1
    result = json.loads(_git(repo, "show", f"{record}:proposals/{run_id}/{pids[0]}/result.json"))
    if result["verdict"] == "failed":  # a catalogue entry that fails its gates trains no pair
        assert result.get("failed_stage") not in ("executor", None), result
        pytest.skip(f"the first catalogue entry failed its gates: {result.get('reason')}")
    pairs = result["judgement"]["pairs"]
    assert pairs and not any(p["void"] for p in pairs), pairs
    for p in pairs:
        parent, cand = p["parent_evidence"]["executor"], p["candidate_evidence"]["executor"]
        assert parent["node_id"] == cand["node_id"] == cluster.pair_node.node_id
        assert parent["placement_group"] == cand["placement_group"]
        assert parent["round_trip_s"] > 0 and cand["round_trip_s"] > 0
    assert result["verdict"] in ("merged", "rejected", "inconclusive"), result["verdict"]


def test_a_run_stops_before_its_baseline_when_no_node_can_hold_a_pair(cluster: Any, user_repo: Path,
                                                                       tmp_path: Path) -> None:
    """--cpus 4 side by side: each side asks for 2 CPUs, a pair for 4 on one node; the largest node has 2."""
    from evolver.run.loop import EvolutionLoop
    from evolver.run.state import StopRun
    from evolver.settings import load_settings

    settings = load_settings(user_repo, environ={}, overrides={
        "provider": "offline", "literature": "off", "state_dir": str(tmp_path / "state"), "cpus": 4.0,
        "executor": "ray", "ray_address": cluster.address, "backend": "local"})
    loop = EvolutionLoop(user_repo, settings, harness_dir=tmp_path / "harness")
    try:
        with pytest.raises(StopRun, match=r"no node of the Ray cluster has room for a seed pair \(two sandboxes "
                                          r"of 2 CPU each, on one node\); nodes: .*2 CPU.*--serial-pairs"):
            loop.ctx.check_cluster()
        settings.cpus = 2.0
        loop.ctx.check_cluster()  # 1-CPU sides: the 2-CPU node holds a pair
        assert loop.ctx.cohort_size() == 1  # the one node that holds a pair
    finally:
        loop.ctx.record.close()
