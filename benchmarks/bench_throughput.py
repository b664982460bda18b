"""Throughput of the evolution loop on sudoku4: candidates per hour serial, side by side and on a local Ray
cluster; the share of a cycle that is not training; Ray's scheduling overhead per task.

    python benchmarks/bench_throughput.py                                   # all three modes, 3 cycles, 40 s
    python benchmarks/bench_throughput.py --modes serial,parallel --cycles 2
    python benchmarks/bench_throughput.py --cycles 1 --budget-seconds 3 --backend local --json /tmp/t.json

Each mode runs the real loop (EvolutionLoop.run: gates, seed pairs, selection, confirmation, merges with
--auto-apply) on its own fresh clone of this repository's HEAD with its own state directory, the offline
proposer handing out the catalogue in its own order (the CLI's offline provider shuffles it per cycle;
only the API can set the order, which is why the loop is driven through it, in a child process per mode),
the same seeds, `--literature off`, `--cycles`, `--budget-seconds` and `--backend`:

- serial:   one sandbox at a time: `--serial-pairs --workers 1 --cohort 1` (torch threads 2, the default);
- parallel: the defaults on 2 cores with `--workers 2`: the two sides of each seed pair side by side, one
            thread each;
- ray:      a local two-node Ray cluster (a head with no CPUs for tasks, the driver's node, and a worker
            node with --ray-node-cpus CPUs, 2 by default: one seed pair of 1-CPU sides, since a pair's sides
            share one node; started here the way tests/evolver/execute/test_executor_ray.py starts one, and always
            shut down afterwards), run with `--executor ray --ray-address ADDR` and the other defaults: the
            same work as parallel, through Ray (every input shipped through the object store, each pair a
            placement group).

Figures, per mode:

- candidates: proposals that ended with a verdict (a result.json in the store), with the verdicts;
- wall seconds after the baseline: from the end of the run's first baseline measurement (the parent
  trained on the run's seeds: the same work in every mode, so it is left out) to the end of the loop;
  the baseline's own seconds are shown beside it, and candidates/hour both ways;
- non-training share, two views: "timings" sums every candidate's result.json `timings` (llm, patch, the
  gates, both sides' train/evaluate, ...) over the run: non-training seconds / all seconds, where training
  is a key that, without a leading "screen-" and "parent-", is train or evaluate (as the engine's own
  `non_training_share`); "wall" is 1 - (the candidates' own train + evaluate seconds, summed over the run) /
  (wall seconds after the baseline): the share of the run's wall clock in which no candidate was training;
- time outside the stages per task, for every side of every seed pair: the placement's `round_trip_s`
  (driver-measured seconds from submission, or for a local slot from the slot starting it, to the answer)
  minus that side's stage command durations (its cascade.json), split into the sandbox's start/stop, the
  cascade's host work and, for Ray, what the executor adds (see PARTS); median, max and n. The Ray target
  is on the executor's part: the rest is the same work a local slot does.

Targets: parallel/serial candidates per hour >= 1.8; non-training share < 5 %; Ray overhead per task < 1 s.
Nothing is asserted. Run it on an otherwise idle machine: at full size it takes tens of minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import ROOT, clone_head  # noqa: E402

MODES = ("serial", "parallel", "ray")
TASK = "sudoku4"
TARGET_SPEEDUP = 1.8
TARGET_NON_TRAINING = 0.05
TARGET_OVERHEAD_S = 1.0
RAY_NODE_CPUS = 2
TRAINING = ("train", "evaluate")
MODE_SETTINGS: dict[str, dict[str, Any]] = {
    "serial": {"side_by_side": False, "workers": 1, "cohort": 1},
    "parallel": {"workers": 2},
    "ray": {"executor": "ray"},  # + ray_address, set when the cluster is up
}
MODE_FLAGS: dict[str, list[str]] = {
    "serial": ["--serial-pairs", "--workers", "1", "--cohort", "1"],
    "parallel": ["--workers", "2"],
    "ray": ["--executor", "ray", "--ray-address"],  # + the address
}


# ------------------------------------------------------------------------------------------ pure figures


def is_training(key: str) -> bool:
    """A timings key that is training: train or evaluate once a leading "screen-" and "parent-" are gone."""
    return key.removeprefix("screen-").removeprefix("parent-") in TRAINING


def is_candidate_training(key: str) -> bool:
    """A timings key that is the candidate's own training (not the parent's beside it)."""
    return key.removeprefix("screen-") in TRAINING


def timings_share(results: list[dict[str, Any]]) -> float | None:
    """Non-training seconds / all seconds of the candidates' timings, summed over the run."""
    total = training = 0.0
    for r in results:
        for key, value in (r.get("timings") or {}).items():
            total += float(value)
            training += float(value) if is_training(key) else 0.0
    return 1 - training / total if total > 0 else None


def candidate_training_seconds(results: list[dict[str, Any]]) -> float:
    return sum(float(v) for r in results for k, v in (r.get("timings") or {}).items() if is_candidate_training(k))


def wall_share(results: list[dict[str, Any]], wall_s: float | None) -> float | None:
    """1 - the candidates' own train + evaluate seconds / the run's wall seconds after the baseline."""
    if not wall_s or wall_s <= 0:
        return None
    return 1 - candidate_training_seconds(results) / wall_s


def per_hour(n: int, seconds: float | None) -> float | None:
    return n * 3600.0 / seconds if seconds and seconds > 0 else None


def side_dir(run_dir: Path, pid: str, phase: str, seed: int, side: str) -> Path:
    """Where one side of a seed pair wrote its cascade.json (evolver/run/candidate.py's folder names)."""
    return run_dir / "candidates" / pid / f"{phase}-seed{seed}-{side}"


PARTS = ("outside", "sandbox", "host", "executor")
"""Where a pair side's time outside its stages goes (seconds, per side): "outside" = round_trip_s - the stage
command durations; "sandbox" = the stages' sandbox start/stop (each StageRun's overhead_s: container create,
start, wait, remove); "host" = the cascade's own work on the machine that ran it (staging the inputs, reading
back and scoring): the job's run time - the stages' durations and overheads; "executor" (Ray only) = what the
executor adds around that run: the placement group's queued_s + round_trip_s - the node's cascade_s (scheduling,
shipping the inputs and unpacking them, collecting the files and sending them back)."""


def executor_overheads(results: list[dict[str, Any]], run_dir: Path) -> dict[str, Any]:
    """Per pair side, the PARTS of its time outside its stages, from the placement and the side's cascade.json.
    Returns the lists by part, the Ray shipping figures, and counts of the sides that could not give one."""
    parts: dict[str, list[float]] = {k: [] for k in PARTS}
    shipping: dict[str, list[float]] = {"unpack_s": [], "collect_s": [], "bytes_sent": []}
    workers: dict[str, list[float]] = {"fresh": [], "warm": []}  # Ray's executor part by worker freshness
    sides = no_round_trip = no_cascade = 0
    executors: Counter[str] = Counter()
    for r in results:
        pid = str(r.get("proposal_id"))
        for pair in (r.get("judgement") or {}).get("pairs") or []:
            for side in ("parent", "candidate"):
                placement = (pair.get(f"{side}_evidence") or {}).get("executor") or {}
                sides += 1
                executors[str(placement.get("executor", "?"))] += 1
                trip = placement.get("round_trip_s")
                if trip is None:
                    no_round_trip += 1
                    continue
                path = side_dir(run_dir, pid, str(pair.get("phase")), int(pair.get("seed", -1)), side) / "cascade.json"
                try:
                    stages = json.loads(path.read_text()).get("stages") or []
                except (OSError, ValueError):
                    no_cascade += 1
                    continue
                commands = sum(float(s.get("duration_s") or 0.0) for s in stages)
                sandbox = sum(float(s.get("overhead_s") or 0.0) for s in stages)
                ran = float(placement.get("cascade_s", trip))  # a local slot's round trip is its run
                parts["outside"].append(float(trip) - commands)
                parts["sandbox"].append(sandbox)
                parts["host"].append(ran - commands - sandbox)
                if "cascade_s" in placement:
                    part = float(placement.get("queued_s") or 0.0) + float(trip) - ran
                    parts["executor"].append(part)
                    if "worker_task" in placement:
                        workers["fresh" if int(placement["worker_task"]) == 1 else "warm"].append(part)
                for key, values in shipping.items():
                    if key in placement:
                        values.append(float(placement[key]))
    return {"parts": parts, "shipping": shipping, "workers": workers, "sides": sides,
            "no_round_trip": no_round_trip, "no_cascade": no_cascade, "executors": dict(executors)}


def _stats(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s"


def describe_overhead(o: dict[str, Any] | None) -> str:
    if not o or not o.get("sides"):
        return "no seed pairs"
    parts = o["parts"]
    if parts["outside"]:
        text = f"{_stats(parts['outside'])}, n {len(parts['outside'])}; of which " + ", ".join(
            f"{k} {statistics.median(parts[k]):.2f}" for k in PARTS[1:] if parts.get(k)) + " (medians)"
        missing = o["no_round_trip"] + o["no_cascade"]
        return text + (f" ({missing} of {o['sides']} sides without a figure)" if missing else "")
    if o["no_round_trip"] == o["sides"]:
        return f"not measured: round_trip_s is absent from the executor placement of all {o['sides']} sides"
    return f"not measured: {o['no_round_trip']} sides without round_trip_s, {o['no_cascade']} without cascade.json"


def pair_walls(results: list[dict[str, Any]], side_by_side: bool) -> list[float]:
    """Each seed pair's wall seconds from its sides' round trips: the longer of the two when they run side by
    side, their sum when one runs after the other (serial). Pairs without both figures are left out."""
    walls = []
    for r in results:
        for pair in (r.get("judgement") or {}).get("pairs") or []:
            trips = [((pair.get(f"{side}_evidence") or {}).get("executor") or {}).get("round_trip_s")
                     for side in ("parent", "candidate")]
            if all(t is not None for t in trips):
                walls.append(max(map(float, trips)) if side_by_side else sum(map(float, trips)))
    return walls


def summarize(mode: str, child: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The figures of one mode from its child's summary (results, times) and its run folder."""
    results = [r for r in child.get("results") or [] if r and r.get("verdict")]
    baselines = child.get("baselines") or []
    first = baselines[0] if baselines else None
    loop_s = float(child.get("loop_s") or 0.0)
    after = loop_s - float(first["end"]) if first else None
    later = baselines[1:]
    pairs = sum(len((r.get("judgement") or {}).get("pairs") or []) for r in results)
    stored = [float(r["non_training_share"]) for r in results if r.get("non_training_share") is not None]
    walls = pair_walls(results, MODE_SETTINGS[mode].get("side_by_side", True))
    return {
        "mode": mode, "ok": True, "run_id": child.get("run_id"), "stop_reason": child.get("stop_reason"),
        "candidates": len(results), "verdicts": dict(Counter(str(r["verdict"]) for r in results)),
        "pairs": pairs,
        "loop_s": loop_s, "baseline_s": (float(first["end"]) - float(first["start"])) if first else None,
        "wall_after_baseline_s": after, "remeasured_bests": len(later),
        "remeasured_bests_s": sum(float(b["end"]) - float(b["start"]) for b in later),
        "per_hour": per_hour(len(results), after),
        "seconds_per_pair": after / pairs if after and pairs else None, "per_hour_with_baseline": per_hour(len(results), loop_s),
        "pair_wall_s": statistics.fmean(walls) if walls else None,
        "outside_pairs_per_candidate_s": (after - sum(walls)) / len(results) if after and results and walls else None,
        "non_training_timings": timings_share(results), "non_training_wall": wall_share(results, after),
        "candidate_training_s": candidate_training_seconds(results),
        "mean_result_non_training_share": statistics.fmean(stored) if stored else None,
        "overhead": executor_overheads(results, run_dir),
        "settings": child.get("settings"),
    }


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'mode':9} {'cands':>5} {'pairs':>5} {'wall s':>8} {'s/pair':>6} {'base s':>7} {'cand/h':>7} {'cand/h+b':>8} "
            f"{'non-train timings':>17} {'non-train wall':>14}  outside stages per side (round_trip_s - stage commands)")
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.get("ok"):
            why = " ".join(str(r.get("why", "?")).split())
            lines.append(f"{r['mode']:9} {'SKIPPED' if r.get('skipped') else 'FAILED'}: "
                         f"{why if len(why) <= 600 else why[:250] + ' ... ' + why[-340:]}")
            continue
        lines.append(
            f"{r['mode']:9} {r['candidates']:5d} {r['pairs']:5d} {_num(r['wall_after_baseline_s'], '8.1f')} "
            f"{_num(r['seconds_per_pair'], '6.1f')} "
            f"{_num(r['baseline_s'], '7.1f')} {_num(r['per_hour'], '7.1f')} {_num(r['per_hour_with_baseline'], '8.1f')} "
            f"{_num(r['non_training_timings'], '17.1%')} {_num(r['non_training_wall'], '14.1%')}  "
            f"{describe_overhead(r.get('overhead'))}")
    return "\n".join(lines)


def equal_work(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Candidates per hour of serial and parallel at the same verdict work: how many pairs a verdict takes is
    the sequential test's stopping time, which differs between two runs by chance (each has its own secret
    splits and noise), so both are put at the pooled mean pairs per verdict P of the two runs:
    3600 / (the mode's seconds per candidate outside its pairs + P x its mean pair wall seconds)."""
    by = {r["mode"]: r for r in rows if r.get("ok")}
    if not all(by.get(m, {}).get("pair_wall_s") and by[m].get("outside_pairs_per_candidate_s") is not None
               and by[m]["candidates"] for m in ("serial", "parallel")):
        return None
    mean_pairs = sum(by[m]["pairs"] for m in ("serial", "parallel")) / sum(by[m]["candidates"] for m in ("serial", "parallel"))
    hourly = {m: 3600.0 / (by[m]["outside_pairs_per_candidate_s"] + mean_pairs * by[m]["pair_wall_s"])
              for m in ("serial", "parallel")}
    return {"pairs_per_verdict": mean_pairs, "per_hour": hourly, "speedup": hourly["parallel"] / hourly["serial"]}


def speedup(rows: list[dict[str, Any]]) -> float | None:
    by = {r["mode"]: r for r in rows if r.get("ok")}
    if "serial" in by and "parallel" in by and by["serial"]["per_hour"] and by["parallel"]["per_hour"]:
        return float(by["parallel"]["per_hour"]) / float(by["serial"]["per_hour"])
    return None


# ------------------------------------------------------------------------------------------ one mode (child)


def child_main(config_path: Path) -> int:
    """Run one mode's loop through the EvolutionLoop API and write its summary (never raises)."""
    cfg = json.loads(config_path.read_text())
    summary: dict[str, Any] = {"baselines": [], "results": [], "error": None}
    t0 = time.monotonic()
    try:
        from rich.console import Console

        from evolver.propose.providers.offline import OfflineProvider
        from evolver.run.display import LoopDisplay
        from evolver.run.loop import EvolutionLoop
        from evolver.settings import Settings

        settings = Settings(**cfg["settings"])
        summary["settings"] = settings.to_dict()
        with LoopDisplay(Console(width=150, highlight=False), live=False) as display:
            loop = EvolutionLoop(Path(cfg["repo"]), settings, display=display, provider=OfflineProvider(shuffle=False))
            summary.update(run_id=loop.ctx.run_id, run_dir=str(loop.ctx.run_dir))
            measure = loop.measure_baseline

            def timed_baseline() -> Any:
                start = time.monotonic() - t0
                baseline = measure()
                summary["baselines"].append({"start": start, "end": time.monotonic() - t0,
                                             "cached": baseline.cached, "commit": baseline.commit})
                return baseline

            loop.measure_baseline = timed_baseline  # type: ignore[method-assign]
            t0 = time.monotonic()
            try:
                loop.run()
            finally:
                summary["loop_s"] = time.monotonic() - t0
                summary["stop_reason"] = loop.stop_reason
        summary["results"] = [loop.ctx.store.result(pid) for pid in loop.ctx.store.ids()]
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which goes on with the other modes
        summary["error"] = f"{type(exc).__name__}: {exc}"
        summary.setdefault("loop_s", time.monotonic() - t0)
    Path(cfg["summary"]).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return 1 if summary["error"] else 0


# ------------------------------------------------------------------------------------------ the Ray cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def ray_cluster(node_cpus: float, log: Callable[[str], None]) -> Iterator[str]:
    """A head with no CPUs for tasks and a worker node with ``node_cpus`` CPUs, on this machine, as
    tests/evolver/execute/test_executor_ray.py starts them (ray.cluster_utils.Cluster: each node its own raylet;
    shutdown stops these processes and only these). Yields the cluster's address."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    port = free_port()
    log(f"ray: starting a head on port {port} (0 CPUs for tasks) and a worker node with {node_cpus:g} CPU(s)")
    cluster = None
    try:
        # The default node IP, not 127.0.0.1: Ray turns a loopback address into this machine's IP when a
        # driver connects, so a head bound to 127.0.0.1 alone would not be reachable.
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "gcs_server_port": port})
        cluster.add_node(num_cpus=node_cpus)
        cluster.wait_for_nodes()
        log(f"ray: cluster up at {cluster.address} (2 nodes)")
        yield str(cluster.address)
    finally:
        if cluster is not None:
            cluster.shutdown()
            log("ray: cluster shut down")


# ------------------------------------------------------------------------------------------ one mode (parent)


def evolve_command(mode: str, repo: Path, args: argparse.Namespace, address: str | None) -> str:
    """The evolve.py command line of the same run (up to the catalogue order, which only the API sets)."""
    flags = MODE_FLAGS[mode] + ([address or "ADDR"] if mode == "ray" else [])
    return shlex.join(["python", "evolve.py", "--repo", str(repo), "--provider", "offline", "--auto-apply",
                             "--task", TASK, "--literature", "off", "--cycles", str(args.cycles),
                             "--budget-seconds", f"{args.budget_seconds:g}", "--backend", args.backend, *flags])


def mode_settings(mode: str, args: argparse.Namespace, address: str | None) -> dict[str, Any]:
    s: dict[str, Any] = {"provider": "offline", "task": TASK, "auto_apply": True, "literature": "off",
                         "cycles": args.cycles, "budget_seconds": args.budget_seconds, "backend": args.backend,
                         **MODE_SETTINGS[mode]}
    if mode == "ray":
        s.update(ray_address=address)
    return s


def run_mode(mode: str, args: argparse.Namespace, tmp: Path, log: Callable[[str], None],
             address: str | None = None) -> dict[str, Any]:
    where = tmp / mode
    repo = where / "repo"
    where.mkdir(parents=True)
    clone_head(repo)
    config = {"repo": str(repo), "settings": mode_settings(mode, args, address), "summary": str(where / "summary.json")}
    (where / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    log(f"{mode}: {evolve_command(mode, repo, args, address)}")
    log(f"{mode}: settings {json.dumps(config['settings'], sort_keys=True)}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    # cwd: the engine root, which Ray hands its workers as their working directory and import path, so a node
    # runs this checkout's engine (as the driver does), not the clone's committed copy of it.
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(where / "config.json")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timed_out = threading.Event()

    def stop() -> None:  # a clean stop first (the loop records what it has), then a kill
        timed_out.set()
        log(f"{mode}: over --mode-timeout {args.mode_timeout:g} min; stopping it")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()

    watchdog = threading.Timer(args.mode_timeout * 60, stop) if args.mode_timeout > 0 else None
    if watchdog:
        watchdog.daemon = True
        watchdog.start()
    tail: deque[str] = deque(maxlen=40)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if line.strip():
                print(f"  [{mode} {time.monotonic() - started:6.0f}s] {line}", flush=True)
        rc = proc.wait()
    finally:
        if watchdog:
            watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - started
    summary_path = where / "summary.json"
    if not summary_path.exists():
        return {"mode": mode, "ok": False, "why": f"the mode's process exited {rc} without a summary; last lines:\n"
                + "\n".join(tail[-15:]), "process_s": wall}
    child = json.loads(summary_path.read_text())
    if child.get("error") or not child.get("baselines"):
        why = child.get("error") or f"no baseline was measured (stop reason: {child.get('stop_reason')})"
        if timed_out.is_set():
            why = f"stopped at --mode-timeout {args.mode_timeout:g} min: {why}"
        return {"mode": mode, "ok": False, "why": why, "process_s": wall, "run_id": child.get("run_id")}
    figures = summarize(mode, child, Path(child["run_dir"]))
    figures.update(process_s=wall, timed_out=timed_out.is_set(), command=evolve_command(mode, repo, args, address),
                   repo=str(repo))
    if timed_out.is_set():
        figures["stop_reason"] = f"stopped at --mode-timeout: {figures['stop_reason']}"
    return figures


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: serial, parallel, ray (default all)")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--budget-seconds", type=float, default=40.0, help="training seconds per seed (default 40)")
    ap.add_argument("--backend", choices=["auto", "docker", "local"], default="docker")
    ap.add_argument("--ray-node-cpus", type=float, default=float(RAY_NODE_CPUS),
                    help="CPUs of the Ray mode's worker node (default 2: one seed pair of 1-CPU sides at a time)")
    ap.add_argument("--mode-timeout", type=float, default=120.0,
                    help="minutes a mode may run before it is stopped (0: no limit; default 120)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the clones and run folders (printed)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        ap.error(f"unknown mode(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODES)}")

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    command = shlex.join(["python", os.path.relpath(__file__, Path.cwd()), *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}")
    print(f"settings: task {TASK}, {args.cycles} cycle(s), budget {args.budget_seconds:g} s per seed, backend "
          f"{args.backend}, offline provider in catalogue order, literature off, seeds and the other engine "
          f"settings at their defaults; modes {', '.join(modes)}; machine {os.cpu_count()} cores")
    print("  serial: --serial-pairs --workers 1 --cohort 1 (threads 2); parallel: --workers 2; "
          f"ray: --executor ray, a local head (0 CPUs) and a worker node of {args.ray_node_cpus:g} CPUs")
    print("each mode: a fresh clone of HEAD and its own state dir; wall seconds are counted after the run's "
          "first baseline (the same work in every mode), shown beside it\n", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    rows: list[dict[str, Any]] = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill still shuts the Ray cluster down
    try:
        for mode in modes:
            log(f"=== {mode} ===")
            t = time.monotonic()
            try:
                if mode == "ray":
                    import importlib.util

                    if importlib.util.find_spec("ray") is None:
                        rows.append({"mode": mode, "ok": False, "skipped": True,
                                     "why": "ray is not installed (pip install -e '.[ray]')"})
                        log("ray: skipped, ray is not installed (pip install -e '.[ray]')")
                        continue
                    with ray_cluster(args.ray_node_cpus, log) as address:
                        rows.append(run_mode(mode, args, tmp, log, address))
                else:
                    rows.append(run_mode(mode, args, tmp, log))
            except KeyboardInterrupt:
                rows.append({"mode": mode, "ok": False, "why": "interrupted"})
                raise
            except Exception as exc:  # noqa: BLE001 - one mode's failure is reported, the others still run
                rows.append({"mode": mode, "ok": False, "why": f"{type(exc).__name__}: {exc}"})
            row = rows[-1]
            log(f"{mode}: done in {time.monotonic() - t:.0f} s: " + (
                f"{row['candidates']} candidate(s) {row['verdicts']}; stop: {row['stop_reason']}" if row.get("ok")
                else str(row.get("why"))))
    except KeyboardInterrupt:
        log("interrupted; figures so far:")
    finally:
        report(rows, args, command)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "command": command, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "targets": {"speedup": TARGET_SPEEDUP, "non_training_share": TARGET_NON_TRAINING,
                            "ray_overhead_s": TARGET_OVERHEAD_S},
                "speedup": speedup(rows), "equal_work": equal_work(rows), "modes": rows}, indent=1, default=str) + "\n")
            print(f"figures: {args.json}")
        if args.keep:
            print(f"kept: {tmp} (evolve.py history/report --repo {tmp}/<mode>/repo)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if rows and all(r.get("ok") or r.get("skipped") for r in rows) else 1


def report(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> None:
    print(f"\n{'=' * 100}\ncommand: {command}")
    print(f"task {TASK}, {args.cycles} cycle(s), budget {args.budget_seconds:g} s, backend {args.backend}\n")
    print(table(rows))
    print("\ncands: candidates that ended with a verdict (result.json); pairs: their seed pairs (void ones too: cand/h "
          "depends on how many pairs each verdict took);\nwall s: seconds after the run's first "
          "baseline, to the end of the loop; s/pair: wall s / pairs (gates included);\nbase s: that baseline (left out of wall s and cand/h; cand/h+b counts "
          "it in); non-train timings: non-training seconds / all seconds of the\ncandidates' result.json timings "
          "(both sides); non-train wall: 1 - candidate-side train+evaluate seconds / wall s")
    for r in rows:
        if r.get("ok"):
            extra = (f"; {r['remeasured_bests']} merged best(s) re-measured ({r['remeasured_bests_s']:.0f} s, "
                     "inside wall s)" if r["remeasured_bests"] else "")
            mean = r["mean_result_non_training_share"]
            print(f"  {r['mode']}: verdicts {r['verdicts']}; mean of result.json non_training_share "
                  f"{_num(mean, '.1%')}; stop: {r['stop_reason']}{extra}; run {r['run_id']}")
    for r in rows:
        if r.get("ok") and r["mode"] == "ray":
            o = r["overhead"]
            ray_s = o["parts"]["executor"]
            print(f"ray overhead per task, what the executor adds (queued_s + round_trip_s - the node's cascade_s; "
                  f"target < {TARGET_OVERHEAD_S:g} s): " + (
                      f"{_stats(ray_s)}, n {len(ray_s)}: {'MET' if max(ray_s) < TARGET_OVERHEAD_S else 'not met'} (max)"
                      if ray_s else "not measured (no cascade_s in the placements)"))
            fresh, warm = (o.get("workers") or {}).get("fresh"), (o.get("workers") or {}).get("warm")
            if fresh or warm:
                print(f"  by worker: fresh (Ray started the process for this task) {len(fresh or [])}"
                      + (f" ({_stats(fresh)})" if fresh else "") + f"; warm {len(warm or [])}"
                      + (f" ({_stats(warm)})" if warm else ""))
            ship = o.get("shipping") or {}
            if ship.get("bytes_sent"):
                print(f"  of it, on the node: unpack median {statistics.median(ship['unpack_s']):.3f} s, collect "
                      f"median {statistics.median(ship['collect_s']):.3f} s, files sent back median "
                      f"{statistics.median(ship['bytes_sent']) / 1e6:.1f} MB")
            print(f"  all time outside the stage commands, as for local slots: {describe_overhead(o)}")
    shares = [(r["mode"], r[k], k.removeprefix("non_training_")) for r in rows if r.get("ok")
              for k in ("non_training_timings", "non_training_wall") if r[k] is not None]
    if shares:
        print(f"non-training share (target < {TARGET_NON_TRAINING:.0%}): " + "; ".join(
            f"{m} {view} {v:.1%} {'MET' if v < TARGET_NON_TRAINING else 'not met'}" for m, v, view in shares))
    up = speedup(rows)
    print(f"speedup parallel/serial, candidates per hour after the baseline (target >= {TARGET_SPEEDUP:g}x): "
          + ("n/a (needs both serial and parallel figures)" if up is None
             else f"{up:.2f}x {'MET' if up >= TARGET_SPEEDUP else 'not met'}"))
    by = {r["mode"]: r for r in rows if r.get("ok")}
    if by.get("serial", {}).get("seconds_per_pair") and by.get("parallel", {}).get("seconds_per_pair"):
        print(f"  per seed pair (wall s / pairs, which does not depend on how many pairs the verdicts took): "
              f"{by['serial']['seconds_per_pair'] / by['parallel']['seconds_per_pair']:.2f}x")
    same = equal_work(rows)
    if same:
        print(f"  per candidate at equal verdict work ({same['pairs_per_verdict']:.2f} pairs per verdict, the two runs' "
              f"pooled mean; each mode's own mean pair wall s and seconds per candidate outside pairs): serial "
              f"{same['per_hour']['serial']:.1f}/h, parallel {same['per_hour']['parallel']:.1f}/h: "
              f"{same['speedup']:.2f}x {'MET' if same['speedup'] >= TARGET_SPEEDUP else 'not met'}")
        for m in ("serial", "parallel"):
            print(f"    {m}: mean pair wall {by[m]['pair_wall_s']:.1f} s, outside pairs "
                  f"{by[m]['outside_pairs_per_candidate_s']:.1f} s per candidate")


if __name__ == "__main__":
    raise SystemExit(main())
