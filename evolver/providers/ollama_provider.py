"""Ollama's /api/chat through the official `ollama` client, with a flattened JSON Schema as `format`."""

from __future__ import annotations

import os
from typing import Any

import httpx
import ollama

from evolver.providers.base import Completion, Provider, ProviderError, TransientError

OLLAMA_DEFAULT_URL = "http://localhost:11434"


class OllamaProvider(Provider):
    name = "ollama"

    def __init__(self, *, host: str | None = None, num_ctx: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host = (host or os.environ.get("HRM_OLLAMA_HOST") or OLLAMA_DEFAULT_URL).rstrip("/")
        self.num_ctx = num_ctx
        self.client = ollama.Client(host=self.host, timeout=self.timeout)

    def endpoint(self) -> str:
        return f"{self.host}/api/chat"

    def unreachable_hint(self) -> str:
        return (
            f"start it with `ollama serve` and pull the model with `ollama pull {self.model}`, "
            "or set HRM_OLLAMA_HOST / --host"
        )

    def _complete(self, messages: list[dict[str, str]], schema: dict[str, Any], temperature: float) -> Completion:
        from proposals.schema import flatten_schema  # Ollama silently ignores $ref/anyOf: inline them

        options: dict[str, Any] = {"temperature": temperature}
        if self.num_ctx:
            options["num_ctx"] = self.num_ctx
        try:
            response = self.client.chat(
                model=self.model, messages=messages, format=flatten_schema(schema), options=options, stream=False
            )
        except httpx.TimeoutException as exc:
            raise TransientError("timeout", f"no reply within {self.timeout}s") from exc
        except (ConnectionError, httpx.TransportError) as exc:
            raise TransientError("connection", str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        except ollama.ResponseError as exc:
            if exc.status_code >= 500 or exc.status_code == 429:
                raise TransientError("server_error", f"HTTP {exc.status_code}: {exc.error}") from exc
            if exc.status_code == 404:
                raise ProviderError(
                    f"ollama: model {self.model!r} not found at {self.host}; run `ollama pull {self.model}`",
                    kind="http_error",
                ) from exc
            raise ProviderError(f"ollama: HTTP {exc.status_code} from {self.endpoint()}: {exc.error}", kind="http_error") from exc
        message = response.message
        return Completion(
            content=message.content or "",
            reasoning=message.thinking or "",
            tokens_in=response.prompt_eval_count or 0,
            tokens_out=response.eval_count or 0,
            finish_reason=response.done_reason,
        )
