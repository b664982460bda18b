"""The evolution loop end to end, on throwaway copies of this project (never its own checkout).

Real parts: git repositories, libcst edits, the local sandbox backend running the real cascade on the real
hrm, and the real `openai` client talking to a scripted server on 127.0.0.1. Budgets are tiny, so these
tests check the mechanics (record, verdicts, merges, failures) rather than HRM's accuracy.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from evolver.run.display import LoopDisplay
from evolver.run.loop import EvolutionLoop
from evolver.settings import Settings
from tests.evolver.fake_llm_server import Step, scripted_server, valid_proposal

pytestmark = pytest.mark.usefixtures("require_local_sandbox")

PROJECT = Path(__file__).resolve().parents[3]
EVOLVE = PROJECT / "evolve.py"


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout


def _snapshot(dest: Path) -> Path:
    """A fresh git repository holding the project's current files (tracked and untracked, not ignored)."""
    files = _git(PROJECT, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    for rel in filter(None, files):
        src = PROJECT / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    _git(dest, "init", "--quiet", "--initial-branch=main")
    _git(dest, "config", "user.name", "Loop Test")
    _git(dest, "config", "user.email", "loop-test@example.invalid")
    _git(dest, "add", "--all")
    _git(dest, "commit", "--quiet", "-m", "snapshot of hrm-evolve")
    return dest


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _snapshot(tmp_path_factory.mktemp("snapshot") / "repo")


@pytest.fixture
def repo(snapshot: Path, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    _git(tmp_path, "clone", "--quiet", str(snapshot), str(path))
    _git(path, "config", "user.name", "Loop Test")
    _git(path, "config", "user.email", "loop-test@example.invalid")
    return path


def _record_files(repo: Path, run_id: str, pid: str) -> list[str]:
    out = _git(repo, "ls-tree", "--name-only", f"evolve/{run_id}/record:proposals/{run_id}/{pid}")
    return sorted(out.split())


@pytest.mark.timeout(1500)
def test_offline_main_command_runs_two_cycles_and_records_them(repo: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(EVOLVE), "--repo", str(repo), "--provider", "offline", "--cycles", "2",
           "--auto-apply", "--task", "sudoku4", "--budget-seconds", "3", "--seeds", "0,1", "--backend", "local",
           "--literature", "snapshot", "--max-seeds", "2", "--confirm-seeds", "2",
           # 3 s budgets on a shared machine swing the step rate far more than real budgets do
           "--throughput-tolerance", "10"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env, timeout=1400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    branches = _git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/evolve/").split()
    run_branches = [b for b in branches if b.endswith("/best")]
    assert len(run_branches) == 1
    run_id = run_branches[0].split("/")[1]
    assert _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"  # the user's branch is untouched
    assert _git(repo, "status", "--porcelain", "--untracked-files=no").strip() == ""

    record = f"evolve/{run_id}/record"
    assert record in branches
    pids = _git(repo, "ls-tree", "--name-only", f"{record}:proposals/{run_id}").split()
    assert len(pids) == 2
    for pid in pids:
        assert _record_files(repo, run_id, pid) == ["diff.patch", "proposal.json", "result.json"]
        result = json.loads(_git(repo, "show", f"{record}:proposals/{run_id}/{pid}/result.json"))
        assert result["verdict"] in {"merged", "rejected", "failed", "inconclusive", "void", "no-effect"}
        assert "rule" in (result.get("comparison") or {"rule": "failed before comparison"})
        if result["verdict"] == "no-effect":  # its fingerprint after smoke equals its parent's: no pair
            assert [s["stage"] for s in result["stages"]] == ["safety", "smoke"] and "judgement" not in result
        elif result["verdict"] != "failed":
            assert [s["stage"] for s in result["stages"]][:3] == ["safety", "smoke", "trainability"]
            comp = result["comparison"]
            assert comp["seeds"][:2] == [0, 1] and len(comp["candidate"]) == len(comp["baseline"]) == 2
            pairs = result["judgement"]["pairs"]
            assert {p["seed"] for p in pairs} >= {0, 1}  # the parent was measured beside it on every seed
            assert all(p["parent_evidence"].get("steps") for p in pairs if not p["void"])
            assert "promotion:" in comp["rule"]

    hist = subprocess.run([sys.executable, str(EVOLVE), "history", "--repo", str(repo), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert hist.returncode == 0, hist.stderr
    rows = json.loads(hist.stdout)
    assert sorted(r["proposal_id"] for r in rows) == sorted(pids)
    assert all(r["verdict"] for r in rows)
    # lineage only: the best branch holds the code and its merges, the bookkeeping is on the record branch
    assert "Store" not in _git(repo, "log", "--format=%s", run_branches[0])
    assert "Store" in _git(repo, "log", "--format=%s", record)
    merges = _git(repo, "log", "--first-parent", "--format=%H %P", f"main..{run_branches[0]}").splitlines()
    assert all(len(line.split()) == 3 for line in merges)  # every commit past the start is a merge


def _handicap(repo: Path) -> str:
    """Commit a base whose CPU presets cannot learn (learning rates 0); return the original function."""
    path = repo / "hrm" / "presets.py"
    text = path.read_text()
    tree = ast.parse(text)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_cpu_train")
    original = ast.get_source_segment(text, fn)
    assert original is not None and "lr=lr," in original and "puzzle_emb_lr=1e-2," in original
    broken = original.replace("lr=lr,", "lr=0.0,").replace("puzzle_emb_lr=1e-2,", "puzzle_emb_lr=0.0,")
    path.write_text(text.replace(original, broken))
    _git(repo, "commit", "--quiet", "-am", "handicap: zero learning rates")
    return original


def _settings(**kw: object) -> Settings:
    base = dict(provider="lmstudio", task="sudoku4", seeds=[0, 1], budget_seconds=4.0, cycles=2, auto_apply=True,
                backend="local", literature="off", metric="token_accuracy", margin=0.01, max_seeds=3,
                confirm_seeds=2, throughput_tolerance=10.0,
                protocol="direct")  # one scripted reply per cycle: no look request before it
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.mark.timeout(1500)
def test_scripted_llm_garbage_is_recorded_and_a_helpful_change_is_merged(repo: Path) -> None:
    original = _handicap(repo)
    fix = valid_proposal(
        "restore-learning-rates", title="Restore the CPU learning rates",
        edits=[{"op": "replace_function", "file": "hrm/presets.py", "target": "_cpu_train", "code": original}],
        citations=[])
    script = [Step(content="{not json at all"), Step(content='{"id": "x"'), Step(content="[]"),
              Step(content=json.dumps(fix))]
    with scripted_server(script) as server:
        # A large, consistent gain (a model that learns against one that cannot) passes even the small-sample
        # bounds of 2-3 selection pairs and 2 confirmation pairs; the mechanics are what this test is about.
        settings = _settings(host=server.url + "/v1", model="scripted", budget_seconds=8.0)
        loop = EvolutionLoop(repo, settings, display=LoopDisplay(live=False))
        outcomes = loop.run()
    assert [o.verdict for o in outcomes] == ["invalid", "merged"], [(o.verdict, o.reason) for o in outcomes]
    assert "valid" in outcomes[0].reason.lower() or "json" in outcomes[0].reason.lower()
    failed_log = (loop.ctx.run_dir / "failed_proposals.jsonl").read_text().splitlines()
    assert len(failed_log) == 1
    refused = json.loads(failed_log[0])
    assert refused["attempts"] and all(a.get("raw_text") is not None for a in refused["attempts"])
    assert "{not json at all" in refused["attempts"][0]["raw_text"]  # the raw reply is kept for review
    hist = subprocess.run([sys.executable, str(EVOLVE), "history", "--repo", str(repo), "--run-id", loop.ctx.run_id,
                           "--json"], capture_output=True, text=True, timeout=120)
    assert hist.returncode == 0, hist.stderr
    verdicts = {r["proposal_id"]: r["verdict"] for r in json.loads(hist.stdout)}
    assert verdicts.get("cycle-1") == "invalid" and verdicts.get("restore-learning-rates") == "merged"
    merged = outcomes[1]
    assert merged.delta is not None and merged.delta > 0.01
    result = loop.ctx.store.result("restore-learning-rates")
    assert result is not None and result["comparison"]["confirmation_seeds"]
    assert min(result["comparison"]["confirmation_seeds"]) >= 100_000  # fresh seeds, never used in selection
    assert loop.ctx.control.attempts == 1 and loop.ctx.control.passes == 1
    run_branch = f"evolve/{loop.ctx.run_id}/best"
    merge = _git(repo, "log", "--merges", "-1", "--format=%B", run_branch)
    assert merge.startswith("Restore the CPU learning rates\n")  # the subject is the proposal's title
    assert "Proposal-Id: restore-learning-rates" in merge and "Verdict: merged" in merge
    assert "\nDelta: " in merge and "\nMetric: token_accuracy" in merge and "Confirmation-Seeds: 100" in merge
    assert "Selection (token_accuracy" in merge and "Confirmation on fresh seeds" in merge and "Rule: " in merge
    # the refused reply travels with the record branch, not only the state directory
    assert "cycle-1.json" in _git(repo, "ls-tree", "--name-only", f"evolve/{loop.ctx.run_id}/record:replies/{loop.ctx.run_id}")
    # the merged tree carries the fix, and the user's main still has the handicap
    assert "lr=lr," in _git(repo, "show", f"{run_branch}:hrm/presets.py")
    assert "lr=0.0," in (repo / "hrm" / "presets.py").read_text()
    # the second request re-asked with the validation error of the first reply
    assert any("JSON" in m["content"] or "json" in m["content"] for m in server.received[1].messages[2:])


def test_unreachable_llm_stops_before_any_compute(repo: Path) -> None:
    settings = _settings(host="http://127.0.0.1:9/v1", model="scripted", cycles=1)
    loop = EvolutionLoop(repo, settings, display=LoopDisplay(live=False))
    outcomes = loop.run()
    assert outcomes == [] and loop.ctx.baseline is None
    assert loop.stop_reason is not None
    assert "cannot reach http://127.0.0.1:9/v1" in loop.stop_reason and "LM Studio" in loop.stop_reason


def test_unreachable_llm_falls_back_when_configured(repo: Path) -> None:
    settings = _settings(host="http://127.0.0.1:9/v1", model="scripted", cycles=0, fallback_provider="offline",
                         max_runtime_seconds=0.001)
    loop = EvolutionLoop(repo, settings, display=LoopDisplay(live=False))
    loop._preflight()
    assert loop.ctx.settings.provider == "offline" and loop.provider.name == "offline"


@pytest.mark.timeout(1200)
def test_interrupted_candidate_is_finished_on_resume_without_redoing_the_baseline(repo: Path) -> None:
    settings = _settings(provider="offline", seeds=[0, 1], budget_seconds=3.0, cycles=1, metric="exact_accuracy",
                         max_seeds=2)
    first = EvolutionLoop(repo, settings, display=LoopDisplay(live=False))
    first.measure_baseline()
    # Crash point: the proposal is applied, committed and stored, the cascade never ran.
    proposal, _ = first.propose(1)
    cand = first.ctx.record.create_candidate(proposal.id)
    from edits.engine import apply_edits

    apply_edits(cand.path, list(proposal.edits), first.ctx.policy)
    first.ctx.record.commit_candidate(cand, proposal)
    first.ctx.store.save_proposal(proposal, first.ctx.record.diff(cand))
    assert first.ctx.store.result(proposal.id) is None
    first.ctx.record.close()

    resumed_settings = _settings(provider="offline", seeds=[0, 1], budget_seconds=3.0, cycles=0,
                                 max_runtime_seconds=0.001, metric="exact_accuracy", max_seeds=2)
    second = EvolutionLoop(repo, resumed_settings, run_id=first.ctx.run_id, display=LoopDisplay(live=False))
    outcomes = second.run()
    assert second.ctx.baseline is not None and second.ctx.baseline.cached
    assert [o.proposal_id for o in outcomes] == [proposal.id]
    result = second.ctx.store.result(proposal.id)
    # 2 pairs at 3 s: no merge; an entry without effect on the CPU presets ends no-effect after smoke
    assert result is not None and result["verdict"] in ("inconclusive", "rejected", "no-effect")
    assert [s["stage"] for s in result["stages"]][:2] == ["safety", "smoke"]
    assert second.ctx.store.ids() == [proposal.id]  # nothing redone, nothing new started


def test_the_main_command_screens_a_batch_for_real_and_records_the_screen(repo: Path) -> None:
    """--screen 2 with real training: both candidates train a short screen pair on the batch's seed at the
    --screen-budget, the better one is judged, the other screened out (no audit); the report shows it."""
    cmd = [sys.executable, str(EVOLVE), "--repo", str(repo), "--provider", "offline", "--cycles", "2",
           "--auto-apply", "--budget-seconds", "4", "--seeds", "0,1", "--backend", "local", "--literature", "off",
           "--max-seeds", "2", "--confirm-seeds", "2", "--throughput-tolerance", "10", "--screen", "2",
           "--screen-budget", "2", "--screen-audit", "0"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                          timeout=1400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_id = next(b for b in _git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/evolve/").split()
                  if b.endswith("/best")).split("/")[1]
    record = f"evolve/{run_id}/record"
    pids = _git(repo, "ls-tree", "--name-only", f"{record}:proposals/{run_id}").split()
    results = {pid: json.loads(_git(repo, "show", f"{record}:proposals/{run_id}/{pid}/result.json")) for pid in pids}
    screened = {pid: r["screen"] for pid, r in results.items() if r.get("screen")}
    if len(screened) < 2:  # a candidate that failed its gates (or ended no-effect) takes no place in the batch
        assert all(r["verdict"] in ("failed", "no-effect") for pid, r in results.items() if pid not in screened), results
        pytest.skip("a catalogue entry failed its gates; the batch had one member")
    assert {s["seed"] for s in screened.values()} == {200_000}
    assert {s["budget_seconds"] for s in screened.values()} == {2.0}
    assert sorted(s["rank"] for s in screened.values() if s["rank"] is not None) in ([1, 2], [1])
    kept = [pid for pid, s in screened.items() if s["kept"]]
    dropped = [pid for pid, s in screened.items() if not s["kept"]]
    assert len(kept) == 1 and len(dropped) == 1
    assert results[dropped[0]]["verdict"] == "screened-out" and "judgement" not in results[dropped[0]]
    assert results[kept[0]].get("judgement") or results[kept[0]]["verdict"] == "failed"
    fid = json.loads((repo / ".hrm-evolve" / "runs" / run_id / "fidelity.json").read_text())
    assert fid["screen"]["screened"] == 2 and fid["screen"]["kept"] == 1
    hist = subprocess.run([sys.executable, str(EVOLVE), "history", "--repo", str(repo), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert hist.returncode == 0 and "screened-out" in hist.stdout, hist.stdout + hist.stderr



def _training_sandboxes(backend: str, owner: int, count: int = 2, timeout: float = 240.0) -> Callable[[], list[str]]:
    """Wait until ``count`` sandboxes of the process ``owner`` train; a function giving the ones still there
    (docker: its containers by their owner label, running or not, so a container left behind counts)."""
    import time

    from tests.processes import training_under, wait_gone

    if backend == "local":
        pids = training_under(owner, count=count, timeout=timeout)
        return lambda: [str(p) for p in wait_gone(pids, 5)]
    import docker

    from sandbox.docker_backend import PID_LABEL

    client = docker.from_env()
    mine = {"label": f"{PID_LABEL}={owner}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = client.containers.list(filters=mine)
        if sum("smoketests train" in " ".join(c.attrs["Config"]["Cmd"] or []) for c in running) >= count:
            return lambda: [c.name for c in client.containers.list(all=True, filters=mine)]
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} containers of pid {owner} ever trained")


@pytest.mark.parametrize("backend", [pytest.param("docker", marks=pytest.mark.docker), "local"])
def test_ctrl_c_stops_the_run_at_once_leaves_no_sandbox_behind_and_says_how_to_resume(backend: str,
                                                                                       tmp_path: Path) -> None:
    """SIGINT (what Ctrl-C sends) while the baseline's two seeds train side by side at a 60 s budget: the
    main command ends within seconds, its sandboxes are gone with it (a container is removed, not left to
    train on after the run), and it prints the resume command."""
    import signal
    import time

    if backend == "docker":
        from tests.sandbox.conftest import require_docker

        require_docker()
    repo = _snapshot(tmp_path / "repo")
    cmd = [sys.executable, str(EVOLVE), "--repo", str(repo), "--provider", "offline", "--cycles", "2",
           "--auto-apply", "--budget-seconds", "60", "--seeds", "0,1", "--backend", backend, "--literature", "off",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        left = _training_sandboxes(backend, proc.pid)
        time.sleep(1.0)
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert time.monotonic() - interrupted < 45, out[-3000:]
    assert not left(), (left(), out[-3000:])
    assert "interrupted; nothing recorded is lost" in out and "--resume" in out, out[-3000:]
