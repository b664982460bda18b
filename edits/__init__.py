"""The edit engine: the edit language (`edits.language`), its libcst interpreter (`edits.engine`) and the path
policy that says which files an edit may touch (`edits.paths`). It imports nothing from the evolver."""

from edits.engine import AppliedEdit, EditError, PatchResult, apply_edits, plan_edits, unified_diff
from edits.paths import DEFAULT_POLICY, PROTECTED_PATHS, PathPolicy, PathRejected

__all__ = ["DEFAULT_POLICY", "PROTECTED_PATHS", "AppliedEdit", "EditError", "PatchResult", "PathPolicy",
           "PathRejected", "apply_edits", "plan_edits", "unified_diff"]
