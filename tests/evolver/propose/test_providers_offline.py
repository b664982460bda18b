"""The offline provider: deterministic picks from the catalogue, skipping what was tried."""

from __future__ import annotations

import pytest

from evolver.propose.catalogue import CATALOGUE
from evolver.propose.prompt import HistoryItem, build_prompt
from evolver.propose.providers import ProviderError, get_provider
from proposals.schema import proposal_json_schema


def make_prompt(history: list[HistoryItem], seed: int = 0):
    return build_prompt("map", [], history, proposal_json_schema(), seed=seed)


def test_same_seed_same_sequence_and_tried_entries_skipped() -> None:
    provider = get_provider("offline")
    history: list[HistoryItem] = []
    picked = []
    for i in range(len(CATALOGUE)):
        reply = provider.propose(make_prompt(history, seed=7))
        picked.append(reply.proposal.id)
        history.append(HistoryItem(f"p{i}", reply.proposal.title, "rejected", None, reply.proposal.id))
    assert sorted(picked) == sorted(e.id for e in CATALOGUE)  # every entry once, none repeated
    again = get_provider("offline").propose(make_prompt([], seed=7)).proposal.id
    assert again == picked[0]
    orders = {tuple(e.id for e in provider.order(s)) for s in range(5)}
    assert len(orders) > 1  # the seed matters
    with pytest.raises(ProviderError, match="all .* catalogue entries were already tried"):
        provider.propose(make_prompt(history, seed=7))
    stats = provider.stats()
    assert stats["proposals"] == len(CATALOGUE) and stats["provider"] == "offline"


def test_tried_by_title_counts_too() -> None:
    provider = get_provider("offline", seed=3)
    first = provider.propose(make_prompt([])).proposal
    by_title = [HistoryItem("x", first.title.upper(), "merged")]
    assert provider.propose(make_prompt(by_title)).proposal.id != first.id
    assert first.provenance.provider == "offline" and first.provenance.prompt_hash


def test_unshuffled_provider_keeps_the_given_order() -> None:
    from evolver.propose.providers.offline import OfflineProvider

    chosen = (CATALOGUE[3], CATALOGUE[0], CATALOGUE[5])
    provider = OfflineProvider(catalogue=chosen, shuffle=False)
    history: list[HistoryItem] = []
    picked = []
    for i in range(3):
        proposal = provider.propose(make_prompt(history, seed=11)).proposal
        picked.append(proposal.id)
        history.append(HistoryItem(f"p{i}", proposal.title, "rejected", None, proposal.id))
    assert picked == [e.id for e in chosen]
