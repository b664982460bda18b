"""`CandidateResult`: what a candidate's `result.json` holds, the contract between the run that writes it and the
commands, reports and requests that read it. Every result is validated through it on the way into the record
and on the way out (`ProposalStore.save_result`, `ProposalStore.candidate_result`); fields added by newer
stages pass through as extras, so an older record still reads.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from evolver.verdicts import MEANING


class CandidateResult(BaseModel):
    """One candidate's result; every field but the verdict may be missing from an older or a partial record."""

    model_config = ConfigDict(extra="allow")

    verdict: str
    proposal_id: str | None = None
    run_id: str | None = None
    cycle: int | None = None
    title: str | None = None
    reason: str | None = None
    failed_stage: str | None = None
    started: str | None = None
    finished: str | None = None
    parent: str | None = None
    candidate_commit: str | None = None
    branch: str | None = None
    merge_commit: str | None = None
    citations: list[str] | None = None
    provider: dict[str, Any] | None = None
    timings: dict[str, float] | None = None
    non_training_share: float | None = None
    stages: list[dict[str, Any]] | None = None
    judgement: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    error_control: dict[str, Any] | None = None
    edit_errors: list[Any] | None = None
    scores: dict[str, Any] | None = None

    @classmethod
    def of(cls, data: Any, *, where: str = "result.json") -> CandidateResult:
        """``data`` validated as a result; a ValueError naming ``where`` and every problem otherwise."""
        try:
            result = cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'result'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{where} is not a candidate result: {problems}") from None
        if result.verdict not in MEANING and result.verdict not in ("running", "pending"):
            raise ValueError(f"{where}: unknown verdict {result.verdict!r} (evolver/verdicts.py lists them)")
        return result

    def to_json(self) -> dict[str, Any]:
        """The result as result.json stores it: the fields it was given, no defaults added."""
        return self.model_dump(mode="json", exclude_unset=True)

    @property
    def mean_gain(self) -> float | None:
        """The comparison's mean paired gain (candidate minus parent), when the candidate was judged."""
        value = (self.comparison or {}).get("mean_gain")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
