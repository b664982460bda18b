"""Shared provider machinery: errors, reply extraction, transport retries, re-asking, budgets, stats, cache.

A concrete provider implements one streamed chat call, `_complete(messages, schema, temperature, max_tokens,
on_tokens) -> Completion`, and the preflight probes (`_list_models`, `_context_of`, `_tokenizer`).
`Provider.propose` does the rest: cache look-up, retries with exponential backoff on transient failures,
validation with `proposals.schema.load_proposal`, and up to `max_attempts` re-asks that quote every validation
problem and a short excerpt of the refused reply. Every request is kept as an `Attempt` (on the reply, or on
the ProviderError that ends the call) so refused replies can be reviewed.

Token budget: with the server's context C (read by `preflight`, else the `context_tokens` setting), a reply
limit R (`max_reply_tokens`, else C/4 within 512..4096) is sent as max_tokens, and the prompt must fit in
C - R - REASK_RESERVE_TOKENS - TEMPLATE_MARGIN_TOKENS (`prompt_budget()`), which leaves room for one re-ask.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from evolver.propose.prompt import (
    HistoryItem,
    Prompt,
    PromptBudgetError,
    SummarySource,
    TokenCounter,
    build_prompt,
    count_messages,
    estimate_tokens,
    prompt_hash,
)
from evolver.propose.providers.cache import ReplyCache
from evolver.propose.providers.records import Attempt, LLMProgress, ProgressCallback, ServerInfo
from evolver.propose.providers.reply_formats import fenced_text, parse_reply, retry_line
from proposals.schema import Proposal, ProposalError, load_proposal

MAX_ATTEMPTS = 3  # total tries at getting a valid proposal from one prompt
REASK_RESERVE_TOKENS = 400  # room kept free in the prompt budget for a re-ask (errors + a reply excerpt)
TEMPLATE_MARGIN_TOKENS = 32  # slack for chat-template tokens the counter cannot see
MIN_REPLY_TOKENS = 128
MIN_PROMPT_TOKENS = 1200  # below this no useful proposal prompt fits (the rules alone are ~700)
REASK_EXCERPT_CHARS = 600  # a re-ask quotes at most this much of the refused reply
REASK_PROBLEM_CHARS = 1500  # and at most this much of its problem list
CONTEXT_SETTINGS_HINT = (
    "raise the server's context size (llama.cpp -c/--ctx-size, LM Studio's context length, Ollama num_ctx) and "
    "pass the same --context-tokens (HRM_CONTEXT_TOKENS), or lower --max-reply-tokens (HRM_MAX_REPLY_TOKENS)"
)


def default_reply_tokens(context_tokens: int | None) -> int:
    """The reply limit when none is set: a quarter of the context, within 512..4096 (2048 when unknown)."""
    if context_tokens is None:
        return 2048
    return max(512, min(4096, context_tokens // 4))


class ProviderError(RuntimeError):
    """A provider could not produce a valid proposal; the message says why and what to do.

    `kind` "config" (and "unreachable") means no later cycle can do better: stop the run. `attempts` holds
    every request made in the failed call, refused replies included (see `Attempt`).
    """

    def __init__(self, message: str, *, kind: str = "error", attempts: Sequence[Attempt] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.attempts: list[Attempt] = list(attempts or [])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": str(self), "attempts": [a.to_dict() for a in self.attempts]}


class TransientError(Exception):
    """Raised by `_complete` for a failure worth retrying (kind: connection, timeout, server_error...).

    `partial` is whatever the stream delivered before it broke off.
    """

    def __init__(self, kind: str, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.partial = partial


@dataclass
class Completion:
    """What one chat call returned, before any interpretation."""

    content: str
    reasoning: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str | None = None
    model: str = ""  # the model the server says it served (response.model)


@dataclass
class ProviderReply:
    proposal: Proposal
    raw_text: str  # the JSON text that validated
    provider: str
    model: str  # the model that served the accepted reply (what provenance records)
    prompt_hash: str
    attempts: int  # chat calls that produced a reply (1 = valid first time)
    cached: bool = False
    latency_s: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    requested_model: str = ""
    max_tokens: int | None = None
    dropped_citations: list[str] = field(default_factory=list)  # cited ids outside the list, removed on the last try
    transcript: list[Attempt] = field(default_factory=list)  # every request of this call, refused replies included

    def info(self) -> dict[str, Any]:
        """What the loop stores beside the proposal: the provider's side of the story, JSON-ready."""
        return {
            "provider": self.provider,
            "model": self.model,
            "requested_model": self.requested_model or self.model,
            "prompt_hash": self.prompt_hash,
            "attempts": self.attempts,
            "cached": self.cached,
            "llm_seconds": round(self.latency_s, 3),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "max_tokens": self.max_tokens,
            "dropped_citations": list(self.dropped_citations),
            "transcript": [a.to_dict() for a in self.transcript],
        }


@dataclass
class ProviderStats:
    requests: int = 0  # HTTP calls made, including failed ones
    replies: int = 0  # calls that returned a body
    proposals: int = 0  # valid proposals returned
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    cache_hits: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "replies": self.replies,
            "proposals": self.proposals,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_s": round(self.latency_s, 4),
            "cache_hits": self.cache_hits,
            "failures": dict(self.failures),
        }


_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_OPEN_THINK_RE = re.compile(r"<think>.*\Z", re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


def _json_objects(text: str) -> list[str]:
    """Every top-level JSON object that parses inside `text`, in order of appearance."""
    decoder = json.JSONDecoder()
    found: list[str] = []
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found.append(text[i:end])
        i = text.find("{", end)
    return found


def _pick(objects: list[str]) -> str:
    """The last object that looks like a proposal (has "edits"), else the last one.

    Reasoning models often draft and then restate; the final statement is the answer.
    """
    proposals = [o for o in objects if '"edits"' in o]
    return (proposals or objects)[-1]


def extract_json_text(content: str, reasoning: str = "") -> str:
    """Pull the proposal JSON out of a reply.

    Handles <think> blocks, ``` fences, prose around the object, and reasoning models that leave
    `content` empty and put the answer in `reasoning_content`/`reasoning`. When nothing parses, the
    cleaned text is returned as-is so the validator can report exactly what is wrong with it.
    """
    cleaned = _OPEN_THINK_RE.sub("", _THINK_RE.sub("", content or "")).strip()
    candidates = [cleaned] if cleaned else []
    if reasoning and reasoning.strip():
        candidates.append(reasoning.strip())
    if not cleaned and content:
        # Only a <think> block: the answer may sit inside it.
        candidates.append(re.sub(r"</?think>", "", content, flags=re.IGNORECASE).strip())
    for text in candidates:
        fenced = _FENCE_RE.findall(text)
        for block in fenced:
            objects = _json_objects(block)
            if objects:
                return _pick(objects)
        objects = _json_objects(text)
        if objects:
            return _pick(objects)
    if cleaned:
        unfenced = _FENCE_RE.findall(cleaned)
        return unfenced[0].strip() if unfenced else cleaned
    return reasoning.strip() if reasoning else ""


def _base_id(arxiv_id: str) -> str:
    return re.sub(r"v\d+$", "", arxiv_id)


def unknown_citations(proposal: Proposal, allowed: list[str]) -> list[str]:
    """Cited ids (version suffix ignored) not in the prompt's list; none are unknown when no list was given."""
    if not allowed:
        return []
    base = {_base_id(a) for a in allowed}
    return [c.arxiv_id for c in proposal.citations if _base_id(c.arxiv_id) not in base]


def stamp(proposal: Proposal, provider: str, model: str, prompt_key: str) -> Proposal:
    """Fill the engine-owned provenance (provider, model, prompt hash); the parent commit stays as it was."""
    provenance = proposal.provenance.model_copy(
        update={"provider": provider, "model": model, "prompt_hash": prompt_key}
    )
    return proposal.model_copy(update={"provenance": provenance})


def excerpt(text: str, limit: int = REASK_EXCERPT_CHARS) -> str:
    """The start of a refused reply, with a note of how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n...[{len(text) - limit} more characters not shown]"


def problem_list(problems: Sequence[str], limit: int = REASK_PROBLEM_CHARS) -> str:
    """Every problem on its own line, until `limit` characters; then how many more there were."""
    lines: list[str] = []
    used = 0
    for i, problem in enumerate(problems):
        line = f"  - {problem}"
        if lines and used + len(line) > limit:
            lines.append(f"  ... and {len(problems) - i} more problem(s)")
            break
        lines.append(line if len(line) <= limit else line[:limit] + "...")
        used += len(line) + 1
    return "\n".join(lines)


def reask_message(problems: Sequence[str] | str, offending: str = "", *,
                  excerpt_chars: int = REASK_EXCERPT_CHARS, problem_chars: int = REASK_PROBLEM_CHARS,
                  edit_format: str = "json", context: str = "") -> str:
    """The follow-up user message after a refused reply: every validation problem, and what to do.

    The refused reply itself travels as the assistant message before this one, shortened by `excerpt`.
    `context` (e.g. the current source of the edits' targets, evolver/propose/repair.py) goes before the last line.
    """
    items = [problems] if isinstance(problems, str) else list(problems)
    quoted = f"Its start was:\n{excerpt(offending, excerpt_chars)}\n\n" if offending and excerpt_chars else ""
    return (
        "Your previous reply (quoted above, shortened) was not a valid proposal.\n"
        f"Validation errors:\n{problem_list(items, problem_chars)}\n\n"
        f"{quoted}"
        + (f"{context.strip()}\n\n" if context.strip() else "")
        + retry_line(edit_format)
    )


def _truncation_problem(max_tokens: int | None, context: int | None) -> str:
    limit = f"max_tokens={max_tokens}" if max_tokens else "the server's limit"
    ctx = f" in a {context}-token context" if context else ""
    return (
        f"the reply was cut at the token limit (finish_reason=length, {limit}{ctx}): answer more briefly. "
        "To allow longer replies raise --max-reply-tokens (HRM_MAX_REPLY_TOKENS); if the context is full, "
        "raise the server's context size and --context-tokens (HRM_CONTEXT_TOKENS)"
    )


def is_context_overflow(message: str) -> bool:
    """Whether an HTTP error text says the request did not fit the model's context."""
    low = message.lower()
    return bool(re.search(r"exceed|context (size|length|window)|maximum context|n_ctx|too many tokens|prompt is too long",
                          low))


def context_overflow_error(provider: str, detail: str, prompt_tokens: int | None, max_tokens: int | None) -> ProviderError:
    sizes = ""
    if prompt_tokens:
        sizes = f" (this prompt counts about {prompt_tokens} tokens, plus max_tokens={max_tokens} for the reply)"
    return ProviderError(
        f"{provider}: the request does not fit the server's context: {detail}{sizes}; {CONTEXT_SETTINGS_HINT}",
        kind="config",
    )


class Provider(ABC):
    """Base class: subclasses provide one streamed chat call and the preflight probes; this class makes it dependable."""

    name: str = "provider"
    api: str = "unknown"
    # Assumed when neither the server nor the settings tell the context size (None: no limit assumed).
    assumed_context_tokens: int | None = None

    def __init__(
        self,
        *,
        model: str,
        model_is_default: bool = False,
        timeout: float = 120.0,
        max_retries: int = 3,
        cache_dir: Path | str | None = None,
        replay: bool = False,
        backoff_s: float = 1.0,
        max_attempts: int = MAX_ATTEMPTS,
        temperature: float = 0.2,
        context_tokens: int | None = None,
        max_reply_tokens: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.model = model
        self.requested_model = model
        self.model_is_default = model_is_default
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_attempts = max_attempts
        self.temperature = temperature
        self.replay = replay
        self.context_setting = context_tokens
        self.reply_setting = max_reply_tokens
        self.progress = progress
        self.server_info: ServerInfo | None = None
        self._counter: TokenCounter | None = None
        self.cache = ReplyCache(Path(cache_dir)) if cache_dir is not None else None
        if replay and self.cache is None:
            raise ProviderError("replay=True needs a cache_dir holding the recorded replies", kind="config")
        for label, value in (("--context-tokens", context_tokens), ("--max-reply-tokens", max_reply_tokens)):
            if value is not None and value <= 0:
                raise ProviderError(f"{label} must be a positive number of tokens, got {value}", kind="config")
        self._stats = ProviderStats()

    # -- to implement -------------------------------------------------------------------------
    @abstractmethod
    def _complete(self, messages: list[dict[str, str]], schema: dict[str, Any] | None, temperature: float,
                  max_tokens: int | None, on_tokens: Callable[[int], None]) -> Completion:
        """One streamed chat call; `on_tokens(n)` after each chunk. TransientError for retryable failures,
        ProviderError for the rest. `schema` None: no constrained response format (the fenced edit format)."""

    @abstractmethod
    def endpoint(self) -> str:
        """The URL this provider talks to (for error messages)."""

    def base_url_for_info(self) -> str:
        return self.endpoint()

    def unreachable_hint(self) -> str:
        return "start the server"

    def _list_models(self) -> list[str]:
        """The models the server serves (preflight). Raise ProviderError(kind="config") when the URL or API is wrong."""
        return [self.model]

    def _context_of(self, model: str) -> tuple[int | None, str]:
        """The context size the server reports for `model`, and where it was read (None, "" when it does not say)."""
        return None, ""

    def _tokenizer(self) -> tuple[TokenCounter | None, str]:
        """An exact token counter the server offers, and its name; (None, "") when there is none."""
        return None, ""

    def _model_hint(self, model: str) -> str:
        return "pass --model (HRM_MODEL) with one of them"

    # -- budget -------------------------------------------------------------------------------
    @property
    def context_tokens(self) -> int | None:
        """The context size in force: the server's (after preflight), else the setting, else the assumption."""
        if self.server_info is not None:
            return self.server_info.context_tokens
        return self.context_setting or self.assumed_context_tokens

    def _context_known(self) -> bool:
        """Whether the context size came from the server or the settings, not from an assumption."""
        if self.server_info is not None:
            return self.server_info.context_source not in ("assumed", "unknown")
        return self.context_setting is not None

    def reply_tokens(self) -> int:
        """max_tokens sent with every request."""
        if self.reply_setting:
            return self.reply_setting
        return default_reply_tokens(self.context_tokens)

    def prompt_budget(self) -> int | None:
        """Tokens the prompt (both messages) may use; None when no context limit is known."""
        ctx = self.context_tokens
        if ctx is None:
            return None
        return ctx - self.reply_tokens() - REASK_RESERVE_TOKENS - TEMPLATE_MARGIN_TOKENS

    def count_tokens(self, text: str) -> int:
        """Tokens of `text`: the server's tokenizer when it offers one (llama.cpp), else a conservative estimate."""
        if self._counter is not None:
            try:
                return self._counter(text)
            except Exception:  # noqa: BLE001 - a tokenizer hiccup must not fail the run: estimate instead
                self._counter = None
        return estimate_tokens(text)

    def fit_prompt(self, summary: SummarySource, literature: Sequence[Any], history: Sequence[HistoryItem],
                   schema: dict[str, Any], **kwargs: Any) -> Prompt:
        """`build_prompt` with this provider's budget, reply limit and token counter.

        Raises ProviderError(kind="config") when even the fixed part of the prompt does not fit.
        """
        try:
            return build_prompt(summary, literature, history, schema, budget_tokens=self.prompt_budget(),
                                reply_tokens=self.reply_tokens() if self.context_tokens else None,
                                count_tokens=self.count_tokens, **kwargs)
        except PromptBudgetError as exc:
            raise ProviderError(f"{self.name}: {exc}", kind="config") from exc

    # -- preflight ----------------------------------------------------------------------------
    def ping(self, timeout: float = 5.0) -> None:
        """Fail fast, before any compute is spent, when the server does not accept connections."""
        url = urlsplit(self.endpoint())
        if url.scheme not in ("http", "https") or not url.hostname:
            return
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with socket.create_connection((url.hostname, port), timeout=timeout):
                pass
        except OSError as exc:
            self._stats.fail("unreachable")
            raise ProviderError(
                f"{self.name}: cannot reach {self.endpoint()} ({exc.strerror or exc}); {self.unreachable_hint()}",
                kind="unreachable",
            ) from exc

    def preflight(self) -> ServerInfo:
        """Check the server before any compute is spent: it answers, speaks the expected API, serves the model;
        then read its context size and settle the token budget.

        Raises ProviderError kind "unreachable" (nothing listens) or "config" (wrong URL, wrong API, model not
        served, context too small): either way the run should stop before the baseline.
        """
        self.ping()
        served = self._list_models()
        notes: list[str] = []
        model, source = self._choose_model(served, notes)
        self.model = model
        reported, where = self._context_of(model)
        ctx, ctx_source = self._merge_context(reported, where, notes)
        counter, counter_name = self._tokenizer()
        self._counter = counter
        info = ServerInfo(
            provider=self.name, api=self.api, base_url=self.base_url_for_info(), model=model, model_source=source,
            models=served[:50], context_tokens=ctx, context_source=ctx_source, notes=notes,
            tokenizer=counter_name or "estimate (characters / 3)",
        )
        self.server_info = info
        info.max_reply_tokens = self.reply_tokens()
        info.prompt_budget_tokens = self.prompt_budget()
        if info.prompt_budget_tokens is not None and info.prompt_budget_tokens < MIN_PROMPT_TOKENS:
            raise ProviderError(
                f"{self.name}: a {ctx}-token context ({ctx_source}) leaves {info.prompt_budget_tokens} tokens for "
                f"the prompt once {info.max_reply_tokens} are kept for the reply and {REASK_RESERVE_TOKENS} for a "
                f"re-ask; a proposal prompt needs at least {MIN_PROMPT_TOKENS}: {CONTEXT_SETTINGS_HINT}",
                kind="config",
            )
        return info

    @staticmethod
    def _same_model(served: str, wanted: str) -> bool:
        return served == wanted

    def _choose_model(self, served: list[str], notes: list[str]) -> tuple[str, str]:
        wanted = self.model
        for name in served:
            if self._same_model(name, wanted):
                return name, "default" if self.model_is_default else "named"
        if not served:
            raise ProviderError(
                f"{self.name}: the server at {self.base_url_for_info()} serves no model; {self._model_hint(wanted)}",
                kind="config",
            )
        if len(served) == 1 and self.model_is_default:
            notes.append(f"no --model given and the server serves only {served[0]!r}: using it "
                         f"(instead of the default {wanted!r})")
            return served[0], "only served model"
        shown = ", ".join(served[:20]) + (f" (+{len(served) - 20} more)" if len(served) > 20 else "")
        raise ProviderError(
            f"{self.name}: the server at {self.base_url_for_info()} does not serve model {wanted!r}; it serves: "
            f"{shown}. {self._model_hint(wanted)}",
            kind="config",
        )

    def _merge_context(self, reported: int | None, where: str, notes: list[str]) -> tuple[int | None, str]:
        setting = self.context_setting
        if reported and setting:
            if setting > reported:
                notes.append(f"--context-tokens {setting} is more than the server's {reported} ({where}); "
                             f"using {reported}")
                return reported, where
            return setting, f"--context-tokens (server: {reported}, {where})"
        if reported:
            return reported, where
        if setting:
            return setting, "--context-tokens"
        if self.assumed_context_tokens:
            notes.append(f"the server does not say its context size: assuming {self.assumed_context_tokens} "
                         "tokens; set --context-tokens (HRM_CONTEXT_TOKENS) to what the model was loaded with")
            return self.assumed_context_tokens, "assumed"
        return None, "unknown"

    # -- public -------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {"provider": self.name, "model": self.model, **self._stats.as_dict()}

    def cache_key(self, prompt: Prompt) -> str:
        return prompt_hash(prompt, model=f"{self.name}:{self.model}")

    def propose(self, prompt: Prompt, progress: ProgressCallback | None = None, *,
                follow_up: Sequence[dict[str, str]] = (),
                context_for: Callable[[str], str] | None = None) -> ProviderReply:
        """Ask for a proposal until one validates (at most `max_attempts` tries); report progress as it streams.

        The reply is read in the prompt's edit format (`prompt.edit_format`, evolver/propose/providers/reply_formats.py);
        only the json format sends the schema as a constrained response format. `follow_up` (a repair turn,
        evolver/propose/repair.py) is appended to the prompt's messages: the earlier reply and what went wrong with it.
        `context_for(refused reply text)` may add text to a re-ask (the current source of the edits' targets).
        """
        fmt = getattr(prompt, "edit_format", "json")
        key = self.cache_key(prompt)
        if follow_up:
            key = hashlib.sha256((key + json.dumps(list(follow_up), sort_keys=True)).encode("utf-8")).hexdigest()
        cached = self._from_cache(key)
        if cached is not None:
            return cached
        if self.replay:
            self._stats.fail("cache_miss")
            raise ProviderError(
                f"replay mode: no cached reply for prompt {key[:12]} in {self.cache.root if self.cache else '?'}",
                kind="cache_miss",
            )
        report = progress or self.progress
        call = _Call(self, report)
        base = [dict(m) for m in prompt.messages] + [dict(m) for m in follow_up]
        messages = base
        schema = prompt.schema if fmt == "json" else None
        last_problems: list[str] = []
        truncated = False
        for attempt in range(1, self.max_attempts + 1):
            call.attempt = attempt
            temperature = self.temperature + 0.2 * (attempt - 1)  # vary repeats a little
            max_tokens = self._max_tokens_for(messages)
            completion = self._call_with_retries(messages, schema, temperature, max_tokens, call)
            if fmt == "json":
                text = extract_json_text(completion.content, completion.reasoning)
            else:
                text = fenced_text(completion.content, completion.reasoning)
            problems, proposal, dropped = self._judge(text, completion, prompt, attempt, max_tokens)
            record = call.record(completion, "accepted" if not problems else "refused", problems, max_tokens)
            record.dropped_citations = dropped
            if proposal is not None and not problems:
                return self._accept(proposal, completion, record, call, key, max_tokens, dropped)
            last_problems = problems
            truncated = completion.finish_reason == "length"
            kind = "truncated" if truncated else ("empty_reply" if not text.strip() else "invalid_proposal")
            self._stats.fail(kind)
            call.emit("refused", detail=f"{len(problems)} problem(s)", problems=problems)
            offending = text or completion.content or completion.reasoning
            context = ""
            if context_for is not None:
                try:
                    context = context_for(offending)
                except Exception:  # noqa: BLE001 - extra context is a help, never a reason to fail the call
                    context = ""
            messages = self._reask(base, offending, problems, max_tokens, edit_format=fmt, context=context)
        detail = "\n".join(f"  - {p}" for p in last_problems)
        raise ProviderError(
            f"{self.name} ({self.model}) gave no valid proposal after {self.max_attempts} tries; "
            f"last validation error: invalid proposal: {len(last_problems)} problem(s)\n{detail}",
            kind="truncated" if truncated else "invalid_proposal",
            attempts=call.transcript,
        )

    # -- internals ----------------------------------------------------------------------------
    def _judge(self, text: str, completion: Completion, prompt: Prompt, attempt: int,
               max_tokens: int | None) -> tuple[list[str], Proposal | None, list[str]]:
        """(problems, proposal, dropped citations): no problems means accept the proposal."""
        problems: list[str] = []
        proposal: Proposal | None = None
        dropped: list[str] = []
        try:
            proposal = parse_reply(text, getattr(prompt, "edit_format", "json"), prompt.metric)
        except ProposalError as exc:
            problems = list(exc.problems)
        if proposal is not None:
            unknown = unknown_citations(proposal, prompt.allowed_citations)
            if unknown and attempt < self.max_attempts:
                listed = ", ".join(prompt.allowed_citations)
                problems = [f"citations: arXiv id {cid} is not in the list you were given; cite only listed ids "
                            f"({listed}) or none" for cid in unknown]
            elif unknown:
                # Last try: keep the idea, remove what nobody can check, and say so (attempt, reply, stats).
                self._stats.fail("citation_dropped")
                dropped = unknown
                keep = [c for c in proposal.citations if c.arxiv_id not in unknown]
                proposal = proposal.model_copy(update={"citations": keep})
        if problems and completion.finish_reason == "length":
            problems.insert(0, _truncation_problem(max_tokens, self.context_tokens))
        if not problems and not text.strip():
            problems = ["the reply was empty"]
        return problems, (proposal if not problems else None), dropped

    def _accept(self, proposal: Proposal, completion: Completion, record: Attempt, call: _Call, key: str,
                max_tokens: int | None, dropped: list[str]) -> ProviderReply:
        self._stats.proposals += 1
        served = completion.model or self.model
        proposal = stamp(proposal, self.name, served, key)
        text = proposal.model_dump_json()  # what is cached is exactly what was accepted
        reply = ProviderReply(
            proposal=proposal, raw_text=text, provider=self.name, model=served, prompt_hash=key,
            attempts=record.number, latency_s=time.monotonic() - call.started, tokens_in=call.tokens_in,
            tokens_out=call.tokens_out, requested_model=self.model, max_tokens=max_tokens,
            dropped_citations=list(dropped), transcript=call.transcript,
        )
        call.emit("accepted", detail=proposal.id)
        if self.cache is not None:
            self.cache.store(key, reply)
        return reply

    def _max_tokens_for(self, messages: list[dict[str, str]]) -> int:
        """The reply limit, lowered when the messages leave less room in the context.

        ProviderError (config) when the server's own tokenizer says no room for a reply is left.
        """
        want = self.reply_tokens()
        ctx = self.context_tokens
        if ctx is None or not self._context_known():
            return want  # an assumed context is no reason to cut the reply short
        used = count_messages(messages, self.count_tokens) + TEMPLATE_MARGIN_TOKENS
        room = ctx - used
        if room >= want:
            return want
        if room >= MIN_REPLY_TOKENS:
            return room
        if self._counter is None:
            # Only an estimate says it will not fit: let the server judge (its refusal is explained).
            return MIN_REPLY_TOKENS
        raise ProviderError(
            f"{self.name}: the prompt counts {used} tokens and leaves {max(room, 0)} of the {ctx}-token context for "
            f"the reply; build it with Provider.fit_prompt, or {CONTEXT_SETTINGS_HINT}",
            kind="config",
        )

    def _reask(self, base: list[dict[str, str]], offending: str, problems: list[str],
               max_tokens: int | None, *, edit_format: str = "json", context: str = "") -> list[dict[str, str]]:
        """The original question, the refused reply (an excerpt), and the problems: never the whole reply, and
        never more than the context leaves (the excerpt shrinks first, then the problem list)."""
        ctx = self.context_tokens
        base_tokens = count_messages(base, self.count_tokens)
        levels = ((REASK_EXCERPT_CHARS, REASK_PROBLEM_CHARS, context), (300, 900, context), (300, 900, ""),
                  (0, 400, ""))
        for excerpt_chars, problem_chars, extra in levels:
            messages = base + [
                {"role": "assistant", "content": excerpt(offending, excerpt_chars) if excerpt_chars else "(omitted)"},
                {"role": "user", "content": reask_message(problems, "", problem_chars=problem_chars,
                                                          edit_format=edit_format, context=extra)},
            ]
            if ctx is None:
                return messages
            added = sum(self.count_tokens(m["content"]) for m in messages[-2:]) + 16
            if base_tokens + added + self.reply_tokens() + TEMPLATE_MARGIN_TOKENS <= ctx:
                return messages
        return messages

    def _from_cache(self, key: str) -> ProviderReply | None:
        if self.cache is None:
            return None
        entry = self.cache.load(key)
        if entry is None:
            return None
        try:
            proposal = load_proposal(entry["raw_text"])
        except (ProposalError, KeyError) as exc:
            self._stats.fail("cache_invalid")
            if self.replay:
                raise ProviderError(f"cached reply {key[:12]} no longer validates: {exc}", kind="cache_invalid") from exc
            return None
        self._stats.cache_hits += 1
        self._stats.proposals += 1
        return ProviderReply(
            proposal=proposal,
            raw_text=entry["raw_text"],
            provider=self.name,
            model=str(entry.get("model") or self.model),
            prompt_hash=key,
            attempts=int(entry.get("attempts", 1)),
            cached=True,
            tokens_in=int(entry.get("tokens_in", 0)),
            tokens_out=int(entry.get("tokens_out", 0)),
            requested_model=self.model,
        )

    def _call_with_retries(self, messages: list[dict[str, str]], schema: dict[str, Any] | None, temperature: float,
                           max_tokens: int | None, call: _Call) -> Completion:
        last: TransientError | None = None
        for retry in range(self.max_retries + 1):
            if retry:
                assert last is not None
                call.emit("retrying", detail=f"{last.kind} ({last}); retry {retry}/{self.max_retries}")
                time.sleep(self.backoff_s * (2 ** (retry - 1)))
            self._stats.requests += 1
            call.begin_request()
            call.emit("waiting", detail=f"request {call.request}, max_tokens={max_tokens}")
            try:
                completion = self._complete(messages, schema, temperature, max_tokens, call.on_tokens)
            except TransientError as exc:
                self._stats.latency_s += call.request_elapsed()
                self._stats.fail(exc.kind)
                call.record(Completion(content=exc.partial), exc.kind, [str(exc)], max_tokens)
                last = exc
                continue
            except ProviderError as exc:
                self._stats.latency_s += call.request_elapsed()
                self._stats.fail(exc.kind)
                call.record(Completion(content=""), exc.kind, [str(exc)], max_tokens)
                exc.attempts = call.transcript
                call.emit("failed", detail=str(exc))
                raise
            self._stats.latency_s += call.request_elapsed()
            self._stats.replies += 1
            self._stats.tokens_in += completion.tokens_in
            self._stats.tokens_out += completion.tokens_out
            call.tokens_in += completion.tokens_in
            call.tokens_out += completion.tokens_out
            return completion
        assert last is not None
        call.emit("failed", detail=f"{last.kind}: {last}")
        if last.kind == "connection":
            raise ProviderError(
                f"{self.name}: cannot reach {self.endpoint()} after {self.max_retries + 1} tries ({last}); "
                f"{self.unreachable_hint()}",
                kind="unreachable",
                attempts=call.transcript,
            )
        hint = ""
        if last.kind == "timeout":
            hint = "; raise --llm-timeout (HRM_LLM_TIMEOUT) if the server is just slow"
        raise ProviderError(
            f"{self.name}: {last.kind} from {self.endpoint()} after {self.max_retries + 1} tries: {last}{hint}",
            kind=last.kind,
            attempts=call.transcript,
        )


class _Call:
    """Book-keeping for one propose call: the transcript, counters and progress reports."""

    def __init__(self, provider: Provider, report: ProgressCallback | None) -> None:
        self.provider = provider
        self.report = report
        self.started = time.monotonic()
        self.request_started = self.started
        self.attempt = 1
        self.request = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.streamed = 0
        self.transcript: list[Attempt] = []

    def begin_request(self) -> None:
        self.request += 1
        self.request_started = time.monotonic()
        self.streamed = 0

    def request_elapsed(self) -> float:
        return time.monotonic() - self.request_started

    def on_tokens(self, count: int) -> None:
        self.streamed = count
        self.emit("streaming")

    def emit(self, status: str, detail: str = "", problems: Sequence[str] = ()) -> None:
        if self.report is None:
            return
        event = LLMProgress(tokens=self.streamed, elapsed_s=time.monotonic() - self.started, attempt=self.attempt,
                            max_attempts=self.provider.max_attempts, status=status, detail=detail,
                            problems=list(problems))
        try:
            self.report(event)
        except Exception:  # noqa: BLE001 - a display bug must not lose the proposal
            self.report = None

    def record(self, completion: Completion, outcome: str, problems: Sequence[str], max_tokens: int | None) -> Attempt:
        attempt = Attempt(
            number=self.attempt, request=self.request, outcome=outcome, problems=list(problems),
            raw_text=completion.content, reasoning=completion.reasoning, finish_reason=completion.finish_reason,
            served_model=completion.model, max_tokens=max_tokens, tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out, elapsed_s=self.request_elapsed(),
        )
        self.transcript.append(attempt)
        return attempt
