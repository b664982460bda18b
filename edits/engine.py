"""The patch engine: apply a proposal's edits with libcst, proving each one landed.

Every edit addresses code by qualified name ("rms_norm", "Block.forward", "Outer.Inner.method",
"ModelConfig.L_cycles") and must match exactly one node: zero matches is an error with "did you mean"
candidates, two or more is an error listing the line numbers. After each edit the file must re-parse,
`compile()` and differ from before (a no-op edit is an error). Edits are applied in order, per file in memory;
files are written only when every edit succeeded, so a failing proposal leaves the tree untouched.

Public API:
- `plan_edits(root, edits, policy) -> PatchResult` (nothing written; `.applied`, `.before`, `.after`, `.diff()`)
- `apply_edits(root, edits, policy, *, dry_run=False) -> list[AppliedEdit]`
- `unified_diff(before, after) -> str` (git-style, `git apply`-able)
- `AppliedEdit`, `EditError`
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import shutil
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libcst as cst
from libcst.helpers import get_full_name_for_node

from edits.language import (
    AddClass,
    AddFunction,
    AddImport,
    DeleteSymbol,
    Edit,
    ReplaceClass,
    ReplaceFunction,
    SearchReplace,
    SetValue,
)
from edits.paths import DEFAULT_POLICY, PathPolicy, PathRejected


@dataclass(frozen=True)
class AppliedEdit:
    """One edit that applied: its position in the proposal, what it did and how many lines it touched."""

    index: int
    op: str
    file: str
    target: str | None
    lines_changed: int


class EditError(Exception):
    """An edit that could not be applied; nothing was written.

    When several edits of a proposal fail, the error raised describes the first and lists every one in
    ``errors`` (each an EditError); its message names them all, so a proposer can fix them in one go.
    """

    def __init__(self, index: int, op: str, file: str, target: str | None, reason: str) -> None:
        self.index = index
        self.op = op
        self.file = file
        self.target = target
        self.reason = reason
        self.errors: list[EditError] = [self]
        super().__init__(self.describe())

    def describe(self) -> str:
        where = f" target {self.target!r}" if self.target else ""
        return f"edits[{self.index}] ({self.op}) in {self.file}{where}: {self.reason}"

    @classmethod
    def combine(cls, errors: Sequence[EditError]) -> EditError:
        first = errors[0]
        if len(errors) == 1:
            return first
        out = cls(first.index, first.op, first.file, first.target, first.reason)
        out.errors = list(errors)
        out.args = (f"{len(errors)} edits failed: " + "; ".join(e.describe() for e in errors),)
        return out


class _Failure(Exception):
    """Raised inside an op; turned into an EditError with the edit's coordinates."""


@dataclass
class PatchResult:
    applied: list[AppliedEdit]
    before: dict[str, str] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)

    def diff(self) -> str:
        return unified_diff(self.before, self.after)


# --------------------------------------------------------------------------------------------------------------
# Symbol index (ast: fast, line numbers) used for did-you-mean and ambiguity messages


@dataclass(frozen=True)
class _Symbol:
    qualname: str
    kind: str  # "function" | "class" | "assignment"
    line: int


class _SymbolCollector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.stack: list[tuple[str, str]] = []
        self.symbols: list[_Symbol] = []

    def _qual(self, name: str) -> str:
        return ".".join([n for n, _ in self.stack] + [name])

    def _scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, kind: str) -> None:
        self.symbols.append(_Symbol(self._qual(node.name), kind, node.lineno))
        self.stack.append((node.name, kind))
        self.generic_visit(node)
        self.stack.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scope(node, "function")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scope(node, "function")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scope(node, "class")

    def _assign(self, targets: list[ast.expr], line: int) -> None:
        if all(kind == "class" for _, kind in self.stack):
            for target in targets:
                if isinstance(target, ast.Name):
                    self.symbols.append(_Symbol(self._qual(target.id), "assignment", line))

    def visit_Assign(self, node: ast.Assign) -> None:
        self._assign(node.targets, node.lineno)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._assign([node.target], node.lineno)


def _symbols(text: str) -> list[_Symbol]:
    collector = _SymbolCollector()
    collector.visit(ast.parse(text))
    return collector.symbols


def _missing(text: str, target: str, kinds: tuple[str, ...], what: str) -> str:
    symbols = _symbols(text)
    other = sorted({s.kind for s in symbols if s.qualname == target and s.kind not in kinds})
    if other:
        hint = f"; use replace_{other[0]}" if other[0] in ("function", "class") and what != "symbol" else ""
        return f"{target!r} is a {other[0]}, not a {what}{hint}"
    names = sorted({s.qualname for s in symbols if s.kind in kinds})
    close = difflib.get_close_matches(target, names, n=3, cutoff=0.6)
    last = target.rsplit(".", 1)[-1]
    close += [n for n in names if n.rsplit(".", 1)[-1] == last and n not in close]
    if close:
        return f"no {what} named {target!r}; did you mean: {', '.join(close[:5])}?"
    shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    return f"no {what} named {target!r}; the file has: {shown or 'none'}"


def _ambiguous(text: str, target: str, kinds: tuple[str, ...], count: int) -> str:
    lines = sorted(s.line for s in _symbols(text) if s.qualname == target and s.kind in kinds)
    where = ", ".join(str(n) for n in lines) if lines else "?"
    return f"{target!r} matches {count} definitions (lines {where}); a target must match exactly one"


def _check_count(text: str, target: str, count: int, kinds: tuple[str, ...], what: str) -> None:
    if count == 0:
        raise _Failure(_missing(text, target, kinds, what))
    if count > 1:
        raise _Failure(_ambiguous(text, target, kinds, count))


# --------------------------------------------------------------------------------------------------------------
# libcst transformers with a name stack


class _Scoped(cst.CSTTransformer):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = []
        self.count = 0

    def path(self) -> str:
        return ".".join(n for n, _ in self.stack)

    def at_class_scope(self) -> bool:
        return all(kind == "class" for _, kind in self.stack)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.stack.append((node.name.value, "function"))
        return True

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> Any:
        qualname = self.path()
        self.stack.pop()
        return self.on_def(original_node, updated_node, qualname, "function")

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self.stack.append((node.name.value, "class"))
        return True

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> Any:
        qualname = self.path()
        self.stack.pop()
        return self.on_def(original_node, updated_node, qualname, "class")

    # Skip what no op looks inside: simple statements (leave_* still runs), parameters and decorators.
    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        return False

    def visit_Parameters(self, node: cst.Parameters) -> bool:
        return False

    def visit_Decorator(self, node: cst.Decorator) -> bool:
        return False

    def on_def(self, original: Any, updated: Any, qualname: str, kind: str) -> Any:
        return updated

    def qual(self, name: str) -> str:
        prefix = self.path()
        return f"{prefix}.{name}" if prefix else name


class _ReplaceDef(_Scoped):
    def __init__(self, target: str, kind: str, new_node: cst.FunctionDef | cst.ClassDef) -> None:
        super().__init__()
        self.target, self.kind, self.new_node = target, kind, new_node

    def on_def(self, original: Any, updated: Any, qualname: str, kind: str) -> Any:
        if qualname == self.target and kind == self.kind:
            self.count += 1
            return self.new_node.with_changes(leading_lines=original.leading_lines)
        return updated


class _InsertAfter(_Scoped):
    def __init__(self, anchor: str, new_node: cst.FunctionDef | cst.ClassDef, new_name: str) -> None:
        super().__init__()
        self.anchor, self.new_node, self.new_name = anchor, new_node, new_name
        self.new_qualname: str | None = None

    def on_def(self, original: Any, updated: Any, qualname: str, kind: str) -> Any:
        if qualname != self.anchor:
            return updated
        self.count += 1
        depth = len(self.stack)
        self.new_qualname = self.qual(self.new_name)
        node = self.new_node.with_changes(leading_lines=_blank_lines(1 if depth else 2, self.new_node))
        return cst.FlattenSentinel([updated, node])


def _assign_names(node: cst.BaseSmallStatement) -> list[str]:
    if isinstance(node, cst.Assign):
        return [t.target.value for t in node.targets if isinstance(t.target, cst.Name)]
    if isinstance(node, cst.AnnAssign) and isinstance(node.target, cst.Name):
        return [node.target.value]
    return []


class _SetValue(_Scoped):
    def __init__(self, scope: str, name: str, value: cst.BaseExpression) -> None:
        super().__init__()
        self.scope, self.name, self.value = scope, name, value

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        return self.at_class_scope()

    def visit_Assign(self, node: cst.Assign) -> bool:
        return False

    def visit_AnnAssign(self, node: cst.AnnAssign) -> bool:
        return False

    def _hit(self) -> bool:
        return self.at_class_scope() and self.path() == self.scope

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> cst.Assign:
        if self._hit() and self.name in _assign_names(original_node):
            self.count += 1
            return updated_node.with_changes(value=self.value)
        return updated_node

    def leave_AnnAssign(self, original_node: cst.AnnAssign, updated_node: cst.AnnAssign) -> cst.AnnAssign:
        if self._hit() and self.name in _assign_names(original_node):
            self.count += 1
            return updated_node.with_changes(value=self.value)
        return updated_node


class _Delete(_Scoped):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def on_def(self, original: Any, updated: Any, qualname: str, kind: str) -> Any:
        if qualname == self.target:
            self.count += 1
            return cst.RemoveFromParent()
        return updated

    def leave_SimpleStatementLine(
        self, original_node: cst.SimpleStatementLine, updated_node: cst.SimpleStatementLine
    ) -> Any:
        if not self.at_class_scope():
            return updated_node
        kept = []
        for stmt in updated_node.body:
            if any(self.qual(n) == self.target for n in _assign_names(stmt)):
                self.count += 1
            else:
                kept.append(stmt)
        if len(kept) == len(updated_node.body):
            return updated_node
        if not kept:
            return cst.RemoveFromParent()
        kept[-1] = kept[-1].with_changes(semicolon=cst.MaybeSentinel.DEFAULT)
        return updated_node.with_changes(body=kept)


# --------------------------------------------------------------------------------------------------------------
# Ops: each takes the current text and parsed module and returns new text


_Outcome = tuple[str, str | None, cst.Module | None]
"""(new text, target as applied, the new tree when the op built one; None means re-parse the text)"""


def _blank_lines(count: int, node: cst.FunctionDef | cst.ClassDef) -> list[cst.EmptyLine]:
    comments = [line for line in node.leading_lines if line.comment is not None]
    return [cst.EmptyLine(indent=False) for _ in range(count)] + comments


def _parse_def(code: str, module: cst.Module, kind: str, name: str | None) -> cst.FunctionDef | cst.ClassDef:
    source = textwrap.dedent(code).strip("\n") + "\n"
    source = source.replace("\r\n", "\n").replace("\n", module.default_newline)
    try:
        parsed = cst.parse_module(source, config=module.config_for_parsing)
    except cst.ParserSyntaxError as exc:
        raise _Failure(f"code does not parse: {exc.message} (line {exc.raw_line})") from None
    node_type = cst.FunctionDef if kind == "function" else cst.ClassDef
    defs = [s for s in parsed.body if isinstance(s, node_type)]
    others = [s for s in parsed.body if not isinstance(s, node_type)]
    if len(defs) != 1 or others:
        found = ", ".join(type(s).__name__ for s in parsed.body) or "nothing"
        raise _Failure(
            f"code must contain exactly one top-level {kind} definition and nothing else (found: {found})"
        )
    node = defs[0]
    if name is not None and node.name.value != name:
        raise _Failure(f"code defines {node.name.value!r} but the target's name is {name!r}")
    comments = [line for line in parsed.header if line.comment is not None]
    return node.with_changes(leading_lines=[*comments, *node.leading_lines])


def _op_replace(text: str, module: cst.Module, edit: ReplaceFunction | ReplaceClass) -> _Outcome:
    kind = "function" if isinstance(edit, ReplaceFunction) else "class"
    new_node = _parse_def(edit.code, module, kind, edit.target.rsplit(".", 1)[-1])
    transformer = _ReplaceDef(edit.target, kind, new_node)
    result = module.visit(transformer)
    _check_count(text, edit.target, transformer.count, (kind,), kind)
    return result.code, edit.target, result


def _op_add(text: str, module: cst.Module, edit: AddFunction | AddClass) -> _Outcome:
    kind = "function" if isinstance(edit, AddFunction) else "class"
    new_node = _parse_def(edit.code, module, kind, None)
    name = new_node.name.value
    if edit.after is None:
        qualname = name
        node = new_node.with_changes(leading_lines=_blank_lines(2, new_node))
        result = module.with_changes(body=[*module.body, node])
    else:
        transformer = _InsertAfter(edit.after, new_node, name)
        result = module.visit(transformer)
        _check_count(text, edit.after, transformer.count, ("function", "class"), "function or class")
        assert transformer.new_qualname is not None
        qualname = transformer.new_qualname
    existing = sorted(s.line for s in _symbols(text) if s.qualname == qualname)
    if existing:
        raise _Failure(f"{qualname!r} already exists (line {existing[0]}); use replace_{kind} to change it")
    return result.code, qualname, result


def _op_set_value(text: str, module: cst.Module, edit: SetValue) -> _Outcome:
    try:
        value = cst.parse_expression(edit.value.strip(), config=module.config_for_parsing)
    except cst.ParserSyntaxError as exc:
        raise _Failure(f"value is not a Python expression: {exc.message}") from None
    scope, _, name = edit.target.rpartition(".")
    transformer = _SetValue(scope, name, value)
    result = module.visit(transformer)
    _check_count(
        text, edit.target, transformer.count, ("assignment",), "module constant, class attribute or field"
    )
    return result.code, edit.target, result


def _op_delete(text: str, module: cst.Module, edit: DeleteSymbol) -> _Outcome:
    transformer = _Delete(edit.target)
    result = module.visit(transformer)
    _check_count(text, edit.target, transformer.count, ("function", "class", "assignment"), "symbol")
    return result.code, edit.target, result


def _import_text(edit: AddImport) -> str:
    alias = f" as {edit.alias}" if edit.alias else ""
    if edit.name is None:
        return f"import {edit.module}{alias}"
    return f"from {edit.module} import {edit.name}{alias}"


def _imports(small: cst.BaseSmallStatement) -> list[tuple[int, str, str | None, str | None]]:
    """(relative level, module, name or None, alias or None) for each binding an import statement makes."""
    out: list[tuple[int, str, str | None, str | None]] = []
    if isinstance(small, cst.Import):
        for alias in small.names:
            asname = (
                alias.asname.name.value if alias.asname and isinstance(alias.asname.name, cst.Name) else None
            )
            out.append((0, get_full_name_for_node(alias.name) or "", None, asname))
    elif isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
        module = get_full_name_for_node(small.module) if small.module is not None else ""
        for alias in small.names:
            asname = (
                alias.asname.name.value if alias.asname and isinstance(alias.asname.name, cst.Name) else None
            )
            out.append((len(small.relative), module or "", get_full_name_for_node(alias.name), asname))
    return out


def _is_import_line(stmt: cst.BaseStatement) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and all(
        isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body
    )


def _is_docstring(stmt: cst.BaseStatement) -> bool:
    return (
        isinstance(stmt, cst.SimpleStatementLine)
        and len(stmt.body) == 1
        and isinstance(stmt.body[0], cst.Expr)
        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
    )


def _op_add_import(text: str, module: cst.Module, edit: AddImport) -> _Outcome:
    relative = len(edit.module) - len(edit.module.lstrip("."))
    name = edit.module[relative:]
    if relative and edit.name is None:
        raise _Failure("a relative import needs a name: 'from .mod import name'")
    wanted = (relative, name, edit.name, edit.alias)
    for stmt in module.body:
        if isinstance(stmt, cst.SimpleStatementLine):
            if any(wanted in _imports(small) for small in stmt.body):
                raise _Failure(f"'{_import_text(edit)}' is already imported (no-op)")
    future = name == "__future__" and not relative
    insert_at = 0
    for i, stmt in enumerate(module.body):
        if i == 0 and _is_docstring(stmt):
            insert_at = 1
        elif _is_import_line(stmt):
            is_future = any(
                isinstance(s, cst.ImportFrom)
                and get_full_name_for_node(s.module or cst.Name("x")) == "__future__"
                for s in stmt.body  # type: ignore[union-attr]
            )
            if future and not is_future:
                break
            insert_at = i + 1
        else:
            break
    new_stmt = cst.parse_statement(
        _import_text(edit) + module.default_newline, config=module.config_for_parsing
    )
    result = module.with_changes(body=[*module.body[:insert_at], new_stmt, *module.body[insert_at:]])
    return result.code, _import_text(edit), result


def _leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _closest_snippet(text: str, search: str) -> str:
    lines = text.splitlines()
    want = [" ".join(line.split()) for line in search.strip("\n").splitlines()]
    size = max(1, len(want))
    target = "\n".join(want)
    best, best_at = 0.0, 0
    for start in range(max(1, len(lines) - size + 1)):
        window = "\n".join(" ".join(line.split()) for line in lines[start : start + size])
        ratio = difflib.SequenceMatcher(None, target, window).ratio()
        if ratio > best:
            best, best_at = ratio, start
    snippet = "\n".join(
        f"    {best_at + i + 1:4d}| {line}" for i, line in enumerate(lines[best_at : best_at + size])
    )
    return f"closest text (similarity {best:.2f}):\n{snippet}"


def _op_search_replace(text: str, module: cst.Module, edit: SearchReplace) -> _Outcome:
    search, replace = edit.search, edit.replace
    count = text.count(search)
    if count == 1:
        return text.replace(search, replace, 1), None, None
    if count > 1:
        lines, pos = [], text.find(search)
        while pos != -1:
            lines.append(_line_of(text, pos))
            pos = text.find(search, pos + 1)
        raise _Failure(
            f"search text occurs {count} times (lines {', '.join(map(str, lines))}); it must occur once"
        )
    tokens = search.split()
    if not tokens:
        raise _Failure("search text is only whitespace")
    pattern = re.compile(r"\s+".join(re.escape(t) for t in tokens))
    matches = list(pattern.finditer(text))
    if len(matches) > 1:
        where = ", ".join(str(_line_of(text, m.start())) for m in matches)
        raise _Failure(
            f"search text matches {len(matches)} places ignoring whitespace (lines {where}); it must match once"
        )
    if not matches:
        raise _Failure(
            "search text not found (exactly or ignoring whitespace); " + _closest_snippet(text, search)
        )
    match = matches[0]
    line_start = text.rfind("\n", 0, match.start()) + 1
    base_indent = _leading_ws(text[line_start:])  # indentation of the line where the match begins
    body = textwrap.dedent(replace.strip("\n")).splitlines()
    newline = module.default_newline
    rendered = newline.join(
        line if i == 0 or not line.strip() else base_indent + line for i, line in enumerate(body)
    )
    return text[: match.start()] + rendered + text[match.end() :], None, None


def _apply_one(text: str, module: cst.Module, edit: Edit) -> _Outcome:
    if isinstance(edit, (ReplaceFunction, ReplaceClass)):
        return _op_replace(text, module, edit)
    if isinstance(edit, (AddFunction, AddClass)):
        return _op_add(text, module, edit)
    if isinstance(edit, SetValue):
        return _op_set_value(text, module, edit)
    if isinstance(edit, DeleteSymbol):
        return _op_delete(text, module, edit)
    if isinstance(edit, AddImport):
        return _op_add_import(text, module, edit)
    if isinstance(edit, SearchReplace):
        return _op_search_replace(text, module, edit)
    raise _Failure(f"unknown edit type {type(edit).__name__}")


# --------------------------------------------------------------------------------------------------------------
# Validation, diff, driver


def _parse(text: str) -> cst.Module:
    try:
        module = cst.parse_module(text)
    except cst.ParserSyntaxError as exc:
        raise _Failure(f"result does not parse: {exc.message} (line {exc.raw_line})") from None
    if module.code != text:
        raise _Failure("result does not round-trip through libcst")
    return module


def _compile(text: str, filename: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(text, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        line = (exc.text or "").rstrip()
        raise _Failure(f"result does not compile: {exc.msg} (line {exc.lineno}: {line!r})") from None


def _count_changed(before: str, after: str) -> int:
    matcher = difflib.SequenceMatcher(None, before.splitlines(), after.splitlines(), autojunk=False)
    return sum(i2 - i1 + j2 - j1 for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")


def _diff_lines(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n\\ No newline at end of file\n")
    return out


def unified_diff(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """A git-style unified diff of every path whose text differs (`git apply` accepts it)."""
    chunks = []
    for path in dict.fromkeys([*before, *after]):
        old, new = before.get(path, ""), after.get(path, "")
        if old == new:
            continue
        body = difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
        )
        chunks.append(f"diff --git a/{path} b/{path}\n" + "".join(_diff_lines(list(body))))
    return "".join(chunks)


def _edit_target(edit: Edit) -> str | None:
    if isinstance(edit, AddImport):
        return _import_text(edit)
    if isinstance(edit, SearchReplace):
        first = edit.search.strip().splitlines()[0] if edit.search.strip() else ""
        return first[:60]
    if isinstance(edit, (AddFunction, AddClass)):
        return edit.after
    return getattr(edit, "target", None)


def plan_edits(root: Path, edits: Sequence[Edit], policy: PathPolicy = DEFAULT_POLICY) -> PatchResult:
    """Apply `edits` in memory and return the before/after texts.

    Every edit is tried: one that fails is left out (later edits of its file see the text without it) and
    recorded; when any failed, an `EditError` listing all of them is raised and nothing is returned.
    """
    root = Path(root)
    before: dict[str, str] = {}
    after: dict[str, str] = {}
    modules: dict[str, cst.Module] = {}
    unreadable: dict[str, str] = {}
    applied: list[AppliedEdit] = []
    errors: list[EditError] = []
    for index, edit in enumerate(edits):
        rel = edit.file

        def fail(reason: str, edit: Edit = edit, index: int = index) -> EditError:
            return EditError(index, edit.op, edit.file, _edit_target(edit), reason)

        if rel in unreadable:
            errors.append(fail(unreadable[rel]))
            continue
        if rel not in after:
            reason = _open_problem(root, rel, policy, before, after, modules)
            if reason:
                unreadable[rel] = reason
                errors.append(fail(reason))
                continue
        text = after[rel]
        try:
            new_text, target, new_module = _apply_one(text, modules[rel], edit)
            if new_text == text:
                raise _Failure("edit leaves the file unchanged (no-op)")
            _compile(new_text, rel)
            new_module = new_module if new_module is not None else _parse(new_text)
        except _Failure as exc:
            errors.append(fail(str(exc)))
            continue
        modules[rel] = new_module
        after[rel] = new_text
        applied.append(AppliedEdit(index, edit.op, rel, target, _count_changed(text, new_text)))
    for rel in after:
        mine = [a.index for a in applied if a.file == rel]
        if not mine:
            continue
        last = max(mine)
        try:
            if after[rel] == before[rel]:
                raise _Failure("the file's edits cancel out (no net change)")
            _parse(after[rel])  # the final text must re-parse and round-trip, whatever built it
        except _Failure as exc:
            errors.append(EditError(last, edits[last].op, rel, _edit_target(edits[last]), str(exc)))
    if errors:
        raise EditError.combine(sorted(errors, key=lambda e: e.index))
    return PatchResult(applied, before, after)


def _open_problem(root: Path, rel: str, policy: PathPolicy, before: dict[str, str], after: dict[str, str],
                  modules: dict[str, cst.Module]) -> str | None:
    """Load ``rel`` into the working maps; return why it cannot be edited, or None."""
    try:
        path = policy.check(root, rel)
    except PathRejected as exc:
        return f"path rejected: {exc.reason}"
    if path.suffix != ".py":
        return "only Python files can be edited"
    if not path.is_file():
        return "file does not exist"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"file is not UTF-8: {exc}"
    try:
        modules[rel] = cst.parse_module(text)
    except cst.ParserSyntaxError as exc:
        return f"file does not parse before editing: {exc.message}"
    before[rel] = after[rel] = text
    return None


def _write_all(root: Path, texts: Mapping[str, str]) -> None:
    staged: list[tuple[Path, Path]] = []
    try:
        for rel, text in texts.items():
            path = Path(root).resolve() / rel
            tmp = path.with_name(f".{path.name}.hrm-evolve.tmp")
            tmp.write_bytes(text.encode("utf-8"))
            shutil.copymode(path, tmp)
            staged.append((tmp, path))
    except OSError:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)


def apply_edits(
    root: Path, edits: Sequence[Edit], policy: PathPolicy = DEFAULT_POLICY, *, dry_run: bool = False
) -> list[AppliedEdit]:
    """Apply `edits` to files under `root`; write nothing unless every edit succeeds (or when `dry_run`)."""
    result = plan_edits(root, edits, policy)
    if not dry_run:
        _write_all(root, result.after)
    return result.applied
