"""Which repository files a proposal may edit.

`PathPolicy.check(root, path)` turns a repo-relative posix path into an absolute path inside `root`, or raises
`PathRejected` with the reason: absolute paths, `..` escapes, symlinks anywhere along the path, paths outside the
allowed prefixes, and protected paths (the engine, the sandbox, the harness and the trusted task code in `puzzles/`, the tests,
packaging). Every file of `hrm/` may be edited: nothing the verdict depends on lives there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ALLOWED_PREFIXES: tuple[str, ...] = ("hrm/",)
"""Prefixes an edit may touch: only the evolved package."""

PROTECTED_PATHS: tuple[str, ...] = (
    "evolver/",  # the engine itself
    "edits/",  # the edit language, its interpreter and this policy
    "sandbox/",  # isolation backends
    "smoketests/",  # the trusted cascade harness
    "proposals/",  # the schema and stored proposals
    ".git/",
    ".ci/",
    "tests/",
    "evolve.py",
    "pyproject.toml",
    "puzzles/",  # the trusted task code: generators, splits, scoring
)
"""Paths no edit may touch. Entries ending in "/" protect a whole folder, others one exact file.
Matching is case-insensitive so that case-insensitive file systems cannot alias a protected path."""


class PathRejected(ValueError):
    """A path an edit may not touch; `reason` says why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path!r}: {reason}")


def _matches(rel: str, entry: str) -> bool:
    rel_l, entry_l = rel.lower(), entry.lower()
    if entry_l.endswith("/"):
        return rel_l.startswith(entry_l) or rel_l == entry_l.rstrip("/")
    return rel_l == entry_l


@dataclass(frozen=True)
class PathPolicy:
    allowed: tuple[str, ...] = ALLOWED_PREFIXES
    protected: tuple[str, ...] = PROTECTED_PATHS

    def reason(self, root: Path, path: str) -> str | None:
        """Why `path` may not be edited under `root`, or None when it may."""
        if not isinstance(path, str) or not path:
            return "empty path"
        if "\x00" in path:
            return "path contains a NUL byte"
        if "\\" in path:
            return "backslash in path: use a repo-relative posix path"
        pure = PurePosixPath(path)
        if pure.is_absolute() or path.startswith("~"):
            return "absolute path: use a path relative to the repository root"
        parts = path.split("/")
        if ".." in parts:
            return "'..' component escapes the repository"
        if any(part in ("", ".") for part in parts):
            return "not a normalised path (empty or '.' component)"
        for entry in self.protected:
            if _matches(path, entry):
                return (
                    f"protected path (matches {entry!r}): the engine, harness and evaluation are off limits"
                )
        if not any(_matches(path, prefix) for prefix in self.allowed):
            return f"outside the allowed prefixes {list(self.allowed)}"
        root_resolved = Path(root).resolve()
        current = root_resolved
        for part in parts:
            current = current / part
            if current.is_symlink():
                rel = current.relative_to(root_resolved).as_posix()
                return f"symlink along the path ({rel!r}): edits never follow links"
        try:
            (root_resolved / path).resolve().relative_to(root_resolved)
        except ValueError:
            return "resolves outside the repository"
        return None

    def check(self, root: Path, path: str) -> Path:
        """The absolute path of `path` under `root`; raise `PathRejected` when it may not be edited."""
        why = self.reason(root, path)
        if why is not None:
            raise PathRejected(path, why)
        return Path(root).resolve() / path


DEFAULT_POLICY = PathPolicy()
