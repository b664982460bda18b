"""Candidates ended in seconds, before any seed pair: edits without effect, and duplicates.

**no-effect.** The candidate's smoke gate also records its fingerprint in the sandbox, in the same process
(smoketests/fingerprint.py; `python -m smoketests smoke --fingerprint`): its resolved task preset, its
trainer's stored configuration, its parameter count, the first FINGERPRINT_STEPS losses and learning rates of
its own trainer at the run's seed and budget, its learning-rate schedule at fixed later steps, and the logits
of the trained model on a fixed batch. The parent's fingerprint is made the same way from a pinned copy of
the parent's `hrm/` (at the same time as the candidate's gates, on another worker slot) and cached per parent
tree, task, seed, budget, threads, harness and run. The host compares them: when every value is equal within
floating-point noise, the edit did not change training, and the candidate ends `no-effect` before
trainability, with the matched values in its reason (and in `result.json` under `no_effect`, which the next
LLM request's history block shows). Where the candidate changed a config default that the task preset sets
itself, the reason names that preset value.

What the comparison cannot see: a change that acts only after the first steps outside the learning-rate
schedule (a rule that starts at step 500, say), or one that keeps every number but changes speed. The second
is guarded only against large speed-ups: a candidate whose steps took less than SPEED_GUARD of its parent's
time is judged in full. A fingerprint that is missing or malformed, on either side, ends nothing (and a
failing fingerprint never fails smoke). A candidate can forge its fingerprint (it runs in the process that
writes it): a forged match only ends itself, a forged difference only buys the full judgement it had before
this check existed.

**duplicate.** Before its gates, a committed candidate whose `hrm/` tree equals an earlier candidate's of the
same run, or whose normalised patch against the same parent equals one, ends `duplicate`, naming the earlier
candidate and its verdict. Earlier candidates are read from the run's stored results (so a resumed run
knows them) and from the ones still being judged. A `void` earlier candidate does not count (never judged).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evolver.execute.cascade import CascadeResult
from evolver.execute.harness_copy import harness_digest
from evolver.verdicts import DUPLICATE, VOID

PRE_STAGES = ("safety", "smoke")
"""The gates before the no-effect check (smoke records the fingerprint in the same process); trainability runs
only when the candidate is not ended by it."""
FINGERPRINT = "fingerprint"
CARRIER = "smoke"
"""The stage whose metrics carry the fingerprint (a stage of its own, ``fingerprint``, costs one interpreter and
torch start more: about 3 s on an idle 2-core machine, 10 s on a busy one)."""
LOSS_RTOL = 1e-6
LR_RTOL = 1e-9
LOGITS_RTOL = 1e-5
SPEED_GUARD = 0.5
"""A candidate whose median step time is below this share of its parent's is not ended as no-effect: it may
keep the numbers and train more steps in the budget. Step times of a few steps on a shared machine swing by
half (measured: 0.54 s against 0.35 s for the same code), so only a large speed-up counts."""

COMPARED: tuple[tuple[str, str], ...] = (
    ("config", "the resolved preset"),
    ("trainer_config", "the trainer's config"),
    ("parameters", "the parameter count"),
    ("stopped_by", "the trainer's stop"),
    ("lrs", "the first learning rates"),
    ("losses", "the first losses"),
    ("lr_probe", "the later lr schedule"),
    ("logits_shape", "the logits' shape"),
    ("logits_head", "the logits on a fixed batch"),
    ("logits_stats", "the logits' sums"),
)


# ------------------------------------------------------------------------------------------ comparison


def _close(a: Any, b: Any, rtol: float) -> bool:
    """Equal JSON values, numbers within ``rtol`` of the larger magnitude (and at least of 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        fa, fb = float(a), float(b)
        if not (math.isfinite(fa) and math.isfinite(fb)):
            return False
        return abs(fa - fb) <= rtol * max(1.0, abs(fa), abs(fb))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
    return bool(a == b)


def _tolerance(key: str) -> float:
    return {"losses": LOSS_RTOL, "logits_head": LOGITS_RTOL, "logits_stats": LOGITS_RTOL}.get(key, LR_RTOL)


def usable(fp: Mapping[str, Any] | None) -> str | None:
    """Why a fingerprint cannot be compared, or None when it can."""
    if not isinstance(fp, Mapping):
        return "no fingerprint"
    missing = [k for k, _ in COMPARED if k not in fp]
    if missing:
        return f"the fingerprint lacks {missing}"
    losses = fp.get("losses")
    if not isinstance(losses, list) or not losses or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in losses):
        return f"the fingerprint holds no finite losses ({losses!r})"
    if not isinstance(fp.get("logits_head"), list) or not fp["logits_head"]:
        return "the fingerprint holds no logits"
    return None


def _median_step(fp: Mapping[str, Any]) -> float | None:
    gaps = fp.get("step_seconds")
    if not isinstance(gaps, list) or len(gaps) < 2:
        return None
    later = [float(x) for x in gaps[1:] if isinstance(x, (int, float)) and float(x) > 0]
    return statistics.median(later) if later else None


@dataclass
class Match:
    """The host's comparison of a candidate's fingerprint with its parent's."""

    equal: bool
    matched: list[str] = field(default_factory=list)
    differed: list[str] = field(default_factory=list)
    unusable: str | None = None
    faster: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"equal": self.equal, "matched": self.matched, "differed": self.differed,
                "unusable": self.unusable, "faster": self.faster}


def compare(parent: Mapping[str, Any] | None, candidate: Mapping[str, Any] | None) -> Match:
    """Equal when every compared value matches within its tolerance and the candidate is not much faster."""
    for side, fp in (("candidate", candidate), ("parent", parent)):
        why = usable(fp)
        if why is not None:
            return Match(False, unusable=f"{side}: {why}")
    assert parent is not None and candidate is not None
    matched = [k for k, _ in COMPARED if _close(parent[k], candidate[k], _tolerance(k))]
    differed = [k for k, _ in COMPARED if k not in matched]
    faster = None
    p_step, c_step = _median_step(parent), _median_step(candidate)
    if p_step and c_step and c_step < SPEED_GUARD * p_step:
        faster = (f"its steps took {c_step * 1000:.0f} ms against the parent's {p_step * 1000:.0f} ms (median of the "
                  "fingerprint's steps after the first): it may train more steps in the budget")
    return Match(not differed and faster is None, matched, differed, faster=faster)


def preset_overrides(parent: Mapping[str, Any], candidate: Mapping[str, Any]) -> list[str]:
    """For each config default the candidate changed whose field the task preset sets itself (the resolved
    preset is unchanged), a sentence naming the preset value that overrides the edit; and one naming the other
    presets the edit changed, when it changed those and not the task's."""
    out: list[str] = []
    task = candidate.get("task") or (candidate.get("config") or {}).get("task", "the task")
    pdefs, cdefs = parent.get("defaults") or {}, candidate.get("defaults") or {}
    sections = {"ModelConfig": "model", "TrainConfig": "train"}
    for cls, section in sections.items():
        before, after = pdefs.get(cls), cdefs.get(cls)
        if not isinstance(before, dict) or not isinstance(after, dict):
            continue
        resolved = (candidate.get("config") or {}).get(section) or {}
        for name in sorted(set(before) | set(after)):
            if before.get(name) == after.get(name) or name not in resolved:
                continue
            out.append(f"the edit changes the default {cls}.{name} ({before.get(name)!r} -> {after.get(name)!r}), "
                       f"which the {task} preset overrides with {section}.{name}={resolved[name]!r}")
    others_before, others_after = parent.get("other_presets"), candidate.get("other_presets")
    if isinstance(others_before, dict) and isinstance(others_after, dict):
        changed = sorted(n for n in set(others_before) | set(others_after)
                         if n != "error" and others_before.get(n) != others_after.get(n))
        if changed:
            out.append(f"the edit changes the preset(s) {', '.join(changed)}, not {task}'s, which this run trains")
    return out


def no_effect_reason(match: Match, parent: Mapping[str, Any], candidate: Mapping[str, Any],
                     parent_commit: str) -> str:
    """Why a candidate ends no-effect: the preset values that override its edit first (the part the next
    proposal most needs), then what matched its parent's."""
    steps = len(candidate.get("losses") or [])
    names = [text for key, text in COMPARED if key in match.matched]
    what = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)
    losses = ", ".join(f"{x:.4f}" for x in candidate.get("losses") or [])
    head = "the edit did not change training"
    overrides = preset_overrides(parent, candidate)
    if overrides:
        head += ": " + "; ".join(overrides)
    return (f"{head}; against its parent {parent_commit[:10]}, {what} are equal within floating-point noise "
            f"({candidate.get('parameters')} parameters; first {steps} losses {losses})")


# ------------------------------------------------------------------------------------------ the parent's side


def _fingerprint_of(result: CascadeResult) -> tuple[dict[str, Any] | None, str]:
    """The fingerprint from a cascade result (the smoke stage's metrics, or a stage of its own), or None and
    why not."""
    for run in result.stages:
        if run.stage == FINGERPRINT:
            if not run.ok:
                return None, f"the fingerprint stage failed: {run.reason}"
            return dict(run.metrics), ""
        if run.stage == CARRIER:
            if not run.ok:
                return None, f"the {CARRIER} stage failed: {run.reason}"
            fp = run.metrics.get("fingerprint")
            if isinstance(fp, dict):
                return dict(fp), ""
            return None, f"no fingerprint: {str(run.metrics.get('fingerprint_error') or 'none recorded')[:2000]}"
    return None, "no fingerprint stage ran"


def _fingerprint_seconds(result: CascadeResult) -> float:
    """Seconds the fingerprint took: a stage of its own, or its own clock inside smoke (a claim, only reported)."""
    for run in result.stages:
        if run.stage == FINGERPRINT:
            return float(run.duration_s)
        if run.stage == CARRIER and isinstance(run.metrics.get("fingerprint"), dict):
            seconds = run.metrics["fingerprint"].get("fingerprint_seconds")
            return float(seconds) if isinstance(seconds, (int, float)) else 0.0
    return 0.0


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _hrm_tree(repo: Path, commit: str) -> str:
    return subprocess.run(["git", "rev-parse", f"{commit}:hrm"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def fingerprint_key(ctx: Any, tree: str, task: str | None = None) -> str:
    s = ctx.settings
    raw = json.dumps([tree, task or s.task, float(s.budget_seconds), int(s.seeds[0]), ctx.stage_threads(), bool(s.gpus),
                      harness_digest(), ctx.run_id])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def parent_fingerprint(ctx: Any, parent_commit: str,
                       task: str | None = None) -> tuple[dict[str, Any] | None, str, bool, float]:
    """The parent's fingerprint (from the cache, or its fingerprint stage on a pinned copy of its hrm/), why it
    is missing, whether it came from the cache and the seconds its stage took. A failed parent fingerprint is cached as missing too."""
    tree = _hrm_tree(ctx.repo, parent_commit)
    key = fingerprint_key(ctx, tree, task)
    cache = ctx.state / "fingerprints" / f"{key}.json"
    with _lock_for(str(cache)):
        if cache.exists():
            data = json.loads(cache.read_text())
            return data.get("fingerprint"), str(data.get("missing") or ""), True, float(data.get("seconds") or 0.0)
        result = ctx.cascade(ctx.parent_tree(parent_commit), ctx.run_dir / "fingerprints" / tree[:12], (CARRIER,),
                             [], parent_commit, side="parent", phase="fingerprint", fingerprint=True, task=task)
        fp, why = _fingerprint_of(result)
        seconds = sum(r.duration_s for r in result.stages)
        if result.failed_stage not in (None, CARRIER):  # the executor lost it: not cached, tried again
            return None, f"the parent's fingerprint did not run: {result.reason}", False, seconds
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"commit": parent_commit, "tree": tree, "fingerprint": fp, "missing": why,
                                   "seconds": seconds}, indent=1) + "\n")
        os.replace(tmp, cache)
        return fp, why, False, seconds


# ------------------------------------------------------------------------------------------ the gates


@dataclass
class NoEffect:
    reason: str
    match: Match
    parent_commit: str
    parent_cached: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "parent": self.parent_commit, "parent_cached": self.parent_cached,
                "seconds": round(self.seconds, 3), **self.match.to_dict()}


def run_gates(ctx: Any, tree: Path, out: Path, gate_stages: Sequence[str], changed: list[str], parent: str,
              record: dict[str, Any], task: str | None = None) -> tuple[CascadeResult, NoEffect | None]:
    """The candidate's gates with the no-effect check after smoke: safety, smoke and its fingerprint (the
    parent's at the same time, unless cached), then, unless the fingerprints match, the remaining gates.
    ``record`` receives ``no_effect_check`` (what the check saw, its seconds). Returns the combined gates'
    result and the NoEffect ending, if any. With the check off (settings.no_effect_check False) the gates
    run as before. ``task``: the task the parent was measured on (a ladder moves the run's task)."""
    if not getattr(ctx.settings, "no_effect_check", True):
        return ctx.cascade(tree, out, tuple(gate_stages), changed, parent, task=task), None
    pre = tuple(s for s in PRE_STAGES if s in gate_stages)
    rest = tuple(s for s in gate_stages if s not in pre)
    if CARRIER not in pre:
        return ctx.cascade(tree, out, tuple(gate_stages), changed, parent, task=task), None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parent-fingerprint")
    future: Future[tuple[dict[str, Any] | None, str, bool, float]] = pool.submit(parent_fingerprint, ctx, parent, task)
    pool.shutdown(wait=False)
    first = ctx.cascade(tree, out, pre, changed, parent, fingerprint=True, task=task)
    fp, why = _fingerprint_of(first)
    fp_seconds = _fingerprint_seconds(first)
    gate_failed = not first.ok
    if gate_failed:  # the parent's fingerprint goes on in the background and is cached for the next candidate
        record["no_effect_check"] = {"skipped": f"the {first.failed_stage} gate failed"}
        return first, None
    try:
        parent_fp, parent_why, cached, parent_seconds = future.result()
    except Exception as exc:  # the check only ever ends a candidate; its own trouble ends nothing
        parent_fp, parent_why, cached, parent_seconds = None, f"the parent's fingerprint failed: {exc}", False, 0.0
    smoke_seconds = sum(r.duration_s for r in first.stages if r.stage == CARRIER)
    check: dict[str, Any] = {"candidate_seconds": round(fp_seconds, 3), "smoke_host_seconds": round(smoke_seconds, 3),
                             "parent_cached": cached,
                             "parent_seconds": 0.0 if cached else round(parent_seconds, 3)}
    record["no_effect_check"] = check
    if fp is None or parent_fp is None:
        check["unusable"] = why or parent_why
        match = None
    else:
        match = compare(parent_fp, fp)
        check.update(match.to_dict())
    if match is not None and match.equal:
        ended = NoEffect(no_effect_reason(match, parent_fp or {}, fp or {}, parent), match, parent, cached,
                         fp_seconds)
        check["verdict"] = "no-effect"
        return first, ended
    if not rest:
        return first, None
    second = ctx.cascade(tree, out / "after-fingerprint", rest, changed, parent, task=task)
    combined = CascadeResult(ok=second.ok, task=second.task, seeds=second.seeds, stages=first.stages + second.stages,
                             failed_stage=second.failed_stage, failed_seed=second.failed_seed, reason=second.reason,
                             scores=second.scores, backend=first.backend or second.backend,
                             isolation=first.isolation or second.isolation, missing=first.missing or second.missing,
                             seconds=first.seconds + second.seconds, evidence=second.evidence,
                             task_spec=first.task_spec or second.task_spec, heldout_split=second.heldout_split)
    combined.save(out / "cascade.json")
    return combined, None


# ------------------------------------------------------------------------------------------ duplicates


_INDEX_LINE = re.compile(r"^index [0-9a-f]+\.\.[0-9a-f]+( \d+)?$")
_HUNK = re.compile(r"^@@ -\d+(,\d+)? \+\d+(,\d+)? @@")


def normalise_patch(diff: str) -> str:
    """A patch without its blob ids and hunk line numbers, trailing blanks stripped: the same edit text."""
    lines = []
    for line in diff.splitlines():
        if _INDEX_LINE.match(line):
            continue
        if _HUNK.match(line):
            line = "@@" + line.split("@@", 2)[-1]
        lines.append(line.rstrip())
    return "\n".join(lines).strip() + "\n"


def patch_digest(diff: str) -> str:
    return hashlib.sha256(normalise_patch(diff).encode()).hexdigest()


@dataclass
class Seen:
    proposal_id: str
    parent: str
    tree: str
    patch: str
    verdict: str


class DuplicateIndex:
    """The run's committed candidates by `hrm/` tree and by (parent, normalised patch)."""

    def __init__(self) -> None:
        self.entries: list[Seen] = []
        self.loaded = False
        self.lock = threading.Lock()

    def load(self, ctx: Any) -> None:
        """Read the run's stored results once (a resumed run knows its earlier candidates)."""
        if self.loaded:
            return
        for pid in ctx.store.ids():
            result = ctx.store.result(pid) or {}
            commit, parent = result.get("candidate_commit"), result.get("parent")
            if not commit or not parent or result.get("verdict") == DUPLICATE:  # a repeat points at the original
                continue
            tree = result.get("hrm_tree")
            patch = result.get("patch_digest")
            try:
                tree = tree or _hrm_tree(ctx.repo, commit)
                if not patch:
                    patch = patch_digest(ctx.store.read_text(pid, "diff.patch") or "")
            except (subprocess.CalledProcessError, OSError):
                continue
            self.entries.append(Seen(pid, parent, tree, patch, str(result.get("verdict", ""))))
        self.loaded = True

    def find(self, parent: str, tree: str, patch: str) -> Seen | None:
        for seen in self.entries:
            if seen.verdict == VOID:
                continue
            if seen.tree == tree or (seen.parent == parent and seen.patch == patch):
                return seen
        return None

    def add(self, seen: Seen) -> None:
        self.entries.append(seen)

    def settle(self, proposal_id: str, verdict: str) -> None:
        for seen in self.entries:
            if seen.proposal_id == proposal_id:
                seen.verdict = verdict


def index_of(ctx: Any) -> DuplicateIndex:
    index = getattr(ctx, "duplicates", None)
    if index is None:
        index = DuplicateIndex()
        ctx.duplicates = index
    return index


def check_duplicate(ctx: Any, proposal_id: str, commit: str, parent: str, diff: str,
                    record: dict[str, Any]) -> str | None:
    """The reason a just-committed candidate is a duplicate of an earlier one of the run, or None (it is then
    remembered). ``record`` (the result) receives ``hrm_tree`` and ``patch_digest``."""
    tree = _hrm_tree(ctx.repo, commit)
    patch = patch_digest(diff)
    record.update(hrm_tree=tree, patch_digest=patch)
    index = index_of(ctx)
    with index.lock:
        index.load(ctx)
        seen = index.find(parent, tree, patch)
        if seen is None or seen.proposal_id == proposal_id:
            if seen is None:
                index.add(Seen(proposal_id, parent, tree, patch, "running"))
            return None
    how = "the same hrm/ tree" if seen.tree == tree else f"the same patch against the same parent {parent[:10]}"
    verdict = seen.verdict if seen.verdict not in ("", "running") else "still being judged"
    record["duplicate_of"] = {"proposal_id": seen.proposal_id, "verdict": verdict, "same_tree": seen.tree == tree}
    return f"duplicate of {seen.proposal_id} ({verdict}): {how}; no gate or seed pair run"
