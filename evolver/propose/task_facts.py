"""What the model is asked to improve, stated in every proposal request: the task facts and the resolved preset.

`TaskFacts` holds the task in force, its sequence length and vocabulary (read from the run's own dataset,
built on the host by trusted code), the training budget, the metric, and the parent's measurement: its
per-seed scores (mean and seed-to-seed standard deviation), its training steps in the budget and its steps/s
(the evidence the baseline measurement already keeps per seed, `evolver/run/baseline.py`).

`resolve_preset(root, task)` gives the *resolved* `RunConfig` of the task: every field's effective value and
where it is set (a preset builder in hrm/presets.py, or the dataclass default in hrm/config.py). It is computed
by reading the source with `ast` and evaluating a small, closed subset of Python (literals, arithmetic,
names, calls to the module's own functions and to the config dataclasses, attribute assignment,
`copy.deepcopy`, `dataclasses.replace`), never by importing `hrm`: hrm/ is untrusted, evolvable code that the
engine never imports or runs on the host (docs/TRUST.md). A sandbox stage could report the values, but only
as the candidate's own claim, only after a training job, and without saying where each value is set; the
static reading is trusted, immediate and names the line. A field whose value is computed in a way the
reader does not follow is shown as unresolved with its source expression, never guessed.
"""

from __future__ import annotations

import ast
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "hrm/config.py"
PRESETS_FILE = "hrm/presets.py"
CONFIG_CLASSES = ("RunConfig", "ModelConfig", "TrainConfig")
MAX_DEPTH = 24  # nested calls followed while resolving a builder

# What the trusted train stage (smoketests/train_stage.py) sets over the preset, whatever the preset says.
HARNESS_OVERRIDES: dict[str, str] = {
    "train.eval_interval_steps": "None (the harness turns in-training evaluation off)",
    "train.budget_seconds": "the run's budget (passed by the harness)",
    "train.seed": "the pair's seed (passed by the harness)",
}


class Unresolved(Exception):
    """A construct the static reader does not evaluate; the message quotes it."""


@dataclass
class Setting:
    """One field's effective value and where it is set."""

    value: Any
    source: str  # "_cpu_model (hrm/presets.py)" or "ModelConfig default (hrm/config.py)"
    resolved: bool = True
    line: int | None = None  # the line that sets it
    origin: str = ""  # for a value passed through a parameter: the caller that passed it

    def describe(self, name: str) -> str:
        if not self.resolved:
            return f"{name}=? ({self.value})"
        note = f" [from {self.origin}]" if self.origin else ""
        return f"{name}={_show(self.value)}{note}"


@dataclass
class _Obj:
    """A config dataclass instance under static evaluation: its fields, each with its provenance."""

    cls: str
    fields: dict[str, Setting]


@dataclass
class _Val:
    value: Any
    origin: str = ""  # where a value passed through a parameter came from


@dataclass
class ResolvedConfig:
    """The task's RunConfig as the candidate's hrm/ would build it, field by field."""

    task: str
    builder: str = ""
    settings: dict[str, Setting] = field(default_factory=dict)  # "model.hidden_size" -> Setting
    error: str = ""
    note: str = ""  # a caveat on the values (get_preset doing more than copying the builder's result)

    def value(self, name: str) -> Any:
        return self.settings[name].value

    def render(self) -> str:
        """Compact text: fields grouped by where they are set, one group per line."""
        if self.error:
            return (f"Resolved configuration of preset {self.task!r}: not available ({self.error}); "
                    "read the preset builders in hrm/presets.py below.")
        groups: dict[str, list[str]] = {}
        for name, s in self.settings.items():
            groups.setdefault(s.source, []).append(s.describe(name))
        lines = [f"Resolved configuration of preset {self.task!r} (get_preset({self.task!r}) -> {self.builder}()): "
                 "every field's effective value, grouped by where it is set:"]
        if self.note:
            lines.append(f"- caution: {self.note}")
        lines += [f"- {source}: {', '.join(items)}" for source, items in groups.items()]
        lines.append("- set by the harness over the preset: "
                     + "; ".join(f"{k}={v}" for k, v in HARNESS_OVERRIDES.items()))
        return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return repr(value)


# ------------------------------------------------------------------------------------------ static reader


class _Module:
    def __init__(self, rel: str, source: str) -> None:
        self.rel = rel
        self.tree = ast.parse(source, filename=rel)
        self.functions: dict[str, ast.FunctionDef] = {}
        self.constants: dict[str, ast.expr] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        for node in self.tree.body:
            if isinstance(node, ast.FunctionDef):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.constants[node.targets[0].id] = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.constants[node.target.id] = node.value


class _Reader:
    """Evaluates preset builders over literal values, tracking where each config field is set."""

    def __init__(self, root: Path) -> None:
        self.config = _Module(CONFIG_FILE, (root / CONFIG_FILE).read_text(encoding="utf-8"))
        self.presets = _Module(PRESETS_FILE, (root / PRESETS_FILE).read_text(encoding="utf-8"))
        self.depth = 0

    # -- dataclass defaults
    def default_object(self, cls: str) -> _Obj:
        node = self.config.classes.get(cls)
        if node is None:
            raise Unresolved(f"class {cls} not found in {CONFIG_FILE}")
        fields: dict[str, Setting] = {}
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            name = stmt.target.id
            where = f"{cls} defaults ({CONFIG_FILE})"
            if stmt.value is None:
                fields[name] = Setting("required, no default", where, resolved=False, line=stmt.lineno)
                continue
            try:
                fields[name] = Setting(self.default_value(stmt.value), where, line=stmt.lineno)
            except Unresolved as exc:
                fields[name] = Setting(str(exc), where, resolved=False, line=stmt.lineno)
        return _Obj(cls, fields)

    def default_value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "field":
            for kw in node.keywords:
                if kw.arg == "default":
                    return self.literal(kw.value, self.config)
                if kw.arg == "default_factory":
                    factory = kw.value
                    if isinstance(factory, ast.Name) and factory.id in CONFIG_CLASSES:
                        return self.default_object(factory.id)
                    if isinstance(factory, ast.Name) and factory.id in ("dict", "list"):
                        return {} if factory.id == "dict" else []
                    if isinstance(factory, ast.Lambda):
                        return self.literal(factory.body, self.config)
            raise Unresolved(ast.unparse(node))
        return self.literal(node, self.config)

    def literal(self, node: ast.expr, module: _Module) -> Any:
        return self.expr(node, module, {}, "").value

    # -- builders
    def builders(self) -> dict[str, str]:
        """preset name -> builder function name, from the `_BUILDERS`-style dict of names to functions."""
        found: dict[str, str] = {}
        for value in self.presets.constants.values():
            if isinstance(value, ast.Dict):
                for k, v in zip(value.keys, value.values, strict=True):
                    if (isinstance(k, ast.Constant) and isinstance(k.value, str) and isinstance(v, ast.Name)
                            and v.id in self.presets.functions):
                        found.setdefault(k.value, v.id)
        return found

    def call_function(self, name: str, args: list[_Val], kwargs: dict[str, _Val], caller: str) -> _Val:
        fn = self.presets.functions[name]
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Unresolved(f"calls nested deeper than {MAX_DEPTH} at {name}")
        try:
            env = self.bind(fn, args, kwargs)
            return self.run_body(fn.body, env, fn.name)
        finally:
            self.depth -= 1

    def bind(self, fn: ast.FunctionDef, args: list[_Val], kwargs: dict[str, _Val]) -> dict[str, _Val]:
        a = fn.args
        if a.vararg or a.kwarg or a.posonlyargs:
            raise Unresolved(f"{fn.name}: *args/**kwargs/positional-only parameters")
        params = [p.arg for p in a.args] + [p.arg for p in a.kwonlyargs]
        defaults: dict[str, ast.expr] = dict(zip([p.arg for p in a.args][len(a.args) - len(a.defaults):], a.defaults, strict=True))
        defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None})
        env: dict[str, _Val] = {}
        if len(args) > len(a.args):
            raise Unresolved(f"{fn.name}() given {len(args)} positional arguments")
        for pname, val in zip([p.arg for p in a.args][: len(args)], args, strict=True):
            env[pname] = val
        for key, val in kwargs.items():
            if key not in params:
                raise Unresolved(f"{fn.name}() has no parameter {key!r}")
            env[key] = val
        for pname in params:
            if pname not in env:
                if pname not in defaults:
                    raise Unresolved(f"{fn.name}(): parameter {pname!r} not given")
                val = self.expr(defaults[pname], self.presets, {}, fn.name)
                env[pname] = _Val(val.value, f"the default of parameter {pname}")
        return env

    def run_body(self, body: Sequence[ast.stmt], env: dict[str, _Val], fn: str) -> _Val:
        for stmt in body:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue  # a docstring
            if isinstance(stmt, ast.Pass):
                continue
            if isinstance(stmt, ast.Return):
                if stmt.value is None:
                    raise Unresolved(f"{fn} returns nothing")
                return self.expr(stmt.value, self.presets, env, fn)
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if stmt.value is None:
                    continue
                val = self.expr(stmt.value, self.presets, env, fn)
                for target in targets:
                    self.assign(target, val, env, fn, stmt.lineno)
                continue
            raise Unresolved(f"{fn} line {stmt.lineno}: `{ast.unparse(stmt).splitlines()[0]}`")
        raise Unresolved(f"{fn} has no return statement the reader follows")

    def assign(self, target: ast.expr, val: _Val, env: dict[str, _Val], fn: str, line: int) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = val
            return
        if isinstance(target, ast.Attribute):
            obj = self.expr(target.value, self.presets, env, fn).value
            if isinstance(obj, _Obj):
                obj.fields[target.attr] = Setting(val.value, f"{fn} ({PRESETS_FILE})", line=line, origin=val.origin)
                return
        raise Unresolved(f"{fn} line {line}: assignment to `{ast.unparse(target)}`")

    def construct(self, cls: str, node: ast.Call, env: dict[str, _Val], fn: str) -> _Obj:
        if node.args:
            raise Unresolved(f"{fn} line {node.lineno}: positional arguments to {cls}()")
        obj = self.default_object(cls)
        for kw in node.keywords:
            if kw.arg is None:
                raise Unresolved(f"{fn} line {node.lineno}: **kwargs to {cls}()")
            where = f"{fn} ({PRESETS_FILE})"
            try:
                val = self.expr(kw.value, self.presets, env, fn)
            except Unresolved:
                obj.fields[kw.arg] = Setting(f"computed: {ast.unparse(kw.value)}", where, resolved=False,
                                             line=kw.value.lineno)
                continue
            obj.fields[kw.arg] = Setting(val.value, where, line=kw.value.lineno, origin=val.origin)
        return obj

    def expr(self, node: ast.expr, module: _Module, env: dict[str, _Val], fn: str) -> _Val:
        if isinstance(node, ast.Constant):
            return _Val(node.value)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = [self.expr(e, module, env, fn).value for e in node.elts]
            return _Val(tuple(items) if isinstance(node, ast.Tuple) else items)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise Unresolved(ast.unparse(node))
            return _Val({self.expr(k, module, env, fn).value: self.expr(v, module, env, fn).value  # type: ignore[arg-type]
                         for k, v in zip(node.keys, node.values, strict=True)})
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
            inner = self.expr(node.operand, module, env, fn).value
            if isinstance(node.op, ast.Not):
                return _Val(not inner)
            return _Val(-inner if isinstance(node.op, ast.USub) else +inner)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Pow)):
            left = self.expr(node.left, module, env, fn).value
            right = self.expr(node.right, module, env, fn).value
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (left, right)):
                raise Unresolved(ast.unparse(node))
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise Unresolved(ast.unparse(node))
            ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
                   ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Pow: lambda a, b: a ** b}
            return _Val(ops[type(node.op)](left, right))
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            if node.id in module.constants and module is self.presets:
                return _Val(self.expr(module.constants[node.id], module, {}, fn).value)
            raise Unresolved(node.id)
        if isinstance(node, ast.Attribute):
            base = self.expr(node.value, module, env, fn).value
            if isinstance(base, _Obj) and node.attr in base.fields:
                return _Val(base.fields[node.attr].value)
            raise Unresolved(ast.unparse(node))
        if isinstance(node, ast.Call):
            return self.call(node, module, env, fn)
        raise Unresolved(ast.unparse(node))

    def call(self, node: ast.Call, module: _Module, env: dict[str, _Val], fn: str) -> _Val:
        func = node.func
        if isinstance(func, ast.Name) and func.id in CONFIG_CLASSES:
            return _Val(self.construct(func.id, node, env, fn))
        if isinstance(func, ast.Attribute) and ast.unparse(func) in ("copy.deepcopy", "copy.copy") and len(node.args) == 1:
            return _Val(_clone(self.expr(node.args[0], module, env, fn).value))
        if isinstance(func, ast.Name) and func.id in ("deepcopy", "copy") and len(node.args) == 1:
            return _Val(_clone(self.expr(node.args[0], module, env, fn).value))
        if ast.unparse(func) in ("dataclasses.replace", "replace") and len(node.args) == 1:
            obj = _clone(self.expr(node.args[0], module, env, fn).value)
            if not isinstance(obj, _Obj):
                raise Unresolved(ast.unparse(node))
            for kw in node.keywords:
                if kw.arg is None:
                    raise Unresolved(ast.unparse(node))
                val = self.expr(kw.value, module, env, fn)
                obj.fields[kw.arg] = Setting(val.value, f"{fn} ({PRESETS_FILE})", line=kw.value.lineno, origin=val.origin)
            return _Val(obj)
        if isinstance(func, ast.Name) and func.id in self.presets.functions and module is self.presets:
            args = []
            for a in node.args:
                args.append(self._arg(a, env, fn))
            kwargs = {}
            for kw in node.keywords:
                if kw.arg is None:
                    raise Unresolved(ast.unparse(node))
                kwargs[kw.arg] = self._arg(kw.value, env, fn)
            return self.call_function(func.id, args, kwargs, fn)
        raise Unresolved(ast.unparse(node))

    def _arg(self, node: ast.expr, env: dict[str, _Val], fn: str) -> _Val:
        val = self.expr(node, self.presets, env, fn)
        if val.origin:
            return val
        return _Val(val.value, f"{fn}, line {node.lineno}")


def _clone(value: Any) -> Any:
    if isinstance(value, _Obj):
        return _Obj(value.cls, {k: Setting(_clone(s.value), s.source, s.resolved) for k, s in value.fields.items()})
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def resolve_preset(root: Path | str, task: str) -> ResolvedConfig:
    """The resolved RunConfig of preset `task` in the tree at `root` (read statically, never imported)."""
    root = Path(root)
    try:
        reader = _Reader(root)
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        return ResolvedConfig(task, error=f"cannot read {CONFIG_FILE} / {PRESETS_FILE}: {type(exc).__name__}: {exc}")
    builders = reader.builders()
    builder = builders.get(task)
    if builder is None:
        return ResolvedConfig(task, error=f"no builder for {task!r} in {PRESETS_FILE} (known: {', '.join(builders)})")
    try:
        run = reader.call_function(builder, [], {}, "get_preset").value
    except (Unresolved, RecursionError, ArithmeticError, TypeError, ValueError) as exc:
        return ResolvedConfig(task, builder=builder, error=f"{builder} is not statically readable: {exc}")
    if not isinstance(run, _Obj) or run.cls != "RunConfig":
        return ResolvedConfig(task, builder=builder, error=f"{builder} does not return a RunConfig(...) the reader follows")
    out = ResolvedConfig(task, builder=builder, note=_get_preset_note(reader))
    for name, setting in run.fields.items():
        if isinstance(setting.value, _Obj):
            for sub, s in setting.value.fields.items():
                out.settings[f"{name}.{sub}"] = s
        else:
            out.settings[name] = setting
    return out


PLAIN_GET_PRESET_CALLS = {"copy.deepcopy", "deepcopy", "builder", "KeyError", "join", "', '.join", "list",
                          "sorted", "tuple"}


def _outside_data_branch(fn: ast.AST) -> list[ast.AST]:
    """The nodes of `get_preset` outside an ``if name in _DATA_BUILDERS:`` branch: that branch serves the presets
    fitted to a data file (the file task), not the registry's builders this reader resolves."""
    skipped: set[int] = set()
    for node in ast.walk(fn):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and any(isinstance(op, ast.In) for op in node.test.ops)
                and any(isinstance(c, ast.Name) and c.id == "_DATA_BUILDERS" for c in node.test.comparators)):
            skipped |= {id(n) for b in node.body for n in ast.walk(b)}
    return [n for n in ast.walk(fn) if id(n) not in skipped]


def _get_preset_note(reader: _Reader) -> str:
    """A warning when `get_preset` does more than copy what the builder returns (values may then differ)."""
    fn = reader.presets.functions.get("get_preset")
    if fn is None:
        return f"hrm/presets.py has no get_preset function; the values are what {PRESETS_FILE}'s builder returns"
    extra = set()
    for node in _outside_data_branch(fn):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            extra |= {ast.unparse(t) for t in targets if not isinstance(t, ast.Name)}
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name not in PLAIN_GET_PRESET_CALLS and not name.endswith(".join"):
                extra.add(name + "()")
    if not extra:
        return ""
    return ("get_preset does more than copy the builder's result (" + ", ".join(sorted(extra))
            + "): the values below are the builder's, before that")


# ------------------------------------------------------------------------------------------ task facts


@dataclass
class TaskFacts:
    """The facts of the task in force and of the parent's measurement, stated in every request."""

    task: str
    metric: str
    budget_seconds: float
    seq_len: int | None = None
    vocab_size: int | None = None
    n_train: int | None = None
    eval_segments: int | None = None
    seeds: list[int] = field(default_factory=list)
    parent_scores: list[float] = field(default_factory=list)
    parent_steps: list[float] = field(default_factory=list)
    parent_steps_per_second: list[float] = field(default_factory=list)
    parent_commit: str = ""

    @property
    def parent_mean(self) -> float | None:
        return statistics.fmean(self.parent_scores) if self.parent_scores else None

    @property
    def parent_sd(self) -> float | None:
        return statistics.stdev(self.parent_scores) if len(self.parent_scores) >= 2 else None

    def render(self) -> str:
        shape = []
        if self.seq_len is not None:
            shape.append(f"sequence length {self.seq_len}")
        if self.vocab_size is not None:
            shape.append(f"vocabulary {self.vocab_size} tokens")
        if self.n_train is not None:
            shape.append(f"{self.n_train} training puzzles")
        lines = [f"- task: {self.task}" + (f" ({', '.join(shape)}, from the run's dataset)" if shape else "")]
        lines.append(f"- training budget: {self.budget_seconds:g} s of wall clock per seed, enforced by the host; "
                     "a change that slows each step trains fewer steps")
        segments = f", after {self.eval_segments} ACT segments" if self.eval_segments else ""
        lines.append(f"- metric: {self.metric} on held-out puzzles{segments} (higher is better)")
        if self.parent_scores:
            mean = self.parent_mean
            sd = self.parent_sd
            per_seed = ", ".join(f"{s:.4f}" for s in self.parent_scores)
            spread = f", seed-to-seed sd {sd:.4f}" if sd is not None else ""
            lines.append(f"- parent{f' {self.parent_commit[:10]}' if self.parent_commit else ''}: {self.metric} "
                         f"mean {mean:.4f}{spread} over seeds {self.seeds} ({per_seed})")
        else:
            lines.append("- parent: not measured yet")
        if self.parent_steps:
            steps = statistics.fmean(self.parent_steps)
            rate = (f" at {statistics.fmean(self.parent_steps_per_second):.2f} steps/s"
                    if self.parent_steps_per_second else "")
            lines.append(f"- parent's training: {steps:.0f} optimiser steps in the budget{rate}")
        return "\n".join(lines)


def _numbers(evidence: Sequence[dict[str, Any]], key: str) -> list[float]:
    out = []
    for e in evidence:
        v = e.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(float(v))
    return out


def read_dataset_shape(data_dir: Path | str | None, split: str = "train") -> dict[str, Any]:
    """seq_len, vocab_size and the number of puzzles from a split's dataset.json (trusted, host-built data)."""
    if data_dir is None:
        return {}
    path = Path(data_dir) / split / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def task_facts(task: str, metric: str, budget_seconds: float, *, baseline: Any = None,
               data_dir: Path | str | None = None, eval_segments: int | None = None,
               n_train: int | None = None) -> TaskFacts:
    """The facts for a request: `baseline` is the parent's measurement (an `evolver.run.baseline.Baseline`, or any
    object with `scores`, `seeds`, `commit` and per-seed `evidence` holding `steps` and `steps_per_second`)."""
    meta = read_dataset_shape(data_dir)
    facts = TaskFacts(task=task, metric=metric, budget_seconds=float(budget_seconds),
                      seq_len=meta.get("seq_len"), vocab_size=meta.get("vocab_size"),
                      n_train=n_train, eval_segments=eval_segments)
    if baseline is not None:
        facts.parent_scores = [float(s) for s in getattr(baseline, "scores", [])]
        facts.seeds = list(getattr(baseline, "seeds", []))
        facts.parent_commit = str(getattr(baseline, "commit", ""))
        evidence = list(getattr(baseline, "evidence", []) or [])
        facts.parent_steps = _numbers(evidence, "steps")
        facts.parent_steps_per_second = _numbers(evidence, "steps_per_second")
    return facts


def render_facts_block(facts: TaskFacts, resolved: ResolvedConfig) -> str:
    """The block every request carries: the task facts, then the resolved configuration."""
    return "## Task in force (scored by the harness)\n" + facts.render() + "\n\n" + resolved.render()
