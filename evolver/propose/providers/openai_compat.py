"""OpenAI-compatible chat completions (LM Studio, llama.cpp's server, OpenAI) through the official `openai` client.

Replies are streamed (progress per chunk) with `max_tokens` and, in the json edit format, a strict `json_schema`
response format (the fenced format sends none: evolver/propose/providers/reply_formats.py).
Preflight lists the served models through the client (`GET /v1/models`) and reads the context size where the
server tells it: llama.cpp's `GET /props` (also its `/tokenize` for exact counts), LM Studio's
`GET /api/v0/models`, or a context field in the model list (llama.cpp `meta.n_ctx`, vLLM `max_model_len`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import httpx
import openai

from evolver.propose.prompt import TokenCounter, count_messages
from evolver.propose.providers.base import (
    Completion,
    Provider,
    ProviderError,
    TransientError,
    context_overflow_error,
    is_context_overflow,
)

LMSTUDIO_DEFAULT_URL = "http://localhost:1234/v1"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
LMSTUDIO_ASSUMED_CONTEXT = 4096  # LM Studio's usual default context length when a model is loaded
PROBE_TIMEOUT_S = 10.0


def _transport_errors(name: str) -> tuple[type[BaseException], ...]:
    """The exception class `name` of every HTTP library an `openai` release may stream through.

    openai 1.x and 2.x are built on httpx, 3.x on httpx2; an error inside a stream can surface unwrapped from
    either, so both are caught where installed.
    """
    found: list[type[BaseException]] = []
    for module in ("httpx", "httpx2"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


# APITimeoutError first: it is a connection error too.
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (openai.APITimeoutError, *_transport_errors("TimeoutException"))
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (openai.APIConnectionError,
                                                       *_transport_errors("TransportError"))


def _reasoning_of(message: Any) -> str:
    """LM Studio / vLLM / DeepSeek style reasoning fields, which the typed model keeps as extras."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(message, name, None)
        if value is None and getattr(message, "model_extra", None):
            value = message.model_extra.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


class OpenAICompatProvider(Provider):
    """Structured output via response_format json_schema (strict), streamed."""

    name = "openai"
    api = "openai-compatible"
    probe_local_apis = True  # try llama.cpp's /props and LM Studio's /api/v0 beside /v1
    max_tokens_field = "max_tokens"  # what local servers read; api.openai.com wants max_completion_tokens

    def __init__(self, *, base_url: str, api_key: str, schema_name: str = "proposal", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        self.schema_name = schema_name
        self.api_key = api_key
        # The client's own retries are off: retries and backoff are counted here. The read timeout bounds the
        # wait for the first chunk and between chunks, so a slow but streaming reply is not cut off.
        # openai.Timeout is the client's own timeout type (httpx.Timeout before openai 3, httpx2.Timeout since).
        timeout = openai.Timeout(self.timeout, connect=min(self.timeout, PROBE_TIMEOUT_S))
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self._model_entries: dict[str, dict[str, Any]] = {}
        self._probe_client = httpx.Client(timeout=min(self.timeout, PROBE_TIMEOUT_S),
                                          headers={"Authorization": f"Bearer {api_key}"})
        self._props: dict[str, Any] = {}
        self._lms_models: dict[str, dict[str, Any]] = {}

    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def base_url_for_info(self) -> str:
        return self.base_url

    # -- preflight ----------------------------------------------------------------------------
    def _http(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """A probe beside the OpenAI API; None when the server does not answer it usefully."""
        try:
            response = self._probe_client.request(method, f"{self.root_url}{path}", **kwargs)
        except httpx.HTTPError:
            return None
        return response if response.status_code == 200 else None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http(method, path, **kwargs)
        if response is None:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def _list_models(self) -> list[str]:
        try:
            page = self.client.models.list()
        except openai.APIConnectionError as exc:
            raise ProviderError(
                f"{self.name}: cannot reach {self.base_url}/models ({exc}); {self.unreachable_hint()}",
                kind="unreachable",
            ) from exc
        except openai.APIStatusError as exc:
            raise self._models_error(exc) from exc
        entries: dict[str, dict[str, Any]] = {}
        for model in page.data:
            extra = dict(getattr(model, "model_extra", None) or {})
            entries[str(model.id)] = extra
        self._model_entries = entries
        if self.probe_local_apis:
            self._detect_api()
        return list(entries)

    def _models_error(self, exc: openai.APIStatusError) -> ProviderError:
        url = f"{self.base_url}/models"
        if exc.status_code in (401, 403):
            return ProviderError(f"{self.name}: {url} refused the API key (HTTP {exc.status_code}); check the key",
                                 kind="config")
        if exc.status_code == 404:
            hint = f"the OpenAI-compatible API usually lives under /v1 (LM Studio: {LMSTUDIO_DEFAULT_URL})"
            if self._json("GET", "/api/tags") is not None:
                hint = (f"{self.root_url} is an Ollama server: use --provider ollama --host {self.root_url}, "
                        f"or its OpenAI API at {self.root_url}/v1")
            return ProviderError(
                f"{self.name}: wrong base URL: {url} answered HTTP 404, so {self.base_url} is not an OpenAI-compatible "
                f"API; fix --host (HRM_{self.name.upper()}_HOST): {hint}",
                kind="config",
            )
        if exc.status_code >= 500:
            return ProviderError(f"{self.name}: {url} answered HTTP {exc.status_code}: {exc.message}",
                                 kind="server_error")
        return ProviderError(f"{self.name}: {url} answered HTTP {exc.status_code}: {exc.message}", kind="config")

    def _detect_api(self) -> None:
        props = self._json("GET", "/props")
        if isinstance(props, dict) and ("default_generation_settings" in props or "n_ctx" in props):
            self.api = "llama.cpp"
            self._props = props
            return
        lms = self._json("GET", "/api/v0/models")
        if isinstance(lms, dict) and isinstance(lms.get("data"), list):
            self.api = "lmstudio"
            self._lms_models = {str(m.get("id")): m for m in lms["data"] if isinstance(m, dict)}

    def _context_of(self, model: str) -> tuple[int | None, str]:
        if self.api == "llama.cpp":
            props = self._props
            settings = props.get("default_generation_settings") or {}
            for value, where in ((settings.get("n_ctx"), "llama.cpp /props default_generation_settings.n_ctx"),
                                 (props.get("n_ctx"), "llama.cpp /props n_ctx")):
                if _int(value):
                    return _int(value), where
        if self.api == "lmstudio":
            entry = self._lms_models.get(model) or {}
            loaded = _int(entry.get("loaded_context_length"))
            if loaded:
                return loaded, "LM Studio /api/v0/models loaded_context_length"
            most = _int(entry.get("max_context_length"))
            if most:
                assumed = min(most, LMSTUDIO_ASSUMED_CONTEXT)
                return assumed, (f"LM Studio /api/v0/models max_context_length={most}, loaded length not reported: "
                                 f"assuming {assumed}; set --context-tokens if the model was loaded with more")
        extra = self._model_entries.get(model) or {}
        meta: dict[str, Any] = extra["meta"] if isinstance(extra.get("meta"), dict) else {}
        for value, where in ((meta.get("n_ctx"), "/v1/models meta.n_ctx"),
                             (extra.get("loaded_context_length"), "/v1/models loaded_context_length"),
                             (extra.get("max_model_len"), "/v1/models max_model_len"),
                             (extra.get("context_length"), "/v1/models context_length")):
            if _int(value):
                return _int(value), where
        return None, ""

    def _tokenizer(self) -> tuple[TokenCounter | None, str]:
        if self.api != "llama.cpp":
            return None, ""
        if self._json("POST", "/tokenize", json={"content": "probe"}) is None:
            return None, ""
        cache: dict[str, int] = {}

        def count(text: str) -> int:
            if text in cache:
                return cache[text]
            data = self._json("POST", "/tokenize", json={"content": text})
            if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
                raise RuntimeError("llama.cpp /tokenize gave no token list")
            if len(cache) > 256:
                cache.clear()
            cache[text] = len(data["tokens"])
            return cache[text]

        return count, "llama.cpp /tokenize"

    def _model_hint(self, model: str) -> str:
        return "pass --model (HRM_MODEL) with one of them"

    # -- the chat call ------------------------------------------------------------------------
    def _complete(self, messages: list[dict[str, str]], schema: dict[str, Any] | None, temperature: float,
                  max_tokens: int | None, on_tokens: Callable[[int], None]) -> Completion:
        content: list[str] = []
        reasoning: list[str] = []
        finish: str | None = None
        served = ""
        usage: Any = None
        chunks = 0
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if schema is not None:  # None: the fenced edit format, free text (evolver/propose/providers/reply_formats.py)
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": self.schema_name, "strict": True, "schema": schema},
            }
        if max_tokens:
            request[self.max_tokens_field] = max_tokens
        try:
            stream = self.client.chat.completions.create(**request)
            for chunk in stream:
                served = chunk.model or served
                if getattr(chunk, "usage", None):
                    usage = chunk.usage
                for choice in chunk.choices or []:
                    delta = choice.delta
                    piece = (delta.content or "") if delta is not None else ""
                    thought = _reasoning_of(delta) if delta is not None else ""
                    if piece:
                        content.append(piece)
                    if thought:
                        reasoning.append(thought)
                    if piece or thought:
                        chunks += 1
                        on_tokens(chunks)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except _TIMEOUT_ERRORS as exc:
            raise TransientError("timeout", f"no data from the server for {self.timeout:g}s", "".join(content)) from exc
        except _CONNECTION_ERRORS as exc:
            raise TransientError("connection", str(exc) or type(exc).__name__, "".join(content)) from exc
        except openai.RateLimitError as exc:
            raise TransientError("rate_limited", f"HTTP 429: {exc.message}") from exc
        except openai.APIStatusError as exc:
            raise self._status_error(exc, messages, max_tokens) from exc
        except openai.APIError as exc:  # an error event inside the stream
            if is_context_overflow(exc.message):
                raise context_overflow_error(self.name, exc.message, self._prompt_tokens(messages), max_tokens) from exc
            raise ProviderError(f"{self.name}: the server broke off the reply: {exc.message}", kind="http_error") from exc
        return Completion(
            content="".join(content),
            reasoning="".join(reasoning),
            tokens_in=getattr(usage, "prompt_tokens", 0) or 0,
            tokens_out=getattr(usage, "completion_tokens", 0) or chunks,
            finish_reason=finish,
            model=served,
        )

    def _prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return count_messages(messages, self.count_tokens)

    def _status_error(self, exc: openai.APIStatusError, messages: list[dict[str, str]],
                      max_tokens: int | None) -> Exception:
        status = exc.status_code
        if status >= 500:
            return TransientError("server_error", f"HTTP {status}: {exc.message}")
        if is_context_overflow(exc.message):
            return context_overflow_error(self.name, f"HTTP {status}: {exc.message}", self._prompt_tokens(messages),
                                          max_tokens)
        if status == 404:
            return ProviderError(
                f"{self.name}: HTTP 404 from {self.endpoint()}: wrong base URL (--host, HRM_{self.name.upper()}_HOST) "
                f"or a model the server does not have ({self.model!r}): {exc.message}",
                kind="config",
            )
        if status in (401, 403):
            return ProviderError(f"{self.name}: HTTP {status} from {self.endpoint()}: the API key was refused",
                                 kind="config")
        return ProviderError(f"{self.name}: HTTP {status} from {self.endpoint()}: {exc.message}", kind="http_error")


class LMStudioProvider(OpenAICompatProvider):
    name = "lmstudio"
    assumed_context_tokens = LMSTUDIO_ASSUMED_CONTEXT

    def __init__(self, *, host: str | None = None, **kwargs: Any) -> None:
        base_url = host or os.environ.get("HRM_LMSTUDIO_HOST") or LMSTUDIO_DEFAULT_URL
        # LM Studio ignores the key but the client insists on one.
        super().__init__(base_url=base_url, api_key=os.environ.get("LMSTUDIO_API_KEY", "lm-studio"), **kwargs)

    def unreachable_hint(self) -> str:
        return (
            "start LM Studio's server (Developer tab > Start Server, or `lms server start`) with a model loaded, "
            "or set HRM_LMSTUDIO_HOST / --host to where it listens"
        )

    def _model_hint(self, model: str) -> str:
        return f"load {model!r} in LM Studio (`lms load {model}`), or pass --model (HRM_MODEL) with one of them"


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
        # api.openai.com has no llama.cpp/LM Studio side doors, and its newer models refuse `max_tokens`;
        # another base URL (a local server) may have the doors and read only `max_tokens`.
        official = self.base_url.rstrip("/") == OPENAI_DEFAULT_URL
        self.probe_local_apis = not official
        self.max_tokens_field = "max_completion_tokens" if official else "max_tokens"

    def unreachable_hint(self) -> str:
        return "check the network connection or HRM_OPENAI_BASE_URL"
