"""The prompt: repo map, citable papers, history and the schema, with a stable hash."""

from __future__ import annotations

import pytest

from evolver.propose.literature import load_snapshot, select_papers
from evolver.propose.prompt import (
    HistoryItem,
    PromptBudgetError,
    build_prompt,
    count_messages,
    estimate_tokens,
    prompt_hash,
)
from proposals.schema import proposal_json_schema


def test_prompt_carries_map_papers_history_and_ops() -> None:
    papers = select_papers(load_snapshot(), 3)
    history = [HistoryItem("c1-p1", "More L cycles", "rejected: worse than parent", 0.41, "more-l-cycles")]
    prompt = build_prompt("## hrm/model.py\n  def rms_norm(x)", papers, history, proposal_json_schema(), seed=5)
    system, user = prompt.messages
    assert system["role"] == "system" and user["role"] == "user"
    for op in ("replace_function", "set_value", "search_replace", "add_import", "delete_symbol"):
        assert op in system["content"]
    assert "def rms_norm(x)" in user["content"]
    for paper in papers:
        assert f"arXiv:{paper.arxiv_id}" in user["content"]
    assert "[c1-p1] More L cycles: rejected: worse than parent mean gain +0.4100" in user["content"]
    assert prompt.allowed_citations == [p.arxiv_id for p in papers]
    assert prompt.tried == ["More L cycles", "more-l-cycles"] and prompt.seed == 5


def test_prompt_hash_is_stable_and_sensitive() -> None:
    schema = proposal_json_schema()
    a = build_prompt("map", [], [], schema)
    b = build_prompt("map", [], [], schema)
    c = build_prompt("map changed", [], [], schema)
    assert prompt_hash(a) == prompt_hash(b) and len(prompt_hash(a)) == 64
    assert prompt_hash(a) != prompt_hash(c)
    assert prompt_hash(a, "model-x") != prompt_hash(a, "model-y")
    no_papers = build_prompt("map", [], [], schema).user
    assert "cite nothing rather than invent ids" in no_papers


# -- the metric, the fixed citation list, the token budget -----------------------------------------------


def test_goal_and_expected_metric_name_the_metric_in_force() -> None:
    prompt = build_prompt("map", [], [], proposal_json_schema(), metric="token_accuracy")
    assert "Goal: raise token_accuracy on the evaluation split" in prompt.user
    assert 'Set expected_effect.metric to "token_accuracy"' in prompt.user
    assert "exact_accuracy" not in prompt.user and prompt.metric == "token_accuracy"


def test_citation_list_is_the_one_given_and_stable_across_cycles() -> None:
    papers = select_papers(load_snapshot(), 8)
    history = [HistoryItem(f"c{i}", f"idea {i}", "rejected") for i in range(3)]
    one = build_prompt("map", papers, history[:1], proposal_json_schema(), seed=1)
    two = build_prompt("map", papers, history, proposal_json_schema(), seed=2)
    assert one.allowed_citations == two.allowed_citations == [p.arxiv_id for p in papers]
    # even when the budget leaves room for fewer papers, every id of the run's list stays citable
    tight = build_prompt("map", papers, history, proposal_json_schema(), budget_tokens=1150)
    assert tight.allowed_citations == [p.arxiv_id for p in papers]
    assert len(tight.shown_citations) < len(papers) and tight.trimmed


def renderer(calls: list[int]):
    def render(budget: int) -> str:
        calls.append(budget)
        lines = [f"hrm/f{i}.py: def g{i}(x) -> Tensor  # some detail about it" for i in range(300)]
        out, used = [], 0
        for line in lines:
            if used + len(line) > budget * 4:  # a looser estimate than the prompt's: it overshoots
                break
            out.append(line)
            used += len(line) + 1
        return "\n".join(out)

    return render


def test_budget_shrinks_map_literature_and_history_to_fit() -> None:
    papers = select_papers(load_snapshot(), 8)
    history = [HistoryItem(f"c{i}-p", f"Change {i} of the model depth", "rejected: worse", 0.3) for i in range(40)]
    calls: list[int] = []
    for budget in (4000, 2500, 1500):
        prompt = build_prompt(renderer(calls), papers, history, proposal_json_schema(), budget_tokens=budget,
                              reply_tokens=512)
        assert prompt.prompt_tokens <= budget and prompt.budget_tokens == budget
        assert prompt.prompt_tokens == count_messages(prompt.messages)
        assert "The whole reply must fit in 512 tokens" in prompt.user
        assert "[c39-p] Change 39" in prompt.user  # the most recent history is kept
        assert "older attempts omitted" in prompt.user
    assert len(calls) > 3  # the renderer was asked again for less when it overshot
    big = build_prompt(renderer([]), papers, history, proposal_json_schema(), budget_tokens=20000)
    assert big.trimmed == [] and "older attempts omitted" not in big.user
    assert big.shown_citations == [p.arxiv_id for p in papers]


def test_plain_string_map_is_cut_at_a_line_end() -> None:
    text = "\n".join(f"line {i}: " + "x" * 50 for i in range(400))
    prompt = build_prompt(text, [], [], proposal_json_schema(), budget_tokens=1500)
    assert prompt.prompt_tokens <= 1500
    assert "...[map truncated to fit the context]" in prompt.user and "map: cut at a line end" in prompt.trimmed
    kept = [line for line in prompt.user.splitlines() if line.startswith("line ")]
    assert kept and all(line.endswith("x" * 50) for line in kept)  # whole lines only


def test_a_budget_below_the_fixed_part_is_a_config_error() -> None:
    with pytest.raises(PromptBudgetError) as info:
        build_prompt("map", [], [], proposal_json_schema(), budget_tokens=300)
    assert info.value.kind == "config" and "--context-tokens" in str(info.value)


def test_estimate_is_conservative_and_a_counter_can_replace_it() -> None:
    assert estimate_tokens("abc" * 10) == 10 and estimate_tokens("abcd") == 2
    exact = build_prompt("map " * 2000, [], [], proposal_json_schema(), budget_tokens=2000,
                         count_tokens=lambda t: len(t.split()))
    assert exact.prompt_tokens <= 2000
    assert exact.prompt_tokens == count_messages(exact.messages, lambda t: len(t.split()))


def test_history_that_does_not_fit_in_full_keeps_one_line_per_attempt() -> None:
    """A small context drops the ideas, edits and errors of earlier attempts before the attempts themselves: each
    keeps one line with its verdict and why it ended."""
    from evolver.propose.prompt import COMPACT_HISTORY_CHARS, HistoryItem, build_prompt
    from proposals.schema import proposal_json_schema

    history = [HistoryItem(f"p{i}", f"change {i}", f"no-effect: the edit did not change training ({i})",
                           idea=f"idea-{i} " + "because of reasons " * 40, files=("hrm/config.py",),
                           symbols=("TrainConfig",), error_tail="Traceback\n" * 4) for i in range(3)]
    full = build_prompt("map", [], history, proposal_json_schema())
    assert all(f"idea: idea-{i} " in full.user for i in range(3))
    small = build_prompt("map " * 400, [], history, proposal_json_schema(), budget_tokens=2600)
    for i in range(3):
        assert f"[p{i}] change {i}: no-effect: the edit did not change training ({i})" in small.user
        assert f"idea-{i} " not in small.user
    assert any("one line each" in note for note in small.trimmed)
    assert all(len(line) <= COMPACT_HISTORY_CHARS for line in small.user.splitlines() if line.startswith("- [p"))
