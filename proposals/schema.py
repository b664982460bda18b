"""The proposal format: what an LLM (or a person) hands the engine to change the HRM code.

A proposal names code by qualified name ("Block.forward", "ModelConfig.L_cycles") rather than by text
position, so the edit engine (`edits.engine`) can prove that each edit hits exactly one node. The edit
operations themselves are defined in `edits.language`.

Public API:
- `Proposal` and the edit models (a discriminated union on `op`), all `extra="forbid"`.
- `load_proposal(text | bytes | dict) -> Proposal`, raising `ProposalError` that lists every problem.
- `proposal_json_schema() -> dict`: the JSON Schema given to LLMs, valid for OpenAI strict structured output.
- `flatten_schema(schema) -> dict`: the same schema with `$ref`s inlined and nullable unions as type lists
  (for Ollama's grammar builder).
- `python -m proposals.schema [PATH]` writes the schema to `proposals/proposal.schema.json`.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from edits.language import (  # noqa: F401  (re-exported: proposals carry these edits)
    EDIT_OPS,
    MAX_EDITS,
    AddClass,
    AddFunction,
    AddImport,
    DeleteSymbol,
    Edit,
    ReplaceClass,
    ReplaceFunction,
    SearchReplace,
    SetValue,
    _Strict,
)

SCHEMA_PATH = Path(__file__).with_name("proposal.schema.json")

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{2,63}$"
ARXIV_PATTERN = r"^[0-9]{4}\.[0-9]{4,5}(v[0-9]+)?$"


class ProposalError(ValueError):
    """A proposal that cannot be used; `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"invalid proposal: {count} problem{'s' if count != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))


class Citation(_Strict):
    arxiv_id: str = Field(
        pattern=ARXIV_PATTERN, description="arXiv identifier, e.g. 2506.21734 or 2506.21734v2"
    )
    title: str = Field(min_length=1, description="Paper title")
    claim: str = Field(min_length=1, description="What the paper says that motivates this change")


class ExpectedEffect(_Strict):
    metric: str = Field(min_length=1, description="Metric expected to move, e.g. exact_accuracy")
    direction: Literal["increase", "decrease"]
    size: float = Field(description="Expected size of the change in the metric's units")
    confidence: Literal["low", "medium", "high"]


class Risk(_Strict):
    level: Literal["low", "medium", "high"]
    failure_modes: list[str] = Field(description="Ways the change could fail or hurt")


class Provenance(_Strict):
    """Filled by the engine; an LLM should leave every field null."""

    provider: str | None = None
    model: str | None = None
    prompt_hash: str | None = None
    parent_commit: str | None = None


class Proposal(_Strict):
    id: str = Field(
        pattern=ID_PATTERN, description="Short slug: lowercase letters, digits and '-', 3-64 chars"
    )
    title: str = Field(min_length=1, max_length=200)
    rationale: str = Field(min_length=1, description="Why this change should help, in a few sentences")
    hypothesis: str = Field(min_length=1, description="A falsifiable prediction the experiment tests")
    citations: list[Citation] = Field(description="Papers the idea comes from (may be empty)")
    edits: list[Edit] = Field(min_length=1, max_length=MAX_EDITS, description="Applied in order")
    expected_effect: ExpectedEffect
    risk: Risk
    provenance: Provenance = Field(default_factory=Provenance)


# --------------------------------------------------------------------------------------------------------------
# Loading with readable errors


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in EDIT_OPS and i >= 2 and loc[i - 2] == "edits":
            out += f"({part})"  # the discriminator tag pydantic inserts after edits[i]
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def _describe_input(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = _format_loc(tuple(err["loc"]))
        kind = err["type"]
        if kind == "missing":
            problems.append(f"{loc}: required field is missing")
        elif kind == "extra_forbidden":
            problems.append(f"{loc}: unknown field (not allowed)")
        elif kind == "union_tag_invalid":
            problems.append(
                f"{loc}: unknown op {_describe_input(err['ctx'].get('tag'))}; expected one of {list(EDIT_OPS)}"
            )
        elif kind == "union_tag_not_found":
            problems.append(f"{loc}: missing 'op'; expected one of {list(EDIT_OPS)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {msg} (got {_describe_input(err.get('input'))})")
    return problems


def _json_problem(text: str, exc: json.JSONDecodeError) -> str:
    where = f"line {exc.lineno} column {exc.colno} (char {exc.pos})"
    body = text.rstrip()
    if not body:
        return "JSON: empty document"
    if exc.pos >= len(body) or exc.msg.startswith("Unterminated string"):
        end_line = body.count("\n") + 1
        end_col = len(body) - (body.rfind("\n") + 1) + 1
        tail = body[-40:].replace("\n", "\\n")
        return (
            f"JSON: truncated: the document ends at line {end_line} column {end_col} (char {len(body)}) "
            f"before it is complete ({exc.msg} {where}); it ends with {tail!r}"
        )
    snippet = text[max(0, exc.pos - 20) : exc.pos + 20].replace("\n", "\\n")
    return f"JSON: {exc.msg} at {where}, near {snippet!r}"


def load_proposal(text: str | bytes | dict[str, Any]) -> Proposal:
    """Parse and validate a proposal; raise `ProposalError` listing every problem found."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProposalError([f"not UTF-8: {exc}"]) from None
    if isinstance(text, str):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProposalError([_json_problem(text, exc)]) from None
    else:
        data = text
    if not isinstance(data, dict):
        raise ProposalError([f"(root): expected a JSON object, got {type(data).__name__}"])
    try:
        return Proposal.model_validate(data)
    except ValidationError as exc:
        raise ProposalError(_pydantic_problems(exc)) from None


# --------------------------------------------------------------------------------------------------------------
# JSON Schema export

_DROP_KEYS = ("default", "discriminator", "minLength", "maxLength")


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"unsupported $ref {ref!r}")
    node: Any = root
    for key in ref[2:].split("/"):
        node = node[key]
    return node


def _strictify(node: Any, root: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_strictify(item, root) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node and len(node) > 1:
        # strict mode refuses siblings next to $ref: inline the target, local keys win
        target = _resolve(root, node.pop("$ref"))
        node = {**target, **node}
    for key in _DROP_KEYS:
        node.pop(key, None)
    if "oneOf" in node:
        node["anyOf"] = node.pop("oneOf")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "properties" in node:
        node["title"] = node.get("title")
        node["required"] = list(node["properties"])
        node["additionalProperties"] = False
        props = node["properties"]
        order = sorted(props, key=lambda k: k != "op")  # the discriminator first helps generation
        node["properties"] = {k: _strictify(props[k], root) for k in order}
        node["required"] = list(node["properties"])
        for prop in node["properties"].values():
            prop.pop("title", None)
        if node["title"] is None:
            del node["title"]
    for key, value in list(node.items()):
        if key != "properties":
            node[key] = _strictify(value, root)
    return node


def proposal_json_schema() -> dict[str, Any]:
    """The JSON Schema for `Proposal`, valid for OpenAI strict mode.

    Every property is required (optional ones are nullable), every object has `additionalProperties: false`,
    the edit union is an `anyOf` (strict mode rejects `oneOf`), and keywords strict mode does not support
    (`default`, `discriminator`, `minLength`, `maxLength`) are dropped; pydantic still checks them on load.
    """
    raw = Proposal.model_json_schema()
    schema = _strictify(raw, raw)
    schema["description"] = (
        "A proposed change to the HRM code: edits address code by qualified name; "
        "provenance is filled by the engine (leave its fields null)."
    )
    return schema


def flatten_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline `$defs`/`$ref` and turn `anyOf: [X, {type: null}]` into `X` with a `[type, "null"]` list."""
    root = copy.deepcopy(schema)

    def walk(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            if ref in seen:
                raise ValueError(f"recursive schema at {ref}: cannot flatten")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**_resolve(root, ref), **rest}, (*seen, ref))
        out = {k: walk(v, seen) for k, v in node.items() if k != "$defs"}
        variants = out.get("anyOf")
        if isinstance(variants, list):
            nulls = [v for v in variants if v == {"type": "null"}]
            others = [v for v in variants if v != {"type": "null"}]
            if nulls and len(others) == 1 and isinstance(others[0].get("type"), str):
                merged = {**others[0], **{k: v for k, v in out.items() if k != "anyOf"}}
                merged["type"] = [others[0]["type"], "null"]
                if "enum" in merged:
                    merged["enum"] = [*merged["enum"], None]
                return merged
        return out

    return walk(root, ())


def export_schema(path: Path = SCHEMA_PATH) -> Path:
    path.write_text(json.dumps(proposal_json_schema(), indent=2) + "\n")
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_PATH
    print(f"wrote {export_schema(target)}")
