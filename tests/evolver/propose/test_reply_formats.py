"""The fenced reply format: strict parsing into the same Proposal, and what the providers send for each format.

Parsing runs on plain strings; the provider tests talk to the scripted server over HTTP through the real
openai and ollama clients and assert on the request bodies the server received.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from evolver.propose.prompt import build_prompt
from evolver.propose.providers import ProviderError, get_provider
from evolver.propose.providers.reply_formats import (
    FENCED_FORMAT,
    default_edit_format,
    parse_fenced,
    parse_reply,
    render_fenced,
    resolve_edit_format,
)
from evolver.settings import load_settings
from proposals.schema import ProposalError, load_proposal, proposal_json_schema
from tests.evolver.fake_llm_server import Step, scripted_server, valid_proposal

SCHEMA = proposal_json_schema()
QUICK = {"timeout": 10.0, "max_retries": 0, "backoff_s": 0.01}

HEADER = {
    "title": "Gated residual in the block",
    "rationale": "A learned gate lets the block keep its input. It eases optimisation.",
    "citations": [],
    "edits": [
        {"op": "replace_function", "file": "hrm/layers.py", "target": "find_multiple"},
        {"op": "search_replace", "file": "hrm/presets.py"},
        {"op": "set_value", "file": "hrm/config.py", "target": "ModelConfig.L_cycles", "value": "3"},
    ],
}
CODE = "def find_multiple(value: int, multiple: int) -> int:\n    return -(value // -multiple) * multiple\n"


def reply(header: dict[str, Any] | None = None, blocks: str | None = None) -> str:
    head = json.dumps(header or HEADER, indent=1)
    body = blocks if blocks is not None else (
        f"```python\n{CODE}```\n\nSome words between blocks are allowed.\n"
        "<<<<<<< SEARCH\n    lr=1e-3,\n=======\n    lr=2e-3,\n>>>>>>> REPLACE\n")
    return f"Here is my proposal.\n```json\n{head}\n```\n{body}"


def problems_of(text: str) -> list[str]:
    with pytest.raises(ProposalError) as info:
        parse_fenced(text)
    return info.value.problems


def test_a_fenced_reply_becomes_the_same_proposal_model() -> None:
    proposal = parse_fenced(reply(), metric="token_accuracy")
    ops = [e.op for e in proposal.edits]
    assert ops == ["replace_function", "search_replace", "set_value"]
    assert proposal.edits[0].code == CODE  # type: ignore[union-attr]
    assert proposal.edits[1].search == "    lr=1e-3," and proposal.edits[1].replace == "    lr=2e-3,"  # type: ignore[union-attr]
    assert proposal.id == "gated-residual-in-the-block"
    assert proposal.hypothesis == "A learned gate lets the block keep its input"
    assert proposal.expected_effect.metric == "token_accuracy" and proposal.expected_effect.size == 0.0
    # A proposal written in the format reads back equal; the format's own example parses.
    full = load_proposal(valid_proposal(edits=[
        {"op": "replace_class", "file": "hrm/model.py", "target": "HRM", "code": "class HRM:\n    pass\n"},
        {"op": "search_replace", "file": "hrm/train.py", "search": "a = 1\nb = 2", "replace": "a = 2"},
        {"op": "add_import", "file": "hrm/train.py", "module": "math", "name": None, "alias": None}]))
    assert parse_fenced(render_fenced(full)) == full
    example = parse_fenced(FENCED_FORMAT.split("Example:\n", 1)[1])
    assert [e.op for e in example.edits] == ["replace_function", "search_replace", "set_value"]


def test_a_search_replace_block_inside_a_fence_and_a_bare_json_header_are_read() -> None:
    text = (json.dumps({**HEADER, "edits": HEADER["edits"][1:2]}) + "\n```text\n<<<<<<< SEARCH\nx = 1\n=======\n"
            "x = 2\n>>>>>>> REPLACE\n```\n")
    proposal = parse_fenced(text)
    assert proposal.edits[0].search == "x = 1" and proposal.edits[0].replace == "x = 2"  # type: ignore[union-attr]


def test_a_whole_json_proposal_is_read_in_the_fenced_format_too() -> None:
    whole = valid_proposal(edits=[{"op": "replace_function", "file": "hrm/layers.py", "target": "find_multiple",
                                   "code": CODE}])
    assert parse_fenced(json.dumps(whole)) == load_proposal(whole)
    assert parse_fenced("```json\n" + json.dumps(whole) + "\n```") == load_proposal(whole)
    # Half inline, half missing: no guessing.
    half = {**HEADER, "edits": [{**HEADER["edits"][0], "code": CODE}, HEADER["edits"][1]]}
    assert "code must not be in the header" in problems_of(reply(half, ""))[0]


def test_missing_blocks_extra_blocks_and_wrong_kinds_are_named() -> None:
    missing = problems_of(reply(blocks=f"```python\n{CODE}```\n"))
    assert len(missing) == 1 and "take 2 block(s)" in missing[0] and "reply has 1" in missing[0]
    assert "edits[1] (search_replace) takes a SEARCH/REPLACE block" in missing[0]
    extra = problems_of(reply({**HEADER, "edits": HEADER["edits"][2:]}, blocks=f"```python\n{CODE}```\n"))
    assert "take 0 block(s)" in extra[0] and "reply has 1" in extra[0]
    swapped = problems_of(reply(blocks="<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n"
                                       f"```python\n{CODE}```\n"))
    assert any("edits[0] (replace_function) takes a ```python block but its block is the SEARCH/REPLACE" in p
               for p in swapped)


def test_unterminated_blocks_a_missing_header_and_code_in_the_header_are_refused() -> None:
    cut = problems_of(reply(blocks=f"```python\n{CODE}"))
    assert "unterminated fence: the ```python block opened at line" in cut[0]
    # An unclosed code block first: no header is looked for inside it.
    opened = problems_of("```python\nx = {'a': 1}\n")
    assert "no JSON header found" in opened[0] and "unterminated fence" in opened[1]
    no_end = problems_of(reply(blocks=f"```python\n{CODE}```\n<<<<<<< SEARCH\na\n=======\nb\n"))
    assert "unterminated SEARCH/REPLACE block" in no_end[0] and "'>>>>>>> REPLACE'" in no_end[0]
    assert "no JSON header found" in problems_of(f"```python\n{CODE}```\n")[0]
    assert "the reply was empty" in problems_of("  ")[0]
    bad_json = problems_of('```json\n{"title": "x",}\n```\n')
    assert "header: the ```json block at line 1 is not valid JSON" in bad_json[0]
    inline = {**HEADER, "edits": [{**HEADER["edits"][0], "code": CODE}]}
    assert "code must not be in the header" in problems_of(reply(inline, f"```python\n{CODE}```\n"))[0]
    # The Proposal model's own checks still run: code that does not parse is named at its edit.
    broken = problems_of(reply({**HEADER, "edits": HEADER["edits"][:1]}, "```python\ndef find_multiple(:\n```\n"))
    assert any(p.startswith("edits[0](replace_function).code: code does not parse") for p in broken)


def test_format_selection_defaults_and_settings() -> None:
    assert default_edit_format("lmstudio") == "fenced" and default_edit_format("ollama") == "fenced"
    assert default_edit_format("openai") == "json" and resolve_edit_format("json", "ollama") == "json"
    with pytest.raises(ValueError, match="edit format"):
        resolve_edit_format("diff", "ollama")
    settings = load_settings(None, {"edit_format": "fenced", "repair_turns": 1}, environ={})
    assert settings.edit_format == "fenced" and settings.repair_turns == 1
    assert load_settings(None, environ={"HRM_EDIT_FORMAT": "json", "HRM_REPAIR_TURNS": "0"}).repair_turns == 0
    with pytest.raises(ValueError, match="edit_format"):
        load_settings(None, environ={"HRM_EDIT_FORMAT": "xml"})
    with pytest.raises(ValueError, match="repair_turns"):
        load_settings(None, {"repair_turns": -1}, environ={})
    assert parse_reply(json.dumps(valid_proposal()), "json").id == "more-l-cycles"


def test_the_cli_declares_both_flags() -> None:
    import argparse

    from evolver.ui.run_cmd import add_run_command

    parser = argparse.ArgumentParser()
    add_run_command(parser.add_subparsers())
    args = parser.parse_args(["run", "--edit-format", "fenced", "--repair-turns", "1"])
    assert args.edit_format == "fenced" and args.repair_turns == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--edit-format", "xml"])


def test_the_fenced_prompt_explains_the_format_and_json_keeps_its_rules() -> None:
    fenced = build_prompt("map", [], [], SCHEMA, edit_format="fenced")
    plain = build_prompt("map", [], [], SCHEMA)
    assert fenced.edit_format == "fenced" and plain.edit_format == "json"
    assert "<<<<<<< SEARCH" in fenced.system and "```json" in fenced.system
    assert "no markdown fences" not in fenced.system and "no markdown fences" in plain.system
    assert "```json header" in fenced.user and "ONE JSON object" in plain.user


@pytest.mark.parametrize("flavour", ["openai", "ollama"])
def test_the_fenced_format_sends_no_schema_and_json_still_does(flavour: str) -> None:
    name = "ollama" if flavour == "ollama" else "lmstudio"
    with scripted_server([Step(content=reply()), Step(content=json.dumps(valid_proposal()))],
                         flavour=flavour) as server:
        host = server.url if flavour == "ollama" else f"{server.url}/v1"
        provider = get_provider(name, model="scripted", host=host, context_tokens=8192, **QUICK)
        fenced = provider.propose(build_prompt("map", [], [], SCHEMA, edit_format="fenced"))
        plain = provider.propose(build_prompt("map", [], [], SCHEMA))
        sent = [r.body for r in server.received]
    assert [e.op for e in fenced.proposal.edits] == ["replace_function", "search_replace", "set_value"]
    assert plain.proposal.id == "more-l-cycles"
    key = "format" if flavour == "ollama" else "response_format"
    assert sent[0].get(key) in (None, "") and sent[1].get(key)
    assert "<<<<<<< SEARCH" in sent[0]["messages"][0]["content"]


def test_a_fenced_reply_cut_short_is_reasked_in_the_fenced_format() -> None:
    cut = reply(blocks=f"```python\n{CODE}")
    with scripted_server([Step(content=cut, finish_reason="length"), Step(content=reply())]) as server:
        provider = get_provider("lmstudio", model="scripted", host=f"{server.url}/v1", context_tokens=8192, **QUICK)
        answer = provider.propose(build_prompt("map", [], [], SCHEMA, edit_format="fenced"))
        second = server.received[1].messages
    assert answer.attempts == 2
    first = answer.transcript[0]
    assert first.outcome == "refused" and "cut at the token limit" in first.problems[0]
    assert any("unterminated fence" in p for p in first.problems)
    assert "Reply again in the fenced format" in second[-1]["content"]
    assert "unterminated fence" in second[-1]["content"]


def test_nonsense_in_the_fenced_format_ends_as_a_provider_error() -> None:
    with scripted_server([Step(content="I like turtles."), Step(content="```python\nx = 1\n")]) as server:
        provider = get_provider("lmstudio", model="scripted", host=f"{server.url}/v1", max_attempts=2, **QUICK)
        with pytest.raises(ProviderError) as info:
            provider.propose(build_prompt("map", [], [], SCHEMA, edit_format="fenced"))
    assert info.value.kind == "invalid_proposal"
    assert [a.outcome for a in info.value.attempts] == ["refused", "refused"]
    assert "no JSON header found" in info.value.attempts[0].problems[0]
