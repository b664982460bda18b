"""The prompt: repo map, citable papers, history and the schema, with a stable hash."""

from __future__ import annotations

from evolver.literature import load_snapshot, select_papers
from evolver.prompt import HistoryItem, build_prompt, prompt_hash
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
    assert "[c1-p1] More L cycles: rejected: worse than parent score=0.4100" in user["content"]
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
