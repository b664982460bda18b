"""Payloads that passed the old static gate, one test per evasion class, each asserting the rejection and
its reason (file:line and what was found); then the patterns the unmodified hrm/ relies on, which must
stay accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoketests.result import StageFailure
from smoketests.safety import Finding, check_source, run_safety

PATH = "hrm/model.py"


def findings(source: str) -> list[Finding]:
    return check_source(PATH, source)


def assert_rejected(source: str, line: int, *needles: str) -> None:
    """Some finding at `line` names every needle, and prints as `hrm/model.py:LINE: ...`."""
    found = findings(source)
    at_line = [f for f in found if f.line == line and all(n in f.message for n in needles)]
    assert at_line, f"no finding at line {line} naming {needles}; got {[str(f) for f in found]}"
    assert str(at_line[0]).startswith(f"{PATH}:{line}: ")


# ---- 1. computed getattr names ("_ex" + "it" on os) ----


@pytest.mark.parametrize(
    "source, how",
    [
        ("import os\ngetattr(os, '_ex' + 'it')(0)\n", "'_ex' + 'it'"),
        ("import os\nname = '_ex' + 'it'\ngetattr(os, name)(0)\n", "'name' is assembled at run time"),
        ("import os\ndef f():\n    n = '_ex'\n    n += 'it'\n    return getattr(os, n)\n", "augmented"),
        ("import os\ngetattr(os, f'_ex{\"it\"}')(0)\n", "_ex{"),
        ("import os\ngetattr(os, ''.join(['_ex', 'it']))(0)\n", "join"),
        ("import os\ngetattr(os, 'tixe_'[::-1])(0)\n", "[::-1]"),
        ("import os\ngetattr(os, '%s%s' % ('_ex', 'it'))(0)\n", "%"),
    ],
)
def test_computed_getattr_name_is_rejected(source: str, how: str) -> None:
    line = source.count("\n", 0, source.index("getattr(")) + 1
    assert_rejected(source, line, "getattr() with a computed attribute name", how)


def test_computed_getattr_on_a_process_module_is_rejected_even_from_a_parameter() -> None:
    source = "import os\n\ndef call(member):\n    return getattr(os, member)(0)\n"
    assert_rejected(source, 4, "computed name on imported 'os'")


@pytest.mark.parametrize(
    "source, line, what",
    [
        ("import os\ngetattr(os, '_exit')(0)\n", 2, "'_exit'"),
        ("import sys\nf = getattr(sys, '_getframe')(1)\n", 2, "'_getframe'"),
        ("x = getattr(print, '__globals__')\n", 1, "dunder '__globals__'"),
        ("x = hasattr(object, '__subclasses__')\n", 1, "dunder '__subclasses__'"),
        ("def f():\n    pass\nc = getattr(f, '__code__')\n", 3, "dunder '__code__'"),
        ("import os\nsetattr(os, 'x', 1)\n", 2, "monkeypatching"),
        ("delattr(object(), '__init__'.upper())\n", 1, "delattr() with a computed attribute name"),
    ],
)
def test_literal_escape_names_in_attribute_builtins_are_rejected(source: str, line: int, what: str) -> None:
    assert_rejected(source, line, what)


def test_getattr_as_a_value_is_rejected() -> None:
    assert_rejected(
        "import functools\nimport os\nget = functools.partial(getattr, os)\n", 3, "'getattr' used as a value"
    )


# ---- 2. builtins: getattr(builtins, "__imp" + "ort__") ----


def test_builtins_import_and_computed_dunder_are_rejected() -> None:
    source = "import builtins\n\nimp = getattr(builtins, '__imp' + 'ort__')\nimp('subprocess').run(['id'])\n"
    assert_rejected(source, 1, "import of 'builtins'", "eval, exec and __import__")
    assert_rejected(source, 3, "getattr() with a computed attribute name", "'__imp' + 'ort__'")
    assert_rejected(source, 3, "access to the builtins module")
    assert_rejected(source, 4, "forbidden module 'subprocess'")


@pytest.mark.parametrize(
    "source, what",
    [
        ("f = getattr(__builtins__, 'ev' + 'al')\n", "dunder name '__builtins__'"),
        ("b = print.__self__\n", "'.__self__'"),
        ("import torch\nb = torch.serialization.__builtins__\n", "'.__builtins__'"),
        ("import os\nb = os.path.__dict__['__builtins__']\n", "'.__dict__'"),
    ],
)
def test_builtins_reached_without_importing_it_are_rejected(source: str, what: str) -> None:
    assert_rejected(source, source.count("\n"), what)


@pytest.mark.parametrize(
    "name", ["__import__", "eval", "exec", "compile", "globals", "vars", "locals", "breakpoint"]
)
def test_escape_hatch_builtins_are_rejected(name: str) -> None:
    source = f"import torch\nx = {name}\n"
    assert_rejected(source, 2, f"builtin '{name}'")


# ---- 3. assignment to attributes of imported modules ----


@pytest.mark.parametrize(
    "source, what",
    [
        ("import time\ntime.perf_counter = lambda: 0.0\n", "'time.perf_counter'"),
        ("import time as clock\nclock.monotonic = lambda: 0.0\n", "'time.monotonic'"),
        ("from time import perf_counter\nperf_counter.__wrapped__ = 1\n", "time.perf_counter.__wrapped__"),
        ("import torch\ntorch.save = print\n", "'torch.save'"),
        ("import torch\ntorch.manual_seed += 1\n", "'torch.manual_seed'"),
        ("import torch\ndel torch.load\n", "del of 'torch.load'"),
        ("import numpy as np\nnp.random.seed = print\n", "'numpy.random.seed'"),
        ("import json\nfor json.dumps in [print]:\n    pass\n", "'json.dumps'"),
        ("from hrm import evaluate\nevaluate.evaluate = print\n", "'hrm.evaluate.evaluate'"),
        ("import time\nsetattr(time, 'perf_counter', print)\n", "setattr() on 'time'"),
    ],
)
def test_assignment_to_an_imported_module_attribute_is_rejected(source: str, what: str) -> None:
    assert_rejected(source, 2, what)


@pytest.mark.parametrize(
    "source, what",
    [
        ("import os\nos.environ['PYTHONPATH'] = '/tmp'\n", "item of 'os.environ'"),
        ("from os import environ\ndel environ['HOME']\n", "del of an item of 'os.environ'"),
        ("import os\nos.environ.update(PYTHONPATH='/tmp')\n", "os.environ.update"),
        ("import sys\nsys.modules['hrm.train'] = None\n", "'sys.modules'"),
    ],
)
def test_writes_into_module_state_are_rejected(source: str, what: str) -> None:
    assert_rejected(source, 2, what)


def test_torch_numerics_switches_may_be_set() -> None:
    source = (
        "import torch\ntorch.backends.cuda.matmul.allow_tf32 = True\ntorch.backends.cudnn.benchmark = True\n"
        "torch._dynamo.config.cache_size_limit = 64\n"
    )
    assert findings(source) == []


# ---- 4. process and file-system escapes (os.mkfifo and friends) ----


@pytest.mark.parametrize(
    "call",
    [
        "os.mkfifo('/out/pipe')", "os.mknod('/out/node')", "os.symlink('/etc', '/out/etc')",
        "os.link('/out/a', '/out/b')", "os.chmod('/out', 0o777)", "os.setuid(0)", "os.fork()",
        "os.kill(os.getpid(), 9)", "os.system('id')", "os.execv('/bin/sh', ['sh'])", "os.spawnl(0, 'sh')",
        "os._exit(0)", "os.abort()", "os.chdir('/tmp')", "os.putenv('A', 'b')", "os.popen('id')",
        "os.posix_spawn('/bin/sh', [], {})",
    ],
)  # fmt: skip
def test_os_escape_calls_are_rejected(call: str) -> None:
    member = call.split("(")[0]
    assert_rejected(f"import os\n{call}\n", 2, f"'{member}", "banned")


@pytest.mark.parametrize(
    "source, what",
    [
        ("from pathlib import Path\nPath('/out/x').symlink_to('/etc')\n", "'.symlink_to'"),
        ("from pathlib import Path\nPath('/out/x').chmod(0o777)\n", "'.chmod'"),
        ("import shutil\nshutil.chown('/out', 'root')\n", "shutil.chown"),
        ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, 1))\n", "resource.setrlimit"),
        ("import tempfile\ntempfile._os.system('id')\n", "module '_os' reached through 'tempfile'"),
    ],
)
def test_other_file_system_and_limit_escapes_are_rejected(source: str, what: str) -> None:
    assert_rejected(source, 2, what)


@pytest.mark.parametrize(
    "source, line, what",
    [
        ("import subprocess\nsubprocess.Popen(['sh'])\n", 2, "only subprocess."),
        ("import subprocess\nsubprocess.run(['sh', '-c', 'id'])\n", 2, "does not start with sys.executable"),
        ("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'x'])\n", 2, "does not start with"),
        ("import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'hrm'], cwd='/tmp')\n", 2, "no cwd"),
        ("import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'hrm'], env={})\n", 2, "no env"),
        ("import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'hrm'], shell=True)\n", 2, "no shell"),
        ("import subprocess, sys\ndef f():\n    c = [sys.executable, '-m', 'hrm']\n    c[0] = 'sh'\n"
         "    subprocess.run(c)\n", 5, "'c' is used elsewhere at line 4"),
        ("import subprocess, sys\ndef f(extra):\n    c = [sys.executable, '-m', 'hrm']\n    c += extra\n"
         "    subprocess.run(c)\n", 5, "extended with a non-literal"),
        ("from subprocess import run\nr = run\n", 2, "'subprocess.run' used other than as a direct call"),
        ("import ctypes\n", 1, "raw memory"),
        ("import socket\n", 1, "network"),
        ("import multiprocessing\n", 1, "new processes"),
    ],
)  # fmt: skip
def test_process_creation_outside_the_one_pattern_is_rejected(source: str, line: int, what: str) -> None:
    assert_rejected(source, line, what)


@pytest.mark.parametrize(
    "source, what",
    [
        ("import signal\nsignal.alarm(1)\n", "signal.alarm"),
        ("import signal\nsignal.signal(signal.SIGALRM, print)\n", "signal.SIGALRM"),
        ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n", "signal.SIG_IGN"),
        ("import signal\nsignal.signal(14, print)\n", "numeric signal 14"),
        ("import signal\nsignal.setitimer(signal.ITIMER_REAL, 1)\n", "signal.setitimer"),
        ("import signal\nsignal.raise_signal(signal.SIGKILL)\n", "signal.raise_signal"),
    ],
)
def test_signal_use_beyond_catching_sigint_sigterm_is_rejected(source: str, what: str) -> None:
    assert_rejected(source, 2, what)


# ---- 5. monkeypatching the harness (smoketests.* run functions) ----


@pytest.mark.parametrize(
    "source, line, what",
    [
        ("import smoketests.trainability as st\n", 1, "import of 'smoketests.trainability' (the harness)"),
        ("import smoketests.trainability as st\nst.run_trainability = lambda *a, **k: {}\n", 2,
         "'smoketests.trainability.run_trainability', an attribute of an imported module"),
        ("from smoketests import trainability\ntrainability.run_trainability = print\n", 2, "monkeypatching"),
        ("import importlib\nm = importlib.import_module('smoketests.trainability')\n", 2,
         "importlib.import_module of module 'smoketests.trainability' (the harness)"),
        ("import importlib\nm = importlib.import_module('smoketests.' + 'train_stage')\nm.run_train = print\n", 2,
         "computed module name"),
        ("import importlib\nm = importlib.import_module('smoketests.' + 'train_stage')\nm.run_train = print\n", 3,
         "'m.run_train', an attribute of an imported module"),
        ("import importlib\ndef f():\n    name = 'smoketests.smoke'\n    return importlib.import_module(name)\n", 4,
         "'name' = 'smoketests.smoke'"),
        ("import importlib\ndef f(m):\n    setattr(importlib.import_module(m), 'run_smoke', print)\n", 3,
         "setattr() on"),
        ("x = 'smoketests.trainability'\n", 1, "forbidden module 'smoketests.trainability'"),
        ("import sys\nsys.modules['smoketests.smoke'].run_smoke = print\n", 2, "sys.modules"),
        ("import puzzles.scoring\n", 1, "only puzzles."),
        ("import puzzles.build\npuzzles.build.build_dataset = print\n", 2, "monkeypatching"),
    ],
)  # fmt: skip
def test_monkeypatching_the_harness_is_rejected(source: str, line: int, what: str) -> None:
    assert_rejected(source, line, what)


def test_setattr_on_a_dynamically_imported_module_is_rejected() -> None:
    source = "import importlib\nmod = importlib.import_module(name_from_config)\nsetattr(mod, 'run_smoke', print)\n"
    assert_rejected(source, 3, "setattr() on 'mod'")


# ---- 6. writing a STAGE json, then os._exit ----

FORGE = """import json
import os


def train(run, out_dir, **kwargs):
    with open(os.path.join(out_dir, "train.json"), "w") as handle:
        json.dump({"stage": "train", "ok": True, "reason": "", "metrics": {}, "seconds": 1.0}, handle)
    os._exit(0)
"""


def test_forged_stage_result_then_hard_exit_is_rejected() -> None:
    assert_rejected(FORGE, 6, "harness result file 'train.json'")
    assert_rejected(FORGE, 8, "'os._exit'", "banned")


def test_forged_stage_result_fails_the_stage_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "hrm").mkdir()
    (tmp_path / "hrm" / "train.py").write_text(FORGE)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"version": 1, "changed_files": ["hrm/train.py"], "protected": {}}))
    with pytest.raises(StageFailure) as info:
        run_safety(tmp_path, manifest)
    assert "hrm/train.py:8: " in info.value.reason and "os._exit" in info.value.reason
    assert "hrm/train.py:6: " in info.value.reason


@pytest.mark.parametrize(
    "source, what",
    [
        ("import os\nos.replace('/tmp/x', '/out/evaluate.json')\n", "'evaluate.json'"),
        ("import os\nos.kill(os.getpid(), 9)\n", "os.kill"),
        ("import signal\nsignal.pthread_kill(0, signal.SIGKILL)\n", "signal.pthread_kill"),
        ("import threading\nthreading._shutdown()\n", "private member '_shutdown'"),
    ],
)
def test_other_ways_to_forge_or_hard_exit_are_rejected(source: str, what: str) -> None:
    assert_rejected(source, 2, what)


# ---- frames, heap walks, class walks, import machinery, eval in disguise ----


@pytest.mark.parametrize(
    "source, line, what",
    [
        ("import sys\nf = sys._getframe(1)\n", 2, "sys._getframe"),
        ("import sys\nsys.settrace(print)\n", 2, "sys.settrace"),
        ("import inspect\n", 1, "frame introspection"),
        ("import traceback\n", 1, "frame introspection"),
        ("import gc\n", 1, "heap walks"),
        ("def g():\n    yield\nf = g().gi_frame.f_back\n", 3, "'.gi_frame'"),
        ("try:\n    pass\nexcept Exception as e:\n    f = e.__traceback__\n", 4, "'.__traceback__'"),
        ("import sys\ntb = sys.exc_info()[2]\nf = tb.tb_frame.f_globals\n", 3, "'.f_globals'"),
        ("x = ().__class__.__bases__[0].__subclasses__()\n", 1, "'.__subclasses__'"),
        ("x = object.__subclasses__()\n", 1, "'.__subclasses__'"),
        ("x = type(()).__mro__[-1]\n", 1, "'.__mro__'"),
        ("import importlib.util\n", 1, "only importlib.import_module"),
        ("import importlib\nimportlib.reload(importlib)\n", 2, "only importlib.import_module"),
        ("import typing\ntyping.get_type_hints(print)\n", 2, "typing.get_type_hints"),
        ("import operator\nimport os\noperator.attrgetter('path')(os)\n", 3, "operator.attrgetter"),
        ("import logging.config\n", 1, "logging.config"),
        ("import os\nmods = [os, print]\n", 2, "module 'os' used as a value"),
        ("import torch\nx = torch.serialization.os.system\n", 2, "module 'os' reached through 'torch.serialization'"),
        ("import hrm.train\nhrm.train.os._exit(0)\n", 2, "module 'os' reached through 'hrm.train'"),
        ("import torch\ndef f(a, b):\n    return getattr(getattr(torch, a), b)\n", 3, "result of a computed getattr"),
        ("from pathlib import Path\nPath('/tmp/statistics.py').write_text('x')\n", 2, "Python or native file"),
        ("f = open('/proc/self/mem', 'rb')\n", 1, "process memory"),
        ("import torch\ntorch._C._crash_if_csrc_asan(1)\n", 2, "torch._C"),
    ],
)  # fmt: skip
def test_introspection_and_import_machinery_are_rejected(source: str, line: int, what: str) -> None:
    assert_rejected(source, line, what)


# ---- what the unmodified hrm/ relies on stays accepted ----


@pytest.mark.parametrize(
    "source",
    [
        # hrm/model.py: a dtype named by the config
        "import torch\ndef _dtype(name):\n    return getattr(torch, name, None)\n",
        # hrm/train.py: carry dataclasses restored by module name, then their qualname walked
        "import importlib\ndef restore(state):\n    module_name, qualname = state['k'].split(':')\n"
        "    cls = importlib.import_module(module_name)\n    for part in qualname.split('.'):\n"
        "        cls = getattr(cls, part)\n    return cls\n",
        # hrm/train.py: SIGINT/SIGTERM set a flag, the previous handlers are put back
        "import signal\ndef stop(handler):\n    previous = {}\n    for sig in (signal.SIGINT, signal.SIGTERM):\n"
        "        previous[sig] = signal.signal(sig, handler)\n    for sig, old in previous.items():\n"
        "        signal.signal(sig, old)\n",
        # hrm/bench.py: each preset benchmarked in a child running the candidate's own package
        "import subprocess\nimport sys\ndef bench(name, batch_size):\n"
        "    cmd = [sys.executable, '-m', 'hrm', 'bench', '--presets', name, '--json']\n"
        "    if batch_size:\n        cmd += ['--batch-size', str(batch_size)]\n"
        "    return subprocess.run(cmd, capture_output=True, text=True, check=False)\n",
        # hrm/cli.py: argparse fields read by name; SystemExit from the entry point
        "import sys\ndef build(args):\n    for flag, key in (('n_train', 'n_train'), ('size', 'size')):\n"
        "        value = getattr(args, flag)\n    sys.exit(0)\n",
        # hrm/train.py: atomic writes, environment reads, the dataset builder of the trusted puzzles package
        "import os\nimport tempfile\ndef save(tmp, path):\n    os.replace(tmp, path)\n"
        "    d = os.environ.get('HRM_DATA_DIR') or tempfile.mkdtemp()\n"
        "    from puzzles.build import build_dataset\n    return d, build_dataset\n",
        # config lookups of layers and activations on torch
        "import torch.nn.functional as F\nfrom torch import nn\ndef make(cfg):\n"
        "    return getattr(nn, cfg.norm)(8), getattr(F, cfg['act'])\n",
    ],
)
def test_patterns_hrm_relies_on_pass(source: str) -> None:
    assert findings(source) == []
