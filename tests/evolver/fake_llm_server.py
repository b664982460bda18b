"""A scripted chat server on 127.0.0.1 for provider tests.

It speaks OpenAI's `/v1/chat/completions` and Ollama's `/api/chat`, streamed (SSE / NDJSON) or not, and
answers each chat request with the next `Step` of its script: a reply (content and/or reasoning), an HTTP
error status (with an optional error message, e.g. llama.cpp's context overflow), a delay before the first
chunk, or a pause between chunks. Every chat request body is recorded in `received` so tests can assert on
what the real client libraries sent; every other request (model lists, /props, /tokenize...) in `probes`.

`flavour` picks which side doors answer, so preflight can be tested against each kind of server:
- "openai":   GET /v1/models only.
- "llama.cpp": also GET /props (n_ctx) and POST /tokenize; /v1/models carries meta.n_ctx.
- "lmstudio": also GET /api/v0/models (max_context_length, loaded_context_length).
- "ollama":   GET /api/tags, /api/version, POST /api/show (model_info context_length, parameters num_ctx)
              and /api/chat; no /v1/models.
- "bare":     chat only, no model list at all (neither API's preflight can succeed).
`models` is what the server says it serves; `served_model` (when set) is the model every reply names,
whatever the request asked for. A request under any other path answers 404 (a wrong base URL).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK_CHARS = 4  # one streamed chunk per this many characters, like a token


@dataclass
class Step:
    content: str = ""
    reasoning: str = ""
    status: int = 200
    delay: float = 0.0  # before the reply (or the first chunk) is sent
    chunk_delay: float = 0.0  # between streamed chunks
    stall_after: int = 0  # streamed: after this many chunks (0 = never), go silent for `stall` seconds
    stall: float = 0.0
    finish_reason: str = "stop"
    reasoning_field: str = "reasoning_content"  # newer LM Studio / vLLM builds use "reasoning"
    error: str = ""  # the error message for a status other than 200


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    at: float
    method: str = "POST"

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))


@dataclass
class ScriptedServer:
    script: list[Step]
    received: list[Received] = field(default_factory=list)
    probes: list[Received] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    flavour: str = "openai"
    models: list[str] = field(default_factory=lambda: ["scripted"])
    served_model: str | None = None
    n_ctx: int = 4096  # what /props, /api/v0/models or /api/show report
    loaded_context: bool = True  # lmstudio: report loaded_context_length (else only max_context_length)
    ollama_num_ctx: int | None = None  # ollama: a num_ctx line in /api/show parameters
    overflow_at: int | None = None  # answer llama.cpp's HTTP 400 when the prompt exceeds this many tokens

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def next_step(self) -> Step | None:
        with self.lock:
            return self.script.pop(0) if self.script else None


def fake_tokens(text: str) -> int:
    """The scripted server's tokenizer: one token per 4 characters, rounded up."""
    return -(-len(text) // 4)


def _prompt_tokens(body: dict[str, Any]) -> int:
    return sum(fake_tokens(str(m.get("content", ""))) + 4 for m in body.get("messages", []))


def _pieces(text: str) -> list[str]:
    return [text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]


def _openai_body(step: Step, model: str, tokens_in: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": step.content}
    if step.reasoning:
        message[step.reasoning_field] = step.reasoning
    tokens_out = max(1, len(step.content + step.reasoning) // 4)
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": step.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out},
    }


def _openai_chunks(step: Step, model: str, tokens_in: int, usage: bool) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(step.reasoning):
        yield chunk({step.reasoning_field: piece})
    for piece in _pieces(step.content):
        yield chunk({"content": piece})
    yield chunk({}, step.finish_reason)
    if usage:
        tokens_out = len(_pieces(step.content)) + len(_pieces(step.reasoning))
        yield {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [], "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                                        "total_tokens": tokens_in + tokens_out}}


def _ollama_body(step: Step, model: str, tokens_in: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": step.content}
    if step.reasoning:
        message["thinking"] = step.reasoning
    return {
        "model": model,
        "created_at": "2025-01-01T00:00:00Z",
        "message": message,
        "done": True,
        "done_reason": step.finish_reason,
        "prompt_eval_count": tokens_in,
        "eval_count": max(1, len(step.content + step.reasoning) // 4),
    }


def _ollama_chunks(step: Step, model: str, tokens_in: int) -> Iterator[dict[str, Any]]:
    for piece in _pieces(step.reasoning):
        yield {"model": model, "created_at": "2025-01-01T00:00:00Z",
               "message": {"role": "assistant", "content": "", "thinking": piece}, "done": False}
    for piece in _pieces(step.content):
        yield {"model": model, "created_at": "2025-01-01T00:00:00Z",
               "message": {"role": "assistant", "content": piece}, "done": False}
    final = _ollama_body(Step(finish_reason=step.finish_reason), model, tokens_in)
    final["eval_count"] = len(_pieces(step.content)) + len(_pieces(step.reasoning))
    yield final


def _handler(state: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def _stream(self, lines: Iterator[bytes], content_type: str, step: Step) -> None:
            """Write one line per chunk and close the connection at the end (no Content-Length)."""
            self.close_connection = True
            try:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                for i, line in enumerate(lines):
                    if i and step.chunk_delay:
                        time.sleep(step.chunk_delay)
                    if step.stall_after and i == step.stall_after:
                        time.sleep(step.stall)
                    self.wfile.write(line)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _not_found(self) -> None:
            self._send(404, {"error": {"message": f"File Not Found: {self.path}", "type": "not_found_error",
                                       "code": 404}})

        def _body(self) -> tuple[bytes, dict[str, Any]]:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            try:
                return raw, json.loads(raw or b"{}")
            except json.JSONDecodeError:
                return raw, {"_unparsed": raw.decode(errors="replace")}

        # -- side doors -----------------------------------------------------------------------
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            state.probes.append(Received(self.path, {}, time.monotonic(), "GET"))
            flavour, path = state.flavour, self.path.split("?")[0]
            if path in ("/v1/models", "/models") and flavour in ("openai", "llama.cpp", "lmstudio"):
                data = []
                for name in state.models:
                    entry: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "scripted"}
                    if flavour == "llama.cpp":
                        entry["meta"] = {"n_ctx": state.n_ctx, "n_ctx_train": 8192}
                    data.append(entry)
                self._send(200, {"object": "list", "data": data})
            elif path == "/props" and flavour == "llama.cpp":
                self._send(200, {"default_generation_settings": {"n_ctx": state.n_ctx, "params": {}},
                                 "total_slots": 1, "model_alias": state.models[0] if state.models else ""})
            elif path == "/api/v0/models" and flavour == "lmstudio":
                data = []
                for name in state.models:
                    entry = {"id": name, "object": "model", "type": "llm", "state": "loaded",
                             "max_context_length": 32768}
                    if state.loaded_context:
                        entry["loaded_context_length"] = state.n_ctx
                    data.append(entry)
                self._send(200, {"object": "list", "data": data})
            elif path == "/api/tags" and flavour == "ollama":
                self._send(200, {"models": [{"name": n, "model": n, "modified_at": "2025-01-01T00:00:00Z",
                                             "size": 1, "digest": "0"} for n in state.models]})
            elif path == "/api/version" and flavour == "ollama":
                self._send(200, {"version": "0.0.0-scripted"})
            else:
                self._not_found()

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            raw, body = self._body()
            path = self.path.split("?")[0]
            if path == "/tokenize" and state.flavour == "llama.cpp":
                state.probes.append(Received(path, body, time.monotonic()))
                self._send(200, {"tokens": list(range(fake_tokens(str(body.get("content", "")))))})
                return
            if path == "/api/show" and state.flavour == "ollama":
                state.probes.append(Received(path, body, time.monotonic()))
                params = f"num_ctx {state.ollama_num_ctx}\nstop \"<|im_end|>\"" if state.ollama_num_ctx else ""
                self._send(200, {"modelfile": "", "parameters": params, "template": "",
                                 "details": {"format": "gguf"}, "model_info": {"qwen2.context_length": state.n_ctx}})
                return
            chat = path == "/api/chat" if state.flavour == "ollama" else path in ("/v1/chat/completions",
                                                                                   "/chat/completions", "/api/chat")
            if not chat:
                state.probes.append(Received(path, body, time.monotonic()))
                self._not_found()
                return
            state.received.append(Received(path, body, time.monotonic()))
            step = state.next_step()
            if step is None:
                self._send(410, {"error": "script exhausted"})
                return
            if step.delay:
                time.sleep(step.delay)
            tokens_in = _prompt_tokens(body)
            if state.overflow_at is not None and tokens_in > state.overflow_at:
                self._send(400, {"error": {"code": 400, "type": "exceed_context_size_error",
                                           "message": f"request ({tokens_in} tokens) exceeds the available context "
                                                      f"size ({state.overflow_at} tokens), try increasing it",
                                           "n_prompt_tokens": tokens_in, "n_ctx": state.overflow_at}})
                return
            if step.status != 200:
                message = step.error or f"scripted HTTP {step.status}"
                if path == "/api/chat":
                    self._send(step.status, {"error": message})
                else:
                    self._send(step.status, {"error": {"message": message, "type": "server_error"}})
                return
            model = state.served_model or str(body.get("model", ""))
            if path == "/api/chat":
                if body.get("stream", True):
                    lines = (json.dumps(c).encode() + b"\n" for c in _ollama_chunks(step, model, tokens_in))
                    self._stream(lines, "application/x-ndjson", step)
                else:
                    self._send(200, _ollama_body(step, model, tokens_in))
            elif body.get("stream"):
                usage = bool((body.get("stream_options") or {}).get("include_usage"))
                chunks = _openai_chunks(step, model, tokens_in, usage)
                lines = (b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
                self._stream(_then_done(lines), "text/event-stream", step)
            else:
                self._send(200, _openai_body(step, model, tokens_in))

    return Handler


def _then_done(lines: Iterator[bytes]) -> Iterator[bytes]:
    yield from lines
    yield b"data: [DONE]\n\n"


@contextmanager
def scripted_server(script: Sequence[Step] = (), **options: Any) -> Iterator[ScriptedServer]:
    """Serve `script` on 127.0.0.1; `options` set ScriptedServer fields (flavour, models, served_model, n_ctx...)."""
    state = ScriptedServer(script=list(script), **options)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-llm",
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def valid_proposal(proposal_id: str = "more-l-cycles", **overrides: Any) -> dict[str, Any]:
    """A proposal that passes `load_proposal`."""
    data: dict[str, Any] = {
        "id": proposal_id,
        "title": "Run more low-level cycles",
        "rationale": "Deeper recursion per segment gives the fast module more refinement steps.",
        "hypothesis": "exact_accuracy rises by at least one point at equal budget.",
        "citations": [
            {"arxiv_id": "2510.04871", "title": "Less is More: Recursive Reasoning with Tiny Networks", "claim": "more inner steps help"}
        ],
        "edits": [{"op": "set_value", "file": "hrm/config.py", "target": "ModelConfig.L_cycles", "value": "3"}],
        "expected_effect": {"metric": "exact_accuracy", "direction": "increase", "size": 0.01, "confidence": "low"},
        "risk": {"level": "low", "failure_modes": ["slower steps"]},
        "provenance": {"provider": None, "model": None, "prompt_hash": None, "parent_commit": None},
    }
    data.update(overrides)
    return data


def valid_proposal_text(proposal_id: str = "more-l-cycles", **overrides: Any) -> str:
    return json.dumps(valid_proposal(proposal_id, **overrides))
