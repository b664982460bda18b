"""Shared provider machinery: errors, reply extraction, transport retries, re-asking, stats, cache.

A concrete provider implements `_complete(messages, schema) -> Completion` (one HTTP call) and
`_classify(exc) -> str | None` (which failures are transient). `Provider.propose` does the rest:
cache look-up, retries with exponential backoff on transient failures, validation with
`proposals.schema.load_proposal`, and up to `max_attempts` re-asks that quote the validation error and
the offending output.
"""

from __future__ import annotations

import json
import re
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from evolver.prompt import Prompt, prompt_hash
from evolver.providers.cache import ReplyCache
from proposals.schema import Proposal, ProposalError, load_proposal

MAX_ATTEMPTS = 3  # total tries at getting a valid proposal from one prompt


class ProviderError(RuntimeError):
    """A provider could not produce a valid proposal; the message says why and what to do."""

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class TransientError(Exception):
    """Raised by `_complete` for a failure worth retrying (kind: connection, timeout, server_error)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Completion:
    """What one chat call returned, before any interpretation."""

    content: str
    reasoning: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str | None = None


@dataclass
class ProviderReply:
    proposal: Proposal
    raw_text: str  # the JSON text that validated
    provider: str
    model: str
    prompt_hash: str
    attempts: int  # chat calls that produced a reply (1 = valid first time)
    cached: bool = False
    latency_s: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0


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


def unknown_citations(proposal: Proposal, allowed: list[str]) -> list[str]:
    """Cited ids (version suffix ignored) not in the prompt's list; none are unknown when no list was given."""
    if not allowed:
        return []
    base = {re.sub(r"v\d+$", "", a) for a in allowed}
    return [c.arxiv_id for c in proposal.citations if re.sub(r"v\d+$", "", c.arxiv_id) not in base]


def stamp(proposal: Proposal, provider: str, model: str, prompt_key: str) -> Proposal:
    """Fill the engine-owned provenance (provider, model, prompt hash); the parent commit stays as it was."""
    provenance = proposal.provenance.model_copy(
        update={"provider": provider, "model": model, "prompt_hash": prompt_key}
    )
    return proposal.model_copy(update={"provenance": provenance})


def reask_message(error: str, offending: str) -> str:
    """The follow-up user message after an invalid reply: the exact error and the output quoted."""
    shown = offending if len(offending) <= 6000 else offending[:6000] + "\n...[truncated]"
    return (
        "Your previous reply was not a valid proposal.\n"
        f"Validation error:\n{error}\n\n"
        f"Your previous output:\n{shown}\n\n"
        "Reply again with ONE corrected JSON object that matches the schema, and nothing else."
    )


class Provider(ABC):
    """Base class: subclasses provide one chat call; this class makes it dependable."""

    name: str = "provider"

    def __init__(
        self,
        *,
        model: str,
        timeout: float = 120.0,
        max_retries: int = 3,
        cache_dir: Path | str | None = None,
        replay: bool = False,
        backoff_s: float = 1.0,
        max_attempts: int = MAX_ATTEMPTS,
        temperature: float = 0.2,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_attempts = max_attempts
        self.temperature = temperature
        self.replay = replay
        self.cache = ReplyCache(Path(cache_dir)) if cache_dir is not None else None
        if replay and self.cache is None:
            raise ProviderError("replay=True needs a cache_dir holding the recorded replies", kind="config")
        self._stats = ProviderStats()

    # -- to implement -------------------------------------------------------------------------
    @abstractmethod
    def _complete(self, messages: list[dict[str, str]], schema: dict[str, Any], temperature: float) -> Completion:
        """One chat call. Raise TransientError for retryable failures, ProviderError for the rest."""

    @abstractmethod
    def endpoint(self) -> str:
        """The URL this provider talks to (for error messages)."""

    def unreachable_hint(self) -> str:
        return "start the server"

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

    # -- public -------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {"provider": self.name, "model": self.model, **self._stats.as_dict()}

    def cache_key(self, prompt: Prompt) -> str:
        return prompt_hash(prompt, model=f"{self.name}:{self.model}")

    def propose(self, prompt: Prompt) -> ProviderReply:
        key = self.cache_key(prompt)
        cached = self._from_cache(key)
        if cached is not None:
            return cached
        if self.replay:
            self._stats.fail("cache_miss")
            raise ProviderError(
                f"replay mode: no cached reply for prompt {key[:12]} in {self.cache.root if self.cache else '?'}",
                kind="cache_miss",
            )
        messages = [dict(m) for m in prompt.messages]
        last_error = ""
        started = time.monotonic()
        tokens_in = tokens_out = 0
        for attempt in range(1, self.max_attempts + 1):
            temperature = self.temperature + 0.2 * (attempt - 1)  # vary repeats a little
            completion = self._call_with_retries(messages, prompt.schema, temperature)
            tokens_in += completion.tokens_in
            tokens_out += completion.tokens_out
            text = extract_json_text(completion.content, completion.reasoning)
            try:
                proposal = load_proposal(text)
                unknown = unknown_citations(proposal, prompt.allowed_citations)
                if unknown and attempt < self.max_attempts:
                    raise ProposalError(
                        [f"citations: arXiv id {cid} is not in the list you were given; cite only listed ids "
                         f"({', '.join(prompt.allowed_citations)}) or none" for cid in unknown]
                    )
                if unknown:  # last try: keep the idea, drop the citations nobody can check
                    self._stats.fail("citation_dropped")
                    proposal = proposal.model_copy(
                        update={"citations": [c for c in proposal.citations if c.arxiv_id not in unknown]}
                    )
            except ProposalError as exc:
                last_error = str(exc)
                kind = "truncated" if completion.finish_reason == "length" else "invalid_proposal"
                if not text.strip() and completion.finish_reason != "length":
                    kind = "empty_reply"
                self._stats.fail(kind)
                if completion.finish_reason == "length":
                    last_error = f"reply truncated at the token limit (finish_reason=length); {last_error}"
                offending = text or completion.content or completion.reasoning
                messages.append({"role": "assistant", "content": offending})
                messages.append({"role": "user", "content": reask_message(last_error, offending)})
                continue
            self._stats.proposals += 1
            proposal = stamp(proposal, self.name, self.model, key)
            text = proposal.model_dump_json()  # what is cached is exactly what was accepted
            reply = ProviderReply(
                proposal=proposal,
                raw_text=text,
                provider=self.name,
                model=self.model,
                prompt_hash=key,
                attempts=attempt,
                latency_s=time.monotonic() - started,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            )
            if self.cache is not None:
                self.cache.store(key, reply)
            return reply
        raise ProviderError(
            f"{self.name} ({self.model}) gave no valid proposal after {self.max_attempts} tries; "
            f"last validation error: {last_error}",
            kind="invalid_proposal",
        )

    # -- internals ----------------------------------------------------------------------------
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
            model=self.model,
            prompt_hash=key,
            attempts=int(entry.get("attempts", 1)),
            cached=True,
            tokens_in=int(entry.get("tokens_in", 0)),
            tokens_out=int(entry.get("tokens_out", 0)),
        )

    def _call_with_retries(self, messages: list[dict[str, str]], schema: dict[str, Any], temperature: float) -> Completion:
        last: TransientError | None = None
        for retry in range(self.max_retries + 1):
            if retry:
                time.sleep(self.backoff_s * (2 ** (retry - 1)))
            self._stats.requests += 1
            t0 = time.monotonic()
            try:
                completion = self._complete(messages, schema, temperature)
            except TransientError as exc:
                self._stats.latency_s += time.monotonic() - t0
                self._stats.fail(exc.kind)
                last = exc
                continue
            except ProviderError as exc:
                self._stats.latency_s += time.monotonic() - t0
                self._stats.fail(exc.kind)
                raise
            self._stats.latency_s += time.monotonic() - t0
            self._stats.replies += 1
            self._stats.tokens_in += completion.tokens_in
            self._stats.tokens_out += completion.tokens_out
            return completion
        assert last is not None
        if last.kind == "connection":
            raise ProviderError(
                f"{self.name}: cannot reach {self.endpoint()} after {self.max_retries + 1} tries ({last}); "
                f"{self.unreachable_hint()}",
                kind="unreachable",
            )
        raise ProviderError(
            f"{self.name}: {last.kind} from {self.endpoint()} after {self.max_retries + 1} tries: {last}",
            kind=last.kind,
        )
