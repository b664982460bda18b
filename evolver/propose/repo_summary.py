"""A compact map of the editable code for the proposal prompt, built with libcst.

Per file: classes (dataclass fields with their defaults), functions and methods with signatures, and the
first line of each docstring; module constants. The map must fit a token budget (about 4 characters per
token): detail is dropped least-important first (private helpers, then docstrings, then method
signatures, then whole files from the end) until it fits. The header carries the current best score and
what was already tried with its verdict, so the model does not repeat failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst

from edits.paths import DEFAULT_POLICY, PathPolicy
from evolver.propose.prompt import HistoryItem

CHARS_PER_TOKEN = 4
KEEP_DUNDERS = {"__init__", "__call__"}


def estimate_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


@dataclass
class Symbol:
    kind: str  # "class", "function", "method", "field", "constant"
    name: str
    signature: str = ""
    doc: str = ""
    children: list[Symbol] = field(default_factory=list)

    @property
    def private(self) -> bool:
        return self.name.startswith("_") and self.name not in KEEP_DUNDERS


@dataclass
class FileMap:
    path: str  # repo-relative posix
    doc: str
    symbols: list[Symbol]
    error: str = ""


def _first_doc_line(body: cst.BaseSuite | cst.Module) -> str:
    statements = body.body if isinstance(body, (cst.Module, cst.IndentedBlock)) else []
    if not statements:
        return ""
    first = statements[0]
    if isinstance(first, cst.SimpleStatementLine) and first.body and isinstance(first.body[0], cst.Expr):
        value = first.body[0].value
        if isinstance(value, (cst.SimpleString, cst.ConcatenatedString)):
            text = value.evaluated_value
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            for line in (text or "").strip().splitlines():
                if line.strip():
                    return line.strip()
    return ""


def _code(module: cst.Module, node: cst.CSTNode) -> str:
    return " ".join(module.code_for_node(node).split())


def _signature(module: cst.Module, node: cst.FunctionDef) -> str:
    params = _code(module, node.params)
    returns = f" -> {_code(module, node.returns.annotation)}" if node.returns else ""
    prefix = "async def" if node.asynchronous else "def"
    return f"{prefix} {node.name.value}({params}){returns}"


def _is_dataclass(node: cst.ClassDef) -> bool:
    for decorator in node.decorators:
        target = decorator.decorator
        if isinstance(target, cst.Call):
            target = target.func
        name = target.attr.value if isinstance(target, cst.Attribute) else getattr(target, "value", "")
        if name == "dataclass":
            return True
    return False


def _assign_symbols(module: cst.Module, statement: cst.SimpleStatementLine, kind: str) -> list[Symbol]:
    found: list[Symbol] = []
    comment = statement.trailing_whitespace.comment
    note = comment.value.lstrip("#").strip() if comment is not None else ""
    for small in statement.body:
        if isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
            value = f" = {_code(module, small.value)}" if small.value is not None else ""
            annotation = _code(module, small.annotation.annotation)
            found.append(Symbol(kind, small.target.value, f"{small.target.value}: {annotation}{value}", note))
        elif isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name):
            name = small.targets[0].target.value
            found.append(Symbol(kind, name, f"{name} = {_code(module, small.value)}", note))
    return found


def _class_symbol(module: cst.Module, node: cst.ClassDef) -> Symbol:
    bases = ", ".join(_code(module, arg) for arg in node.bases)
    decorators = "@dataclass " if _is_dataclass(node) else ""
    symbol = Symbol("class", node.name.value, f"{decorators}class {node.name.value}({bases})" if bases else f"{decorators}class {node.name.value}", _first_doc_line(node.body))
    fields_allowed = _is_dataclass(node)
    body = node.body.body if isinstance(node.body, cst.IndentedBlock) else []
    for statement in body:
        if isinstance(statement, cst.FunctionDef):
            symbol.children.append(Symbol("method", statement.name.value, _signature(module, statement), _first_doc_line(statement.body)))
        elif isinstance(statement, cst.SimpleStatementLine):
            for child in _assign_symbols(module, statement, "field"):
                if fields_allowed or child.name.isupper():
                    symbol.children.append(child)
    return symbol


def map_file(root: Path, rel: str) -> FileMap:
    try:
        module = cst.parse_module((root / rel).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, cst.ParserSyntaxError) as exc:
        return FileMap(rel, "", [], error=f"could not parse: {type(exc).__name__}")
    symbols: list[Symbol] = []
    for statement in module.body:
        if isinstance(statement, cst.ClassDef):
            symbols.append(_class_symbol(module, statement))
        elif isinstance(statement, cst.FunctionDef):
            symbols.append(Symbol("function", statement.name.value, _signature(module, statement), _first_doc_line(statement.body)))
        elif isinstance(statement, cst.SimpleStatementLine):
            symbols.extend(s for s in _assign_symbols(module, statement, "constant") if s.name.isupper())
    return FileMap(rel, _first_doc_line(module), symbols)


def editable_files(root: Path, policy: PathPolicy = DEFAULT_POLICY) -> list[str]:
    """Repo-relative .py files under the allowed prefixes that the policy lets a proposal edit."""
    root = Path(root)
    found: set[str] = set()
    for prefix in policy.allowed:
        base = root / prefix
        candidates = base.rglob("*.py") if base.is_dir() else ([base] if base.is_file() else [])
        for path in candidates:
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root).as_posix()
            if policy.reason(root, rel) is None:
                found.add(rel)
    return sorted(found)


@dataclass(frozen=True)
class Detail:
    """How much to render; each step down drops the least important remaining detail."""

    private: bool = True
    docs: bool = True
    method_signatures: bool = True


LEVELS = (
    Detail(),
    Detail(private=False),
    Detail(private=False, docs=False),
    Detail(private=False, docs=False, method_signatures=False),
)


def render_file(file_map: FileMap, detail: Detail) -> str:
    head = f"## {file_map.path}"
    if detail.docs and file_map.doc:
        head += f" -- {file_map.doc}"
    lines = [head]
    if file_map.error:
        lines.append(f"  ({file_map.error})")
    for symbol in file_map.symbols:
        if symbol.private and not detail.private:
            continue
        doc = f"  # {symbol.doc}" if detail.docs and symbol.doc else ""
        lines.append(f"  {symbol.signature}{doc}")
        for child in symbol.children:
            if child.private and not detail.private:
                continue
            if child.kind == "method" and not detail.method_signatures:
                lines.append(f"    def {child.name}(...)")
                continue
            child_doc = f"  # {child.doc}" if detail.docs and child.doc else ""
            lines.append(f"    {child.signature}{child_doc}")
    return "\n".join(lines)


def render_header(best_score: float | None, tried: Sequence[HistoryItem], max_tried: int | None = None) -> str:
    score = "none yet (baseline pending)" if best_score is None else f"{best_score:.4f}"
    lines = [f"Current best score: {score}"]
    if tried:
        shown = list(tried) if max_tried is None else list(tried)[-max_tried:]
        skipped = len(tried) - len(shown)
        lines.append(f"Already tried ({len(tried)}{f', oldest {skipped} omitted' if skipped else ''}):")
        lines.extend(item.line() for item in shown)
    else:
        lines.append("Already tried: nothing yet")
    return "\n".join(lines)


def build_repo_summary(
    root: Path | str,
    *,
    policy: PathPolicy = DEFAULT_POLICY,
    budget_tokens: int = 2000,
    best_score: float | None = None,
    tried: Sequence[HistoryItem] = (),
    files: Sequence[str] | None = None,
) -> str:
    """The map of editable code plus score and history, within `budget_tokens` (approximate)."""
    root = Path(root)
    rels = list(files) if files is not None else editable_files(root, policy)
    maps = [map_file(root, rel) for rel in rels]

    header = render_header(best_score, tried)
    if estimate_tokens(header) > budget_tokens // 3:  # keep history from crowding out the code map
        for keep in (20, 10, 5, 2, 0):
            header = render_header(best_score, tried, max_tried=keep)
            if estimate_tokens(header) <= budget_tokens // 3:
                break
    for detail in LEVELS:
        text = "\n\n".join([header, *(render_file(m, detail) for m in maps)])
        if estimate_tokens(text) <= budget_tokens:
            return text
    # Still too long: drop whole files, least important first, then truncate.
    order = sorted(range(len(maps)), key=lambda i: (_importance(maps[i].path), -i))
    kept_idx = set(range(len(maps)))
    dropped: list[str] = []
    for index in order:
        kept_idx.discard(index)
        dropped.append(maps[index].path)
        note = f"\n\n(omitted for space: {', '.join(sorted(dropped))})"
        text = "\n\n".join([header, *(render_file(maps[i], LEVELS[-1]) for i in sorted(kept_idx))]) + note
        if estimate_tokens(text) <= budget_tokens:
            return text
    limit = budget_tokens * CHARS_PER_TOKEN
    return header[: max(0, limit - 20)] + "\n...[truncated]"


CORE_FILES = ("hrm/model.py", "hrm/config.py", "hrm/presets.py", "hrm/losses.py", "hrm/layers.py", "hrm/train.py")


def _importance(rel: str) -> int:
    """Lower drops first: unknown files, then the core files from the end of CORE_FILES."""
    return len(CORE_FILES) - CORE_FILES.index(rel) if rel in CORE_FILES else 0
