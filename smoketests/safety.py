"""Stage 1, safety: an allowlist AST gate over the candidate's changed files, plus protected-file hashes.

This is a lint that rejects candidates early and says why (each finding as file:line). It is NOT the
security boundary: Python is too dynamic for a static check to be complete (aliases through containers,
computed attribute names, resource exhaustion...). The sandbox the stage runs in (read-only mounts, no
network, limits enforced by the host) is the boundary.

Rules, decided here:
- imports: only modules whose top-level package is in ALLOWED_MODULES, never a module in BANNED_MODULES,
  relative imports only inside `hrm/`;
- no eval/exec/compile/__import__/globals/vars/breakpoint/exit/quit; getattr/setattr/delattr/hasattr never
  with a literal dunder name; setattr/delattr only with a literal name. A computed getattr is tolerated
  (dataclass fields, dtype names from the config are everyday code): a name built at run time could still
  reach a dunder, one of the gaps that make this a lint;
- no dunder attribute access except the harmless ones in SAFE_DUNDERS, no dunder escape strings;
- dangerous members of allowed modules are banned (os.system, os.fork, sys.modules, torch.hub, ...), also
  through simple aliases (`x = torch.serialization`);
- torch.load only with a literal `weights_only=True`; numpy.load never with allow_pickle;
- open(): the mode must be a literal; writing is allowed (the trainer writes its metrics and checkpoint,
  and the sandbox makes /out the only writable place) except to a literal absolute path outside /out, /tmp;
- files that Python runs on start-up or loads as native code (sitecustomize.py, *.pth, *.so) may not change;
  changed Python files must live under hrm/;
- every protected file hashes to the value the host recorded from the PARENT commit.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from smoketests.result import StageFailure

MANIFEST_VERSION = 1

ALLOWED_MODULES = frozenset(
    {
        "__future__", "abc", "argparse", "bisect", "hashlib", "resource", "shutil", "signal", "threading", "collections", "contextlib", "copy", "dataclasses", "datetime",
        "enum", "functools", "heapq", "itertools", "json", "logging", "math", "numbers", "operator",
        "os", "pathlib", "random", "re", "statistics", "string", "sys", "tempfile", "textwrap", "time",
        "types", "typing", "typing_extensions", "warnings", "numpy", "torch", "rich", "hrm",
        "flash_attn", "flash_attn_interface",
    }
)
BANNED_MODULES = frozenset(
    {
        "torch.hub", "torch.utils.cpp_extension", "torch.distributed", "torch.multiprocessing",
        "torch.package", "torch._C", "torch.utils.data.datapipes", "numpy.ctypeslib", "numpy.distutils",
        "numpy.f2py",
    }
)
# Dotted names (after alias resolution) that may not be referenced at all.
BANNED_MEMBERS = frozenset(
    {
        "os.system", "os.popen", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.posix_spawn",
        "os.posix_spawnp", "os._exit", "os.setuid", "os.setgid", "os.seteuid", "os.setegid", "os.chroot",
        "os.chmod", "os.chown", "os.symlink", "os.link", "os.putenv", "os.unsetenv", "os.environ.update",
        "sys.modules", "sys.path", "sys.meta_path", "sys.path_hooks", "sys.path_importer_cache",
        "sys.settrace", "sys.setprofile", "sys._getframe", "sys.exit", "sys.addaudithook",
        "torch.ops.load_library", "torch.classes.load_library", "torch.jit.load", "torch.library",
        "types.CodeType", "types.FunctionType", "types.ModuleType",
        "numpy.lib.format.read_array", "resource.setrlimit", "resource.prlimit", "signal.alarm",
        "signal.setitimer", "signal.pthread_kill", "shutil.chown",
    }
)
BANNED_PREFIXES = ("os.exec", "os.spawn", "os.wait", "torch.hub", "torch.utils.cpp_extension")
BANNED_BUILTINS = frozenset(
    {"eval", "exec", "compile", "__import__", "globals", "vars", "breakpoint", "exit", "quit", "locals"}
)
SAFE_DUNDERS = frozenset(
    {
        "__init__", "__name__", "__qualname__", "__doc__", "__module__", "__version__", "__post_init__",
        "__len__", "__iter__", "__next__", "__getitem__", "__setitem__", "__contains__", "__enter__",
        "__exit__", "__repr__", "__str__", "__eq__", "__hash__", "__call__", "__annotations__",
        "__dataclass_fields__", "__all__", "__file__",
    }
)
ESCAPE_STRINGS = (
    "__class__", "__bases__", "__base__", "__mro__", "__subclasses__", "__globals__", "__builtins__",
    "__code__", "__closure__", "__getattribute__", "__reduce__", "__reduce_ex__", "__import__",
    "__loader__", "__spec__", "__self__", "__func__", "__defaults__", "__kwdefaults__", "__traceback__",
    "__frame__", "f_globals", "f_back", "gi_frame", "tb_frame", "co_code",
)
STARTUP_FILES = ("sitecustomize.py", "usercustomize.py")
NATIVE_SUFFIXES = (".so", ".pyd", ".dll", ".dylib", ".pth", ".pyc")
WRITABLE_ROOTS = ("/out", "/tmp")
WRITE_MODE_CHARS = set("wax+")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a chain of Name/Attribute nodes, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _banned_name(full: str) -> str | None:
    for banned in BANNED_MEMBERS | BANNED_MODULES:
        if full == banned or full.startswith(banned + "."):
            return banned
    for prefix in BANNED_PREFIXES:
        if full.startswith(prefix):
            return prefix + "*"
    return None


class _Checker(ast.NodeVisitor):
    def __init__(self, rel_path: str, source: str) -> None:
        self.path = rel_path
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}
        parts = PurePosixPath(rel_path).parts
        # depth of the file's package inside hrm/: hrm/x.py -> 1, hrm/data/x.py -> 2
        self.package_depth = len(parts) - 1 if parts and parts[0] == "hrm" else 0
        self.source = source

    def flag(self, node: ast.AST, message: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), message))

    # ---- alias bookkeeping (first pass) ----
    def collect_aliases(self, tree: ast.AST) -> None:
        for _ in range(3):  # a few rounds reach aliases of aliases
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.asname:
                            self.aliases[alias.asname] = alias.name
                        else:
                            root = alias.name.split(".")[0]
                            self.aliases.setdefault(root, root)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    for alias in node.names:
                        self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if node.value is None or len(targets) != 1 or not isinstance(targets[0], ast.Name):
                        continue
                    resolved = self.resolve(node.value)
                    if resolved and resolved.split(".")[0] in ALLOWED_MODULES - {"hrm"}:
                        self.aliases[targets[0].id] = resolved

    def resolve(self, node: ast.AST) -> str | None:
        dotted = _dotted(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if head not in self.aliases:
            return None
        base = self.aliases[head]
        return f"{base}.{rest}" if rest else base

    # ---- imports ----
    def _check_module(self, node: ast.AST, module: str) -> None:
        root = module.split(".")[0]
        if root not in ALLOWED_MODULES:
            self.flag(node, f"import of '{module}' (module not in the allowlist)")
            return
        banned = _banned_name(module)
        if banned:
            self.flag(node, f"import of '{module}' (banned: {banned})")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            if node.level > self.package_depth:
                self.flag(node, f"relative import reaching outside hrm/ (level {node.level})")
            self.generic_visit(node)
            return
        module = node.module or ""
        self._check_module(node, module)
        for alias in node.names:
            if alias.name == "*":
                self.flag(node, f"star import from '{module}'")
                continue
            full = f"{module}.{alias.name}"
            banned = _banned_name(full)
            if banned:
                self.flag(node, f"import of '{full}' (banned: {banned})")
            elif full in {"torch.load", "numpy.load"}:
                self.flag(node, f"'from {module} import {alias.name}': call {full} through its module")
            elif _is_dunder(alias.name) and alias.name not in SAFE_DUNDERS:
                self.flag(node, f"import of dunder '{full}'")
        self.generic_visit(node)

    # ---- names, attributes, strings ----
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in BANNED_BUILTINS:
            self.flag(node, f"use of builtin '{node.id}'")
        elif _is_dunder(node.id) and node.id not in SAFE_DUNDERS:
            self.flag(node, f"use of dunder name '{node.id}'")
        if isinstance(node.ctx, ast.Load):
            resolved = self.resolve(node)
            banned = _banned_name(resolved) if resolved else None
            if banned:
                self.flag(node, f"reference to '{resolved}' (banned: {banned})")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _is_dunder(node.attr) and node.attr not in SAFE_DUNDERS:
            self.flag(node, f"dunder attribute access '.{node.attr}'")
        elif node.attr.startswith(("f_", "gi_", "tb_", "co_", "cr_")) and node.attr in ESCAPE_STRINGS:
            self.flag(node, f"frame/code attribute access '.{node.attr}'")
        resolved = self.resolve(node)
        if resolved:
            banned = _banned_name(resolved)
            if banned:
                self.flag(node, f"reference to '{resolved}' (banned: {banned})")
                return  # one finding per chain
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            for escape in ESCAPE_STRINGS:
                if escape in node.value:
                    self.flag(node, f"string containing '{escape}'")
                    break
        self.generic_visit(node)

    # ---- calls ----
    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        resolved = self.resolve(func)
        if name in {"getattr", "setattr", "delattr", "hasattr"}:
            attr = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
                if name in {"setattr", "delattr"}:
                    self.flag(node, f"{name}() with a computed attribute name")
            elif _is_dunder(attr.value) and attr.value not in SAFE_DUNDERS:
                self.flag(node, f"{name}() of dunder '{attr.value}'")
        elif name == "open" and "open" not in self.aliases:
            self._check_open(node)
        elif resolved == "torch.load":
            weights_only = next((kw.value for kw in node.keywords if kw.arg == "weights_only"), None)
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                self.flag(node, "torch.load without a literal weights_only=True (unpickles arbitrary objects)")
        elif resolved == "numpy.load":
            allow = next((kw.value for kw in node.keywords if kw.arg == "allow_pickle"), None)
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                self.flag(node, "numpy.load with allow_pickle (unpickles arbitrary objects)")
        self.generic_visit(node)

    def _check_open(self, node: ast.Call) -> None:
        mode_node = node.args[1] if len(node.args) > 1 else None
        for kw in node.keywords:
            if kw.arg == "mode":
                mode_node = kw.value
        if mode_node is None:
            return
        if not (isinstance(mode_node, ast.Constant) and isinstance(mode_node.value, str)):
            self.flag(node, "open() with a computed mode")
            return
        if not WRITE_MODE_CHARS & set(mode_node.value):
            return
        target = node.args[0] if node.args else None
        if isinstance(target, ast.Constant) and isinstance(target.value, str) and target.value.startswith("/"):
            if not any(target.value == r or target.value.startswith(r + "/") for r in WRITABLE_ROOTS):
                self.flag(node, f"open() for writing outside {', '.join(WRITABLE_ROOTS)}: {target.value!r}")


def check_source(rel_path: str, source: str) -> list[Finding]:
    """Findings for one Python file's text (rel_path is its path in the repo, used for relative imports)."""
    try:
        tree = ast.parse(source, filename=rel_path)
    except SyntaxError as exc:
        return [Finding(rel_path, exc.lineno or 0, f"syntax error: {exc.msg}")]
    checker = _Checker(rel_path, source)
    checker.collect_aliases(tree)
    checker.visit(tree)
    return sorted(set(checker.findings), key=lambda f: (f.line, f.message))


def check_changed_file(repo: Path, rel_path: str) -> list[Finding]:
    pure = PurePosixPath(rel_path)
    if pure.is_absolute() or ".." in pure.parts:
        return [Finding(rel_path, 0, "changed path escapes the repository")]
    if pure.name in STARTUP_FILES or pure.suffix in NATIVE_SUFFIXES:
        return [Finding(rel_path, 0, "file Python runs at start-up or loads as native code")]
    path = Path(repo) / rel_path
    if not path.exists():
        return []  # deleted: nothing to run
    if path.is_symlink():
        return [Finding(rel_path, 0, "changed file is a symbolic link")]
    if pure.suffix != ".py":
        return []
    if not pure.parts or pure.parts[0] != "hrm":
        return [Finding(rel_path, 0, "changed Python file outside hrm/")]
    return check_source(rel_path, path.read_text(encoding="utf-8", errors="replace"))


def check_protected(repo: Path, protected: dict[str, str | None]) -> list[Finding]:
    findings: list[Finding] = []
    for rel_path, expected in sorted(protected.items()):
        path = Path(repo) / rel_path
        actual = sha256_file(path) if path.is_file() else None
        if actual != expected:
            what = "removed" if actual is None else ("added" if expected is None else "modified")
            findings.append(Finding(rel_path, 0, f"protected file {what} (sha256 differs from the parent)"))
    return findings


def load_manifest(path: Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if data.get("version") != MANIFEST_VERSION:
        raise ValueError(f"manifest version {data.get('version')!r}, expected {MANIFEST_VERSION}")
    if not isinstance(data.get("changed_files"), list) or not isinstance(data.get("protected"), dict):
        raise ValueError("manifest needs a 'changed_files' list and a 'protected' object")
    return data


def run_safety(repo: Path, manifest_path: Path | None) -> dict[str, Any]:
    """Run the gate; raises StageFailure listing every finding, returns metrics when clean."""
    if manifest_path is None:
        raise StageFailure("safety needs --manifest (changed files and protected hashes)")
    manifest = load_manifest(manifest_path)
    findings: list[Finding] = []
    for rel_path in manifest["changed_files"]:
        findings.extend(check_changed_file(repo, str(rel_path)))
    findings.extend(check_protected(repo, manifest["protected"]))
    metrics = {
        "changed_files": len(manifest["changed_files"]),
        "protected_files": len(manifest["protected"]),
        "findings": [str(f) for f in findings],
    }
    if findings:
        listing = "\n".join(str(f) for f in findings[:50])
        more = f"\n... and {len(findings) - 50} more" if len(findings) > 50 else ""
        raise StageFailure(f"{len(findings)} safety finding(s):\n{listing}{more}", metrics)
    return metrics
