"""Providers against a scripted server on 127.0.0.1, through the real openai and ollama clients."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from evolver.propose.prompt import HistoryItem, build_prompt, prompt_hash
from evolver.propose.providers import ProviderError, extract_json_text, get_provider
from proposals.schema import proposal_json_schema
from tests.evolver.fake_llm_server import Step, scripted_server, valid_proposal_text

FAST = {"timeout": 2.0, "max_retries": 2, "backoff_s": 0.01}


@pytest.fixture
def prompt():
    history = [HistoryItem("p1", "Raise the learning rate", "rejected: diverged", None, "lr-up")]
    return build_prompt("hrm/config.py: ModelConfig(L_cycles=2)", [], history, proposal_json_schema())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- extraction ---------------------------------------------------------------------------------


def test_extract_strips_fences_think_and_prose() -> None:
    body = valid_proposal_text()
    assert json.loads(extract_json_text(f"```json\n{body}\n```")) == json.loads(body)
    assert json.loads(extract_json_text(f"<think>maybe {{\"a\": 1}}</think>\nHere it is: {body} done")) == json.loads(body)
    assert json.loads(extract_json_text("", reasoning=f"draft {{\"x\": 1}} final {body}")) == json.loads(body)
    assert json.loads(extract_json_text(f"<think>{body}</think>")) == json.loads(body)
    assert extract_json_text("not json at all") == "not json at all"


# -- lmstudio / openai (OpenAI wire format) -----------------------------------------------------


def test_lmstudio_valid_reply_sends_strict_schema_and_counts_tokens(prompt, tmp_path: Path) -> None:
    with scripted_server([Step(content=valid_proposal_text())]) as server:
        provider = get_provider("lmstudio", model="m1", host=f"{server.url}/v1", cache_dir=tmp_path, **FAST)
        reply = provider.propose(prompt)
    assert reply.proposal.id == "more-l-cycles" and reply.attempts == 1 and not reply.cached
    body = server.received[0].body
    assert server.received[0].path == "/v1/chat/completions"
    assert body["model"] == "m1"
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == proposal_json_schema()
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    stats = provider.stats()
    assert stats["tokens_in"] > 0 and stats["tokens_out"] > 0 and stats["requests"] == 1
    assert stats["proposals"] == 1 and stats["failures"] == {}


def test_reask_quotes_validation_error_and_offending_output(prompt) -> None:
    bad = '{"id": "x", "title": "t"'  # truncated JSON
    wrong_op = valid_proposal_text(edits=[{"op": "rewrite_everything", "file": "hrm/model.py"}])
    script = [Step(content=bad, finish_reason="length"), Step(content=wrong_op), Step(content=valid_proposal_text())]
    with scripted_server(script) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        reply = provider.propose(prompt)
    assert reply.attempts == 3
    assert len(server.received) == 3
    second = server.received[1].messages
    assert second[-2] == {"role": "assistant", "content": bad}
    assert "cut at the token limit" in second[-1]["content"] and "--max-reply-tokens" in second[-1]["content"]
    third = server.received[2].messages
    assert "unknown op" in third[-1]["content"] and "rewrite_everything" in third[-1]["content"]
    # A re-ask replaces the previous one: system, user, the refused reply (an excerpt), the problems.
    assert len(third) == 4 and third[:2] == server.received[0].messages
    assert third[-2]["role"] == "assistant" and len(third[-2]["content"]) <= 700
    assert provider.stats()["failures"] == {"truncated": 1, "invalid_proposal": 1}
    # every reply is kept, with why it was refused
    outcomes = [(a.number, a.outcome) for a in reply.transcript]
    assert outcomes == [(1, "refused"), (2, "refused"), (3, "accepted")]
    assert reply.transcript[0].raw_text == bad and reply.transcript[0].finish_reason == "length"
    assert any("rewrite_everything" in p for p in reply.transcript[1].problems)


def test_three_bad_replies_raise_with_last_validation_error(prompt) -> None:
    script = [Step(content="nope"), Step(content="{}"), Step(content='{"id": "BAD ID"}')]
    with scripted_server(script) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        with pytest.raises(ProviderError) as info:
            provider.propose(prompt)
    assert len(server.received) == 3
    message = str(info.value)
    assert "after 3 tries" in message and "id: String should match pattern" in message
    assert "edits: required field is missing" in message


def test_reasoning_content_only_reply_is_used(prompt) -> None:
    with scripted_server([Step(content="", reasoning="thinking... " + valid_proposal_text("from-reasoning"))]) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        reply = provider.propose(prompt)
    assert reply.proposal.id == "from-reasoning" and reply.attempts == 1
    with scripted_server([Step(content="", reasoning=valid_proposal_text("alt-field"), reasoning_field="reasoning")]) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        assert provider.propose(prompt).proposal.id == "alt-field"
    think = f"<think>{valid_proposal_text('in-think')}</think>"
    with scripted_server([Step(content=think)]) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        assert provider.propose(prompt).proposal.id == "in-think"


def test_retries_5xx_then_succeeds(prompt) -> None:
    script = [Step(status=500), Step(status=503), Step(content=valid_proposal_text())]
    with scripted_server(script) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        reply = provider.propose(prompt)
    assert reply.attempts == 1 and len(server.received) == 3
    stats = provider.stats()
    assert stats["failures"] == {"server_error": 2} and stats["requests"] == 3 and stats["replies"] == 1


def test_5xx_beyond_retries_raises(prompt) -> None:
    with scripted_server([Step(status=500)] * 3) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        with pytest.raises(ProviderError) as info:
            provider.propose(prompt)
    assert info.value.kind == "server_error" and "HTTP 500" in str(info.value)


def test_timeout_is_retried(prompt) -> None:
    script = [Step(content=valid_proposal_text("slow"), delay=1.2), Step(content=valid_proposal_text("fast"))]
    with scripted_server(script) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", timeout=0.4, max_retries=1, backoff_s=0.01)
        reply = provider.propose(prompt)
    assert reply.proposal.id == "fast"
    assert provider.stats()["failures"] == {"timeout": 1}


def test_unreachable_server_names_url_and_what_to_start(prompt) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    provider = get_provider("lmstudio", model="m", host=url, timeout=1.0, max_retries=1, backoff_s=0.01)
    with pytest.raises(ProviderError) as info:
        provider.propose(prompt)
    message = str(info.value)
    assert info.value.kind == "unreachable"
    assert f"{url}/chat/completions" in message and "lms server start" in message
    assert provider.stats()["failures"] == {"connection": 2}


def test_cache_hit_and_replay(prompt, tmp_path: Path) -> None:
    with scripted_server([Step(content=valid_proposal_text())]) as server:
        first = get_provider("lmstudio", model="m", host=f"{server.url}/v1", cache_dir=tmp_path, **FAST)
        reply = first.propose(prompt)
        again = first.propose(prompt)  # same prompt: served from the cache, no second request
        assert len(server.received) == 1
    assert again.cached and again.proposal == reply.proposal and first.stats()["cache_hits"] == 1
    assert (tmp_path / f"{reply.prompt_hash}.json").is_file()
    # replay with the server gone: the cache alone answers
    replayer = get_provider("lmstudio", model="m", host="http://127.0.0.1:9/v1", cache_dir=tmp_path, replay=True)
    assert replayer.propose(prompt).proposal == reply.proposal
    other = build_prompt("something else", [], [], proposal_json_schema())
    with pytest.raises(ProviderError, match="replay mode: no cached reply"):
        replayer.propose(other)
    # the key covers the model too
    assert prompt_hash(prompt, "a") != prompt_hash(prompt, "b")


def test_openai_needs_key(monkeypatch: pytest.MonkeyPatch, prompt) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
        get_provider("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with scripted_server([Step(content=valid_proposal_text())]) as server:
        monkeypatch.setenv("HRM_OPENAI_BASE_URL", f"{server.url}/v1")
        provider = get_provider("openai", model="gpt-test", **FAST)
        assert provider.propose(prompt).proposal.id == "more-l-cycles"
    assert server.received[0].body["model"] == "gpt-test"


def test_lmstudio_host_from_env(monkeypatch: pytest.MonkeyPatch, prompt) -> None:
    with scripted_server([Step(content=valid_proposal_text())]) as server:
        monkeypatch.setenv("HRM_LMSTUDIO_HOST", f"{server.url}/v1")
        provider = get_provider("lmstudio", **FAST)
        provider.propose(prompt)
    assert len(server.received) == 1


def test_unknown_provider() -> None:
    with pytest.raises(ProviderError, match="unknown provider"):
        get_provider("gemini")


# -- ollama ---------------------------------------------------------------------------------------


def test_ollama_sends_flat_schema_and_reasks(prompt) -> None:
    script = [Step(content="```json\n{\"id\": 1}\n```"), Step(content="", reasoning=valid_proposal_text("olla"))]
    with scripted_server(script) as server:
        provider = get_provider("ollama", model="qwen-test", host=server.url, **FAST)
        reply = provider.propose(prompt)
    assert reply.proposal.id == "olla" and reply.attempts == 2
    body = server.received[0].body
    assert server.received[0].path == "/api/chat" and body["model"] == "qwen-test"
    assert "$defs" not in json.dumps(body["format"]) and "$ref" not in json.dumps(body["format"])
    assert body["stream"] is True and "temperature" in body["options"]
    reask = server.received[1].messages[-1]["content"]
    assert "Validation errors" in reask and "id: Input should be" in reask
    assert '{"id": 1}' in server.received[1].messages[-2]["content"]
    stats = provider.stats()
    assert stats["tokens_in"] > 0 and stats["failures"] == {"invalid_proposal": 1}


def test_ollama_retries_500_and_reports_unreachable(prompt) -> None:
    with scripted_server([Step(status=500), Step(content=valid_proposal_text())]) as server:
        provider = get_provider("ollama", model="m", host=server.url, **FAST)
        assert provider.propose(prompt).attempts == 1
    assert provider.stats()["failures"] == {"server_error": 1}
    url = f"http://127.0.0.1:{free_port()}"
    dead = get_provider("ollama", model="m", host=url, timeout=1.0, max_retries=0)
    with pytest.raises(ProviderError) as info:
        dead.propose(prompt)
    assert f"{url}/api/chat" in str(info.value) and "ollama serve" in str(info.value)


# -- citations and provenance -------------------------------------------------------------------


def test_invented_citation_is_reasked_then_dropped_on_last_try() -> None:
    from evolver.propose.literature import load_snapshot, select_papers

    papers = select_papers(load_snapshot(), 3)
    listed = build_prompt("map", papers, [], proposal_json_schema())
    invented = valid_proposal_text(citations=[{"arxiv_id": "2999.99999", "title": "Made up", "claim": "x"}])
    allowed = [{"arxiv_id": papers[0].arxiv_id, "title": papers[0].title, "claim": "y"}]
    fixed = valid_proposal_text(citations=allowed)
    with scripted_server([Step(content=invented), Step(content=fixed)]) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        reply = provider.propose(listed)
    assert reply.attempts == 2 and reply.proposal.citations[0].arxiv_id == papers[0].arxiv_id
    assert "2999.99999 is not in the list" in server.received[1].messages[-1]["content"]
    with scripted_server([Step(content=invented)] * 3) as server:
        provider = get_provider("lmstudio", model="m", host=f"{server.url}/v1", **FAST)
        reply = provider.propose(listed)
    assert reply.attempts == 3 and reply.proposal.citations == []
    assert provider.stats()["failures"] == {"invalid_proposal": 2, "citation_dropped": 1}
    # dropped, but visibly: on the reply, its storable info, and the accepted attempt
    assert reply.dropped_citations == ["2999.99999"] and reply.info()["dropped_citations"] == ["2999.99999"]
    assert reply.transcript[-1].outcome == "accepted" and reply.transcript[-1].dropped_citations == ["2999.99999"]


def test_provenance_is_stamped(prompt) -> None:
    with scripted_server([Step(content=valid_proposal_text())]) as server:
        provider = get_provider("ollama", model="qwen-x", host=server.url, **FAST)
        reply = provider.propose(prompt)
    provenance = reply.proposal.provenance
    assert (provenance.provider, provenance.model, provenance.prompt_hash) == ("ollama", "qwen-x", reply.prompt_hash)
    assert provenance.parent_commit is None


@pytest.mark.parametrize("name", ["lmstudio", "ollama"])
def test_provenance_records_the_model_the_server_served(prompt, name: str) -> None:
    with scripted_server([Step(content=valid_proposal_text())], served_model="actually-served:7b") as server:
        host = f"{server.url}/v1" if name == "lmstudio" else server.url
        provider = get_provider(name, model="asked-for", host=host, **FAST)
        reply = provider.propose(prompt)
    assert server.received[0].body["model"] == "asked-for"
    assert reply.model == "actually-served:7b" and reply.proposal.provenance.model == "actually-served:7b"
    assert reply.requested_model == "asked-for" and reply.info()["requested_model"] == "asked-for"


# -- the installed client stack -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lmstudio", "openai", "ollama"])
def test_each_provider_builds_its_client_with_the_installed_versions_and_completes(
        prompt, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever `openai` / `ollama` / HTTP library pip resolved (openai 3 streams through httpx2), the client is
    built with a timeout it accepts and one proposal completes over HTTP."""
    from importlib.metadata import version

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with scripted_server([Step(content=valid_proposal_text())]) as server:
        host = server.url if name == "ollama" else f"{server.url}/v1"
        provider = get_provider(name, model="m", host=host, **FAST)
        reply = provider.propose(prompt)
    assert reply.proposal.id == "more-l-cycles", (version("openai"), version("ollama"))
