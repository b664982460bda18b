"""The security battery: hostile candidates, each contained and reported, on every backend."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox import Backend, SandboxSpec
from sandbox.hostfs import tree_usage

MakeSpec = Callable[..., SandboxSpec]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_fork_bomb_is_contained(backend: Backend, make_spec: MakeSpec) -> None:
    source = """
import os, time
n = 0
try:
    while n < 5000:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
    print("FORK_UNBOUNDED", n)
except OSError as exc:
    print("FORK_STOPPED", n, exc.errno, flush=True)
"""
    res = backend.run(make_spec(source, pids=32, timeout_s=15))
    assert res.error is None, res.error
    assert "FORK_STOPPED" in res.log_tail, res.log_tail
    forks = int(res.log_tail.split("FORK_STOPPED")[1].split()[0])
    assert forks <= 32
    assert not res.timed_out  # the sleeping children died with the sandbox instead of holding it open


@pytest.fixture
def tcp_server() -> Iterator[tuple[int, list[str]]]:
    seen: list[str] = []
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except (TimeoutError, OSError):
                continue
            seen.append(f"{addr[0]}:{addr[1]}")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], seen
    stop.set()
    thread.join(timeout=2)
    srv.close()


def test_network_exfiltration_fails(backend: Backend, make_spec: MakeSpec,
                                    tcp_server: tuple[int, list[str]]) -> None:
    port, seen = tcp_server
    source = """
import socket, sys
for host, port in (("127.0.0.1", int(sys.argv[1])), ("10.255.255.1", 80), ("1.1.1.1", 53)):
    try:
        s = socket.create_connection((host, port), timeout=1.0)
        s.sendall(b"secret")
        print("CONNECTED", host, flush=True)
    except OSError as exc:
        print("BLOCKED", host, type(exc).__name__, flush=True)
try:
    socket.getaddrinfo("pypi.org", 443)
    print("DNS_OK")
except OSError:
    print("DNS_BLOCKED")
"""
    res = backend.run(make_spec(source, str(port)))
    assert res.error is None, res.error
    assert "CONNECTED" not in res.log_tail, res.log_tail
    assert res.log_tail.count("BLOCKED") == 4, res.log_tail
    assert seen == []  # the host server never saw a connection
    # Sanity: the server works for the host itself, so "seen == []" means something.
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    for _ in range(20):
        if seen:
            break
        threading.Event().wait(0.1)
    assert seen


def test_host_secrets_unreadable(backend: Backend, make_spec: MakeSpec, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    token = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("HRM_EVOLVE_TEST_SECRET", token)
    secret_file = tmp_path / "secret.txt"  # outside every mount
    secret_file.write_text(token)
    home_file = Path.home() / f".hrm-evolve-test-secret-{uuid.uuid4().hex}"
    home_file.write_text(token)
    try:
        source = """
import os, sys
print("ENV", sorted(os.environ.items()))
for path in sys.argv[1:]:
    try:
        print("READ", open(path).read())
    except OSError as exc:
        print("DENIED", path, type(exc).__name__)
"""
        res = backend.run(make_spec(source, str(secret_file), str(home_file), "/root/.bashrc"))
    finally:
        home_file.unlink()
    assert res.error is None, res.error
    assert res.exit_code == 0, res.log_tail
    assert token not in res.log_tail
    assert "HRM_EVOLVE_TEST_SECRET" not in res.log_tail
    assert res.log_tail.count("DENIED") == 3, res.log_tail


def test_disk_fill_is_capped(backend: Backend, make_spec: MakeSpec) -> None:
    source = """
import os
chunk = b"x" * (1 << 20)
for path in ("/out/big.bin", "/tmp/big.bin"):
    n = 0
    try:
        with open(path, "wb") as fh:
            while n < 4096:
                fh.write(chunk); fh.flush(); n += 1
        print("UNBOUNDED", path, n)
    except OSError as exc:
        print("STOPPED", path, n, exc.errno, flush=True)
"""
    spec = make_spec(source, disk_mb=8)
    free_before = shutil.disk_usage(spec.output_dir.parent).free
    res = backend.run(spec)
    assert res.error is None, res.error
    assert "UNBOUNDED" not in res.log_tail, res.log_tail
    assert res.log_tail.count("STOPPED") == 2, res.log_tail
    used, _ = tree_usage(spec.output_dir)
    assert used <= 9 * (1 << 20)
    assert free_before - shutil.disk_usage(spec.output_dir.parent).free < 64 * (1 << 20)


def test_many_small_files_hit_the_output_quota(backend: Backend, make_spec: MakeSpec) -> None:
    source = """
import time
chunk = b"y" * (1 << 20)
for i in range(2000):
    with open(f"/out/part{i}.bin", "wb") as fh:
        fh.write(chunk)
    time.sleep(0.002)
print("WROTE_ALL")
"""
    spec = make_spec(source, disk_mb=16, timeout_s=20)
    res = backend.run(spec)
    assert res.error is None, res.error
    assert "WROTE_ALL" not in res.log_tail
    assert "output dir over its cap" in res.log_tail, res.log_tail
    assert res.exit_code != 0
    used, _ = tree_usage(spec.output_dir)
    assert used < 256 * (1 << 20)  # the cap plus what one poll interval lets through


def test_infinite_loop_is_killed_at_timeout(backend: Backend, make_spec: MakeSpec) -> None:
    res = backend.run(make_spec("print('looping', flush=True)\nwhile True:\n    pass\n", timeout_s=3))
    assert res.error is None, res.error
    assert res.timed_out
    assert res.exit_code != 0
    assert 2.5 <= res.duration_s < 10, res.duration_s
    assert "looping" in res.log_tail


def test_memory_blowup(backend: Backend, make_spec: MakeSpec) -> None:
    source = """
blocks = []
for i in range(64):
    blocks.append(bytes([i % 251]) * (32 << 20))  # touched pages, 32 MiB each
    print("ALLOCATED_MB", (i + 1) * 32, flush=True)
print("NO_LIMIT")
"""
    res = backend.run(make_spec(source, memory_mb=256, timeout_s=20))
    assert res.error is None, res.error
    assert "NO_LIMIT" not in res.log_tail
    assert res.exit_code != 0
    assert res.oom_killed, (res.exit_code, res.log_tail)
    assert not res.timed_out


def test_candidate_cannot_edit_itself_or_the_harness(backend: Backend, make_spec: MakeSpec,
                                                     tmp_path: Path) -> None:
    source = """
import os
for path in ("/candidate/budget.py", "/candidate/new.py", "/harness/evaluator.py", "/harness/extra.py"):
    try:
        with open(path, "a") as fh:
            fh.write("BUDGET_SECONDS = 10**9\\n")
        print("WROTE", path)
    except OSError as exc:
        print("REFUSED", path, exc.errno)
for path in ("/candidate/budget.py", "/harness/evaluator.py"):
    try:
        os.chmod(path, 0o777)
        print("CHMOD", path)
    except OSError as exc:
        print("REFUSED", path, exc.errno)
"""
    spec = make_spec(source, files={"budget.py": "BUDGET_SECONDS = 60\n"})
    before = {m.target: _digest(Path(m.host)) for m in spec.mounts}
    res = backend.run(spec)
    assert res.error is None, res.error
    assert "WROTE" not in res.log_tail and "CHMOD" not in res.log_tail, res.log_tail
    assert res.log_tail.count("REFUSED") == 6, res.log_tail
    assert {m.target: _digest(Path(m.host)) for m in spec.mounts} == before


def test_writes_outside_output_dir_fail_and_tmp_is_private(backend: Backend, make_spec: MakeSpec) -> None:
    marker = f"hrm-evolve-marker-{uuid.uuid4().hex}"
    source = f"""
import os
for path in ("/evil", "/etc/evil", "/usr/evil", "/candidate/evil"):
    try:
        open(path, "w").write("x")
        print("WROTE", path)
    except OSError as exc:
        print("REFUSED", path, exc.errno)
print("TMP_BEFORE", os.path.exists("/tmp/{marker}"))
open("/tmp/{marker}", "w").write("x")
open("/out/result.txt", "w").write("ok")
print("DONE")
"""
    spec = make_spec(source)
    res = backend.run(spec)
    assert res.error is None, res.error
    assert res.exit_code == 0, res.log_tail
    assert "WROTE" not in res.log_tail and res.log_tail.count("REFUSED") == 4, res.log_tail
    assert "TMP_BEFORE False" in res.log_tail
    assert (spec.output_dir / "result.txt").read_text() == "ok"
    assert not os.path.exists(f"/tmp/{marker}")
    assert not os.path.exists("/evil")
    again = backend.run(spec)  # a second sandbox starts with an empty /tmp
    assert "TMP_BEFORE False" in again.log_tail, again.log_tail
