"""The git evolution record: a lineage-only best branch, a separate record branch, one branch and worktree per
candidate, trailers and notes.

Layout in the user's repository (names are fixed here so every part of the engine agrees on them):

* ``evolve/<run-id>/best``  -- the lineage. It starts at the commit that was HEAD when the run was created and
  only moves forward by ``--no-ff`` merges of merged candidates, one per accepted change, whose message carries
  the proposal's title, rationale, citations, the scores and the rule. Its tip is the current best, and
  ``git log --first-parent evolve/<run-id>/best`` is the list of improvements. Nothing else is committed on it.
  (Git cannot hold both ``evolve/<run-id>`` and ``evolve/<run-id>/cand/...`` as branches, since one ref name
  would be a file and a directory at once, hence the ``/best`` suffix.)
* ``evolve/<run-id>/record`` -- the bookkeeping, on a branch of its own with no common history with the code:
  stored proposals, diffs, results and refused LLM replies (see :mod:`evolver.record.store`). Every command reads them
  from here, so a clone that fetches ``evolve/<run-id>/*`` reads the whole record. (Runs made before this
  branch existed kept those files on the best branch; reading falls back to it.)
* ``evolve/<run-id>/cand/<proposal-id>`` -- one branch per candidate, one commit on top of its parent (always a
  code commit of the lineage). Rejected branches stay (``history`` lists them) until ``evolve.py prune``.
* ``refs/notes/evolve`` -- JSON notes: the verdict, scores and metrics of each candidate tip and merge commit.
* Worktrees live under ``<git-common-dir>/hrm-evolve/worktrees/<run-id>/`` unless ``work_dir`` is given:
  ``run`` (the best branch), ``record`` (the record branch) and ``cand/<proposal-id>`` (candidates).

The user's current branch, index and work tree are never touched: every checkout, commit and merge happens
in a worktree owned by the record. Writes go through the ``git`` binary (one short process per call);
commits are read with GitPython inside ``with`` blocks so no ``git cat-file`` process outlives a call.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import git

from evolver.verdicts import MERGED

NOTES_REF = "refs/notes/evolve"
BRANCH_PREFIX = "evolve"
RUN_BRANCH_LEAF = "best"
RECORD_BRANCH_LEAF = "record"
FALLBACK_NAME = "hrm-evolve"
FALLBACK_EMAIL = "hrm-evolve@localhost"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_TRAILER_KEY_RE = re.compile(r"[^A-Za-z0-9-]+")


class RecordError(RuntimeError):
    """A git operation of the record failed; the message carries git's own error text."""


class RunNotFound(RecordError):
    """No run branch exists for the requested run id."""


class CandidateExists(RecordError):
    """A candidate branch for this proposal id already exists in the run."""


class MergeConflict(RecordError):
    """The candidate does not merge cleanly into the run branch (the merge was aborted)."""


def new_run_id(now: datetime | None = None) -> str:
    """A fresh run id such as ``20261123-112233-abcd`` (sortable by creation time)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def check_name(kind: str, value: str) -> str:
    """Validate a run id or proposal id for use inside branch names and paths; returns it unchanged."""
    if not _NAME_RE.match(value) or ".." in value or value.endswith((".lock", ".")):
        raise ValueError(
            f"invalid {kind} {value!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def run_branch_name(run_id: str) -> str:
    return f"{BRANCH_PREFIX}/{run_id}/{RUN_BRANCH_LEAF}"


def record_branch_name(run_id: str) -> str:
    return f"{BRANCH_PREFIX}/{check_name('run id', run_id)}/{RECORD_BRANCH_LEAF}"


def candidate_branch_name(run_id: str, proposal_id: str) -> str:
    return f"{BRANCH_PREFIX}/{run_id}/cand/{proposal_id}"


def trailer_key(name: str) -> str:
    """A git trailer token from an arbitrary key: ``exact_accuracy`` -> ``Exact-Accuracy``.

    Git stops recognising a trailer block when a token holds characters such as ``_``, so keys are
    normalised to letters, digits and hyphens.
    """
    parts = [p for p in _TRAILER_KEY_RE.split(name) if p]
    if not parts:
        raise ValueError(f"cannot make a trailer key from {name!r}")
    return "-".join(p[:1].upper() + p[1:] for p in parts)


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def format_message(subject: str, body: str, trailers: Sequence[tuple[str, str]]) -> str:
    """A commit message: subject, optional body, then one trailer block parsed by ``git interpret-trailers``."""
    parts = [_one_line(subject) or "candidate"]
    if body.strip():
        parts.append(body.strip())
    lines = [f"{key}: {_one_line(val)}" for key, val in trailers if _one_line(val)]
    if lines:
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _field(obj: object, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def proposal_trailers(proposal: object, parent: str) -> list[tuple[str, str]]:
    """Trailers of a candidate commit from a proposal (``proposals.schema.Proposal`` or alike)."""
    prov = _field(proposal, "provenance")
    cites = [str(_field(c, "arxiv_id")) for c in (_field(proposal, "citations") or []) if _field(c, "arxiv_id")]
    trailers = [
        ("Proposal-Id", str(_field(proposal, "id"))),
        ("Parent", parent),
        ("Provider", str(_field(prov, "provider") or "")),
        ("Model", str(_field(prov, "model") or "")),
        ("Prompt-Hash", str(_field(prov, "prompt_hash") or "")),
        ("Citations", ", ".join(cites)),
    ]
    return trailers


@dataclass(frozen=True)
class Candidate:
    """A candidate of a run: its branch, its worktree and the commit it was branched from."""

    run_id: str
    proposal_id: str
    branch: str
    path: Path
    parent: str


@dataclass(frozen=True)
class CandidateInfo:
    """What git knows about one candidate branch (for ``history`` and resume)."""

    proposal_id: str
    branch: str
    tip: str
    parent: str
    committed: bool
    merged: bool
    trailers: dict[str, list[str]] = field(default_factory=dict)
    note: dict[str, Any] | None = None


def _git(args: Sequence[str], cwd: Path, *, stdin: str | None = None, env: Mapping[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, input=stdin, text=True, capture_output=True,
        env=dict(env) if env is not None else None,
    )
    if check and proc.returncode != 0:
        raise RecordError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def repo_toplevel(path: str | os.PathLike[str]) -> Path:
    """The top-level directory of the repository holding ``path``."""
    proc = _git(["rev-parse", "--show-toplevel"], Path(path), check=False)
    if proc.returncode != 0:
        raise RecordError(f"{path} is not inside a git repository: {proc.stderr.strip()}")
    return Path(proc.stdout.strip())


def list_runs(repo_path: str | os.PathLike[str]) -> list[str]:
    """Run ids with a run branch in the repository, oldest first (run ids sort by creation time)."""
    root = repo_toplevel(repo_path)
    out = _git(["for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH_PREFIX}/"], root).stdout
    suffix = f"/{RUN_BRANCH_LEAF}"
    runs = []
    for ref in out.split():
        rest = ref.removeprefix(f"refs/heads/{BRANCH_PREFIX}/")
        if rest.endswith(suffix) and "/" not in rest.removesuffix(suffix):
            runs.append(rest.removesuffix(suffix))
    return sorted(runs)


def open_run(repo_path: str | os.PathLike[str], run_id: str | None = None) -> EvolutionRecord:
    """The record of ``run_id``, or of the latest run; raises :class:`RunNotFound` when there is none."""
    root = repo_toplevel(repo_path)
    if run_id is None:
        runs = list_runs(root)
        if not runs:
            raise RunNotFound(f"no evolution runs in {root} (no evolve/<run-id>/best branch)")
        run_id = runs[-1]
    return EvolutionRecord(root, run_id, create=False)


def fetch_runs(repo_path: str | os.PathLike[str], remote: str = "origin") -> None:
    """Fetch every run branch and the evolve notes from ``remote`` (a plain clone fetches neither)."""
    root = repo_toplevel(repo_path)
    _git(["fetch", "--quiet", remote,
          f"+refs/heads/{BRANCH_PREFIX}/*:refs/heads/{BRANCH_PREFIX}/*",
          f"+{NOTES_REF}:{NOTES_REF}"], root)


def push_runs(repo_path: str | os.PathLike[str], remote: str = "origin", run_id: str | None = None) -> None:
    """Push run branches (all runs, or one) and the evolve notes to ``remote``."""
    root = repo_toplevel(repo_path)
    pattern = f"{run_id}/*" if run_id else "*"
    _git(["push", "--quiet", remote,
          f"+refs/heads/{BRANCH_PREFIX}/{pattern}:refs/heads/{BRANCH_PREFIX}/{pattern}",
          f"{NOTES_REF}:{NOTES_REF}"], root)


class EvolutionRecord:
    """The git record of one evolution run in the repository at ``repo_path``.

    ``EvolutionRecord(repo, run_id=None)`` starts a new run from HEAD (or ``base``); with a run id it resumes
    that run when its branch exists and creates it otherwise (``create=False`` raises :class:`RunNotFound`
    instead). Use it as a context manager or call :meth:`close`.
    """

    def __init__(self, repo_path: str | os.PathLike[str], run_id: str | None = None, *,
                 work_dir: str | os.PathLike[str] | None = None, base: str = "HEAD",
                 create: bool = True) -> None:
        self.root = repo_toplevel(repo_path)
        common = _git(["rev-parse", "--git-common-dir"], self.root).stdout.strip()
        self.git_dir = (self.root / common).resolve()
        self.run_id = check_name("run id", run_id) if run_id else new_run_id()
        self.run_branch = run_branch_name(self.run_id)
        self.record_branch = record_branch_name(self.run_id)
        base_dir = Path(work_dir) if work_dir else self.git_dir / "hrm-evolve" / "worktrees"
        self.work_dir = (base_dir / self.run_id).resolve()
        self._env = self._identity_env()
        self._closed = False
        if self._ref_exists(f"refs/heads/{self.run_branch}"):
            self.resumed = True
        elif create:
            self.resumed = False
            sha = self._rev(base)
            _git(["branch", self.run_branch, sha], self.root)
        else:
            raise RunNotFound(f"no run {self.run_id!r} in {self.root} (branch {self.run_branch} is missing)")

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Release resources. The record opens GitPython repos only inside calls, so this only marks it closed."""
        self._closed = True

    def __enter__(self) -> EvolutionRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- helpers
    def _identity_env(self) -> dict[str, str]:
        env = dict(os.environ)
        name = _git(["config", "user.name"], self.root, check=False).stdout.strip()
        email = _git(["config", "user.email"], self.root, check=False).stdout.strip()
        if not name:
            env.setdefault("GIT_AUTHOR_NAME", FALLBACK_NAME)
            env.setdefault("GIT_COMMITTER_NAME", FALLBACK_NAME)
        if not email:
            env.setdefault("GIT_AUTHOR_EMAIL", FALLBACK_EMAIL)
            env.setdefault("GIT_COMMITTER_EMAIL", FALLBACK_EMAIL)
        return env

    def _ref_exists(self, ref: str) -> bool:
        return _git(["show-ref", "--verify", "--quiet", ref], self.root, check=False).returncode == 0

    def _rev(self, rev: str) -> str:
        proc = _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], self.root, check=False)
        if proc.returncode != 0:
            raise RecordError(f"unknown revision {rev!r} in {self.root}")
        return proc.stdout.strip()

    def _is_ancestor(self, older: str, newer: str) -> bool:
        return _git(["merge-base", "--is-ancestor", older, newer], self.root, check=False).returncode == 0

    def best_commit(self) -> str:
        """The sha of the run branch tip (the current best)."""
        return self._rev(f"refs/heads/{self.run_branch}")

    def candidate_branch(self, proposal_id: str) -> str:
        return candidate_branch_name(self.run_id, check_name("proposal id", proposal_id))

    def candidate_path(self, proposal_id: str) -> Path:
        return self.work_dir / "cand" / check_name("proposal id", proposal_id)

    @property
    def run_path(self) -> Path:
        """Where the run branch's worktree lives (created on demand by :meth:`run_worktree`)."""
        return self.work_dir / "run"

    @property
    def record_path(self) -> Path:
        """Where the record branch's worktree lives (created on demand by :meth:`record_worktree`)."""
        return self.work_dir / RECORD_BRANCH_LEAF

    def _registered_worktrees(self) -> dict[Path, str]:
        """Worktree path -> checked-out branch ref (or '' when detached)."""
        out = _git(["worktree", "list", "--porcelain"], self.root).stdout
        result: dict[Path, str] = {}
        current: Path | None = None
        for line in out.splitlines():
            if line.startswith("worktree "):
                current = Path(line[len("worktree "):]).resolve()
                result[current] = ""
            elif line.startswith("branch ") and current is not None:
                result[current] = line[len("branch "):]
        return result

    def _add_worktree(self, path: Path, args: Sequence[str]) -> None:
        if path.exists() and any(path.iterdir()):
            raise RecordError(f"worktree directory {path} already exists and is not empty")
        path.parent.mkdir(parents=True, exist_ok=True)
        proc = _git(["worktree", "add", "--quiet", *args], self.root, check=False)
        if proc.returncode != 0:  # a stale registration (directory deleted by hand): prune once and retry
            _git(["worktree", "prune"], self.root)
            _git(["worktree", "add", "--quiet", *args], self.root)

    # ----------------------------------------------------------------- candidates
    def create_candidate(self, proposal_id: str, parent: str | None = None) -> Candidate:
        """Branch ``evolve/<run>/cand/<proposal-id>`` from ``parent`` (default: the current best) and check it
        out in a new worktree."""
        branch = self.candidate_branch(proposal_id)
        if self._ref_exists(f"refs/heads/{branch}"):
            raise CandidateExists(f"candidate {proposal_id!r} already exists in run {self.run_id} ({branch})")
        parent_sha = self._rev(parent) if parent else self.best_commit()
        path = self.candidate_path(proposal_id)
        self._add_worktree(path, ["-b", branch, str(path), parent_sha])
        return Candidate(self.run_id, proposal_id, branch, path, parent_sha)

    def open_candidate(self, proposal_id: str) -> Candidate:
        """An existing candidate (resume): re-creates its worktree when it was removed."""
        branch = self.candidate_branch(proposal_id)
        if not self._ref_exists(f"refs/heads/{branch}"):
            raise RecordError(f"no candidate {proposal_id!r} in run {self.run_id}")
        path = self.candidate_path(proposal_id)
        registered = self._registered_worktrees().get(path.resolve()) == f"refs/heads/{branch}"
        if not (registered and (path / ".git").exists()):
            self._add_worktree(path, [str(path), branch])
        info = self.candidate_info(proposal_id)
        return Candidate(self.run_id, proposal_id, branch, path, info.parent)

    def commit_candidate(self, candidate: Candidate, proposal: object, message: str | None = None) -> str:
        """Commit every change in the candidate's worktree as one commit with the proposal's trailers.

        ``message`` is the subject (and optional body, after a blank line); the default is the proposal title.
        Hooks are skipped (``--no-verify``): the engine validates candidates itself. Returns the commit sha.
        """
        text = message if message is not None else str(_field(proposal, "title") or _field(proposal, "id"))
        subject, _, body = text.strip().partition("\n")
        msg = format_message(subject, body, proposal_trailers(proposal, candidate.parent))
        _git(["add", "--all"], candidate.path)
        if _git(["diff", "--cached", "--quiet"], candidate.path, check=False).returncode == 0:
            raise RecordError(f"candidate {candidate.proposal_id!r} has no changes to commit")
        _git(["commit", "--quiet", "--no-verify", "--cleanup=whitespace", "-F", "-"], candidate.path,
             stdin=msg, env=self._env)
        return _git(["rev-parse", "HEAD"], candidate.path).stdout.strip()

    def rebase_candidate(self, candidate: Candidate, onto: str | None = None) -> Candidate:
        """Replay the candidate's commit on ``onto`` (default: the current best), in its worktree: for a
        candidate selected against a parent that is no longer the best. The rewritten commit's ``Parent``
        trailer names the new parent and a ``Rebased-From`` trailer the commit it was. Raises
        :class:`MergeConflict` (after ``rebase --abort``, the branch as it was) when the change does not
        apply there."""
        onto_sha = self._rev(onto) if onto else self.best_commit()
        if onto_sha == candidate.parent:
            return candidate
        old_tip = self._rev(candidate.branch)
        proc = _git(["rebase", "--quiet", "--no-verify", "--onto", onto_sha, candidate.parent], candidate.path,
                    env=self._env, check=False)
        if proc.returncode != 0:
            _git(["rebase", "--abort"], candidate.path, check=False)
            raise MergeConflict(f"candidate {candidate.proposal_id} does not rebase onto {onto_sha[:10]}: "
                                f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
        message = _git(["log", "-1", "--format=%B"], candidate.path).stdout.rstrip("\n")
        lines = [f"Parent: {onto_sha}" if line == f"Parent: {candidate.parent}" else line
                 for line in message.split("\n")]
        lines.append(f"Rebased-From: {old_tip}")
        _git(["commit", "--quiet", "--amend", "--no-verify", "--cleanup=whitespace", "-F", "-"], candidate.path,
             stdin="\n".join(lines) + "\n", env=self._env)
        return Candidate(candidate.run_id, candidate.proposal_id, candidate.branch, candidate.path, onto_sha)

    def diff(self, candidate: Candidate | str) -> str:
        """The unified diff of a candidate (a :class:`Candidate` or a proposal id) against its parent."""
        if isinstance(candidate, Candidate):
            parent, tip = candidate.parent, candidate.branch
        else:
            info = self.candidate_info(candidate)
            parent, tip = info.parent, info.tip
        return _git(["diff", "--no-color", "--no-ext-diff", parent, tip, "--"], self.root).stdout

    def remove_candidate(self, candidate: Candidate) -> None:
        """Remove the candidate's worktree (the branch stays so the candidate remains in the history)."""
        path = candidate.path.resolve()
        proc = _git(["worktree", "remove", "--force", str(path)], self.root, check=False)
        if proc.returncode != 0:
            _git(["worktree", "prune"], self.root)
            if path in self._registered_worktrees():
                raise RecordError(f"cannot remove worktree {path}: {proc.stderr.strip()}")

    def discard_candidate(self, candidate: Candidate) -> None:
        """Remove the worktree AND the branch of a candidate that never got its commit (a failed apply)."""
        self.remove_candidate(candidate)
        if self._ref_exists(f"refs/heads/{candidate.branch}"):
            if self._rev(candidate.branch) != candidate.parent:
                raise RecordError(f"candidate {candidate.proposal_id!r} has commits; use remove_candidate/prune")
            _git(["branch", "-D", candidate.branch], self.root)

    # ----------------------------------------------------------------- notes and merges
    def read_note(self, rev: str) -> dict[str, Any] | None:
        """The JSON note of a commit in ``refs/notes/evolve``, or None."""
        proc = _git(["notes", f"--ref={NOTES_REF}", "show", rev], self.root, check=False)
        if proc.returncode != 0:
            return None
        try:
            data = json.loads(proc.stdout)
        except json.JSONDecodeError:
            return {"raw": proc.stdout}
        return data if isinstance(data, dict) else {"value": data}

    def write_note(self, rev: str, data: Mapping[str, Any]) -> None:
        """Attach (or replace) the JSON note of a commit."""
        _git(["notes", f"--ref={NOTES_REF}", "add", "--force", "--file=-", self._rev(rev)], self.root,
             stdin=json.dumps(dict(data), sort_keys=True, indent=1) + "\n", env=self._env)

    def record_result(self, candidate: Candidate | str, verdict: str, scores: Mapping[str, float] | None = None,
                      metrics: Mapping[str, Any] | None = None, reason: str | None = None) -> None:
        """Note a verdict (``rejected``, ``failed:<stage>``, ...) on a candidate's tip commit.

        ``scores`` is displayed by ``history``: its ``score`` and ``delta`` keys fill those columns.
        """
        branch = candidate.branch if isinstance(candidate, Candidate) else self.candidate_branch(candidate)
        note: dict[str, Any] = {"run_id": self.run_id, "verdict": verdict, "scores": dict(scores or {}),
                                "metrics": dict(metrics or {})}
        if reason:
            note["reason"] = reason
        self.write_note(branch, note)

    def _branch_worktree(self, path: Path, branch: str, what: str) -> Path:
        """``branch`` checked out in its own worktree at ``path`` (created when missing)."""
        path = path.resolve()
        wts = self._registered_worktrees()
        ref = f"refs/heads/{branch}"
        if wts.get(path) == ref and (path / ".git").exists():
            return path
        elsewhere = [p for p, b in wts.items() if b == ref and p != path]
        if elsewhere:
            raise RecordError(f"{what} {branch} is checked out at {elsewhere[0]}; "
                              "the record needs it in its own worktree")
        self._add_worktree(path, [str(path), branch])
        return path

    def run_worktree(self) -> Path:
        """The worktree of the run branch (created on first use); never the user's work tree."""
        return self._branch_worktree(self.run_path, self.run_branch, "run branch")

    def _ensure_record_branch(self) -> None:
        """Create the record branch as a root commit of its own (no common history with the code)."""
        ref = f"refs/heads/{self.record_branch}"
        if self._ref_exists(ref):
            return
        tree = _git(["mktree"], self.root, stdin="").stdout.strip()
        msg = (f"Record of evolution run {self.run_id}\n\nProposals, diffs, results and refused replies of the run; "
               f"the evolved code and its merges are on {self.run_branch}.\n")
        sha = _git(["commit-tree", tree, "-F", "-"], self.root, stdin=msg, env=self._env).stdout.strip()
        _git(["update-ref", ref, sha, ""], self.root)

    def has_record_branch(self) -> bool:
        return self._ref_exists(f"refs/heads/{self.record_branch}")

    def record_worktree(self) -> Path:
        """The worktree of the record branch (created on first use, with the branch); never the user's."""
        self._ensure_record_branch()
        return self._branch_worktree(self.record_path, self.record_branch, "record branch")

    def commit_record_files(self, paths: Iterable[str], message: str) -> str | None:
        """Commit files already written in the record worktree (paths relative to it); None when unchanged."""
        wt = self.record_worktree()
        rels = [str(p) for p in paths]
        _git(["add", "--", *rels], wt)
        if _git(["diff", "--cached", "--quiet"], wt, check=False).returncode == 0:
            return None
        _git(["commit", "--quiet", "--no-verify", "--cleanup=whitespace", "-F", "-", "--", *rels], wt,
             stdin=message.strip() + "\n", env=self._env)
        return _git(["rev-parse", "HEAD"], wt).stdout.strip()

    def merge_candidate(self, candidate: Candidate | str, scores: Mapping[str, float],
                        metrics: Mapping[str, Any] | None = None, message: str | None = None,
                        trailers: Sequence[tuple[str, str]] = ()) -> str:
        """Merge a candidate into the best branch with ``--no-ff`` (in the run worktree).

        ``message`` is the subject and body (the caller writes the proposal's title, rationale and the rule);
        the trailers are ``Proposal-Id``, ``Candidate``, ``Verdict: merged``, one per score (``delta`` ->
        ``Delta``) and then ``trailers``. Its note and the candidate tip's note hold the scores and metrics as
        JSON. Returns the merge sha. Raises :class:`MergeConflict` (after ``merge --abort``) when the candidate
        does not merge cleanly.
        """
        pid = candidate.proposal_id if isinstance(candidate, Candidate) else candidate
        branch = self.candidate_branch(pid)
        tip = self._rev(branch)
        wt = self.run_worktree()
        lines = [("Proposal-Id", pid), ("Candidate", tip), ("Verdict", MERGED)]
        lines += [(trailer_key(k), f"{float(v):.6g}") for k, v in scores.items()]
        lines += [(trailer_key(k), v) for k, v in trailers]
        text = message or f"Merge candidate {pid} into {self.run_branch}"
        subject, _, body = text.strip().partition("\n")
        msg = format_message(subject, body, lines)
        proc = _git(["merge", "--no-ff", "--no-verify", "--cleanup=whitespace", "-m", msg, branch], wt,
                    env=self._env, check=False)
        if proc.returncode != 0:
            _git(["merge", "--abort"], wt, check=False)
            raise MergeConflict(f"candidate {pid} does not merge into {self.run_branch}: "
                                f"{(proc.stdout + proc.stderr).strip()}")
        merge_sha = _git(["rev-parse", "HEAD"], wt).stdout.strip()
        note = {"run_id": self.run_id, "verdict": MERGED, "scores": dict(scores),
                "metrics": dict(metrics or {}), "merge": merge_sha}
        self.write_note(tip, note)
        self.write_note(merge_sha, {**note, "candidate": tip, "proposal_id": pid})
        return merge_sha

    # ----------------------------------------------------------------- reading
    def candidate_ids(self) -> list[str]:
        """Proposal ids of every candidate branch of the run, in creation order."""
        prefix = f"refs/heads/{BRANCH_PREFIX}/{self.run_id}/cand/"
        out = _git(["for-each-ref", "--sort=creatordate", "--format=%(refname)", prefix], self.root).stdout
        return [ref.removeprefix(prefix) for ref in out.split()]

    def candidate_info(self, proposal_id: str) -> CandidateInfo:
        branch = self.candidate_branch(proposal_id)
        tip = self._rev(branch)
        merged = self._is_ancestor(tip, self.run_branch)
        with git.Repo(self.root) as repo:
            commit = repo.commit(tip)
            trailers = dict(commit.trailers_dict)
            parents = [p.hexsha for p in commit.parents]
        pid_trailer = trailers.get("Proposal-Id", [])
        committed = proposal_id in pid_trailer
        parent = (trailers.get("Parent") or parents or [tip])[0] if committed else tip
        return CandidateInfo(proposal_id, branch, tip, parent, committed, merged and committed, trailers,
                             self.read_note(tip) if committed else None)

    def candidates(self) -> list[CandidateInfo]:
        return [self.candidate_info(pid) for pid in self.candidate_ids()]

    def show_record_file(self, path: str) -> str | None:
        """A stored file's text from the record branch (or, for runs made before it existed, the best branch)."""
        for rev in (self.record_branch, self.run_branch):
            if self._ref_exists(f"refs/heads/{rev}"):
                text = self.show_file(path, rev)
                if text is not None:
                    return text
        return None

    def list_record_dir(self, path: str) -> list[str]:
        """Entry names of a stored directory on the record branch (and, for older runs, the best branch)."""
        names: set[str] = set()
        for rev in (self.record_branch, self.run_branch):
            if self._ref_exists(f"refs/heads/{rev}"):
                names.update(self.list_dir(path, rev))
        return sorted(names)

    def show_file(self, path: str, rev: str | None = None) -> str | None:
        """A file's text at ``rev`` (default: the run branch tip), read from git objects alone; None if absent."""
        proc = _git(["show", f"{rev or self.run_branch}:{path}"], self.root, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def list_dir(self, path: str, rev: str | None = None) -> list[str]:
        """Entry names of a directory at ``rev`` (default: the run branch tip); empty when absent."""
        proc = _git(["ls-tree", "--name-only", f"{rev or self.run_branch}:{path}"], self.root, check=False)
        return proc.stdout.splitlines() if proc.returncode == 0 else []

    def best_labels(self) -> dict[str, str]:
        """Commit sha -> the proposal id whose merge made it the best ("base" before any merge), for every
        commit on the run branch's first-parent line."""
        fmt = "%H%x00%(trailers:key=Proposal-Id,valueonly,separator=%x2C)%x00%P%x1e"
        out = _git(["log", "--first-parent", "--reverse", f"--format={fmt}", self.run_branch], self.root).stdout
        labels: dict[str, str] = {}
        current = "base"
        for record in out.split("\x1e"):
            parts = record.strip().split("\x00")
            if len(parts) < 3:
                continue
            sha, pid, parents = parts[0], parts[1].strip(), parts[2].split()
            if len(parents) > 1 and pid:
                current = pid
            labels[sha] = current
        return labels

    def prune(self, delete_rejected: bool = False) -> list[str]:
        """Remove every candidate worktree of the run; with ``delete_rejected`` also delete the branches of
        candidates that were not merged. Returns the deleted branch names."""
        wts = self._registered_worktrees()
        cand_root = (self.work_dir / "cand").resolve()
        for path in wts:
            if path.parent == cand_root:
                _git(["worktree", "remove", "--force", str(path)], self.root)
        _git(["worktree", "prune"], self.root)
        deleted: list[str] = []
        if delete_rejected:
            for pid in self.candidate_ids():
                branch = self.candidate_branch(pid)
                if not self._is_ancestor(branch, self.run_branch) or not self.candidate_info(pid).committed:
                    _git(["branch", "-D", branch], self.root)
                    deleted.append(branch)
        return deleted

    def remove_run_worktree(self) -> None:
        """Remove the worktrees of the best and the record branch (the branches stay; both are recreated on
        demand)."""
        wts = self._registered_worktrees()
        for path in (self.run_path.resolve(), self.record_path.resolve()):
            if path in wts:
                _git(["worktree", "remove", "--force", str(path)], self.root)
        _git(["worktree", "prune"], self.root)

    def has_merges(self) -> bool:
        """Whether any candidate was merged into the best branch."""
        return any(label != "base" for label in self.best_labels().values())

    def delete_run(self) -> list[str]:
        """Delete every worktree and branch of the run (best, record, candidates). Notes stay (they are keyed by
        commit and harmless). Returns the deleted branch names."""
        self.prune()
        self.remove_run_worktree()
        out = _git(["for-each-ref", "--format=%(refname:short)", f"refs/heads/{BRANCH_PREFIX}/{self.run_id}/"],
                   self.root).stdout.split()
        for branch in out:
            _git(["branch", "-D", branch], self.root)
        return out

