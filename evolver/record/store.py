"""Stored proposals of a run: ``proposals/<run-id>/<proposal-id>/{proposal.json, diff.patch, result.json}``
and refused LLM replies ``replies/<run-id>/<cycle-id>.json``, all on the run's record branch.

Where the files live (decided here): they are written into the record branch's own worktree (see
:meth:`evolver.record.git_record.EvolutionRecord.record_worktree`; never the user's work tree, never the best branch,
which holds only the code and its merges) with an atomic write (temporary file in the same folder, fsync,
rename) and committed on ``evolve/<run-id>/record`` at once. So a crash leaves either the old or the new file,
never half of one, and the record travels with the branch: reading uses git objects alone
(``git show evolve/<run>/record:proposals/...``), which works from a clone on another machine after
:func:`evolver.record.git_record.fetch_runs`. Files written with ``commit=False`` are read from the record worktree until
a later write commits them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evolver.candidate_result import CandidateResult
from evolver.record.git_record import EvolutionRecord, check_name

PROPOSAL_FILE = "proposal.json"
DIFF_FILE = "diff.patch"
RESULT_FILE = "result.json"
STORE_ROOT = "proposals"
REPLIES_ROOT = "replies"
RUNS_ROOT = "runs"

FileContent = str | bytes | Mapping[str, Any]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _encode(content: FileContent) -> bytes:
    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode("utf-8")
    return (json.dumps(dict(content), indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


class ProposalStore:
    """Read and write the stored files of one run's proposals through its :class:`EvolutionRecord`."""

    def __init__(self, record: EvolutionRecord) -> None:
        self.record = record
        self.run_id = record.run_id

    def rel_dir(self, proposal_id: str) -> str:
        """The proposal's folder, relative to the repository root."""
        return f"{STORE_ROOT}/{self.run_id}/{check_name('proposal id', proposal_id)}"

    # ----------------------------------------------------------------- writing
    def write(self, proposal_id: str, files: Mapping[str, FileContent], message: str | None = None,
              commit: bool = True) -> str | None:
        """Write files (name -> text, bytes or a JSON-able mapping) into the proposal's folder of the run
        record worktree and commit them on the record branch. Returns the commit sha (None when nothing changed
        or ``commit`` is False)."""
        wt = self.record.record_worktree()
        rels = []
        for name, content in files.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"stored file names are plain names, got {name!r}")
            rel = f"{self.rel_dir(proposal_id)}/{name}"
            atomic_write(wt / rel, _encode(content))
            rels.append(rel)
        if not commit:
            return None
        names = ", ".join(files)
        return self.record.commit_record_files(
            rels, message or f"Store {names} of proposal {proposal_id} (run {self.run_id})")

    def save_proposal(self, proposal: Any, diff: str | None = None) -> str | None:
        """Store ``proposal.json`` (and ``diff.patch`` when given) for a proposal object or mapping."""
        if hasattr(proposal, "model_dump_json"):
            text = proposal.model_dump_json(indent=2) + "\n"
            pid = str(proposal.id)
        else:
            data = dict(proposal)
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
            pid = str(data["id"])
        files: dict[str, FileContent] = {PROPOSAL_FILE: text}
        if diff is not None:
            files[DIFF_FILE] = diff
        return self.write(pid, files)

    def save_diff(self, proposal_id: str, diff: str) -> str | None:
        return self.write(proposal_id, {DIFF_FILE: diff})

    def save_result(self, proposal_id: str, result: CandidateResult | Mapping[str, Any]) -> str | None:
        """Store result.json, validated as a `CandidateResult` first (a malformed result is refused whole)."""
        checked = result if isinstance(result, CandidateResult) else CandidateResult.of(
            result, where=f"the result of {proposal_id}")
        return self.write(proposal_id, {RESULT_FILE: checked.to_json()})

    # ----------------------------------------------------------------- reading
    def read_text(self, proposal_id: str, name: str) -> str | None:
        """A stored file's text from the record branch; falls back to an uncommitted file in its worktree."""
        rel = f"{self.rel_dir(proposal_id)}/{name}"
        text = self.record.show_record_file(rel)
        if text is not None:
            return text
        local = self.record.record_path / rel
        return local.read_text(encoding="utf-8") if local.is_file() else None

    def read_json(self, proposal_id: str, name: str) -> dict[str, Any] | None:
        text = self.read_text(proposal_id, name)
        if text is None:
            return None
        data = json.loads(text)
        return data if isinstance(data, dict) else {"value": data}

    def proposal(self, proposal_id: str) -> dict[str, Any] | None:
        return self.read_json(proposal_id, PROPOSAL_FILE)

    def diff(self, proposal_id: str) -> str | None:
        return self.read_text(proposal_id, DIFF_FILE)

    def result(self, proposal_id: str) -> dict[str, Any] | None:
        return self.read_json(proposal_id, RESULT_FILE)

    def candidate_result(self, proposal_id: str) -> CandidateResult | None:
        """The stored result.json as a `CandidateResult` (None when there is none; ValueError when it is not
        one)."""
        data = self.result(proposal_id)
        return None if data is None else CandidateResult.of(data, where=f"{self.rel_dir(proposal_id)}/{RESULT_FILE}")

    def files(self, proposal_id: str) -> list[str]:
        return self.record.list_record_dir(self.rel_dir(proposal_id))

    def ids(self) -> list[str]:
        """Proposal ids stored in the record, sorted."""
        return self.record.list_record_dir(f"{STORE_ROOT}/{self.run_id}")

    # ----------------------------------------------------------------- run-level files
    def save_run_file(self, name: str, content: FileContent, message: str | None = None) -> str | None:
        """Store a run-level file (``runs/<run-id>/<name>``, e.g. the task ladder's state) and commit it."""
        rel = f"{RUNS_ROOT}/{self.run_id}/{check_name('run file', name)}"
        atomic_write(self.record.record_worktree() / rel, _encode(content))
        return self.record.commit_record_files([rel], message or f"Store {name} (run {self.run_id})")

    def run_file(self, name: str) -> dict[str, Any] | None:
        """A stored run-level JSON file, or None."""
        text = self.record.show_record_file(f"{RUNS_ROOT}/{self.run_id}/{check_name('run file', name)}")
        if text is None:
            return None
        data = json.loads(text)
        return data if isinstance(data, dict) else None

    # ----------------------------------------------------------------- refused replies
    def save_refused_reply(self, entry: Mapping[str, Any]) -> str | None:
        """Store an LLM reply that never became a proposal (``entry["id"]``, e.g. ``cycle-3``: its attempts' raw
        text and the reasons each was refused) and commit it on the record branch."""
        stem = check_name("reply id", str(entry["id"]))
        taken = set(self.record.list_record_dir(f"{REPLIES_ROOT}/{self.run_id}"))
        name, k = f"{stem}.json", 2
        while name in taken:  # a resumed run can number a cycle again: never overwrite a stored reply
            name, k = f"{stem}-{k}.json", k + 1
        rel = f"{REPLIES_ROOT}/{self.run_id}/{name}"
        atomic_write(self.record.record_worktree() / rel, _encode(entry))
        return self.record.commit_record_files([rel], f"Store refused reply {entry['id']} (run {self.run_id})")

    def refused_replies(self) -> list[dict[str, Any]]:
        """Every stored refused reply of the run, in cycle order."""
        out: list[tuple[tuple[int, str, int], dict[str, Any]]] = []
        for name in self.record.list_record_dir(f"{REPLIES_ROOT}/{self.run_id}"):
            text = self.record.show_record_file(f"{REPLIES_ROOT}/{self.run_id}/{name}")
            if text is None:
                continue
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                stem = name.removesuffix(".json")
                again = stem.removeprefix(f"{data.get('id')}-")  # "2" for the second reply stored under one id
                order = int(again) if again != stem and again.isdigit() else 1
                out.append(((int(data.get("cycle") or 0), str(data.get("id")), order), data))
        return [data for _, data in sorted(out, key=lambda item: item[0])]
