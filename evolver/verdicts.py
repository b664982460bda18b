"""The one vocabulary of candidate verdicts, used by the loop, the record (notes, trailers), result.json, the CLI
and the report. A candidate ends with exactly one of these.
"""

from __future__ import annotations

MERGED = "merged"
PENDING_REVIEW = "pending-review"
REJECTED = "rejected"
REJECTED_BY_REVIEWER = "rejected-by-reviewer"
INCONCLUSIVE = "inconclusive"
VOID = "void"
FAILED = "failed"
INVALID = "invalid"
CONFLICT = "conflict"
SCREENED_OUT = "screened-out"
NO_EFFECT = "no-effect"
DUPLICATE = "duplicate"

PASSED = "passed"
"""Not a candidate verdict: the judgement of a candidate that passed selection and confirmation. It then merges
(``merged``, with --auto-apply) or waits for a reviewer (``pending-review``)."""

MEANING: dict[str, str] = {
    MERGED: "beat its parent on selection and on fresh confirmation seeds; merged into the best branch "
            "(by --auto-apply, or approved in review)",
    PENDING_REVIEW: "passed selection and confirmation; waits for `evolve.py review`",
    REJECTED: "not better than its parent by the promotion rule (or clearly worse, or the merge conflicted)",
    REJECTED_BY_REVIEWER: "passed, but a reviewer rejected it",
    INCONCLUSIVE: "no decision within the seed cap",
    VOID: "the comparison could not be judged (the parent failed, or the machine was too unsteady)",
    FAILED: "a gate or a training/eval stage failed (failed:<stage> in notes)",
    INVALID: "the reply or its edits could not become a candidate (schema, edit target, path policy)",
    CONFLICT: "approved in review but no longer merges into the best branch",
    SCREENED_OUT: "ranked below the kept fraction of its batch by the short-budget screen (--screen); not judged",
    NO_EFFECT: "its configuration, parameter count, first training losses and logits equal its parent's: the edit "
               "did not change training; ended after smoke, before any seed pair (evolver/run/no_effect.py)",
    DUPLICATE: "the same hrm/ tree, or the same patch against the same parent, as an earlier candidate of the run; "
               "ended before its gates",
}

STYLE: dict[str, str] = {
    MERGED: "bold green",
    PENDING_REVIEW: "yellow",
    REJECTED: "red",
    REJECTED_BY_REVIEWER: "red",
    INCONCLUSIVE: "yellow",
    VOID: "grey50",
    FAILED: "red",
    INVALID: "magenta",
    CONFLICT: "red",
    SCREENED_OUT: "grey50",
    NO_EFFECT: "grey50",
    DUPLICATE: "grey50",
    "running": "cyan",
    "pending": "yellow",
}


def base(verdict: str) -> str:
    """``failed:train`` -> ``failed``; other verdicts unchanged."""
    return verdict.split(":", 1)[0]


def style(verdict: str) -> str:
    return STYLE.get(base(verdict), "white")
