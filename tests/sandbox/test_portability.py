"""The engine imports on a platform without the POSIX-only modules (Windows): a child interpreter in which
``resource``, ``fcntl``, ``pwd``, ``grp`` and ``termios`` cannot be imported and ``os`` has no uid calls imports
the sandbox and the CLI, picks the Docker backend and runs a real container with it (where an engine and the
image exist), and hears from the local backend why it cannot run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

from sandbox.hostfs import _allocated
from sandbox.local_backend import PLATFORM_REQUIREMENT

ROOT = Path(__file__).resolve().parents[2]

# The first thing the child runs: from here on it looks like a platform without these modules and calls.
BLOCK = textwrap.dedent("""
    import importlib.abc, os, sys
    BLOCKED = {"resource", "fcntl", "pwd", "grp", "termios"}
    for name in BLOCKED:
        sys.modules.pop(name, None)

    class NoPosix(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoPosix())
    for name in ("getuid", "getgid", "geteuid", "getegid", "getgroups", "setuid", "setgid", "setgroups",
                 "killpg"):
        if hasattr(os, name):
            delattr(os, name)
""")

CHECK = textwrap.dedent("""
    import json, tempfile
    from pathlib import Path
    import evolve, evolver.ui.cli, sandbox, sandbox.docker_backend, sandbox.doctor, sandbox.hostfs, sandbox.image
    import sandbox.local_backend
    from sandbox import SandboxSpec, get_backend, local_unavailable_reason

    report = {"blocked_loaded": sorted(m for m in BLOCKED if m in sys.modules)}
    try:
        report["docker"] = get_backend("docker").name
    except RuntimeError as exc:  # no engine or image here: the ordinary refusal, not an import failure
        report["docker"] = str(exc)
    report["local_reason"] = local_unavailable_reason()
    if report["docker"] == "docker":  # a real sandboxed run through the Docker backend, POSIX modules gone
        dout = Path(tempfile.mkdtemp())
        dres = get_backend("docker").run(SandboxSpec(
            command=["python", "-c", "open('/out/ok', 'w').write('ran')"], mounts=[], output_dir=dout,
            timeout_s=120))
        report["docker_run"] = {"exit_code": dres.exit_code, "error": dres.error,
                                "out": (dout / "ok").read_text() if (dout / "ok").exists() else None}
    out = Path(tempfile.mkdtemp())
    res = get_backend("local").run(SandboxSpec(command=["python", "-c", "pass"], mounts=[], output_dir=out))
    report["local_run"] = {"error": res.error, "exit_code": res.exit_code, "missing": res.missing}
    report["ids"] = list(sandbox.hostfs.sandbox_ids())
    (out / "f").write_bytes(b"x" * 10)
    report["usage"] = list(sandbox.hostfs.tree_usage(out))
    report["doctor"] = sorted(sandbox.doctor.doctor("hrm-evolve-sandbox:no-such-tag"))
    print("REPORT", json.dumps(report))
""")


def test_engine_imports_without_posix_modules() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HRM_EVOLVE_")}
    proc = subprocess.run([sys.executable, "-c", BLOCK + CHECK], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line[len("REPORT "):])
    assert report["blocked_loaded"] == []
    assert report["docker"] == "docker" or report["docker"].startswith("Docker sandbox unavailable"), report
    if os.environ.get("HRM_EVOLVE_REQUIRE_DOCKER") == "1":
        assert report["docker"] == "docker", report
    if report["docker"] == "docker":
        assert report["docker_run"] == {"exit_code": 0, "error": None, "out": "ran"}, report["docker_run"]
    assert report["local_reason"] and PLATFORM_REQUIREMENT in report["local_reason"]
    assert "resource" in report["local_reason"] and "os.getuid" in report["local_reason"]
    assert report["local_run"]["exit_code"] is None
    assert PLATFORM_REQUIREMENT in (report["local_run"]["error"] or ""), report["local_run"]
    assert report["local_run"]["missing"] == [report["local_reason"]]
    assert report["ids"] == [65534, 65534]
    assert report["usage"][1] == 1 and report["usage"][0] > 0
    assert "local_refused" in report["doctor"] and "running_as_root" in report["doctor"]


def test_file_usage_falls_back_to_size_without_st_blocks() -> None:
    assert _allocated(SimpleNamespace(st_size=1234)) == 1234  # type: ignore[arg-type]
    assert _allocated(SimpleNamespace(st_size=1234, st_blocks=8)) == 4096  # type: ignore[arg-type]
