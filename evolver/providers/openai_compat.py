"""OpenAI-compatible chat completions (LM Studio and OpenAI) through the official `openai` client."""

from __future__ import annotations

import os
from typing import Any

import openai

from evolver.providers.base import Completion, Provider, ProviderError, TransientError

LMSTUDIO_DEFAULT_URL = "http://localhost:1234/v1"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


def _reasoning_of(message: Any) -> str:
    """LM Studio / vLLM / DeepSeek style reasoning fields, which the typed model keeps as extras."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(message, name, None)
        if value is None and getattr(message, "model_extra", None):
            value = message.model_extra.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return ""


class OpenAICompatProvider(Provider):
    """Structured output via response_format json_schema (strict)."""

    name = "openai"

    def __init__(self, *, base_url: str, api_key: str, schema_name: str = "proposal", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")
        self.schema_name = schema_name
        # The client's own retries are off: retries and backoff are counted here.
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=self.timeout, max_retries=0)

    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _complete(self, messages: list[dict[str, str]], schema: dict[str, Any], temperature: float) -> Completion:
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=temperature,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": self.schema_name, "strict": True, "schema": schema},
                },
            )
        except openai.APITimeoutError as exc:  # subclass of APIConnectionError: test it first
            raise TransientError("timeout", f"no reply within {self.timeout}s") from exc
        except openai.APIConnectionError as exc:
            raise TransientError("connection", str(exc)) from exc
        except openai.RateLimitError as exc:
            raise TransientError("rate_limited", f"HTTP 429: {exc.message}") from exc
        except openai.APIStatusError as exc:
            if exc.status_code >= 500:
                raise TransientError("server_error", f"HTTP {exc.status_code}: {exc.message}") from exc
            raise ProviderError(
                f"{self.name}: HTTP {exc.status_code} from {self.endpoint()}: {exc.message}", kind="http_error"
            ) from exc
        if not response.choices:
            return Completion(content="", finish_reason="empty")
        choice = response.choices[0]
        message = choice.message
        usage = response.usage
        return Completion(
            content=message.content or "",
            reasoning=_reasoning_of(message),
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason,
        )


class LMStudioProvider(OpenAICompatProvider):
    name = "lmstudio"

    def __init__(self, *, host: str | None = None, **kwargs: Any) -> None:
        base_url = host or os.environ.get("HRM_LMSTUDIO_HOST") or LMSTUDIO_DEFAULT_URL
        # LM Studio ignores the key but the client insists on one.
        super().__init__(base_url=base_url, api_key=os.environ.get("LMSTUDIO_API_KEY", "lm-studio"), **kwargs)

    def unreachable_hint(self) -> str:
        return (
            "start LM Studio's server (Developer tab > Start Server, or `lms server start`) with a model loaded, "
            "or set HRM_LMSTUDIO_HOST / --host to where it listens"
        )


class OpenAIProvider(OpenAICompatProvider):
    name = "openai"

    def __init__(self, *, host: str | None = None, **kwargs: Any) -> None:
        api_key = os.environ.get("OPENAI_API_KEY", "")
        if not api_key:
            raise ProviderError(
                "openai: OPENAI_API_KEY is not set; export it (or put it in .env) or use --provider offline",
                kind="config",
            )
        base_url = host or os.environ.get("HRM_OPENAI_BASE_URL") or OPENAI_DEFAULT_URL
        super().__init__(base_url=base_url, api_key=api_key, **kwargs)

    def unreachable_hint(self) -> str:
        return "check the network connection or HRM_OPENAI_BASE_URL"
