"""Backend selection, the local fallback without bubblewrap, leftover pruning, the image helpers, the spec."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from sandbox import DEFAULT_IMAGE, Mount, SandboxSpec, get_backend
from sandbox.doctor import doctor
from sandbox.image import content_hash, image_exists
from sandbox.image import main as image_main
from sandbox.local_backend import LocalBackend, _reachable_by

from .conftest import require_docker

MISSING_IMAGE = "hrm-evolve-sandbox:no-such-tag"


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        Mount(Path("relative"), "/candidate")
    with pytest.raises(ValueError):
        Mount(Path("/tmp"), "/out")
    with pytest.raises(ValueError):
        SandboxSpec(command=[], mounts=[], output_dir=Path("/tmp/x")).validate()
    dup = [Mount(Path("/tmp"), "/a"), Mount(Path("/var"), "/a/")]
    with pytest.raises(ValueError):
        SandboxSpec(command=["python"], mounts=dup, output_dir=Path("/tmp/x")).validate()


def test_auto_falls_back_to_local_with_a_warning() -> None:
    warnings: list[str] = []
    backend = get_backend("auto", image=MISSING_IMAGE, warn=warnings.append)
    assert backend.name == "local"
    assert len(warnings) == 1 and "lacks" in warnings[0]
    with pytest.raises(RuntimeError, match="Docker sandbox unavailable"):
        get_backend("docker", image=MISSING_IMAGE)
    with pytest.raises(ValueError):
        get_backend("podman")


def test_host_path_rewriting(tmp_path: Path) -> None:
    spec = SandboxSpec(command=["python"], mounts=[Mount(tmp_path / "c", "/candidate"),
                                                   Mount(tmp_path / "cd", "/candidate-data")],
                       output_dir=tmp_path / "o")
    b = LocalBackend(use_bwrap=False)
    assert b._host_path(spec, "/candidate/x.py") == f"{tmp_path}/c/x.py"
    assert b._host_path(spec, "/candidate-data") == f"{tmp_path}/cd"
    assert b._host_path(spec, "/candidate:/out/m") == f"{tmp_path}/c:{tmp_path}/o/m"
    assert b._host_path(spec, "--repo=/candidate") == f"--repo={tmp_path}/c"
    assert b._host_path(spec, "/candidatex") == "/candidatex"


def test_without_bwrap_paths_are_rewritten_and_timeout_kills(tmp_path: Path) -> None:
    b = LocalBackend(use_bwrap=False, allow_root=True)
    cand = tmp_path / "cand"
    cand.mkdir()
    (cand / "main.py").write_text(
        "import os, sys, time\nopen(sys.argv[1], 'w').write(os.environ['WHERE'])\nprint('started', flush=True)\n"
        "time.sleep(60)\n")
    spec = SandboxSpec(command=["python", "/candidate/main.py", "/out/w.txt"], mounts=[Mount(cand, "/candidate")],
                       output_dir=tmp_path / "out", env={"WHERE": "/candidate/main.py"}, timeout_s=3)
    t0 = time.monotonic()
    res = b.run(spec)
    assert time.monotonic() - t0 < 15
    assert res.timed_out and res.exit_code == 128 + 9, res
    assert (tmp_path / "out" / "w.txt").read_text() == str(cand / "main.py")
    assert any("network isolation" in m for m in res.missing)
    assert any("file system isolation" in m for m in res.missing)


@pytest.mark.skipif(os.getuid() != 0 or _reachable_by(Path(sys.executable), 65534, 65534),
                    reason="only as root with an interpreter that uid 65534 cannot reach")
def test_without_bwrap_root_runs_are_refused(tmp_path: Path) -> None:
    spec = SandboxSpec(command=["python", "-c", "print(1)"], mounts=[], output_dir=tmp_path / "out")
    res = LocalBackend(use_bwrap=False).run(spec)
    assert res.exit_code is None and res.error and "refusing to run the candidate as root" in res.error


def test_doctor_reports_a_choice() -> None:
    report = doctor(MISSING_IMAGE)
    assert report["auto_backend"] == "local"
    assert report["missing"]
    assert "not built" in report["docker_unavailable"] or "no Docker engine" in report["docker_unavailable"]
    assert report["local_python"] == sys.executable  # the interpreter as started (a venv's own), not its realpath
    assert "local_refused" in report


def test_content_hash_tracks_inputs(tmp_path: Path) -> None:
    w = tmp_path / "numpy-2.0-cp311-cp311-linux_x86_64.whl"
    w.write_bytes(b"abc")
    base = content_hash(b"FROM x", "sha256:1", [w])
    assert base == content_hash(b"FROM x", "sha256:1", [w])
    assert base != content_hash(b"FROM y", "sha256:1", [w])
    assert base != content_hash(b"FROM x", "sha256:2", [w])
    w.write_bytes(b"abcd")
    assert base != content_hash(b"FROM x", "sha256:1", [w])


def test_image_exists_false_for_unknown_tag() -> None:
    assert image_exists(MISSING_IMAGE) is False
    assert image_main(["exists", "--tag", MISSING_IMAGE]) == 1


@pytest.mark.docker
def test_image_present_and_python_inside(tmp_path: Path) -> None:
    require_docker()
    assert image_exists(DEFAULT_IMAGE)
    backend = get_backend("docker")
    spec = SandboxSpec(command=["python", "-c", "import sys, torch, numpy, rich, os; "
                                "print(sys.version_info[:2], torch.__version__, os.getuid())"],
                       mounts=[], output_dir=tmp_path / "out", timeout_s=60)
    res = backend.run(spec)
    assert res.ok, res
    assert "(3, 11)" in res.log_tail and "0" != res.log_tail.split()[-1]


@pytest.mark.docker
def test_leftover_containers_of_dead_owners_are_pruned() -> None:
    require_docker()
    import docker

    from sandbox.docker_backend import DockerBackend

    client = docker.from_env()
    dead = client.containers.create(DEFAULT_IMAGE, command=["python", "-c", "pass"], network_mode="none",
                                    labels={"hrm-evolve": "1", "hrm-evolve.pid": "999999999",
                                            "hrm-evolve.host": os.uname().nodename})
    alive = client.containers.create(DEFAULT_IMAGE, command=["python", "-c", "pass"], network_mode="none",
                                     labels={"hrm-evolve": "1", "hrm-evolve.pid": str(os.getpid()),
                                             "hrm-evolve.host": os.uname().nodename})
    try:
        removed = DockerBackend(DEFAULT_IMAGE, prune=False).prune_leftovers()
        names = {c.name for c in client.containers.list(all=True)}
        assert dead.name in removed and dead.name not in names
        assert alive.name in names
    finally:
        for c in (dead, alive):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass


def test_local_result_reports_infrastructure_errors(tmp_path: Path) -> None:
    spec = SandboxSpec(command=["/nonexistent/binary"], mounts=[], output_dir=tmp_path / "out", timeout_s=5)
    res = LocalBackend(use_bwrap=False, allow_root=True).run(spec)
    assert res.error is not None and res.exit_code is None
