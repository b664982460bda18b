"""The local executor (worker slots on this host) and the judge through an executor: slots and GPU ids, two
real tiny cascades side by side, the same verdict as the serial path, a lost side voiding its pair; the
bytes a remote node gets and sends back; the executor settings and flags. The Ray executor on a real
two-node cluster is in test_executor_ray.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from evolver.execute.cascade import CANCEL_REASON, CANCELLED, CascadeResult, StageRun
from evolver.execute.job import NODE_LOST, StageJob, StageOutcome
from evolver.execute.local import LocalExecutor, Slot, executor_kind
from evolver.execute.ray_executor import RAY_MISSING
from evolver.execute.shipping import collect_files, pack, unpack, write_files
from evolver.judge.pairs import EXECUTOR_STAGE, CandidateJudge, SideRun
from evolver.judge.promotion import ConfirmationRule, RunErrorControl, SelectionRule
from evolver.run.sides import ExecutorSides, side_run
from evolver.settings import load_settings
from tests.processes import alive, training_under

REPO = Path(__file__).resolve().parents[3]


def job(side: str = "parent", seed: int = 0, out: Path | str = "/nonexistent", **options: object) -> StageJob:
    return StageJob(side, seed, "selection", str(REPO), "/harness", "/data", str(out), dict(options))


# ------------------------------------------------------------------------------------------ slots


def test_local_slots_run_side_by_side_each_with_its_own_gpu() -> None:
    spans: dict[str, tuple[float, float, int, list[str]]] = {}
    lock = threading.Lock()

    def run(j: StageJob, slot: Slot, progress: object) -> StageOutcome:
        start = time.monotonic()
        time.sleep(0.6)
        with lock:
            spans[j.side] = (start, time.monotonic(), slot.index, list(j.options["gpu_ids"]))
        return StageOutcome({"ok": True}, placement={"slot": slot.index})

    ex = LocalExecutor(2, gpu_ids=["3", "5"], run=run)
    futures = [ex.submit(job(side, gpus=True)) for side in ("parent", "candidate", "third")]
    assert [f.result(timeout=10).placement["slot"] for f in futures[:2]] == [0, 1]
    futures[2].result(timeout=10)
    (p0, p1, ps, pg), (c0, c1, cs, cg), (t0, _t1, _ts, _tg) = spans["parent"], spans["candidate"], spans["third"]
    assert p0 < c1 and c0 < p1  # the two sides overlapped
    assert (ps, pg, cs, cg) == (0, ["3"], 1, ["5"])
    assert t0 >= min(p1, c1) - 0.05  # the third waited for a free slot


def test_a_slot_hands_out_no_gpu_without_gpus_and_shares_cpus_when_asked() -> None:
    ex = LocalExecutor(2, gpu_ids=["1"], cpus=4, threads=4, run=lambda j, s, p: StageOutcome({}, placement=j.options))
    placed = ex.submit(job(cpus=9, threads=9)).result(timeout=10).placement
    assert placed["gpu_ids"] == [] and placed["cpus"] == 2.0 and placed["threads"] == 2


def test_an_exception_in_a_job_reaches_the_caller_and_frees_the_slot() -> None:
    def run(j: StageJob, slot: Slot, progress: object) -> StageOutcome:
        if j.side == "bad":
            raise OSError("disk full")
        return StageOutcome({}, placement={"slot": slot.index})

    ex = LocalExecutor(1, run=run)
    with pytest.raises(OSError, match="disk full"):
        ex.submit(job("bad")).result(timeout=10)
    assert ex.submit(job("good")).result(timeout=10).placement["slot"] == 0


@pytest.mark.usefixtures("require_local_sandbox")
def test_two_real_cascades_side_by_side_on_local_slots(run_data: Path, harness: Path, tmp_path: Path) -> None:
    events: list[tuple[str, str, str]] = []

    def progress(side: str):  # noqa: ANN202
        return lambda stage, seed, status, run: events.append((side, stage, status))

    sides = ("parent", "candidate")
    jobs = [StageJob(side, 0, "selection", str(REPO), str(harness), str(run_data), str(tmp_path / side),
                     {"task": "sudoku4", "budget_seconds": 2, "backend": "local", "stages": ["train", "evaluate"],
                      "threads": 1, "cpus": 1.0, "label": f"t-{side}"}) for side in sides]
    ex = LocalExecutor(2)
    futures = [ex.submit(j, progress(j.side)) for j in jobs]
    outcomes = [f.result(timeout=240) for f in futures]
    for side, outcome in zip(sides, outcomes, strict=True):
        result = outcome.cascade()
        assert result is not None and result.ok, (result and result.reason)
        assert [s.stage for s in result.stages] == ["train", "evaluate"]
        assert (tmp_path / side / "evaluate-seed0" / "evaluate.json").is_file()
        run = side_run(outcome, "token_accuracy")
        assert run.ok and 0.0 <= (run.score or 0.0) <= 1.0 and run.evidence["executor"]["executor"] == "local"
    assert [o.placement["slot"] for o in outcomes] == [0, 1]
    first_done = min(events.index((side, "train", "ok")) for side in sides)
    assert {("parent", "train", "start"), ("candidate", "train", "start")} <= set(events[:first_done])


@pytest.mark.usefixtures("require_local_sandbox")
def test_closing_local_slots_kills_the_running_sandboxes_and_starts_nothing_more(
        run_data: Path, harness: Path, tmp_path: Path) -> None:
    """What a Ctrl-C does to the run's slots (the loop closes its executor on the way out): both sides of a
    pair training at a 60 s budget are killed at once and come back cancelled at their train stage (no
    evaluate starts), the job waiting for a slot never starts, and nothing submitted afterwards does."""
    def one(side: str, seed: int = 0) -> StageJob:
        return StageJob(side, seed, "selection", str(REPO), str(harness), str(run_data), str(tmp_path / f"{side}{seed}"),
                        {"task": "sudoku4", "budget_seconds": 60, "backend": "local", "stages": ["train", "evaluate"],
                         "threads": 1, "cpus": 1.0, "label": f"t-{side}"})

    ex = LocalExecutor(2)
    pair = ex.submit_group([one("parent"), one("candidate")])
    waiting = ex.submit(one("parent", 1))
    training = training_under(os.getpid(), count=2)
    time.sleep(1.0)
    closing = time.monotonic()
    ex.close()
    assert time.monotonic() - closing < 20
    assert not alive(training)
    for future in pair:
        result = future.result(timeout=5).cascade()
        assert result is not None and result.failed_stage == CANCELLED, result and result.reason
        assert [s.stage for s in result.stages] == ["train"] and result.reason.startswith(CANCEL_REASON)
    assert waiting.cancelled() and ex.submit(one("candidate", 1)).cancelled()


# ------------------------------------------------------------------------------------------ the judge


def deterministic(effect: float):  # noqa: ANN201
    """Scores from the seed alone (shared by both sides) plus per-side noise and the candidate's effect."""
    def score(side: str, seed: int) -> float:
        base = 0.5 + 0.05 * np.random.default_rng(seed).standard_normal()
        noise = 0.03 * np.random.default_rng([seed, side == "candidate"]).standard_normal()
        return float(base + noise + (effect if side == "candidate" else 0.0))

    def measure(side: str, seed: int, phase: str) -> SideRun:
        return SideRun(True, score(side, seed), evidence={"steps_per_second": 5.0, "steps": 100})

    def run(j: StageJob, slot: Slot, progress: object) -> StageOutcome:
        time.sleep(0.02)  # long enough for the candidate to be submitted while the parent runs
        stages = [StageRun("train", j.seed, True, "", duration_s=1.0)]
        value = score(j.side, j.seed)  # a real cascade scores both metrics
        result = CascadeResult(True, "sudoku4", [j.seed], stages,
                               scores={"exact_accuracy": [value], "token_accuracy": [value]},
                               evidence=[{"seed": j.seed, "steps_per_second": 5.0, "steps": 100}])
        return StageOutcome(result.to_dict(), placement={"executor": "local", "slot": slot.index})

    return measure, run


def judge_with(measure, **kwargs) -> CandidateJudge:  # noqa: ANN001
    return CandidateJudge(measure, selection=SelectionRule(), confirmation=ConfirmationRule(),
                          control=RunErrorControl(), first_seeds=[0, 1, 2], **kwargs)


def sides(run, workers: int = 2) -> ExecutorSides:  # noqa: ANN001
    return ExecutorSides(LocalExecutor(workers, run=run), lambda side, seed, phase: job(side, seed), "exact_accuracy")


@pytest.mark.parametrize("effect", [0.15, 0.0, -0.2])
def test_the_judge_through_an_executor_gives_the_serial_verdict(effect: float) -> None:
    measure, run = deterministic(effect)
    serial = judge_with(measure, side_by_side=False).judge()
    through = sides(run)
    parallel = judge_with(through, side_by_side=True, submit=through.submit).judge()
    assert parallel.verdict == serial.verdict and parallel.reason == serial.reason
    for phase in ("selection", "confirmation"):
        assert parallel.gains(phase) == pytest.approx(serial.gains(phase))
    assert [p.seed for p in parallel.pairs] == [p.seed for p in serial.pairs]
    assert {p.parent_evidence["executor"]["slot"] for p in parallel.pairs} == {0}
    assert {p.candidate_evidence["executor"]["slot"] for p in parallel.pairs} == {1}
    serial_through = judge_with(through, side_by_side=False, submit=through.submit).judge()
    assert serial_through.verdict == serial.verdict


def test_a_side_the_executor_lost_voids_its_pair_and_the_judgement_goes_on() -> None:
    measure, run = deterministic(0.15)

    def lossy(j: StageJob, slot: Slot, progress: object) -> StageOutcome:
        if j.seed == 1 and j.side == "candidate":
            return StageOutcome(None, placement={"executor": "ray"}, error=f"{NODE_LOST} after 3s and 2 retries")
        return run(j, slot, progress)

    through = sides(lossy)
    j = judge_with(through, submit=through.submit).judge()
    lost = [p for p in j.pairs if p.seed == 1]
    assert len(lost) == 1 and lost[0].void and NODE_LOST in lost[0].void_reason
    placement = lost[0].candidate_evidence["executor"]
    assert placement["executor"] == "ray" and set(placement) == {"executor", "round_trip_s"}
    assert j.verdict == judge_with(measure, side_by_side=False).judge().verdict, j.reason
    assert j.verdict not in ("failed", "void") and j.confirmation is not None and j.confirmation.passed
    assert 1 not in j.to_dict()["selection_seeds"]


def test_a_lost_side_becomes_a_failed_side_run_at_the_executor_stage() -> None:
    run = side_run(StageOutcome(None, error=f"{NODE_LOST} after 9s"), "exact_accuracy")
    assert not run.ok and run.failed_stage == EXECUTOR_STAGE and run.reason.startswith(NODE_LOST)


# ------------------------------------------------------------------------------------------ shipping


def test_pack_is_deterministic_and_unpack_keeps_only_regular_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "hrm" / "__pycache__").mkdir(parents=True)
    (src / "hrm" / "model.py").write_text("x = 1\n")
    (src / "hrm" / "__pycache__" / "model.pyc").write_bytes(b"\0")
    (src / "hrm" / "link.py").symlink_to("/etc/hostname")
    (src / "other.txt").write_text("not shipped\n")
    blob = pack(src, lambda p: p.parts[0] == "hrm")
    (src / "hrm" / "model.py").touch()  # a new mtime changes nothing
    assert pack(src, lambda p: p.parts[0] == "hrm") == blob
    dest = unpack(blob, tmp_path / "dest")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["hrm/model.py"]
    assert (dest / "hrm" / "model.py").stat().st_mode & 0o777 == 0o444


def test_files_sent_back_skip_staged_and_links_and_never_leave_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "train-seed0").mkdir(parents=True)
    (out / "staged" / "candidate").mkdir(parents=True)
    (out / "train-seed0" / "train.json").write_text("{}")
    (out / "train-seed0" / "big.bin").write_bytes(b"x" * 100)
    (out / "staged" / "candidate" / "copy.py").write_text("")
    (out / "train-seed0" / "link").symlink_to("/etc/passwd")
    files, too_large = collect_files(out, max_file_bytes=50)
    assert list(files) == ["train-seed0/train.json"] and too_large == ["train-seed0/big.bin"]
    write_files(files, tmp_path / "driver")
    assert (tmp_path / "driver" / "train-seed0" / "train.json").read_text() == "{}"
    for bad in ("../escape", "/abs", "a/../../b"):
        with pytest.raises(ValueError, match="refusing"):
            write_files({bad: b""}, tmp_path / "driver")
    (tmp_path / "driver" / "via").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="link"):
        write_files({"via/x": b""}, tmp_path / "driver")


def test_a_job_round_trips_as_plain_data() -> None:
    j = job(budget_seconds=5, setup_allowance_s=30, eval_cap_s=None)
    assert StageJob.from_dict(j.to_dict()) == j and j.deadline_s() == 2 * (5 + 30 + 600) + 600


def test_what_a_ray_node_imports_to_run_a_stage_job_leaves_the_judge_and_scipy_out() -> None:
    """A fresh Ray worker imports evolver.execute.ray_executor before its first job; the judge's scipy took about
    1.1 s of that, on every new worker, inside the pair's round trip."""
    code = ("import sys, evolver.execute.ray_executor, evolver.execute.job; "
            "print(sorted(m for m in ('scipy', 'evolver.judge.pairs', 'evolver.judge.promotion', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ------------------------------------------------------------------------------------------ settings


def test_executor_settings_from_environment_and_flags(tmp_path: Path) -> None:
    s = load_settings(tmp_path, environ={"HRM_EXECUTOR": "local", "HRM_WORKERS": "3", "HRM_RAY_ADDRESS": "a:6379"})
    assert (s.executor, s.workers, s.ray_address) == ("local", 3, "a:6379")
    defaults = load_settings(tmp_path, environ={})
    assert (defaults.executor, defaults.workers, defaults.ray_address) == ("auto", None, None)
    with pytest.raises(ValueError, match="workers"):
        load_settings(tmp_path, environ={"HRM_WORKERS": "0"})
    from evolver.ui.cli import build_parser

    args = build_parser().parse_args(["run", "--executor", "ray", "--ray-address", "h:1", "--workers", "4"])
    assert (args.executor, args.ray_address, args.workers) == ("ray", "h:1", 4)


def test_auto_picks_ray_only_with_an_address_and_a_missing_ray_is_a_clear_error(monkeypatch) -> None:  # noqa: ANN001
    assert executor_kind("auto", None, environ={}) == "local"
    assert executor_kind("local", "h:1", environ={}) == "local"
    monkeypatch.setattr("evolver.execute.local.ray_available", lambda: False)
    for kind, address, env in (("ray", None, {}), ("auto", "h:1", {}), ("auto", None, {"RAY_ADDRESS": "h:1"})):
        with pytest.raises(RuntimeError) as info:
            executor_kind(kind, address, environ=env)
        assert str(info.value) == RAY_MISSING and "pip install -e '.[ray]'" in RAY_MISSING
    with pytest.raises(ValueError, match="unknown executor"):
        executor_kind("slurm", None, environ={})


# ------------------------------------------------------------------------------------------ the loop


def test_the_loop_judges_through_its_executor_and_records_where_each_side_ran(user_repo: Path,
                                                                               tmp_path: Path) -> None:
    from types import SimpleNamespace

    from evolver.run.loop import EvolutionLoop
    from evolver.run.state import Baseline

    settings = load_settings(user_repo, environ={}, overrides={
        "provider": "offline", "literature": "off", "state_dir": str(tmp_path / "state"), "seeds": [0, 1],
        "gpus": True, "gpu_ids": ["4", "7"], "backend": "local", "confirm_seeds": 2})
    loop = EvolutionLoop(user_repo, settings, harness_dir=tmp_path / "harness")
    try:
        loop.ctx.baseline = Baseline("c", "t", [0, 1], [0.5, 0.5], 1.0, evidence=[{"eval_host_seconds": 10.0}])
        loop.ctx.data_dir = lambda: tmp_path / "data"  # type: ignore[method-assign]
        _measure, run = deterministic(0.15)
        jobs: list[StageJob] = []
        lock = threading.Lock()

        def recording(j: StageJob, slot: Slot, progress: object) -> StageOutcome:
            with lock:
                jobs.append(j)
            outcome = run(j, slot, progress)
            outcome.placement["gpu_ids"] = list(j.options["gpu_ids"])
            return outcome

        loop.candidates.executor = LocalExecutor(2, gpu_ids=settings.gpu_ids, run=recording)
        head = loop.ctx.record.best_commit()
        cand = SimpleNamespace(path=tmp_path / "cand", proposal_id="p1", parent=head)
        timings: dict[str, float] = {}
        judgement = loop._judge(cand, tmp_path / "out", timings)
        worktree = str(loop.ctx.record.run_worktree())
        pinned = loop.ctx.parent_tree(head)
    finally:
        loop.ctx.record.close()
    assert judgement.pairs and judgement.verdict not in ("failed", "void"), judgement.reason
    by_side = {side: [j for j in jobs if j.side == side] for side in ("parent", "candidate")}
    # the parent's jobs train a pinned copy of the commit the candidate branched from, not the run's worktree
    # (which a merge may change under them)
    assert {j.tree for j in by_side["parent"]} == {str(pinned)} and str(pinned) != worktree
    assert (pinned / "hrm").is_dir() and (pinned / ".complete").read_text().strip() == head
    assert {j.tree for j in by_side["candidate"]} == {str(tmp_path / "cand")}
    for j in jobs:
        assert j.data_dir == str(tmp_path / "data") and j.options["backend"] == "local" and j.options["gpus"]
        assert j.options["threads"] == 1 and j.options["cpus"] == 1.0
        assert j.options["eval_cap_s"] == (60.0 if j.side == "candidate" else None)
        assert j.out_dir == str(tmp_path / "out" / f"{j.phase}-seed{j.seed}-{j.side}")
        assert (Path(j.out_dir) / "cascade.json").is_file()
    pair = judgement.pairs[0]
    assert pair.parent_evidence["executor"]["gpu_ids"] == ["4"]
    assert pair.candidate_evidence["executor"]["gpu_ids"] == ["7"]
    assert timings == {"train": len(by_side["candidate"]), "parent-train": len(by_side["parent"])}


def test_a_ray_address_nobody_listens_at_fails_fast() -> None:
    import socket

    from evolver.execute.ray_executor import check_ray_address

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="no Ray head answers"):
        check_ray_address(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    with pytest.raises(ValueError, match="host:port"):
        check_ray_address("just-a-host")
    check_ray_address("auto")
    check_ray_address(None)


@pytest.mark.parametrize(("side_by_side", "cpus"), [(True, 1.0), (False, 2.0)])
def test_every_job_of_a_run_asks_for_the_cpus_of_one_pair_side(user_repo: Path, tmp_path: Path,
                                                               side_by_side: bool, cpus: float) -> None:
    """The baseline's and the gates' jobs ask for what each side of a pair asks for (half of --cpus side by
    side): they measure under the same limits, and a Ray cluster of 1-CPU nodes can schedule them."""
    from evolver.run.loop import EvolutionLoop

    settings = load_settings(user_repo, environ={}, overrides={
        "provider": "offline", "literature": "off", "state_dir": str(tmp_path / "state"), "cpus": 2.0,
        "side_by_side": side_by_side, "backend": "local"})
    loop = EvolutionLoop(user_repo, settings, harness_dir=tmp_path / "harness")
    try:
        for phase in ("baseline", "gates", "selection"):
            job = loop.ctx.stage_job(tmp_path / "tree", tmp_path / "out", ["train", "evaluate"], 0, side="parent",
                                     phase=phase)
            assert job.options["cpus"] == cpus and job.options["threads"] == loop.ctx.stage_threads()
    finally:
        loop.ctx.record.close()
