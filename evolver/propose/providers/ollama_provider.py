"""Ollama's /api/chat through the official `ollama` client, streamed, with a flattened JSON Schema as `format`.

Preflight lists the pulled models (`/api/tags`), tells a server that is not Ollama apart (no /api/tags but an
OpenAI-style /v1/models: use --provider lmstudio), and reads the context from `/api/show` (the Modelfile's
`num_ctx`, else the model's `*.context_length`, capped). Every chat sends that context as `options.num_ctx`
and the reply limit as `options.num_predict`, so the server allocates exactly what the prompt was budgeted for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import httpx
import ollama

from evolver.propose.providers.base import Completion, Provider, ProviderError, TransientError

OLLAMA_DEFAULT_URL = "http://localhost:11434"
OLLAMA_CONTEXT_CAP = 8192  # when only the model's trained maximum is known: a context most machines can hold
OLLAMA_ASSUMED_CONTEXT = 4096
PROBE_TIMEOUT_S = 10.0


def _canonical(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


class OllamaProvider(Provider):
    name = "ollama"
    api = "ollama"
    assumed_context_tokens = OLLAMA_ASSUMED_CONTEXT

    def __init__(self, *, host: str | None = None, num_ctx: int | None = None, **kwargs: Any) -> None:
        if num_ctx and not kwargs.get("context_tokens"):
            kwargs["context_tokens"] = num_ctx
        super().__init__(**kwargs)
        self.host = (host or os.environ.get("HRM_OLLAMA_HOST") or OLLAMA_DEFAULT_URL).rstrip("/")
        self.num_ctx = self.context_setting  # sent with every chat; preflight settles it
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, PROBE_TIMEOUT_S))
        self.client = ollama.Client(host=self.host, timeout=timeout)

    def endpoint(self) -> str:
        return f"{self.host}/api/chat"

    def base_url_for_info(self) -> str:
        return self.host

    def unreachable_hint(self) -> str:
        return (
            f"start it with `ollama serve` and pull the model with `ollama pull {self.model}`, "
            "or set HRM_OLLAMA_HOST / --host"
        )

    def _model_hint(self, model: str) -> str:
        return f"run `ollama pull {model}`, or pass --model (HRM_MODEL) with one of them"

    @staticmethod
    def _same_model(served: str, wanted: str) -> bool:
        return _canonical(served) == _canonical(wanted)

    # -- preflight ----------------------------------------------------------------------------
    def _list_models(self) -> list[str]:
        try:
            listing = self.client.list()
        except ollama.ResponseError as exc:
            raise self._not_ollama(f"HTTP {exc.status_code}") from exc
        except (ConnectionError, httpx.TransportError) as exc:
            raise ProviderError(f"{self.name}: cannot reach {self.host} ({exc}); {self.unreachable_hint()}",
                                kind="unreachable") from exc
        except ValueError as exc:  # a body that is not Ollama's JSON
            raise self._not_ollama("a reply that is not Ollama's") from exc
        return [str(m.model) for m in listing.models if m.model]

    def _not_ollama(self, what: str) -> ProviderError:
        """The server has no Ollama API: say what it is instead, when it speaks the OpenAI API."""
        for base in (f"{self.host}/v1", self.host):
            try:
                response = httpx.get(f"{base}/models", timeout=PROBE_TIMEOUT_S)
                data = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                data = None
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                served = ", ".join(str(m.get("id")) for m in data["data"][:5] if isinstance(m, dict)) or "no model"
                fix = (f"use --provider lmstudio --host {base} (it serves: {served})" if base.endswith("/v1")
                       else f"use --provider lmstudio --host {base}, or if this is Ollama, --host without the /v1 suffix")
                return ProviderError(
                    f"{self.name}: {self.host} is not an Ollama server ({self.host}/api/tags gave {what}) but it "
                    f"speaks the OpenAI API ({base}/models answers): {fix}",
                    kind="config",
                )
        return ProviderError(
            f"{self.name}: wrong base URL: {self.host}/api/tags gave {what}, so no Ollama API answers at {self.host}; "
            f"fix --host (HRM_OLLAMA_HOST); Ollama listens on {OLLAMA_DEFAULT_URL} by default",
            kind="config",
        )

    def _context_of(self, model: str) -> tuple[int | None, str]:
        try:
            shown = self.client.show(model)
        except (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValueError):
            return None, ""
        match = re.search(r"^\s*num_ctx\s+(\d+)", shown.parameters or "", re.MULTILINE)
        if match:
            return int(match.group(1)), "ollama /api/show parameters num_ctx"
        info = shown.modelinfo or {}
        for key, value in info.items():
            if key.endswith(".context_length") and isinstance(value, int) and value > 0:
                capped = min(value, OLLAMA_CONTEXT_CAP)
                where = f"ollama /api/show model_info {key}={value}"
                return capped, where + (f", capped at {OLLAMA_CONTEXT_CAP}" if capped < value else "")
        return None, ""

    def _merge_context(self, reported: int | None, where: str, notes: list[str]) -> tuple[int | None, str]:
        # Ollama allocates the num_ctx each request asks for, so the setting wins over what /api/show says.
        ctx: int | None
        if self.context_setting:
            ctx, source = self.context_setting, "--context-tokens (sent as num_ctx)"
        else:
            ctx, source = super()._merge_context(reported, where, notes)
            source += " (sent as num_ctx)"
        self.num_ctx = ctx
        return ctx, source

    # -- the chat call ------------------------------------------------------------------------
    def _complete(self, messages: list[dict[str, str]], schema: dict[str, Any] | None, temperature: float,
                  max_tokens: int | None, on_tokens: Callable[[int], None]) -> Completion:
        from proposals.schema import flatten_schema  # Ollama silently ignores $ref/anyOf: inline them

        options: dict[str, Any] = {"temperature": temperature}
        if self.num_ctx:
            options["num_ctx"] = self.num_ctx
        if max_tokens:
            options["num_predict"] = max_tokens
        content: list[str] = []
        thinking: list[str] = []
        last: Any = None
        chunks = 0
        try:
            stream = self.client.chat(
                model=self.model, messages=messages, format=flatten_schema(schema) if schema is not None else None,
                options=options, stream=True
            )
            for part in stream:
                last = part
                message = part.message
                piece = (message.content or "") if message is not None else ""
                thought = (message.thinking or "") if message is not None else ""
                if piece:
                    content.append(piece)
                if thought:
                    thinking.append(thought)
                if piece or thought:
                    chunks += 1
                    on_tokens(chunks)
        except httpx.TimeoutException as exc:
            raise TransientError("timeout", f"no data from the server for {self.timeout:g}s", "".join(content)) from exc
        except (ConnectionError, httpx.TransportError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TransientError("connection", first, "".join(content)) from exc
        except ollama.ResponseError as exc:
            raise self._response_error(exc) from exc
        return Completion(
            content="".join(content),
            reasoning="".join(thinking),
            tokens_in=(last.prompt_eval_count or 0) if last is not None else 0,
            tokens_out=(last.eval_count or chunks) if last is not None else 0,
            finish_reason=last.done_reason if last is not None else None,
            model=(last.model or "") if last is not None else "",
        )

    def _response_error(self, exc: ollama.ResponseError) -> Exception:
        status = exc.status_code
        if status >= 500 or status == 429:
            return TransientError("server_error", f"HTTP {status}: {exc.error}")
        if status == 404:
            if "model" in str(exc.error).lower():
                return ProviderError(
                    f"ollama: model {self.model!r} not found at {self.host}; run `ollama pull {self.model}`",
                    kind="config",
                )
            return ProviderError(
                f"ollama: {self.endpoint()} does not exist (HTTP 404: {exc.error}): {self.host} is not an Ollama "
                "server; for an OpenAI-compatible server use --provider lmstudio",
                kind="config",
            )
        return ProviderError(f"ollama: HTTP {status} from {self.endpoint()}: {exc.error}", kind="http_error")
