"""Proposal providers: `get_provider(name, ...)` for lmstudio, openai, ollama and offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolver.providers.base import Completion, Provider, ProviderError, ProviderReply, extract_json_text

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
    **kwargs: Any,
) -> Provider:
    """Build a provider by name. `host` overrides the server URL (else the HRM_*_HOST env var, else default)."""
    key = name.strip().lower()
    common: dict[str, Any] = {
        "model": model or DEFAULT_MODELS.get(key, ""),
        "timeout": timeout,
        "max_retries": max_retries,
        "cache_dir": cache_dir,
        "replay": replay,
        **kwargs,
    }
    if key == "lmstudio":
        from evolver.providers.openai_compat import LMStudioProvider

        return LMStudioProvider(host=host, **common)
    if key == "openai":
        from evolver.providers.openai_compat import OpenAIProvider

        return OpenAIProvider(host=host, **common)
    if key == "ollama":
        from evolver.providers.ollama_provider import OllamaProvider

        return OllamaProvider(host=host, **common)
    if key == "offline":
        from evolver.providers.offline import OfflineProvider

        return OfflineProvider(**common)
    raise ProviderError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}", kind="config")


__all__ = [
    "Completion",
    "PROVIDERS",
    "Provider",
    "ProviderError",
    "ProviderReply",
    "extract_json_text",
    "get_provider",
]
