"""Repair turns: an edit that does not apply goes back to the model with its exact error and the target's
current source (libcst), at most `max_turns` times; a gate crash gets one turn with the error's tail.

The tree is a copy of this repository's hrm/ in a tmp dir; the model is the scripted server, spoken to over
HTTP by the real openai client; every assertion on what the model was told reads the request bodies the
server received.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from evolver.propose.prompt import build_prompt
from evolver.propose.providers import get_provider
from evolver.propose.providers.reply_formats import render_fenced
from evolver.propose.repair import Repairer, ask_and_repair, definitions, target_source
from proposals.schema import load_proposal, proposal_json_schema
from tests.evolver.fake_llm_server import Step, scripted_server, valid_proposal

REPO = Path(__file__).resolve().parents[3]
SCHEMA = proposal_json_schema()
QUICK = {"timeout": 10.0, "max_retries": 0, "backoff_s": 0.01, "context_tokens": 16384}
STALE = {"op": "search_replace", "file": "hrm/presets.py", "search": "        lr_warmup_steps=10,",
         "replace": "        lr_warmup_steps=50,"}
FRESH = {**STALE, "search": "        lr_warmup_steps=100,"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "hrm", tmp_path / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def proposal_text(edit: dict[str, Any], fmt: str) -> str:
    proposal = load_proposal(valid_proposal("warmup", edits=[edit]))
    return render_fenced(proposal) if fmt == "fenced" else proposal.model_dump_json()


def test_target_source_is_the_definition_libcst_finds(tree: Path) -> None:
    text = (tree / "hrm/presets.py").read_text()
    found = {d.qualname: d for d in definitions(text)}
    assert found["_cpu_train"].kind == "function" and found["_cpu_train"].source.startswith("def _cpu_train(")
    model = target_source(tree, {"op": "replace_function", "file": "hrm/config.py", "target": "ModelConfig.to_dict"})
    assert "Current source of 'ModelConfig.to_dict' in hrm/config.py" in model and "def to_dict(self)" in model
    typo = target_source(tree, {"op": "replace_function", "file": "hrm/config.py", "target": "ModelConfig.to_dct"})
    assert "'ModelConfig.to_dict' (the closest name to 'ModelConfig.to_dct', which does not exist)" in typo
    stale = target_source(tree, STALE)
    line = text.splitlines().index("        lr_warmup_steps=100,") + 1  # the closest line of the parent's source
    assert f"'_cpu_train' (around the text closest to your search, line {line})" in stale
    assert "lr_warmup_steps=100," in stale and "def _cpu_train(" in stale
    assert target_source(tree, {"op": "replace_function", "file": "hrm/nothing.py", "target": "f"}) == ""


@pytest.mark.parametrize("fmt", ["fenced", "json"])
def test_a_stale_search_text_is_repaired_in_one_turn(tree: Path, fmt: str) -> None:
    first, second = proposal_text(STALE, fmt), proposal_text(FRESH, fmt)
    with scripted_server([Step(content=first), Step(content=second)]) as server:
        provider = get_provider("lmstudio", model="scripted", host=f"{server.url}/v1", **QUICK)
        prompt = build_prompt("map", [], [], SCHEMA, edit_format=fmt)
        reply, repaired = ask_and_repair(provider, prompt, tree, 2)
        sent = [r.messages for r in server.received]
    assert repaired is not None and repaired.applies and len(repaired.turns) == 1
    assert reply.proposal.edits[0].search == STALE["search"]  # type: ignore[union-attr]
    assert repaired.proposal.edits[0].search == FRESH["search"]  # type: ignore[union-attr]
    assert repaired.proposal.id == "warmup"
    turn = repaired.info()[0]
    assert turn["outcome"] == "applies" and turn["trigger"] == "apply"
    assert "search text not found" in turn["errors"][0]
    assert turn["reply"]["transcript"][0]["raw_text"] == second  # the repair's raw reply is kept
    # The repair request: the original question, the model's own reply, then the exact error and the source.
    assert len(sent) == 2 and sent[1][:2] == sent[0][:2]
    assert sent[1][2] == {"role": "assistant", "content": first}
    message = sent[1][3]["content"]
    assert "Repair turn 1 of 2" in message and turn["errors"][0] in message
    assert "Current source of '_cpu_train' (around the text closest to your search" in message
    assert "        lr_warmup_steps=100," in message
    assert ("Reply again in the fenced format" if fmt == "fenced" else "ONE corrected JSON object") in message
    body = server.received[1].body
    assert ("response_format" in body) == (fmt == "json")


def test_repairs_stop_after_the_set_number_of_turns(tree: Path) -> None:
    stale = proposal_text(STALE, "fenced")
    with scripted_server([Step(content=stale)] * 4) as server:
        provider = get_provider("lmstudio", model="scripted", host=f"{server.url}/v1", **QUICK)
        prompt = build_prompt("map", [], [], SCHEMA, edit_format="fenced")
        _, repaired = ask_and_repair(provider, prompt, tree, 2)
        requests = len(server.received)
    assert repaired is not None and not repaired.applies and requests == 3
    assert [t["outcome"] for t in repaired.info()] == ["still fails", "still fails"]
    assert "search text not found" in repaired.errors[0]
    with scripted_server([Step(content=stale)]) as server:
        provider = get_provider("lmstudio", model="scripted", host=f"{server.url}/v1", **QUICK)
        _, none = ask_and_repair(provider, build_prompt("map", [], [], SCHEMA, edit_format="fenced"), tree, 0)
        assert len(server.received) == 1
    assert none is not None and none.turns == [] and not none.applies


def test_a_repair_answered_with_nonsense_ends_the_turns_without_a_crash(tree: Path) -> None:
    stale = proposal_text(STALE, "fenced")
    with scripted_server([Step(content=stale), Step(content="no idea"), Step(content="still no idea")]) as server:
        provider = get_provider("lmstudio", model="scripted", host=f"{server.url}/v1", max_attempts=2, **QUICK)
        _, repaired = ask_and_repair(provider, build_prompt("map", [], [], SCHEMA, edit_format="fenced"), tree, 2)
    assert repaired is not None and not repaired.applies and len(repaired.turns) == 1
    turn = repaired.info()[0]
    assert turn["outcome"] == "refused" and len(turn["reply"]["attempts"]) == 2
    assert repaired.proposal.edits[0].search == STALE["search"]  # type: ignore[union-attr]  # the last valid one


def test_a_reask_for_code_that_does_not_parse_shows_the_targets_source(tree: Path) -> None:
    header = {"title": "Round up", "rationale": "r.", "citations": [],
              "edits": [{"op": "replace_function", "file": "hrm/layers.py", "target": "find_multiple"}]}
    broken = f"```json\n{json.dumps(header)}\n```\n```python\ndef find_multiple(value:\n```\n"
    good = f"```json\n{json.dumps(header)}\n```\n```python\ndef find_multiple(value, multiple):\n    return value\n```\n"
    with scripted_server([Step(content=broken), Step(content=good)]) as server:
        provider = get_provider("lmstudio", model="scripted", host=f"{server.url}/v1", **QUICK)
        _, repaired = ask_and_repair(provider, build_prompt("map", [], [], SCHEMA, edit_format="fenced"), tree, 2)
        reask = server.received[1].messages[-1]["content"]
    assert repaired is not None and repaired.applies and repaired.turns == []
    assert "code does not parse" in reask
    assert "Current source of 'find_multiple' in hrm/layers.py" in reask and "def find_multiple(value: int" in reask


def test_a_gate_crash_gets_one_turn_with_the_error_tail(tree: Path) -> None:
    crash = load_proposal(valid_proposal("warmup", edits=[FRESH]))
    fixed = proposal_text({**FRESH, "replace": "        lr_warmup_steps=60,"}, "fenced")
    error = ("smoke: forward/backward failed: RuntimeError: shape mismatch\nTraceback (most recent call last):\n"
             + "  frame\n" * 400 + "RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x8 and 16x8)")
    with scripted_server([Step(content=fixed)]) as server:
        provider = get_provider("lmstudio", model="scripted", host=f"{server.url}/v1", **QUICK)
        repairer = Repairer(provider, build_prompt("map", [], [], SCHEMA, edit_format="fenced"), tree)
        repaired = repairer.after_gate(crash, None, "smoke", error)
        message = server.received[0].messages[-1]["content"]
        previous = server.received[0].messages[-2]
    assert repaired.applies and repaired.proposal.id == "warmup"
    assert repaired.proposal.edits[0].replace == "        lr_warmup_steps=60,"  # type: ignore[union-attr]
    assert repaired.info()[0]["trigger"] == "gate:smoke"
    assert "failed the smoke check" in message and "mat1 and mat2 shapes cannot be multiplied" in message
    assert "[earlier output left out]" in message and len(message) < 6000
    assert previous["role"] == "assistant" and "<<<<<<< SEARCH" in previous["content"]


def test_a_repair_in_a_full_context_leaves_out_the_code_map_not_the_error(tree: Path) -> None:
    """The first request fills the context (a 3000-token llama.cpp server, its prompt fitted to the budget); the
    repair turn drops the map, papers and history, keeps the error and the target's source, and fits."""
    stale, fresh = proposal_text(STALE, "fenced"), proposal_text(FRESH, "fenced")
    with scripted_server([Step(content=stale), Step(content=fresh)], flavour="llama.cpp", n_ctx=3000) as server:
        provider = get_provider("lmstudio", model="scripted", host=f"{server.url}/v1", max_reply_tokens=400,
                                timeout=10.0, max_retries=0, backoff_s=0.01)
        provider.preflight()
        prompt = provider.fit_prompt("x = compute(y)\n" * 2000, [], [], SCHEMA, edit_format="fenced")
        _, repaired = ask_and_repair(provider, prompt, tree, 2)
        sent = [r.messages for r in server.received]
    assert repaired is not None and repaired.applies
    assert "x = compute(y)" in sent[0][1]["content"] and "x = compute(y)" not in sent[1][1]["content"]
    assert "left out of this repair turn for space" in sent[1][1]["content"]
    assert sent[1][1]["content"].startswith("Goal:") and "## Output" in sent[1][1]["content"]
    assert "search text not found" in sent[1][3]["content"] and "lr_warmup_steps=100," in sent[1][3]["content"]
    assert repaired.info()[0]["notes"] == ["the first request's code map, papers and history were left out for space"]
    assert server.received[1].body["max_tokens"] == 400  # the reply kept its full limit
