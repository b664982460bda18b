"""The prompt handed to a proposal provider: system rules, the repo map, literature and history.

`build_prompt` assembles a `Prompt` (a system and a user message plus the JSON Schema the reply must
follow); `prompt_hash` gives the stable key the provider cache uses.

Given `budget_tokens` (what the server's context leaves for the prompt once the reply is reserved),
`build_prompt` shrinks the variable parts to fit: the literature first to short summaries, then to titles,
then to fewer papers; the history to its most recent entries; and the repo map to whatever is left (a
callable summary is re-rendered at a smaller budget, a plain string is cut at line ends). Tokens are counted
with `count_tokens` when the server offers a tokenizer, else estimated conservatively (`estimate_tokens`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

SYSTEM_RULES = """\
You improve the Hierarchical Reasoning Model (HRM) code base by proposing ONE small, testable change.
Reply with exactly one JSON object that follows the given JSON Schema: no prose, no markdown fences.

How edits work (each edit names a repository-relative `file`):
- replace_function {file, target, code}: `target` is a function or method name, qualified for methods
  (e.g. "HRMInner.forward"); `code` is the complete new definition, decorators included.
- replace_class {file, target, code}: the complete new class definition.
- add_function {file, code, after}: a new top-level function, placed after the symbol `after` (or at the end).
- add_class {file, code, after}: a new top-level class, placed the same way.
- set_value {file, target, value}: change one assignment or dataclass field default, e.g. target
  "ModelConfig.L_cycles" with value "4" (`value` is a Python expression as text).
- add_import {file, module, name, alias}: add `from module import name as alias` (name/alias may be null).
- delete_symbol {file, target}: remove a function, class or assignment.
- search_replace {file, search, replace}: `search` must match exactly one place in the file.
Each task's hyperparameters are set explicitly in hrm/presets.py (e.g. `_cpu_model`, `_cpu_train`): a
ModelConfig/TrainConfig default in hrm/config.py only matters for fields a preset leaves unset, so change
the preset when you mean the task's value. Every file of hrm/ may be edited. The data, the held-out split,
the scoring, the number of evaluation segments and the training budget belong to the harness, outside hrm/:
the score is what your model learned within the budget, measured on puzzles it never sees.
Every target must exist exactly once; code must be valid Python for the current file. Prefer whole-function
replacement over textual search/replace. Keep the change focused: one idea, at most a few edits.
Ground the idea in the literature: cite arXiv ids ONLY from the list you are given.
Do not repeat a change that was already tried; learn from the verdicts in the history."""

CHARS_PER_TOKEN_ESTIMATE = 3  # conservative: code and JSON often run near 3 characters per token
MESSAGE_OVERHEAD_TOKENS = 8  # chat-template tokens around each message (role markers, separators)
LITERATURE_SHARE = 0.25  # of the variable budget, at most
HISTORY_SHARE = 0.25  # what was tried and how it ended teaches more than one more definition
COMPACT_HISTORY_CHARS = 200  # a history entry's one-line form, when the full entries do not fit
SHORT_SUMMARY_CHARS = 140

TokenCounter = Callable[[str], int]
SummarySource = Union[str, Callable[[int], str]]  # text, or a renderer taking a token budget


def estimate_tokens(text: str) -> int:
    """A conservative token count without a tokenizer: one token per 3 characters, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN_ESTIMATE)


def count_messages(messages: Sequence[dict[str, str]], count_tokens: TokenCounter | None = None) -> int:
    """Tokens of a chat request: each message's content plus the template's overhead, plus the reply primer."""
    count = count_tokens or estimate_tokens
    return sum(count(m.get("content", "")) + MESSAGE_OVERHEAD_TOKENS for m in messages) + MESSAGE_OVERHEAD_TOKENS


class PromptBudgetError(ValueError):
    """Even the fixed parts of the prompt do not fit the token budget: a configuration problem."""

    kind = "config"


class _PaperLike(Protocol):
    arxiv_id: str
    title: str
    summary: str


@dataclass(frozen=True)
class HistoryItem:
    """One earlier proposal and how it fared, shown to the model so it avoids repeats."""

    proposal_id: str
    title: str
    verdict: str  # e.g. "merged", "rejected: smoke failed", "worse than parent"
    score: float | None = None  # the mean paired gain over the parent (candidate minus parent), when judged
    catalogue_id: str | None = None
    idea: str = ""  # the rationale, shortened
    files: tuple[str, ...] = ()  # the files its edits touched
    symbols: tuple[str, ...] = ()  # the symbols its edits targeted
    gain_interval: tuple[float, float] | None = None  # 95% t interval of the mean gain
    pairs: int = 0  # seed pairs behind the gain
    error_tail: str = ""  # for a failure: the last lines of the error

    def line(self, compact: bool = False) -> str:
        gain = ""
        if self.score is not None:
            gain = f" mean gain {self.score:+.4f}"
            if self.gain_interval is not None:
                lo, hi = self.gain_interval
                gain += f" (95% interval {lo:+.4f} to {hi:+.4f}"
                gain += f", {self.pairs} seed pairs)" if self.pairs else ")"
            elif self.pairs:
                gain += f" ({self.pairs} seed pair{'s' if self.pairs != 1 else ''})"
        lines = [f"- [{self.proposal_id}] {self.title}: {self.verdict}{gain}"]
        if compact:  # one line: the verdict (and why it ended) survives where the idea and edits do not fit
            return _clip(lines[0], COMPACT_HISTORY_CHARS)
        if self.idea:
            lines.append(f"  idea: {self.idea}")
        if self.files or self.symbols:
            where = ", ".join(self.files)
            lines.append(f"  edited: {where}" + (f" ({', '.join(self.symbols)})" if self.symbols else ""))
        if self.error_tail:
            lines.append("  error: " + "\n         ".join(self.error_tail.splitlines()))
        return "\n".join(lines)


@dataclass
class Prompt:
    """Messages and schema for one proposal request, plus context some providers read directly."""

    system: str
    user: str
    schema: dict[str, Any]
    tried: list[str] = field(default_factory=list)  # titles and catalogue ids already tried
    allowed_citations: list[str] = field(default_factory=list)  # the run's fixed list, shown or not
    seed: int = 0
    metric: str = "exact_accuracy"
    budget_tokens: int | None = None  # what the prompt had to fit in (None: no limit known)
    prompt_tokens: int = 0  # counted (or estimated) tokens of the two messages, template overhead included
    reply_tokens: int | None = None  # the reply limit the prompt announces
    shown_citations: list[str] = field(default_factory=list)  # the ids printed in this prompt
    trimmed: list[str] = field(default_factory=list)  # what was shortened to fit, in words
    edit_format: str = "json"  # how the reply is written: json | fenced (evolver/propose/providers/reply_formats.py)

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


def prompt_hash(prompt: Prompt, model: str = "") -> str:
    """sha256 over model, messages and schema: the same request always gives the same key."""
    payload = json.dumps(
        {"model": model, "messages": prompt.messages, "schema": prompt.schema},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def goal_for(metric: str) -> str:
    return f"raise {metric} on the evaluation split within the same training budget"


# -- blocks -----------------------------------------------------------------------------------------------


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def _paper_line(paper: _PaperLike, level: str) -> str:
    if level == "titles":
        return f"- arXiv:{paper.arxiv_id} \"{paper.title}\""
    concepts = getattr(paper, "concepts", None)
    tag = f" [{', '.join(concepts)}]" if concepts else ""
    summary = paper.summary if level == "full" else _shorten(paper.summary, SHORT_SUMMARY_CHARS)
    return f"- arXiv:{paper.arxiv_id} \"{paper.title}\"{tag}: {summary}"


def _literature_block(literature: Sequence[_PaperLike], level: str = "full", omitted: int = 0) -> str:
    if not literature:
        if omitted:
            return f"({omitted} papers omitted for space; cite nothing rather than invent ids)"
        return "(no papers available this cycle; cite nothing rather than invent ids)"
    lines = [_paper_line(p, level) for p in literature]
    if omitted:
        lines.append(f"({omitted} more omitted for space)")
    return "\n".join(lines)


def _history_block(history: Sequence[HistoryItem], omitted: int = 0, compact: bool = False) -> str:
    if not history:
        return f"({omitted} earlier attempts omitted for space)" if omitted else "(nothing tried yet)"
    lines = [f"({omitted} older attempts omitted for space)"] if omitted else []
    return "\n".join(lines + [item.line(compact) for item in history])


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _cut_lines(text: str, fits: Callable[[str], bool]) -> str:
    """The longest prefix of whole lines of `text` (plus a marker) that `fits`; "" when none does."""
    if fits(text):
        return text
    lines = text.splitlines()
    marker = "...[map truncated to fit the context]"
    keep = _largest(len(lines), lambda k: fits("\n".join(lines[:k] + [marker])))
    if keep == 0:
        return marker if fits(marker) else ""
    return "\n".join(lines[:keep] + [marker])


CODE_HEADING = "## Editable code (map)"
SOURCE_HEADING = "## Source of hrm/ (whole definitions, most relevant first)"


def _assemble(goal_line: str, summary: str, papers: str, history: str, output: str, facts: str = "",
              heading: str = CODE_HEADING) -> str:
    return "\n\n".join(
        ([goal_line] if not facts else [goal_line, facts.strip()])
        + [
            heading + "\n" + summary.strip(),
            "## Papers you may cite (use these arXiv ids in `citations`)\n" + papers,
            "## Already tried (do not repeat failures)\n" + history,
            output,
        ]
    )


def _output_block(metric: str, reply_tokens: int | None, edit_format: str = "json") -> str:
    from evolver.propose.providers.reply_formats import (
        output_rules,  # lazy: evolver.propose.providers imports this module
    )

    text = output_rules(metric, edit_format)
    if reply_tokens:
        text += (
            f" The whole reply must fit in {reply_tokens} tokens (about {reply_tokens * CHARS_PER_TOKEN_ESTIMATE} "
            "characters): keep the text fields short and the edits small."
        )
    return text


# -- build ------------------------------------------------------------------------------------------------


def build_prompt(
    summary: SummarySource,
    literature: Sequence[_PaperLike],
    history: Sequence[HistoryItem],
    schema: dict[str, Any],
    *,
    metric: str = "exact_accuracy",
    goal: str | None = None,
    seed: int = 0,
    extra_tried: Iterable[str] = (),
    budget_tokens: int | None = None,
    reply_tokens: int | None = None,
    count_tokens: TokenCounter | None = None,
    facts: str = "",
    code_heading: str = CODE_HEADING,
    unbounded_summary_tokens: int = 2000,
    edit_format: str = "json",
) -> Prompt:
    """Assemble the request: repo map, literature to cite, what was tried, and the output contract.

    `literature` is the run's citable list, chosen once per run: every id in it is allowed, whether or not
    the budget leaves room to print it. `summary` is the repo map, or a callable that renders it within a
    token budget (e.g. `lambda b: build_repo_summary(root, budget_tokens=b)`). With `budget_tokens`, the
    prompt (both messages, template overhead included) is shrunk to fit, or PromptBudgetError is raised
    when even its fixed parts do not. `facts` (the task facts and resolved configuration, evolver/propose/task_facts.py)
    belong to the fixed part: never shortened. `code_heading` names what `summary` holds (a map, or source);
    without a budget, a callable summary is rendered at `unbounded_summary_tokens`.
    `edit_format` (json | fenced) picks the reply format the rules explain.
    """
    from evolver.propose.providers.reply_formats import (
        system_rules,  # lazy: evolver.propose.providers imports this module
    )

    count = count_tokens or estimate_tokens
    system = system_rules(SYSTEM_RULES, edit_format)
    goal_line = f"Goal: {goal or goal_for(metric)}."
    output = _output_block(metric, reply_tokens, edit_format)
    papers, hist = list(literature), list(history)
    trimmed: list[str] = []

    def total(user: str) -> int:
        return count_messages([{"content": system}, {"content": user}], count)

    def render_summary(budget: int | None) -> str:
        return summary if isinstance(summary, str) else summary(budget if budget is not None else unbounded_summary_tokens)

    if budget_tokens is None:
        lit_text, hist_text = _literature_block(papers), _history_block(hist)
        shown = [p.arxiv_id for p in papers]
        user = _assemble(goal_line, render_summary(None), lit_text, hist_text, output, facts, code_heading)
    else:
        fixed = total(_assemble(goal_line, "", "", "", output, facts, code_heading))
        room = budget_tokens - fixed
        if room < 64:
            raise PromptBudgetError(
                f"the prompt's fixed part needs {fixed} tokens but only {budget_tokens} are left for the prompt; "
                "raise the server's context size and --context-tokens (HRM_CONTEXT_TOKENS), "
                "or lower --max-reply-tokens (HRM_MAX_REPLY_TOKENS)"
            )
        lit_text, shown, lit_note = _fit_literature(papers, int(room * LITERATURE_SHARE), count)
        hist_text, hist_note = _fit_history(hist, int(room * HISTORY_SHARE), count)
        trimmed += [n for n in (lit_note, hist_note) if n]
        left = room - count(lit_text) - count(hist_text)
        user = _fit_summary(render_summary, not isinstance(summary, str), left, count, trimmed,
                            lambda s: _assemble(goal_line, s, lit_text, hist_text, output, facts, code_heading),
                            lambda u: total(u) <= budget_tokens)
    tried: list[str] = []
    for item in history:
        tried.append(item.title)
        if item.catalogue_id:
            tried.append(item.catalogue_id)
    tried.extend(extra_tried)
    return Prompt(
        system=system,
        user=user,
        schema=schema,
        tried=tried,
        allowed_citations=[p.arxiv_id for p in papers],
        seed=seed,
        metric=metric,
        budget_tokens=budget_tokens,
        prompt_tokens=total(user),
        reply_tokens=reply_tokens,
        shown_citations=shown,
        trimmed=trimmed,
        edit_format=edit_format,
    )


def _largest(n: int, fits: Callable[[int], bool]) -> int:
    """The largest k in 0..n with fits(k), for a `fits` that holds up to some k and fails beyond (k=0 assumed)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _fit_literature(papers: list[_PaperLike], cap: int, count: TokenCounter) -> tuple[str, list[str], str]:
    """The richest rendering of the papers within `cap` tokens; fewer papers (titles only) as a last resort."""
    for level in ("full", "short", "titles"):
        text = _literature_block(papers, level)
        if count(text) <= cap:
            note = "" if level == "full" else f"literature: {level} rendering"
            return text, [p.arxiv_id for p in papers], note

    def block(keep: int) -> str:
        return _literature_block(papers[:keep], "titles", omitted=len(papers) - keep)

    keep = _largest(len(papers), lambda k: count(block(k)) <= cap)
    return block(keep), [p.arxiv_id for p in papers[:keep]], f"literature: {keep} of {len(papers)} papers, titles only"


def _fit_history(history: list[HistoryItem], cap: int, count: TokenCounter) -> tuple[str, str]:
    """The most recent history entries within `cap` tokens: in full while they fit, else one compact line each
    (title, verdict, why it ended, gain), so a small context still learns what was tried and how it ended."""

    def block(keep: int, compact: bool = False) -> str:
        return _history_block(history[len(history) - keep:], omitted=len(history) - keep, compact=compact)

    full = block(len(history))
    if count(full) <= cap:
        return full, ""
    keep = _largest(len(history), lambda k: count(block(k)) <= cap)
    if keep < len(history):
        short = _largest(len(history), lambda k: count(block(k, compact=True)) <= cap)
        if short > keep:
            return block(short, compact=True), f"history: last {short} of {len(history)} entries, one line each"
    return block(keep), f"history: last {keep} of {len(history)} entries"


def _fit_summary(render: Callable[[int | None], str], rerender: bool, left: int, count: TokenCounter,
                 trimmed: list[str], assemble: Callable[[str], str], fits: Callable[[str], bool]) -> str:
    """The repo map re-rendered (or cut) until the whole user message fits."""
    budget = max(left, 0)
    text = render(budget)
    tries = 8 if rerender else 0
    while tries and not fits(assemble(text)) and budget > 16:
        # A renderer with its own (looser) estimate overshoots: ask again for proportionally less.
        used = max(count(text), 1)
        budget = max(16, int(budget * min(0.9, left / used)))
        text = render(budget)
        tries -= 1
        if "map: re-rendered smaller" not in trimmed:
            trimmed.append("map: re-rendered smaller")
    if not fits(assemble(text)):
        text = _cut_lines(text, lambda s: fits(assemble(s)))
        trimmed.append("map: cut at a line end")
    return assemble(text)
