"""Proposal providers: `get_provider(name, ...)` for lmstudio, openai, ollama and offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolver.propose.providers.base import (
    Completion,
    Provider,
    ProviderError,
    ProviderReply,
    extract_json_text,
)
from evolver.propose.providers.records import Attempt, LLMProgress, ProgressCallback, ServerInfo

PROVIDERS = ("lmstudio", "openai", "ollama", "offline")
DEFAULT_MODELS = {
    "lmstudio": "qwen2.5-coder-7b-instruct",
    "openai": "gpt-4o-mini",
    "ollama": "qwen2.5-coder:7b",
    "offline": "catalogue",
}


def get_provider(
    name: str,
    *,
    model: str | None = None,
    host: str | None = None,
    timeout: float = 120.0,
    max_retries: int = 3,
    cache_dir: Path | str | None = None,
    replay: bool = False,
    context_tokens: int | None = None,
    max_reply_tokens: int | None = None,
    progress: ProgressCallback | None = None,
    **kwargs: Any,
) -> Provider:
    """Build a provider by name. `host` overrides the server URL (else the HRM_*_HOST env var, else default).

    `timeout` is the most seconds to wait for the server's first reply chunk and between chunks (a reply that
    keeps streaming is not cut off); `max_retries` the retries after a timeout, a dropped connection or HTTP
    5xx. `context_tokens` is used when the server does not tell its context size (Ollama: sent as num_ctx);
    `max_reply_tokens` is sent as max_tokens (default: a quarter of the context, 512..4096). A model left
    unset (None) lets preflight adopt the server's only model.
    """
    key = name.strip().lower()
    common: dict[str, Any] = {
        "model": model or DEFAULT_MODELS.get(key, ""),
        "model_is_default": not model,
        "timeout": timeout,
        "max_retries": max_retries,
        "cache_dir": cache_dir,
        "replay": replay,
        "context_tokens": context_tokens,
        "max_reply_tokens": max_reply_tokens,
        "progress": progress,
        **kwargs,
    }
    if key == "lmstudio":
        from evolver.propose.providers.openai_compat import LMStudioProvider

        return LMStudioProvider(host=host, **common)
    if key == "openai":
        from evolver.propose.providers.openai_compat import OpenAIProvider

        return OpenAIProvider(host=host, **common)
    if key == "ollama":
        from evolver.propose.providers.ollama_provider import OllamaProvider

        return OllamaProvider(host=host, **common)
    if key == "offline":
        from evolver.propose.providers.offline import OfflineProvider

        return OfflineProvider(**common)
    raise ProviderError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}", kind="config")


__all__ = [
    "Attempt",
    "Completion",
    "LLMProgress",
    "ProgressCallback",
    "ServerInfo",
    "PROVIDERS",
    "Provider",
    "ProviderError",
    "ProviderReply",
    "extract_json_text",
    "get_provider",
]
