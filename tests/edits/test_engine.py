"""The libcst patch engine on real files: every op, preservation, and every failure mode."""

from __future__ import annotations

import difflib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from edits.engine import EditError, apply_edits, plan_edits, unified_diff
from edits.paths import PathPolicy
from proposals.schema import Edit

EDIT = TypeAdapter(Edit)

# A module shaped like an HRM model file: dataclass config, classes with methods, comments, odd formatting.
MODEL = '''"""A small HRM-like model used as a patch-engine fixture."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

# Module constants
DEFAULT_EPS = 1e-5  # keep in sync with the paper
MAX_STEPS: int = 16
_SEEDS = [0,   1,  2]    # odd spacing on purpose


@dataclass
class BlockConfig:
    """Config for one block."""

    hidden_size: int = 64
    num_heads: int = 4  # heads per layer
    expansion: float = 4.0
    dropout: float = field(default=0.0)
    tags: list[str] = field(default_factory=list)
    name: str


def rms_norm(x: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Weightless RMS norm."""
    variance = x.float().square().mean(-1, keepdim=True)
    return (x * torch.rsqrt(variance + eps)).to(x.dtype)


def _init_weights(module: nn.Module) -> None:
    # truncated normal, like the reference
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)


class SwiGLU(nn.Module):
    """Gated MLP."""

    def __init__(self, hidden: int, expansion: float) -> None:
        super().__init__()
        inner = int(hidden * expansion * 2 / 3)
        self.gate_up = nn.Linear(hidden, inner * 2, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(nn.functional.silu(gate) * up)


class Block(nn.Module):
    """Post-norm transformer block."""

    norm_eps = 1e-5  # class attribute

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        self.config = config
        self.attn = nn.MultiheadAttention(config.hidden_size, config.num_heads, batch_first=True)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    # The forward pass: attention then MLP, each with a residual.
    @torch.compile(disable=True)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rms_norm(x + self.attn(x, x, x)[0], self.norm_eps)
        x = rms_norm(x + self.mlp(x), self.norm_eps)
        return x

    class Cache:
        """Nested class holding per-step state."""

        def reset(self) -> None:
            self.state = None

        def size(self) -> int:
            return 0


class ReasoningModule(nn.Module):
    def __init__(self, layers: list[Block]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        hidden = hidden + injection
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


class HRM(nn.Module):
    """Two recurrent modules at different timescales."""

    def __init__(self, config: BlockConfig, H_cycles: int = 2, L_cycles: int = 2) -> None:
        super().__init__()
        self.H_cycles = H_cycles
        self.L_cycles = L_cycles
        self.H = ReasoningModule([Block(config) for _ in range(2)])
        self.L = ReasoningModule([Block(config) for _ in range(2)])
        self.apply(_init_weights)

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # 1-step gradient approximation: all but the last step run without grad
        with torch.no_grad():
            for step in range(self.H_cycles * self.L_cycles - 1):
                z_L = self.L(z_L, z_H + x)
                if (step + 1) % self.L_cycles == 0:
                    z_H = self.H(z_H, z_L)
        z_L = self.L(z_L, z_H + x)
        z_H = self.H(z_H, z_L)
        return z_H, z_L

    def halt_logits(self, z_H: torch.Tensor) -> torch.Tensor:
        return z_H[:, 0].mean(-1, keepdim=True)  # q_halt


if torch.cuda.is_available():

    def device_name() -> str:
        return "cuda"

else:

    def device_name() -> str:
        return "cpu"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def schedule(step: int, warmup: int = 100) -> float:
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / 1000, 1.0)))


def maybe(value: Optional[int]) -> int:
    return value or 0
'''


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "hrm").mkdir(parents=True)
    (root / "hrm" / "model.py").write_text(MODEL)
    (root / "hrm" / "small.py").write_text("def f(x):\n    return x + 1\n\n\nY = 2\n")
    (root / "hrm" / "evaluate.py").write_text("def evaluate():\n    return 1.0\n")
    (root / "evolver").mkdir()
    (root / "evolver" / "patch.py").write_text("X = 1\n")
    return root


def edits(*specs: dict[str, Any]) -> list[Any]:
    return [EDIT.validate_python(spec) for spec in specs]


def read(repo: Path, rel: str = "hrm/model.py") -> str:
    return (repo / rel).read_text()


def changed_lines(before: str, after: str) -> list[int]:
    """1-based line numbers of `before` that were replaced or deleted, plus insertion points."""
    out: list[int] = []
    matcher = difflib.SequenceMatcher(None, before.splitlines(), after.splitlines(), autojunk=False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag != "equal":
            out += list(range(i1 + 1, i2 + 1)) or [i1 + 1]
    return out


def line_of(text: str, needle: str) -> int:
    return text.splitlines().index(needle) + 1


# ------------------------------------------------------------------------------------------------ every op


def test_replace_method_keeps_comments_above_and_touches_only_its_lines(repo: Path) -> None:
    code = (
        "@torch.compile(disable=True)\n"
        "def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        "    h = x + self.attn(x, x, x)[0]\n"
        "    return rms_norm(h + self.mlp(h), self.norm_eps)\n"
    )
    before = read(repo)
    applied = apply_edits(
        repo,
        edits({"op": "replace_function", "file": "hrm/model.py", "target": "Block.forward", "code": code}),
    )
    after = read(repo)
    assert applied[0].op == "replace_function" and applied[0].target == "Block.forward"
    assert "    # The forward pass: attention then MLP, each with a residual.\n    @torch.compile" in after
    assert "        h = x + self.attn(x, x, x)[0]\n" in after  # re-indented to method depth
    start = line_of(before, "    @torch.compile(disable=True)")
    touched = changed_lines(before, after)
    assert touched and all(start <= n <= start + 4 for n in touched), touched
    assert applied[0].lines_changed == 3 + 2  # 3 old body lines out, 2 new ones in


def test_replace_top_level_function_and_nested_method(repo: Path) -> None:
    apply_edits(
        repo,
        edits(
            {
                "op": "replace_function",
                "file": "hrm/model.py",
                "target": "rms_norm",
                "code": "    def rms_norm(x, eps=DEFAULT_EPS):\n        return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()\n",
            },
            {
                "op": "replace_function",
                "file": "hrm/model.py",
                "target": "Block.Cache.size",
                "code": "def size(self) -> int:\n    return 1\n",
            },
        ),
    )
    after = read(repo)
    assert "def rms_norm(x, eps=DEFAULT_EPS):\n    return x / (x.pow(2)" in after
    assert "        def size(self) -> int:\n            return 1\n" in after
    assert '    """Weightless RMS norm."""' not in after


def test_replace_class(repo: Path) -> None:
    code = "class SwiGLU(nn.Module):\n    def forward(self, x):\n        return x\n"
    before = read(repo)
    apply_edits(
        repo, edits({"op": "replace_class", "file": "hrm/model.py", "target": "SwiGLU", "code": code})
    )
    after = read(repo)
    assert "class SwiGLU(nn.Module):\n    def forward(self, x):\n        return x\n\n\nclass Block" in after
    assert after.count("class SwiGLU") == 1
    assert before.split("class SwiGLU")[0] == after.split("class SwiGLU")[0]


def test_add_function_after_anchor_and_at_end(repo: Path) -> None:
    apply_edits(
        repo,
        edits(
            {
                "op": "add_function",
                "file": "hrm/model.py",
                "code": "def layer_norm(x):\n    return x\n",
                "after": "rms_norm",
            },
            {
                "op": "add_function",
                "file": "hrm/model.py",
                "code": "def q_continue(self, z_H):\n    return -self.halt_logits(z_H)\n",
                "after": "HRM.halt_logits",
            },
            {
                "op": "add_function",
                "file": "hrm/model.py",
                "code": "def tail():\n    return 0\n",
                "after": None,
            },
        ),
    )
    after = read(repo)
    assert (
        "    return (x * torch.rsqrt(variance + eps)).to(x.dtype)\n\n\ndef layer_norm(x):\n    return x\n"
        in after
    )
    assert "# q_halt\n\n    def q_continue(self, z_H):\n        return -self.halt_logits(z_H)\n" in after
    assert after.endswith("    return value or 0\n\n\ndef tail():\n    return 0\n")


def test_add_class_after_anchor(repo: Path) -> None:
    code = "# a learned halting head\nclass HaltHead(nn.Module):\n    pass\n"
    applied = apply_edits(
        repo, edits({"op": "add_class", "file": "hrm/model.py", "code": code, "after": "ReasoningModule"})
    )
    assert applied[0].target == "HaltHead"
    after = read(repo)
    assert (
        "        return hidden\n\n\n# a learned halting head\nclass HaltHead(nn.Module):\n    pass\n\n\nclass HRM"
        in after
    )


def test_set_value_constant_class_attribute_and_dataclass_fields(repo: Path) -> None:
    before = read(repo)
    applied = apply_edits(
        repo,
        edits(
            {"op": "set_value", "file": "hrm/model.py", "target": "DEFAULT_EPS", "value": "1e-6"},
            {"op": "set_value", "file": "hrm/model.py", "target": "MAX_STEPS", "value": "32"},
            {"op": "set_value", "file": "hrm/model.py", "target": "Block.norm_eps", "value": "DEFAULT_EPS"},
            {"op": "set_value", "file": "hrm/model.py", "target": "BlockConfig.num_heads", "value": "8"},
            {
                "op": "set_value",
                "file": "hrm/model.py",
                "target": "BlockConfig.dropout",
                "value": "field(default=0.1)",
            },
            {"op": "set_value", "file": "hrm/model.py", "target": "BlockConfig.name", "value": '"hrm"'},
        ),
    )
    after = read(repo)
    assert "DEFAULT_EPS = 1e-6  # keep in sync with the paper\n" in after
    assert "MAX_STEPS: int = 32\n" in after
    assert "    norm_eps = DEFAULT_EPS  # class attribute\n" in after
    assert "    num_heads: int = 8  # heads per layer\n" in after
    assert "    dropout: float = field(default=0.1)\n" in after
    assert '    name: str = "hrm"\n' in after  # a field without a default gets one
    assert len(changed_lines(before, after)) == 6
    assert [a.lines_changed for a in applied] == [2] * 6


def test_add_import_from_and_plain_and_no_duplicate(repo: Path) -> None:
    apply_edits(
        repo,
        edits(
            {
                "op": "add_import",
                "file": "hrm/model.py",
                "module": "torch.nn",
                "name": "functional",
                "alias": "F",
            },
            {"op": "add_import", "file": "hrm/model.py", "module": "functools", "name": None, "alias": None},
            {
                "op": "add_import",
                "file": "hrm/model.py",
                "module": ".layers",
                "name": "rms_norm",
                "alias": None,
            },
        ),
    )
    after = read(repo)
    head = after.split("# Module constants")[0]
    assert (
        "from torch import nn\nfrom torch.nn import functional as F\nimport functools\nfrom .layers import rms_norm\n\n"
        in head
    )
    with pytest.raises(EditError, match="already imported"):
        apply_edits(
            repo,
            edits(
                {"op": "add_import", "file": "hrm/model.py", "module": "math", "name": None, "alias": None}
            ),
        )
    with pytest.raises(EditError, match="already imported"):
        apply_edits(
            repo,
            edits(
                {
                    "op": "add_import",
                    "file": "hrm/model.py",
                    "module": "typing",
                    "name": "Optional",
                    "alias": None,
                }
            ),
        )


def test_future_import_goes_to_the_top(repo: Path) -> None:
    apply_edits(
        repo,
        edits(
            {
                "op": "add_import",
                "file": "hrm/model.py",
                "module": "__future__",
                "name": "division",
                "alias": None,
            }
        ),
    )
    assert (
        '"""\n\nfrom __future__ import annotations\nfrom __future__ import division\n\nimport math'
        in read(repo)
    )


def test_delete_symbol_function_method_and_constant(repo: Path) -> None:
    apply_edits(
        repo,
        edits(
            {"op": "delete_symbol", "file": "hrm/model.py", "target": "count_parameters"},
            {"op": "delete_symbol", "file": "hrm/model.py", "target": "Block.Cache.reset"},
            {"op": "delete_symbol", "file": "hrm/model.py", "target": "_SEEDS"},
        ),
    )
    after = read(repo)
    assert "count_parameters" not in after and "def reset" not in after and "_SEEDS" not in after
    assert "        def size(self) -> int:" in after
    compile(after, "model.py", "exec")


def test_search_replace_exact_and_whitespace_tolerant(repo: Path) -> None:
    apply_edits(
        repo,
        edits(
            {
                "op": "search_replace",
                "file": "hrm/model.py",
                "search": "self.apply(_init_weights)",
                "replace": "self.apply(_init_weights)\n        self.steps = 0",
            },
            {
                # the model wrote single spaces and no indentation: still one match ignoring whitespace
                "op": "search_replace",
                "file": "hrm/model.py",
                "search": "hidden = hidden + injection\nfor layer in self.layers:",
                "replace": "hidden = hidden + 0.5 * injection\nfor layer in self.layers:",
            },
            {
                "op": "search_replace",
                "file": "hrm/model.py",
                "search": "_SEEDS = [0, 1, 2]",
                "replace": "_SEEDS = [0]",
            },
        ),
    )
    after = read(repo)
    assert "        self.apply(_init_weights)\n        self.steps = 0\n" in after
    assert "        hidden = hidden + 0.5 * injection\n        for layer in self.layers:\n" in after
    assert "_SEEDS = [0]    # odd spacing on purpose\n" in after


def test_applied_diff_applies_with_git(repo: Path, tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    result = plan_edits(
        repo,
        edits(
            {"op": "set_value", "file": "hrm/model.py", "target": "MAX_STEPS", "value": "8"},
            {"op": "set_value", "file": "hrm/small.py", "target": "Y", "value": "3"},
        ),
        PathPolicy(),
    )
    patch = tmp_path / "p.diff"
    patch.write_text(result.diff())
    assert result.diff().startswith("diff --git a/hrm/model.py b/hrm/model.py\n")
    subprocess.run(["git", "-C", str(repo), "apply", "--check", str(patch)], check=True)
    assert unified_diff({"a.py": "x\n"}, {"a.py": "x\n"}) == ""


# ------------------------------------------------------------------------------------------------ failures


def test_typo_gives_did_you_mean(repo: Path) -> None:
    with pytest.raises(EditError) as info:
        apply_edits(
            repo,
            edits(
                {
                    "op": "replace_function",
                    "file": "hrm/model.py",
                    "target": "Block.forwrd",
                    "code": "def forwrd(self):\n    pass\n",
                }
            ),
        )
    err = info.value
    assert (err.index, err.op, err.file, err.target) == (
        0,
        "replace_function",
        "hrm/model.py",
        "Block.forwrd",
    )
    assert "did you mean: Block.forward" in err.reason
    with pytest.raises(EditError, match="did you mean: BlockConfig.num_heads"):
        apply_edits(
            repo,
            edits(
                {"op": "set_value", "file": "hrm/model.py", "target": "BlockConfig.num_head", "value": "2"}
            ),
        )


def test_ambiguous_target_lists_line_numbers(repo: Path) -> None:
    text = read(repo)
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip().startswith("def device_name")]
    assert len(lines) == 2
    with pytest.raises(EditError) as info:
        apply_edits(
            repo,
            edits(
                {
                    "op": "replace_function",
                    "file": "hrm/model.py",
                    "target": "device_name",
                    "code": "def device_name():\n    return 'x'\n",
                }
            ),
        )
    assert f"matches 2 definitions (lines {lines[0]}, {lines[1]})" in info.value.reason
    assert read(repo) == text


def test_kind_mismatch_and_wrong_name_in_code(repo: Path) -> None:
    with pytest.raises(EditError, match="'SwiGLU' is a class, not a function; use replace_class"):
        apply_edits(
            repo,
            edits(
                {
                    "op": "replace_function",
                    "file": "hrm/model.py",
                    "target": "SwiGLU",
                    "code": "def SwiGLU():\n    pass\n",
                }
            ),
        )
    with pytest.raises(EditError, match="code defines 'norm' but the target's name is 'rms_norm'"):
        apply_edits(
            repo,
            edits(
                {
                    "op": "replace_function",
                    "file": "hrm/model.py",
                    "target": "rms_norm",
                    "code": "def norm(x):\n    return x\n",
                }
            ),
        )
    with pytest.raises(EditError, match="exactly one top-level function"):
        apply_edits(
            repo,
            edits(
                {
                    "op": "replace_function",
                    "file": "hrm/model.py",
                    "target": "rms_norm",
                    "code": "import os\ndef rms_norm(x):\n    return x\n",
                }
            ),
        )


def test_no_op_edits_are_rejected(repo: Path) -> None:
    original = (
        "def rms_norm(x: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:\n"
        + MODEL.split("def rms_norm(x: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:\n")[1].split(
            "\n\n\n"
        )[0]
        + "\n"
    )
    with pytest.raises(EditError, match="no-op"):
        apply_edits(
            repo,
            edits({"op": "replace_function", "file": "hrm/model.py", "target": "rms_norm", "code": original}),
        )
    with pytest.raises(EditError, match="no-op"):
        apply_edits(
            repo, edits({"op": "set_value", "file": "hrm/model.py", "target": "MAX_STEPS", "value": "16"})
        )
    with pytest.raises(EditError, match="cancel out"):
        apply_edits(
            repo,
            edits(
                {"op": "set_value", "file": "hrm/model.py", "target": "MAX_STEPS", "value": "8"},
                {"op": "set_value", "file": "hrm/model.py", "target": "MAX_STEPS", "value": "16"},
            ),
        )


def test_failure_writes_nothing_even_for_earlier_good_edits(repo: Path) -> None:
    before_model, before_small = read(repo), read(repo, "hrm/small.py")
    with pytest.raises(EditError) as info:
        apply_edits(
            repo,
            edits(
                {"op": "set_value", "file": "hrm/small.py", "target": "Y", "value": "5"},
                {"op": "set_value", "file": "hrm/model.py", "target": "MAX_STEPS", "value": "8"},
                {"op": "delete_symbol", "file": "hrm/model.py", "target": "does_not_exist"},
            ),
        )
    assert info.value.index == 2
    assert read(repo) == before_model and read(repo, "hrm/small.py") == before_small
    assert not list((repo / "hrm").glob(".*tmp"))


def test_every_failing_edit_is_listed_and_later_edits_are_still_checked(repo: Path) -> None:
    before = read(repo)
    with pytest.raises(EditError) as info:
        apply_edits(
            repo,
            edits(
                {"op": "delete_symbol", "file": "hrm/model.py", "target": "no_such_function"},
                {"op": "set_value", "file": "hrm/model.py", "target": "MAX_STEPS", "value": "8"},
                {"op": "set_value", "file": "hrm/missing.py", "target": "X", "value": "1"},
                {"op": "set_value", "file": "hrm/missing.py", "target": "Z", "value": "2"},
                {"op": "set_value", "file": "hrm/model.py", "target": "NOPE", "value": "3"},
            ),
        )
    err = info.value
    assert [e.index for e in err.errors] == [0, 2, 3, 4]
    assert err.index == 0
    assert "4 edits failed" in str(err)
    assert "edits[2] (set_value) in hrm/missing.py" in str(err) and "file does not exist" in str(err)
    assert "edits[4]" in str(err) and "NOPE" in str(err)
    assert "edits[1]" not in str(err)  # the good edit is not blamed
    assert read(repo) == before


def test_one_failing_edit_keeps_the_plain_message(repo: Path) -> None:
    with pytest.raises(EditError) as info:
        apply_edits(repo, edits({"op": "set_value", "file": "hrm/model.py", "target": "NOPE", "value": "3"}))
    assert info.value.errors == [info.value]
    assert str(info.value).startswith("edits[0] (set_value) in hrm/model.py target 'NOPE': ")


def test_dry_run_reports_without_writing(repo: Path) -> None:
    before = read(repo, "hrm/small.py")
    applied = apply_edits(
        repo, edits({"op": "set_value", "file": "hrm/small.py", "target": "Y", "value": "7"}), dry_run=True
    )
    assert applied[0].lines_changed == 2 and read(repo, "hrm/small.py") == before


def test_result_must_compile(repo: Path) -> None:
    # parses as a statement sequence but is not valid Python where it lands
    with pytest.raises(EditError, match="does not compile"):
        apply_edits(
            repo,
            edits(
                {
                    "op": "search_replace",
                    "file": "hrm/small.py",
                    "search": "return x + 1",
                    "replace": "return x +",
                }
            ),
        )
    with pytest.raises(EditError, match="does not compile: 'return' outside function"):
        apply_edits(
            repo,
            edits({"op": "search_replace", "file": "hrm/small.py", "search": "Y = 2", "replace": "return 2"}),
        )


def test_search_replace_missing_and_ambiguous(repo: Path) -> None:
    with pytest.raises(EditError) as info:
        apply_edits(
            repo,
            edits(
                {
                    "op": "search_replace",
                    "file": "hrm/model.py",
                    "search": "z_L = self.L(z_L, z_H - x)",
                    "replace": "pass",
                }
            ),
        )
    assert "not found" in info.value.reason and "closest text" in info.value.reason
    assert "z_L = self.L(z_L, z_H + x)" in info.value.reason
    with pytest.raises(EditError, match=r"occurs 2 times \(lines \d+, \d+\)"):
        apply_edits(
            repo,
            edits(
                {
                    "op": "search_replace",
                    "file": "hrm/model.py",
                    "search": "z_L = self.L(z_L, z_H + x)",
                    "replace": "pass",
                }
            ),
        )
    with pytest.raises(EditError, match="matches 2 places ignoring whitespace"):
        apply_edits(
            repo,
            edits(
                {
                    "op": "search_replace",
                    "file": "hrm/model.py",
                    "search": "z_L  =  self.L(z_L, z_H + x)",
                    "replace": "pass",
                }
            ),
        )


@pytest.mark.parametrize(
    "path,fragment",
    [
        ("puzzles/scoring.py", "protected"),
        ("evolver/patch.py", "protected"),
        ("hrm/missing.py", "does not exist"),
        ("hrm/link.py", "symlink"),
    ],
)
def test_forbidden_and_missing_files(repo: Path, tmp_path: Path, path: str, fragment: str) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("X = 1\n")
    (repo / "hrm" / "link.py").symlink_to(outside)
    with pytest.raises(EditError) as info:
        apply_edits(repo, edits({"op": "set_value", "file": path, "target": "X", "value": "2"}))
    assert fragment in info.value.reason
    assert outside.read_text() == "X = 1\n"


def test_escape_paths_are_rejected_by_the_engine_too(repo: Path) -> None:
    # the schema refuses these, but the engine must not rely on it: build the edits unvalidated
    from proposals.schema import SetValue

    for path, fragment in (("../outside.py", "'..'"), ("/etc/hosts.py", "absolute")):
        edit = SetValue.model_construct(op="set_value", file=path, target="X", value="2")
        with pytest.raises(EditError, match=fragment):
            apply_edits(repo, [edit])


def test_add_existing_name_is_rejected(repo: Path) -> None:
    with pytest.raises(EditError, match="'HRM.forward' already exists"):
        apply_edits(
            repo,
            edits(
                {
                    "op": "add_function",
                    "file": "hrm/model.py",
                    "code": "def forward(self):\n    pass\n",
                    "after": "HRM.halt_logits",
                }
            ),
        )


def test_crlf_file_keeps_its_newlines(repo: Path) -> None:
    path = repo / "hrm" / "crlf.py"
    path.write_bytes(b"def f(x):\r\n    return x\r\n\r\n\r\nZ = 1  # z\r\n")
    apply_edits(
        repo,
        edits(
            {"op": "set_value", "file": "hrm/crlf.py", "target": "Z", "value": "2"},
            {
                "op": "replace_function",
                "file": "hrm/crlf.py",
                "target": "f",
                "code": "def f(x):\n    return 2 * x\n",
            },
        ),
    )
    assert path.read_bytes() == b"def f(x):\r\n    return 2 * x\r\n\r\n\r\nZ = 2  # z\r\n"
