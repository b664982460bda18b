"""The AST safety gate: what it rejects (with file:line), what real hrm code it lets through."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from smoketests.result import StageFailure
from smoketests.safety import check_changed_file, check_protected, check_source, run_safety

REPO = Path(__file__).resolve().parents[2]

BAD = {
    "subprocess": "import subprocess\nsubprocess.run(['ls'])\n",
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
    "np_allow_pickle": "import numpy as np\na = np.load('x.npy', allow_pickle=True)\n",
    "torch_hub": "import torch\nm = torch.hub.load('a', 'b')\n",
    "cpp_extension": "from torch.utils.cpp_extension import load\n",
    "importlib": "import importlib\n",
    "sys_modules": "import sys\nsys.modules['hrm'] = None\n",
    "sys_exit": "import sys\nsys.exit(0)\n",
    "os_exit": "import os\nos._exit(0)\n",
    "open_etc": "open('/etc/hosts', 'w').write('x')\n",
    "open_harness": "with open('/harness/smoketests/trainability.py', 'a') as f:\n    f.write('x')\n",
    "open_computed_mode": "m = 'w'\nopen('f', m)\n",
    "relative_escape": "from ... import evolver\n",
    "engine_import": "import evolver.cascade\n",
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
    findings = check_source("hrm/x.py", "import torch\n\nimport subprocess\n")
    assert [(f.line, "subprocess" in f.message) for f in findings] == [(3, True)]
    assert str(findings[0]).startswith("hrm/x.py:3: ")


# Tooling a candidate is not meant to evolve (the engine's path policy protects it): these shell out.
TOOLING = {"hrm/cli.py", "hrm/bench.py", "hrm/__main__.py"}


def test_every_real_hrm_file_passes() -> None:
    files = sorted((REPO / "hrm").rglob("*.py"))
    assert len(files) >= 8
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        findings = check_source(rel, path.read_text())
        if rel == "hrm/train.py":
            # the trainer re-imports carry classes by name from the checkpoint (importlib): a known finding
            assert all("importlib" in f.message for f in findings), findings
        elif rel not in TOOLING:
            assert findings == [], rel


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
    path.write_text(json.dumps({"version": 1, "parent_commit": "x", "changed_files": changed, "protected": protected}))
    return path


def test_run_safety_protected_hashes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "hrm").mkdir(parents=True)
    (repo / "hrm" / "model.py").write_text("import torch\n")
    (repo / "hrm" / "evaluate.py").write_text("x = 1\n")
    good = hashlib.sha256(b"x = 1\n").hexdigest()
    metrics = run_safety(repo, _manifest(tmp_path, ["hrm/model.py"], {"hrm/evaluate.py": good}))
    assert metrics["findings"] == [] and metrics["protected_files"] == 1

    (repo / "hrm" / "evaluate.py").write_text("x = 2\n")
    with pytest.raises(StageFailure, match="protected file modified"):
        run_safety(repo, _manifest(tmp_path, ["hrm/model.py"], {"hrm/evaluate.py": good}))
    assert check_protected(repo, {"hrm/new.py": None}) == []
    (repo / "hrm" / "new.py").write_text("")
    assert "added" in check_protected(repo, {"hrm/new.py": None})[0].message


def test_run_safety_lists_each_finding(tmp_path: Path) -> None:
    (tmp_path / "hrm").mkdir()
    (tmp_path / "hrm" / "model.py").write_text("import subprocess\nimport socket\n")
    with pytest.raises(StageFailure) as info:
        run_safety(tmp_path, _manifest(tmp_path, ["hrm/model.py"], {}))
    assert "hrm/model.py:1:" in info.value.reason and "hrm/model.py:2:" in info.value.reason
    assert len(info.value.metrics["findings"]) == 2
