"""The proposal schema: loading, readable errors, and the JSON Schema given to LLMs."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from proposals.schema import (
    SCHEMA_PATH,
    AddFunction,
    ProposalError,
    SetValue,
    flatten_schema,
    load_proposal,
    proposal_json_schema,
)


def good() -> dict[str, Any]:
    return {
        "id": "more-l-cycles",
        "title": "Three low-level cycles",
        "rationale": "More L steps per H step deepen the effective computation.",
        "hypothesis": "Exact accuracy on sudoku4 rises by at least 2 points.",
        "citations": [
            {"arxiv_id": "2506.21734v2", "title": "Hierarchical Reasoning Model", "claim": "L converges"}
        ],
        "edits": [
            {"op": "set_value", "file": "hrm/config.py", "target": "ModelConfig.L_cycles", "value": "3"},
            {
                "op": "add_function",
                "file": "hrm/layers.py",
                "code": "def f(x):\n    return x\n",
                "after": None,
            },
            {"op": "add_import", "file": "hrm/layers.py", "module": "math", "name": None, "alias": None},
            {"op": "search_replace", "file": "hrm/model.py", "search": "a = 1", "replace": "a = 2"},
        ],
        "expected_effect": {
            "metric": "exact_accuracy",
            "direction": "increase",
            "size": 0.02,
            "confidence": "low",
        },
        "risk": {"level": "medium", "failure_modes": ["slower steps"]},
        "provenance": {"provider": None, "model": None, "prompt_hash": None, "parent_commit": None},
    }


def test_valid_proposal_loads_from_dict_str_and_bytes() -> None:
    text = json.dumps(good())
    for source in (good(), text, text.encode()):
        proposal = load_proposal(source)
        assert proposal.id == "more-l-cycles"
        assert isinstance(proposal.edits[0], SetValue)
        assert isinstance(proposal.edits[1], AddFunction) and proposal.edits[1].after is None
        assert proposal.citations[0].arxiv_id == "2506.21734v2"


def test_provenance_may_be_omitted_and_is_filled_with_nulls() -> None:
    data = good()
    del data["provenance"]
    proposal = load_proposal(data)
    assert proposal.provenance.provider is None and proposal.provenance.parent_commit is None


def test_truncated_json_says_where_it_broke() -> None:
    text = json.dumps(good(), indent=2)
    cut = text[: len(text) // 2]
    with pytest.raises(ProposalError) as info:
        load_proposal(cut)
    message = str(info.value)
    assert "truncated" in message
    last_line = cut.count("\n") + 1
    assert f"line {last_line}" in message


def test_malformed_json_in_the_middle_is_located() -> None:
    with pytest.raises(ProposalError) as info:
        load_proposal('{"id": "abc", "title": oops}')
    assert "line 1 column 24" in str(info.value)
    assert "truncated" not in str(info.value)


def test_every_problem_is_listed() -> None:
    data = good()
    data["size"] = 3  # extra field at the root
    del data["hypothesis"]  # missing field
    data["citations"][0]["arxiv_id"] = "HRM paper"  # bad pattern
    data["edits"][0]["value"] = 3  # wrong type
    data["edits"][1]["colour"] = "red"  # extra field inside an edit
    data["edits"][2]["op"] = "rewrite_everything"  # unknown op
    data["expected_effect"]["direction"] = "up"  # bad enum
    data["risk"] = "low"  # wrong type (object expected)
    with pytest.raises(ProposalError) as info:
        load_proposal(data)
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 8, text
    assert "size: unknown field" in text
    assert "hypothesis: required field is missing" in text
    assert "citations[0].arxiv_id" in text
    assert "edits[0](set_value).value" in text
    assert "edits[1](add_function).colour: unknown field" in text
    assert "edits[2]: unknown op 'rewrite_everything'" in text
    assert "expected_effect.direction" in text
    assert "risk:" in text
    assert text.startswith("invalid proposal: 8 problems")


def test_code_and_value_are_checked_for_syntax() -> None:
    data = good()
    data["edits"][0]["value"] = "3 +"
    data["edits"][1]["code"] = "def f(:\n    pass\n"
    with pytest.raises(ProposalError) as info:
        load_proposal(data)
    text = str(info.value)
    assert "value is not a Python expression" in text
    assert "code does not parse" in text


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("id", "Bad_ID", "id:"),
        ("id", "ab", "id:"),
        ("edits", [], "edits:"),
        ("edits", [{"op": "delete_symbol", "file": "hrm/model.py", "target": "f"}] * 9, "edits:"),
        ("citations", [{"arxiv_id": "2506.21734", "title": "t"}], "citations[0].claim: required"),
    ],
)
def test_field_constraints(field: str, value: Any, fragment: str) -> None:
    data = good()
    data[field] = value
    with pytest.raises(ProposalError) as info:
        load_proposal(data)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "path", ["../hrm/model.py", "hrm/../evolver/patch.py", "hrm//model.py", "hrm/model.txt"]
)
def test_edit_file_must_be_a_normalised_python_path(path: str) -> None:
    data = good()
    data["edits"][0]["file"] = path
    with pytest.raises(ProposalError) as info:
        load_proposal(data)
    assert "edits[0](set_value).file" in str(info.value)


def test_non_object_json_is_rejected() -> None:
    with pytest.raises(ProposalError, match="expected a JSON object"):
        load_proposal("[1, 2]")


def _walk(node: Any, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.items():
            out += _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _walk(value, f"{path}/{i}")
    return out


def test_schema_meets_openai_strict_mode_rules() -> None:
    schema = proposal_json_schema()
    assert schema["type"] == "object"
    for path, node in _walk(schema):
        if "/properties/" in path and path.rsplit("/", 2)[-2] == "properties":
            continue  # a property name, not a schema keyword level
        assert "oneOf" not in node, path
        assert "discriminator" not in node, path
        assert "default" not in node, path
        if "$ref" in node:
            assert list(node) == ["$ref"], f"$ref with siblings at {path}"
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, path
            assert sorted(node["required"]) == sorted(node["properties"]), path
    union = schema["properties"]["edits"]["items"]
    assert len(union["anyOf"]) == 8


def test_committed_schema_file_equals_generated() -> None:
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == proposal_json_schema(), "run: python -m proposals.schema"


def test_flatten_inlines_refs_and_uses_type_lists() -> None:
    flat = flatten_schema(proposal_json_schema())
    dumped = json.dumps(flat)
    assert "$ref" not in dumped and "$defs" not in dumped
    variants = flat["properties"]["edits"]["items"]["anyOf"]
    add_fn = next(v for v in variants if v["properties"]["op"]["enum"] == ["add_function"])
    assert add_fn["properties"]["after"]["type"] == ["string", "null"]
    assert "Qualified name of the def/class" in add_fn["properties"]["after"]["description"]
    assert flat["properties"]["provenance"]["properties"]["model"]["type"] == ["string", "null"]


def test_flatten_refuses_recursive_schemas() -> None:
    schema = {
        "$defs": {"N": {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}}},
        "$ref": "#/$defs/N",
    }
    with pytest.raises(ValueError, match="recursive"):
        flatten_schema(schema)


def test_both_schemas_accept_a_good_proposal_and_reject_a_bad_one() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for schema in (proposal_json_schema(), flatten_schema(proposal_json_schema())):
        jsonschema.validate(good(), schema)
        bad = copy.deepcopy(good())
        bad["edits"][0]["op"] = "rewrite"
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        bad = copy.deepcopy(good())
        bad["extra"] = 1
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
