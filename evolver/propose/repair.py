"""Repair turns: an edit that does not apply, or a candidate that crashes a gate, goes back to the model.

After a reply validates, its edits are planned (`edits.engine.plan_edits`, nothing written) on the tree the
prompt described. When edits fail, the model gets, in the same conversation, its own reply, every edit's
exact error and the current source of each failing edit's target (the definition, extracted with libcst; for
a search_replace the definition around the closest text), and is asked for the whole proposal again, in the
run's edit format. At most `max_turns` such turns (`--repair-turns`, default 2); a proposal that still does
not apply is recorded invalid as before. A candidate that fails the smoke or trainability gate with an error
gets one turn with the error's tail (`after_gate`). Re-asks for replies that do not validate (code that does
not parse) also carry the targets' current source (`context_for`, handed to `Provider.propose`).

Every turn is kept as a dict (`RepairTurn.to_dict`): the errors sent, the sources shown, the reply (its raw
text in the transcript) and the outcome; the loop stores them with the proposal's result (`provider.repairs`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from edits.engine import EditError, plan_edits
from edits.paths import DEFAULT_POLICY, PathPolicy, PathRejected
from evolver.propose.prompt import Prompt, count_messages
from evolver.propose.providers.base import (
    TEMPLATE_MARGIN_TOKENS,
    Provider,
    ProviderError,
    ProviderReply,
    excerpt,
)
from evolver.propose.providers.reply_formats import render_fenced, retry_line, scan_blocks
from proposals.schema import Proposal

MAX_SOURCE_LINES = 80  # a target's source shown to the model is cut after this many lines
MAX_SOURCES_CHARS = 6000  # all sources of one repair message together
MAX_TAIL_CHARS = 2000  # of a gate's error
GATE_REPAIR_STAGES = ("smoke", "trainability")
REPAIR_REPLY_EXCERPT_CHARS = 1500  # the earlier reply quoted in a repair turn that does not fit otherwise


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Definition:
    qualname: str
    kind: str  # "function" | "class" | "assignment"
    start: int  # 1-based first line (decorators included)
    end: int  # 1-based last line
    source: str


class _Collector(cst.CSTVisitor):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, module: cst.Module) -> None:
        super().__init__()
        self.module = module
        self.stack: list[tuple[str, str]] = []
        self.found: list[Definition] = []

    def _add(self, name: str, kind: str, node: cst.CSTNode) -> None:
        pos = self.get_metadata(PositionProvider, node)
        qual = ".".join([n for n, _ in self.stack] + [name])
        source = re.sub(r"\A([ \t]*\n)+", "", self.module.code_for_node(node))  # blank leading lines dropped
        self.found.append(Definition(qual, kind, pos.start.line, pos.end.line, source))

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self._add(node.name.value, "function", node)
        self.stack.append((node.name.value, "function"))
        return True

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.stack.pop()

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self._add(node.name.value, "class", node)
        self.stack.append((node.name.value, "class"))
        return True

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.stack.pop()

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        if all(kind == "class" for _, kind in self.stack):
            for small in node.body:
                names: list[str] = []
                if isinstance(small, cst.Assign):
                    names = [t.target.value for t in small.targets if isinstance(t.target, cst.Name)]
                elif isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
                    names = [small.target.value]
                for name in names:
                    self._add(name, "assignment", node)
        return False


def definitions(text: str) -> list[Definition]:
    """Every function, class and module/class-level assignment of `text`, with its source (libcst)."""
    module = cst.parse_module(text)
    collector = _Collector(module)
    MetadataWrapper(module, unsafe_skip_copy=True).visit(collector)
    return collector.found


def _cut(source: str, limit: int = MAX_SOURCE_LINES) -> str:
    lines = source.strip("\n").splitlines()
    if len(lines) <= limit:
        return "\n".join(lines)
    return "\n".join(lines[:limit] + [f"# ...[{len(lines) - limit} more lines not shown]"])


def _show(file: str, label: str, definition: Definition) -> str:
    return (f"Current source of {label} in {file} (lines {definition.start}-{definition.end}):\n```python\n"
            f"{_cut(definition.source)}\n```")


def _closest_line(text: str, search: str) -> int:
    """1-based line where the text most like `search` begins (whitespace-insensitive, like the engine)."""
    lines = text.splitlines()
    want = "\n".join(" ".join(line.split()) for line in search.strip("\n").splitlines())
    size = max(1, len(search.strip("\n").splitlines()))
    best, best_at = -1.0, 0
    for start in range(max(1, len(lines) - size + 1)):
        window = "\n".join(" ".join(line.split()) for line in lines[start:start + size])
        ratio = difflib.SequenceMatcher(None, want, window).ratio()
        if ratio > best:
            best, best_at = ratio, start
    return best_at + 1


def _named(defs: list[Definition], target: str) -> tuple[Definition | None, str]:
    """The definition called `target`, else the closest name's (and a label saying so)."""
    exact = [d for d in defs if d.qualname == target]
    if exact:
        return exact[0], repr(target)
    names = [d.qualname for d in defs]
    close = difflib.get_close_matches(target, names, n=1, cutoff=0.5)
    last = target.rsplit(".", 1)[-1]
    close += [n for n in names if n.rsplit(".", 1)[-1] == last]
    if close:
        found = next(d for d in defs if d.qualname == close[0])
        return found, f"{close[0]!r} (the closest name to {target!r}, which does not exist)"
    return None, ""


def target_source(root: Path, edit: Any, policy: PathPolicy = DEFAULT_POLICY) -> str:
    """The current source an edit aims at, as a labelled ```python block; "" when there is nothing to show."""
    file = getattr(edit, "file", None) if not isinstance(edit, dict) else edit.get("file")
    get = (lambda k: edit.get(k)) if isinstance(edit, dict) else (lambda k: getattr(edit, k, None))
    if not isinstance(file, str):
        return ""
    try:
        path = policy.check(Path(root), file)
        text = path.read_text(encoding="utf-8")
        defs = definitions(text)
    except (PathRejected, OSError, UnicodeDecodeError, cst.ParserSyntaxError):
        return ""
    op = get("op")
    search = get("search")
    if op == "search_replace" and isinstance(search, str) and search.strip():
        line = _closest_line(text, search)
        around = [d for d in defs if d.kind != "assignment" and d.start <= line <= d.end]
        if around:
            inner = min(around, key=lambda d: d.end - d.start)
            return _show(file, f"{inner.qualname!r} (around the text closest to your search, line {line})", inner)
        lines = text.splitlines()
        lo, hi = max(0, line - 8), min(len(lines), line + 12)
        return (f"Current text of {file} around line {line} (closest to your search):\n```python\n"
                + "\n".join(lines[lo:hi]) + "\n```")
    target = get("target") or get("after")
    if isinstance(target, str) and target:
        found, label = _named(defs, target)
        if found is not None:
            return _show(file, label, found)
    code = get("code")
    if op in ("add_function", "add_class") and isinstance(code, str):
        match = re.search(r"^\s*(?:async\s+def|def|class)\s+([A-Za-z_]\w*)", code, re.MULTILINE)
        if match:
            same = [d for d in defs if d.qualname.rsplit(".", 1)[-1] == match.group(1)]
            if same:
                return _show(file, f"the existing {same[0].qualname!r}", same[0])
    return ""


def sources_for(root: Path, edits: Sequence[Any], policy: PathPolicy = DEFAULT_POLICY,
                limit: int = MAX_SOURCES_CHARS) -> list[str]:
    """The distinct current sources of `edits`' targets, within `limit` characters together."""
    out: list[str] = []
    used = 0
    for edit in edits:
        shown = target_source(root, edit, policy)
        if not shown or shown in out:
            continue
        if used + len(shown) > limit:
            out.append(f"(sources of further targets left out for space: {limit} characters shown)")
            break
        out.append(shown)
        used += len(shown)
    return out


def apply_problems(root: Path, proposal: Proposal, policy: PathPolicy = DEFAULT_POLICY) -> list[EditError]:
    """Every edit of `proposal` that would not apply to the tree at `root` (nothing is written)."""
    try:
        plan_edits(Path(root), list(proposal.edits), policy)
    except EditError as exc:
        return list(exc.errors)
    return []


def _loose_edits(text: str) -> list[dict[str, Any]]:
    """The edits a refused reply meant, read as leniently as possible (for showing their targets' source)."""
    candidates: list[str] = []
    blocks, _ = scan_blocks(text)
    candidates += [b.code for b in blocks if b.kind == "code" and b.code.lstrip().startswith("{")]
    start = text.find("{")
    if start != -1:
        candidates.append(text[start:])
    for chunk in candidates:
        try:
            data, _ = json.JSONDecoder().raw_decode(chunk.strip())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("edits"), list):
            return [e for e in data["edits"] if isinstance(e, dict)]
    return []


# ---------------------------------------------------------------------------------------------- messages


def repair_message(errors: Sequence[str], sources: Sequence[str], edit_format: str, *, turn: int, turns: int,
                   what: str = "apply") -> str:
    """The user message of a repair turn: what failed, exactly, the current source, and what to send back."""
    if what == "apply":
        head = (f"Repair turn {turn} of {turns}: your proposal (above) is valid, but these edits do not apply to "
                "the current code:")
    else:
        head = (f"Repair turn {turn} of {turns}: your proposal (above) was applied, but the candidate failed the "
                f"{what} check with this error:")
    body = "\n".join(f"  - {e}" for e in errors) if what == "apply" else "\n".join(errors)
    shown = "\n\n".join(sources)
    return (f"{head}\n{body}\n\n" + (f"{shown}\n\n" if shown else "")
            + "Keep the idea, fix what failed: edits must name targets that exist and match the current source "
              "exactly (send the whole proposal again, every edit, not only the fixed ones).\n"
            + retry_line(edit_format))


def _tail(text: str, limit: int = MAX_TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "...[earlier output left out]\n" + text[-limit:]


# ---------------------------------------------------------------------------------------------- turns


@dataclass
class RepairTurn:
    turn: int
    trigger: str  # "apply" or "gate:<stage>"
    errors: list[str]
    sources: list[str]
    outcome: str = ""  # "applies", "still fails", "refused" (no valid reply), "error" (the request failed)
    reply: dict[str, Any] = field(default_factory=dict)  # the provider's info (its transcript: raw replies)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what was left out of the request to fit the context

    def to_dict(self) -> dict[str, Any]:
        return {"turn": self.turn, "trigger": self.trigger, "errors": list(self.errors),
                "sources": list(self.sources), "outcome": self.outcome, "reply": self.reply,
                "seconds": round(self.seconds, 3), "notes": list(self.notes)}


@dataclass
class Repaired:
    """What repairing a reply came to: the proposal to go on with (the last valid one), every turn, and the
    errors still left (none: it applies)."""

    proposal: Proposal
    reply: ProviderReply | None
    turns: list[RepairTurn]
    errors: list[str]

    @property
    def applies(self) -> bool:
        return not self.errors

    def info(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.turns]


def slim_prompt(prompt: Prompt) -> Prompt:
    """The first request without its code map, papers and history: its goal line and its output section."""
    parts = prompt.user.split("\n\n")
    goal = parts[0] if parts and parts[0].startswith("Goal:") else ""
    output = next((p for p in parts if p.startswith("## Output")), "")
    user = "\n\n".join(x for x in (goal, "(The code map, papers and history of the first request are left out of "
                                          "this repair turn for space; the current source of the targets is below.)",
                                    output) if x)
    return dataclasses.replace(prompt, user=user)


def reply_text(reply: ProviderReply, edit_format: str) -> str:
    """What the model said, to quote back as its turn: the accepted raw text, else the proposal re-rendered."""
    accepted = [a for a in reply.transcript if a.outcome == "accepted" and a.raw_text.strip()]
    if accepted:
        return accepted[-1].raw_text
    if edit_format == "fenced":
        return render_fenced(reply.proposal)
    return reply.proposal.model_dump_json(exclude={"provenance"})


class Repairer:
    """Repair turns for one prompt's proposals, against the tree the prompt described (`root`)."""

    def __init__(self, provider: Provider, prompt: Prompt, root: Path, *, max_turns: int = 2,
                 policy: PathPolicy = DEFAULT_POLICY) -> None:
        self.provider = provider
        self.prompt = prompt
        self.root = Path(root)
        self.max_turns = max(0, int(max_turns))
        self.policy = policy
        self.edit_format = getattr(prompt, "edit_format", "json")

    def context_for(self, refused: str) -> str:
        """For a re-ask of a reply that did not validate: the current source of the edits' targets."""
        shown = sources_for(self.root, _loose_edits(refused), self.policy, limit=MAX_SOURCES_CHARS // 2)
        return "\n\n".join(shown)

    def _room(self, prompt: Prompt, follow_up: list[dict[str, str]]) -> bool:
        """Whether the conversation leaves the reply its full limit in the server's context (unknown: yes)."""
        ctx = self.provider.context_tokens
        if ctx is None:
            return True
        used = count_messages([*prompt.messages, *follow_up], self.provider.count_tokens)
        return used + self.provider.reply_tokens() + TEMPLATE_MARGIN_TOKENS <= ctx

    def _fit(self, previous: str, make: Callable[[list[str]], str],
             sources: list[str]) -> tuple[Prompt, list[dict[str, str]], list[str]]:
        """The repair request that fits the context: the whole first request if it can; else without its code
        map, papers and history (the target's source is what a repair needs); then fewer sources; then only the
        start of the earlier reply. Returns the prompt, the follow-up and the notes on what was left out."""
        notes: list[str] = []

        def turn(prev: str, shown: list[str]) -> list[dict[str, str]]:
            return [{"role": "assistant", "content": prev}, {"role": "user", "content": make(shown)}]

        prompt = self.prompt
        if self._room(prompt, turn(previous, sources)):
            return prompt, turn(previous, sources), notes
        prompt = slim_prompt(self.prompt)
        notes.append("the first request's code map, papers and history were left out for space")
        shown = list(sources)
        while shown and not self._room(prompt, turn(previous, shown)):
            shown.pop()
            notes.append("a target's source was left out for space")
        if not self._room(prompt, turn(previous, shown)):
            previous = excerpt(previous, REPAIR_REPLY_EXCERPT_CHARS)
            notes.append("the earlier reply was shortened for space")
        return prompt, turn(previous, shown), notes

    def _ask(self, previous: str, make: Callable[[list[str]], str], sources: list[str],
             turn: RepairTurn) -> ProviderReply | None:
        prompt, follow_up, notes = self._fit(previous, make, sources)
        turn.notes = notes
        started = time.monotonic()
        try:
            reply = self.provider.propose(prompt, follow_up=follow_up, context_for=self.context_for)
        except ProviderError as exc:
            turn.outcome = "refused" if exc.kind in ("invalid_proposal", "truncated") else "error"
            turn.reply = exc.to_dict()
            return None
        finally:
            turn.seconds = time.monotonic() - started
        turn.reply = reply.info()
        return reply

    def until_applies(self, reply: ProviderReply) -> Repaired:
        """Up to `max_turns` repair turns while the proposal's edits do not apply; the last valid proposal."""
        proposal = reply.proposal
        errors = apply_problems(self.root, proposal, self.policy)
        turns: list[RepairTurn] = []
        while errors and len(turns) < self.max_turns:
            failing = [proposal.edits[e.index] for e in errors if 0 <= e.index < len(proposal.edits)]
            described = [e.describe() for e in errors]
            turn = RepairTurn(len(turns) + 1, "apply", described, sources_for(self.root, failing, self.policy))
            turns.append(turn)
            def make(shown: list[str], described: list[str] = described, number: int = turn.turn) -> str:
                return repair_message(described, shown, self.edit_format, turn=number, turns=self.max_turns)

            answer = self._ask(reply_text(reply, self.edit_format), make, turn.sources, turn)
            if answer is None:
                break
            reply = answer
            proposal = answer.proposal.model_copy(update={"id": proposal.id})
            errors = apply_problems(self.root, proposal, self.policy)
            turn.outcome = "still fails" if errors else "applies"
        return Repaired(proposal, reply, turns, [e.describe() for e in errors])

    def after_gate(self, proposal: Proposal, reply: ProviderReply | None, stage: str, error: str) -> Repaired:
        """One repair turn for a candidate that failed `stage` (smoke, trainability) with `error`. `.applies`:
        the model gave a valid proposal whose edits apply (`.proposal`); else the turn says what happened."""
        turn = RepairTurn(1, f"gate:{stage}", [_tail(error)], sources_for(self.root, proposal.edits, self.policy))

        def make(shown: list[str]) -> str:
            return repair_message(turn.errors, shown, self.edit_format, turn=1, turns=1, what=stage)

        if reply is not None:
            previous = reply_text(reply, self.edit_format)
        elif self.edit_format == "fenced":
            previous = render_fenced(proposal)
        else:
            previous = proposal.model_dump_json(exclude={"provenance"})
        answer = self._ask(previous, make, turn.sources, turn)
        if answer is None:
            return Repaired(proposal, reply, [turn], turn.errors)
        repaired = answer.proposal.model_copy(update={"id": proposal.id})
        errors = apply_problems(self.root, repaired, self.policy)
        turn.outcome = "still fails" if errors else "applies"
        return Repaired(repaired, answer, [turn], [e.describe() for e in errors])


def ask_and_repair(provider: Provider, prompt: Prompt, root: Path, turns: int,
                   policy: PathPolicy = DEFAULT_POLICY, progress: Any = None) -> tuple[ProviderReply, Repaired | None]:
    """Ask for a proposal (re-asks carry the targets' current source), then repair turns until it applies: the
    first reply and the repairs (None for a provider that holds no conversation, the offline catalogue)."""
    if provider.name == "offline":
        return provider.propose(prompt, progress), None
    repairer = Repairer(provider, prompt, root, max_turns=turns, policy=policy)
    reply = provider.propose(prompt, progress, context_for=repairer.context_for)
    return reply, repairer.until_applies(reply)
