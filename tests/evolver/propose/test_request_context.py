"""What the LLM sees: task facts, the resolved preset, whole source within the budget, look-then-edit, history.

Requests go through the real openai client to the scripted server on 127.0.0.1; hrm/ is a copy of this
repository's in a tmp dir, read statically (never imported)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evolver.propose.history_lines import history_item
from evolver.propose.literature import literature_context
from evolver.propose.look import LOOK_SCHEMA, MAX_SYMBOLS, RequestContext, ask_for_proposal, parse_look
from evolver.propose.prompt import HistoryItem
from evolver.propose.providers import ProviderError, get_provider
from evolver.propose.source_pack import SourceIndex, pack_source
from evolver.propose.task_facts import resolve_preset, task_facts
from evolver.run.display import LoopDisplay
from evolver.run.loop import EvolutionLoop
from evolver.run.state import Baseline
from evolver.settings import Settings, load_settings
from proposals.schema import proposal_json_schema
from tests.evolver.fake_llm_server import Step, scripted_server, valid_proposal_text

REPO = Path(__file__).resolve().parents[3]
FAST = {"timeout": 5.0, "max_retries": 1, "backoff_s": 0.01}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "parent"
    shutil.copytree(REPO / "hrm", root / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"seq_len": 16, "vocab_size": 6, "pad_id": 0}))
    return root


def parent_baseline() -> Baseline:
    return Baseline("abc1234567890", "tree", [0, 1, 2], [0.61, 0.63, 0.60], 120.0,
                    evidence=[{"seed": s, "steps": 300 + 10 * s, "steps_per_second": 7.5 + s * 0.25} for s in range(3)])


def request_context(tree: Path) -> RequestContext:
    facts = task_facts("sudoku4", "token_accuracy", 40.0, baseline=parent_baseline(),
                       data_dir=tree.parent / "data", eval_segments=4, n_train=2000)
    return RequestContext(tree, "sudoku4", facts)


def test_resolved_config_is_read_statically_with_where_each_value_is_set(tree: Path) -> None:
    imported_before = "hrm.presets" in sys.modules
    presets = tree / "hrm" / "presets.py"
    presets.write_text(presets.read_text().replace("hidden_size=64,", "hidden_size=96,"))
    resolved = resolve_preset(tree, "sudoku4")
    assert not resolved.error
    assert resolved.builder == "_sudoku4"
    hidden = resolved.settings["model.hidden_size"]
    assert hidden.value == 96 and hidden.source == "_cpu_model (hrm/presets.py)"  # the candidate's tree, not ours
    assert resolved.settings["model.vocab_size"].value == 6
    assert "_sudoku4" in resolved.settings["model.vocab_size"].origin
    assert resolved.settings["model.rope_theta"].source == "ModelConfig defaults (hrm/config.py)"
    assert resolved.settings["train.lr"].value == 0.003
    assert resolved.settings["train.beta2"].value == 0.95
    assert resolved.settings["data"].value["min_clues"] == [4, 5]
    gpu = resolve_preset(tree, "maze30-gpu")  # a builder that assigns an attribute after the call
    assert gpu.settings["train.augment"].value is False and gpu.settings["train.augment"].source.startswith("_maze30_gpu")
    text = resolved.render()
    assert "model.hidden_size=96" in text and "ModelConfig defaults (hrm/config.py): model.rope_theta=10000.0" in text
    assert ("hrm.presets" in sys.modules) == imported_before  # never imported by the reader


def test_a_get_preset_that_changes_the_result_is_flagged(tree: Path) -> None:
    assert resolve_preset(tree, "sudoku4").note == ""
    presets = tree / "hrm" / "presets.py"
    text = presets.read_text()
    assert "    return copy.deepcopy(builder())\n" in text
    presets.write_text(text.replace("    return copy.deepcopy(builder())\n",
                                    "    run = copy.deepcopy(builder())\n    run.train.lr = 1e-3\n    return run\n"))
    resolved = resolve_preset(tree, "sudoku4")
    assert "run.train.lr" in resolved.note and "caution: get_preset does more" in resolved.render()


def test_a_builder_the_reader_does_not_follow_is_reported_not_guessed(tree: Path) -> None:
    presets = tree / "hrm" / "presets.py"
    presets.write_text(presets.read_text().replace(
        "    return RunConfig(\n        task=\"sudoku4\",",
        "    if __import__('os').environ.get('X'):\n        pass\n    return RunConfig(\n        task=\"sudoku4\",", 1))
    resolved = resolve_preset(tree, "sudoku4")
    assert resolved.error and "_sudoku4" in resolved.error
    assert "not available" in resolved.render()


def _direct(tree: Path, context: int) -> tuple[dict, RequestContext, dict, int]:
    ctx = request_context(tree)
    history = [HistoryItem("c1-p1", "More L cycles", "rejected", 0.004, gain_interval=(-0.01, 0.018), pairs=3,
                           idea="Deeper recursion", files=("hrm/presets.py",), symbols=("_cpu_model",))]
    with scripted_server([Step(content=valid_proposal_text())]) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", context_tokens=context, **FAST)
        reply, prompt, record, _ = ask_for_proposal(provider, ctx, [], history, proposal_json_schema(),
                                                 metric="token_accuracy", seed=1, protocol="direct")
        budget = provider.prompt_budget()
        assert budget is not None and prompt.prompt_tokens <= budget
        sent = server.received[0].messages
    assert reply.proposal.id == "more-l-cycles" and len(server.received) == 1
    return {"user": sent[1]["content"], "system": sent[0]["content"]}, ctx, record, budget


def _assert_facts(user: str) -> None:
    for fact in ("task: sudoku4 (sequence length 16, vocabulary 6 tokens", "training budget: 40 s",
                 "metric: token_accuracy on held-out puzzles, after 4 ACT segments",
                 "mean 0.6133, seed-to-seed sd 0.0153 over seeds [0, 1, 2]",
                 "310 optimiser steps in the budget at 7.75 steps/s",
                 "Resolved configuration of preset 'sudoku4'", "_cpu_model (hrm/presets.py): model.vocab_size=6",
                 "model.hidden_size=64", "TrainConfig defaults (hrm/config.py): train.beta1=0.9"):
        assert fact in user, fact


@pytest.mark.parametrize("context", [4096, 32768])
def test_request_carries_facts_config_and_whole_source(tree: Path, context: int) -> None:
    sent, ctx, record, budget = _direct(tree, context)
    user = sent["user"]
    _assert_facts(user)
    pack = ctx.last_pack
    assert pack is not None and pack.included
    units = {f"{u.file}:{u.qualname}": u for u in ctx.index.units}
    for key in pack.included:  # every definition it points to is there whole, never cut
        assert units[key].text in user, key
    assert "hrm/presets.py:_sudoku4" in pack.included and "hrm/presets.py:_cpu_model" in pack.included
    assert "## Not shown above" in user or not pack.omitted
    assert "mean gain +0.0040 (95% interval -0.0100 to +0.0180, 3 seed pairs)" in user
    if context == 32768:
        assert pack.core_complete and record["direct_pack"]["core_missing"] == []
        for key in ("hrm/model.py:HRM.forward", "hrm/model.py:HRMInner.forward", "hrm/losses.py:ACTLossHead.forward",
                    "hrm/train.py:optimization_step", "hrm/optim.py:AdamATan2.step"):
            assert units[key].text in user, key
    else:
        assert not pack.core_complete  # at 4096 only the most relevant definitions fit
        assert units["hrm/model.py:HRM.forward"].text not in user
        assert "## Not shown above (names by file; ask for them by name)" in user  # ... the rest is named
        assert "hrm/model.py: HRM.forward, HRM.initial_carry, HRMInner.forward" in user


def test_packer_never_cuts_a_definition_and_ranks_the_preset_first(tree: Path) -> None:
    index = SourceIndex.build(tree)
    for budget in (0, 12, 60, 300, 900, 5000, 40000):
        pack = pack_source(tree, budget, task="sudoku6", index=index)
        assert pack.tokens <= budget
        for unit in index.units:
            key = f"{unit.file}:{unit.qualname}"
            assert (key in pack.included) == (unit.render() in pack.text)
    assert "## Not shown above (signatures; ask for them by name)\nhrm/" in pack.text  # all signatures fit at 40000
    small = pack_source(tree, 900, task="sudoku6", index=index)
    assert small.included[0] == "hrm/presets.py:_sudoku6"
    focused = pack_source(tree, 900, task="sudoku6", index=index, focus=["SwiGLU.forward"])
    assert focused.included[0] == "hrm/layers.py:SwiGLU"  # a small class is shown whole
    assert pack_source(tree, 900, task="sudoku6", index=index, focus=["HRMInner.forward"]).included[0] == (
        "hrm/model.py:HRMInner.forward")


def test_look_then_edit_end_to_end_through_the_provider(tree: Path) -> None:
    ctx = request_context(tree)
    look = json.dumps({"idea": "Gate the attention output with a learned sigmoid.",
                       "symbols": ["Attention.forward", "Attention.__init__", "NoSuchThing"]})
    script = [Step(content="sure, here you go"), Step(content=look), Step(content=valid_proposal_text("gated"))]
    with scripted_server(script) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", context_tokens=4096, **FAST)
        papers = literature_context(4, state_dir=None, offline=True)
        reply, prompt, record, _ = ask_for_proposal(provider, ctx, papers, [], proposal_json_schema(),
                                                 metric="token_accuracy", seed=2, protocol="auto")
        budget = provider.prompt_budget()
        received = list(server.received)
    assert reply.proposal.id == "gated"
    assert record["protocol"] == "look-then-edit" and record["protocol_setting"] == "auto"
    assert record["direct_pack"]["core_missing"]  # why auto chose it
    assert len(received) == 3
    first = received[0].body
    assert first["response_format"]["json_schema"]["schema"] == LOOK_SCHEMA
    _assert_facts(received[0].messages[1]["content"])
    assert f"arXiv:{papers[0].arxiv_id}" in received[0].messages[1]["content"]  # the idea can be grounded
    assert received[1].messages[-1]["role"] == "user" and "not valid" in received[1].messages[-1]["content"]
    look_rec = record["look"]
    assert look_rec["idea"].startswith("Gate the attention") and look_rec["attempts"] == 2
    assert look_rec["unknown"] == ["NoSuchThing"]
    assert look_rec["found"] == ["hrm/layers.py:Attention.forward", "hrm/layers.py:Attention.__init__"]
    # at 4096 tokens the first named symbol is shown whole; the record says which of them fitted
    assert look_rec["shown_in_full"][0] == "hrm/layers.py:Attention.forward"
    assert set(look_rec["shown_in_full"]) <= set(look_rec["found"])
    assert ctx.last_pack is not None and ctx.last_pack.included[0] == "hrm/layers.py:Attention.forward"
    assert [a["outcome"] for a in look_rec["transcript"]] == ["refused", "accepted"]
    assert look_rec["prompt_tokens"] <= budget and prompt.prompt_tokens <= budget
    edit_user = received[2].messages[1]["content"]
    units = {f"{u.file}:{u.qualname}": u for u in ctx.index.units}
    for key in look_rec["found"]:
        assert (units[key].text in edit_user) == (key in look_rec["shown_in_full"])
    assert "carry out this idea, chosen after a first look: Gate the attention" in edit_user
    _assert_facts(edit_user)
    json.dumps(record)  # stored with the candidate as JSON


def test_direct_protocol_and_the_setting(tree: Path) -> None:
    assert load_settings(None, environ={"HRM_PROTOCOL": "look-then-edit"}).protocol == "look-then-edit"
    with pytest.raises(ValueError):
        load_settings(None, environ={"HRM_PROTOCOL": "sideways"})
    assert parse_look(json.dumps({"idea": "x", "symbols": [f"s{i}" for i in range(20)]}))[1] == [
        f"s{i}" for i in range(MAX_SYMBOLS)]
    assert parse_look("{}")[2]


def test_history_lines_teach() -> None:
    proposal = {"title": "Wider model", "rationale": "A wider hidden state " + "holds more. " * 40,
                "edits": [{"op": "set_value", "file": "hrm/presets.py", "target": "_cpu_model", "value": "96"},
                          {"op": "replace_function", "file": "hrm/model.py", "target": "HRMBlock.forward", "code": ""}]}
    judged = history_item("c2-p1", proposal, {"verdict": "rejected", "comparison": {
        "mean_gain": 0.01, "gains": [0.02, -0.01, 0.02]}})
    line = judged.line()
    assert line.startswith("- [c2-p1] Wider model: rejected mean gain +0.0100 (95% interval -0.0330 to +0.0530, "
                           "3 seed pairs)")
    assert "score" not in line
    assert "  idea: A wider hidden state holds more." in line and len(judged.idea) <= 200
    assert "  edited: hrm/presets.py, hrm/model.py (_cpu_model, HRMBlock.forward)" in line
    failed = history_item("c3-p1", proposal, {"verdict": "failed", "failed_stage": "smoke", "reason":
                                              "Traceback (most recent call last):\n  File x\n  line 3\n"
                                              "  line 4\nRuntimeError: shape mismatch [4, 64] vs [4, 96]"})
    text = failed.line()
    assert "failed at smoke" in text and "RuntimeError: shape mismatch" in text and "Traceback" not in text
    assert failed.score is None and "mean gain" not in text


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout


def test_the_loop_asks_with_facts_and_records_the_protocol(tmp_path: Path) -> None:
    """EvolutionLoop.propose on a real git repository (no training: the parent's measurement is given)."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "hrm", repo / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    _git(tmp_path, "init", "--quiet", "--initial-branch=main", str(repo))
    _git(repo, "config", "user.name", "T")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "add", "--all")
    _git(repo, "commit", "--quiet", "-m", "hrm")
    look = json.dumps({"idea": "Bigger hidden size.", "symbols": ["_cpu_model"]})
    with scripted_server([Step(content=look), Step(content=valid_proposal_text("wider"))]) as server:
        settings = Settings(provider="lmstudio", model="m", host=f"{server.url}/v1", task="sudoku4",
                            literature="off", context_tokens=4096, protocol="look-then-edit", budget_seconds=40.0)
        loop = EvolutionLoop(repo, settings, display=LoopDisplay(live=False))
        loop.ctx.baseline = Baseline(loop.ctx.record.best_commit(), "t", [0, 1], [0.5, 0.52], 1.0,
                                 evidence=[{"steps": 200, "steps_per_second": 5.0}, {"steps": 220, "steps_per_second": 5.5}])
        try:
            proposal, info = loop.propose(1)
        finally:
            loop.ctx.record.close()
        received = list(server.received)
    assert proposal.id == "wider" and len(received) == 2
    assert info["protocol"] == "look-then-edit" and info["look"]["found"] == ["hrm/presets.py:_cpu_model"]
    edit_user = received[1].messages[1]["content"]
    assert "- task: sudoku4" in edit_user and "210 optimiser steps in the budget at 5.25 steps/s" in edit_user
    assert "mean 0.5100, seed-to-seed sd 0.0141" in edit_user and "training budget: 40 s" in edit_user
    json.dumps(info)


def test_a_failed_edit_step_keeps_the_look_requests_in_its_record(tree: Path) -> None:
    ctx = request_context(tree)
    look = json.dumps({"idea": "Fewer heads.", "symbols": ["_cpu_model"]})
    with scripted_server([Step(content=look)] + [Step(content="[]")] * 3) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", context_tokens=32768,
                                max_attempts=3, **FAST)
        with pytest.raises(ProviderError) as failed:
            ask_for_proposal(provider, ctx, [], [], proposal_json_schema(), metric="token_accuracy", seed=3,
                             protocol="look-then-edit")
        assert len(server.received) == 4
    attempts = failed.value.attempts
    assert [a.outcome for a in attempts] == ["accepted", "refused", "refused", "refused"]
    assert "Fewer heads." in attempts[0].raw_text


def test_a_failure_shows_its_reason_and_the_end_of_its_log() -> None:
    result = {"verdict": "failed", "failed_stage": "smoke", "reason": "no valid smoke.json written (exit code 1)",
              "stages": [{"stage": "safety", "ok": True, "log_tail": "fine"},
                         {"stage": "smoke", "ok": False, "log_tail": "Traceback (most recent call last):\n"
                          "  File \"/candidate/hrm/model.py\", line 90, in forward\n    x = self.mlp(x)\n"
                          "TypeError: forward() takes 1 positional argument but 2 were given\n"}]}
    text = history_item("c4-p1", {"title": "MLP mixer", "edits": []}, result).line()
    assert "  error: no valid smoke.json written (exit code 1)" in text
    assert text.rstrip().endswith("TypeError: forward() takes 1 positional argument but 2 were given")
    assert "Traceback" not in text and "fine" not in text


def test_look_then_edit_through_the_ollama_client(tree: Path) -> None:
    ctx = request_context(tree)
    look = json.dumps({"idea": "Two more L cycles.", "symbols": ["_cpu_model"]})
    with scripted_server([Step(content=look), Step(content=valid_proposal_text("more-l"))], flavour="ollama") as server:
        provider = get_provider("ollama", model="qwen-test", host=server.url, context_tokens=8192, **FAST)
        reply, _, record, _ = ask_for_proposal(provider, ctx, [], [], proposal_json_schema(), metric="token_accuracy",
                                            seed=4, protocol="look-then-edit")
        received = list(server.received)
    assert reply.proposal.id == "more-l" and [r.path for r in received] == ["/api/chat", "/api/chat"]
    assert received[0].body["format"]["required"] == ["idea", "symbols"]
    assert received[0].body["options"]["num_ctx"] == 8192
    assert record["look"]["found"] == ["hrm/presets.py:_cpu_model"]
    units = {f"{u.file}:{u.qualname}": u for u in ctx.index.units}
    assert units["hrm/presets.py:_cpu_model"].text in received[1].messages[1]["content"]
