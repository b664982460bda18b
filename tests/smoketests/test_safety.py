"""The AST safety gate: what it rejects (with file:line), what real hrm code and ordinary ML edits it lets
through, and the manifest's protected-file hashes. The evasion classes have their own file,
test_safety_evasions.py."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smoketests.result import StageFailure
from smoketests.safety import check_changed_file, check_protected, check_source, run_safety

REPO = Path(__file__).resolve().parents[2]
HRM_FILES = sorted(
    p.relative_to(REPO).as_posix() for p in (REPO / "hrm").rglob("*.py") if "__pycache__" not in p.parts
)

BAD = {
    "subprocess_popen": "import subprocess\nsubprocess.Popen(['ls'])\n",
    "subprocess_run_shell": "import subprocess\nsubprocess.run(['ls'])\n",
    "os_system": "import os\nos.system('id')\n",
    "os_alias": "import os as o\nf = o.popen\n",
    "from_os": "from os import system\n",
    "socket": "import socket\n",
    "ctypes": "import ctypes\n",
    "eval": "x = eval('1+1')\n",
    "exec_compile": "exec(compile('1', 'f', 'exec'))\n",
    "dunder_import": "m = __import__('o' + 's')\n",
    "getattr_builtins": "import torch\nf = getattr(__builtins__, 'ev' + 'al')\n",
    "setattr_computed": "name = 'x'\nobj = object()\nsetattr(obj, name, 1)\n",
    "setattr_dunder": "setattr(object(), '__class__', int)\n",
    "subclasses": "x = ().__class__.__base__.__subclasses__()\n",
    "globals_attr": "def f():\n    pass\ng = f.__globals__\n",
    "escape_string": "s = '__subclasses__'\n",
    "pickle": "import pickle\n",
    "torch_load": "import torch\nsd = torch.load('x.pt')\n",
    "torch_load_alias": "import torch\nser = torch.serialization\nL = torch\nsd = L.load('x.pt', weights_only=False)\n",
    "torch_serialization_load": "import torch\nsd = torch.serialization.load('x.pt')\n",
    "np_allow_pickle": "import numpy as np\na = np.load('x.npy', allow_pickle=True)\n",
    "torch_hub": "import torch\nm = torch.hub.load('a', 'b')\n",
    "cpp_extension": "from torch.utils.cpp_extension import load\n",
    "importlib_util": "import importlib.util\n",
    "importlib_reload": "import importlib\nimport hrm\nimportlib.reload(hrm)\n",
    "sys_modules": "import sys\nsys.modules['hrm'] = None\n",
    "os_exit": "import os\nos._exit(0)\n",
    "open_etc": "open('/etc/hosts', 'w').write('x')\n",
    "open_harness": "with open('/harness/smoketests/trainability.py', 'a') as f:\n    f.write('x')\n",
    "open_computed_mode": "m = 'w'\nopen('f', m)\n",
    "relative_escape": "from ... import evolver\n",
    "engine_import": "import evolver.execute.cascade\n",
    "puzzles_scoring": "from puzzles.scoring import score_predictions\n",
    "star": "from torch import *\n",
}

GOOD = {
    "model_like": (
        "import math\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n"
        "class M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.l = nn.Linear(2, 2)\n    def forward(self, x):\n        return F.relu(self.l(x)) * math.sqrt(2)\n"
    ),
    "weights_only_load": "import torch\nsd = torch.load('c.pt', map_location='cpu', weights_only=True)\n",
    "np_load": "import numpy as np\na = np.load('x.npy')\n",
    "write_out": "import json\nwith open('/out/metrics.json', 'w') as f:\n    json.dump({}, f)\n",
    "relative_ok": "from .config import ModelConfig\n",
    "dtype_getattr": "import torch\nname = 'float32'\nd = getattr(torch, name)\n",
    "dict_key_named_dict": "state = {'__dict__': 1}\n",
    # SystemExit is an exception like any other: the stage runner catches it and fails the stage
    "sys_exit": "import sys\nsys.exit(0)\n",
    "puzzles_builder": "from puzzles.build import build_dataset\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_snippets_are_flagged_with_a_line(name: str) -> None:
    findings = check_source("hrm/evil.py", BAD[name])
    assert findings, f"{name} passed the gate"
    assert all(f.path == "hrm/evil.py" and f.line >= 1 for f in findings)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_snippets_pass(name: str) -> None:
    assert check_source("hrm/model.py", GOOD[name]) == []


def test_finding_points_at_the_line() -> None:
    findings = check_source("hrm/x.py", "import torch\n\nimport socket\n")
    assert [(f.line, "socket" in f.message) for f in findings] == [(3, True)]
    assert str(findings[0]).startswith("hrm/x.py:3: ")


# ---- the unmodified hrm/ tree, and small edits of it ----


def test_hrm_tree_is_found() -> None:
    assert len(HRM_FILES) >= 8 and "hrm/train.py" in HRM_FILES and "hrm/model.py" in HRM_FILES


@pytest.mark.parametrize("rel", HRM_FILES)
def test_every_unmodified_hrm_file_passes(rel: str) -> None:
    assert check_changed_file(REPO, rel) == []


def test_whole_unmodified_tree_passes_run_safety(tmp_path: Path) -> None:
    """All of hrm/ as the changed files, with an empty protected set (hrm/ is wholly evolvable)."""
    manifest = _manifest(tmp_path, HRM_FILES, {})
    metrics = run_safety(REPO, manifest)
    assert metrics["findings"] == [] and metrics["changed_files"] == len(HRM_FILES)
    assert metrics["protected_files"] == 0


def _one_constant_edit(source: str) -> str:
    """`source` with one literal changed: the first number (+1), else the first string (a suffix)."""
    tree = ast.parse(source)
    constants = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.end_col_offset is not None]
    numbers = [n for n in constants if isinstance(n.value, (int, float)) and not isinstance(n.value, bool)]
    strings = [n for n in constants if isinstance(n.value, str)]
    node = min(numbers or strings, key=lambda n: (n.lineno, n.col_offset))
    new = repr(node.value + 1) if node in numbers else repr(node.value + " (edited)")
    lines = source.splitlines(keepends=True)
    # replace the literal's exact source span (it may cover several lines: a docstring)
    start = sum(len(line) for line in lines[: node.lineno - 1]) + len(
        lines[node.lineno - 1].encode()[: node.col_offset].decode()
    )
    assert node.end_lineno is not None and node.end_col_offset is not None
    end = sum(len(line) for line in lines[: node.end_lineno - 1]) + len(
        lines[node.end_lineno - 1].encode()[: node.end_col_offset].decode()
    )
    return source[:start] + new + source[end:]


@pytest.mark.parametrize("rel", HRM_FILES)
def test_a_one_constant_edit_of_each_hrm_file_passes(rel: str, tmp_path: Path) -> None:
    original = (REPO / rel).read_text()
    edited = _one_constant_edit(original)
    assert edited != original and ast.dump(ast.parse(edited)) != ast.dump(ast.parse(original))
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(edited)
    assert check_changed_file(tmp_path, rel) == []
    metrics = run_safety(tmp_path, _manifest(tmp_path, [rel], {}))
    assert metrics["findings"] == []


REALISTIC_LAYER = '''

class GatedLinearMixer(nn.Module):
    """A gated linear mixer: per-head decay, SiLU gates, RMS-normalised output, optional attention."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float = 2.0, activation: str = "silu") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        inner = int(round(expansion * hidden_size / 64)) * 64
        self.in_proj = nn.Linear(hidden_size, 2 * inner, bias=False)
        self.out_proj = nn.Linear(inner, hidden_size, bias=False)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.decay = nn.Parameter(torch.linspace(-4.0, -1.0, num_heads))
        self.act = getattr(F, activation)
        self.blocks = nn.ModuleList([nn.LayerNorm(hidden_size) for _ in range(2)])
        self.register_buffer("scale", torch.tensor(1.0 / math.sqrt(self.head_dim)), persistent=False)
        nn.init.trunc_normal_(self.in_proj.weight, std=0.02)
        nn.init.zeros_(self.out_proj.weight)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, -1).unbind(dim=2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).reshape(b, t, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        x = self.blocks[0](x + self.attend(x))
        u, g = self.in_proj(x).chunk(2, dim=-1)
        u = u.view(b, t, self.num_heads, -1)
        w = torch.sigmoid(self.decay).view(1, 1, -1, 1)
        mixed = torch.einsum("bthd,bshd->bthd", torch.cumsum(u * w, dim=1), u.softmax(dim=-1)) * self.scale
        y = mixed.reshape(b, t, -1) * self.act(g)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.blocks[1](self.out_proj(y).to(x.dtype))


@torch.no_grad()
def lion_step(params: list[torch.Tensor], grads: list[torch.Tensor], lr: float, beta: float = 0.9) -> None:
    torch._foreach_mul_(params, 1.0 - lr * 0.01)
    for p, g in zip(params, grads, strict=True):
        p.add_(torch.sign(g * (1 - beta)), alpha=-lr)


def norm_by_name(name: str, dim: int) -> nn.Module:
    return getattr(nn, name)(dim)


torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.benchmark = True
'''


def test_a_realistic_ml_edit_passes(tmp_path: Path) -> None:
    source = (REPO / "hrm" / "layers.py").read_text()
    header = "import math\n\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n"
    (tmp_path / "hrm").mkdir()
    (tmp_path / "hrm" / "layers.py").write_text(source + "\n" + header + REALISTIC_LAYER)
    assert check_changed_file(tmp_path, "hrm/layers.py") == []
    ast.parse((tmp_path / "hrm" / "layers.py").read_text())  # the edit is real Python


REALISTIC_TRAINER_EDIT = '''
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


class Prefetcher:
    """Batches prepared on a daemon thread while the step runs."""

    def __init__(self, stream, device: torch.device, depth: int = 2) -> None:
        import queue

        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._fill, args=(stream, device), daemon=True)
        self.thread.start()

    def _fill(self, stream, device) -> None:
        while (batch := stream.next()) is not None:
            self.queue.put({k: torch.as_tensor(np.asarray(v)).to(device, non_blocking=True) for k, v in batch.items()})


def save_metrics(out: Path, record: dict) -> None:
    os.makedirs(out, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump({**record, "wall": time.perf_counter(), "threads": os.cpu_count()}, handle)
    os.replace(tmp, out / "metrics.json")
    torch.save({"step": record.get("step", 0)}, out / "extra_state.pt")
    if os.environ.get("HRM_DEBUG"):
        print(json.dumps(record, indent=2))
'''


def test_a_realistic_trainer_edit_passes() -> None:
    assert check_source("hrm/train.py", REALISTIC_TRAINER_EDIT) == []


# ---- changed-file rules and the manifest ----


def test_changed_file_rules(tmp_path: Path) -> None:
    (tmp_path / "hrm").mkdir()
    (tmp_path / "hrm" / "ok.py").write_text("x = 1\n")
    (tmp_path / "tool.py").write_text("x = 1\n")
    assert check_changed_file(tmp_path, "hrm/ok.py") == []
    assert check_changed_file(tmp_path, "hrm/deleted.py") == []
    assert "outside hrm/" in check_changed_file(tmp_path, "tool.py")[0].message
    assert check_changed_file(tmp_path, "sitecustomize.py")
    assert check_changed_file(tmp_path, "hrm/fast.so")
    assert check_changed_file(tmp_path, "../etc/passwd")


def _manifest(tmp_path: Path, changed: list[str], protected: dict[str, str | None]) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps({"version": 1, "parent_commit": "x", "changed_files": changed, "protected": protected})
    )
    return path


def test_run_safety_protected_hashes(tmp_path: Path) -> None:
    """The protected set is whatever the host lists (here harness-side files, none under hrm/)."""
    repo = tmp_path / "repo"
    (repo / "hrm").mkdir(parents=True)
    (repo / "protected").mkdir()
    (repo / "hrm" / "model.py").write_text("import torch\n")
    (repo / "protected" / "budget.txt").write_text("x = 1\n")
    good = hashlib.sha256(b"x = 1\n").hexdigest()
    metrics = run_safety(repo, _manifest(tmp_path, ["hrm/model.py"], {"protected/budget.txt": good}))
    assert metrics["findings"] == [] and metrics["protected_files"] == 1

    (repo / "protected" / "budget.txt").write_text("x = 2\n")
    with pytest.raises(StageFailure, match="protected file modified"):
        run_safety(repo, _manifest(tmp_path, ["hrm/model.py"], {"protected/budget.txt": good}))
    assert check_protected(repo, {"protected/new.txt": None}) == []
    (repo / "protected" / "new.txt").write_text("")
    assert "added" in check_protected(repo, {"protected/new.txt": None})[0].message
    (repo / "protected" / "budget.txt").unlink()
    assert "removed" in check_protected(repo, {"protected/budget.txt": good})[0].message


def test_an_empty_protected_set_lets_every_hrm_file_change(tmp_path: Path) -> None:
    shutil.copytree(REPO / "hrm", tmp_path / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("hrm/train.py", "hrm/evaluate.py", "hrm/model.py"):
        path = tmp_path / rel
        path.write_text(path.read_text() + "\nEDITED = 1\n")
    metrics = run_safety(
        tmp_path, _manifest(tmp_path, ["hrm/train.py", "hrm/evaluate.py", "hrm/model.py"], {})
    )
    assert metrics == {"changed_files": 3, "protected_files": 0, "findings": []}


def test_gate_names_no_protected_file_under_hrm() -> None:
    """Which files are protected is the host's manifest alone: the gate's source names none under hrm/."""
    source = (REPO / "smoketests" / "safety.py").read_text()
    tree = ast.parse(source)
    hrm_paths = [
        n.value for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("hrm/")
    ]  # fmt: skip
    assert hrm_paths == []


def test_run_safety_lists_each_finding(tmp_path: Path) -> None:
    (tmp_path / "hrm").mkdir()
    (tmp_path / "hrm" / "model.py").write_text("import ctypes\nimport socket\n")
    with pytest.raises(StageFailure) as info:
        run_safety(tmp_path, _manifest(tmp_path, ["hrm/model.py"], {}))
    assert "hrm/model.py:1:" in info.value.reason and "hrm/model.py:2:" in info.value.reason
    assert len(info.value.metrics["findings"]) == 2


def test_the_stage_cli_reports_the_finding(tmp_path: Path) -> None:
    repo, out = tmp_path / "repo", tmp_path / "out"
    (repo / "hrm").mkdir(parents=True)
    out.mkdir()
    (repo / "hrm" / "model.py").write_text("import os\n\ngetattr(os, '_ex' + 'it')(0)\n")
    manifest = _manifest(tmp_path, ["hrm/model.py"], {})
    proc = subprocess.run(
        [sys.executable, "-m", "smoketests", "safety", "--repo", str(repo), "--data", str(repo), "--out", str(out),
         "--manifest", str(manifest)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads((out / "safety.json").read_text())
    assert (
        result["ok"] is False
        and "hrm/model.py:3: getattr() with a computed attribute name" in result["reason"]
    )
