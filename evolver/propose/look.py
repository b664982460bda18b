"""Look, then edit: what the request holds, and the two-request protocol for when the budget cannot hold it.

`RequestContext` gathers what every proposal request states (the task facts and the resolved configuration,
evolver/propose/task_facts.py) and packs the source of hrm/ into the budget (evolver/propose/source_pack.py).
`ask_for_proposal` sends it with one of the protocols:

- direct: one request with the facts, the packed source and the map of the rest; the reply is the proposal.
- look-then-edit: a first, small request (`request_look`) asks for the idea and a bounded list of symbols the
  model wants to see (`LOOK_SCHEMA`: `{"idea": str, "symbols": [str, ...]}`, at most `MAX_SYMBOLS`); a second
  request sends those symbols' full source first (then whatever else fits) with the idea, and asks for the
  edits. Both are built within the provider's prompt budget and recorded with the candidate (the look
  step's prompt size, reply, symbols found and not found, and its transcript, under `info["look"]`).
- auto: look-then-edit when the direct request could not fit the core definitions (the preset builders, the
  forward path, the loss head, the optimiser step); direct otherwise. The offline catalogue, and a provider
  replaying recorded replies (whose cache holds only the edit requests), always go direct.

`request_look` is a separate request function on the provider's transport (retries, progress, transcript);
it does not touch the provider's proposal parsing, so another reply format can reuse it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edits.paths import DEFAULT_POLICY, PathPolicy
from evolver.propose.prompt import (
    SOURCE_HEADING,
    HistoryItem,
    Prompt,
    TokenCounter,
    _fit_history,
    _fit_literature,
    _history_block,
    _literature_block,
    count_messages,
    goal_for,
)
from evolver.propose.providers.base import Provider, ProviderError, ProviderReply, _Call, extract_json_text
from evolver.propose.providers.records import Attempt, ProgressCallback
from evolver.propose.repair import Repaired, Repairer
from evolver.propose.source_pack import (
    FOCUS_MAP_SHARE,
    LOOK_MAP_SHARE,
    MAP_SHARE,
    SourceIndex,
    SourcePack,
    pack_source,
    source_of,
)
from evolver.propose.task_facts import ResolvedConfig, TaskFacts, render_facts_block, resolve_preset

PROTOCOLS = ("auto", "direct", "look-then-edit")
MAX_SYMBOLS = 8
LOOK_HISTORY_SHARE = 0.15
LOOK_LITERATURE_SHARE = 0.1  # the look step sees the papers in short (titles when tight)
UNBOUNDED_SOURCE_TOKENS = 24000  # source packed when the server's context is not known (e.g. api.openai.com)

LOOK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "idea": {"type": "string", "description": "the one change you propose, in one to three sentences"},
        "symbols": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_SYMBOLS,
                    "description": "qualified names of the definitions you need to read in full, e.g. HRMInner.forward"},
    },
    "required": ["idea", "symbols"],
    "additionalProperties": False,
}

LOOK_RULES = f"""\
You improve the Hierarchical Reasoning Model (HRM) code base by proposing ONE small, testable change to hrm/.
This is the first of two steps. Now: choose the idea and say which definitions you need to read in full to
write its edits. Next: you will get their full source and write the edits.
Reply with exactly one JSON object and nothing else: {{"idea": "...", "symbols": ["...", ...]}}.
`idea` is the change in one to three sentences. `symbols` lists at most {MAX_SYMBOLS} qualified names from the
code shown or listed (e.g. "HRMInner.forward", "_cpu_train", "ModelConfig"), the ones your edits will change
or must read. A task's hyperparameters are set in hrm/presets.py; the budget, the data and the scoring belong
to the harness. Do not repeat a change that was already tried."""


@dataclass
class LookReply:
    """What the look step produced."""

    idea: str
    symbols: list[str]
    prompt_tokens: int
    budget_tokens: int | None
    attempts: int
    latency_s: float
    transcript: list[Attempt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"idea": self.idea, "symbols": list(self.symbols), "prompt_tokens": self.prompt_tokens,
                "budget_tokens": self.budget_tokens, "attempts": self.attempts, "llm_seconds": round(self.latency_s, 3),
                "transcript": [a.to_dict() for a in self.transcript]}


def parse_look(text: str) -> tuple[str, list[str], list[str]]:
    """(idea, symbols, problems) from a look reply's JSON text; symbols beyond MAX_SYMBOLS are dropped."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return "", [], [f"not JSON: {exc}"]
    if not isinstance(data, dict):
        return "", [], ["the reply must be a JSON object"]
    problems = []
    idea = data.get("idea")
    if not isinstance(idea, str) or not idea.strip():
        problems.append("idea: a non-empty string is required")
    symbols = data.get("symbols")
    if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
        problems.append("symbols: a list of strings is required")
        symbols = []
    unknown = sorted(set(data) - {"idea", "symbols"})
    if unknown:
        problems.append(f"unknown field(s): {', '.join(unknown)}")
    clean = [s.strip() for s in symbols if s.strip()][:MAX_SYMBOLS]
    return (idea or "").strip() if isinstance(idea, str) else "", clean, problems


def request_look(provider: Provider, prompt: Prompt, progress: ProgressCallback | None = None) -> LookReply:
    """Send the look request over the provider's transport; re-ask (at most `max_attempts` tries) until the
    reply holds an idea and a list of symbols. ProviderError when none does."""
    call = _Call(provider, progress or provider.progress)
    messages = [dict(m) for m in prompt.messages]
    problems: list[str] = []
    for attempt in range(1, provider.max_attempts + 1):
        call.attempt = attempt
        max_tokens = provider._max_tokens_for(messages)
        completion = provider._call_with_retries(messages, prompt.schema, provider.temperature, max_tokens, call)
        text = extract_json_text(completion.content, completion.reasoning)
        idea, symbols, problems = parse_look(text)
        call.record(completion, "refused" if problems else "accepted", problems, max_tokens)
        if not problems:
            call.emit("accepted", detail=f"look: {len(symbols)} symbol(s)")
            return LookReply(idea, symbols, prompt.prompt_tokens, prompt.budget_tokens, attempt,
                             time.monotonic() - call.started, call.transcript)
        call.emit("refused", detail="look reply", problems=problems)
        messages = [dict(m) for m in prompt.messages] + [
            {"role": "assistant", "content": (text or completion.content)[:400] or "(empty)"},
            {"role": "user", "content": "That reply was not valid:\n" + "\n".join(f"  - {p}" for p in problems)
             + '\nReply again with ONE JSON object {"idea": "...", "symbols": [...]} and nothing else.'},
        ]
    raise ProviderError(f"{provider.name}: no valid look reply after {provider.max_attempts} tries: "
                        + "; ".join(problems), kind="invalid_proposal", attempts=call.transcript)


@dataclass
class RequestContext:
    """What every proposal request of one cycle states, and the source it packs."""

    root: Path  # the parent's tree (its hrm/ is read, never imported)
    task: str
    facts: TaskFacts
    resolved: ResolvedConfig = field(init=False)
    index: SourceIndex = field(init=False)
    last_pack: SourcePack | None = field(default=None, init=False)
    _memo: dict[int, dict[str, int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.resolved = resolve_preset(self.root, self.task)
        self.index = SourceIndex.build(self.root)

    def facts_block(self) -> str:
        return render_facts_block(self.facts, self.resolved)

    def counter(self, count: TokenCounter) -> TokenCounter:
        """`count` remembered per text: the packer counts each definition once per cycle, not once per try (a
        server tokenizer is an HTTP request)."""
        memo = self._memo.setdefault(id(count), {})

        def counted(text: str) -> int:
            if text not in memo:
                memo[text] = count(text)
            return memo[text]
        return counted

    def renderer(self, count: TokenCounter, focus: Sequence[str] = (), map_share: float | None = None,
                 ) -> Callable[[int], str]:
        """A summary source for `build_prompt`: the packed source at whatever budget it is given."""
        share = map_share if map_share is not None else (FOCUS_MAP_SHARE if focus else MAP_SHARE)
        counted = self.counter(count)

        def render(budget: int) -> str:
            self.last_pack = pack_source(self.root, budget, task=self.task, count=counted, focus=focus,
                                         index=self.index, map_share=share)
            return self.last_pack.text
        return render


def look_prompt(provider: Provider, ctx: RequestContext, history: Sequence[HistoryItem], metric: str,
                literature: Sequence[Any] = ()) -> Prompt:
    """The look request within the provider's budget: the facts, the packed source (it ends with the names of
    whatever does not fit, so every symbol can be named), the papers (short), the history and the question."""
    count = provider.count_tokens
    budget = provider.prompt_budget()
    question = (f"Goal: {goal_for(metric)}.\n\n{ctx.facts_block()}")
    ask = ('## Output\nReply with ONE JSON object {"idea": "...", "symbols": ["...", ...]} '
           f"(at most {MAX_SYMBOLS} symbols).")
    papers = list(literature)

    def user(source: str, lit: str, hist: str) -> str:
        parts = [question, SOURCE_HEADING + "\n" + source]
        if papers:
            parts.append("## Papers the idea may build on\n" + lit)
        return "\n\n".join(parts + ["## Already tried (do not repeat failures)\n" + hist, ask])

    def total(text: str) -> int:
        return count_messages([{"content": LOOK_RULES}, {"content": text}], count)

    render = ctx.renderer(count, map_share=LOOK_MAP_SHARE)
    if budget is None:
        text = user(render(UNBOUNDED_SOURCE_TOKENS), _literature_block(papers, "short"), _history_block(list(history)))
    else:
        room = budget - total(user("", "", ""))
        if room < 64:
            raise ProviderError(f"{provider.name}: the look request's fixed part does not fit the prompt budget "
                                f"({budget} tokens)", kind="config")
        lit = _fit_literature(papers, int(room * LOOK_LITERATURE_SHARE), count)[0] if papers else ""
        hist = _fit_history(list(history), int(room * LOOK_HISTORY_SHARE), count)[0]
        code_budget = room - count(lit) - count(hist)
        source = render(code_budget)
        while total(user(source, lit, hist)) > budget and code_budget > 16:
            code_budget = int(code_budget * 0.9)
            source = render(code_budget)
        text = user(source, lit, hist)
    return Prompt(system=LOOK_RULES, user=text, schema=LOOK_SCHEMA, metric=metric, budget_tokens=budget,
                  prompt_tokens=total(text), reply_tokens=provider.reply_tokens())


def choose_protocol(setting: str, provider: Provider, pack: SourcePack | None) -> str:
    """"direct" or "look-then-edit" for this request."""
    if setting not in PROTOCOLS:
        raise ValueError(f"unknown protocol {setting!r}; known: {', '.join(PROTOCOLS)}")
    if provider.name == "offline" or setting == "direct" or provider.replay:
        return "direct"  # the catalogue reads no code; a replayed run has only the edit replies recorded
    if setting == "look-then-edit":
        return "look-then-edit"
    return "look-then-edit" if pack is not None and pack.core_missing else "direct"


def ask_for_proposal(provider: Provider, ctx: RequestContext, literature: Sequence[Any],
                     history: Sequence[HistoryItem], schema: dict[str, Any], *, metric: str, seed: int,
                     protocol: str = "auto", progress: ProgressCallback | None = None, edit_format: str = "json",
                     repair_turns: int = 0, policy: PathPolicy = DEFAULT_POLICY,
                     ) -> tuple[ProviderReply, Prompt, dict[str, Any], Repaired | None]:
    """(the reply, the prompt that produced it, what to record: protocol, pack and, when used, the look step,
    and the repair turns: with ``repair_turns`` an edit that does not apply to ``ctx.root`` goes back to the
    model with its error and the target's current source, evolver/propose/repair.py)."""
    facts = ctx.facts_block()

    def edit_prompt(focus: Sequence[str] = (), goal: str | None = None) -> Prompt:
        return provider.fit_prompt(ctx.renderer(provider.count_tokens, focus), literature, history, schema,
                                   metric=metric, seed=seed, facts=facts, code_heading=SOURCE_HEADING,
                                   goal=goal, unbounded_summary_tokens=UNBOUNDED_SOURCE_TOKENS,
                                   edit_format=edit_format)

    prompt = edit_prompt()
    chosen = choose_protocol(protocol, provider, ctx.last_pack)
    record: dict[str, Any] = {"protocol": chosen, "protocol_setting": protocol,
                              "direct_pack": _pack_record(ctx.last_pack)}
    look_attempts: list[Attempt] = []
    if chosen == "look-then-edit":
        look = request_look(provider, look_prompt(provider, ctx, history, metric, literature), progress)
        look_attempts = look.transcript
        found, unknown = source_of(ctx.index, look.symbols)
        focus = [f"{u.file}:{u.qualname}" for u in found]
        goal = f"{goal_for(metric)}; carry out this idea, chosen after a first look: {look.idea}"
        prompt = edit_prompt(focus, goal)
        shown = set(ctx.last_pack.included) if ctx.last_pack else set()
        record["look"] = {**look.to_dict(), "found": focus, "unknown": unknown,
                          "shown_in_full": [k for k in focus if k in shown]}
        record["edit_pack"] = _pack_record(ctx.last_pack)
    repairer = (Repairer(provider, prompt, ctx.root, max_turns=repair_turns, policy=policy)
                if repair_turns > 0 and provider.name != "offline" else None)
    try:
        reply = provider.propose(prompt, progress=progress,
                                 context_for=repairer.context_for if repairer is not None else None)
    except ProviderError as exc:
        # the refused edit replies are recorded with the look step's requests before them
        exc.attempts = look_attempts + list(exc.attempts)
        raise
    return reply, prompt, record, repairer.until_applies(reply) if repairer is not None else None


def _pack_record(pack: SourcePack | None) -> dict[str, Any] | None:
    if pack is None:
        return None
    return {"budget_tokens": pack.budget_tokens, "tokens": pack.tokens, "included": len(pack.included),
            "omitted": len(pack.omitted), "core_missing": list(pack.core_missing)}
