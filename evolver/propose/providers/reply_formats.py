"""How a model writes its proposal: the reply formats, their instructions, and their strict parsers.

Two formats, chosen per run (`--edit-format`, `Settings.edit_format`):

- ``json``: one JSON object that follows the proposal's JSON Schema, code inside JSON strings. The request
  carries the schema as a constrained response format (json_schema / Ollama `format`).
- ``fenced``: a short JSON header (title, rationale, citations, and per edit its op, file and target), then
  one block per edit that carries code, in the order of the edits: a fenced ```python block for
  replace_function / replace_class / add_function / add_class, a SEARCH/REPLACE block for search_replace.
  set_value, add_import and delete_symbol carry everything in the header and take no block. No response
  format is forced: code is written as code, not escaped inside JSON strings.

`parse_reply(text, edit_format, metric)` turns either into the same `proposals.schema.Proposal`, or raises
`ProposalError` listing every problem (a missing block, a count mismatch, an unterminated fence, ...).
`render_fenced(proposal)` writes a proposal in the fenced format (the inverse, used by tests and examples).
`default_edit_format(provider)` is the format a run uses when none is set: see DEFAULT_REASON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from proposals.schema import EDIT_OPS, Proposal, ProposalError, load_proposal

EDIT_FORMATS: tuple[str, ...] = ("json", "fenced")
LOCAL_PROVIDERS: tuple[str, ...] = ("lmstudio", "ollama")
# Why local servers default to fenced (README and the bench_proposals figures): small local models write
# worse code inside JSON strings (escaping, quotes), and a grammar-constrained JSON reply forces them to; the
# fenced reply keeps the short header in JSON and the code as plain code.
DEFAULT_REASON = ("local models (lmstudio, ollama) default to fenced: code is written as plain code, not "
                  "escaped in JSON strings under a grammar; hosted APIs (openai) keep strict json")

CODE_OPS = ("replace_function", "replace_class", "add_function", "add_class")
BLOCK_FIELDS = {"code", "search", "replace"}  # what the blocks carry; never written in the fenced header
SEARCH_MARK, DIVIDER_MARK, REPLACE_MARK = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"

_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_OPEN_THINK_RE = re.compile(r"<think>.*\Z", re.DOTALL | re.IGNORECASE)
_FENCE_OPEN_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([A-Za-z0-9_+.-]*)[^`\n]*$")


def default_edit_format(provider: str) -> str:
    """The format a run uses when `--edit-format` is not given: fenced for local servers, json otherwise."""
    return "fenced" if provider.strip().lower() in LOCAL_PROVIDERS else "json"


def resolve_edit_format(setting: str | None, provider: str) -> str:
    """The setting when given (checked), else the provider's default."""
    if setting is None or not str(setting).strip():
        return default_edit_format(provider)
    value = str(setting).strip().lower()
    if value not in EDIT_FORMATS:
        raise ValueError(f"edit format (--edit-format, HRM_EDIT_FORMAT) must be one of {', '.join(EDIT_FORMATS)}, "
                         f"got {setting!r}")
    return value


# ---------------------------------------------------------------------------------------------- instructions

JSON_REPLY_LINE = "Reply with exactly one JSON object that follows the given JSON Schema: no prose, no markdown fences."
FENCED_REPLY_LINE = ("Reply in the FENCED format described at the end: a JSON header, then one block per code edit; "
                     "no other prose.")

FENCED_FORMAT = """\
Reply format (fenced). First a JSON header in a ```json fence with: "title", "rationale", "hypothesis",
"citations" (list of {"arxiv_id", "title", "claim"}) and "edits": per edit its "op", "file" and its target
field ("target" or "after"; set_value also "value", add_import "module"/"name"/"alias"). Do NOT put
"code", "search" or "replace" in the header. Then, in the order of the edits, one block per edit that
carries code: a ```python block with the complete definition for replace_function, replace_class,
add_function and add_class; a SEARCH/REPLACE block for search_replace. set_value, add_import and
delete_symbol take no block. Every fence must be closed. Example:
```json
{"title": "Two low-level cycles", "rationale": "More refinement per segment.",
 "hypothesis": "token_accuracy rises at equal budget.", "citations": [],
 "edits": [{"op": "replace_function", "file": "hrm/layers.py", "target": "rms_norm"},
           {"op": "search_replace", "file": "hrm/presets.py"},
           {"op": "set_value", "file": "hrm/config.py", "target": "ModelConfig.L_cycles", "value": "2"}]}
```
```python
def rms_norm(x, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
```
<<<<<<< SEARCH
lr=1e-3,
=======
lr=2e-3,
>>>>>>> REPLACE"""


def system_rules(base: str, edit_format: str) -> str:
    """The system message for `edit_format`, made from the JSON-format rules `base`."""
    if edit_format == "json":
        return base
    if JSON_REPLY_LINE in base:
        text = base.replace(JSON_REPLY_LINE, FENCED_REPLY_LINE)
    else:
        text = FENCED_REPLY_LINE + "\n" + base
    return text + "\n\n" + FENCED_FORMAT


def output_rules(metric: str, edit_format: str) -> str:
    """The first sentence of the prompt's output section."""
    if edit_format == "json":
        return ("## Output\nReturn ONE JSON object matching the schema. Fields the schema marks nullable may be "
                f"null. Set expected_effect.metric to \"{metric}\".")
    return ("## Output\nReturn the ```json header, then the code blocks in the order of the edits, as the "
            "format in the rules shows.")


def retry_line(edit_format: str) -> str:
    """The last line of a re-ask or repair message: what to send back."""
    if edit_format == "json":
        return "Reply again with ONE corrected JSON object that matches the schema, and nothing else."
    return ("Reply again in the fenced format: the ```json header, then one block per code edit in order "
            "(```python for definitions, SEARCH/REPLACE for search_replace), every fence closed.")


# ---------------------------------------------------------------------------------------------- parsing


@dataclass
class Block:
    """One block after the header: `kind` is "code" (a fence) or "search_replace"."""

    kind: str
    line: int  # 1-based line of its opening marker in the reply
    code: str = ""
    search: str = ""
    replace: str = ""
    lang: str = ""

    def describe(self) -> str:
        what = f"```{self.lang} block" if self.kind == "code" else "SEARCH/REPLACE block"
        return f"{what} at line {self.line}"


def _clean(text: str) -> str:
    return _OPEN_THINK_RE.sub("", _THINK_RE.sub("", text or ""))


def _split_search_replace(lines: list[str], start: int, line_no: int, problems: list[str]) -> tuple[Block | None, int]:
    """A SEARCH/REPLACE block whose SEARCH marker is lines[start]; returns it and the index after its end."""
    search: list[str] = []
    replace: list[str] = []
    i, part = start + 1, search
    seen_divider = False
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped == DIVIDER_MARK and not seen_divider:
            seen_divider, part = True, replace
        elif stripped.startswith(">>>>>>>") and seen_divider:
            return Block("search_replace", line_no, search="\n".join(search), replace="\n".join(replace)), i + 1
        elif stripped.startswith("<<<<<<<"):
            break
        else:
            part.append(lines[i])
        i += 1
    missing = f"'{REPLACE_MARK}'" if seen_divider else f"'{DIVIDER_MARK}' and '{REPLACE_MARK}'"
    problems.append(f"unterminated SEARCH/REPLACE block at line {line_no}: no {missing} after it")
    return None, i


def scan_blocks(text: str) -> tuple[list[Block], list[str]]:
    """Every fenced and SEARCH/REPLACE block of `text` in order, and the problems met (unterminated ones)."""
    lines = text.split("\n")
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        opened = _FENCE_OPEN_RE.match(line)
        if opened:
            fence, lang = opened.group(1), opened.group(2).lower()
            body: list[str] = []
            j = i + 1
            closed = False
            while j < len(lines):
                stripped = lines[j].strip()
                if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                    closed = True
                    break
                body.append(lines[j])
                j += 1
            if not closed:
                problems.append(f"unterminated fence: the {fence}{lang} block opened at line {i + 1} is never closed "
                                f"(a line with {fence} is missing; was the reply cut short?)")
                break
            inner = [b for b in body if b.strip()]
            if inner and inner[0].strip() == SEARCH_MARK:
                first = next(k for k, b in enumerate(body) if b.strip())
                block, _ = _split_search_replace(body, first, i + 1 + first + 1, problems)
                if block is not None:
                    blocks.append(block)
            else:
                blocks.append(Block("code", i + 1, code="\n".join(body) + "\n", lang=lang))
            i = j + 1
            continue
        if line.strip() == SEARCH_MARK:
            block, i = _split_search_replace(lines, i, i + 1, problems)
            if block is not None:
                blocks.append(block)
            continue
        i += 1
    return blocks, problems


def _header(text: str, blocks: list[Block]) -> tuple[dict[str, Any] | None, list[Block], str]:
    """The header object, the blocks after it, and a problem when there is no header."""
    for k, block in enumerate(blocks):
        if block.kind == "code" and block.lang in ("json", "") and block.code.lstrip().startswith("{"):
            try:
                data = json.loads(block.code)
            except json.JSONDecodeError as exc:
                return None, [], (f"header: the ```json block at line {block.line} is not valid JSON: {exc.msg} "
                                  f"(line {exc.lineno} column {exc.colno} of the block)")
            if isinstance(data, dict):
                return data, blocks[k + 1:], ""
        break  # the header must come first
    # A bare JSON object before the first block (or the first fence or SEARCH marker, closed or not).
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if _FENCE_OPEN_RE.match(line) or line.strip() == SEARCH_MARK),
                 len(lines))
    before = "\n".join(lines[:first])
    start = before.find("{")
    if start != -1:
        try:
            data, _ = json.JSONDecoder().raw_decode(before, start)
        except json.JSONDecodeError as exc:
            return None, [], f"header: the JSON header before the first block does not parse: {exc.msg}"
        if isinstance(data, dict):
            return data, blocks, ""
    return None, [], ("header: no JSON header found; the reply must begin with a ```json block holding title, "
                      "rationale, citations and the edits (op, file, target)")


def _slug(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:48].strip("-")
    return slug if len(slug) >= 3 else f"proposal-{slug or 'x'}"


def needs_block(op: Any) -> str | None:
    """The block kind an edit op takes in the fenced format ("code", "search_replace"), or None."""
    if op in CODE_OPS:
        return "code"
    if op == "search_replace":
        return "search_replace"
    return None


def parse_fenced(text: str, metric: str = "token_accuracy") -> Proposal:
    """Parse a fenced-format reply into a Proposal; ProposalError lists every problem found.

    A reply that is one whole json-format proposal (every edit's code inline, no blocks) is read as such.
    Header fields the format leaves optional get stated defaults: `id` from the title, `expected_effect`
    {metric, increase, size 0 (not stated), low}, `risk` {medium, no failure modes stated}, `hypothesis`
    the rationale's first sentence.
    """
    cleaned = _clean(text).strip()
    if not cleaned:
        raise ProposalError(["the reply was empty"])
    blocks, problems = scan_blocks(cleaned)
    header, rest, header_problem = _header(cleaned, blocks)
    if header is None:
        raise ProposalError([header_problem, *problems])
    edits = header.get("edits")
    if not isinstance(edits, list) or not edits:
        raise ProposalError(["header.edits: required, a non-empty list of {op, file, target...}", *problems])
    if not rest and not problems and _whole_json(edits):
        return _with_defaults(header, metric)  # a whole json-format proposal, code in its strings: no blocks
    wanted: list[tuple[int, str]] = []
    for i, edit in enumerate(edits):
        if not isinstance(edit, dict):
            problems.append(f"header.edits[{i}]: expected an object, got {type(edit).__name__}")
            continue
        inline = sorted(BLOCK_FIELDS & set(edit))
        if inline:
            problems.append(f"header.edits[{i}] ({edit.get('op')}): {', '.join(inline)} must not be in the header; "
                            "write the code as a block after the header")
        if edit.get("op") not in EDIT_OPS:
            problems.append(f"header.edits[{i}]: unknown op {edit.get('op')!r}; expected one of {list(EDIT_OPS)}")
            continue
        kind = needs_block(edit["op"])
        if kind:
            wanted.append((i, kind))
    if problems:
        raise ProposalError(problems)
    if len(rest) != len(wanted):
        need = "; ".join(f"edits[{i}] ({edits[i]['op']}) takes a "
                         + ("```python block" if kind == "code" else "SEARCH/REPLACE block") for i, kind in wanted)
        got = ", ".join(b.describe() for b in rest) or "none"
        raise ProposalError([f"blocks: the header's edits take {len(wanted)} block(s) ({need or 'none'}) but the "
                             f"reply has {len(rest)} after the header ({got})"])
    filled = [dict(e) for e in edits]
    for (i, kind), block in zip(wanted, rest, strict=True):
        if block.kind != kind:
            want = "a ```python block" if kind == "code" else "a SEARCH/REPLACE block"
            problems.append(f"edits[{i}] ({edits[i]['op']}) takes {want} but its block is the {block.describe()}")
        elif kind == "code":
            filled[i]["code"] = block.code
        else:
            filled[i]["search"], filled[i]["replace"] = block.search, block.replace
    if problems:
        raise ProposalError(problems)
    data = dict(header)
    data["edits"] = filled
    return _with_defaults(data, metric)


def _whole_json(edits: list[Any]) -> bool:
    """Whether every edit carries its code inline (a json-format proposal) and at least one carries code."""
    inline = 0
    for edit in edits:
        if not isinstance(edit, dict):
            return False
        kind = needs_block(edit.get("op"))
        fields = {"code"} if kind == "code" else {"search", "replace"} if kind else set()
        if fields and not fields <= set(edit):
            return False
        inline += bool(fields)
    return inline > 0


def _with_defaults(header: dict[str, Any], metric: str) -> Proposal:
    data = dict(header)
    title = str(data.get("title") or "")
    rationale = str(data.get("rationale") or "")
    data.setdefault("id", _slug(title) if title else "proposal")
    data.setdefault("citations", [])
    if not data.get("hypothesis") and rationale:
        data["hypothesis"] = rationale.split(". ")[0].strip()
    data.setdefault("expected_effect", {"metric": metric, "direction": "increase", "size": 0.0, "confidence": "low"})
    data.setdefault("risk", {"level": "medium", "failure_modes": []})
    return load_proposal(data)


def parse_reply(text: str, edit_format: str, metric: str = "token_accuracy") -> Proposal:
    """A reply of either format as a Proposal (json: `text` is the extracted JSON object)."""
    if edit_format == "fenced":
        return parse_fenced(text, metric)
    return load_proposal(text)


def fenced_text(content: str, reasoning: str = "") -> str:
    """The part of a reply the fenced parser reads: the content without <think>, else the reasoning."""
    cleaned = _clean(content).strip()
    if cleaned:
        return cleaned
    inner = re.sub(r"</?think>", "", content or "", flags=re.IGNORECASE).strip()
    return inner or (reasoning or "").strip()


def render_fenced(proposal: Proposal) -> str:
    """`proposal` written in the fenced format (parse_fenced(render_fenced(p)) gives p back)."""
    data = json.loads(proposal.model_dump_json(exclude={"provenance"}))
    blocks: list[str] = []
    header_edits = []
    for edit in data["edits"]:
        kind = needs_block(edit["op"])
        if kind == "code":
            blocks.append("```python\n" + edit["code"].rstrip("\n") + "\n```")
        elif kind == "search_replace":
            blocks.append("\n".join([SEARCH_MARK, edit["search"], DIVIDER_MARK, edit["replace"], REPLACE_MARK]))
        header_edits.append({k: v for k, v in edit.items() if k not in BLOCK_FIELDS})
    data["edits"] = header_edits
    return "```json\n" + json.dumps(data, indent=1) + "\n```\n" + "\n".join(blocks) + "\n"
