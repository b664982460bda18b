"""The loop's side of edit formats and repairs, on a real git repository in a tmp dir and the scripted server.

`EvolutionLoop.propose` asks in the run's edit format (fenced by default for lmstudio) and repairs a stale
edit before the candidate exists; the candidate evaluator's gate-repair hook reads a crashed stage's error and
hands it to the loop's repair turn. No sandbox runs here: the gates' result is built by hand.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from evolver.execute.cascade import CascadeResult, StageRun
from evolver.propose.providers.reply_formats import render_fenced
from evolver.run.display import LoopDisplay
from evolver.run.loop import EvolutionLoop
from evolver.settings import Settings
from proposals.schema import load_proposal
from tests.evolver.fake_llm_server import Step, scripted_server, valid_proposal

PROJECT = Path(__file__).resolve().parents[3]
STALE = {"op": "search_replace", "file": "hrm/presets.py", "search": "        lr_warmup_steps=10,",
         "replace": "        lr_warmup_steps=50,"}
FRESH = {**STALE, "search": "        lr_warmup_steps=100,"}


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    shutil.copytree(PROJECT / "hrm", path / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    _git(path.parent, "init", "--quiet", "--initial-branch=main", str(path))
    _git(path, "config", "user.name", "Repair Test")
    _git(path, "config", "user.email", "repair-test@example.invalid")
    _git(path, "add", "--all")
    _git(path, "commit", "--quiet", "-m", "hrm")
    return path


def fenced(edit: dict[str, object], pid: str = "warmup") -> str:
    return render_fenced(load_proposal(valid_proposal(pid, edits=[edit], citations=[])))


def make_loop(repo: Path, url: str, **kw: object) -> EvolutionLoop:
    kw.setdefault("protocol", "direct")  # one request, then the repairs (the look step has its own test below)
    settings = Settings(provider="lmstudio", model="scripted", host=f"{url}/v1", literature="off", backend="local",
                        llm_retries=0, context_tokens=16384, **kw)  # type: ignore[arg-type]
    return EvolutionLoop(repo, settings, display=LoopDisplay(live=False))


def test_the_loop_asks_fenced_by_default_and_repairs_a_stale_edit_before_the_candidate(repo: Path) -> None:
    with scripted_server([Step(content=fenced(STALE)), Step(content=fenced(FRESH))]) as server:
        loop = make_loop(repo, server.url)
        try:
            proposal, info = loop.propose(1)
        finally:
            loop.ctx.record.close()
        bodies = [r.body for r in server.received]
    assert proposal.edits[0].search == FRESH["search"]  # type: ignore[union-attr]
    assert info["edit_format"] == "fenced" and "response_format" not in bodies[0]
    assert [t["outcome"] for t in info["repairs"]] == ["applies"]
    assert "search text not found" in info["repairs"][0]["errors"][0]
    assert info["transcript"][0]["raw_text"] == fenced(STALE)  # the first reply stays in the record too


def test_look_then_edit_in_the_fenced_format_with_a_repair_turn(repo: Path) -> None:
    """The whole proposal side in one cycle: a look request names the symbols, the edit request carries their
    source and is answered in the fenced format with stale search text, and one repair turn fixes it."""
    look = json.dumps({"idea": "a shorter warmup", "symbols": ["_cpu_train"]})
    with scripted_server([Step(content=look), Step(content=fenced(STALE)), Step(content=fenced(FRESH))]) as server:
        loop = make_loop(repo, server.url, protocol="look-then-edit")
        try:
            proposal, info = loop.propose(1)
        finally:
            loop.ctx.record.close()
        bodies = [r.body for r in server.received]
    assert len(bodies) == 3 and info["protocol"] == "look-then-edit" and info["edit_format"] == "fenced"
    assert info["look"]["found"] == ["hrm/presets.py:_cpu_train"]
    edit_request = " ".join(m["content"] for m in bodies[1]["messages"])
    assert "def _cpu_train(" in edit_request and "a shorter warmup" in edit_request
    assert "response_format" not in bodies[1]
    assert [t["outcome"] for t in info["repairs"]] == ["applies"]
    assert proposal.edits[0].search == FRESH["search"]  # type: ignore[union-attr]


def test_the_json_setting_and_zero_repair_turns_are_honoured(repo: Path) -> None:
    text = load_proposal(valid_proposal("warmup", edits=[STALE], citations=[])).model_dump_json()
    with scripted_server([Step(content=text)]) as server:
        loop = make_loop(repo, server.url, edit_format="json", repair_turns=0)
        try:
            proposal, info = loop.propose(1)
        finally:
            loop.ctx.record.close()
        assert len(server.received) == 1 and "response_format" in server.received[0].body
    assert info["edit_format"] == "json" and "repairs" not in info
    assert proposal.edits[0].search == STALE["search"]  # type: ignore[union-attr]  # recorded invalid at apply


def _gates(stage: str, reason: str, tail: str) -> CascadeResult:
    run = StageRun(stage=stage, seed=0, ok=False, reason=reason, log_tail=tail)
    return CascadeResult(ok=False, task="sudoku4", seeds=[0], stages=[StageRun("safety", None, True, "")] + [run],
                         failed_stage=stage, reason=reason)


def test_a_smoke_crash_goes_to_the_loops_repair_turn_and_a_failed_check_does_not(repo: Path) -> None:
    fixed = fenced({**FRESH, "replace": "        lr_warmup_steps=60,"})
    with scripted_server([Step(content=fenced(FRESH)), Step(content=fixed)]) as server:
        loop = make_loop(repo, server.url)
        try:
            proposal, _ = loop.propose(1)
            cand = SimpleNamespace(parent=loop.ctx.record.best_commit(), proposal_id=proposal.id)
            result: dict[str, object] = {"proposal_id": proposal.id}
            check = _gates("trainability", "loss did not fall: 2.31 -> 2.30", "")
            assert loop.candidates._gate_repair(cand, proposal, check, result, None) is None
            assert len(server.received) == 1 and "gate_repair" not in result
            crash = _gates("smoke", "forward failed: RuntimeError: boom",
                           "Traceback (most recent call last):\n  File \"hrm/model.py\", line 3\nRuntimeError: boom")
            repaired = loop.candidates._gate_repair(cand, proposal, crash, result, None)
            message = server.received[1].messages[-1]["content"]
        finally:
            loop.ctx.record.close()
    assert repaired is not None and repaired.applies and repaired.proposal.id == "warmup-r"
    assert repaired.proposal.edits[0].replace == "        lr_warmup_steps=60,"  # type: ignore[union-attr]
    assert "failed the smoke check" in message and "RuntimeError: boom" in message
    assert "Traceback (most recent call last)" in message and "Current source of '_cpu_train'" in message
    stored = result["gate_repair"]
    assert isinstance(stored, dict) and stored["repaired_as"] == "warmup-r" and stored["applies"] is True
    assert stored["turns"][0]["trigger"] == "gate:smoke"


@pytest.mark.timeout(900)
@pytest.mark.usefixtures("require_local_sandbox")
def test_a_real_smoke_crash_is_repaired_once_as_a_new_candidate(tmp_path: Path) -> None:
    """The real gates in the local sandbox: the first proposal crashes smoke, its one repair turn (shown the
    crash) crashes too, and there it ends: two failed candidates, linked both ways in the record."""
    from evolver.run.baseline import Baseline
    from tests.evolver.run.test_loop_e2e import _snapshot

    repo = _snapshot(tmp_path / "whole")
    crash = {"op": "replace_function", "file": "hrm/layers.py", "target": "find_multiple",
             "code": "def find_multiple(value: int, multiple: int) -> int:\n    raise RuntimeError('boom one')\n"}
    again = {**crash, "code": crash["code"].replace("boom one", "boom two")}
    with scripted_server([Step(content=fenced(crash, "crash")), Step(content=fenced(again, "crash"))]) as server:
        loop = make_loop(repo, server.url, seeds=[0], budget_seconds=3.0)
        try:
            proposal, info = loop.propose(1)
            loop.ctx.baseline = Baseline(commit=loop.ctx.record.best_commit(), tree="-", seeds=[0], scores=[0.5], seconds=1.0)
            outcome = loop.evaluate_candidate(proposal, 1, info)
            first, second = loop.ctx.store.result("crash"), loop.ctx.store.result("crash-r")
        finally:
            loop.ctx.record.close()
        asked = [r.messages[-1]["content"] for r in server.received]
    assert len(asked) == 2 and "failed the smoke check" in asked[1] and "boom one" in asked[1]
    assert [(o.proposal_id, o.verdict) for o in loop.ctx.outcomes] == [("crash", "failed"), ("crash-r", "failed")]
    assert outcome.proposal_id == "crash-r" and "boom two" in outcome.reason
    assert first is not None and first["failed_stage"] == "smoke" and "boom one" in first["reason"]
    assert first["gate_repair"]["repaired_as"] == "crash-r"
    assert first["gate_repair"]["turns"][0]["trigger"] == "gate:smoke"
    assert second is not None and second["repair_of"] == "crash" and second["failed_stage"] == "smoke"
    assert second["provider"]["repairs"][-1]["outcome"] == "applies"


def test_the_offline_catalogue_is_asked_as_before(repo: Path) -> None:
    settings = Settings(provider="offline", literature="off", backend="local")
    loop = EvolutionLoop(repo, settings, display=LoopDisplay(live=False))
    try:
        proposal, info = loop.propose(1)
    finally:
        loop.ctx.record.close()
    assert proposal.edits and info["edit_format"] == "json" and "repairs" not in info
