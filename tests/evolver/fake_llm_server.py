"""A scripted chat server on 127.0.0.1 for provider tests.

It speaks OpenAI's `/v1/chat/completions` and Ollama's `/api/chat` and answers each request with the
next `Step` of its script: a reply (content and/or reasoning), an HTTP error status, or a delay longer
than the client's timeout. Every request body is recorded so tests can assert on what the real client
libraries actually sent (e.g. that a re-ask quoted the validation error).
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


@dataclass
class Step:
    content: str = ""
    reasoning: str = ""
    status: int = 200
    delay: float = 0.0
    finish_reason: str = "stop"
    reasoning_field: str = "reasoning_content"  # newer LM Studio / vLLM builds use "reasoning"


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    at: float

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))


@dataclass
class ScriptedServer:
    script: list[Step]
    received: list[Received] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def next_step(self) -> Step | None:
        with self.lock:
            return self.script.pop(0) if self.script else None


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


def _handler(state: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

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

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                body = {"_unparsed": raw.decode(errors="replace")}
            state.received.append(Received(self.path, body, time.monotonic()))
            if self.path not in ("/v1/chat/completions", "/api/chat"):
                self._send(404, {"error": f"no route {self.path}"})
                return
            step = state.next_step()
            if step is None:
                self._send(410, {"error": "script exhausted"})
                return
            if step.delay:
                time.sleep(step.delay)
            if step.status != 200:
                self._send(step.status, {"error": {"message": f"scripted HTTP {step.status}", "type": "server_error"}})
                return
            model = str(body.get("model", ""))
            tokens_in = max(1, len(raw) // 4)
            if self.path == "/api/chat":
                self._send(200, _ollama_body(step, model, tokens_in))
            else:
                self._send(200, _openai_body(step, model, tokens_in))

    return Handler


@contextmanager
def scripted_server(script: Sequence[Step]) -> Iterator[ScriptedServer]:
    state = ScriptedServer(script=list(script))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="scripted-llm", daemon=True)
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
