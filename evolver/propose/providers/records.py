"""Plain records a provider hands back: what the server is (ServerInfo), what each try produced (Attempt), and
live progress (LLMProgress). All are dataclasses with `to_dict()` so the loop can store them as JSON."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Attempt:
    """One HTTP request made while asking for a proposal, and what became of its reply.

    `number` counts tries at a valid proposal (1 = the first question, 2 = the first re-ask...); `request`
    counts HTTP requests within the propose call, so transport retries of one try share its `number`.
    `outcome` is "accepted", "refused" (a reply that failed validation; `problems` says why, every problem
    listed), or the transport failure kind ("timeout", "connection", "server_error", "rate_limited", "config",
    "http_error"). `raw_text` is the reply's content exactly as streamed (partial when the stream broke off).
    """

    number: int
    request: int
    outcome: str
    problems: list[str] = field(default_factory=list)
    raw_text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    served_model: str = ""
    max_tokens: int | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    elapsed_s: float = 0.0
    started_at: str = field(default_factory=utc_now)
    dropped_citations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data


@dataclass
class ServerInfo:
    """What preflight learnt: the API, the model that will be asked for, and the token budget."""

    provider: str
    api: str  # "llama.cpp", "lmstudio", "openai-compatible", "ollama", "offline"
    base_url: str
    model: str  # the model every request will name
    model_source: str  # "named" (--model), "default", or "only served model" (adopted because --model was left unset)
    models: list[str] = field(default_factory=list)  # what the server serves (first 50)
    context_tokens: int | None = None  # None: not known and not limited (e.g. api.openai.com)
    context_source: str = "unknown"
    max_reply_tokens: int | None = None
    prompt_budget_tokens: int | None = None
    tokenizer: str = "estimate (characters / 3)"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line (plus notes) for the console; no square brackets, so it is safe inside rich markup."""
        ctx = "unknown" if self.context_tokens is None else f"{self.context_tokens} ({self.context_source})"
        parts = [f"{self.provider} ({self.api} API) at {self.base_url}", f"model {self.model} ({self.model_source})",
                 f"context {ctx}"]
        if self.max_reply_tokens is not None:
            parts.append(f"reply <= {self.max_reply_tokens} tokens")
        if self.prompt_budget_tokens is not None:
            parts.append(f"prompt <= {self.prompt_budget_tokens} tokens")
        parts.append(f"tokens counted by {self.tokenizer}")
        return "; ".join(parts) + "".join(f"\n  note: {n}" for n in self.notes)


@dataclass
class LLMProgress:
    """A progress report while a proposal is being asked for (handed to the `progress` callback)."""

    tokens: int  # reply tokens received so far in the current request
    elapsed_s: float  # since the propose call began
    attempt: int = 1
    max_attempts: int = 1
    status: str = "streaming"  # "waiting", "streaming", "retrying", "refused", "accepted", "failed"
    detail: str = ""  # a retry's cause, or the refused reply's problems, in words
    problems: list[str] = field(default_factory=list)  # for "refused": every problem, one per line


ProgressCallback = Callable[[LLMProgress], None]
