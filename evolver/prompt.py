"""The prompt handed to a proposal provider: system rules, the repo map, literature and history.

`build_prompt` assembles a `Prompt` (a system and a user message plus the JSON Schema the reply must
follow); `prompt_hash` gives the stable key the provider cache uses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

SYSTEM_RULES = """\
You improve the Hierarchical Reasoning Model (HRM) code base by proposing ONE small, testable change.
Reply with exactly one JSON object that follows the given JSON Schema: no prose, no markdown fences.

How edits work (each edit names a repository-relative `file`):
- replace_function {file, target, code}: `target` is a function or method name, qualified for methods
  (e.g. "HRMInner.forward"); `code` is the complete new definition, decorators included.
- replace_class {file, target, code}: the complete new class definition.
- add_function {file, code, after}: a new top-level function, placed after the symbol `after` (or at the end).
- add_class {file, code, after}: a new top-level class, placed the same way.
- set_value {file, target, value}: change one assignment or dataclass field default, e.g. target
  "ModelConfig.L_cycles" with value "4" (`value` is a Python expression as text).
- add_import {file, module, name, alias}: add `from module import name as alias` (name/alias may be null).
- delete_symbol {file, target}: remove a function, class or assignment.
- search_replace {file, search, replace}: `search` must match exactly one place in the file.
Each task's hyperparameters are set explicitly in hrm/presets.py (e.g. `_cpu_model`, `_cpu_train`): a
ModelConfig/TrainConfig default in hrm/config.py only matters for fields a preset leaves unset, so change
the preset when you mean the task's value. hrm/evaluate.py and hrm/data/ are fixed (the metric and the
held-out split) and cannot be edited; the training budget is set by the harness.
Every target must exist exactly once; code must be valid Python for the current file. Prefer whole-function
replacement over textual search/replace. Keep the change focused: one idea, at most a few edits.
Ground the idea in the literature: cite arXiv ids ONLY from the list you are given.
Do not repeat a change that was already tried; learn from the verdicts in the history."""


class _PaperLike(Protocol):
    arxiv_id: str
    title: str
    summary: str


@dataclass(frozen=True)
class HistoryItem:
    """One earlier proposal and how it fared, shown to the model so it avoids repeats."""

    proposal_id: str
    title: str
    verdict: str  # e.g. "merged", "rejected: smoke failed", "worse than parent"
    score: float | None = None
    catalogue_id: str | None = None

    def line(self) -> str:
        score = "" if self.score is None else f" score={self.score:.4f}"
        return f"- [{self.proposal_id}] {self.title}: {self.verdict}{score}"


@dataclass
class Prompt:
    """Messages and schema for one proposal request, plus context some providers read directly."""

    system: str
    user: str
    schema: dict[str, Any]
    tried: list[str] = field(default_factory=list)  # titles and catalogue ids already tried
    allowed_citations: list[str] = field(default_factory=list)
    seed: int = 0

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


def prompt_hash(prompt: Prompt, model: str = "") -> str:
    """sha256 over model, messages and schema: the same request always gives the same key."""
    payload = json.dumps(
        {"model": model, "messages": prompt.messages, "schema": prompt.schema},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _literature_block(literature: Sequence[_PaperLike]) -> str:
    if not literature:
        return "(no papers available this cycle; cite nothing rather than invent ids)"
    lines = []
    for paper in literature:
        concepts = getattr(paper, "concepts", None)
        tag = f" [{', '.join(concepts)}]" if concepts else ""
        lines.append(f"- arXiv:{paper.arxiv_id} \"{paper.title}\"{tag}: {paper.summary}")
    return "\n".join(lines)


def _history_block(history: Sequence[HistoryItem]) -> str:
    if not history:
        return "(nothing tried yet)"
    return "\n".join(item.line() for item in history)


def build_prompt(
    summary: str,
    literature: Sequence[_PaperLike],
    history: Sequence[HistoryItem],
    schema: dict[str, Any],
    *,
    goal: str = "raise exact_accuracy on the evaluation split within the same training budget",
    seed: int = 0,
    extra_tried: Iterable[str] = (),
) -> Prompt:
    """Assemble the request: repo map, literature to cite, what was tried, and the output contract."""
    user = "\n\n".join(
        [
            f"Goal: {goal}.",
            "## Editable code (map)\n" + summary.strip(),
            "## Papers you may cite (use these arXiv ids in `citations`)\n" + _literature_block(literature),
            "## Already tried (do not repeat failures)\n" + _history_block(history),
            "## Output\nReturn ONE JSON object matching the schema. Fields the schema marks nullable may be null.",
        ]
    )
    tried: list[str] = []
    for item in history:
        tried.append(item.title)
        if item.catalogue_id:
            tried.append(item.catalogue_id)
    tried.extend(extra_tried)
    return Prompt(
        system=SYSTEM_RULES,
        user=user,
        schema=schema,
        tried=tried,
        allowed_citations=[p.arxiv_id for p in literature],
        seed=seed,
    )
