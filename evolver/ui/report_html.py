"""`report.html`: one self-contained page of a run (the evolution tree, each candidate, the best score).

The page opens with no network: one inline stylesheet, one inline script and inline SVG, images as ``data:``
URIs, and a Content-Security-Policy that allows nothing else (the script and the stylesheet by their
hashes, so no other script can run even if some text escaped its escaping).

Everything a candidate can influence is untrusted: a proposal is written by an LLM, a diff carries its code,
a reason quotes candidate output, and the learning curves are read from files the candidate's own trainer
wrote. All text goes through :func:`esc`; numbers through :func:`num`; curve files are read with the host's
link-refusing reader (:func:`sandbox.readback.read_bytes`) and only finite numbers are kept.

Data comes only through the record's public API (:class:`evolver.record.git_record.EvolutionRecord`,
:class:`evolver.record.store.ProposalStore`), the result dicts the ``report`` command gathered, and the run's
state directory for the learning curves. Without a record the page is built from the results alone.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from evolver.intervals import t_interval
from evolver.judge import fidelity
from evolver.judge.saturation import ceiling_lines
from evolver.record.git_record import EvolutionRecord, RecordError, check_name, repo_toplevel
from evolver.record.store import ProposalStore

HTML_FILE = "report.html"
CI_LEVEL = 0.95
CURVE_MAX_BYTES = 64 << 20
CURVE_MAX_POINTS = 240
DIFF_MAX_LINES = 20_000
TITLE_MAX_CHARS = 72
MERGED_VERDICTS = frozenset({"merged", "approved", "accepted"})
BASE_KEY = "base"

# Where a seed pair's training metrics lie under the run's state directory: the loop measures each side in
# <state>/runs/<run>/candidates/<pid>/<phase>-seed<seed>-<side>/ (evolver/run/candidate.py), the cascade runs the train
# stage in train-seed<seed>/ (evolver/execute/cascade.py), and the train stage trains into train/ (smoketests), where
# hrm/train.py appends one {"type": "train", "step", "loss", ...} record per step to metrics.jsonl.
RUNS_DIR = "runs"
CANDIDATES_DIR = "candidates"
DEFAULT_STATE_DIR = ".hrm-evolve"


def metrics_rel(phase: str, seed: int, side: str) -> str:
    """The metrics file of one side of one seed pair, relative to the candidate's state folder."""
    return f"{phase}-seed{seed}-{side}/train-seed{seed}/train/metrics.jsonl"


# ================================================================================================ escaping
def esc(value: object) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def num(value: object, fmt: str = ".4f") -> str:
    """A finite number formatted with ``fmt``; anything else as escaped text, or a dash when missing."""
    if is_number(value):
        return format(float(value), fmt)
    return "&mdash;" if value is None else esc(value)


def shorten(text: str, limit: int = TITLE_MAX_CHARS) -> str:
    """One line of at most ``limit`` characters (escape after shortening)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def verdict_class(verdict: str) -> str:
    """The colour class of a verdict: good, pending, bad, failed, grey, invalid or unknown."""
    v = verdict.lower()
    if v in MERGED_VERDICTS:
        return "good"
    if v.startswith("pending"):
        return "pending"
    if v.startswith("rejected") or v == "conflict":
        return "bad"
    if v.startswith("failed"):
        return "failed"
    if v in ("inconclusive", "void", "no-effect", "duplicate"):
        return "grey"
    if v == "invalid":
        return "invalid"
    return "unknown"


# ================================================================================================ the data
@dataclass
class Curve:
    """The per-step training loss of one side of one seed pair."""

    phase: str
    seed: int
    side: str  # "parent" | "candidate"
    points: list[tuple[float, float]]


@dataclass
class CandidateView:
    """What the page shows of one candidate."""

    index: int
    proposal_id: str
    cycle: int | None
    verdict: str
    reason: str
    parent_sha: str | None
    parent_key: str
    merged: bool
    result: dict[str, Any]
    proposal: dict[str, Any]
    diff: str | None
    note: dict[str, Any] | None = None
    curves: list[Curve] = field(default_factory=list)
    curve_problems: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return f"cand-{self.index}"

    @property
    def title(self) -> str:
        return str(self.proposal.get("title") or self.result.get("title") or self.proposal_id)

    @property
    def comparison(self) -> dict[str, Any]:
        comp = self.result.get("comparison")
        return comp if isinstance(comp, dict) else {}


@dataclass
class RunView:
    run_id: str | None
    candidates: list[CandidateView]
    best_key: str | None = None
    best_commit: str | None = None
    summary: dict[str, Any] | None = None
    images: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fidelity: dict[str, Any] = field(default_factory=dict)  # evolver.judge.fidelity.assess of the run's results


def pairs_of(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The seed pairs of a result: the judgement's (void ones included), else the comparison's lists."""
    judgement = result.get("judgement")
    if isinstance(judgement, dict) and isinstance(judgement.get("pairs"), list):
        return [p for p in judgement["pairs"] if isinstance(p, dict)]
    comp = result.get("comparison")
    if not isinstance(comp, dict):
        return []
    out: list[dict[str, Any]] = []
    for phase, prefix in (("selection", ""), ("confirmation", "confirmation_")):
        seeds = comp.get(f"{prefix}seeds") or []
        parent = comp.get(f"{prefix}baseline") or []
        cand = comp.get(f"{prefix}candidate") or []
        gains = comp.get(f"{prefix}gains") or []
        for i, seed in enumerate(seeds if isinstance(seeds, list) else []):
            out.append({"phase": phase, "seed": seed, "parent": _at(parent, i), "candidate": _at(cand, i),
                        "gain": _at(gains, i), "void": False, "void_reason": ""})
    return out


def _at(values: object, i: int) -> Any:
    return values[i] if isinstance(values, list) and i < len(values) else None


def side_scores(result: Mapping[str, Any], side: str) -> list[float]:
    """One side's held-out scores over the result's non-void pairs (selection and confirmation)."""
    return [float(p[side]) for p in pairs_of(result) if not p.get("void") and is_number(p.get(side))]


def read_curve(root: Path, rel: str) -> list[tuple[float, float]]:
    """(step, loss) of the train records in a metrics.jsonl the candidate's trainer wrote (untrusted)."""
    from sandbox.readback import read_bytes

    data = read_bytes(root, rel, max_bytes=CURVE_MAX_BYTES)
    points: list[tuple[float, float]] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("type") == "train" and is_number(rec.get("step")) \
                and is_number(rec.get("loss")):
            points.append((float(rec["step"]), float(rec["loss"])))
    return thin(points, CURVE_MAX_POINTS)


def thin(points: Sequence[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most ``limit`` points, evenly spaced, the first and last kept."""
    if len(points) <= limit:
        return list(points)
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def load_curves(cand_dir: Path | None, result: Mapping[str, Any]) -> tuple[list[Curve], list[str]]:
    """The learning curves of every pair of a candidate found under its state folder, and read problems."""
    curves: list[Curve] = []
    problems: list[str] = []
    if cand_dir is None or not cand_dir.is_dir():
        return curves, problems
    for pair in pairs_of(result):
        phase, seed = str(pair.get("phase") or "selection"), pair.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or not phase.isalnum():
            continue
        for side in ("parent", "candidate"):
            try:
                points = read_curve(cand_dir, metrics_rel(phase, seed, side))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:  # UnsafeOutput is a ValueError
                problems.append(f"{phase} seed {seed} {side}: {exc}")
                continue
            if points:
                curves.append(Curve(phase, seed, side, points))
    return curves, problems


def state_dir_of(root: Path) -> Path:
    """The run state directory of a repository, as the loop's settings place it."""
    from evolver.settings import load_settings

    try:
        return load_settings(root).state_path(root)
    except ValueError:
        return root / DEFAULT_STATE_DIR


def locate_record(results: Sequence[Mapping[str, Any]], places: Iterable[Path]) -> EvolutionRecord | None:
    """The record of the results' run in the first repository of ``places`` that holds it, or None."""
    run_ids = {r.get("run_id") for r in results if isinstance(r.get("run_id"), str)}
    if len(run_ids) != 1:
        return None
    run_id = str(run_ids.pop())
    for place in places:
        try:
            return EvolutionRecord(repo_toplevel(place), run_id, create=False)
        except (RecordError, OSError, ValueError):
            continue
    return None


def valid_name(proposal_id: str) -> bool:
    try:
        check_name("proposal id", proposal_id)
    except ValueError:
        return False
    return True


def _cycle_key(cycle: object, position: int) -> tuple[float, int]:
    return (float(cycle) if is_number(cycle) else math.inf, position)


def _parent_sha(info: Any, result: Mapping[str, Any], proposal: Mapping[str, Any]) -> str | None:
    if info is not None and info.committed:
        return str(info.parent)
    if isinstance(result.get("parent"), str):
        return str(result["parent"])
    prov = proposal.get("provenance")
    if isinstance(prov, dict) and isinstance(prov.get("parent_commit"), str):
        return str(prov["parent_commit"])
    return None


def _assign_parents(cands: list[CandidateView], labels: Mapping[str, str]) -> None:
    """Parent node of each candidate: the run-line label of its parent commit; without one, the best at its
    cycle (the last merged candidate before it, as the loop branches every candidate from the best)."""
    merge_shas = {str(c.result["merge_commit"]): c.proposal_id for c in cands if c.result.get("merge_commit")}
    best = BASE_KEY
    for c in cands:
        sha = c.parent_sha or ""
        c.parent_key = labels.get(sha) or merge_shas.get(sha) or best
        if c.merged:
            best = c.proposal_id


def gather(results: Sequence[Mapping[str, Any]], record: EvolutionRecord | None, *,
           state_dir: Path | None = None, summary: dict[str, Any] | None = None,
           images: Mapping[str, Path] | None = None) -> RunView:
    """Everything the page shows, from the results and (when given) the record and the run's state folder."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.get("proposal_id") is not None:
            by_id.setdefault(str(r["proposal_id"]), dict(r))
    infos: dict[str, Any] = {}
    labels: dict[str, str] = {}
    view = RunView(run_id=None, candidates=[], summary=summary, images=dict(images or {}),
                   fidelity=fidelity.assess(list(by_id.values())))
    store: ProposalStore | None = None
    if record is not None:
        store = ProposalStore(record)
        infos = {info.proposal_id: info for info in record.candidates()}
        labels = record.best_labels()
        view.run_id, view.best_commit = record.run_id, record.best_commit()
        view.best_key = labels.get(view.best_commit, BASE_KEY)
        state_dir = state_dir if state_dir is not None else state_dir_of(record.root)
    else:
        view.notes.append("the run's git record was not found: the tree is inferred from the results, and "
                          "proposals, diffs and learning curves are not shown")
        view.run_id = next((str(r["run_id"]) for r in by_id.values() if r.get("run_id")), None)
    found = {pid: i for i, pid in enumerate(list(by_id) + [pid for pid in infos if pid not in by_id])}
    order = sorted(found, key=lambda pid: _cycle_key(by_id.get(pid, {}).get("cycle"), found[pid]))
    run_root = state_dir / RUNS_DIR / view.run_id / CANDIDATES_DIR if state_dir and view.run_id else None
    for index, pid in enumerate(order):
        view.candidates.append(_candidate(index, pid, by_id.get(pid), infos.get(pid), store, run_root))
    _assign_parents(view.candidates, labels)
    if record is None:
        merged = [c.proposal_id for c in view.candidates if c.merged]
        view.best_key = merged[-1] if merged else BASE_KEY
    return view


def _candidate(index: int, pid: str, result: dict[str, Any] | None, info: Any, store: ProposalStore | None,
               run_root: Path | None) -> CandidateView:
    result = dict(result or {})
    proposal: dict[str, Any] = {}
    diff = None
    if not valid_name(pid):  # an id from inside a result file never becomes a path
        store, run_root = None, None
    if store is not None:
        try:
            proposal = store.proposal(pid) or {}
        except ValueError:  # a proposal.json that does not parse
            proposal = {}
        diff = store.diff(pid)
    note = info.note if info is not None else None
    verdict = str(result.get("verdict") or (note or {}).get("verdict") or "running")
    merged = bool(info.merged) if info is not None else (
        verdict in MERGED_VERDICTS or bool(result.get("merge_commit")))
    cycle = result.get("cycle")
    view = CandidateView(index=index, proposal_id=pid, cycle=int(cycle) if is_number(cycle) else None,
                         verdict=verdict, reason=str(result.get("reason") or (note or {}).get("reason") or ""),
                         parent_sha=_parent_sha(info, result, proposal), parent_key=BASE_KEY, merged=merged,
                         result=result, proposal=proposal, diff=diff, note=note)
    view.curves, view.curve_problems = load_curves(run_root / pid if run_root else None, result)
    return view


# ================================================================================================ statistics
def point_interval(values: Sequence[float]) -> tuple[float, float, float] | None:
    """The t interval, or the lone value as a point; None without values."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    return t_interval(values, CI_LEVEL) if values else None


@dataclass
class BestRow:
    """One cycle: the best (the candidate's parent) as measured beside the candidate, and the candidate."""

    candidate: CandidateView
    best_scores: list[float]
    cand_scores: list[float]


def best_rows(view: RunView) -> list[BestRow]:
    return [BestRow(c, side_scores(c.result, "parent"), side_scores(c.result, "candidate"))
            for c in view.candidates]


def rule_text(view: RunView) -> str | None:
    """The promotion rule stored with the latest judged candidate."""
    for c in reversed(view.candidates):
        for holder in (c.comparison, c.result.get("judgement")):
            if isinstance(holder, dict) and holder.get("rule"):
                return str(holder["rule"])
    return None


# ================================================================================================ SVG helpers
def scale(lo: float, hi: float, a: float, b: float) -> Callable[[float], float]:
    """The linear map of [lo, hi] onto [a, b] (a flat domain maps to the middle)."""
    if hi - lo <= 0:
        return lambda _v: (a + b) / 2
    return lambda v: a + (v - lo) * (b - a) / (hi - lo)


def padded(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.06 or max(abs(hi) * 0.06, 0.01)
    return lo - pad, hi + pad


def polyline(points: Iterable[tuple[float, float]], cls: str) -> str:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline class="{esc(cls)}" points="{coords}"/>'


def y_axis(lo: float, hi: float, y: Callable[[float], float], x0: float, x1: float, fmt: str) -> str:
    parts = []
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(f'<line class="grid" x1="{x0}" x2="{x1}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                     f'<text class="tick" x="{x0 - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{num(v, fmt)}</text>')
    return "".join(parts)


# ================================================================================================ the tree
@dataclass
class TreeRow:
    key: str
    depth: int
    row: int
    parent_row: int | None
    candidate: CandidateView | None


def tree_rows(view: RunView) -> list[TreeRow]:
    """Nodes in depth-first order: the base, then each candidate under the node of its parent commit."""
    children: dict[str, list[CandidateView]] = {}
    for c in view.candidates:
        children.setdefault(c.parent_key, []).append(c)
    rows: list[TreeRow] = []

    def visit(key: str, cand: CandidateView | None, depth: int, parent_row: int | None) -> None:
        row = len(rows)
        rows.append(TreeRow(key, depth, row, parent_row, cand))
        if cand is None or cand.merged:
            for child in children.pop(key, []):
                visit(child.proposal_id, child, depth + 1, row)

    visit(BASE_KEY, None, 0, None)
    for key in list(children):  # parents outside the run line (not the base, not a merged candidate)
        if key in children:
            visit(key, None, 0, None)
    return rows


ROW_H, INDENT, PAD = 30, 28, 18


def tree_svg(view: RunView) -> str:
    rows = tree_rows(view)
    depth = max(r.depth for r in rows)
    width, height = PAD * 2 + depth * INDENT + 900, PAD * 2 + len(rows) * ROW_H
    pos = {r.row: (PAD + 6 + r.depth * INDENT, PAD + 10 + r.row * ROW_H) for r in rows}
    edges = []
    for r in rows:
        if r.parent_row is not None:
            (px, py), (cx, cy) = pos[r.parent_row], pos[r.row]
            edges.append(f'<path class="edge" d="M{px} {py} V{cy} H{cx}"/>')
    nodes = [_tree_node(r, pos[r.row], view) for r in rows]
    return (f'<svg class="tree" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="evolution tree">'
            + "".join(edges) + "".join(nodes) + "</svg>")


def _tree_node(r: TreeRow, at: tuple[int, int], view: RunView) -> str:
    x, y = at
    best = ' <tspan class="best-tag">(current best)</tspan>' if r.key == view.best_key else ""
    c = r.candidate
    if c is None:
        label = "base (where the run started)" if r.key == BASE_KEY else f"parent {r.key[:12]} (outside the run)"
        return (f'<g class="node root"><rect x="{x - 7}" y="{y - 7}" width="14" height="14"/>'
                f'<text x="{x + 16}" y="{y + 5}"><tspan class="pid">{esc(label)}</tspan>{best}</text></g>')
    vc = verdict_class(c.verdict)
    ring = f'<circle class="ring" cx="{x}" cy="{y}" r="12"/>' if c.merged else ""
    gain = c.comparison.get("mean_gain")
    extra = f" gain {num(gain, '+.3f')}" if is_number(gain) else ""
    merged = ' <tspan class="merged-tag">\u2605 merged</tspan>' if c.merged else ""
    if c.merged and c.verdict == "merged":
        merged = ' <tspan class="merged-tag">\u2605</tspan>'
    cycle = f"#{c.cycle} " if c.cycle is not None else ""
    cls = "node cand" + (" merged" if c.merged else "")
    return (f'<a href="#{c.anchor}" class="{cls}" data-target="{c.anchor}" data-pid="{esc(c.proposal_id)}">'
            f'<title>{esc(c.title)}</title>{ring}<circle class="dot v-{vc}" cx="{x}" cy="{y}" r="8"/>'
            f'<text x="{x + 18}" y="{y + 5}"><tspan class="pid">{esc(cycle + c.proposal_id)}</tspan> '
            f'<tspan class="vt-{vc}">{esc(c.verdict)}</tspan>{esc(extra)}{merged}{best} '
            f'<tspan class="ttl">{esc(shorten(c.title))}</tspan></text></a>')


# ================================================================================================ best score
def best_svg(rows: Sequence[BestRow]) -> str:
    measured = [(i, point_interval(r.best_scores), point_interval(r.cand_scores)) for i, r in enumerate(rows)]
    values = [v for _, b, c in measured for ci in (b, c) if ci for v in ci]
    if not values:
        return '<p class="empty">no seed pair was scored in this run</p>'
    w, h, left, right, top, bottom = 720, 280, 64, 16, 16, 40
    lo, hi = padded(values)
    x = scale(-0.5, len(rows) - 0.5, left, w - right)
    y = scale(lo, hi, h - bottom, top)
    parts = [y_axis(lo, hi, y, left, w - right, ".3f")]
    line = [(x(i), y(b[0])) for i, b, _ in measured if b]
    parts.append(polyline(line, "best-line"))
    for i, b, c in measured:
        if b:
            parts.append(_error_bar(x(i) - 5, b, y, "best"))
        if c:
            parts.append(_error_bar(x(i) + 5, c, y, f"v-{verdict_class(rows[i].candidate.verdict)}"))
        if rows[i].candidate.merged:
            parts.append(f'<text class="star" x="{x(i):.1f}" y="{top + 10}" text-anchor="middle">\u2605</text>')
    every = max(1, len(rows) // 24)
    for i, r in enumerate(rows):
        if i % every == 0:
            label = r.candidate.cycle if r.candidate.cycle is not None else "?"
            parts.append(f'<text class="tick" x="{x(i):.1f}" y="{h - bottom + 16}" '
                         f'text-anchor="middle">{esc(label)}</text>')
    parts.append(f'<text class="axis" x="{(left + w) / 2}" y="{h - 6}" text-anchor="middle">cycle</text>')
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" role="img" aria-label="best score per cycle">{"".join(parts)}</svg>')


def _error_bar(cx: float, ci: tuple[float, float, float], y: Callable[[float], float], cls: str) -> str:
    mean, low, high = ci
    return (f'<line class="bar {cls}" x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(low):.1f}" y2="{y(high):.1f}"/>'
            f'<circle class="pt {cls}" cx="{cx:.1f}" cy="{y(mean):.1f}" r="4"/>')


def _ci_cell(values: Sequence[float]) -> str:
    ci = t_interval(values, CI_LEVEL)
    if ci is None:
        return num(values[0]) + " (1 seed)" if values else "&mdash;"
    mean, low, high = ci
    return f"{num(mean)} [{num(low)}, {num(high)}] (n={len(values)})"


def best_table(rows: Sequence[BestRow]) -> str:
    head = ("<tr><th>cycle</th><th>candidate</th><th>verdict</th><th>best (parent)</th>"
            f"<th>best's score, {CI_LEVEL:.0%} t interval</th><th>candidate's score</th><th>mean gain</th>"
            "<th>one-sided lower bound (rule)</th><th>confirmation level</th></tr>")
    body = []
    for r in rows:
        c, comp = r.candidate, r.candidate.comparison
        vc = verdict_class(c.verdict)
        body.append(
            f'<tr><td>{esc(c.cycle if c.cycle is not None else "?")}</td>'
            f'<td><a href="#{c.anchor}">{esc(c.proposal_id)}</a></td>'
            f'<td><span class="badge v-{vc}">{esc(c.verdict)}</span></td><td>{esc(c.parent_key)}</td>'
            f"<td>{_ci_cell(r.best_scores)}</td><td>{_ci_cell(r.cand_scores)}</td>"
            f"<td>{num(comp.get('mean_gain'), '+.4f')}</td><td>{num(comp.get('lower_bound'), '+.4f')}</td>"
            f"<td>{num(comp.get('confirmation_level'), '.4f')}</td></tr>")
    return f'<table class="grid-table">{head}{"".join(body)}</table>'


# ================================================================================================ one candidate
def diff_html(diff: str | None) -> str:
    if not diff:
        return '<p class="empty">no diff stored</p>'
    lines = diff.splitlines()
    cut = len(lines) > DIFF_MAX_LINES
    out = []
    for line in lines[:DIFF_MAX_LINES]:
        if line.startswith(("+++", "---", "diff ", "index ")):
            cls = "d-meta"
        elif line.startswith("+"):
            cls = "d-add"
        elif line.startswith("-"):
            cls = "d-del"
        elif line.startswith("@@"):
            cls = "d-hunk"
        else:
            cls = "d-ctx"
        out.append(f'<span class="{cls}">{esc(line)}</span>')
    more = f'<span class="d-meta">... {len(lines) - DIFF_MAX_LINES} more lines</span>' if cut else ""
    return f'<pre class="diff">{"".join(out)}{more}</pre>'


def proposal_html(c: CandidateView) -> str:
    p = c.proposal
    if not p:
        return '<p class="empty">no proposal stored</p>'
    parts = [f'<h4 class="ptitle">{esc(c.title)}</h4>']
    for key in ("rationale", "hypothesis"):
        if p.get(key):
            parts.append(f'<p><b>{key}</b></p><p class="text">{esc(p[key])}</p>')
    listed = p.get("citations")
    cites = [ci for ci in listed if isinstance(ci, dict)] if isinstance(listed, list) else []
    if cites:
        items = "".join(f"<li><code>{esc(ci.get('arxiv_id'))}</code> {esc(ci.get('title'))}"
                        f"{': ' + esc(ci.get('claim')) if ci.get('claim') else ''}</li>" for ci in cites)
        parts.append(f"<p><b>citations</b></p><ul>{items}</ul>")
    else:
        parts.append("<p><b>citations</b>: none</p>")
    for key in ("expected_effect", "risk", "provenance"):
        if isinstance(p.get(key), dict):
            text = ", ".join(f"{k}: {_plain(v)}" for k, v in p[key].items() if v not in (None, "", []))
            parts.append(f'<p><b>{esc(key.replace("_", " "))}</b>: {esc(text)}</p>')
    return "".join(parts)


def _plain(value: object) -> str:
    return "; ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def verdict_html(c: CandidateView) -> str:
    r, vc = c.result, verdict_class(c.verdict)
    rows = [("verdict", f'<span class="badge v-{vc}">{esc(c.verdict)}</span>'
             + (' <span class="merged-tag">\u2605 merged</span>' if c.merged else "")),
            ("failed stage", esc(r.get("failed_stage")) if r.get("failed_stage") else None),
            ("reason", f'<span class="text">{esc(c.reason)}</span>' if c.reason else None),
            ("parent", f"{esc(c.parent_key)} <code>{esc((c.parent_sha or '')[:12])}</code>"),
            ("candidate commit", f"<code>{esc(r.get('candidate_commit'))}</code>"
             if r.get("candidate_commit") else None),
            ("merge commit", f"<code>{esc(r.get('merge_commit'))}</code>" if r.get("merge_commit") else None),
            ("git note", esc((c.note or {}).get("verdict")) if c.note else None),
            ("task", esc(r.get("task")) if r.get("task") else None),
            ("guard tasks", guards_html(r["guards"]) if isinstance(r.get("guards"), dict) else None)]
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows if v)
    return f'<table class="kv">{body}</table>'


def guards_html(guards: Mapping[str, Any]) -> str:
    """A winner's guard tasks (evolver/judge/guards.py): each task's verdict, gains and upper bound."""
    rows = []
    for g in guards.get("tasks") or []:
        if not isinstance(g, dict):
            continue
        cls = "bad" if g.get("verdict") == "block" else ("good" if g.get("verdict") == "pass" else "grey")
        rows.append(f'<tr data-guard="{esc(g.get("task"))}"><td>{esc(g.get("task"))}</td>'
                    f'<td><span class="badge v-{cls}">{esc(g.get("verdict"))}</span></td>'
                    f"<td>{esc(', '.join(num(x, '+.4f') for x in g.get('gains') or []))}</td>"
                    f"<td>{num(g.get('mean'), '+.4f')}</td><td>{num(g.get('upper_bound'), '+.4f')}</td>"
                    f"<td>{num(g.get('level'), '.4g')}</td></tr>")
    return ('<table class="grid-table guards"><tr><th>task</th><th>verdict</th><th>paired gains</th><th>mean</th>'
            "<th>upper bound</th><th>level</th></tr>" + "".join(rows) + "</table>")


STAGE_ORDER = ("llm", "patch", "safety", "smoke", "fingerprint", "trainability", "train", "evaluate", "parent-train",
               "parent-evaluate")


def _stage_rank(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def timings_html(c: CandidateView) -> str:
    timings = c.result.get("timings")
    rows = []
    if isinstance(timings, dict):
        ordered = sorted(timings.items(), key=lambda kv: _stage_rank(str(kv[0])))
        rows = [f"<tr><td>{esc(k)}</td><td>{num(v, '.1f')} s</td></tr>" for k, v in ordered]
    gates = c.result.get("stages")
    gate_rows = []
    if isinstance(gates, list):
        for g in gates:
            if isinstance(g, dict):
                ok = "ok" if g.get("ok") else "failed"
                gate_rows.append(f"<tr><td>{esc(g.get('stage'))}</td><td>{esc(ok)}</td>"
                                 f"<td>{num(g.get('duration_s'), '.1f')} s</td><td>{esc(g.get('reason'))}</td></tr>")
    if not rows and not gate_rows:
        return '<p class="empty">no stage times recorded</p>'
    out = f'<table class="grid-table"><tr><th>stage</th><th>seconds</th></tr>{"".join(rows)}</table>' if rows else ""
    if gate_rows:
        out += ('<table class="grid-table"><tr><th>gate</th><th>result</th><th>host time</th><th>reason</th></tr>'
                f'{"".join(gate_rows)}</table>')
    return out


def pairs_html(c: CandidateView) -> str:
    pairs = pairs_of(c.result)
    if not pairs:
        return '<p class="empty">no seed pairs were run</p>'
    body = []
    for p in pairs:
        void = f"void: {p.get('void_reason')}" if p.get("void") else ""
        body.append(f"<tr><td>{esc(p.get('phase'))}</td><td>{esc(p.get('seed'))}</td>"
                    f"<td>{num(p.get('parent'))}</td><td>{num(p.get('candidate'))}</td>"
                    f"<td>{num(p.get('gain'), '+.4f')}</td><td>{esc(void)}</td></tr>")
    table = ('<table class="grid-table pairs"><tr><th>phase</th><th>seed</th><th>parent</th><th>candidate</th>'
             f'<th>gain</th><th></th></tr>{"".join(body)}</table>')
    return table + _decisions_html(c)


def _decisions_html(c: CandidateView) -> str:
    judgement = c.result.get("judgement")
    out = []
    if isinstance(judgement, dict):
        for stage in ("selection", "confirmation"):
            d = judgement.get(stage)
            if isinstance(d, dict) and d.get("reason"):
                out.append(f'<p><b>{stage}</b>: <span class="text">{esc(d["reason"])}</span></p>')
    comp = c.comparison
    if comp:
        out.append(f"<p>stored: mean gain {num(comp.get('mean_gain'), '+.4f')}, one-sided lower bound "
                   f"{num(comp.get('lower_bound'), '+.4f')}, confirmation level "
                   f"{num(comp.get('confirmation_level'))}, void pairs {num(comp.get('void_pairs'), '.0f')}</p>")
    rule = comp.get("rule") or (judgement.get("rule") if isinstance(judgement, dict) else None)
    if rule:
        out.append(f'<details class="rule"><summary>rule in force for this candidate</summary>'
                   f'<p class="text">{esc(rule)}</p></details>')
    return "".join(out)


def curve_svg(curves: Sequence[Curve]) -> str:
    w, h, left, right, top, bottom = 640, 240, 64, 110, 14, 34
    xs = [p[0] for cv in curves for p in cv.points]
    ys = [p[1] for cv in curves for p in cv.points]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = padded(ys)
    x = scale(x_lo, x_hi, left, w - right)
    y = scale(y_lo, y_hi, h - bottom, top)
    parts = [y_axis(y_lo, y_hi, y, left, w - right, ".3g")]
    for cv in curves:
        parts.append(polyline(((x(a), y(b)) for a, b in cv.points), f"curve {cv.side}"))
    parts.append(f'<text class="tick" x="{left}" y="{h - bottom + 16}">{num(x_lo, ".0f")}</text>'
                 f'<text class="tick" x="{w - right}" y="{h - bottom + 16}" text-anchor="end">{num(x_hi, ".0f")}</text>'
                 f'<text class="axis" x="{(left + w - right) / 2}" y="{h - 6}" text-anchor="middle">step</text>')
    for i, side in enumerate(("parent", "candidate")):
        ly = top + 14 + i * 18
        parts.append(f'<line class="curve {side}" x1="{w - right + 10}" x2="{w - right + 34}" y1="{ly}" y2="{ly}"/>'
                     f'<text class="tick" x="{w - right + 40}" y="{ly + 4}">{side}</text>')
    return (f'<svg class="chart curve-chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" role="img" aria-label="training loss">{"".join(parts)}</svg>')


def curves_html(c: CandidateView) -> str:
    problems = "".join(f'<p class="warn">{esc(p)}</p>' for p in c.curve_problems)
    if not c.curves:
        return '<p class="empty no-curve">no learning curve recorded</p>' + problems
    seeds = sorted({(cv.phase, cv.seed) for cv in c.curves})
    which = ", ".join(f"{phase} seed {seed}" for phase, seed in seeds)
    return (f"<p>training loss per step, candidate against its parent ({esc(which)})</p>"
            + curve_svg(c.curves) + problems)


def candidate_html(c: CandidateView) -> str:
    vc = verdict_class(c.verdict)
    cycle = f"cycle {c.cycle}: " if c.cycle is not None else ""
    sections = [("verdict", verdict_html(c)), ("proposal", proposal_html(c)), ("diff", diff_html(c.diff)),
                ("stage times", timings_html(c)), ("paired seeds (parent vs candidate)", pairs_html(c)),
                ("learning curve", curves_html(c))]
    body = "".join(f'<section class="part"><h4>{esc(title)}</h4>{content}</section>' for title, content in sections)
    return (f'<details class="cand" id="{c.anchor}" data-pid="{esc(c.proposal_id)}">'
            f'<summary><span class="badge v-{vc}">{esc(c.verdict)}</span> {esc(cycle)}<b>{esc(c.proposal_id)}</b>'
            f' &mdash; <span class="ctitle">{esc(c.title)}</span></summary>{body}</details>')


# ================================================================================================ the page
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
h4{margin:10px 0 4px}
.box{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;overflow:auto}
.note,.warn{color:#9a6700}.empty{color:#57606a;font-style:italic}
.text{white-space:pre-wrap;word-break:break-word}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre.diff{background:#fff;border:1px solid #d0d7de;padding:8px;overflow:auto;max-height:520px}
pre.diff span{display:block;white-space:pre;min-height:1.4em}
.d-add{background:#dafbe1;color:#116329}.d-del{background:#ffebe9;color:#82071e}
.d-hunk{color:#0550ae;background:#ddf4ff}.d-meta{color:#57606a;font-weight:600}
table{border-collapse:collapse;margin:4px 0 8px}
.grid-table th,.grid-table td,.kv th,.kv td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
.grid-table th,.kv th{background:#f6f8fa;font-weight:600}
.badge{display:inline-block;padding:0 7px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.badge.v-good{background:#1a7f37}.badge.v-bad{background:#cf222e}.badge.v-failed{background:#bc4c00}
.badge.v-grey{background:#6e7781}.badge.v-pending{background:#0969da}.badge.v-invalid{background:#8250df}
.badge.v-unknown{background:#24292f}
.merged-tag{fill:#1a7f37;color:#1a7f37;font-weight:700}.best-tag{fill:#0969da;font-weight:600}
details.cand{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:6px 0;padding:4px 12px}
details.cand[open]{padding-bottom:12px}details.cand.selected{outline:3px solid #54aeff}
details.cand>summary{cursor:pointer;padding:4px 0}
section.part{border-top:1px dashed #d0d7de;margin-top:6px}
svg text{font:12px system-ui,sans-serif;fill:#1f2328}
svg .tick{fill:#57606a;font-size:11px}svg .axis{fill:#57606a}
.tree .edge{fill:none;stroke:#8c959f;stroke-width:1.5}
.tree .root rect{fill:#24292f}.tree .pid{font-weight:700}.tree .ttl{fill:#57606a}
.tree a{cursor:pointer}.tree a:hover text,.tree a.selected text{text-decoration:underline}
.tree .ring{fill:none;stroke:#1a7f37;stroke-width:2.5}
.dot{stroke:#fff;stroke-width:1.5}
.v-good{fill:#1a7f37;stroke:#1a7f37}.v-bad{fill:#cf222e;stroke:#cf222e}.v-failed{fill:#e16f24;stroke:#e16f24}
.v-grey{fill:#8c959f;stroke:#8c959f}.v-pending{fill:#0969da;stroke:#0969da}
.v-invalid{fill:#8250df;stroke:#8250df}.v-unknown{fill:#24292f;stroke:#24292f}
.vt-good{fill:#1a7f37}.vt-bad{fill:#cf222e}.vt-failed{fill:#bc4c00}.vt-grey{fill:#6e7781}
.vt-pending{fill:#0969da}.vt-invalid{fill:#8250df}.vt-unknown{fill:#24292f}
.chart .grid{stroke:#eaeef2}.chart .bar{stroke-width:2}.chart .best{fill:#24292f;stroke:#24292f}
.best-line{fill:none;stroke:#24292f;stroke-width:1.5}.star{fill:#1a7f37;font-size:14px}
.curve{fill:none;stroke-width:1.4}.curve.parent{stroke:#8c959f;stroke-dasharray:4 3}.curve.candidate{stroke:#0969da}
.legend span{margin-right:14px}.plots img{max-width:100%;border:1px solid #d0d7de;margin:4px 0}
button{font:inherit;padding:2px 10px;margin-right:6px}
""".strip()

SCRIPT = """
(function () {
  "use strict";
  var ANCHOR = /^cand-[0-9]+$/;
  function openCandidate(id, scroll) {
    if (!ANCHOR.test(id)) { return; }
    var el = document.getElementById(id);
    if (!el || el.tagName !== "DETAILS") { return; }
    el.open = true;
    var old = document.querySelectorAll(".selected");
    for (var i = 0; i < old.length; i++) { old[i].classList.remove("selected"); }
    el.classList.add("selected");
    var nodes = document.querySelectorAll("[data-target='" + id + "']");
    for (var j = 0; j < nodes.length; j++) { nodes[j].classList.add("selected"); }
    if (scroll) { el.scrollIntoView({block: "start"}); }
  }
  document.addEventListener("click", function (ev) {
    var link = ev.target.closest ? ev.target.closest("a[href^='#cand-']") : null;
    if (link) { openCandidate(link.getAttribute("href").slice(1), true); }
  });
  window.addEventListener("hashchange", function () { openCandidate(location.hash.slice(1), true); });
  function setAll(open) {
    var all = document.querySelectorAll("details.cand");
    for (var i = 0; i < all.length; i++) { all[i].open = open; }
  }
  document.getElementById("expand-all").addEventListener("click", function () { setAll(true); });
  document.getElementById("collapse-all").addEventListener("click", function () { setAll(false); });
  if (location.hash) { openCandidate(location.hash.slice(1), true); }
})();
""".strip()


def csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def head_html(title: str) -> str:
    policy = (f"default-src 'none'; img-src data:; style-src {csp_hash(STYLE)}; script-src {csp_hash(SCRIPT)}; "
              "base-uri 'none'; form-action 'none'")
    return (f'<head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{esc(policy)}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head>")


def summary_html(view: RunView) -> str:
    counts: dict[str, int] = {}
    for c in view.candidates:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    badges = " ".join(f'<span class="badge v-{verdict_class(v)}">{esc(v)} {n}</span>' for v, n in counts.items())
    s = view.summary or {}
    share = s.get("non_training_share")
    rows = [("run", esc(view.run_id or "unknown")), ("candidates", f"{len(view.candidates)} {badges}"),
            ("current best", f"{esc(view.best_key or BASE_KEY)} <code>{esc((view.best_commit or '')[:12])}</code>"),
            ("failures by stage", esc(", ".join(f"{k}: {v}" for k, v in (s.get("failures_by_stage") or {}).items())
                                      or "none")),
            ("time outside training", f"{num(share * 100, '.1f')} %" if is_number(share) else "&mdash;")]
    rows += [("task ladder" if line.startswith("task ladder") else line.split(":", 1)[0],
              f'<span class="text">{esc(line.split(": ", 1)[-1])}</span>')
             for line in ceiling_lines(s.get("ceiling"))]
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in view.notes)
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>{notes}'


FIDELITY_STAGES = {"trainability": "minus the trainability loss ratio (final / early)",
                   "first pair": "the gain of the first non-void selection pair",
                   "screen": "the short-budget screening pair's gain"}


def _dropped(value: object) -> str:
    return esc(fidelity.format_count(float(value))) if is_number(value) else num(value)


def fidelity_html(summary: Mapping[str, Any]) -> str:
    """The fidelity of the cheap stages (:mod:`evolver.judge.fidelity`): one row per stage, then its lines."""
    stages: dict[str, Any] = summary["stages"] if isinstance(summary.get("stages"), dict) else {}
    fraction = summary.get("keep_fraction")
    top = f"top {num(float(fraction) * 100, '.0f')} %" if is_number(fraction) else "top fraction"
    rows = []
    for name, what in FIDELITY_STAGES.items():
        e: dict[str, Any] = stages[name] if isinstance(stages.get(name), dict) else {}
        cut = "real kept flags" if name == "screen" else top
        rows.append(f'<tr data-stage="{esc(name)}"><td><b>{esc(name)}</b><br><span class="empty">{esc(what)}</span>'
                    f"</td><td>{num(e.get('candidates'), '.0f')}</td><td>{num(e.get('n'), '.0f')}</td>"
                    f"<td>{num(e.get('spearman'), '+.3f')}</td><td>{num(e.get('p_value'), '.3g')}</td>"
                    f"<td>{num(e.get('kept'), '.0f')} ({cut})</td><td>{_dropped(e.get('dropped_winners'))} of "
                    f"{num(e.get('winners'), '.0f')}</td></tr>")
    table = ('<table class="grid-table fidelity"><tr><th>cheap stage</th><th>with a value</th><th>judged (n)</th>'
             '<th>Spearman &rho;</th><th>p</th><th>kept</th><th>winners dropped</th></tr>' + "".join(rows) + "</table>")
    lines = "".join(f'<p class="text">{esc(line)}</p>' for line in fidelity.describe(summary))
    return table + lines


def legend_html() -> str:
    kinds = (("good", "merged / approved"), ("pending", "pending review"), ("bad", "rejected"),
             ("failed", "failed"), ("grey", "inconclusive / void"), ("invalid", "invalid"))
    return '<p class="legend">' + "".join(f'<span><span class="badge v-{k}">{esc(t)}</span></span>'
                                          for k, t in kinds) + " \u2605 = merged into the run branch</p>"


def plots_html(images: Mapping[str, Path]) -> str:
    out = []
    for name, path in images.items():
        p = Path(path)
        if p.suffix.lower() == ".png" and p.is_file():
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            out.append(f'<img alt="{esc(name)}" src="data:image/png;base64,{data}">')
    return "".join(out) or '<p class="empty">no plots</p>'


def render(view: RunView) -> str:
    """The whole page."""
    rows = best_rows(view)
    rule = rule_text(view)
    rule_part = (f'<p class="text">{esc(rule)}</p>' if rule else
                 '<p class="empty">no promotion rule stored (no candidate was judged)</p>')
    cands = "".join(candidate_html(c) for c in view.candidates) or '<p class="empty">no candidates</p>'
    title = f"hrm-evolve run {view.run_id or ''}".strip()
    return (
        f'<!DOCTYPE html><html lang="en">{head_html(title)}<body><main>'
        f"<h1>{esc(title)}</h1><div class=\"box\">{summary_html(view)}</div>"
        f'<h2 id="tree">Evolution tree</h2>{legend_html()}<div class="box">{tree_svg(view)}</div>'
        f'<h2 id="best">Best score per cycle</h2>'
        f"<p>Each cycle: the best (the candidate's parent) as measured beside the candidate (black), and the "
        f"candidate (its verdict's colour): mean held-out score over the cycle's non-void seed pairs with a "
        f"two-sided {CI_LEVEL:.0%} Student t interval over those seeds. The rule's one-sided bound on the gain is "
        f"the one stored with the verdict.</p>"
        f'<div class="box">{best_svg(rows)}{best_table(rows)}</div>'
        f'<h2 id="rule">Promotion rule</h2><div class="box">{rule_part}</div>'
        f'<h2 id="fidelity">Fidelity of the cheap stages</h2>'
        f"<p>How well each cheap stage ranked the candidates the way the full judgement's mean selection gain "
        f"later did: Spearman's rank correlation over the candidates judged in full, and the winners of the full "
        f"judgement a cut at that stage would have dropped.</p>"
        f'<div class="box">{fidelity_html(view.fidelity)}</div>'
        f'<h2 id="candidates">Candidates</h2><p><button id="expand-all" type="button">expand all</button>'
        f'<button id="collapse-all" type="button">collapse all</button></p>{cands}'
        f'<h2 id="plots">Plots</h2><div class="plots">{plots_html(view.images)}</div>'
        f"</main><script>{SCRIPT}</script></body></html>\n")


def write_html_report(path: Path, results: Sequence[Mapping[str, Any]], *, record: EvolutionRecord | None = None,
                      summary: dict[str, Any] | None = None, images: Mapping[str, Path] | None = None,
                      state_dir: Path | None = None) -> Path:
    """Write the page to ``path``. Without ``record`` the run's record is looked up in the repository that
    holds ``path`` and then in the working directory's; failing both the page is built from the results."""
    path = Path(path)
    own = record is None
    if own:
        record = locate_record(results, [path.parent, Path.cwd()])
    try:
        view = gather(results, record, state_dir=state_dir, summary=summary, images=images)
    finally:
        if own and record is not None:
            record.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(view), encoding="utf-8")
    return path
