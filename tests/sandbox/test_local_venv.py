"""The local backend with the engine in an ordinary venv: the sandbox runs the venv's own interpreter (not its
realpath), sees the venv even under /tmp (bubblewrap's private /tmp), sees what its .pth files link, and never
sees the engine checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from sandbox.local_backend import (
    SetupError,
    _pth_dirs,
    engine_checkout,
    hidden_targets,
    interpreter_binds,
)
from tests.availability import skip_or_fail

ENGINE = engine_checkout()

# Runs inside the sandbox: everything the venv makes importable, and whether the engine checkout shows.
PROBE = textwrap.dedent("""
    import json, os, sys
    import numpy, torch
    import hrm_venv_marker, hrm_pth_marker
    engine = sys.argv[1]
    secret = sys.argv[2]
    try:
        seen = open(secret).read()
    except OSError as exc:
        seen = type(exc).__name__
    print("PROBE", json.dumps({
        "executable": sys.executable, "prefix": sys.prefix, "torch": torch.__version__,
        "numpy": numpy.__version__, "venv_marker": hrm_venv_marker.WHERE, "pth_marker": hrm_pth_marker.WHERE,
        "matmul": float(torch.ones(4, 4).matmul(torch.ones(4, 4)).sum()),
        "engine_listing": sorted(os.listdir(engine)) if os.path.isdir(engine) else None,
        "secret": seen,
    }), flush=True)
""")

# Runs with the venv's interpreter on the host: the engine as a user would run it from that venv.
DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import sandbox.local_backend as lb
    from sandbox import SandboxSpec

    use_bwrap, out, probe, engine, secret, fake_engine = sys.argv[1:7]
    if fake_engine:
        lb.engine_checkout = lambda: Path(fake_engine)
    backend = lb.LocalBackend(use_bwrap=use_bwrap == "1")
    spec = SandboxSpec(command=["python", "-c", probe, engine, secret], mounts=[], output_dir=Path(out),
                       env={"HOME": "/tmp"}, timeout_s=120, memory_mb=4096, cpus=1, pids=64, disk_mb=64)
    res = backend.run(spec)
    print("RESULT", json.dumps({"python": backend.python, "prefix": sys.prefix, "ok": res.ok,
                                "error": res.error, "exit_code": res.exit_code, "log": res.log_tail}))
""")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A --system-site-packages venv under /tmp (torch, numpy and the engine come from the base), with a module
    of its own, a .pth linking a directory outside it, a .pth linking the engine checkout (as a legacy editable
    install does), and a stand-in engine checkout with a .env inside it (as ``pip install -e`` into venv/src)."""
    base = tmp_path_factory.mktemp("venv-case")
    root = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)],
                   check=True, timeout=120)
    python = root / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    assert purelib.is_relative_to(root)
    (purelib / "hrm_venv_marker.py").write_text("WHERE = 'venv'\n")
    linked = base / "linked"
    linked.mkdir()
    (linked / "hrm_pth_marker.py").write_text("WHERE = 'pth'\n")
    lines = [f"# a comment\n{linked}\n", "import os\n"]
    if sys.prefix != sys.base_prefix:
        # The engine runs from a venv itself (CI's is brand-new): a venv made from it sees the base interpreter's
        # site-packages, not the venv's, so torch and numpy come through a .pth line like any linked directory.
        lines.append(f"{sysconfig.get_paths()['purelib']}\n")
    if ENGINE is not None:
        lines.append(f"{ENGINE}\n")
    (purelib / "hrm_linked.pth").write_text("".join(lines))
    fake_engine = root / "src" / "hrm-evolve"
    fake_engine.mkdir(parents=True)
    (fake_engine / ".env").write_text("OPENAI_API_KEY=venv-secret\n")
    os.chmod(base, 0o755)
    return {"root": root, "python": python, "purelib": purelib, "linked": linked, "fake_engine": fake_engine}


def _drive(venv: dict[str, Path], tmp_path: Path, *, bwrap: bool, fake_engine: bool = False) -> dict:
    engine = venv["fake_engine"] if fake_engine else ENGINE
    secret = (engine / ".env") if engine is not None else Path("/nonexistent")
    if not fake_engine and engine is not None and not secret.exists():
        secret = engine / "pyproject.toml"
    proc = subprocess.run(
        [str(venv["python"]), "-c", DRIVER, "1" if bwrap else "0", str(tmp_path / "out"), PROBE, str(engine),
         str(secret), str(venv["fake_engine"]) if fake_engine else ""],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _probe(result: dict) -> dict:
    line = next(x for x in result["log"].splitlines() if x.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


def require_bwrap() -> None:
    skip_or_fail(None if shutil.which("bwrap") else "bubblewrap (bwrap) is not installed",
                 "HRM_EVOLVE_REQUIRE_SANDBOX")


def test_venv_interpreter_runs_under_bwrap_even_below_tmp(venv: dict[str, Path], tmp_path: Path) -> None:
    require_bwrap()
    assert str(venv["root"]).startswith("/tmp/")  # the case bubblewrap's private /tmp used to hide
    res = _drive(venv, tmp_path, bwrap=True)
    assert res["python"] == str(venv["python"])  # the venv's own interpreter, not its realpath
    assert res["ok"], res
    probe = _probe(res)
    assert probe["executable"] == str(venv["python"]) and probe["prefix"] == str(venv["root"])
    assert probe["venv_marker"] == "venv" and probe["pth_marker"] == "pth"
    assert probe["torch"] and probe["numpy"] and probe["matmul"] == 64.0
    # The .pth line naming the engine checkout was not bound: the checkout is absent or an empty dir.
    assert probe["engine_listing"] in (None, []), probe["engine_listing"]
    assert probe["secret"] in ("FileNotFoundError", "PermissionError"), probe["secret"]


def test_engine_checkout_inside_the_venv_is_hidden(venv: dict[str, Path], tmp_path: Path) -> None:
    """``pip install -e`` from git puts the checkout in venv/src; the venv is bound, the checkout masked."""
    require_bwrap()
    res = _drive(venv, tmp_path, bwrap=True, fake_engine=True)
    assert res["ok"], res
    probe = _probe(res)
    assert probe["venv_marker"] == "venv"
    assert probe["engine_listing"] == [] and probe["secret"] == "FileNotFoundError", probe
    assert (venv["fake_engine"] / ".env").read_text().startswith("OPENAI_API_KEY")  # host copy untouched


def test_venv_interpreter_without_bwrap(venv: dict[str, Path], tmp_path: Path) -> None:
    """Without bubblewrap the venv's interpreter runs directly; as root, where uid 65534 cannot reach it (under
    a 0700 /tmp/pytest-of-root or /root), the run is refused instead of running hostile code as root."""
    res = _drive(venv, tmp_path, bwrap=False)
    assert res["python"] == str(venv["python"])
    if res["error"] is not None:
        assert os.getuid() == 0, res
        assert "refusing to run the candidate as root" in res["error"], res
        return
    assert res["ok"], res
    probe = _probe(res)
    assert probe["executable"] == str(venv["python"])
    assert probe["venv_marker"] == "venv" and probe["pth_marker"] == "pth"


def test_pth_lines_that_touch_the_engine_checkout_or_home_are_not_bound(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    engine = tmp_path / "checkout"
    (engine / "src").mkdir(parents=True)
    other = tmp_path / "dep"
    other.mkdir()
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (site_dir / "a.pth").write_text(f"# comment\nimport sys\n{engine}\n{engine / 'src'}\n{tmp_path}\n{other}\n"
                                    f"relative-missing\n{home}\n/\n")
    assert _pth_dirs(str(site_dir)) == [str(engine), str(engine / "src"), str(tmp_path), str(other), str(home),
                                        "/"]
    monkeypatch.setattr("sandbox.local_backend._site_dirs", lambda: [str(site_dir)])
    monkeypatch.setattr("sandbox.local_backend._home", lambda: home)
    targets = [t for _, t in interpreter_binds(sys.executable, engine)]
    assert str(other) in targets and str(site_dir) in targets
    assert not any(Path(t) == engine or Path(t).is_relative_to(engine) or engine.is_relative_to(t) for t in targets)
    assert str(home) not in targets and "/" not in targets


def test_hidden_targets_and_a_prefix_that_is_the_checkout(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "src" / "engine").mkdir(parents=True)
    alias = tmp_path / "alias"
    alias.symlink_to(venv)
    engine = venv / "src" / "engine"
    binds = [(str(venv), str(venv)), (str(venv), str(alias)), ("/usr", "/usr")]
    assert hidden_targets(binds, engine) == [str(engine), str(alias / "src" / "engine")]
    assert hidden_targets(binds, None) == []
    with pytest.raises(SetupError, match="engine checkout itself"):
        interpreter_binds(sys.executable, Path(os.path.realpath(sys.prefix)))
