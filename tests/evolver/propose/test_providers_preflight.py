"""Preflight, token budgets, streaming progress and the transcript, against scripted servers on 127.0.0.1.

Each scripted server plays one kind of real server (llama.cpp, LM Studio, Ollama, a bare OpenAI-compatible
one) through the endpoints preflight reads; the real openai and ollama clients do the talking.
"""

from __future__ import annotations

import json

import pytest

from evolver.propose.literature import load_snapshot, select_papers
from evolver.propose.prompt import HistoryItem, build_prompt
from evolver.propose.providers import LLMProgress, ProviderError, get_provider
from evolver.propose.providers.base import REASK_RESERVE_TOKENS, TEMPLATE_MARGIN_TOKENS
from proposals.schema import proposal_json_schema
from tests.evolver.fake_llm_server import Step, fake_tokens, scripted_server, valid_proposal_text

FAST = {"timeout": 2.0, "max_retries": 1, "backoff_s": 0.01}
SCHEMA = proposal_json_schema()


def small_prompt():
    return build_prompt("hrm/config.py: ModelConfig(L_cycles=2)", [], [], SCHEMA)


def big_summary(budget: int) -> str:
    """A repo map renderer that, like build_repo_summary, estimates 4 characters per token (so it overshoots)."""
    lines = [f"hrm/module_{i}.py: def function_{i}(x, y, z) -> Tensor  # {'detail ' * 6}" for i in range(400)]
    out: list[str] = []
    for line in lines:
        if sum(len(x) + 1 for x in out) + len(line) > budget * 4:
            break
        out.append(line)
    return "\n".join(out)


def long_history(n: int = 40) -> list[HistoryItem]:
    return [HistoryItem(f"c{i}-p", f"Change number {i} to the model's depth and width", "rejected: worse than parent",
                        0.4 + i / 1000) for i in range(n)]


# -- what kind of server, which model -------------------------------------------------------------------


def test_llamacpp_preflight_reads_n_ctx_tokenizes_and_adopts_the_only_model() -> None:
    with scripted_server(flavour="llama.cpp", models=["smol-135m"], n_ctx=4096) as server:
        provider = get_provider("lmstudio", host=f"{server.url}/v1", **FAST)  # --model left unset
        info = provider.preflight()
        assert provider.count_tokens("abcd" * 10) == 10  # the server's tokenizer, not the estimate (14)
    assert info.api == "llama.cpp" and info.context_tokens == 4096
    assert "llama.cpp /props" in info.context_source and info.tokenizer == "llama.cpp /tokenize"
    assert info.model == "smol-135m" and info.model_source == "only served model" and provider.model == "smol-135m"
    assert any("serves only 'smol-135m'" in n for n in info.notes)
    assert info.max_reply_tokens == 1024
    assert info.prompt_budget_tokens == 4096 - 1024 - REASK_RESERVE_TOKENS - TEMPLATE_MARGIN_TOKENS
    assert [p.path for p in server.probes][:2] == ["/v1/models", "/props"]
    json.dumps(info.to_dict())  # storable
    assert "context 4096" in info.describe()


def test_a_named_model_the_server_does_not_serve_is_a_config_error() -> None:
    with scripted_server(flavour="llama.cpp", models=["smol-135m"]) as server:
        provider = get_provider("lmstudio", model="qwen2.5-coder-7b-instruct", host=f"{server.url}/v1", **FAST)
        with pytest.raises(ProviderError) as info:
            provider.preflight()
    assert info.value.kind == "config"
    message = str(info.value)
    assert "does not serve model 'qwen2.5-coder-7b-instruct'" in message and "smol-135m" in message
    assert "--model" in message


def test_several_served_models_and_the_default_missing_is_a_config_error() -> None:
    with scripted_server(models=["a-model", "b-model"]) as server:
        provider = get_provider("lmstudio", host=f"{server.url}/v1", **FAST)
        with pytest.raises(ProviderError, match="serves: a-model, b-model") as info:
            provider.preflight()
    assert info.value.kind == "config"
    with scripted_server(models=[]) as server:
        with pytest.raises(ProviderError, match="serves no model"):
            get_provider("lmstudio", host=f"{server.url}/v1", **FAST).preflight()


def test_lmstudio_context_from_api_v0() -> None:
    with scripted_server(flavour="lmstudio", models=["qwen2.5-coder-7b-instruct", "other"], n_ctx=8192) as server:
        provider = get_provider("lmstudio", host=f"{server.url}/v1", **FAST)
        info = provider.preflight()
    assert info.api == "lmstudio" and info.model_source == "default"
    assert info.context_tokens == 8192 and "loaded_context_length" in info.context_source
    assert info.max_reply_tokens == 2048
    with scripted_server(flavour="lmstudio", models=["m"], loaded_context=False) as server:
        info = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST).preflight()
    assert info.context_tokens == 4096 and "max_context_length=32768" in info.context_source


def test_context_setting_when_the_server_does_not_tell_and_min_with_the_server() -> None:
    with scripted_server(models=["m"]) as server:  # a bare OpenAI-compatible server: no context anywhere
        assumed = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST).preflight()
        set_ = get_provider("lmstudio", model="m", host=f"{server.url}/v1", context_tokens=16384, **FAST).preflight()
    assert assumed.context_tokens == 4096 and assumed.context_source == "assumed"
    assert any("--context-tokens" in n for n in assumed.notes)
    assert set_.context_tokens == 16384 and set_.context_source == "--context-tokens"
    with scripted_server(flavour="llama.cpp", models=["m"], n_ctx=4096) as server:
        more = get_provider("lmstudio", model="m", host=f"{server.url}/v1", context_tokens=32768, **FAST).preflight()
    assert more.context_tokens == 4096 and any("more than the server's 4096" in n for n in more.notes)


def test_too_small_a_context_is_a_config_error_naming_the_settings() -> None:
    with scripted_server(flavour="llama.cpp", models=["m"], n_ctx=2048) as server:
        with pytest.raises(ProviderError) as info:
            get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST).preflight()
    assert info.value.kind == "config"
    assert "2048-token context" in str(info.value) and "--context-tokens" in str(info.value)


def test_wrong_base_url_is_a_config_error() -> None:
    with scripted_server(models=["m"]) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/wrong/v1", **FAST)
        with pytest.raises(ProviderError) as info:
            provider.preflight()
        # and a chat that hits a 404 (no preflight) stops the run too, instead of failing every cycle
        with pytest.raises(ProviderError) as chat:
            provider.propose(small_prompt())
    assert info.value.kind == "config" and "wrong base URL" in str(info.value)
    assert f"{server.url}/wrong/v1/models answered HTTP 404" in str(info.value)
    assert chat.value.kind == "config" and "HTTP 404" in str(chat.value)


def test_openai_api_url_pointed_at_ollama_says_so() -> None:
    with scripted_server(flavour="ollama", models=["qwen2.5-coder:7b"]) as server:
        with pytest.raises(ProviderError) as info:
            get_provider("lmstudio", model="m", host=server.url, **FAST).preflight()
    assert info.value.kind == "config" and "is an Ollama server: use --provider ollama" in str(info.value)


def test_unreachable_preflight_names_what_to_start() -> None:
    provider = get_provider("lmstudio", model="m", host="http://127.0.0.1:9/v1", **FAST)
    with pytest.raises(ProviderError) as info:
        provider.preflight()
    assert info.value.kind == "unreachable" and "lms server start" in str(info.value)


# -- ollama ----------------------------------------------------------------------------------------------


def test_provider_ollama_against_a_server_that_is_not_ollama() -> None:
    with scripted_server(flavour="llama.cpp", models=["smol"]) as server:
        provider = get_provider("ollama", host=server.url, **FAST)
        with pytest.raises(ProviderError) as info:
            provider.preflight()
        with pytest.raises(ProviderError) as v1:  # the OpenAI-style URL pasted for Ollama
            get_provider("ollama", host=f"{server.url}/v1", **FAST).preflight()
    message = str(info.value)
    assert info.value.kind == "config" and "is not an Ollama server" in message
    assert f"--provider lmstudio --host {server.url}/v1" in message and "smol" in message
    assert "ollama pull" not in message
    assert v1.value.kind == "config" and "--provider lmstudio" in str(v1.value)
    with scripted_server(flavour="bare") as bare:
        with pytest.raises(ProviderError, match="wrong base URL") as none:
            get_provider("ollama", host=bare.url, **FAST).preflight()
    assert none.value.kind == "config"


def test_ollama_chat_404_without_preflight_is_a_config_error() -> None:
    with scripted_server([Step(status=404, error="404 page not found")]) as server:
        with pytest.raises(ProviderError) as info:
            get_provider("ollama", host=server.url, **FAST).propose(small_prompt())
    assert info.value.kind == "config" and "is not an Ollama server" in str(info.value)
    with scripted_server([Step(status=404, error="model 'qwen' not found, try pulling it first")]) as server:
        with pytest.raises(ProviderError) as missing:
            get_provider("ollama", model="qwen", host=server.url, **FAST).propose(small_prompt())
    assert missing.value.kind == "config" and "ollama pull qwen" in str(missing.value)


def test_ollama_preflight_context_and_num_ctx_sent() -> None:
    script = [Step(content=valid_proposal_text())]
    with scripted_server(script, flavour="ollama", models=["qwen2.5-coder:7b"], n_ctx=32768) as server:
        provider = get_provider("ollama", host=server.url, **FAST)
        info = provider.preflight()
        provider.propose(small_prompt())
    assert info.api == "ollama" and info.model == "qwen2.5-coder:7b" and info.model_source == "default"
    assert info.context_tokens == 8192 and "capped at 8192" in info.context_source
    options = server.received[0].body["options"]
    assert options["num_ctx"] == 8192 and options["num_predict"] == info.max_reply_tokens == 2048
    with scripted_server(flavour="ollama", models=["llama3:latest"], ollama_num_ctx=6144) as server:
        info = get_provider("ollama", model="llama3", host=server.url, **FAST).preflight()
        forced = get_provider("ollama", model="llama3", host=server.url, context_tokens=5000, **FAST).preflight()
    assert info.model == "llama3:latest" and info.context_tokens == 6144 and "num_ctx" in info.context_source
    assert forced.context_tokens == 5000


def test_ollama_model_not_pulled() -> None:
    with scripted_server(flavour="ollama", models=["llama3:latest", "phi3:mini"]) as server:
        with pytest.raises(ProviderError) as info:
            get_provider("ollama", model="qwen2.5-coder:7b", host=server.url, **FAST).preflight()
    assert info.value.kind == "config" and "ollama pull qwen2.5-coder:7b" in str(info.value)
    assert "llama3:latest, phi3:mini" in str(info.value)


# -- the request: max_tokens, streaming, overflow, truncation ---------------------------------------------


def test_request_streams_and_sends_max_tokens_and_reports_progress() -> None:
    events: list[LLMProgress] = []
    script = [Step(content="{not json"), Step(content=valid_proposal_text(), chunk_delay=0.002)]
    with scripted_server(script, flavour="llama.cpp", models=["m"], n_ctx=8192) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        provider.preflight()
        reply = provider.propose(small_prompt(), progress=events.append)
    body = server.received[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 2048 == reply.max_tokens
    statuses = [e.status for e in events]
    assert statuses[0] == "waiting" and "streaming" in statuses and "refused" in statuses
    assert statuses[-1] == "accepted"
    streamed = [e.tokens for e in events if e.status == "streaming" and e.attempt == 2]
    assert streamed == sorted(streamed) and streamed[-1] == -(-len(valid_proposal_text()) // 4)
    elapsed = [e.elapsed_s for e in events]
    assert elapsed == sorted(elapsed)
    refused = next(e for e in events if e.status == "refused")
    assert refused.attempt == 1 and refused.problems and "JSON" in refused.problems[0]
    assert reply.tokens_out == streamed[-1] + len("{not json") // 4 + 1


def test_context_overflow_is_a_config_error_that_says_what_to_raise() -> None:
    huge = build_prompt("x = 1\n" * 3000, [], [], SCHEMA)  # no budget: 18 kB of map
    with scripted_server([Step(content=valid_proposal_text())] * 2, overflow_at=4096) as server:
        # no exact tokenizer: the request goes out and the server's HTTP 400 is explained
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        with pytest.raises(ProviderError) as info:
            provider.propose(huge)
        assert len(server.received) == 1  # not retried, not re-asked
        assert server.received[0].body["max_tokens"] == 1024  # an assumed context does not cut the reply short
    message = str(info.value)
    assert info.value.kind == "config"
    assert "exceeds the available context size (4096 tokens)" in message
    assert "--context-tokens" in message and "--max-reply-tokens" in message
    assert info.value.attempts and info.value.attempts[0].outcome == "config"
    with scripted_server([Step(content=valid_proposal_text())], flavour="llama.cpp", models=["m"]) as server:
        # with the server's tokenizer the provider knows, and refuses before sending anything
        careful = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        careful.preflight()
        with pytest.raises(ProviderError) as early:
            careful.propose(huge)
        assert server.received == []
    assert early.value.kind == "config" and "fit_prompt" in str(early.value) and "--context-tokens" in str(early.value)


def test_cut_replies_end_in_an_error_naming_the_settings() -> None:
    cut = Step(content='{"id": "half-a-proposal", "title": "Half', finish_reason="length")
    with scripted_server([cut] * 3) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", max_reply_tokens=600, **FAST)
        with pytest.raises(ProviderError) as info:
            provider.propose(small_prompt())
    assert info.value.kind == "truncated"
    message = str(info.value)
    assert "finish_reason=length, max_tokens=600" in message
    assert "--max-reply-tokens (HRM_MAX_REPLY_TOKENS)" in message and "--context-tokens" in message
    assert [a.outcome for a in info.value.attempts] == ["refused"] * 3
    assert all(a.finish_reason == "length" and a.raw_text == cut.content for a in info.value.attempts)
    stored = json.loads(json.dumps(info.value.to_dict()))
    assert stored["kind"] == "truncated" and len(stored["attempts"]) == 3
    assert stored["attempts"][0]["problems"][0].startswith("the reply was cut at the token limit")


def test_reask_quotes_an_excerpt_never_the_whole_reply() -> None:
    rambling = "{" + "blah " * 800  # 4 kB of nonsense
    with scripted_server([Step(content=rambling), Step(content=valid_proposal_text())]) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        reply = provider.propose(small_prompt())
    reask = server.received[1].messages
    assert len(reask) == 4 and reask[2]["role"] == "assistant"
    assert len(reask[2]["content"]) < 700 and "more characters not shown" in reask[2]["content"]
    assert len(json.dumps(reask)) < len(json.dumps(server.received[0].messages)) + 2500
    assert reply.transcript[0].raw_text == rambling  # the transcript keeps the whole reply


def test_budgeted_prompt_and_reasks_fit_a_4096_context() -> None:
    """The issue's failure: a 3,600-token prompt, no max_tokens, a re-ask appending the whole reply -> HTTP 400."""
    papers = select_papers(load_snapshot(), 8)
    long_reply = '{"id": "x", "title": "' + "very long title " * 150  # 2.4 kB, cut
    script = [Step(content=long_reply, finish_reason="length")] * 3
    with scripted_server(script, flavour="llama.cpp", models=["m"], n_ctx=4096, overflow_at=4096) as server:
        provider = get_provider("lmstudio", host=f"{server.url}/v1", **FAST)
        provider.preflight()
        prompt = provider.fit_prompt(big_summary, papers, long_history(), SCHEMA, metric="token_accuracy")
        assert prompt.prompt_tokens <= provider.prompt_budget()
        assert prompt.trimmed and prompt.allowed_citations == [p.arxiv_id for p in papers]
        with pytest.raises(ProviderError) as info:
            provider.propose(prompt)
    assert info.value.kind == "truncated" and len(server.received) == 3  # three tries, no HTTP 400
    for request in server.received:
        used = sum(fake_tokens(m["content"]) + 4 for m in request.messages)
        assert used + request.body["max_tokens"] <= 4096, used
    assert "very long title" * 50 not in json.dumps(server.received[2].messages)


def test_timeouts_are_retried_visibly_and_keep_the_partial_reply() -> None:
    events: list[LLMProgress] = []
    slow = Step(content=valid_proposal_text("slow"), stall_after=5, stall=0.8)
    with scripted_server([slow, slow]) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", timeout=0.3, max_retries=1,
                                backoff_s=0.01)
        with pytest.raises(ProviderError) as info:
            provider.propose(small_prompt(), progress=events.append)
    assert info.value.kind == "timeout" and "--llm-timeout" in str(info.value)
    assert [e.status for e in events].count("retrying") == 1
    assert [a.outcome for a in info.value.attempts] == ["timeout", "timeout"]
    assert info.value.attempts[0].raw_text.startswith('{"id')  # what streamed before the stall
