"""Stage 1, safety: an allowlist AST gate over the candidate's changed files, plus protected-file hashes.

What this gate is. A cost filter: it rejects obviously hostile or harness-tampering code before the
expensive stages run, and says why (each finding as `file:line: what was found`). It is NOT the security
boundary. Python is too dynamic for a static check to be complete, and the candidate legitimately imports
large libraries (torch, numpy) whose internals reach everything. The boundary is the sandbox the stages
run in (read-only mounts, no network, a private /tmp, limits and timeouts enforced from outside) together
with the host, which owns the labels, the clock and the scoring and takes no verdict from inside a stage
(a pass needs exit status 0 and the host's own checks of the raw numbers). Anything this gate lets
through must be harmless under that boundary; anything it rejects merely saves a sandbox run.

What it does not catch (known gaps, by design of a static filter):
- evasion through the internals of legitimately imported libraries: torch and numpy expose loaders, native
  code, compilers and sub-processes far beyond the few members banned here (torch.compile and DataLoader
  workers start processes; tensor views such as as_strided, and numpy stride tricks, can corrupt or crash
  the process);
- names computed at run time and handed to allowed APIs: a name arriving through a parameter, an
  attribute, a container, a function's return value or a file, then given to getattr (on an ordinary
  object or on torch/numpy), to importlib.import_module, to get_submodule or to str.format;
- values carried through objects the gate cannot follow: a module stored in a container or an attribute,
  an alias made inside a function call, a bound method kept for later;
- what code does with allowed calls: writing files anywhere the sandbox lets it (only literal paths are
  checked), threads that outlive the stage function, busy loops and memory exhaustion, signal handlers
  that ignore SIGINT/SIGTERM (the host's kill cannot be caught);
- a writable directory on sys.path: the stages run with /out as working directory, so a file written
  there can shadow a not-yet-imported module (or `hrm` in a `python -m hrm` child); only literal
  `*.py`/`*.pth`/`*.so` names are rejected here, the real fix is the interpreter's safe-path mode;
- pickle-free deserialisation tricks, and anything reached through a dunder name that is not spelled out
  in the source.

Rules, decided here:
- imports: only modules whose top-level package is in ALLOWED_MODULES, never a module in BANNED_MODULES,
  relative imports only inside `hrm/`. Of the trusted `puzzles` package only the dataset builder (hrm's
  CLI and trainer build a missing dataset with it), never the verdict (puzzles.scoring, puzzles.splits).
  importlib is allowed for `importlib.import_module` alone (the trainer restores carry dataclasses by
  module name): a literal name must pass the same allowlist as an import statement; a name assembled in
  place (concatenation, f-string, join...) or bound in the same function to such an expression or to a
  forbidden literal is rejected; a plain variable is tolerated (one of the gaps above). subprocess is
  allowed for one pattern only, `subprocess.run` on `[sys.executable, "-m", "hrm", ...]` (the benchmark
  re-runs the candidate's own package in a blocking child, same sandbox, same environment), with a short
  allowlist of keyword arguments (no cwd, env, shell, executable...);
- no eval/exec/compile/__import__/globals/vars/locals/breakpoint/help (sys.exit, exit and quit are fine:
  SystemExit is an exception the stage runner catches and fails the stage on). getattr/setattr/delattr/
  hasattr never with a literal dunder, frame or escape name, never used as values; setattr/delattr only
  with a literal name; getattr/hasattr with a computed name: never a name assembled in place or bound
  (in the same function) to an assembled string or a forbidden literal, and never on an imported module
  other than torch, numpy or math (dtype and layer names from the config are everyday code there). Use
  nn.ModuleList/ModuleDict rather than `getattr(self, f"layer{i}")`;
- no dunder attribute access except the harmless ones in SAFE_DUNDERS (`type(x).__name__`, not
  `x.__class__.__name__`), no dunder escape strings, no frame/code/heap/escape attribute names
  (f_globals, tb_frame, gi_frame, get_referrers, _exit, symlink_to, chmod...) on any object;
- dangerous members of allowed modules are banned (os._exit, os.fork, os.kill, os.system, os.exec*,
  os.spawn*, os.mkfifo, os.mknod, os.symlink, os.link, os.chmod, os.setuid..., sys.modules,
  sys._getframe, torch.hub, ...), also through simple aliases (`x = torch.serialization`), through
  another module's namespace (`torch.serialization.os`, `hrm.train.os`) and as private members of
  standard-library modules; for signal only signal/getsignal/SIGINT/SIGTERM/SIG_DFL (the trainer catches
  SIGINT/SIGTERM to checkpoint; timers, other signals, SIG_IGN and sending signals are out);
- no assignment, augmented assignment or del on an attribute of an imported module or of a name bound by
  an import (`time.perf_counter = ...`, `torch.save = ...`, `setattr(time, ...)`), nor on an item of an
  imported module's attribute (`os.environ[...] = ...`, `sys.modules[...] = ...`), except torch's
  numerics switches under torch.backends and torch._dynamo.config;
- torch.load only with a literal `weights_only=True`; numpy.load never with allow_pickle;
- open(): the mode must be a literal; writing is allowed (the trainer writes its metrics and checkpoint,
  and the sandbox makes /out the only writable place) except to a literal absolute path outside /out, /tmp;
  strings naming a stage result file (`train.json`...), a Python/native file (`*.py`, `*.pth`, `*.so`),
  a forbidden module or /proc/*/mem are rejected;
- files that Python runs on start-up or loads as native code (sitecustomize.py, *.pth, *.so) may not change;
  changed Python files must live under hrm/ (all of hrm/ is evolvable);
- every protected file named in the manifest hashes to the value the host recorded from the PARENT
  commit. The host chooses the protected set (it may be empty); nothing here names a protected file.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from smoketests.result import StageFailure

MANIFEST_VERSION = 1

# fmt: off
ALLOWED_MODULES = frozenset(
    {
        "__future__", "abc", "argparse", "bisect", "collections", "contextlib", "copy", "dataclasses",
        "datetime", "enum", "functools", "hashlib", "heapq", "importlib", "io", "itertools", "json", "logging",
        "math", "numbers", "operator", "os", "pathlib", "queue", "random", "re", "resource", "shutil",
        "signal", "statistics", "string", "struct", "subprocess", "sys", "tempfile", "textwrap", "threading",
        "time", "types", "typing", "typing_extensions", "warnings", "weakref",
        "numpy", "torch", "rich", "hrm", "flash_attn", "flash_attn_interface", "puzzles",
    }
)
# Modules refused with a specific reason (everything else outside ALLOWED_MODULES: "not in the allowlist").
DENIED_MODULE_REASONS = {
    "builtins": "the builtins module holds eval, exec and __import__",
    "ctypes": "raw memory and native calls", "cffi": "raw memory and native calls",
    "socket": "network", "ssl": "network", "http": "network", "urllib": "network", "requests": "network",
    "gc": "heap walks (gc.get_referrers/get_objects reach the harness's objects)",
    "inspect": "frame introspection", "traceback": "frame introspection",
    "pickle": "code-executing deserialisation", "marshal": "code objects", "shelve": "pickle",
    "dill": "pickle", "cloudpickle": "pickle", "copyreg": "pickle hooks",
    "multiprocessing": "new processes", "concurrent": "new processes", "pty": "new processes",
    "runpy": "runs modules by name", "code": "an interactive interpreter", "codeop": "compiles code",
    "imp": "import machinery", "pkgutil": "import machinery", "zipimport": "import machinery",
    "atexit": "exit hooks run after the harness wrote its result", "faulthandler": "signal handlers",
    "_thread": "raw threads", "posix": "raw os calls", "_posixsubprocess": "new processes",
    "smoketests": "the harness", "evolver": "the engine", "sandbox": "the engine", "proposals": "the engine",
}
BANNED_MODULES = frozenset(
    {
        "torch.hub", "torch.utils.cpp_extension", "torch.distributed", "torch.multiprocessing",
        "torch.package", "torch._C", "torch.utils.data.datapipes", "numpy.ctypeslib", "numpy.distutils",
        "numpy.f2py", "logging.config",
    }
)
# Dotted names (after alias resolution) that may not be referenced at all.
BANNED_MEMBERS = frozenset(
    {
        # processes, signals sent, hard exits
        "os.system", "os.popen", "os.fork", "os.forkpty", "os.register_at_fork", "os.kill", "os.killpg",
        "os.abort", "os._exit", "os.posix_spawn", "os.posix_spawnp", "os.pidfd_open", "os.startfile",
        # identity, working directory, environment
        "os.setuid", "os.setgid", "os.seteuid", "os.setegid", "os.setreuid", "os.setregid", "os.setresuid",
        "os.setresgid", "os.setgroups", "os.initgroups", "os.setsid", "os.setpgid", "os.setpgrp",
        "os.chroot", "os.chdir", "os.fchdir", "os.putenv", "os.unsetenv", "os.environ.update",
        "os.environ.setdefault", "os.environ.pop", "os.environ.popitem", "os.environ.clear", "os.environb",
        # file-system escapes
        "os.chmod", "os.fchmod", "os.lchmod", "os.chown", "os.fchown", "os.lchown", "os.chflags",
        "os.lchflags", "os.symlink", "os.link", "os.mkfifo", "os.mknod", "os.dup2", "os.openpty",
        "os.login_tty", "os.memfd_create", "os.add_dll_directory", "os.setxattr", "os.removexattr",
        "shutil.chown",
        # the interpreter: import system, frames, tracing
        "sys.modules", "sys.path", "sys.meta_path", "sys.path_hooks", "sys.path_importer_cache",
        "sys.settrace", "sys.setprofile", "sys._getframe", "sys.addaudithook", "sys.setdlopenflags",
        "sys.call_tracing", "sys.breakpointhook", "sys.monitoring", "sys.remote_exec",
        "sys.activate_stack_trampoline", "sys.set_asyncgen_hooks", "sys.set_coroutine_origin_tracking_depth",
        "threading.settrace", "threading.setprofile", "threading.settrace_all_threads",
        "threading.setprofile_all_threads",
        # getattr and eval in disguise
        "operator.attrgetter", "operator.methodcaller", "typing.get_type_hints", "typing.ForwardRef",
        "typing_extensions.get_type_hints", "typing_extensions.ForwardRef",
        "types.CodeType", "types.FunctionType", "types.ModuleType",
        # native code and unpickling loaders
        "torch.ops.load_library", "torch.classes.load_library", "torch.jit.load", "torch.library",
        "numpy.lib.format.read_array",
        # limits and timers of the harness
        "resource.setrlimit", "resource.prlimit",
    }
)
BANNED_PREFIXES = ("os.exec", "os.spawn", "os.wait", "torch.hub", "torch.utils.cpp_extension")
# Modules allowed for a few members only: module -> the members that may be referenced.
RESTRICTED_MEMBERS = {
    "importlib": frozenset({"import_module"}),
    "subprocess": frozenset(
        {"run", "PIPE", "DEVNULL", "STDOUT", "CompletedProcess", "CalledProcessError", "TimeoutExpired",
         "SubprocessError"}
    ),
    "signal": frozenset(
        {"signal", "getsignal", "SIGINT", "SIGTERM", "SIG_DFL", "default_int_handler", "strsignal"}
    ),
    # the harness's trusted task code: hrm may use its dataset builder (a user convenience), never the verdict
    # (puzzles.scoring, puzzles.splits...)
    "puzzles": frozenset({"build", "build_dataset", "resolve_task", "TASK_ALIASES"}),
}
# Members that may only be called directly (their arguments are checked at the call).
CALL_ONLY = frozenset({"subprocess.run", "importlib.import_module"})
SUBPROCESS_KWARGS = frozenset(
    {"capture_output", "text", "check", "timeout", "input", "stdin", "stdout", "stderr", "encoding", "errors",
     "universal_newlines"}
)
# Modules whose object may not be used as a plain value (stored, passed around): only their attributes.
NO_BARE_MODULES = frozenset(
    {"os", "sys", "signal", "subprocess", "importlib", "shutil", "resource", "tempfile", "threading", "builtins"}
)
# A segment of a dotted chain (after the first) naming one of these is another module reached through a
# namespace: `torch.serialization.os`, `hrm.train.sys`.
REACH_THROUGH = frozenset(
    {
        "os", "sys", "subprocess", "builtins", "importlib", "ctypes", "socket", "gc", "inspect", "shutil",
        "pickle", "marshal", "posix", "_os", "_sys", "_posixsubprocess", "multiprocessing", "runpy", "pty",
        "smoketests", "evolver", "sandbox", "proposals",
    }
)
# Roots whose private (`_x`) members are ordinary API (torch._foreach_*, candidate's own helpers).
PRIVATE_OK_ROOTS = frozenset({"torch", "numpy", "hrm", "flash_attn", "flash_attn_interface"})
# Modules on which getattr with a computed name is tolerated (dtype, activation, optimizer names).
COMPUTED_GETATTR_ROOTS = frozenset({"torch", "numpy", "math"})
# Stores into these prefixes are numerics switches, not tampering.
STORABLE_PREFIXES = ("torch.backends.", "torch._dynamo.config.")
ATTR_FUNCS = frozenset({"getattr", "setattr", "delattr", "hasattr"})
BANNED_BUILTINS = frozenset(
    {"eval", "exec", "compile", "__import__", "globals", "vars", "locals", "breakpoint", "help"}
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
# Attribute names refused on any object: frames, code, heap walks, process and file-system escapes.
DANGEROUS_ATTRS = frozenset(
    {
        "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame", "gi_frame", "gi_code",
        "cr_frame", "cr_code", "ag_frame", "ag_code", "co_code", "get_referrers", "get_referents",
        "get_objects", "_getframe", "_current_frames", "_current_exceptions", "_exit", "system", "popen",
        "fork", "forkpty", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
        "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
        "posix_spawn", "posix_spawnp", "kill", "killpg", "mkfifo", "mknod", "symlink", "symlink_to",
        "hardlink_to", "link_to", "chmod", "lchmod", "chown", "lchown", "setuid", "setgid", "chroot",
        "load_library", "settrace", "setprofile",
    }
)
# Strings that name a forbidden module exactly (for import_module or getattr fed from a variable).
FORBIDDEN_MODULE_STRINGS = frozenset(
    {
        "builtins", "ctypes", "socket", "gc", "inspect", "pickle", "marshal", "subprocess", "multiprocessing",
        "importlib", "runpy", "pty", "atexit", "faulthandler", "_posixsubprocess", "posix", "smoketests",
        "evolver", "sandbox", "proposals",
    }
)
STAGE_RESULT_FILES = frozenset(f"{s}.json" for s in ("safety", "smoke", "trainability", "train", "evaluate"))
CODE_FILE_SUFFIXES = (".py", ".pyc", ".pth", ".so")
STARTUP_FILES = ("sitecustomize.py", "usercustomize.py")
NATIVE_SUFFIXES = (".so", ".pyd", ".dll", ".dylib", ".pth", ".pyc")
WRITABLE_ROOTS = ("/out", "/tmp")
WRITE_MODE_CHARS = set("wax+")
# Calls whose result is a string assembled from pieces (a computed name hiding what it spells).
STRING_BUILDERS = frozenset(
    {"join", "format", "format_map", "replace", "decode", "chr", "str", "bytes", "bytearray", "translate",
     "removeprefix", "removesuffix", "zfill", "center", "ljust", "rjust", "expandtabs", "fromhex",
     "b64decode", "unhexlify", "reversed"}
)
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# fmt: on
_SCOPES = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


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


def _snip(node: ast.AST, limit: int = 70) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _banned_name(full: str) -> str | None:
    for banned in BANNED_MEMBERS | BANNED_MODULES:
        if full == banned or full.startswith(banned + "."):
            return banned
    for prefix in BANNED_PREFIXES:
        if full.startswith(prefix):
            return prefix + "*"
    return None


def chain_problem(full: str) -> str | None:
    """Why the dotted name `full` (already resolved to its module) may not be referenced, or None."""
    banned = _banned_name(full)
    if banned:
        return f"banned: {banned}"
    parts = full.split(".")
    root = parts[0]
    if root == "builtins":
        return "access to the builtins module"
    for i, part in enumerate(parts[1:], start=1):
        if part in REACH_THROUGH:
            rerooted = ".".join(parts[i:])
            return f"module '{part}' reached through '{'.'.join(parts[:i])}' ({rerooted})"
    if root in RESTRICTED_MEMBERS and len(parts) > 1 and parts[1] not in RESTRICTED_MEMBERS[root]:
        allowed = ", ".join(f"{root}.{m}" for m in sorted(RESTRICTED_MEMBERS[root]))
        return f"only {allowed} may be used"
    if root not in PRIVATE_OK_ROOTS:
        for part in parts[1:]:
            if part.startswith("_") and not _is_dunder(part):
                return f"private member '{part}' of a standard-library module"
    return None


def _assembles_string(expr: ast.AST) -> str | None:
    """How `expr` assembles a string from pieces (concatenation, f-string, join...), or None."""
    for node in ast.walk(expr):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod, ast.Mult)):
            return "concatenation"
        if isinstance(node, ast.JoinedStr):
            return "an f-string"
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else None
            )
            if name in STRING_BUILDERS:
                return f"{name}()"
        if isinstance(node, ast.Subscript):
            value = node.value
            if isinstance(node.slice, ast.Slice) or (
                isinstance(value, ast.Constant) and isinstance(value.value, (str, bytes))
            ):
                return "slicing"
    return None


def _binds(target: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(target))


def _match_target(target: ast.AST, value: ast.AST | None, name: str) -> list[tuple[str, ast.AST | None]]:
    """The bindings of `name` made by assigning `value` to `target`: ("value", expr) or ("unknown", None)."""
    if isinstance(target, ast.Name):
        return [("value", value)] if target.id == name and value is not None else []
    if isinstance(target, ast.Starred):
        return [("unknown", None)] if _binds(target, name) else []
    if isinstance(target, (ast.Tuple, ast.List)):
        if (
            isinstance(value, (ast.Tuple, ast.List))
            and len(value.elts) == len(target.elts)
            and not any(isinstance(e, ast.Starred) for e in (*value.elts, *target.elts))
        ):
            found: list[tuple[str, ast.AST | None]] = []
            for t, v in zip(target.elts, value.elts, strict=True):
                found += _match_target(t, v, name)
            return found
        return [("unknown", None)] if _binds(target, name) else []
    return []  # an attribute or an item: binds no name


def _scope_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of one scope, without descending into nested functions, lambdas and classes."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _NESTED):
            stack.extend(ast.iter_child_nodes(node))


class _Checker(ast.NodeVisitor):
    def __init__(self, rel_path: str, source: str) -> None:
        self.path = rel_path
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}
        self.dynamic_modules: set[str] = set()  # names bound to importlib.import_module(<computed>)
        self.parents: dict[int, ast.AST] = {}
        parts = PurePosixPath(rel_path).parts
        # the file's package inside hrm/: hrm/x.py -> ("hrm",), hrm/data/x.py -> ("hrm", "data")
        self.package = tuple(parts[:-1]) if parts and parts[0] == "hrm" else ()
        self.package_depth = len(self.package)
        self.source = source

    def flag(self, node: ast.AST, message: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), message))

    # ---- first pass: parents, aliases ----
    def prepare(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[id(child)] = node
        self.collect_aliases(tree)

    def _absolute(self, node: ast.ImportFrom) -> str | None:
        if not node.level:
            return node.module
        if node.level > self.package_depth:
            return None
        base = list(self.package[: self.package_depth - (node.level - 1)])
        return ".".join(base + ([node.module] if node.module else []))

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
                elif isinstance(node, ast.ImportFrom):
                    module = self._absolute(node)
                    if not module:
                        continue
                    for alias in node.names:
                        if alias.name != "*":
                            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if node.value is None or len(targets) != 1 or not isinstance(targets[0], ast.Name):
                        continue
                    name = targets[0].id
                    if (
                        isinstance(node.value, ast.Call)
                        and self.resolve(node.value.func) == "importlib.import_module"
                    ):
                        arg = node.value.args[0] if node.value.args else None
                        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                            self.aliases[name] = arg.value
                        else:
                            self.dynamic_modules.add(name)
                        continue
                    resolved = self.resolve(node.value)
                    if resolved and resolved.split(".")[0] in ALLOWED_MODULES:
                        self.aliases[name] = resolved

    def resolve(self, node: ast.AST) -> str | None:
        dotted = _dotted(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if head not in self.aliases:
            return None
        base = self.aliases[head]
        return f"{base}.{rest}" if rest else base

    def _import_bound(self, node: ast.AST) -> str | None:
        """The dotted name `node` denotes when it is rooted at an import binding (a module imported by
        name included), else None."""
        resolved = self.resolve(node)
        if resolved:
            return resolved
        if isinstance(node, ast.Call) and self.resolve(node.func) == "importlib.import_module":
            return _snip(node)
        dotted = _dotted(node)
        if dotted and dotted.split(".")[0] in self.dynamic_modules:
            return dotted
        return None

    def _parent(self, node: ast.AST) -> ast.AST | None:
        return self.parents.get(id(node))

    def _is_called(self, node: ast.AST) -> bool:
        parent = self._parent(node)
        return isinstance(parent, ast.Call) and parent.func is node

    # ---- scopes: what a local name was bound to ----
    def _bindings(self, name: str, at: ast.AST) -> list[tuple[str, ast.AST | None]]:
        """How `name` is bound in the innermost enclosing scope that binds it: (kind, value) pairs."""
        node: ast.AST | None = self._parent(at)
        while node is not None:
            if isinstance(node, _SCOPES):
                found = self._scope_bindings(node, name)
                if found:
                    return found
            node = self._parent(node)
        return []

    def _scope_bindings(self, scope: ast.AST, name: str) -> list[tuple[str, ast.AST | None]]:
        found: list[tuple[str, ast.AST | None]] = []
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = scope.args
            for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
                if arg is not None and arg.arg == name:
                    found.append(("param", None))
        for node in _scope_nodes(scope):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    found += _match_target(target, node.value, name)
            elif isinstance(node, ast.AnnAssign):
                found += _match_target(node.target, node.value, name)
            elif isinstance(node, ast.AugAssign):
                if isinstance(node.target, ast.Name) and node.target.id == name:
                    found.append(("augmented", node.value))
            elif isinstance(node, ast.NamedExpr):
                if node.target.id == name:
                    found.append(("value", node.value))
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                if isinstance(node.iter, (ast.List, ast.Tuple, ast.Set)):
                    for element in node.iter.elts:
                        found += _match_target(node.target, element, name)
                elif _binds(node.target, name):
                    found.append(("unknown", None))
            elif isinstance(node, ast.withitem):
                if node.optional_vars is not None and _binds(node.optional_vars, name):
                    found.append(("unknown", None))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                    found.append(("import", None))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name == name:
                    found.append(("def", None))
            elif isinstance(node, ast.ExceptHandler) and node.name == name:
                found.append(("unknown", None))
        return found

    def _computed_problem(
        self, expr: ast.AST, at: ast.AST, literal_problem: Callable[[str], str | None]
    ) -> str | None:
        """Why a computed name `expr` (an attribute or module name) is refused, or None to tolerate it."""
        leaves: list[ast.AST] = [expr]
        while any(isinstance(leaf, (ast.IfExp, ast.BoolOp)) for leaf in leaves):
            expanded: list[ast.AST] = []
            for leaf in leaves:
                if isinstance(leaf, ast.IfExp):
                    expanded += [leaf.body, leaf.orelse]
                elif isinstance(leaf, ast.BoolOp):
                    expanded += leaf.values
                else:
                    expanded.append(leaf)
            leaves = expanded
        for leaf in leaves:
            if isinstance(leaf, ast.Constant):
                problem = literal_problem(leaf.value) if isinstance(leaf.value, str) else None
                if problem:
                    return problem
                continue
            if isinstance(leaf, ast.Name):
                for kind, value in self._bindings(leaf.id, at):
                    if kind == "augmented":
                        return f"'{leaf.id}' is assembled by augmented assignment"
                    if kind != "value" or value is None:
                        continue
                    how = _assembles_string(value)
                    if how:
                        return f"'{leaf.id}' is assembled at run time ({how}: {_snip(value)})"
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        problem = literal_problem(value.value)
                        if problem:
                            return f"'{leaf.id}' = {value.value!r}: {problem}"
                continue
            if _dotted(leaf) is not None:
                continue  # self.name, cfg.dtype: a value the gate cannot see (tolerated)
            if (
                isinstance(leaf, ast.Subscript)
                and _dotted(leaf.value) is not None
                and isinstance(leaf.slice, (ast.Constant, ast.Name))
            ):
                continue  # cfg["act"], names[i]
            return f"a name built in place ({_snip(leaf)})"
        return None

    # ---- imports ----
    def _check_module(self, node: ast.AST, module: str, via: str = "import") -> None:
        root = module.split(".")[0]
        if root not in ALLOWED_MODULES:
            reason = DENIED_MODULE_REASONS.get(root, "module not in the allowlist")
            self.flag(node, f"{via} of '{module}' ({reason})")
            return
        problem = chain_problem(module)
        if problem:
            self.flag(node, f"{via} of '{module}' ({problem})")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            module = self._absolute(node)
            if module is None:
                self.flag(node, f"relative import reaching outside hrm/ (level {node.level})")
                self.generic_visit(node)
                return
        else:
            module = node.module or ""
            self._check_module(node, module)
        for alias in node.names:
            if alias.name == "*":
                self.flag(node, f"star import from '{module}'")
                continue
            full = f"{module}.{alias.name}"
            problem = chain_problem(full)
            if problem:
                self.flag(node, f"import of '{full}' ({problem})")
            elif full in {"torch.load", "numpy.load", "torch.serialization.load"}:
                self.flag(node, f"'from {module} import {alias.name}': call {full} through its module")
            elif _is_dunder(alias.name) and alias.name not in SAFE_DUNDERS:
                self.flag(node, f"import of dunder '{full}'")
        self.generic_visit(node)

    # ---- names, attributes, strings ----
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in BANNED_BUILTINS:
            self.flag(node, f"use of builtin '{node.id}' (an escape hatch)")
        elif _is_dunder(node.id) and node.id not in SAFE_DUNDERS:
            self.flag(node, f"use of dunder name '{node.id}'")
        elif node.id in ATTR_FUNCS and not self._is_called(node):
            self.flag(node, f"'{node.id}' used as a value (only direct calls are checked)")
        if isinstance(node.ctx, ast.Load):
            resolved = self.resolve(node)
            problem = chain_problem(resolved) if resolved else None
            parent = self._parent(node)
            if problem:
                self.flag(node, f"reference to '{resolved}' ({problem})")
            elif resolved in CALL_ONLY and not self._is_called(node):
                self.flag(node, f"'{resolved}' used other than as a direct call")
            elif resolved in NO_BARE_MODULES and not self._module_use_checked_elsewhere(node, parent):
                self.flag(node, f"module '{resolved}' used as a value (only its attributes may be used)")
        self.generic_visit(node)

    @staticmethod
    def _module_use_checked_elsewhere(node: ast.AST, parent: ast.AST | None) -> bool:
        """`os.x` (an attribute) and `getattr(os, ...)` (checked as a getattr call) are not bare uses."""
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return True
        return (
            isinstance(parent, ast.Call)
            and isinstance(parent.func, ast.Name)
            and parent.func.id in ATTR_FUNCS
            and bool(parent.args)
            and parent.args[0] is node
        )

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _is_dunder(node.attr) and node.attr not in SAFE_DUNDERS:
            self.flag(node, f"dunder attribute access '.{node.attr}'")
        elif node.attr in DANGEROUS_ATTRS:
            self.flag(node, f"attribute '.{node.attr}' (frame, heap, process or file-system escape)")
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self._check_store(node, node.value, f".{node.attr}")
        resolved = self.resolve(node)
        if resolved:
            problem = chain_problem(resolved)
            if problem:
                self.flag(node, f"reference to '{resolved}' ({problem})")
                return  # one finding per chain
            if resolved in CALL_ONLY and not self._is_called(node):
                self.flag(node, f"'{resolved}' used other than as a direct call")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            base = self._import_bound(node.value)
            if base and base.split(".")[0] != "hrm":
                verb = "del of" if isinstance(node.ctx, ast.Del) else "assignment to"
                self.flag(node, f"{verb} an item of '{base}', an imported module's attribute ({_snip(node)})")
        self.generic_visit(node)

    def _check_store(self, node: ast.AST, base_node: ast.AST, what: str) -> None:
        base = self._import_bound(base_node)
        if not base:
            return
        full = f"{base}{what}"
        if full.startswith(STORABLE_PREFIXES):
            return
        ctx = getattr(node, "ctx", None)
        verb = "del of" if isinstance(ctx, ast.Del) else "assignment to"
        self.flag(node, f"{verb} '{full}', an attribute of an imported module or name (monkeypatching)")

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self._check_string(node, node.value)
        self.generic_visit(node)

    def _check_string(self, node: ast.AST, value: str) -> None:
        lowered = value.lower()
        for escape in ESCAPE_STRINGS:
            if escape in lowered:
                self.flag(node, f"string containing '{escape}'")
                return
        word = lowered.strip()
        if any(ch.isspace() for ch in word):
            return  # prose (a docstring, a message): only names and paths are checked below
        name = PurePosixPath(word).name if "/" in word else word
        if word in DANGEROUS_ATTRS:
            self.flag(node, f"string naming '{word}' (frame, heap, process or file-system escape)")
        elif _DOTTED_NAME.fullmatch(word) and word.split(".")[0] in FORBIDDEN_MODULE_STRINGS:
            self.flag(node, f"string naming the forbidden module '{word}'")
        elif (
            _DOTTED_NAME.fullmatch(word)
            and "." in word
            and word.split(".")[0] in ALLOWED_MODULES
            and (problem := chain_problem(value.strip()))
        ):
            self.flag(node, f"string naming '{value.strip()}' ({problem})")
        elif name in STAGE_RESULT_FILES:
            self.flag(node, f"string naming the harness result file '{name}' (forging a stage result)")
        elif word.endswith(CODE_FILE_SUFFIXES) or name in {"sitecustomize", "usercustomize"}:
            self.flag(node, f"string naming a Python or native file {value!r} (code the gate never sees)")
        elif word.startswith("/proc/") and (word.endswith("/mem") or "/mem/" in word):
            self.flag(node, f"string naming process memory {value!r}")

    # ---- calls ----
    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) and func.id not in self.aliases else None
        resolved = self.resolve(func)
        if name in ATTR_FUNCS:
            self._check_attr_call(node, name)
        elif name == "open" or resolved == "io.open":
            self._check_open(node)
        elif resolved in {"torch.load", "torch.serialization.load"}:
            weights_only = next((kw.value for kw in node.keywords if kw.arg == "weights_only"), None)
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                self.flag(
                    node, "torch.load without a literal weights_only=True (unpickles arbitrary objects)"
                )
        elif resolved == "numpy.load":
            allow = next((kw.value for kw in node.keywords if kw.arg == "allow_pickle"), None)
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                self.flag(node, "numpy.load with allow_pickle (unpickles arbitrary objects)")
        elif resolved == "importlib.import_module":
            self._check_import_module(node)
        elif resolved == "subprocess.run":
            self._check_subprocess_run(node)
        elif resolved == "signal.signal":
            signum = node.args[0] if node.args else None
            if isinstance(signum, ast.Constant):
                self.flag(
                    node, f"signal.signal on a numeric signal {signum.value!r} (use signal.SIGINT/SIGTERM)"
                )
        self.generic_visit(node)

    def _check_attr_call(self, node: ast.Call, name: str) -> None:
        if any(isinstance(a, ast.Starred) for a in node.args) or node.keywords or len(node.args) < 2:
            self.flag(node, f"{name}() with unpacked or missing arguments ({_snip(node)})")
            return
        target, attr = node.args[0], node.args[1]
        module = self._import_bound(target)
        if isinstance(attr, ast.Constant) and isinstance(attr.value, str):
            problem = self._literal_attr_problem(attr.value)
            if problem:
                self.flag(node, f"{name}() of {problem}")
            elif name in {"setattr", "delattr"} and module:
                self.flag(
                    node,
                    f"{name}() on '{module}', an imported module or name ({_snip(node)}): monkeypatching",
                )
            else:
                resolved = self.resolve(target)
                chain = chain_problem(f"{resolved}.{attr.value}") if resolved else None
                if chain:
                    self.flag(node, f"{name}() reaching '{resolved}.{attr.value}' ({chain})")
            return
        if name in {"setattr", "delattr"}:
            self.flag(node, f"{name}() with a computed attribute name ({_snip(attr)})")
            return
        problem = self._computed_problem(attr, node, self._literal_attr_problem)
        if problem:
            self.flag(node, f"{name}() with a computed attribute name: {problem}")
            return
        resolved = self.resolve(target)
        if resolved and resolved.split(".")[0] not in COMPUTED_GETATTR_ROOTS:
            self.flag(
                node, f"{name}() with a computed name on imported '{resolved}' (any member is reachable)"
            )
        elif (
            isinstance(target, ast.Call)
            and isinstance(target.func, ast.Name)
            and target.func.id == "getattr"
            and len(target.args) > 1
            and not isinstance(target.args[1], ast.Constant)
        ):
            self.flag(
                node, f"{name}() with computed names on the result of a computed getattr ({_snip(node)})"
            )

    @staticmethod
    def _literal_attr_problem(value: str) -> str | None:
        if _is_dunder(value) and value not in SAFE_DUNDERS:
            return f"dunder '{value}'"
        if value in DANGEROUS_ATTRS or value in ESCAPE_STRINGS:
            return f"'{value}' (frame, heap, process or file-system escape)"
        return None

    def _module_literal_problem(self, value: str) -> str | None:
        root = value.split(".")[0]
        if value.startswith("."):
            return "a relative module name (use a plain import)"
        if root not in ALLOWED_MODULES:
            return f"module '{value}' ({DENIED_MODULE_REASONS.get(root, 'not in the allowlist')})"
        problem = chain_problem(value)
        return f"module '{value}' ({problem})" if problem else None

    def _check_import_module(self, node: ast.Call) -> None:
        arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
        package = (
            node.args[1]
            if len(node.args) > 1
            else next((k.value for k in node.keywords if k.arg == "package"), None)
        )
        if package is not None and not (
            isinstance(package, ast.Constant)
            and isinstance(package.value, str)
            and package.value.split(".")[0] == "hrm"
        ):
            self.flag(node, f"importlib.import_module with package {_snip(package)} (only hrm packages)")
        if arg is None or any(isinstance(a, ast.Starred) for a in node.args):
            self.flag(node, f"importlib.import_module with unpacked or missing arguments ({_snip(node)})")
            return
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            problem = self._module_literal_problem(arg.value)
            if problem:
                self.flag(node, f"importlib.import_module of {problem}")
            return
        problem = self._computed_problem(arg, node, self._module_literal_problem)
        if problem:
            self.flag(node, f"importlib.import_module with a computed module name: {problem}")

    def _check_subprocess_run(self, node: ast.Call) -> None:
        rule = "only subprocess.run([sys.executable, '-m', 'hrm', ...]) is allowed"
        argv = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "args"), None)
        if len(node.args) > 1 or any(isinstance(a, ast.Starred) for a in node.args):
            self.flag(node, f"subprocess.run with extra positional arguments ({rule})")
        for kw in node.keywords:
            if kw.arg is None:
                self.flag(node, f"subprocess.run with **kwargs ({rule})")
            elif kw.arg != "args" and kw.arg not in SUBPROCESS_KWARGS:
                self.flag(node, f"subprocess.run(..., {kw.arg}=...) ({rule}, no {kw.arg})")
        problem = self._argv_problem(argv, node) if argv is not None else "no argument list"
        if problem:
            self.flag(node, f"subprocess.run: {problem} ({rule})")

    def _argv_head_problem(self, argv: ast.AST) -> str | None:
        if not isinstance(argv, (ast.List, ast.Tuple)):
            return f"the argument list is not a literal list ({_snip(argv)})"
        head = argv.elts[:3]
        if len(head) < 3 or any(isinstance(e, ast.Starred) for e in head):
            return f"the argument list does not start with sys.executable, '-m', 'hrm' ({_snip(argv)})"
        exe, flag, module = head
        if (
            self.resolve(exe) != "sys.executable"
            or not (isinstance(flag, ast.Constant) and flag.value == "-m")
            or not (isinstance(module, ast.Constant) and isinstance(module.value, str))
            or module.value.split(".")[0] != "hrm"
        ):
            return f"the argument list does not start with sys.executable, '-m', 'hrm' ({_snip(argv)})"
        return None

    def _argv_problem(self, argv: ast.AST, call: ast.Call) -> str | None:
        if not isinstance(argv, ast.Name):
            return self._argv_head_problem(argv)
        bindings = self._bindings(argv.id, call)
        plain = [value for kind, value in bindings if kind == "value"]
        if len(plain) != 1 or any(kind not in {"value", "augmented"} for kind, _ in bindings):
            return f"'{argv.id}' is not bound once to a literal list"
        problem = self._argv_head_problem(plain[0])  # type: ignore[arg-type]
        if problem:
            return problem
        for kind, value in bindings:
            if kind == "augmented" and not isinstance(value, (ast.List, ast.Tuple)):
                return f"'{argv.id}' is extended with a non-literal ({_snip(value)})"  # type: ignore[arg-type]
        scope = next((s for s in self._enclosing(call) if self._scope_bindings(s, argv.id)), None)
        for use in _scope_nodes(scope) if scope is not None else ():
            if not (isinstance(use, ast.Name) and use.id == argv.id and isinstance(use.ctx, ast.Load)):
                continue
            parent = self._parent(use)
            if isinstance(parent, ast.Call) and parent.args and parent.args[0] is use:
                if self.resolve(parent.func) == "subprocess.run":
                    continue
            if (
                isinstance(parent, ast.Attribute)
                and parent.attr in {"append", "extend"}
                and self._is_called(parent)
            ):
                continue
            return f"'{argv.id}' is used elsewhere at line {use.lineno} (it could be changed)"
        return None

    def _enclosing(self, node: ast.AST) -> Iterator[ast.AST]:
        current = self._parent(node)
        while current is not None:
            if isinstance(current, _SCOPES):
                yield current
            current = self._parent(current)

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
        if (
            isinstance(target, ast.Constant)
            and isinstance(target.value, str)
            and target.value.startswith("/")
        ):
            if not any(target.value == r or target.value.startswith(r + "/") for r in WRITABLE_ROOTS):
                self.flag(node, f"open() for writing outside {', '.join(WRITABLE_ROOTS)}: {target.value!r}")


def check_source(rel_path: str, source: str) -> list[Finding]:
    """Findings for one Python file's text (rel_path is its path in the repo, used for relative imports)."""
    try:
        tree = ast.parse(source, filename=rel_path)
    except SyntaxError as exc:
        return [Finding(rel_path, exc.lineno or 0, f"syntax error: {exc.msg}")]
    checker = _Checker(rel_path, source)
    checker.prepare(tree)
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
    """Each manifest entry {path: sha256 in the parent, or None for absent} must still hold."""
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
