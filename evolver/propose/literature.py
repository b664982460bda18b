"""Papers for the proposal prompt: arXiv search with a shipped snapshot as the fallback.

`search_literature` queries arXiv through the `arxiv` package (one polite client: `delay_seconds`
between requests, endpoint overridable with HRM_ARXIV_URL or `query_url`), de-duplicates by id and
scores each paper by keyword relevance to HRM's knobs. When arXiv cannot be reached the shipped
snapshot (`evolver/propose/data/literature_snapshot.json`) is used and the result says so
(`source="snapshot"`, `reason=...`). `literature_context(k, ...)` returns the k papers to show the
model, preferring ones not shown before (a seen-file in the state dir spans runs).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import arxiv

ARXIV_URL_ENV = "HRM_ARXIV_URL"
SEEN_FILE = "literature_seen.json"

DEFAULT_QUERIES: tuple[str, ...] = (
    'all:"hierarchical reasoning model"',
    'all:"recursive reasoning" AND cat:cs.LG',
    'all:"adaptive computation time"',
    'all:"deep equilibrium"',
    'all:"looped transformer"',
    'all:"recurrent depth" AND all:reasoning',
    'all:"universal transformer"',
    'all:sudoku AND all:"neural network" AND cat:cs.LG',
)

# Concept -> keyword patterns (regular expressions, matched case-insensitively on title + summary).
CONCEPTS: dict[str, tuple[str, ...]] = {
    "halting": (r"\bhalt\w*", r"adaptive computation", r"\bponder\w*", r"\bACT\b", r"early exit", r"\bstopping\b"),
    "recursion_depth": (
        r"\brecurren\w*",
        r"\brecursi\w*",
        r"\bloop(ed|s)?\b",
        r"\biterat\w*",
        r"\bcycles?\b",
        r"\bdepth\b",
        r"\bunroll\w*",
    ),
    "gradient_approximation": (
        r"one-step gradient",
        r"implicit (differentiation|function|gradient)",
        r"\bequilibri\w*",
        r"fixed[- ]point",
        r"jacobian",
        r"backprop\w*",
        r"through time",
        r"\btruncated\b",
    ),
    "ema": (r"moving average", r"\bEMA\b", r"weight averag\w*", r"averaging weights", r"\bpolyak\b", r"mean teacher"),
    "normalisation": (r"normali[sz]ation", r"\bRMSNorm\b", r"layer ?norm", r"root mean square"),
    "positional_encoding": (r"position(al)? (embedding|encoding)s?", r"\brotary\b", r"\bRoPE\b", r"\bALiBi\b"),
    "optimizer": (
        r"\boptimi[sz]er\w*",
        r"\bAdam\w*",
        r"learning[- ]rate",
        r"\bwarm ?up\b",
        r"weight decay",
        r"\bschedul\w*",
        r"\bSGD\w*",
    ),
    "augmentation": (r"\baugment\w*", r"\bsymmetr\w*", r"\bpermutation\w*", r"data transformation"),
    "loss_numerics": (r"\bsoftmax\b", r"\bstablemax\b", r"cross[- ]entropy", r"numerical(ly)? stab\w*", r"\bgrokking\b"),
    "weight_sharing": (r"shared weights", r"weight[- ]shar\w*", r"\bsingle network\b", r"tiny network"),
}
_COMPILED = {name: [re.compile(p, re.IGNORECASE) for p in pats] for name, pats in CONCEPTS.items()}


@dataclass
class Paper:
    arxiv_id: str
    title: str
    authors: list[str]
    date: str  # ISO date of first publication
    summary: str
    score: float = 0.0
    concepts: list[str] = field(default_factory=list)
    source: str = "arxiv"  # "arxiv" or "snapshot"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LiteratureResult:
    papers: list[Paper]
    source: str  # "arxiv" or "snapshot"
    reason: str = ""  # why the snapshot was used
    queries: list[str] = field(default_factory=list)


def strip_version(short_id: str) -> str:
    """'2506.21734v3' -> '2506.21734'; old-style 'cs/0101001v1' -> 'cs/0101001'."""
    return re.sub(r"v\d+$", "", short_id.strip())


def score_text(title: str, summary: str) -> tuple[float, list[str]]:
    """Keyword relevance to HRM's knobs: one point per concept hit, doubled when the title hits."""
    total = 0.0
    hits: list[str] = []
    for name, patterns in _COMPILED.items():
        in_title = any(p.search(title) for p in patterns)
        count = sum(len(p.findall(summary)) for p in patterns)
        if in_title or count:
            hits.append(name)
            total += (2.0 if in_title else 0.0) + min(count, 3)
    return total, hits


def score_paper(paper: Paper) -> Paper:
    paper.score, paper.concepts = score_text(paper.title, paper.summary)
    return paper


def load_snapshot() -> list[Paper]:
    text = resources.files("evolver.propose").joinpath("data/literature_snapshot.json").read_text(encoding="utf-8")
    papers = [Paper(**{**raw, "source": "snapshot"}) for raw in json.loads(text)["papers"]]
    return [score_paper(p) for p in papers]


def _first_sentence(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", flat)
    sentence = match.group(1) if match else flat
    return sentence if len(sentence) <= limit else sentence[: limit - 3].rstrip() + "..."


def _from_result(result: arxiv.Result) -> Paper:
    published: datetime = result.published
    return score_paper(
        Paper(
            arxiv_id=strip_version(result.get_short_id()),
            title=" ".join(result.title.split()),
            authors=[a.name for a in result.authors],
            date=published.date().isoformat(),
            summary=_first_sentence(result.summary),
            source="arxiv",
        )
    )


def make_client(
    *, delay_seconds: float = 3.0, num_retries: int = 1, query_url: str | None = None, page_size: int = 25
) -> arxiv.Client:
    """One client per run: arXiv asks for one request every 3 s on a single connection."""
    client = arxiv.Client(page_size=page_size, delay_seconds=delay_seconds, num_retries=num_retries)
    base = query_url or os.environ.get(ARXIV_URL_ENV)
    if base:
        client.query_url_format = base if "{}" in base else base.rstrip("?") + "?{}"
    return client


def _run_queries(client: arxiv.Client, queries: Sequence[str], max_results: int) -> list[Paper]:
    found: dict[str, Paper] = {}
    for query in queries:
        search = arxiv.Search(query=query, max_results=max_results, sort_by=arxiv.SortCriterion.Relevance)
        for result in client.results(search):
            paper = _from_result(result)
            found.setdefault(paper.arxiv_id, paper)  # the same paper from several queries counts once
    return list(found.values())


def search_literature(
    queries: Sequence[str] = DEFAULT_QUERIES,
    *,
    max_results: int = 10,
    client: arxiv.Client | None = None,
    timeout_s: float = 120.0,
    offline: bool = False,
) -> LiteratureResult:
    """Query arXiv; on any failure (network, HTTP, malformed feed, timeout) fall back to the snapshot."""
    if offline:
        return LiteratureResult(load_snapshot(), "snapshot", "offline mode requested", list(queries))
    client = client or make_client()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["papers"] = _run_queries(client, queries, max_results)
        except Exception as exc:  # noqa: BLE001 - any failure means "use the snapshot", reported below
            outcome["error"] = exc

    # The arxiv client has no request timeout; a worker thread bounds the wait.
    worker = threading.Thread(target=work, name="arxiv-search", daemon=True)
    worker.start()
    worker.join(timeout_s)
    url = client.query_url_format.format("...")
    if worker.is_alive():
        reason = f"arXiv ({url}) did not answer within {timeout_s:.0f}s"
    elif "error" in outcome:
        exc = outcome["error"]
        reason = f"arXiv ({url}) unreachable or failed: {type(exc).__name__}: {str(exc)[:200]}"
    elif not outcome.get("papers"):
        reason = f"arXiv ({url}) returned no papers for {len(queries)} queries"
    else:
        papers = sorted(outcome["papers"], key=lambda p: (-p.score, p.arxiv_id))
        return LiteratureResult(papers, "arxiv", "", list(queries))
    return LiteratureResult(load_snapshot(), "snapshot", reason, list(queries))


class SeenPapers:
    """Ids already shown to the model, persisted in `<state_dir>/literature_seen.json` across runs."""

    def __init__(self, state_dir: Path | str | None) -> None:
        self.path = Path(state_dir) / SEEN_FILE if state_dir is not None else None
        self.ids: list[str] = []
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.ids = [str(i) for i in data.get("seen", [])]
            except (OSError, json.JSONDecodeError, AttributeError):
                self.ids = []

    def __contains__(self, arxiv_id: str) -> bool:
        return arxiv_id in self.ids

    def mark(self, arxiv_ids: Iterable[str]) -> None:
        for arxiv_id in arxiv_ids:
            if arxiv_id not in self.ids:
                self.ids.append(arxiv_id)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"seen": self.ids}, indent=1) + "\n", encoding="utf-8")


def select_papers(papers: Sequence[Paper], k: int, seen: SeenPapers | None = None) -> list[Paper]:
    """The k most relevant papers, unseen ones first; seen ones only fill what is left.

    Anchor papers (HRM itself, TRM) are not special-cased: they score high on their own.
    """
    unique: dict[str, Paper] = {}
    for paper in papers:
        unique.setdefault(paper.arxiv_id, paper)
    ranked = sorted(unique.values(), key=lambda p: (-p.score, p.arxiv_id))
    if seen is None:
        return ranked[:k]
    fresh = [p for p in ranked if p.arxiv_id not in seen]
    stale = [p for p in ranked if p.arxiv_id in seen]
    return (fresh + stale)[:k]


def literature_context(
    k: int = 8,
    *,
    state_dir: Path | str | None = None,
    result: LiteratureResult | None = None,
    offline: bool = False,
    client: arxiv.Client | None = None,
    queries: Sequence[str] = DEFAULT_QUERIES,
    mark_seen: bool = True,
    include_snapshot: bool = True,
) -> list[Paper]:
    """The papers to hand to the prompt (with score and concepts); records them as seen.

    With `include_snapshot`, live arXiv results are pooled with the shipped snapshot so the core
    papers (HRM, TRM, ACT...) stay citable even when the live queries miss them.
    """
    if result is None:
        result = search_literature(queries, client=client, offline=offline)
    pool = list(result.papers)
    if include_snapshot and result.source != "snapshot":
        pool += load_snapshot()
    seen = SeenPapers(state_dir)
    chosen = select_papers(pool, k, seen)
    if mark_seen:
        seen.mark(p.arxiv_id for p in chosen)
    return chosen
