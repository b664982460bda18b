"""The engine's parts import one way (evolver/__init__.py): a test that reads every module's imports and fails
on any import against the order, and on any circle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOOR0 = "floor0"
# What each part may import, besides itself and the packages outside evolver/.
ALLOWED = {
    FLOOR0: set(),
    "propose": {FLOOR0},
    "record": {FLOOR0},
    "execute": {FLOOR0},
    "judge": {FLOOR0, "record"},
    "run": {FLOOR0, "propose", "record", "execute", "judge"},
    "ui": {FLOOR0, "propose", "record", "execute", "judge", "run"},
}
# hrm/ is evolvable and runs only in a sandbox: no trusted package imports it at module level, and hrm imports
# none of the engine.
ENGINE = ("evolver", "edits", "proposals", "sandbox", "smoketests", "puzzles")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    pieces = module.split(".")
    if len(pieces) >= 2 and pieces[1] in ALLOWED:
        return pieces[1]
    return FLOOR0


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module this file imports (absolute and relative), with its line, at any depth of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            # `from evolver.judge import fidelity` imports a module too
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def engine_modules() -> list[Path]:
    return sorted((ROOT / "evolver").rglob("*.py"))


def known(name: str) -> str | None:
    """The evolver module `name` names (a module or package of the tree), or None."""
    pieces = name.split(".")
    while pieces:
        path = ROOT.joinpath(*pieces)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(pieces)
        pieces.pop()
    return None


def test_every_part_imports_only_the_parts_below_it() -> None:
    wrong = []
    for path in engine_modules():
        me = module_name(path)
        mine = part_of(me)
        for line, name in imports_of(path):
            if not name.startswith("evolver.") and name != "evolver":
                continue
            target = known(name)
            if target is None or target == "evolver":
                continue
            theirs = part_of(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {target} ({theirs})")
    assert not wrong, "imports against the order of evolver/__init__.py:\n" + "\n".join(wrong)


def test_no_circle_between_trusted_modules() -> None:
    graph: dict[str, set[str]] = {}
    for path in sorted(p for package in ENGINE for p in (ROOT / package).rglob("*.py")):
        me = module_name(path)
        graph[me] = {t for _, n in imports_of(path) if n.split(".")[0] in ENGINE
                     for t in [known(n)] if t and t != me and not (ROOT.joinpath(*t.split(".")) / "__init__.py").is_file()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, "circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_evolvable_code_imports_none_of_the_engine() -> None:
    wrong = [f"{p.relative_to(ROOT)}:{line}: {name}" for p in sorted((ROOT / "hrm").rglob("*.py"))
             for line, name in imports_of(p) if name.split(".")[0] in ENGINE and name.split(".")[0] != "puzzles"]
    assert not wrong, "hrm/ imports the engine:\n" + "\n".join(wrong)


def test_the_checker_sees_a_planted_violation(tmp_path: Path) -> None:
    """The order test can fail: an execute module importing the judge is reported."""
    planted = ROOT / "evolver" / "execute" / "_planted_for_test.py"
    planted.write_text("from evolver.judge.pairs import SideRun\n")
    try:
        try:
            test_every_part_imports_only_the_parts_below_it()
        except AssertionError as exc:
            assert "_planted_for_test.py:1: execute imports evolver.judge.pairs" in str(exc)
        else:
            raise AssertionError("the planted import was not found")
    finally:
        planted.unlink()
