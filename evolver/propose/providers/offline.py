"""A proposer that needs no model server: it walks a catalogue of literature-grounded HRM changes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evolver.propose.catalogue import CATALOGUE, CatalogueEntry
from evolver.propose.prompt import Prompt
from evolver.propose.providers.base import Completion, Provider, ProviderError, ProviderReply, stamp
from evolver.propose.providers.records import Attempt, LLMProgress, ProgressCallback
from proposals.schema import load_proposal


class OfflineProvider(Provider):
    """Picks the first catalogue entry not yet tried, in an order fixed by the seed (or, with
    ``shuffle=False``, in the catalogue's own order).

    An entry counts as tried when its id or its title appears in `prompt.tried`. The order is a
    seeded shuffle of the catalogue, so the same seed and history always give the same proposal.
    """

    name = "offline"
    api = "offline"

    def __init__(
        self,
        *,
        model: str | None = None,
        seed: int | None = None,
        catalogue: tuple[CatalogueEntry, ...] = CATALOGUE,
        shuffle: bool = True,
        cache_dir: Path | str | None = None,
        **kwargs: Any,
    ) -> None:
        for unused in ("host", "context_tokens", "max_reply_tokens"):  # no server, no context to budget
            kwargs.pop(unused, None)
        super().__init__(model=model or "catalogue", cache_dir=cache_dir, **kwargs)
        self.seed = seed
        self.catalogue = catalogue
        self.shuffle = shuffle

    def endpoint(self) -> str:
        return "built-in catalogue"

    def _complete(self, messages: list[dict[str, str]], schema: dict[str, Any] | None, temperature: float,
                  max_tokens: int | None, on_tokens: Callable[[int], None]) -> Completion:
        raise NotImplementedError("the offline provider does not chat; propose() picks from the catalogue")

    def order(self, seed: int) -> list[CatalogueEntry]:
        entries = list(self.catalogue)
        if self.shuffle:
            random.Random(seed).shuffle(entries)
        return entries

    def pick(self, prompt: Prompt) -> CatalogueEntry:
        tried = {t.strip().lower() for t in prompt.tried}
        seed = prompt.seed if self.seed is None else self.seed
        for entry in self.order(seed):
            if entry.id.lower() not in tried and entry.title.lower() not in tried:
                return entry
        raise ProviderError(
            f"offline: all {len(self.catalogue)} catalogue entries were already tried; "
            "use an LLM provider (lmstudio, ollama, openai) to go further",
            kind="exhausted",
        )

    def propose(self, prompt: Prompt, progress: ProgressCallback | None = None, *,
                follow_up: Sequence[dict[str, str]] = (),
                context_for: Callable[[str], str] | None = None) -> ProviderReply:
        """The next catalogue entry (no conversation: ``follow_up`` and ``context_for`` do not apply)."""
        t0 = time.monotonic()
        self._stats.requests += 1
        entry = self.pick(prompt)
        key = self.cache_key(prompt)
        # A broken catalogue entry is a bug: let ProposalError surface.
        proposal = stamp(load_proposal(entry.to_json()), self.name, self.model, key)
        text = proposal.model_dump_json()
        self._stats.replies += 1
        self._stats.proposals += 1
        elapsed = time.monotonic() - t0
        self._stats.latency_s += elapsed
        report = progress or self.progress
        if report is not None:
            report(LLMProgress(tokens=0, elapsed_s=elapsed, status="accepted", detail=proposal.id))
        return ProviderReply(
            proposal=proposal,
            raw_text=text,
            provider=self.name,
            model=self.model,
            prompt_hash=key,
            attempts=1,
            latency_s=elapsed,
            requested_model=self.model,
            transcript=[Attempt(number=1, request=1, outcome="accepted", raw_text=text, served_model=self.model,
                                elapsed_s=elapsed)],
        )
