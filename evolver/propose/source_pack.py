"""Real code in the request: the packer that fills the prompt's code budget with whole definitions of hrm/.

Every editable file is cut into definitions with `ast` (never executed): top-level functions, classes small
enough to show whole, and, for a larger class, its head (the class line, docstring and fields) and each of
its methods. The definitions are ranked, most relevant first:

1. the focus: symbols a look step asked for (evolver/propose/look.py), whole;
2. the task's preset builders: the builder `get_preset(task)` calls and every function of hrm/presets.py it
   calls, then the config dataclasses;
3. the model's forward path (`HRM.forward`, `HRMInner.forward`, the reasoning modules, blocks, attention);
4. the loss head (`ACTLossHead.forward` and the loss functions);
5. the optimiser step (`optimization_step`, the optimisers' `step`, how they are built, the LR schedule);
6. each of those followed one level into what it names (a function or class of hrm/ called by name, a method
   called on `self`);
7. the rest of hrm/, core files first.

`pack_source` takes them in that order while the budget holds (a definition that does not fit is skipped, a
smaller one after it may still fit; none is ever cut mid-body), and lists what was left out as a signature
map, most relevant first, cut at a line end when even the map does not fit. `SourcePack.core_missing` names
the core definitions (groups 2-5) that did not fit: the look-then-edit protocol starts when it is not empty.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edits.paths import DEFAULT_POLICY, PathPolicy
from evolver.propose.repo_summary import CORE_FILES, editable_files

TokenCounter = Callable[[str], int]
WHOLE_CLASS_CHARS = 2400  # a class up to this size is one definition; a larger one is cut into head + methods
MAP_SHARE = 0.2  # of the code budget, at most, reserved for the map of what is left out
FOCUS_MAP_SHARE = 0.05  # ... when the request is about named symbols (the edit step of look-then-edit)
LOOK_MAP_SHARE = 0.5  # ... when the request asks which symbols to read (the look step)

FORWARD_SEEDS = ("HRM.forward", "HRM.initial_carry", "HRMInner.forward", "HRMInner.__init__", "ReasoningModule.forward",
                 "HRMBlock.forward", "HRMBlock.__init__", "Attention.forward", "SwiGLU.forward", "rms_norm",
                 "HRMInner.input_embeddings", "HRMInner.reset_carry")
LOSS_SEEDS = ("ACTLossHead.forward", "ACTLossHead.__init__", "softmax_cross_entropy", "stablemax_cross_entropy",
              "log_stablemax", "stablemax_s")
OPTIMISER_SEEDS = ("optimization_step", "build_optimizers", "AdamATan2.step", "SignSGD.step",
                   "sparse_signsgd_update", "scheduled_lr_factor", "lr_factor", "build_learner")
CONFIG_SEEDS = ("ModelConfig", "TrainConfig", "RunConfig", "get_preset")


def _estimate(text: str) -> int:
    return -(-len(text) // 3)


@dataclass
class Unit:
    """One whole definition of an editable file."""

    file: str
    qualname: str  # "train", "HRMInner.forward", "HRMInner" (a whole class or a class head)
    kind: str  # "function" | "class" | "class-head" | "method"
    start: int  # first line (decorators included), 1-based
    end: int  # last line, inclusive
    text: str
    signature: str
    names: set[str] = field(default_factory=set)  # bare names it uses
    self_attrs: set[str] = field(default_factory=set)  # attributes it reads on `self`
    owner: str = ""  # the class of a method or head

    def render(self) -> str:
        where = f"# {self.file}:{self.start}-{self.end} {self.qualname}"
        if self.kind == "method":
            where += f" (method of class {self.owner})"
        elif self.kind == "class-head":
            where += " (class head; its methods are listed separately)"
        return where + "\n" + self.text


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef, qual: str) -> str:
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [p.arg for p in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{qual}({', '.join(names)}){returns}"


def _uses(node: ast.AST) -> tuple[set[str], set[str]]:
    names: set[str] = set()
    attrs: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
            attrs.add(sub.attr)
    return names, attrs


def _first_line(node: ast.AST) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno] + [d.lineno for d in decorators])  # type: ignore[attr-defined]


def index_file(root: Path, rel: str) -> list[Unit]:
    """The definitions of one file, in source order; [] when it does not parse."""
    try:
        source = (root / rel).read_text(encoding="utf-8")
        tree = ast.parse(source, filename=rel)
    except (OSError, UnicodeDecodeError, SyntaxError):
        return []
    lines = source.splitlines()

    def text(a: int, b: int) -> str:
        return "\n".join(lines[a - 1:b])

    units: list[Unit] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start, end = _first_line(node), node.end_lineno or node.lineno
            names, attrs = _uses(node)
            units.append(Unit(rel, node.name, "function", start, end, text(start, end),
                              _signature(node, node.name), names, attrs))
        elif isinstance(node, ast.ClassDef):
            start, end = _first_line(node), node.end_lineno or node.lineno
            whole = text(start, end)
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            sig = f"class {node.name}({bases})" if bases else f"class {node.name}"
            methods = [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
            if len(whole) <= WHOLE_CLASS_CHARS or not methods:
                names, attrs = _uses(node)
                units.append(Unit(rel, node.name, "class", start, end, whole, sig, names, attrs, node.name))
                continue
            head_end = _first_line(methods[0]) - 1
            while head_end > start and not lines[head_end - 1].strip():
                head_end -= 1
            head_nodes = [s for s in node.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
            names = set().union(*(_uses(s)[0] for s in head_nodes)) if head_nodes else set()
            names |= set().union(*(_uses(b)[0] for b in node.bases)) if node.bases else set()
            units.append(Unit(rel, node.name, "class-head", start, head_end, text(start, head_end), sig, names,
                              set(), node.name))
            for m in methods:
                m_start, m_end = _first_line(m), m.end_lineno or m.lineno
                qual = f"{node.name}.{m.name}"
                m_names, m_attrs = _uses(m)
                units.append(Unit(rel, qual, "method", m_start, m_end, text(m_start, m_end), _signature(m, qual),
                                  m_names, m_attrs, node.name))
    return units


@dataclass
class SourceIndex:
    """Every definition of the editable files, findable by qualified name."""

    units: list[Unit]

    @classmethod
    def build(cls, root: Path | str, files: Sequence[str] | None = None,
              policy: PathPolicy = DEFAULT_POLICY) -> SourceIndex:
        root = Path(root)
        rels = list(files) if files is not None else editable_files(root, policy)
        core = [f for f in CORE_FILES if f in rels]
        ordered = core + [f for f in rels if f not in core]
        return cls([u for rel in ordered for u in index_file(root, rel)])

    def find(self, name: str) -> list[Unit]:
        """Units for `name`: a qualified name ("HRMInner.forward"), a class (all its parts), a bare function or
        method name when it is unique, optionally prefixed by its file ("hrm/model.py:HRM.forward")."""
        file = ""
        if ":" in name:
            file, name = name.split(":", 1)
        name = name.strip().removesuffix("()")
        pool = [u for u in self.units if not file or u.file == file]
        exact = [u for u in pool if u.qualname == name]
        if exact:
            if exact[0].kind == "class-head":
                return [u for u in pool if u.owner == name and u.file == exact[0].file]
            return exact
        if "." in name:  # a method of a class shown whole
            owner = name.split(".")[0]
            whole = [u for u in pool if u.kind == "class" and u.qualname == owner]
            if whole:
                return whole
        tail = [u for u in pool if u.kind == "method" and u.qualname.split(".")[-1] == name]
        return tail if len(tail) == 1 else []

    def references(self, unit: Unit) -> list[Unit]:
        """What `unit` names, one level: functions and classes of hrm/ called by name (a class brings its head,
        `__init__` and `forward`), and methods of its own class read on `self`."""
        out: list[Unit] = []
        for name in sorted(unit.names):
            if name == unit.qualname:
                continue
            for u in self.units:
                if u.qualname == name and u.kind in ("function", "class", "class-head"):
                    out.append(u)
                if u.kind == "method" and u.owner == name and u.qualname.split(".")[-1] in ("__init__", "forward"):
                    out.append(u)
        if unit.owner:
            for attr in sorted(unit.self_attrs):
                out += [u for u in self.units if u.qualname == f"{unit.owner}.{attr}"]
        return out


@dataclass
class SourcePack:
    """What the packer put in the request."""

    text: str
    included: list[str]  # "file:qualname", in priority order
    omitted: list[str]
    core: list[str]  # the core definitions' "file:qualname"
    core_missing: list[str]
    budget_tokens: int
    tokens: int

    @property
    def core_complete(self) -> bool:
        return not self.core_missing


def _key(u: Unit) -> str:
    return f"{u.file}:{u.qualname}"


def rank_units(index: SourceIndex, root: Path, task: str, focus: Sequence[str] = ()) -> tuple[list[Unit], list[Unit]]:
    """(every unit, most relevant first; the core units)."""
    order: list[Unit] = []
    seen: set[str] = set()

    def add(units: Iterable[Unit]) -> list[Unit]:
        added = []
        for u in units:
            if _key(u) not in seen:
                seen.add(_key(u))
                order.append(u)
                added.append(u)
        return added

    for name in focus:
        add(index.find(name))
    builder = builder_for(root, task)
    presets = {u.qualname: u for u in index.units if u.file == "hrm/presets.py" and u.kind == "function"}
    chain: list[Unit] = []
    todo = [builder] if builder else []
    while todo:
        unit = presets.get(todo.pop(0))
        if unit is None or unit in chain:
            continue
        chain.append(unit)
        todo.extend(sorted(n for n in unit.names if n in presets and n != unit.qualname))
    core: list[Unit] = list(chain)
    add(chain)
    groups: list[list[Unit]] = [[]]
    for seeds in (CONFIG_SEEDS, FORWARD_SEEDS, LOSS_SEEDS, OPTIMISER_SEEDS):
        units = [u for name in seeds for u in index.find(name)]
        core += units
        groups.append(add(units))
    for group in [chain, *groups]:
        for u in group:
            add(index.references(u))
    add(index.units)
    unique = list({_key(u): u for u in core}.values())
    return order, unique


def builder_for(root: Path, task: str) -> str | None:
    """The name of the function hrm/presets.py maps `task` to (read statically)."""
    from evolver.propose.task_facts import resolve_preset  # local: task_facts reads the same files

    resolved = resolve_preset(root, task)
    if resolved.builder:
        return resolved.builder
    return None


def _render(units: Sequence[Unit]) -> str:
    by_file: dict[str, list[Unit]] = {}
    for u in units:
        by_file.setdefault(u.file, []).append(u)
    parts = []
    for rel, group in by_file.items():
        body = "\n\n".join(u.render() for u in sorted(group, key=lambda u: u.start))
        parts.append(f"### {rel}\n{body}")
    return "\n\n".join(parts)


def _map(units: Sequence[Unit]) -> list[str]:
    return [f"{u.file}:{u.start} {u.signature}" for u in units]


def _compact_map(units: Sequence[Unit]) -> list[str]:
    """One line per file (files in order of their most relevant unit): the qualified names left out."""
    by_file: dict[str, list[str]] = {}
    for u in units:
        names = by_file.setdefault(u.file, [])
        if u.qualname not in names:
            names.append(u.qualname)
    return [f"{rel}: {', '.join(names)}" for rel, names in by_file.items()]


def pack_source(root: Path | str, budget_tokens: int, *, task: str, count: TokenCounter | None = None,
                focus: Sequence[str] = (), index: SourceIndex | None = None,
                map_share: float = MAP_SHARE) -> SourcePack:
    """Whole definitions of hrm/, most relevant first, within `budget_tokens`; a map of the rest (it may take
    up to `map_share` of the budget ahead of the code; it fills whatever the code leaves in any case)."""
    root = Path(root)
    count = count or _estimate
    index = index or SourceIndex.build(root)
    order, core = rank_units(index, root, task, focus)
    budget = max(int(budget_tokens), 0)
    map_lines_all = _map(order)
    map_reserve = min(int(budget * map_share), count("\n".join(map_lines_all)) + 16)
    chosen: list[Unit] = []
    used = 0
    for u in order:
        cost = count(u.render()) + 4
        if used + cost <= budget - map_reserve:
            chosen.append(u)
            used += cost

    def assemble(kept: list[Unit]) -> str:
        kept_keys = {_key(u) for u in kept}
        left = [u for u in order if _key(u) not in kept_keys]
        code = _render(kept) if kept else "(no definition fits the budget)"
        if not left:
            return code
        head = "\n\n## Not shown above (signatures; ask for them by name)\n"
        room = budget - count(code + head)
        lines = _map(left)
        if count("\n".join(lines)) > room:  # not all signatures fit: every name, by file, instead
            head = "\n\n## Not shown above (names by file; ask for them by name)\n"
            room = budget - count(code + head)
            lines = _compact_map(left)
        listed = _fit_lines(lines, room, count)
        return code + head + listed if listed else code

    text = assemble(chosen)
    while chosen and count(text) > budget:
        chosen.pop()
        text = assemble(chosen)
    if count(text) > budget:  # not even the note and the first names fit: as many names as do
        text = _fit_lines(_compact_map(order), budget, count)
    included = [_key(u) for u in chosen]
    keys = set(included)
    return SourcePack(
        text=text, included=included, omitted=[_key(u) for u in order if _key(u) not in keys],
        core=[_key(u) for u in core], core_missing=[_key(u) for u in core if _key(u) not in keys],
        budget_tokens=budget, tokens=count(text),
    )


def _fit_lines(lines: list[str], room: int, count: TokenCounter) -> str:
    """The most lines (from the top) that fit `room` tokens, with a note of how many were left out."""
    if room <= 0 or not lines:
        return ""
    text = "\n".join(lines)
    if count(text) <= room:
        return text
    lo, hi = 0, len(lines)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count("\n".join(lines[:mid] + [f"... {len(lines) - mid} more"])) <= room:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return ""
    return "\n".join(lines[:lo] + [f"... {len(lines) - lo} more"])


def source_of(index: SourceIndex, names: Sequence[str]) -> tuple[list[Unit], list[str]]:
    """(the units named, whole; the names that match nothing) for a look step's list of symbols."""
    found: list[Unit] = []
    unknown: list[str] = []
    for name in names:
        units = index.find(name)
        if not units:
            unknown.append(name)
        for u in units:
            if u not in found:
                found.append(u)
    return found, unknown
